"""``vsd``: Variational Score Distillation with a LoRA model (ProlificDreamer), per
docs/methods.md (VSD section).

Two eps estimates at the same z_t = sqrt(ab) z + sqrt(1 - ab) eps:
- the prior, with CFG (standard convention, scale 7.5) and the view-dependent prompt;
- the LoRA model: a copy of the prior's UNet with rank-4 LoRA adapters on the attention
  projections (peft) and a camera embedding (flattened 4x4 camera-to-world through a small MLP,
  added to the timestep embedding), the view-independent prompt, CFG over camera vs zero camera
  (scale 1: the camera-conditioned prediction).

    g = (1 - ab) (e_prior_cfg - e_lora),  injected as dL/dz like SDS.

Each call also trains the LoRA model on the detached render: t' ~ U{0 .. T-1}, the standard
diffusion loss against what the prior predicts (eps, v or the sample; eps for a score model), the camera zeroed with p = 0.1. That
loss is added to the returned ``loss``; it reaches only the LoRA and camera parameters (the
render is detached), and the VSD gradient reaches only the render (both UNet passes for g run
under no_grad). The system puts ``parameters()`` in its ``guidance`` optimizer group
(configs/system/prolificdreamer.yaml: lr 1e-4) and saves ``state_dict()`` in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from scorelift.errors import ConfigError
from scorelift.interfaces.guidance import Guidance, GuidanceOutput
from scorelift.interfaces.prior import Conditioning
from scorelift.registry import register
from scorelift.transfer import to_device
from scorelift.maths import score_math as sm
from scorelift.maths import parameterisation as pz

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def run_fraction_schedule() -> list:
    """t_max 0.98 -> 0.5 at half the run, whatever trainer.max_steps is (ProlificDreamer: at
    12,500 of 25,000 steps); built alone, without a trainer section, the run is taken as 25,000."""
    steps = "${oc.select:trainer.max_steps,25000}"
    return [f"${{step_fraction:{steps},0.5}}", 0.98, 0.5, f"${{step_fraction:{steps},0.5,1}}"]


@dataclass(kw_only=True)
class VSDConfig:
    """Options of ``vsd`` and their defaults. RGB renders only (system=prolificdreamer or
    dreamfusion); the LoRA and camera parameters train in the system's ``guidance`` optimizer
    group (system.optimizer.lr.guidance, 1e-4 in ProlificDreamer)."""

    # The prior's CFG, as in sds (ProlificDreamer: 7.5, standard convention).
    guidance_scale: float = 7.5
    cfg_convention: str = "standard"
    # t bounds as fractions of T (scheduled scalars). On the shapes prior, 1,000 steps with the
    # default anneal of t_max gave IoU 0.76 / identification 0.85.
    min_step_percent: Any = 0.02
    max_step_percent: Any = field(default_factory=run_fraction_schedule)
    lora_rank: int = 4
    lora_cfg_scale: float = 1.0  # CFG of the LoRA model over camera vs zero camera; 1 = camera-conditioned
    camera_drop_prob: float = 0.1  # the LoRA trains with a zero camera this often
    grad_clip: Any = None


class CameraEmbedding(torch.nn.Module):
    """[B, 4, 4] camera-to-world -> [B, D] added to the UNet's timestep embedding. The last layer
    starts at zero, so the LoRA model starts as an exact copy of the prior."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, dim), torch.nn.SiLU(), torch.nn.Linear(dim, dim))
        torch.nn.init.zeros_(self.net[2].weight)
        torch.nn.init.zeros_(self.net[2].bias)

    def forward(self, c2w: torch.Tensor) -> torch.Tensor:
        return self.net(c2w.reshape(c2w.shape[0], 16))


