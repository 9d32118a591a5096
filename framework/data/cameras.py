"""Pinhole cameras looking at the origin, z up: random training batches, fixed evaluation views.

Conventions (shared with the shapes world's ground truth, so renders line up pixel for pixel):
- camera position ``d * (cos(elev) cos(azim), cos(elev) sin(azim), sin(elev))``, azimuth 0 on +x;
- camera-to-world matrices in the OpenGL convention: columns right, up, back (the camera looks
  along its -z axis), position;
- pixel (i, j) is row i from the top, column j from the left; rays go through pixel centres.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import ConfigError
from ..transfer import to_device


@dataclass
class CameraBatch:
    """B cameras and the image size to render at.

    c2w: [B, 4, 4] camera-to-world; fovy: [B] vertical field of view in radians;
    elevation, azimuth: [B] degrees (azimuth in [-180, 180)); distance: [B].
    """

    c2w: torch.Tensor
    fovy: torch.Tensor
    elevation: torch.Tensor
    azimuth: torch.Tensor
    distance: torch.Tensor
    height: int
    width: int

    @property
    def batch_size(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device) -> "CameraBatch":
        return replace(
            self,
            c2w=to_device(self.c2w, device),
            fovy=to_device(self.fovy, device),
            elevation=to_device(self.elevation, device),
            azimuth=to_device(self.azimuth, device),
            distance=to_device(self.distance, device),
        )

    def with_resolution(self, height: int, width: int | None = None) -> "CameraBatch":
        return replace(self, height=height, width=width if width is not None else height)

    def __getitem__(self, index) -> "CameraBatch":
        index = [index] if isinstance(index, int) else index
        return replace(
            self,
            c2w=self.c2w[index],
            fovy=self.fovy[index],
            elevation=self.elevation[index],
            azimuth=self.azimuth[index],
            distance=self.distance[index],
        )

    def rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ray origins and unit directions, each [B, H, W, 3], in world coordinates."""
        B, H, W = self.batch_size, self.height, self.width
        dev, dtype = self.c2w.device, self.c2w.dtype
        focal = 0.5 * H / torch.tan(0.5 * self.fovy)  # [B], pixels
        j = torch.arange(W, device=dev, dtype=dtype) + 0.5
        i = torch.arange(H, device=dev, dtype=dtype) + 0.5
        ii, jj = torch.meshgrid(i, j, indexing="ij")  # [H, W]
        x = (jj - 0.5 * W)[None] / focal[:, None, None]
        y = -(ii - 0.5 * H)[None] / focal[:, None, None]
        dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.c2w[:, None, None, :3, 3].expand_as(dirs)
        return origins, dirs

    def view_names(self) -> list[str]:
        """The shapes world's view words per camera: overhead, front, side or back."""
        return [view_name(float(e), float(a)) for e, a in zip(self.elevation, self.azimuth)]


def view_name(elevation_deg: float, azimuth_deg: float) -> str:
    """overhead if elev > 60 deg; else front if |azim| < 45, back if |azim| > 135, side otherwise."""
    if elevation_deg > 60.0:
        return "overhead"
    a = (azimuth_deg + 180.0) % 360.0 - 180.0
    if abs(a) < 45.0:
        return "front"
    if abs(a) > 135.0:
        return "back"
    return "side"


