"""Guidance: turns a rendered image into a gradient from the diffusion prior."""

from __future__ import annotations

from typing import Iterator

import torch

from .base import BasePart
from .prior import Conditioning, DiffusionPrior

GuidanceOutput = dict  # {"loss": scalar to back-propagate, plus detached diagnostics}


class Guidance(BasePart):
    """A score-distillation method.

    ``__call__`` receives the render and returns a dict whose ``"loss"`` is a scalar whose
    gradient with respect to the render is the method's dL/d(render); other entries (e.g.
    ``"grad_norm"``, ``"t"``) are detached diagnostics the system logs.

    Set ``supports_latent`` / ``supports_rgb`` to declare which renders the method accepts, and
    ``requires`` to the prior capabilities it calls (checked at start-up, before anything loads).
    Methods with trainable state (VSD's LoRA) override ``parameters``, ``state_dict``,
    ``load_state_dict`` and ``train_step``.
    """

    supports_latent: bool = True
    supports_rgb: bool = True
    # Capabilities the prior must declare (``DiffusionPrior.capabilities``), e.g. ("trainable_denoiser",).
    requires: tuple[str, ...] = ()
    # True: the method draws on ``generator.device``, so on the GPU fast path (scorelift.fast_path)
    # it is given a generator on the run's device. False (a method written for CPU generators): it
    # always gets a CPU generator.
    draws_on_device: bool = False

    def __init__(self, cfg, prior: DiffusionPrior):
        super().__init__(cfg)
        self.prior = prior

    def __call__(
        self,
        image: torch.Tensor,
        is_latent: bool,
        text: Conditioning,
        generator: torch.Generator,
        cameras=None,
    ) -> GuidanceOutput:
        """image: [B, C, H, W]: normalised prior latents (C = prior.latent_channels) if
        ``is_latent`` else RGB in [0, 1] (C = 3). ``generator`` draws every random number: a CPU
        generator, or one on the run's device when the method sets ``draws_on_device``."""
        raise NotImplementedError

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
