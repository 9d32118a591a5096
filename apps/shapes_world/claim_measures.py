"""Measures for the words the papers' claims use, against the shapes world's analytic truth.

Each is a plain number in metrics.json (docs/shapes-world.md, "Measures for the claims"):

- ``floaters``: the share of the rendered opacity that lies outside the true silhouette (dilated by
  one pixel, so that antialiased edges do not count). 0 = all opacity on the object; 1 = none.
- ``oversaturation``: mean HSV chroma (max - min of r, g, b) of the render minus that of the truth,
  over the pixels inside both masks. > 0: more saturated than the truth; < 0: washed out.
- ``sharpness_ratio``: root-mean-square Sobel gradient of the render's luminance over that of the
  truth's, whole images. < 1: softer edges or less contrast than the truth (over-smoothed); 1: as
  sharp. The mean of squares, not the mean magnitude: blurring a step edge keeps its total
  variation (the mean magnitude barely moves) but spreads it over more pixels, which lowers the
  mean square.
- ``centring_offset``: distance between the opacity centroids of render and truth, in image widths,
  averaged over the views that show anything.
- ``disconnected_mass``: on a density lattice of the geometry, the share of the solid (voxels above
  the export's "auto" level, the one whose silhouettes match the renders) outside its largest
  connected piece (26-connectivity). 0 = one piece.
- across the seeds of one prompt: ``geometry_spread`` (mean over pairs of seeds of 1 - IoU of their
  opacity > 0.5 masks, pooled over the views) and ``colour_spread`` (mean over pairs of the mean
  |rgb difference| inside both masks).

A measure with nothing to measure (no opacity, masks that do not meet) is None, not a made-up
number: the claims leave such a cell out.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
import torch.nn.functional as F

GEOMETRY_MEASURES = ("disconnected_mass",)  # need the density, not the evaluation views
MASK_LEVEL = 0.5  # opacity of the masks, as in the evaluator's IoU
DISCONNECTED_RESOLUTION = 64  # density lattice points per axis for disconnected_mass
_LUMA = (0.299, 0.587, 0.114)  # Rec. 601 luminance weights


def floaters(alpha: torch.Tensor, true_alpha: torch.Tensor) -> float | None:
    """alpha, true_alpha: [V, H, W]. Opacity outside the 1-px dilated true mask / all opacity."""
    total = float(alpha.sum())
    if total <= 1e-6:
        return None
    dilated = F.max_pool2d((true_alpha > MASK_LEVEL).float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
    return float(alpha[~dilated].sum()) / total


def chroma(rgb: torch.Tensor) -> torch.Tensor:
    """rgb [..., 3, H, W] -> HSV chroma [..., H, W] (max - min over the channels)."""
    return rgb.amax(-3) - rgb.amin(-3)


def oversaturation(rgb: torch.Tensor, alpha: torch.Tensor, true_rgb: torch.Tensor, true_alpha: torch.Tensor) -> float | None:
    """rgb, true_rgb [V, 3, H, W]; alpha, true_alpha [V, H, W]. Mean chroma difference inside both masks."""
    both = (alpha > MASK_LEVEL) & (true_alpha > MASK_LEVEL)
    if not both.any():
        return None
    return float((chroma(rgb) - chroma(true_rgb))[both].mean())


def edge_strength(rgb: torch.Tensor) -> torch.Tensor:
    """rgb [V, 3, H, W] -> mean squared Sobel gradient of the luminance, per view [V] (borders replicated)."""
    luma = (rgb * torch.tensor(_LUMA, dtype=rgb.dtype)[None, :, None, None]).sum(1, keepdim=True)
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=rgb.dtype) / 8
    kernels = torch.stack([sobel_x, sobel_x.T])[:, None]  # [2, 1, 3, 3]
    grad = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernels)  # [V, 2, H, W]
    return grad.square().sum(1).flatten(1).mean(-1)


def sharpness_ratio(rgb: torch.Tensor, true_rgb: torch.Tensor) -> float | None:
    """rgb, true_rgb [V, 3, H, W]: the render's RMS edge gradient over the truth's, pooled over views."""
    truth = float(edge_strength(true_rgb).mean())
    return None if truth <= 0 else math.sqrt(float(edge_strength(rgb).mean()) / truth)


def centroids(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha [V, H, W] -> opacity centroids [V, 2] (x, y in image widths) and whether a view shows anything [V]."""
    V, H, W = alpha.shape
    ys = (torch.arange(H, dtype=alpha.dtype) + 0.5) / W
    xs = (torch.arange(W, dtype=alpha.dtype) + 0.5) / W
    mass = alpha.flatten(1).sum(-1)
    cx = (alpha * xs[None, None, :]).flatten(1).sum(-1) / mass.clamp_min(1e-12)
    cy = (alpha * ys[None, :, None]).flatten(1).sum(-1) / mass.clamp_min(1e-12)
    return torch.stack([cx, cy], -1), mass > 1e-3


