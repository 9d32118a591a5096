"""What a Lightning user expects of a run: TensorBoard logs beside the CSV ones, and the Lightning
Trainer options that make sense for one run (precision, accelerator, devices, gradient clipping)
passed through, checked at start-up; the options that make no sense are refused with the reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

import scorelift.run as run_module
from scorelift.errors import ConfigError
from scorelift.run import checkpoint_path, run
from tests.run.test_system import compose_cfg, latent_size, small_run_overrides  # noqa: F401  (latent_size: a fixture)


def overrides(pipeline, size: int, steps: int, *extra: str) -> list[str]:
    return [*small_run_overrides(pipeline, size, "dreamfusion", "sds", steps), *extra]


def read_csv(path) -> list[dict]:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","))) for line in lines[1:]]


def test_tensorboard_gets_the_loss_scalars_and_validation_images(tiny_pipeline_dir, latent_size, tmp_path):
    import imageio.v3 as iio
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(compose_cfg(overrides(tiny_pipeline_dir, latent_size, 6, "trainer.log_every_n_steps=1", "system.validation_every=3")), tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    rows = read_csv(tmp_path / "logs" / "metrics.csv")  # the CSV log stays where it was
    for tag in ("loss", "train/loss_guidance", "train/loss_sparsity", "train/grad_norm"):
        assert tag in tags["scalars"], tag
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [int(r["step"]) for r in rows], tag
        assert [e.value for e in logged] == pytest.approx([float(r[tag]) for r in rows], rel=1e-6), tag
    assert [e.step for e in events.Scalars("loss")] == list(range(6))
    images = events.Images("validation")
    assert [e.step for e in images] == [3, 6]
    for event in images:
        shown = iio.imread(io.BytesIO(event.encoded_image_string))[..., :3].astype(int)
        written = iio.imread(tmp_path / "validation" / f"step_{event.step:06d}.png")[..., :3].astype(int)
        assert shown.shape == written.shape
        assert np.abs(shown - written).max() <= 1  # the same grid (TensorBoard truncates to 8 bits, the PNG rounds)


CHOICES = "precision, accelerator, devices, gradient_clip_val, gradient_clip_algorithm"


@pytest.mark.parametrize("override, words", [
    ("trainer.precision=8", ["trainer.precision=8", "32-true, bf16-mixed, 16-mixed, 64-true", "aliases 32, bf16, 16, 64"]),
    ("trainer.precision=16-true", ["trainer.precision='16-true'", "32-true, bf16-mixed, 16-mixed, 64-true"]),
    ("trainer.precision=16", ["trainer.precision=16", "needs a CUDA device", "bf16-mixed"]),  # device=cpu here
    ("trainer.accelerator=tpu", ["trainer.accelerator='tpu'", "auto, cpu, gpu, cuda", "device="]),
    ("trainer.accelerator=gpu", ["trainer.accelerator=gpu contradicts device=cpu", "device= decides", "trainer.accelerator=auto"]),
    ("trainer.devices=2", ["trainer.devices=2", "must be 1", "one device", "device=cuda:N", "benchmark"]),
    ("trainer.devices=[0,1]", ["trainer.devices=[0, 1]", "must be 1"]),
    ("trainer.devices=auto", ["trainer.devices='auto'", "must be 1"]),
    ("trainer.gradient_clip_val=-1", ["trainer.gradient_clip_val=-1", "null", ">= 0"]),
    ("trainer.gradient_clip_val=abc", ["trainer.gradient_clip_val='abc'", ">= 0"]),
    ("trainer.gradient_clip_algorithm=l2", ["trainer.gradient_clip_algorithm='l2'", "norm", "value"]),
    ("+trainer.max_epochs=5", ["trainer.max_epochs=5", "no epochs", "trainer.max_steps", CHOICES, "not supported"]),
    ("+trainer.accumulate_grad_batches=4", ["trainer.accumulate_grad_batches=4", "data.batch_size", CHOICES]),
    ("+trainer.strategy=ddp", ["trainer.strategy='ddp'", "one process on one device", CHOICES]),
    ("+trainer.num_nodes=2", ["trainer.num_nodes=2", "one device of one machine", CHOICES]),
    ("+trainer.foo=1", ["trainer.foo=1", "is not a trainer option", CHOICES, "max_steps"]),
])
def test_bad_trainer_options_fail_before_anything_is_written(override, words, tiny_pipeline_dir, latent_size, tmp_path):
    with pytest.raises(ConfigError) as err:
        run(compose_cfg(overrides(tiny_pipeline_dir, latent_size, 2, override)), tmp_path / "run")
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_trainer_keys_from_the_command_line_are_listed(tiny_pipeline_dir, latent_size):
    """Without `+`, an unknown trainer key fails at composition, which lists the section's keys."""
    with pytest.raises(ConfigError) as err:
        compose_cfg(overrides(tiny_pipeline_dir, latent_size, 2, "trainer.max_epochs=5"))
    assert "'trainer.max_epochs'" in str(err.value) and "precision" in str(err.value)


