"""Numbers no run can train with, refused at start-up: learning rates out of range, optimizer
arguments torch rejects, and a geometry whose parameters, gradients and optimizer state exceed
the device's memory (tests/run/test_bad_input.py runs the same through launch.py; this file checks
the boundaries and the arithmetic)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import scorelift.memory as memory
from scorelift.checks import check_part
from scorelift.memory import check_memory
from scorelift.units import human_bytes
from scorelift.compose import compose_config
from scorelift.errors import ConfigError
from scorelift.run import checkpoint_path, run
from scorelift.systems.optim import (
    MAX_LR,
    OPTIMIZERS,
    OptimizerConfig,
    check_optimizer_args,
    check_optimizer_config,
    state_slots,
)
from tests.run.test_system import compose_cfg, small_run_overrides

CPU = torch.device("cpu")


def optimizer(lr: dict, name: str = "adam", args: dict | None = None, allow: bool = False) -> OptimizerConfig:
    return OptimizerConfig(name=name, args=args or {}, lr=lr, allow_unusual_lr=allow)


# ---------------------------------------------------------------- learning rates
@pytest.mark.parametrize("value", [0, 0.0, 1e-4, 0.05, 10, MAX_LR])
def test_rates_from_0_to_10_are_taken(value):
    check_optimizer_config(optimizer({"geometry": value, "background": 0.01}), CPU)


@pytest.mark.parametrize("value, allow, words", [
    (-1, False, ["system.optimizer.lr.geometry=-1", "negative", "0..10", "allow_unusual_lr=true does not allow it"]),
    (-1e-9, True, ["system.optimizer.lr.geometry=-1e-09", "negative", "Invalid learning rate"]),
    (1e30, False, ["system.optimizer.lr.geometry=1e+30", "above 10", "0..10", "about lr per step",
                   "system.optimizer.allow_unusual_lr=true"]),
    (10.000001, False, ["system.optimizer.lr.geometry=10.000001", "above 10"]),
    ("fast", False, ["system.optimizer.lr.geometry='fast'", "must be a number"]),
    (True, False, ["system.optimizer.lr.geometry=True", "must be a number"]),
])
def test_rates_out_of_range_are_refused(value, allow, words):
    with pytest.raises(ConfigError) as err:
        check_optimizer_config(optimizer({"geometry": value}, allow=allow), CPU)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_the_flag_lets_large_rates_through():
    check_optimizer_config(optimizer({"geometry": 1e30}, allow=True), CPU)


def test_unknown_parts_and_names_are_refused():
    with pytest.raises(ConfigError, match=r"unknown part\(s\) \['geometrie'\]"):
        check_optimizer_config(optimizer({"geometrie": 0.01}), CPU)
    with pytest.raises(ConfigError, match="system.optimizer.name='lbfgs' is not a known optimizer; choose one of adam"):
        check_optimizer_config(optimizer({"geometry": 0.01}, name="lbfgs"), CPU)


# ---------------------------------------------------------------- optimizer arguments
@pytest.mark.parametrize("name, args, words", [
    ("adam", {"betas": [2, 0.9], "eps": 1e-15}, ["system.optimizer.args.betas=[2, 0.9]", "Invalid beta parameter", "torch.optim.Adam"]),
    ("adam", {"eps": -1.0}, ["system.optimizer.args.eps=-1.0", "Invalid epsilon"]),
    ("adamax", {"nosuch": 1}, ["system.optimizer.args.nosuch=1", "unexpected keyword", "betas, eps, weight_decay"]),
    ("sgd", {"nesterov": True}, ["system.optimizer.args.nesterov=True", "Nesterov momentum requires a momentum"]),
    ("adam", {"lr": 0.1}, ["system.optimizer.args={'lr': 0.1}", "system.optimizer.lr.<part>"]),
    # fails only in a step: the dummy parameter sits on the run's device (the CPU here)
    ("adam", {"capturable": True}, ["system.optimizer.args.capturable=True", "capturable=True"]),
])
def test_bad_optimizer_args_name_the_argument(name, args, words):
    with pytest.raises(ConfigError) as err:
        check_optimizer_args(OPTIMIZERS[name], args, CPU)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_good_optimizer_args_pass():
    check_optimizer_args(OPTIMIZERS["adam"], {"betas": [0.9, 0.99], "eps": 1e-15}, CPU)
    check_optimizer_args(OPTIMIZERS["sgd"], {"momentum": 0.9, "nesterov": True}, CPU)


def test_state_slots():
    assert [state_slots(n, {}) for n in ("adam", "adamw", "adamax", "sgd")] == [2, 2, 2, 0]
    assert state_slots("adam", {"amsgrad": True}) == 3 and state_slots("sgd", {"momentum": 0.9}) == 1
    assert state_slots("third-party", {}) == 0  # unknown: a lower bound


# ---------------------------------------------------------------- geometry memory
def memory_case(monkeypatch, free: int, *overrides: str):
    """check_memory on a composed config, the device reporting ``free`` bytes."""
    monkeypatch.setattr(memory, "available_memory", lambda device: (free, f"the test device has {human_bytes(free)} free"))
    cfg = compose_config(["device=cpu", *overrides], with_hydra=False)
    check_memory(cfg, {"geometry": check_part("geometry", cfg.geometry, "geometry")}, torch.device("cpu"))


# The shapes preset's RGB voxel grid at R = 64 under Adam: 4 (1 + 3) 64^3 + 4 bytes of parameters
# (4,194,308), and 4 copies (parameters, gradients, two moments): 16,777,232 bytes = 16 MiB + 16.
NEED_64 = 4 * (4 * 64**3 + 1) * 4


def test_memory_check_refuses_one_byte_short(monkeypatch):
    memory_case(monkeypatch, NEED_64, "geometry.resolution=64")  # exactly enough
    with pytest.raises(ConfigError) as err:
        memory_case(monkeypatch, NEED_64 - 1, "geometry.resolution=64")
    msg = str(err.value)
    for word in ["geometry.resolution=64", "geometry.n_features=3", "4.0 MiB of float32 parameters", "16.0 MiB with their gradients",
                 "2 state tensors", "system.optimizer.name=adam", "the test device has 16.0 MiB free",
                 "Lower geometry.resolution or geometry.n_features"]:  # at its defaults' sizes: no default to offer
        assert word in msg, (word, msg)


def test_memory_check_counts_the_optimizer_and_the_precision(monkeypatch):
    free = NEED_64 // 2
    memory_case(monkeypatch, free, "geometry.resolution=64", "system.optimizer.name=sgd")  # no state: 2 copies
    with pytest.raises(ConfigError, match="1 state tensor per parameter of system.optimizer.name=sgd"):
        memory_case(monkeypatch, free, "geometry.resolution=64", "system.optimizer.name=sgd", "+system.optimizer.args.momentum=0.9")
    with pytest.raises(ConfigError, match=r"8.0 MiB of float64 \(trainer.precision=64-true\) parameters"):
        memory_case(monkeypatch, free, "geometry.resolution=64", "system.optimizer.name=sgd", "trainer.precision=64-true")


def test_memory_check_names_the_option_above_its_default(monkeypatch):
    """resolution 1000 is above the default 100, which would need 4 (4 * 100^3 + 1) * 4 bytes."""
    with pytest.raises(ConfigError) as err:
        memory_case(monkeypatch, 10**9, "geometry.resolution=1000")
    msg = str(err.value)
    assert msg.startswith("geometry.resolution=1000 (with geometry.n_features=3) gives the voxel-grid geometry 14.9 GiB")
    assert f"Lower geometry.resolution (its default, 100, needs {human_bytes(4 * (4 * 100**3 + 1) * 4)} in all)" in msg
    with pytest.raises(ConfigError) as err:
        memory_case(monkeypatch, 10**8, "system=dreamfusion", "guidance=sds", "geometry=hash-grid", "geometry.mlp_width=1000000")
    assert str(err.value).startswith("geometry.mlp_width=1000000 (with geometry.log2_hashmap_size=19,")
    assert "Lower geometry.mlp_width (its default, 64, needs" in str(err.value)


def test_memory_of_this_machine_is_read():
    found = memory.available_memory(CPU)
    if found is None:  # neither /proc/meminfo nor sysconf's available pages (e.g. Windows): the check is skipped
        pytest.skip("this platform reports no available RAM")
    assert found[0] > 0 and "RAM available" in found[1]


def test_cpu_memory_honours_a_cgroup_limit_and_falls_back(tmp_path, monkeypatch):
    limit = tmp_path / "memory.max"
    limit.write_text("12345\n")
    monkeypatch.setattr(memory, "CGROUP_LIMITS", (str(tmp_path / "absent"), str(limit)))
    assert memory.cpu_available_bytes() == (12345, f"the container's memory limit in {limit}")
    limit.write_text("max\n")  # cgroup v2's "no limit"
    assert memory.cpu_available_bytes()[1] == "MemAvailable in /proc/meminfo"
    read_text = Path.read_text

    def no_meminfo(self, *args, **kwargs):
        if str(self) == "/proc/meminfo":
            raise OSError("not Linux")
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_meminfo)
    have, where = memory.cpu_available_bytes()
    assert have > 0 and where == "sysconf's available pages"
    sysconf = os.sysconf

    def no_available_pages(name):  # macOS: only the physical pages, the whole RAM
        if name == "SC_AVPHYS_PAGES":
            raise ValueError("unrecognized configuration name")
        return sysconf(name)

    monkeypatch.setattr(os, "sysconf", no_available_pages)
    have, where = memory.cpu_available_bytes()
    assert have == sysconf("SC_PHYS_PAGES") * sysconf("SC_PAGE_SIZE") and where == "sysconf's physical pages"


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 2**30, 4 * 10**15)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "1.0 GiB", "3.6 PiB"]


# ---------------------------------------------------------------- the flag, in a run
def test_the_flag_trains_at_lr_20(tiny_pipeline_dir, tmp_path):
    over = small_run_overrides(tiny_pipeline_dir, 8, "sjc", "paas", 2) + ["system.optimizer.lr.geometry=20"]
    with pytest.raises(ConfigError, match="system.optimizer.lr.geometry=20 is above 10"):
        run(compose_cfg(over), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    run(compose_cfg(over + ["system.optimizer.allow_unusual_lr=true"]), tmp_path / "run")
    state = torch.load(checkpoint_path(tmp_path / "run"), weights_only=False)
    assert state["global_step"] == 2
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == 20.0