def centring_offset(alpha: torch.Tensor, true_alpha: torch.Tensor) -> float | None:
    """alpha, true_alpha [V, H, W]: mean centroid distance (image widths) over views with opacity."""
    pred, shown = centroids(alpha)
    truth, _ = centroids(true_alpha)
    if not shown.any():
        return None
    return float((pred - truth).norm(dim=-1)[shown].mean())


def view_measures(rgb, alpha, true_rgb, true_alpha) -> dict:
    """The per-view measures of one object: rgb, true_rgb [V, 3, H, W]; alpha, true_alpha [V, H, W]
    (the truth at the evaluator's best rotation)."""
    return dict(
        floaters=floaters(alpha, true_alpha),
        oversaturation=oversaturation(rgb, alpha, true_rgb, true_alpha),
        sharpness_ratio=sharpness_ratio(rgb, true_rgb),
        centring_offset=centring_offset(alpha, true_alpha),
    )


def disconnected_share(solid) -> float | None:
    """solid: boolean lattice [X, Y, Z]. Share of its voxels outside the largest 26-connected piece."""
    import numpy as np
    from scipy import ndimage

    solid = np.asarray(solid, dtype=bool)
    total = int(solid.sum())
    if total == 0:
        return None
    labels, n = ndimage.label(solid, structure=np.ones((3, 3, 3), dtype=bool))
    largest = int(np.bincount(labels.ravel())[1:].max()) if n else 0
    return (total - largest) / total


def disconnected_mass(geometry, resolution: int = DISCONNECTED_RESOLUTION) -> float | None:
    """disconnected_share of the geometry's density above the export's "auto" level; None when
    no ray through the density reaches opacity 0.5 (an empty run)."""
    from scorelift.errors import ConfigError
    from scorelift.outputs.mesh import fit_threshold, sample_density

    density, lo, spacing = sample_density(geometry, resolution)
    try:
        level = fit_threshold(density, lo, spacing)
    except ConfigError:
        return None
    return disconnected_share(density > level)


def _pair_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = float((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum()) / union


def seed_diversity(views: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """views: per seed, (rgb [V, 3, H, W], alpha [V, H, W] or [V, 1, H, W]) at the same cameras.

    Returns dict(geometry_spread, colour_spread) over all pairs of seeds (None for fewer than 2;
    colour_spread None when no pair's masks meet)."""
    masks = [(alpha.reshape(alpha.shape[0], *alpha.shape[-2:]) > MASK_LEVEL) for _, alpha in views]
    geometry, colour = [], []
    for i, j in itertools.combinations(range(len(views)), 2):
        geometry.append(1.0 - _pair_iou(masks[i], masks[j]))
        both = (masks[i] & masks[j])[:, None].expand_as(views[i][0])
        if both.any():
            colour.append(float((views[i][0] - views[j][0]).abs()[both].mean()))
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return dict(geometry_spread=mean(geometry), colour_spread=mean(colour))