@register("guidance", "vsd")
class VSDGuidance(Guidance):
    # one line for `scorelift --list`
    summary = "Variational score distillation with a LoRA of the prior, ProlificDreamer's gradient (Wang et al. 2023)."

    Config = VSDConfig
    supports_latent = False  # the LoRA model learns the distribution of VAE-encoded RGB renders
    requires = ("trainable_denoiser",)  # the LoRA model is a trained copy of the prior's UNet
    draws_on_device = True

    @classmethod
    def check_config(cls, c: VSDConfig) -> None:
        sm.check_cfg_convention(c.cfg_convention)
        sm.check_step_schedules(c)
        if c.lora_rank < 1:
            raise ConfigError(f"guidance.lora_rank={c.lora_rank} must be at least 1 (ProlificDreamer: 4).")
        if not 0.0 <= c.camera_drop_prob <= 1.0:
            raise ConfigError(f"guidance.camera_drop_prob={c.camera_drop_prob} must lie in [0, 1] (0.1).")

    def __init__(self, cfg: Any, prior):
        super().__init__(cfg, prior)
        c = self.cfg
        self.lora_unet = self._add_lora(prior.trainable_denoiser_copy(), c.lora_rank)
        dim = self.lora_unet.time_embedding.linear_2.out_features
        self.camera_embedding = CameraEmbedding(dim).to(prior.device)
        self._camera_emb: torch.Tensor | None = None  # set around each LoRA-model call
        self.lora_unet.time_embedding.register_forward_hook(self._add_camera)
        self.update_step(0, 1)

    @staticmethod
    def _add_lora(lora, rank: int):
        try:
            from peft import LoraConfig
        except ImportError as exc:  # peft is a dependency, but say what to do if it is missing
            raise ConfigError("guidance=vsd needs peft for its LoRA adapters: pip install peft.") from exc
        config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
        try:
            if hasattr(lora, "add_adapter"):  # diffusers' conditional UNets carry peft's adapter API
                lora.add_adapter(config)
            else:  # a UNet2DModel does not: peft injects the same "default" adapter into any module
                from peft import inject_adapter_in_model

                inject_adapter_in_model(config, lora)
        except ValueError as exc:  # peft: "Target modules ... not found in the base model"
            raise ConfigError(
                f"guidance=vsd trains LoRA adapters on the attention projections ({', '.join(LORA_TARGETS)}) of "
                f"the prior's denoiser, and {type(lora).__name__} of this prior has none (a UNet without attention "
                f"blocks); use guidance=sds, ssd or paas with this prior. ({(str(exc).splitlines() or [''])[0]})"
            ) from None
        for name, p in lora.named_parameters():
            p.requires_grad_("lora_" in name)
            if "lora_" in name:
                p.data = p.data.float()  # adapters train in fp32 even on an fp16 UNet
        return lora

    def _add_camera(self, module, inputs, output):
        return output if self._camera_emb is None else output + self._camera_emb.to(output.dtype)

    def update_step(self, step: int, max_steps: int) -> None:
        self.t_min, self.t_max, self.grad_clip = sm.scheduled_step_state(self.cfg, step, self.prior.num_train_timesteps)

    # ------------------------------------------------------------------ the LoRA model
    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.lora_unet.parameters() if p.requires_grad]

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(self.lora_parameters() + list(self.camera_embedding.parameters()))

    def state_dict(self) -> dict:
        lora = {n: p.detach().clone() for n, p in self.lora_unet.named_parameters() if p.requires_grad}
        return {"lora": lora, "camera": self.camera_embedding.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        params = dict(self.lora_unet.named_parameters())
        with torch.no_grad():
            for name, value in state["lora"].items():
                params[name].copy_(value)
        self.camera_embedding.load_state_dict(state["camera"])

    def lora_forward(self, z_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor | None, c2w: torch.Tensor) -> torch.Tensor:
        """The LoRA model's raw prediction (what the prior predicts: eps, v, sample or score; fp32)
        at (z_t [B, C, h, w], t [B]) with the view-independent conditioning (embeddings [B, L, D],
        labels [B] or None) and cameras [B, 4, 4] (the camera embedding rides on the time embedding)."""
        self._camera_emb = self.camera_embedding(c2w.float())
        try:
            return self.prior.denoiser_output(self.lora_unet, z_t, t, emb)
        finally:
            self._camera_emb = None

    def lora_eps(self, z_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor | None, c2w: torch.Tensor) -> torch.Tensor:
        """The LoRA model's eps [B, C, h, w] (converted from what the prior predicts)."""
        return self.prior.eps_from_output(self.lora_forward(z_t, t, emb, c2w), z_t, t)

    def lora_loss(self, z0: torch.Tensor, emb: torch.Tensor | None, c2w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Diffusion loss of the LoRA model on detached latents z0 [B, C, h, w]; t' ~ U{0..T-1};
        in the prediction's own space (eps, v or the sample), or in eps space for a score model
        (``parameterisation.training_target``)."""
        B, dev = z0.shape[0], z0.device
        t = sm.sample_timesteps(B, 0, self.prior.num_train_timesteps - 1, generator, dev)
        noise = sm.sample_noise(z0.shape, generator, dev)
        drop = to_device(torch.rand(B, generator=generator, device=generator.device) < self.cfg.camera_drop_prob, dev)
        c2w = torch.where(drop.view(B, 1, 1), torch.zeros_like(c2w), c2w)
        ab = sm.per_sample(self.prior.alphas_cumprod.to(dev)[t], z0.ndim)
        z_t = ab.sqrt() * z0 + (1.0 - ab).sqrt() * noise
        pred = self.lora_forward(z_t, t, emb, c2w)
        kind, parameterisation = self.prior.prediction_type, self.prior.parameterisation
        if pz.loss_space(kind) == "eps":
            pred = self.prior.eps_from_output(pred, z_t, t)
        return F.mse_loss(pred, pz.training_target(z0, noise, ab, kind, parameterisation))

    # ------------------------------------------------------------------ the guidance
    def vsd_gradient(self, z: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, text: Conditioning, c2w: torch.Tensor) -> torch.Tensor:
        """g = (1 - ab) (e_prior_cfg - e_lora) [B, C, h, w], computed without any graph."""
        B, dev = z.shape[0], z.device
        ab = sm.per_sample(self.prior.alphas_cumprod.to(dev)[t], z.ndim)
        with torch.no_grad():
            z_t = ab.sqrt() * z.detach() + (1.0 - ab).sqrt() * eps
            e_c, e_u = self.prior.predict_eps(
                z_t, t, sm.expand_text(text.cond, B, "cond"), sm.expand_text(text.uncond, B, "uncond")
            )
            e_prior = sm.cfg_combine(e_c.float(), e_u.float(), self.cfg.guidance_scale, self.cfg.cfg_convention)
            emb = sm.expand_text(text.cond_view_independent, B, "cond")
            e_cam = self.lora_eps(z_t, t, emb, c2w)
            if self.cfg.lora_cfg_scale == 1.0:
                e_lora = e_cam  # standard CFG at scale 1 is the camera-conditioned prediction
            else:
                e_zero = self.lora_eps(z_t, t, emb, torch.zeros_like(c2w))
                e_lora = e_zero + self.cfg.lora_cfg_scale * (e_cam - e_zero)
            # Not zeroed where non-finite: the loss turns non-finite and the system skips the step.
            g = sm.clamp_score((1.0 - ab) * (e_prior - e_lora), self.grad_clip)
        return g

    def __call__(
        self,
        image: torch.Tensor,
        is_latent: bool,
        text: Conditioning,
        generator: torch.Generator,
        cameras=None,
    ) -> GuidanceOutput:
        """image: [B, 3, H, W] RGB in [0, 1]; cameras: the batch's CameraBatch (c2w [B, 4, 4]).

        Draws t, eps (VSD), then t', noise and the camera drop (LoRA) from ``generator``.
        Returns {"loss" (VSD injection + LoRA loss), "lora_loss", "grad_norm", "t_mean"}.
        """
        if cameras is None:
            raise ValueError("guidance=vsd needs the batch's cameras (its LoRA model is camera-conditioned).")
        z = sm.render_latents(self.prior, image, is_latent)
        B, dev = z.shape[0], z.device
        c2w = cameras.c2w.to(dev)
        t = sm.sample_timesteps(B, self.t_min, self.t_max, generator, dev)
        eps = sm.sample_noise(z.shape, generator, dev)
        g = self.vsd_gradient(z, t, eps, text, c2w)
        lora_loss = self.lora_loss(z.detach(), sm.expand_text(text.cond_view_independent, B, "cond"), c2w, generator)
        return {
            "loss": sm.inject_gradient(z, g) + lora_loss,
            "lora_loss": lora_loss.detach(),
            "grad_norm": g.norm().detach(),
            "t_mean": t.float().mean().detach(),
        }