def recording_trainer(monkeypatch, *callbacks: pl.Callback) -> list:
    """make_trainer with ``callbacks`` appended; returns the list the trainers made go into."""
    made, original = [], run_module.make_trainer

    def make(*args):
        trainer = original(*args)
        trainer.callbacks.extend(callbacks)
        made.append(trainer)
        return trainer

    monkeypatch.setattr(run_module, "make_trainer", make)
    return made


@pytest.mark.parametrize("given, precision", [
    ("bf16-mixed", "bf16-mixed"), ("bf16", "bf16-mixed"), ("64-true", "64-true"), ("32", "32-true"),
])
def test_precisions_train_on_the_cpu(given, precision, tiny_pipeline_dir, latent_size, tmp_path, monkeypatch):
    """bf16-mixed runs the step under CPU autocast (bfloat16) with float32 weights; 64-true trains
    float64 weights; aliases reach Lightning as its full names."""
    from scorelift.systems.score_distillation import ScoreDistillationSystem

    autocast, step = [], ScoreDistillationSystem.training_step

    def recording_step(self, *args):
        autocast.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return step(self, *args)

    monkeypatch.setattr(ScoreDistillationSystem, "training_step", recording_step)
    made = recording_trainer(monkeypatch)
    run(compose_cfg(overrides(tiny_pipeline_dir, latent_size, 2, f"trainer.precision={given}", "trainer.log_every_n_steps=1")), tmp_path)
    assert made[0].precision == precision
    assert autocast == [torch.bfloat16] * 2 if precision == "bf16-mixed" else autocast == [None] * 2
    state = torch.load(checkpoint_path(tmp_path), weights_only=False)
    assert state["global_step"] == 2
    dtype = torch.float64 if precision == "64-true" else torch.float32
    assert all(v.dtype == dtype for v in state["state_dict"].values() if v.is_floating_point())
    losses = [float(r["loss"]) for r in read_csv(tmp_path / "logs" / "metrics.csv")]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_mixed_precision_with_the_hash_grid(tiny_pipeline_dir, latent_size, tmp_path):
    from tests.run.test_system import HASH_GRID_SMALL

    over = [o for o in overrides(tiny_pipeline_dir, latent_size, 2, "trainer.precision=bf16-mixed") if not o.startswith("geometry.res")]
    run(compose_cfg([*over, "geometry=hash-grid", *HASH_GRID_SMALL]), tmp_path)
    assert torch.load(checkpoint_path(tmp_path), weights_only=False)["global_step"] == 2


def test_accepted_lightning_spellings(tiny_pipeline_dir, latent_size):
    """accelerator=cpu on a CPU run, and strategy=auto / num_nodes=1 (what every run uses), pass."""
    from scorelift.checks import check_trainer

    cfg = compose_cfg(overrides(tiny_pipeline_dir, latent_size, 2, "trainer.accelerator=cpu", "+trainer.strategy=auto",
                                "+trainer.num_nodes=1", "trainer.gradient_clip_val=0.5", "trainer.gradient_clip_algorithm=value"))
    trainer = check_trainer(cfg)
    assert (trainer.accelerator, trainer.gradient_clip_val, trainer.gradient_clip_algorithm) == ("cpu", 0.5, "value")


