"""3D Gaussian splats (3DGS, DreamGaussian's first stage): N anisotropic Gaussians whose number
changes as they train (adaptive density control).

Parameters, one row per Gaussian: ``means`` [N, 3]; ``log_scales`` [N, 3] (standard deviations
along the Gaussian's axes, in log space); ``quats`` [N, 4] (rotation, w x y z, normalised when
used); ``opacity_logits`` [N] (opacity = sigmoid); ``sh_dc`` [N, C] and ``sh_rest`` [N, K - 1, C]
(spherical-harmonic coefficients, K = (sh_degree + 1)^2). With ``feature_activation=sh`` the
features are RGB in 3DGS's convention (colour = 0.5 + SH value, clamped to [0, 1]); with ``none``
or ``tanh`` they are the prior's latents (sh_degree 0).

Adaptive density control (3DGS, Kerbl et al. 2023), from step ``densify_from`` to ``densify_until``
every ``densify_every`` steps: a Gaussian whose view-space centre gradient, averaged over the views
that saw it since the last densification, reaches ``densify_grad_threshold`` is cloned (if its
largest scale is at most ``split_scale``) or split into two smaller ones sampled inside it (if
larger); Gaussians below ``prune_opacity`` or larger than ``prune_scale`` are removed; every
``opacity_reset_every`` steps opacities are lowered to ``reset_opacity``. The count never exceeds
``max_gaussians`` (the candidates with the largest gradients go first). The accumulated gradients
and counts are buffers, so they are checkpointed and a resumed run densifies as one that never
stopped; the parameters' row count is read back from the checkpoint.

As a field (``forward``, ``density``: the mesh export, a mesh stage's start): density is the sum of
the Gaussians' kernels, each scaled so that a ray through its centre is as opaque as its splat
(``peak_densities``), features their density-weighted mean colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from scorelift.errors import ConfigError
from scorelift.interfaces.geometry import Geometry, GeometryOutput, GaussianSet
from scorelift.library.parameter_surgery import append_rows, reset_rows, select_rows
from scorelift.library.splat_ply import read_ply
from scorelift.maths.splat import SH_C0, covariance_3d, gaussian_field, quaternion_to_rotation
from scorelift.registry import register

FEATURE_KINDS = {"sh": "rgb", "none": "latent", "tanh": "latent"}
LATENT_BOUND = 3.0  # tanh latents are bounded to +-3, as the grids'
MAX_SH_DEGREE = 3
PARAMETERS = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
# Per-Gaussian buffers of the density control (checkpointed with the parameters).
STATISTICS = ("grad_accum", "seen")


@dataclass(kw_only=True)
class GaussiansConfig:
    """Options of ``gaussians`` and their defaults (``geometry=gaussians geometry.<option>=...``)."""

    n_gaussians: int = 2000  # Gaussians at the start (random start)
    max_gaussians: int = 20000  # the most densification may make
    bbox_radius: float = 1.0  # the box [-r, r]^3 the field (export) covers; Gaussians may leave it
    init_radius: float = 0.5  # random start: centres uniform in a ball of this radius
    init_scale: float = 0.02  # starting standard deviation (world units) along every axis
    init_opacity: float = 0.1
    n_features: int = 3  # C: 3 for RGB (feature_activation=sh), the prior's latent channels otherwise
    feature_activation: str = "sh"  # sh (RGB through spherical harmonics) | none | tanh (latents)
    sh_degree: int = 0  # 0..3; above 0 only with sh
    # Learning rates of each parameter as factors on system.optimizer.lr.geometry.
    lr_means: float = 0.2
    lr_scales: float = 1.0
    lr_quats: float = 1.0
    lr_opacity: float = 10.0
    lr_features: float = 2.0
    # Adaptive density control (steps are the run's training steps).
    densify_from: int = 100
    densify_until: int = 1500
    densify_every: int = 100
    densify_grad_threshold: float = 0.01  # mean |d loss / d centre| in normalised view space (NDC)
    split_scale: float = 0.02  # Gaussians larger than this (world units) split, smaller ones are cloned
    prune_opacity: float = 0.01
    prune_scale: float = 0.5  # Gaussians larger than this (world units) are removed
    opacity_reset_every: int = 0  # 0: never
    reset_opacity: float = 0.01
    init_seed: int = 0
    # A 3DGS .ply (a run's export, or another tool's) to start from instead of the random ball.
    init_ply: str = ""


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@register("geometry", "gaussians")
class GaussianGeometry(Geometry):
    """N Gaussians (``gaussians()`` -> GaussianSet) with adaptive density control."""

    # one line for `scorelift --list`
    summary = "3D Gaussian splats with adaptive density control (DreamGaussian)."

    Config = GaussiansConfig
    kind = "gaussians"
    feature_kinds = FEATURE_KINDS
    size_options = ("max_gaussians", "n_features", "sh_degree")

    @classmethod
    def check_config(cls, c: GaussiansConfig) -> None:
        where = "geometry (gaussians)"
        if c.max_gaussians < 1:
            raise ConfigError(f"{where} max_gaussians={c.max_gaussians} must be at least 1 (the most Gaussians "
                              f"densification may make; the start has n_gaussians={c.n_gaussians}).")
        if not c.init_ply and not 1 <= c.n_gaussians <= c.max_gaussians:
            raise ConfigError(f"{where} n_gaussians={c.n_gaussians} must lie in 1..max_gaussians ({c.max_gaussians}).")
        if c.feature_activation not in FEATURE_KINDS:
            raise ConfigError(f"{where} feature_activation={c.feature_activation!r} is not one of "
                              f"{', '.join(FEATURE_KINDS)} (sh: RGB through spherical harmonics; none, tanh: latents).")
        if isinstance(c.sh_degree, bool) or not isinstance(c.sh_degree, int) or not 0 <= c.sh_degree <= MAX_SH_DEGREE:
            raise ConfigError(f"{where} sh_degree={c.sh_degree!r} must be an integer in 0..{MAX_SH_DEGREE} (the "
                              f"spherical harmonics 3D Gaussian splatting defines).")
        if c.feature_activation == "sh" and c.n_features != 3:
            raise ConfigError(f"{where} feature_activation='sh' renders RGB and needs n_features=3, got {c.n_features}.")
        if c.feature_activation != "sh" and c.sh_degree != 0:
            raise ConfigError(f"{where} sh_degree={c.sh_degree} needs feature_activation=sh: latent features are "
                              f"view-independent (set geometry.sh_degree=0).")
        if not 0 < c.init_radius < c.bbox_radius:
            raise ConfigError(f"{where} init_radius={c.init_radius} must be positive and inside bbox_radius={c.bbox_radius}.")
        if not c.init_scale > 0 or not 0 < c.init_opacity < 1 or not 0 < c.reset_opacity < 1:
            raise ConfigError(f"{where} init_scale={c.init_scale} must be positive, init_opacity={c.init_opacity} and "
                              f"reset_opacity={c.reset_opacity} inside (0, 1).")
        rates = {k: getattr(c, k) for k in ("lr_means", "lr_scales", "lr_quats", "lr_opacity", "lr_features")}
        bad = {k: v for k, v in rates.items() if not v >= 0}
        if bad:
            raise ConfigError(f"{where} {bad} must be non-negative (factors on system.optimizer.lr.geometry).")
        if c.densify_every < 1 or c.densify_from < 0 or c.opacity_reset_every < 0:
            raise ConfigError(f"{where} densify_every={c.densify_every} must be at least 1, densify_from="
                              f"{c.densify_from} and opacity_reset_every={c.opacity_reset_every} non-negative.")
        if c.init_ply:
            try:
                rows = read_ply(Path(c.init_ply).expanduser())
            except ConfigError as exc:
                raise ConfigError(f"{where} init_ply: {exc} Pass a .ply written by mode=export (splats/splats.ply) "
                                  f"or another 3D Gaussian splatting tool.") from None
            C, K1 = rows["sh_dc"].shape[1], rows["sh_rest"].shape[1]
            if C != c.n_features or K1 != (c.sh_degree + 1) ** 2 - 1:
                raise ConfigError(
                    f"{where} init_ply={c.init_ply!r} holds {C} feature channels at SH degree "
                    f"{int(round(math.sqrt(K1 + 1))) - 1}, but the geometry has n_features={c.n_features} and "
                    f"sh_degree={c.sh_degree}; set them to the file's.")
            if rows["means"].shape[0] > c.max_gaussians:
                raise ConfigError(f"{where} init_ply={c.init_ply!r} holds {rows['means'].shape[0]} Gaussians, more "
                                  f"than max_gaussians={c.max_gaussians}; raise geometry.max_gaussians.")
        if not c.densify_grad_threshold > 0 or not 0 < c.split_scale < c.prune_scale or not 0 <= c.prune_opacity < 1:
            raise ConfigError(f"{where} densify_grad_threshold={c.densify_grad_threshold} must be positive, split_scale="
                              f"{c.split_scale} positive and below prune_scale={c.prune_scale}, prune_opacity="
                              f"{c.prune_opacity} in [0, 1).")

    @classmethod
    def parameter_bytes(cls, c: GaussiansConfig) -> int:
        per = 3 + 3 + 4 + 1 + c.n_features * (c.sh_degree + 1) ** 2 + len(STATISTICS)
        return 4 * per * c.max_gaussians

    def __init__(self, cfg=None):
        super().__init__(cfg)
        c = self.cfg
        self.n_features = c.n_features
        self.feature_kind = FEATURE_KINDS[c.feature_activation]
        r = float(c.bbox_radius)
        self.register_buffer("bbox", torch.tensor([[-r] * 3, [r] * 3]))
        gen = torch.Generator().manual_seed(c.init_seed)
        N = c.n_gaussians
        direction = torch.nn.functional.normalize(torch.randn((N, 3), generator=gen), dim=-1)
        radius = c.init_radius * torch.rand((N, 1), generator=gen) ** (1.0 / 3.0)  # uniform in the ball
        if c.init_ply:
            self._set_rows(**read_ply(Path(c.init_ply).expanduser()))
            return
        self._set_rows(means=direction * radius,
                       log_scales=torch.full((N, 3), math.log(c.init_scale)),
                       quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(N, 1),
                       opacity_logits=torch.full((N,), _logit(c.init_opacity)),
                       sh_dc=torch.zeros((N, c.n_features)),
                       sh_rest=torch.zeros((N, (c.sh_degree + 1) ** 2 - 1, c.n_features)))

    def _set_rows(self, **values: torch.Tensor) -> None:
        """(Re)create the parameters from ``values`` (one [N, ...] tensor per name) and zero the statistics."""
        for name, value in values.items():
            setattr(self, name, torch.nn.Parameter(value.contiguous()))
        N = self.means.shape[0]
        self.register_buffer("grad_accum", torch.zeros(N, device=self.means.device))
        self.register_buffer("seen", torch.zeros(N, device=self.means.device))

    @property
    def count(self) -> int:
        return int(self.means.shape[0])

    # ----------------------------------------------------------------------------- the splats
    def gaussians(self) -> GaussianSet:
        sh = torch.cat([self.sh_dc[:, None], self.sh_rest], dim=1)  # [N, K, C]
        if self.cfg.feature_activation == "tanh":
            sh = LATENT_BOUND * torch.tanh(sh / LATENT_BOUND)
        return GaussianSet(means=self.means, scales=torch.exp(self.log_scales), quats=self.quats,
                           opacities=torch.sigmoid(self.opacity_logits), sh=sh, sh_degree=self.cfg.sh_degree,
                           rgb=self.feature_kind == "rgb")

    def base_features(self) -> torch.Tensor:
        """[N, C] the view-independent feature of each Gaussian (its colour for RGB)."""
        g = self.gaussians()
        value = SH_C0 * g.sh[:, 0]
        return (value + 0.5).clamp(0.0, 1.0) if g.rgb else value

    # ----------------------------------------------------------------------------- as a field
    def peak_densities(self) -> torch.Tensor:
        """[N] each Gaussian's volume density at its centre: the one whose integral along a line
        through the centre, -log(1 - opacity), makes a ray through it as opaque as its splat
        (sigma taken as the mean of the three scales: a ray's direction is not known here)."""
        g = self.gaussians()
        sigma = g.scales.mean(dim=-1)
        return -torch.log1p(-g.opacities.clamp_max(0.99)) / (math.sqrt(2.0 * math.pi) * sigma)

    def forward(self, points: torch.Tensor) -> GeometryOutput:
        """points [P, 3] -> density [P] (a volume density: the sum of the Gaussians' kernels, each
        scaled by ``peak_densities``) and features [P, C] (their density-weighted mean). Not
        differentiable: the renderer reads ``gaussians()``."""
        g = self.gaussians()
        density, features = gaussian_field(g.means.detach(), covariance_3d(g.scales, g.quats).detach(),
                                           self.peak_densities().detach(), self.base_features().detach(), points)
        return GeometryOutput(density=density, features=features)

    # ----------------------------------------------------------------------------- from a density field
    @torch.no_grad()
    def init_from(self, field: Geometry, level: float) -> None:
        """Start from a finished density field: ``n_gaussians`` centres drawn from the points of a
        64^3 lattice whose density reaches ``level`` (jittered within their cell), each as large as
        a cell and coloured by the field's features there."""
        if field.n_features != self.n_features:
            raise ConfigError(
                f"init_from: the density field renders {field.n_features} channels but geometry.n_features="
                f"{self.n_features}; set geometry.n_features={field.n_features} (and the matching feature_activation).")
        c = self.cfg
        device = self.means.device
        field = field.to(device)
        lo, hi = field.bbox[0].float(), field.bbox[1].float()
        R = 64
        axes = [torch.linspace(float(lo[i]), float(hi[i]), R, device=device) for i in range(3)]
        z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        lattice = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
        density = torch.cat([field.density(p) for p in lattice.split(65536)])
        inside = lattice[density >= level]
        if inside.shape[0] == 0:
            raise ConfigError(f"init_from: no point of the density field reaches the level {level:.4g}; there is "
                              f"nothing to place Gaussians on.")
        gen = torch.Generator().manual_seed(c.init_seed)
        spacing = (hi - lo) / (R - 1)
        pick = torch.randint(inside.shape[0], (c.n_gaussians,), generator=gen).to(device)
        jitter = (torch.rand((c.n_gaussians, 3), generator=gen).to(device) - 0.5) * spacing
        means = inside[pick] + jitter
        features = torch.cat([field(p).features for p in means.split(65536)]).float()
        dc = (features.clamp(1e-3, 1 - 1e-3) - 0.5) / SH_C0 if self.feature_kind == "rgb" else features
        if c.feature_activation == "tanh":
            dc = LATENT_BOUND * torch.atanh((dc / LATENT_BOUND).clamp(-0.999, 0.999))
        N = c.n_gaussians
        self._set_rows(means=means, log_scales=torch.log(spacing.max()).expand(N, 3).clone(),
                       quats=torch.tensor([1.0, 0.0, 0.0, 0.0], device=device).repeat(N, 1),
                       opacity_logits=torch.full((N,), _logit(c.init_opacity), device=device),
                       sh_dc=dc, sh_rest=torch.zeros((N, (c.sh_degree + 1) ** 2 - 1, c.n_features), device=device))

    # ----------------------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # A checkpoint holds as many Gaussians as the run had when it was written: take its row
        # count before the values are copied in (the optimizer is built after this, on a resume).
        rows = state_dict.get(prefix + "means")
        if rows is not None and rows.shape[0] != self.count:
            device = self.means.device
            self._set_rows(**{name: torch.zeros_like(state_dict[prefix + name], device=device)
                              for name in PARAMETERS if prefix + name in state_dict})
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # ----------------------------------------------------------------------------- training
    def optimizer_groups(self):
        c = self.cfg
        return [("means", [self.means], c.lr_means), ("scales", [self.log_scales], c.lr_scales),
                ("quats", [self.quats], c.lr_quats), ("opacity", [self.opacity_logits], c.lr_opacity),
                ("features", [self.sh_dc, self.sh_rest], c.lr_features)]

    def training_stats(self) -> dict[str, float]:
        return {"n_gaussians": float(self.count)}

    @torch.no_grad()
    def after_backward(self, step: int, render) -> None:
        """Accumulate each Gaussian's view-space centre gradient (in NDC: pixels * 2 / size) over the
        views that drew it (``render.extras["means2d"]`` [B, N, 2], with its gradient, and
        ``"radii"`` [B, N])."""
        c = self.cfg
        if not c.densify_from <= step < c.densify_until:
            return
        xy = render.extras.get("means2d")
        if xy is None or xy.grad is None or xy.shape[1] != self.count:
            return
        H, W = render.color.shape[1], render.color.shape[2]
        scale = torch.tensor([0.5 * W, 0.5 * H], dtype=xy.dtype, device=xy.device)
        grad = (xy.grad * scale).norm(dim=-1)  # [B, N]
        drawn = render.extras["radii"] > 0
        self.grad_accum += (grad * drawn).sum(0).to(self.grad_accum.dtype)
        self.seen += drawn.sum(0).to(self.seen.dtype)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, optimizer) -> None:
        c = self.cfg
        done = step + 1  # steps finished
        if c.densify_from < done <= c.densify_until and done % c.densify_every == 0:
            self.densify_and_prune(optimizer, torch.Generator(device=self.means.device).manual_seed(c.init_seed * 1_000_003 + done))
        if c.opacity_reset_every and done < c.densify_until and done % c.opacity_reset_every == 0:
            value = torch.full_like(self.opacity_logits, _logit(c.reset_opacity))
            reset_rows(self.opacity_logits, torch.minimum(self.opacity_logits, value), optimizer)

    def _replace_all(self, optimizer, rows=None, extra: dict | None = None) -> None:
        """Keep ``rows`` (mask or indices; all if None) of every parameter, then append ``extra``."""
        for name in PARAMETERS:
            p = getattr(self, name)
            if rows is not None:
                p = select_rows(p, rows, optimizer)
            if extra is not None:
                p = append_rows(p, extra[name], optimizer)
            setattr(self, name, p)

    @torch.no_grad()
    def densify_and_prune(self, optimizer, generator: torch.Generator) -> dict:
        """One round of adaptive density control; returns the counts {cloned, split, pruned, count}."""
        c = self.cfg
        N = self.count
        mean_grad = self.grad_accum / self.seen.clamp_min(1.0)
        largest = torch.exp(self.log_scales).amax(dim=-1)
        candidate = mean_grad >= c.densify_grad_threshold
        # The cap: each clone adds one Gaussian, each split one (two replace one); the largest
        # gradients go first.
        room = max(0, c.max_gaussians - N)
        if int(candidate.sum()) > room:
            keep = torch.argsort(torch.where(candidate, mean_grad, torch.full_like(mean_grad, -1.0)), descending=True)[:room]
            candidate = torch.zeros_like(candidate)
            candidate[keep] = True
        clone = candidate & (largest <= c.split_scale)
        split = candidate & (largest > c.split_scale)

        rows = {name: getattr(self, name).detach() for name in PARAMETERS}
        new = {name: rows[name][clone] for name in PARAMETERS}
        if bool(split.any()):
            # Two Gaussians drawn inside each one that splits, each 1/1.6 as large (3DGS's factor).
            scales = torch.exp(rows["log_scales"][split])
            rotation = quaternion_to_rotation(rows["quats"][split])
            offsets = torch.randn((2, *scales.shape), generator=generator, device=scales.device) * scales
            centres = rows["means"][split] + torch.einsum("nij,knj->kni", rotation, offsets)  # [2, S, 3]
            parts = {name: rows[name][split].repeat(2, *([1] * (rows[name].dim() - 1))) for name in PARAMETERS}
            parts["means"] = centres.reshape(-1, 3)
            parts["log_scales"] = parts["log_scales"] - math.log(1.6)
            new = {name: torch.cat([new[name], parts[name]]) for name in PARAMETERS}
        self._replace_all(optimizer, extra=new)

        # Prune: the split originals, the transparent and the oversized.
        opacity = torch.sigmoid(self.opacity_logits.detach())
        largest = torch.exp(self.log_scales.detach()).amax(dim=-1)
        drop = (opacity < c.prune_opacity) | (largest > c.prune_scale)
        drop[:N] |= split
        if bool(drop.all()):  # never prune to nothing: keep the most opaque
            drop[torch.argmax(opacity)] = False
        self._replace_all(optimizer, rows=~drop)
        M = self.count
        self.grad_accum = torch.zeros(M, device=self.means.device)
        self.seen = torch.zeros(M, device=self.means.device)
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(drop.sum()), "count": M}
