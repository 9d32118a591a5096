"""``hash-grid`` geometry: a multi-resolution hash encoding with small density and feature MLPs.

Encoding (Instant-NGP). Level l (0..L-1) is a grid of resolution ``N_l = floor(N_min * b^l)``
points per axis over the box, b the growth factor. A point's 8 surrounding grid corners index
the level's table of T entries x F features: directly (x + N y + N^2 z) while the level's
N_l^3 corners fit in T, else by the spatial hash (x * 1) xor (y * 2654435761) xor
(z * 805459861) mod T. Corner features are blended trilinearly; the L x F values concatenate.
Table entries start uniform in [-1e-4, 1e-4] (the reference implementation's init).

Heads. ``density = softplus(mlp_d(enc) + blob(x))`` with the blob bias
``blob_scale * (1 - |x| / blob_std)`` (threestudio's "blob_magic3d": a soft ball at the centre
to start from) and ``features = act(mlp_f(enc))`` (sigmoid for RGB, none for latents).

Progressive levels (optional): only the first ``start_levels`` levels are active at step 0, one
more every ``update_steps`` steps; inactive levels are multiplied by 0 (Magic3D / threestudio).

This pure-PyTorch encoder is the reference and the fallback; tinycudann (if importable on CUDA)
is the fast backend for the same encoding and is imported only when chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework.errors import ConfigError
from framework.interfaces.geometry import Geometry, GeometryOutput
from framework.registry import register

PRIMES = (1, 2654435761, 805459861)
FEATURE_KINDS = {"none": "latent", "sigmoid": "rgb"}
# the 8 cube corners as (dx, dy, dz) offsets: [8, 3]
CORNERS = torch.tensor([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)])


@dataclass
class HashGridConfig:
    bbox_radius: float  # the box [-r, r]^3; density is 0 outside it
    n_features: int  # C: 3 (RGB, sigmoid) or 4 (latents, none)
    feature_activation: str  # "sigmoid" or "none"
    n_levels: int  # L (threestudio: 16)
    features_per_level: int  # F (2)
    log2_hashmap_size: int  # log2 T (19)
    base_resolution: int  # N_min (16)
    per_level_scale: float  # b (1.447269237440378)
    mlp_width: int  # hidden units of each head (64)
    mlp_layers: int  # hidden layers of each head (1)
    blob_scale: float  # density bias at the centre (threestudio: 10); 0 disables the blob
    blob_std: float  # radius where the bias crosses 0 (0.5)
    start_levels: int | None  # progressive levels: active at step 0 (None: all)
    update_steps: int  # one more level every this many steps
    backend: str  # auto | torch | tcnn
    init_seed: int


def level_resolutions(base: int, scale: float, n_levels: int) -> list[int]:
    return [int(math.floor(base * scale**level)) for level in range(n_levels)]


class HashEncoding(torch.nn.Module):
    """[N, 3] points in [0, 1]^3 -> [N, L * F] features (pure PyTorch)."""

    def __init__(self, n_levels: int, features_per_level: int, log2_size: int, base: int, scale: float, seed: int):
        super().__init__()
        self.resolutions = level_resolutions(base, scale, n_levels)
        self.table_size = 2**log2_size
        self.features_per_level = features_per_level
        sizes = [min(self.table_size, (n + 1) ** 3) for n in self.resolutions]
        gen = torch.Generator().manual_seed(seed)
        self.tables = torch.nn.ParameterList(
            [torch.nn.Parameter((torch.rand(s, features_per_level, generator=gen) * 2 - 1) * 1e-4) for s in sizes]
        )
        self.register_buffer("level_mask", torch.ones(n_levels), persistent=False)

    @property
    def output_dim(self) -> int:
        return len(self.resolutions) * self.features_per_level

    def corner_index(self, corners: torch.Tensor, level: int) -> torch.Tensor:
        """[N, 8, 3] integer corners -> [N, 8] table rows (dense while it fits, hashed after)."""
        n = self.resolutions[level] + 1  # grid points per axis
        size = self.tables[level].shape[0]
        if n**3 <= size:
            return corners[..., 0] + n * corners[..., 1] + n * n * corners[..., 2]
        h = corners[..., 0] * PRIMES[0]
        h = h ^ (corners[..., 1] * PRIMES[1])
        h = h ^ (corners[..., 2] * PRIMES[2])
        return h % size

    def forward(self, unit_points: torch.Tensor) -> torch.Tensor:
        out = []
        offsets = CORNERS.to(unit_points.device)
        for level, res in enumerate(self.resolutions):
            pos = unit_points * res
            base = pos.floor().clamp(0, res - 1)
            frac = pos - base  # [N, 3] in [0, 1]
            corners = base.long()[:, None, :] + offsets  # [N, 8, 3]
            rows = self.corner_index(corners, level)  # [N, 8]
            weights = torch.where(offsets.bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(-1)  # [N, 8]
            feats = self.tables[level][rows]  # [N, 8, F]
            out.append((weights[..., None] * feats).sum(1) * self.level_mask[level])
        return torch.cat(out, dim=-1)


def mlp(n_in: int, n_out: int, width: int, layers: int) -> torch.nn.Sequential:
    dims = [n_in] + [width] * layers
    mods: list[torch.nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    mods.append(torch.nn.Linear(dims[-1], n_out))
    return torch.nn.Sequential(*mods)


@register("geometry", "hash-grid")
class HashGrid(Geometry):
    """Parameters: the encoding's L tables [T_l, F] and the two heads' weights. Buffer ``bbox`` [2, 3]."""

    Config = HashGridConfig

    def __init__(self, cfg=None):
        super().__init__(cfg)
        c = self.cfg
        self._check_config(c)
        self.n_features = c.n_features
        self.feature_kind = FEATURE_KINDS[c.feature_activation]
        r = c.bbox_radius
        self.register_buffer("bbox", torch.tensor([[-r] * 3, [r] * 3], dtype=torch.float32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.init_seed)
            self.encoding = HashEncoding(
                c.n_levels, c.features_per_level, c.log2_hashmap_size, c.base_resolution, c.per_level_scale, c.init_seed
            )
            self.density_head = mlp(self.encoding.output_dim, 1, c.mlp_width, c.mlp_layers)
            self.feature_head = mlp(self.encoding.output_dim, c.n_features, c.mlp_width, c.mlp_layers)
        self.update_step(0, 1)

    @staticmethod
    def _check_config(c: HashGridConfig) -> None:
        if c.feature_activation not in FEATURE_KINDS:
            raise ConfigError(
                f"geometry (hash-grid) feature_activation={c.feature_activation!r} is not one of "
                f"{sorted(FEATURE_KINDS)}: 'sigmoid' for RGB (n_features=3), 'none' for latents."
            )
        if c.feature_activation == "sigmoid" and c.n_features != 3:
            raise ConfigError(f"geometry (hash-grid) feature_activation='sigmoid' renders RGB and needs n_features=3, got {c.n_features}.")
        if c.n_levels < 1 or c.features_per_level < 1 or not 4 <= c.log2_hashmap_size <= 24:
            raise ConfigError(
                f"geometry (hash-grid) needs n_levels >= 1, features_per_level >= 1 and log2_hashmap_size in 4..24; "
                f"got {c.n_levels}, {c.features_per_level}, {c.log2_hashmap_size} (threestudio: 16, 2, 19)."
            )
        if c.base_resolution < 2 or c.per_level_scale < 1.0:
            raise ConfigError(
                f"geometry (hash-grid) base_resolution={c.base_resolution} must be >= 2 and "
                f"per_level_scale={c.per_level_scale} >= 1 (threestudio: 16 and 1.447)."
            )
        if c.start_levels is not None and not 1 <= c.start_levels <= c.n_levels:
            raise ConfigError(f"geometry (hash-grid) start_levels={c.start_levels} must lie in 1..n_levels={c.n_levels}.")
        if c.backend not in ("auto", "torch", "tcnn"):
            raise ConfigError(f"geometry (hash-grid) backend={c.backend!r} is not one of auto, torch, tcnn.")
        if c.backend == "tcnn":
            raise ConfigError(
                "geometry (hash-grid) backend='tcnn' is not available in this build: the pure-PyTorch "
                "encoder is the only one so far; use backend=auto or torch."
            )

    def update_step(self, step: int, max_steps: int) -> None:
        """Progressive levels: start_levels active at step 0, one more every update_steps."""
        c = self.cfg
        if c.start_levels is None:
            active = c.n_levels
        elif c.update_steps <= 0:
            active = c.start_levels
        else:
            active = min(c.n_levels, c.start_levels + step // c.update_steps)
        mask = torch.zeros(c.n_levels)
        mask[:active] = 1.0
        self.encoding.level_mask.copy_(mask.to(self.encoding.level_mask.device))

    def _unit(self, points: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bbox[0].to(points), self.bbox[1].to(points)
        return (points - lo) / (hi - lo)

    def _blob(self, points: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.blob_scale == 0:
            return torch.zeros(points.shape[0], device=points.device, dtype=points.dtype)
        return c.blob_scale * (1.0 - points.norm(dim=-1) / c.blob_std)

    def _density(self, points: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        unit = self._unit(points)
        inside = ((unit >= 0) & (unit <= 1)).all(dim=-1)
        raw = self.density_head(enc)[:, 0] + self._blob(points)
        return torch.where(inside, F.softplus(raw), torch.zeros_like(raw))

    def forward(self, points: torch.Tensor) -> GeometryOutput:
        """points: [N, 3] world -> density [N] (0 outside the box), features [N, C]."""
        enc = self.encoding(self._unit(points).clamp(0, 1))
        feats = self.feature_head(enc)
        if self.cfg.feature_activation == "sigmoid":
            feats = torch.sigmoid(feats)
        return GeometryOutput(density=self._density(points, enc), features=feats)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self._density(points, self.encoding(self._unit(points).clamp(0, 1)))

    def normals(self, points: torch.Tensor) -> torch.Tensor:
        """[N, 3] -> [N, 3] unit normals: minus the central-difference density gradient, step
        half the finest level's cell (a smaller step sees one cell's linear piece only)."""
        return self.central_difference_normals(points, self.cfg.bbox_radius / self.encoding.resolutions[-1])
