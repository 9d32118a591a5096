"""Checkpoints and history across resumes, in-process on the tiny pipeline: the last K
checkpoints are kept, a damaged newest one falls back to the one before it, temporary files of
dead writers are removed, a run whose .hydra/ is gone resumes from config.yaml, and logs
(metrics.csv, TensorBoard, eval_curve.csv, timing.json) continue instead of starting over."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

import scorelift.run as run_module
from scorelift.checks import resume_checkpoint
from scorelift.errors import ConfigError
from scorelift.launcher import main as launcher_main
from scorelift.outputs.checkpoint import checkpoint_dir, checkpoint_path, read_step
from scorelift.run import run
from tests.run.test_system import CrashAtStep, compose_cfg, small_run_overrides

LATENT = 8


def overrides(pipeline: Path, steps: int, *extra: str) -> list[str]:
    over = [o for o in small_run_overrides(pipeline, LATENT, "sjc", "paas", steps) if not o.startswith("trainer.checkpoint_every")]
    return [*over, "trainer.checkpoint_every=2", "trainer.log_every_n_steps=1", *extra]


def files(run_dir: Path) -> dict[str, int]:
    """checkpoints/ as {name: global step}."""
    return {p.name: read_step(p) for p in sorted(checkpoint_dir(run_dir).iterdir()) if p.suffix == ".ckpt"}


def same_state(a: Path, b: Path) -> bool:
    sa, sb = (torch.load(p, weights_only=False)["state_dict"] for p in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def crash_at(monkeypatch, step: int) -> None:
    original = run_module.make_trainer

    def make(*args):
        trainer = original(*args)
        trainer.callbacks.append(CrashAtStep(step))
        return trainer

    monkeypatch.setattr(run_module, "make_trainer", make)


@pytest.fixture(scope="module")
def straight14(tiny_pipeline_dir, tmp_path_factory, single_thread):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    run(compose_cfg(overrides(tiny_pipeline_dir, 14, "trainer.eval_every=4")), run_dir)
    return run_dir


@pytest.mark.parametrize("keep, expected", [
    (1, {"last.ckpt": 10}),
    (2, {"last.ckpt": 10, "step_000008.ckpt": 8}),
    (3, {"last.ckpt": 10, "step_000006.ckpt": 6, "step_000008.ckpt": 8}),
])
def test_the_last_k_checkpoints_are_kept(keep, expected, tiny_pipeline_dir, tmp_path, single_thread):
    run(compose_cfg(overrides(tiny_pipeline_dir, 10, f"trainer.keep_checkpoints={keep}")), tmp_path)
    assert files(tmp_path) == expected


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    else:  # same length, the middle overwritten
        mid = len(data) // 2
        path.write_bytes(data[:mid - 2000] + bytes(4000) + data[mid + 2000:])


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(how, straight14, tiny_pipeline_dir, tmp_path,
                                                                monkeypatch, single_thread):
    crash_at(monkeypatch, 11)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose_cfg(overrides(tiny_pipeline_dir, 14, "trainer.eval_every=4")), tmp_path)
    monkeypatch.undo()
    assert files(tmp_path) == {"last.ckpt": 10, "step_000008.ckpt": 8}
    damage(checkpoint_path(tmp_path), how)

    cfg = compose_cfg(overrides(tiny_pipeline_dir, 14, "trainer.eval_every=4", f"resume={tmp_path}"))
    point = resume_checkpoint(cfg, tmp_path)
    assert point.path.name == "step_000008.ckpt" and point.step == 8 and [p.name for p, _ in point.skipped] == ["last.ckpt"]
    run(cfg, tmp_path)
    log = (tmp_path / "launch.log").read_text()
    assert "Skipped the damaged checkpoint" in log and "last.ckpt" in log and "kept as last.ckpt.damaged" in log
    assert "Resuming from" in log and "step_000008.ckpt (step 8) instead" in log
    assert (checkpoint_dir(tmp_path) / "last.ckpt.damaged").is_file()
    assert files(tmp_path) == {"last.ckpt": 14, "step_000012.ckpt": 12}
    assert same_state(checkpoint_path(tmp_path), checkpoint_path(straight14))
    # the history reads as if the run had never stopped
    assert (tmp_path / "logs" / "metrics.csv").read_text() == (straight14 / "logs" / "metrics.csv").read_text()
    assert curve_without_time(tmp_path) == curve_without_time(straight14)
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["steps_timed"] == json.loads((straight14 / "timing.json").read_text())["steps_timed"] == 14 - 5


def curve_without_time(run_dir: Path) -> list[dict]:
    with open(run_dir / "eval_curve.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "train_s"} for row in csv.DictReader(fh)]


def test_no_readable_checkpoint_is_one_paragraph(tiny_pipeline_dir, tmp_path, single_thread):
    run(compose_cfg(overrides(tiny_pipeline_dir, 4)), tmp_path)
    for path in checkpoint_dir(tmp_path).iterdir():
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError) as err:
        run(compose_cfg(overrides(tiny_pipeline_dir, 6, f"resume={tmp_path}")), tmp_path)
    message = str(err.value)
    assert "no checkpoint of the run can be read" in message and "last.ckpt" in message and "step_000002.ckpt" in message


def test_temporary_files_of_dead_writers_are_removed(tiny_pipeline_dir, tmp_path, single_thread):
    run(compose_cfg(overrides(tiny_pipeline_dir, 4)), tmp_path)
    leftovers = [checkpoint_dir(tmp_path) / ".last.ckpt.tmp-99999", tmp_path / ".config.yaml.tmp-99999",
                 tmp_path / ".scorelift-write-test-abc"]
    for path in leftovers:
        path.write_bytes(bytes(3 << 20))
    run(compose_cfg(overrides(tiny_pipeline_dir, 6, f"resume={tmp_path}")), tmp_path)
    assert not any(p.exists() for p in leftovers)
    log = (tmp_path / "launch.log").read_text()
    assert all(f"Removed {p}, the temporary file of a writer that died mid-write" in log for p in leftovers)
    assert read_step(checkpoint_path(tmp_path)) == 6


def test_tensorboard_hides_the_steps_a_resume_trains_again(straight14, tiny_pipeline_dir, tmp_path, monkeypatch,
                                                           single_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    crash_at(monkeypatch, 7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose_cfg(overrides(tiny_pipeline_dir, 14, "trainer.eval_every=4")), tmp_path)
    monkeypatch.undo()
    run(compose_cfg(overrides(tiny_pipeline_dir, 14, "trainer.eval_every=4", f"resume={tmp_path}")), tmp_path)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2  # both parts kept

    def losses(run_dir):
        acc = EventAccumulator(str(run_dir / "tensorboard"))
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars("loss")]

    assert losses(tmp_path) == losses(straight14)  # each step once, the earlier file's step 6 hidden


def test_a_run_without_hydra_resumes_from_config_yaml(tiny_pipeline_dir, tmp_path, capsys, single_thread):
    run_dir = tmp_path / "run"
    assert launcher_main([*overrides(tiny_pipeline_dir, 4), f"hydra.run.dir={run_dir}"]) == 0
    shutil.rmtree(run_dir / ".hydra")
    assert launcher_main([f"resume={run_dir}", "guidance=sds"]) == 2
    assert "has no .hydra/ any more" in capsys.readouterr().err
    assert launcher_main([f"resume={run_dir}", "trainer.nosuch=1"]) == 2
    assert "'trainer.nosuch' is not a key" in capsys.readouterr().err
    assert launcher_main([f"resume={run_dir}", "trainer.max_steps=6"]) == 0
    assert read_step(checkpoint_path(run_dir)) == 6
    assert "resuming from its config.yaml" in capsys.readouterr().err
    assert not (run_dir / ".hydra" / "overrides.yaml").exists()  # later resumes use config.yaml again
    assert launcher_main([f"resume={run_dir}", "trainer.max_steps=8"]) == 0
    assert read_step(checkpoint_path(run_dir)) == 8


def test_resuming_a_finished_run_rewrites_its_outputs_and_keeps_its_checkpoints(tiny_pipeline_dir, tmp_path,
                                                                                 single_thread):
    """What a run stopped while it wrote its final outputs does on resume: no step to train, the
    outputs written, the checkpoints as they were (the same step is not kept twice)."""
    run(compose_cfg(overrides(tiny_pipeline_dir, 6)), tmp_path)
    (tmp_path / "turntable.mp4").unlink()
    before = files(tmp_path)
    run(compose_cfg(overrides(tiny_pipeline_dir, 6, f"resume={tmp_path}")), tmp_path)
    assert files(tmp_path) == before == {"last.ckpt": 6, "step_000004.ckpt": 4}
    assert (tmp_path / "turntable.mp4").is_file()