def look_at_c2w(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """[B, 4, 4] camera-to-world matrices for cameras on a sphere looking at the origin, up = +z."""
    e = torch.deg2rad(elevation_deg.to(torch.float64))
    a = torch.deg2rad(azimuth_deg.to(torch.float64))
    d = distance.to(torch.float64)
    pos = torch.stack([d * e.cos() * a.cos(), d * e.cos() * a.sin(), d * e.sin()], dim=-1)  # [B, 3]
    forward = -pos / pos.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(forward)
    right = torch.linalg.cross(forward, up, dim=-1)
    # At the poles "right" is undefined: fall back to the azimuth's tangent direction.
    degenerate = right.norm(dim=-1) < 1e-9
    tangent = torch.stack([-a.sin(), a.cos(), torch.zeros_like(a)], dim=-1)
    right = torch.where(degenerate[:, None], tangent, right)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.linalg.cross(right, forward, dim=-1)
    c2w = torch.zeros(pos.shape[0], 4, 4, dtype=torch.float64)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = pos
    c2w[:, 3, 3] = 1.0
    return c2w.to(torch.float32)


def make_cameras(elevation, azimuth, distance, fovy_deg, height: int, width: int | None = None) -> CameraBatch:
    """Cameras from per-camera (or broadcast scalar) elevation/azimuth/fovy in degrees."""
    elevation, azimuth, distance, fovy_deg = (
        torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (elevation, azimuth, distance, fovy_deg)
    )
    B = max(elevation.numel(), azimuth.numel(), distance.numel(), fovy_deg.numel())
    elevation, azimuth, distance, fovy_deg = (v.expand(B).clone() for v in (elevation, azimuth, distance, fovy_deg))
    azimuth = (azimuth + 180.0) % 360.0 - 180.0
    return CameraBatch(
        c2w=look_at_c2w(elevation, azimuth, distance),
        fovy=torch.deg2rad(fovy_deg),
        elevation=elevation,
        azimuth=azimuth,
        distance=distance,
        height=height,
        width=width if width is not None else height,
    )


@dataclass(kw_only=True)
class CameraSamplerConfig:
    """Random training cameras: ranges are [low, high], degrees for angles.

    ``batch_size``, ``height`` and ``width`` are each a number or a list with one value per phase
    of ``resolution_milestones`` (threestudio's convention): with milestones [m1, m2, ...], phase 0
    runs up to step m1 - 1, phase 1 from m1, and so on, e.g. ``height=[32, 64] width=[32, 64]
    resolution_milestones=[300]`` renders 32 x 32 for the first 300 steps, then 64 x 64.
    """

    batch_size: Any = 1
    height: Any = 64
    width: Any = 64
    resolution_milestones: list[int] = field(default_factory=list)  # ascending training steps
    distance_range: list[float] = field(default_factory=lambda: [1.8, 2.2])
    fovy_range: list[float] = field(default_factory=lambda: [35.0, 45.0])
    elevation_range: list[float] = field(default_factory=lambda: [-10.0, 60.0])
    azimuth_range: list[float] = field(default_factory=lambda: [-180.0, 180.0])

    def phases(self) -> list[tuple[int, int, int]]:
        """(batch_size, height, width) of every phase, in order: len(resolution_milestones) + 1."""
        n = len(self.resolution_milestones) + 1
        values = [v if isinstance(v, (list, tuple)) else [v] * n for v in (self.batch_size, self.height, self.width)]
        return [(int(b), int(h), int(w)) for b, h, w in zip(*values)]

    def at_step(self, step: int) -> tuple[int, int, int]:
        """(batch_size, height, width) at training step ``step``."""
        return self.phases()[bisect.bisect_right(list(self.resolution_milestones), step)]


def check_sampler_config(cfg: CameraSamplerConfig) -> None:
    """Reject inverted or impossible ranges and malformed phases with a message naming the key."""
    for name in ("distance_range", "fovy_range", "elevation_range", "azimuth_range"):
        rng = getattr(cfg, name)
        if len(rng) != 2:
            raise ConfigError(f"data.{name} must be [low, high], got {rng}.")
        if rng[0] > rng[1]:
            raise ConfigError(
                f"data.{name}={list(rng)} is inverted: the low end must not exceed the high end "
                f"(write data.{name}=[{rng[1]}, {rng[0]}])."
            )
    if cfg.distance_range[0] <= 0:
        raise ConfigError(
            f"data.distance_range={list(cfg.distance_range)} must be positive: it is the camera's distance "
            f"from the object's centre."
        )
    if not (0 < cfg.fovy_range[0] and cfg.fovy_range[1] < 180):
        raise ConfigError(
            f"data.fovy_range={list(cfg.fovy_range)} must lie in (0, 180) degrees, both ends strictly "
            f"between 0 and 180 (a vertical field of view)."
        )
    if not (-90 <= cfg.elevation_range[0] and cfg.elevation_range[1] <= 90):
        raise ConfigError(f"data.elevation_range={list(cfg.elevation_range)} must lie in [-90, 90] degrees.")
    milestones = list(cfg.resolution_milestones)
    if any(not isinstance(m, int) or m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(
            f"data.resolution_milestones={milestones} must be training steps (whole numbers >= 1) in "
            f"strictly ascending order, e.g. [300] or [200, 500]."
        )
    n = len(milestones) + 1
    for name in ("batch_size", "height", "width"):
        value = getattr(cfg, name)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and len(values) != n:
            raise ConfigError(
                f"data.{name}={values} has {len(values)} values, but data.resolution_milestones={milestones} "
                f"makes {n} phases: give one number, or one value per phase."
            )
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            shown = values if isinstance(value, (list, tuple)) else value
            raise ConfigError(
                f"The data key '{name}' is {shown!r}: data.batch_size, data.height and data.width must be "
                f"positive whole numbers (int), or lists of them with one per phase of data.resolution_milestones."
            )


def sample_cameras(cfg: CameraSamplerConfig, generator: torch.Generator, step: int = 0) -> CameraBatch:
    """A batch of random cameras, drawn uniformly within the configured ranges, with the batch
    size and image size of ``step``'s phase (``CameraSamplerConfig.at_step``)."""
    B, height, width = cfg.at_step(step)

    def uniform(rng):
        return rng[0] + (rng[1] - rng[0]) * torch.rand(B, generator=generator)

    return make_cameras(
        elevation=uniform(cfg.elevation_range),
        azimuth=uniform(cfg.azimuth_range),
        distance=uniform(cfg.distance_range),
        fovy_deg=uniform(cfg.fovy_range),
        height=height,
        width=width,
    )


def evaluation_cameras(height: int = 64, width: int | None = None) -> CameraBatch:
    """The shapes world's 8 evaluation views: d 2.0, fovy 40, elev 20, azim 0, 45, ..., 315."""
    azimuth = torch.arange(8, dtype=torch.float32) * 45.0
    return make_cameras(20.0, azimuth, 2.0, 40.0, height, width)


def turntable_cameras(n_frames: int, elevation: float, distance: float, fovy_deg: float, height: int) -> CameraBatch:
    """n_frames views around the object at one elevation, azimuth from 0 upward."""
    azimuth = torch.arange(n_frames, dtype=torch.float32) * (360.0 / n_frames)
    return make_cameras(elevation, azimuth, distance, fovy_deg, height)


def step_generator(seed: int, step: int, stream: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` (the CPU by default) whose state depends only on (seed, step, stream).

    Every random draw of training step ``step`` comes from such generators, so a resumed run
    draws exactly what an uninterrupted one would, with no RNG state to checkpoint. A CUDA
    generator with the same seed draws other numbers than the CPU's (Philox, not Mersenne Twister),
    but just as reproducibly.
    """
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1))
    return g
