"""Bilinear resizing of image batches that stays deterministic on the GPU.

``F.interpolate(mode="bilinear")`` has no deterministic CUDA backward: PyTorch raises under
``torch.use_deterministic_algorithms(True)`` (``deterministic=true`` runs). Bilinear resizing
is linear and separable, so the same result is two small matrix products, out = R_h x R_w^T,
whose backward is deterministic. Outside deterministic mode the usual kernel is used.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from ..transfer import to_device


@lru_cache(maxsize=16)
def bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """[n_out, n_in] float64 CPU weights of 1-D bilinear resampling with align_corners=False, as
    F.interpolate computes it: source = (i + 0.5) n_in / n_out - 0.5, clamped at 0 and at
    the last pixel (no antialiasing when shrinking). Cached: every training step resizes to the
    same size. Callers must not modify the returned tensor."""
    out_index = torch.arange(n_out, dtype=torch.float64)
    src = ((out_index + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo.double()
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """x: [B, C, H, W] -> [B, C, size[0], size[1]], bilinear with align_corners=False; through
    ``bilinear_matrix`` when PyTorch's deterministic algorithms are on."""
    if not torch.are_deterministic_algorithms_enabled():
        return F.interpolate(x, size, mode="bilinear", align_corners=False)
    rows = to_device(bilinear_matrix(size[0], x.shape[-2]).to(x.dtype), x.device)  # [H', H]
    cols = to_device(bilinear_matrix(size[1], x.shape[-1]).to(x.dtype), x.device)  # [W', W]
    return rows @ x @ cols.t()
