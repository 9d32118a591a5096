"""The Lightning system that composes geometry, background, renderer, guidance and losses.

Data flows one way: camera batch -> renderer(geometry, background) -> RenderOutput ->
guidance and losses -> weighted sum -> optimizer. The prior and guidance are kept out of the
module tree (Lightning neither moves nor checkpoints them implicitly); guidance state that
trains (VSD's LoRA) is saved and restored explicitly through ``on_save_checkpoint``.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from .. import fast_path
from ..data.cameras import (
    CameraBatch,
    make_cameras,
    sample_cameras,
    step_generator,
)
from ..errors import ConfigError
from ..interfaces import DiffusionPrior, RenderOutput
from ..plan import RunPlan
from ..schedule import scheduled
from . import contracts
from .optim import build_optimizer
from .settings import SystemConfig, check_system_config, loss_key  # noqa: F401  (loss_key: its old home)

log = logging.getLogger(__name__)

# Independent random streams of one training step (see step_generator).
STREAM_CAMERAS, STREAM_RENDER, STREAM_GUIDANCE = 0, 1, 2


class ScoreDistillationSystem(pl.LightningModule):
    """Composes the parts of a run's plan (``scorelift.plan.RunPlan``) around ``prior``.
    Registered as system ``score-distillation`` by ``scorelift.systems`` (deferred: this module
    imports Lightning, which a start-up that stops at the checks does not need)."""

    Config = SystemConfig

    def __init__(self, plan: RunPlan, prior: DiffusionPrior):
        super().__init__()
        self.cfg: SystemConfig = plan.system.config
        self.data_cfg = plan.data
        self.prompt = plan.prompt  # None: an unconditional prior's run
        self.seed = plan.seed
        self.max_steps = int(plan.trainer.max_steps)
        self.fast_path = plan.fast_path
        object.__setattr__(self, "prior", prior)  # not a submodule: never checkpointed or moved

        settings = {"fast_path": plan.fast_path}
        self.geometry = plan.geometry.build(**settings)
        self.background = plan.background.build(**settings)
        self.renderer = plan.renderer.build(**settings)
        guidance = plan.guidance.build(prior, **settings)
        object.__setattr__(self, "guidance", guidance)
        self.guidance_name = plan.guidance.name
        conditioning = getattr(prior, "conditioning", "text")
        if conditioning == "none" or not getattr(prior, "has_unconditional", True):
            what = "is unconditional" if conditioning == "none" else f"is {conditioning}-conditioned without a null class"
            log.info("The prior %s: guidance=%s uses its single prediction, with no classifier-free guidance "
                     "(guidance_scale and cfg_convention do not apply).", what, self.guidance_name)
        self.loss_terms = {name: part.build(**settings) for name, part in plan.losses.items()}
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.plugin_outputs_checked = False  # the first training step checks what the plugins return

    # ----------------------------------------------------------------------------- checks
    # Everything about the config is checked once at start-up (scorelift.checks.check_inputs,
    # which calls check_config below); nothing here or in the training step checks it again.
    @property
    def is_latent(self) -> bool:
        return self.geometry.feature_kind == "latent"

    @classmethod
    def check_config(cls, system: SystemConfig, device: torch.device) -> None:
        """Start-up check of the parsed ``system`` section (``settings.check_system_config``)."""
        check_system_config(system, device)

    # ----------------------------------------------------------------------------- rendering
    def render(self, cameras: CameraBatch, generator: torch.Generator | None = None) -> RenderOutput:
        return self.renderer.render(self.geometry, self.background, cameras, generator)

    @torch.no_grad()
    def render_images(self, cameras: CameraBatch, chunk: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """Viewable renders: rgb [B, 3, H', W'] in [0, 1] (latents decoded by the prior's VAE, at its
        pixel size) and opacity [B, 1, H, W] at the render resolution."""
        was_training = self.training
        self.eval()
        rgbs, alphas = [], []
        try:
            for start in range(0, cameras.batch_size, chunk):
                out = self.render(cameras[list(range(start, min(start + chunk, cameras.batch_size)))].to(self.device))
                image = out.color.permute(0, 3, 1, 2).float()
                rgbs.append((self.prior.decode_latents(image) if self.is_latent else image).float().cpu())
                alphas.append(out.opacity.permute(0, 3, 1, 2).float().cpu())
        finally:
            self.train(was_training)
        return torch.cat(rgbs), torch.cat(alphas)

    def view_cameras(self, n: int, resolution: int | None = None) -> CameraBatch:
        v = self.cfg.views
        azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n)
        return make_cameras(v.elevation, azimuth, v.distance, v.fovy, resolution or v.resolution)

    # ----------------------------------------------------------------------------- training
    def update_parts(self, step: int) -> None:
        for part in (self.geometry, self.background, self.renderer, self.guidance, self.prior, *self.loss_terms.values()):
            part.do_update_step(step, self.max_steps)

    def training_step(self, batch, batch_idx):
        step = int(self.global_step)
        self.update_parts(step)
        cameras = sample_cameras(self.data_cfg, step_generator(self.seed, step, STREAM_CAMERAS), step)
        view_names = cameras.view_names()  # read on the CPU: on the GPU each angle would be a sync
        cameras = cameras.to(self.device)
        out = self.render(cameras, self.part_generator(self.renderer, step, STREAM_RENDER))
        self.last_render = (step, out)  # the geometry's after_backward reads it
        image = out.color.permute(0, 3, 1, 2)
        text = self.prior.condition(self.prompt, view_names)
        guidance_out = self.guidance(image, self.is_latent, text, self.part_generator(self.guidance, step, STREAM_GUIDANCE), cameras)
        losses = {name: loss(out, cameras) for name, loss in self.loss_terms.items()}
        if not self.plugin_outputs_checked:
            self.check_plugin_outputs(guidance_out, losses, image)

        terms = {"guidance": guidance_out["loss"], **losses}
        total = 0.0
        for name, value in terms.items():
            weight = scheduled(self.cfg.loss_weights[loss_key(name)], step)
            self.log(f"train/loss_{name}", value.detach(), on_step=True)
            if weight != 0.0:
                total = total + weight * value
        for key, value in guidance_out.items():
            if key != "loss":
                self.log(f"train/{key}", torch.as_tensor(value, dtype=torch.float32), on_step=True)
        if not isinstance(total, torch.Tensor):
            raise ConfigError("Every loss weight is 0 at this step: nothing to optimise.")
        if not torch.isfinite(total):
            return self._skip_nonfinite(step, terms)
        self.nonfinite_in_a_row = 0
        self.log("loss", total.detach(), prog_bar=True, on_step=True)
        self.log("train/opacity_mean", out.opacity.detach().mean(), on_step=True)
        for key, value in self.geometry.training_stats().items():
            self.log(f"train/{key}", value, on_step=True)
        return total

    def on_after_backward(self) -> None:
        last = self.__dict__.pop("last_render", None)
        if last is not None:
            self.geometry.after_backward(*last)
            self.last_step = last[0]

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Here rather than in on_train_batch_end: the callbacks' step-end hooks (the periodic
        # checkpoint, the stop at a step's end, the evaluations) run before the module's, and a
        # checkpoint must hold the step's Gaussians after its densification, or a run resumed from
        # it would skip that round.
        step = self.__dict__.pop("last_step", None)
        if step is not None:
            self.geometry.after_optimizer_step(step, getattr(optimizer, "optimizer", optimizer))

    def part_generator(self, part, step: int, stream: int) -> torch.Generator:
        """The generator of ``part``'s draws in this step: on the run's GPU on the fast path, if the
        part draws on its generator's device (``draws_on_device``), else on the CPU."""
        return step_generator(self.seed, step, stream, fast_path.draw_device(part, self.device, self.fast_path))

    def check_plugin_outputs(self, guidance_out, losses: dict, image: torch.Tensor) -> None:
        """PluginError (one paragraph naming the plugin and the contract) if the guidance or a loss
        returned the wrong thing; runs on the first training step only, then never again."""
        contracts.check_guidance_output(guidance_out, self.guidance_name, self.guidance, render=image)
        for name, value in losses.items():
            contracts.check_loss_output(value, name, self.loss_terms[name])
        self.plugin_outputs_checked = True

    def _skip_nonfinite(self, step: int, terms: dict):
        """A NaN/Inf loss skips the step (Lightning skips the optimizer step when None is returned)."""
        self.__dict__.pop("last_render", None)  # no backward: nothing for the geometry to read
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_total), on_step=True)
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite_steps:
            bad = {k: float(v.detach()) for k, v in terms.items()}
            raise FloatingPointError(
                f"The loss was NaN or Inf for {self.nonfinite_in_a_row} steps in a row (last at step {step}; "
                f"terms {bad}). The run stopped; last.ckpt holds the last good state. Lower the learning "
                f"rates or guidance scale, or raise system.max_nonfinite_steps."
            )
        return None

    def configure_optimizers(self):
        parts = {
            "geometry": self.geometry.optimizer_groups() or self.geometry.parameters(),
            "background": self.background.parameters(),
            "renderer": self.renderer.parameters(),
            "guidance": self.guidance.parameters(),
        }
        return build_optimizer(self.cfg.optimizer, parts)

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["scorelift"] = {
            "system": self.cfg.name,
            "guidance_state": self.guidance.state_dict(),
            "nonfinite_total": self.nonfinite_total,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("scorelift", {})
        if meta.get("system") not in (None, self.cfg.name):
            raise ConfigError(
                f"The checkpoint was written by system {meta.get('system')!r}, but this run is system "
                f"{self.cfg.name!r}; resume it with system={meta.get('system')}."
            )
        self.guidance.load_state_dict(meta.get("guidance_state", {}))
        self.nonfinite_total = int(meta.get("nonfinite_total", 0))
