"""Geometry: what a run optimises: a density field (``kind = "field"``), a triangle mesh
(``"mesh"``) or Gaussians (``"gaussians"``), with features (colour or latents) over a bounding box.

The field interface below (points -> density, features) is what ray marchers read; geometries
of other kinds add their own (a mesh's vertices and faces) and say which with ``kind``, which the
start-up check holds against the renderer's ``renders``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import BaseModulePart


@dataclass
class GeometryOutput:
    """density: [N] non-negative volume density; features: [N, C] colour (RGB in [0, 1]) or latent."""

    density: torch.Tensor
    features: torch.Tensor


GEOMETRY_KINDS = ("field", "mesh", "gaussians")
# The kinds whose ``density`` is a field over space (a mesh has only its surface): a mesh export
# or a next stage (``init_from``) can start from them.
DENSITY_KINDS = ("field", "gaussians")


@dataclass
class GaussianSet:
    """N 3D Gaussians, activated: means [N, 3] world; scales [N, 3] standard deviations along the
    Gaussian's own axes; quats [N, 4] unit rotations (w, x, y, z); opacities [N] in [0, 1]; sh
    [N, K, C] feature coefficients of the spherical harmonics up to ``sh_degree`` (K = (degree + 1)^2;
    degree 0: one view-independent value per channel); ``rgb``: True when the features are RGB in
    3DGS's convention (colour = 0.5 + SH value, clamped to [0, 1]), False for latents (the SH
    value as it is)."""

    means: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor
    sh_degree: int
    rgb: bool


class Geometry(BaseModulePart):
    """Maps world points to density and features.

    Subclasses set ``self.n_features`` (C) and register a buffer ``bbox`` [2, 3] (min corner,
    max corner) outside of which density is zero; ``feature_kind`` is "latent" or "rgb".
    """

    # field | mesh | gaussians: what the geometry is, and so which renderers draw it (Renderer.renders).
    kind: str = "field"
    n_features: int
    feature_kind: str
    bbox: torch.Tensor

    # feature_activation option -> "latent" or "rgb", for geometries whose Config has that option.
    feature_kinds: dict[str, str] = {}
    # The Config options that set ``parameter_bytes`` (named, with their values, by the start-up
    # memory check when the parameters would not fit), e.g. ("resolution", "n_features").
    size_options: tuple[str, ...] = ()

    @classmethod
    def feature_kind_of(cls, cfg) -> str | None:
        """"latent" or "rgb": what a geometry built from the parsed config ``cfg`` renders, told
        before it is built (the start-up check compares it with the prior and the guidance).
        Default: ``feature_kinds[cfg.feature_activation]``; None when that cannot be told."""
        return cls.feature_kinds.get(getattr(cfg, "feature_activation", None))

    @classmethod
    def parameter_bytes(cls, cfg) -> int | None:
        """Bytes of the parameters that a geometry built from the parsed config ``cfg`` allocates
        (every ``torch.nn.Parameter`` of its ``__init__``, at the default dtype), told before it is
        built: the start-up check adds gradients and optimizer state and compares the sum with
        the device's memory. None (the default) when it cannot be told; the check then skips it."""
        return None

    def forward(self, points: torch.Tensor) -> GeometryOutput:
        """points: [N, 3] world coordinates -> GeometryOutput with N entries."""
        raise NotImplementedError

    def host_bbox(self) -> torch.Tensor:
        """``bbox`` [2, 3] as a CPU tensor, copied on first use: the renderer reads the box's size
        every step, and reading a CUDA tensor's values would synchronise the GPU each time. The box
        comes from the config and is never trained, so the copy stays valid."""
        cached = self.__dict__.get("_host_bbox")
        if cached is None:
            cached = self.bbox.detach().cpu()
            self.__dict__["_host_bbox"] = cached
        return cached

    def mesh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A mesh geometry's surface (``kind = "mesh"``): vertices [M, 3] (differentiable in its
        parameters) and faces [K, 3] (long, counter-clockwise seen from outside). Its ``forward``
        gives the features at surface points."""
        raise NotImplementedError(f"{type(self).__name__} is a {self.kind} geometry: it has no mesh()")

    def gaussians(self) -> "GaussianSet":
        """A Gaussian geometry's splats (``kind = "gaussians"``), differentiable in its parameters."""
        raise NotImplementedError(f"{type(self).__name__} is a {self.kind} geometry: it has no gaussians()")

    # ----------------------------------------------------------------------------- training hooks
    # A geometry whose parameters change during training (Gaussians that are cloned, split and
    # pruned) overrides these; the defaults do nothing, so fields and meshes ignore them.
    def optimizer_groups(self) -> list[tuple[str, list[torch.nn.Parameter], float]] | None:
        """The geometry's optimizer groups as (name, parameters, factor on system.optimizer.lr.geometry),
        or None (the default): one group of every parameter at the geometry's rate."""
        return None

    def training_stats(self) -> dict[str, float]:
        """Numbers the run logs every step as ``train/<name>`` (e.g. the Gaussians' count); none by default."""
        return {}

    def after_backward(self, step: int, render) -> None:
        """Called after each training step's backward pass, with the step's render (the
        renderer's RenderOutput; its tensors' gradients are filled where they were retained)."""

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Called after each optimizer step; a geometry that adds or removes parameters here
        updates ``optimizer`` with them (``scorelift.library.parameter_surgery``)."""

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """[N, 3] -> [N] density only (mesh export, occupancy); defaults to ``forward``."""
        return self.forward(points).density

    def normals(self, points: torch.Tensor) -> torch.Tensor | None:
        """[N, 3] -> [N, 3] unit normals (minus the density gradient), or None if not provided."""
        return None

    def central_difference_normals(self, points: torch.Tensor, h: float) -> torch.Tensor:
        """[N, 3] -> [N, 3] minus the normalised central-difference gradient of ``density`` with
        step ``h`` (6 density lookups per point; differentiable). Zero where the field is flat."""
        offsets = torch.eye(3, dtype=points.dtype, device=points.device) * h  # [3, 3]
        probes = torch.cat([points[:, None, :] + offsets, points[:, None, :] - offsets], dim=1)  # [N, 6, 3]
        d = self.density(probes.reshape(-1, 3)).reshape(-1, 6)
        grad = (d[:, :3] - d[:, 3:]) / (2.0 * h)  # [N, 3]
        # eps bounds d(normal)/d(gradient) by 1/eps where the field is nearly flat.
        return torch.nn.functional.normalize(-grad, dim=-1, eps=1e-6)
