"""Numbers no run can train with, refused at start-up: learning rates out of range and optimizer
arguments torch rejects (tests/test_bad_input.py runs the same through launch.py; this file checks
the boundaries)."""

from __future__ import annotations

import pytest
import torch

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
from tests.test_system import compose_cfg, small_run_overrides

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
