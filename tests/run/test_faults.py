"""Faults and bad input: NaN losses, unwritable outputs, bad prompts, a checkpoint of another
system (kills and stop signals: tests/run/test_preemption.py).

The bad-input tests here call ``run()`` directly (its own checks guard programmatic use: they fail
before the run directory is made); tests/run/test_bad_input.py covers the same inputs and the rest of the
command line through launch.py, where nothing at all may be written."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from scorelift.errors import ConfigError
import scorelift.run as run_module
from scorelift.run import checkpoint_path, run
from scorelift.plugins.guidance.paas import PAASGuidance
from tests.run.test_system import compose_cfg, small_run_overrides

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def latent_size(tiny_pipeline_dir):
    import json

    return json.loads((tiny_pipeline_dir / "unet" / "config.json").read_text())["sample_size"]


def nan_on_calls(monkeypatch, bad_calls):
    """Make PAAS return a NaN loss on the given (0-based) call numbers."""
    original = PAASGuidance.__call__
    calls = {"n": 0}

    def patched(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        n = calls["n"]
        calls["n"] += 1
        if bad_calls(n):
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(PAASGuidance, "__call__", patched)


def nan_eps_on_calls(monkeypatch, bad_calls):
    """Give the run's prior a NaN in one pixel of its conditional eps prediction on the given
    (0-based) calls: the prior instance that ``build_system`` makes gets a wrapped predict_eps."""
    build = run_module.build_system
    calls = {"n": 0}

    def patched_build(plan):
        system = build(plan)
        prior = system.prior
        original = prior.predict_eps

        def predict_eps(*args, **kwargs):
            e_c, e_u = original(*args, **kwargs)
            n = calls["n"]
            calls["n"] += 1
            if bad_calls(n):
                e_c = e_c.clone()
                e_c[0, 0, 0, 0] = float("nan")
            return e_c, e_u

        prior.predict_eps = predict_eps
        return system

    monkeypatch.setattr(run_module, "build_system", patched_build)
    return calls


def logged_column(run_dir: Path, column: str) -> list[float]:
    with open(run_dir / "logs" / "metrics.csv") as fh:
        return [float(row[column]) for row in csv.DictReader(fh) if row.get(column)]


def test_a_nan_step_is_skipped_and_counted(tiny_pipeline_dir, latent_size, tmp_path, monkeypatch):
    nan_on_calls(monkeypatch, lambda n: n == 3)
    over = small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "paas", 8) + ["trainer.log_every_n_steps=1"]
    run(compose_cfg(over), tmp_path)
    state = torch.load(checkpoint_path(tmp_path), weights_only=False)
    assert state["global_step"] == 8  # Lightning counts the skipped step (no optimizer update happened in it)
    assert state["scorelift"]["nonfinite_total"] == 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert max(logged_column(tmp_path, "train/nonfinite_steps")) == 1.0


@pytest.mark.parametrize("system, guidance", [("sjc", "paas"), ("dreamfusion", "sds")])  # vsd: tests/parts/test_vsd.py
def test_a_nan_score_is_a_skipped_step_not_a_zero_one(tiny_pipeline_dir, latent_size, tmp_path, monkeypatch, system, guidance):
    """One NaN pixel in the prior's eps on the 4th step: the guidance's g is NaN there, so the
    loss is NaN and the step is skipped and counted; it is not zeroed and trained on."""
    calls = nan_eps_on_calls(monkeypatch, lambda n: n == 3)
    over = small_run_overrides(tiny_pipeline_dir, latent_size, system, guidance, 6) + ["trainer.log_every_n_steps=1"]
    run(compose_cfg(over), tmp_path)
    assert calls["n"] == 6  # one prior call per step
    state = torch.load(checkpoint_path(tmp_path), weights_only=False)
    assert state["global_step"] == 6
    assert state["scorelift"]["nonfinite_total"] == 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert max(logged_column(tmp_path, "train/nonfinite_steps")) == 1.0


def test_nan_steps_in_a_row_stop_the_run_with_a_good_checkpoint(tiny_pipeline_dir, latent_size, tmp_path, monkeypatch):
    nan_on_calls(monkeypatch, lambda n: n >= 6)
    # no step-dependent schedule (the emptiness boost starts at half of max_steps), so a 6-step
    # run is comparable with the first 6 steps of this one
    flat = ["+system.losses.emptiness.boost_factor=1.0"]
    over = small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "paas", 20) + flat + [
        "system.max_nonfinite_steps=3", "trainer.checkpoint_every=2"]
    with pytest.raises(FloatingPointError) as err:
        run(compose_cfg(over), tmp_path)
    msg = str(err.value)
    assert "NaN or Inf for 3 steps in a row" in msg and "last.ckpt" in msg and "max_nonfinite_steps" in msg
    state = torch.load(checkpoint_path(tmp_path), weights_only=False)
    assert state["global_step"] == 8  # 6 good steps, then skipped ones (counted, no update) until the stop
    # the checkpoint holds exactly the last good state: a clean 6-step run's parameters
    monkeypatch.undo()
    clean = tmp_path / "clean"
    run(compose_cfg(small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "paas", 6) + flat), clean)
    good = torch.load(checkpoint_path(clean), weights_only=False)["state_dict"]
    assert all(torch.equal(state["state_dict"][k], good[k]) for k in good)


def test_unwritable_run_dir_fails_at_start(tiny_pipeline_dir, latent_size, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as err:
        run(compose_cfg(small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "paas", 2)), blocker / "run")
    assert "is not writable" in str(err.value) and "hydra.run.dir" in str(err.value)
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("prompt, words", [("'   '", ["prompt is empty"]), ("'" + "red " * 80 + "cube'", ["tokens long", "at most"])])
def test_bad_prompts_fail_before_training(tiny_pipeline_dir, latent_size, tmp_path, prompt, words):
    over = small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "paas", 2) + [f"prompt={prompt}"]
    with pytest.raises(ConfigError) as err:
        run(compose_cfg(over), tmp_path / "run")
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "run").exists()  # checked before the run directory is made


def test_checkpoint_of_another_system_is_refused(tiny_pipeline_dir, latent_size, tmp_path):
    df_dir = tmp_path / "df"
    run(compose_cfg(small_run_overrides(tiny_pipeline_dir, latent_size, "dreamfusion", "sds", 2)), df_dir)
    over = small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "paas", 4) + [f"resume={checkpoint_path(df_dir)}"]
    with pytest.raises(ConfigError) as err:
        run(compose_cfg(over), tmp_path / "sjc")
    assert "written by system 'dreamfusion'" in str(err.value) and "system=dreamfusion" in str(err.value)
    assert not (tmp_path / "sjc").exists()  # refused before anything is written


@pytest.mark.parametrize("override, words", [
    ("trainer.max_steps=abc", ["trainer key 'max_steps'", "int"]),
    ("trainer.checkpoint_every=0", ["trainer.checkpoint_every=0", "positive"]),
])
def test_bad_trainer_values_fail_before_anything_is_written(tiny_pipeline_dir, latent_size, tmp_path, override, words):
    over = small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "paas", 2) + [override]
    with pytest.raises(ConfigError) as err:
        run(compose_cfg(over), tmp_path / "run")
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "run").exists()