class GradientProbe(pl.Callback):
    """Gradients as Lightning hands them to the optimizer: before clipping (on_before_optimizer_step
    runs before Lightning clips) and after (the step leaves the clipped gradients in place)."""

    def __init__(self):
        self.before, self.after, self.start = [], [], None

    @staticmethod
    def grads(trainer) -> list[torch.Tensor]:
        return [p.grad.detach().clone() for g in trainer.optimizers[0].param_groups for p in g["params"] if p.grad is not None]

    def on_train_start(self, trainer, module):
        self.start = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.before.append(self.grads(trainer))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append(self.grads(trainer))


def total_norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def test_gradient_clip_by_norm_bounds_the_step(tiny_pipeline_dir, latent_size, tmp_path, monkeypatch):
    """With plain SGD the parameter change of a step is lr x the gradient, so a clipped gradient
    norm bounds how far two steps move the parameters."""
    clip, lr = 1e-3, 0.01
    probe = GradientProbe()
    recording_trainer(monkeypatch, probe)
    cfg = compose_cfg(overrides(tiny_pipeline_dir, latent_size, 2, f"trainer.gradient_clip_val={clip}",
                                f"system.optimizer.lr.geometry={lr}", f"system.optimizer.lr.background={lr}"))
    with open_dict(cfg):
        cfg.system.optimizer.name = "sgd"
        cfg.system.optimizer.args = {}
    run(cfg, tmp_path)
    assert len(probe.before) == len(probe.after) == 2
    for before, after in zip(probe.before, probe.after):
        assert total_norm(before) > 100 * clip  # clipping had work to do
        assert total_norm(after) == pytest.approx(clip, rel=1e-3)  # Lightning scaled the norm to the clip value
    end = torch.load(checkpoint_path(tmp_path), weights_only=False)["state_dict"]
    moved = total_norm([end[k] - probe.start[k] for k in end if end[k].is_floating_point()])
    assert 0 < moved <= 2 * lr * clip * (1 + 1e-3)


def test_gradient_clip_by_value(tiny_pipeline_dir, latent_size, tmp_path, monkeypatch):
    clip = 1e-4
    probe = GradientProbe()
    recording_trainer(monkeypatch, probe)
    run(compose_cfg(overrides(tiny_pipeline_dir, latent_size, 2, f"trainer.gradient_clip_val={clip}",
                              "trainer.gradient_clip_algorithm=value")), tmp_path)
    for before, after in zip(probe.before, probe.after):
        assert max(float(g.abs().max()) for g in before) > clip
        assert max(float(g.abs().max()) for g in after) <= clip


def test_render_size_phases_reach_the_training_steps(tiny_pipeline_dir, latent_size, tmp_path, monkeypatch):
    """data.batch_size/height/width per phase of data.resolution_milestones: the system renders
    each training step at its phase's size (RGB renders, resized to the prior's pixel size)."""
    from scorelift.systems.score_distillation import ScoreDistillationSystem

    sizes, render = [], ScoreDistillationSystem.render

    def recording_render(self, cameras, generator=None):
        if self.training:
            sizes.append((cameras.batch_size, cameras.height, cameras.width))
        return render(self, cameras, generator)

    monkeypatch.setattr(ScoreDistillationSystem, "render", recording_render)
    small, large = latent_size // 2, latent_size
    over = [o for o in small_run_overrides(tiny_pipeline_dir, latent_size, "dreamfusion", "sds", 5)
            if not o.startswith(("data.height", "data.width", "data.batch_size"))]
    run(compose_cfg([*over, "data.resolution_milestones=[3]", "data.batch_size=[3,2]",
                     f"data.height=[{small},{large}]", f"data.width=[{small},{large}]"]), tmp_path)
    assert sizes == [(3, small, small)] * 3 + [(2, large, large)] * 2
