"""Triton kernels for the hash-grid encoding: the same function as ``HashEncoding.forward_torch``.

Same tables, same indexing, same result to float32 rounding. Per level l (resolution
``N_l``, table ``T_l x F``) and point x in [0, 1]^3::

    pos = x * N_l;  base = clamp(floor(pos), 0, N_l - 1);  frac = pos - base
    corner c = base + (c & 1, c >> 1 & 1, c >> 2 & 1)                      (c = 0..7)
    row  = cx + n cy + n^2 cz                      if n^3 <= T_l  (n = N_l + 1, dense)
         = (cx * 1 ^ cy * 2654435761 ^ cz * 805459861) % T_l       otherwise (hashed)
    out[l * F:(l + 1) * F] = level_mask[l] * sum_c w_c * table_l[row_c],  w_c trilinear

The hash is computed in int64 exactly as PyTorch does (products of coordinates < 2^24 and the
primes stay far below 2^63, so nothing wraps), then XOR; hashed levels have exactly
T = 2^log2_size rows, so ``% T`` on the non-negative value is ``& (T - 1)``.

Layout. One launch per pass over a grid of (point blocks, levels): each program handles
``BLOCK`` points of one level, so the level's table stays hot in L2 while its blocks run. The
L per-level tables are concatenated into one ``[sum T_l, F]`` tensor each call (``torch.cat``;
a copy of the table memory, 64 MB at threestudio's sizes) and per-level row offsets, sizes,
resolutions and dense flags travel as small device tensors (cached per device).

Gradients. ``backward`` returns gradients for the tables only: it recomputes rows and weights
and atomically adds ``grad_out * level_mask[l] * w_c`` into each corner's row (float32
atomics, so the summation order differs from PyTorch's ``index_put_``: equal to float32
rounding, not bitwise). The points get NO gradient: ``triton_hash_encoding`` raises a clear
error when called with points that require grad under autograd (``backend=auto`` then uses the
PyTorch encoder instead, which differentiates through the trilinear weights). The level mask
is a buffer and gets no gradient either.

Kernels launch with ``enable_fp_fusion=False`` so that, like PyTorch's separate kernels, every
product and sum is rounded on its own (no fused multiply-adds): the results then differ from
PyTorch's only in the order of the 8-corner sums and of the gradient atomics.

Triton is imported only inside functions (``_kernels``), so this module imports on machines
without Triton (CPU CI). With ``TRITON_INTERPRET=1`` set before Triton is first imported, the
same kernels run on CPU tensors in Triton's interpreter (tests use this on tiny sizes).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Sequence

import torch

PRIMES = (1, 2654435761, 805459861)  # the same spatial-hash primes as hash_grid.PRIMES
BLOCK = 128  # points per program
NUM_WARPS = 4

_KERNELS = None
_META_CACHE: dict[tuple, "LevelMeta"] = {}


def interpreter_mode() -> bool:
    """True when Triton's CPU interpreter is requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _kernels():
    """Compile-on-first-use kernels. Triton is imported here and nowhere at module level.

    The kernels are defined inside this function but bound as module globals (``global``):
    Triton resolves the names a kernel uses (``tl``, the helper) through the module's
    globals, not through closures.
    """
    global _KERNELS, triton, tl, _level_cells, _corner_row, _block_setup
    if _KERNELS is not None:
        return _KERNELS
    import triton
    import triton.language as tl

    @triton.jit
    def _level_cells(pts_ptr, offs, pmask, res):
        """Base corner (int64) and fractional position of a block of points at one level."""
        offs64 = offs.to(tl.int64)
        x = tl.load(pts_ptr + offs64 * 3 + 0, mask=pmask, other=0.0)
        y = tl.load(pts_ptr + offs64 * 3 + 1, mask=pmask, other=0.0)
        z = tl.load(pts_ptr + offs64 * 3 + 2, mask=pmask, other=0.0)
        resf = res.to(tl.float32)
        px = x * resf
        py = y * resf
        pz = z * resf
        bx = tl.minimum(tl.maximum(tl.floor(px), 0.0), resf - 1.0)
        by = tl.minimum(tl.maximum(tl.floor(py), 0.0), resf - 1.0)
        bz = tl.minimum(tl.maximum(tl.floor(pz), 0.0), resf - 1.0)
        return bx.to(tl.int64), by.to(tl.int64), bz.to(tl.int64), px - bx, py - by, pz - bz

    @triton.jit
    def _corner_row(bx, by, bz, fx, fy, fz, n, size, dense, C: tl.constexpr):
        """Row within the level (int64) and trilinear weight of corner C (bit 0: x, 1: y, 2: z)."""
        if C & 1:
            wx = fx
        else:
            wx = 1.0 - fx
        if (C >> 1) & 1:
            wy = fy
        else:
            wy = 1.0 - fy
        if (C >> 2) & 1:
            wz = fz
        else:
            wz = 1.0 - fz
        cx = bx + (C & 1)
        cy = by + ((C >> 1) & 1)
        cz = bz + ((C >> 2) & 1)
        dense_row = cx + n * cy + n * n * cz
        hashed_row = ((cx * 1) ^ (cy * 2654435761) ^ (cz * 805459861)) & (size - 1)  # == % size: T = 2^k
        return tl.where(dense != 0, dense_row, hashed_row), wx * wy * wz

    @triton.jit
    def _block_setup(pts_ptr, res_ptr, off_ptr, size_ptr, dense_ptr, lmask_ptr, n_points,
                     F: tl.constexpr, FP: tl.constexpr, BLOCK_N: tl.constexpr):
        """What the forward and backward kernels share for their block of BLOCK_N points at one
        level (grid axis 1): the level, the point indices [BLOCK_N], the feature lanes [FP] and the
        [BLOCK_N, FP] load/store mask, the level's constants (first row, table size, dense flag,
        level mask), each point's base cell and fractions, and n = N_l + 1 corners per axis."""
        level = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        pmask = offs < n_points
        res = tl.load(res_ptr + level)
        feat = tl.arange(0, FP)
        m2 = pmask[:, None] & (feat[None, :] < F)
        bx, by, bz, fx, fy, fz = _level_cells(pts_ptr, offs, pmask, res)
        return (level, offs, feat, m2, tl.load(off_ptr + level), tl.load(size_ptr + level), tl.load(dense_ptr + level),
                tl.load(lmask_ptr + level), bx, by, bz, fx, fy, fz, res.to(tl.int64) + 1)

    @triton.jit
    def _hash_fwd(
        pts_ptr, tab_ptr, out_ptr, res_ptr, off_ptr, size_ptr, dense_ptr, lmask_ptr, n_points,
        OUT_COLS: tl.constexpr, F: tl.constexpr, FP: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        level, offs, feat, m2, row0, size, dense, lmask, bx, by, bz, fx, fy, fz, n = _block_setup(
            pts_ptr, res_ptr, off_ptr, size_ptr, dense_ptr, lmask_ptr, n_points, F, FP, BLOCK_N)
        acc = tl.zeros([BLOCK_N, FP], dtype=tl.float32)
        for c in tl.static_range(8):
            row, w = _corner_row(bx, by, bz, fx, fy, fz, n, size, dense, c)
            vals = tl.load(tab_ptr + (row0 + row)[:, None] * F + feat[None, :], mask=m2, other=0.0)
            acc += w[:, None] * vals
        out = acc * lmask
        out_ptrs = out_ptr + offs.to(tl.int64)[:, None] * OUT_COLS + level * F + feat[None, :]
        tl.store(out_ptrs, out, mask=m2)

    @triton.jit
    def _hash_bwd(
        pts_ptr, gout_ptr, gtab_ptr, res_ptr, off_ptr, size_ptr, dense_ptr, lmask_ptr, n_points,
        OUT_COLS: tl.constexpr, F: tl.constexpr, FP: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        level, offs, feat, m2, row0, size, dense, lmask, bx, by, bz, fx, fy, fz, n = _block_setup(
            pts_ptr, res_ptr, off_ptr, size_ptr, dense_ptr, lmask_ptr, n_points, F, FP, BLOCK_N)
        g_ptrs = gout_ptr + offs.to(tl.int64)[:, None] * OUT_COLS + level * F + feat[None, :]
        g = tl.load(g_ptrs, mask=m2, other=0.0) * lmask
        for c in tl.static_range(8):
            row, w = _corner_row(bx, by, bz, fx, fy, fz, n, size, dense, c)
            tl.atomic_add(gtab_ptr + (row0 + row)[:, None] * F + feat[None, :], w[:, None] * g, mask=m2, sem="relaxed")

    _KERNELS = (_hash_fwd, _hash_bwd)
    return _KERNELS


@dataclass
class LevelMeta:
    """Per-level constants on one device (int tensors the kernels index by level)."""

    res: torch.Tensor  # [L] int32 N_l
    offsets: torch.Tensor  # [L] int64 first row of level l in the concatenated table
    sizes: torch.Tensor  # [L] int64 T_l
    dense: torch.Tensor  # [L] int32 1 where n^3 <= T_l
    row_counts: tuple[int, ...]  # T_l on the host, to split the gradient


def _on_device(device: torch.device):
    """Launch on the tensors' GPU (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def level_meta(resolutions: Sequence[int], sizes: Sequence[int], device: torch.device) -> LevelMeta:
    key = (tuple(resolutions), tuple(sizes), str(device))
    meta = _META_CACHE.get(key)
    if meta is None:
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        dense = [int((r + 1) ** 3 <= s) for r, s in zip(resolutions, sizes)]
        for level, (d, s) in enumerate(zip(dense, sizes)):
            if not d and s & (s - 1):
                raise ValueError(f"hashed level {level} has {s} rows; the Triton kernels need a power of two (2^log2_size).")
        meta = LevelMeta(
            res=torch.tensor(list(resolutions), dtype=torch.int32, device=device),
            offsets=torch.tensor(offsets, dtype=torch.int64, device=device),
            sizes=torch.tensor(list(sizes), dtype=torch.int64, device=device),
            dense=torch.tensor(dense, dtype=torch.int32, device=device),
            row_counts=tuple(int(s) for s in sizes),
        )
        _META_CACHE[key] = meta
    return meta


class _HashEncodeTriton(torch.autograd.Function):
    """(points [N, 3], level_mask [L], meta, *tables [T_l, F]) -> [N, L * F]."""

    @staticmethod
    def forward(ctx, points, level_mask, meta, *tables):
        fwd, _ = _kernels()
        n_levels, feats = len(tables), tables[0].shape[1]
        flat = torch.cat([t.detach() for t in tables], dim=0).contiguous()
        out = torch.empty(points.shape[0], n_levels * feats, device=points.device, dtype=torch.float32)
        if points.shape[0] > 0:
            grid = (triton.cdiv(points.shape[0], BLOCK), n_levels)
            with _on_device(points.device):
                fwd[grid](
                    points, flat, out, meta.res, meta.offsets, meta.sizes, meta.dense, level_mask, points.shape[0],
                    OUT_COLS=n_levels * feats, F=feats, FP=triton.next_power_of_2(feats), BLOCK_N=BLOCK,
                    num_warps=NUM_WARPS, enable_fp_fusion=False,
                )
        ctx.save_for_backward(points, level_mask)
        ctx.meta = meta
        ctx.feats = feats
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        _, bwd = _kernels()
        points, level_mask = ctx.saved_tensors
        meta, feats = ctx.meta, ctx.feats
        n_levels = len(meta.row_counts)
        if not any(ctx.needs_input_grad[3:]):
            return (None, None, None) + (None,) * n_levels
        gflat = torch.zeros(sum(meta.row_counts), feats, device=points.device, dtype=torch.float32)
        if points.shape[0] > 0:
            grid = (triton.cdiv(points.shape[0], BLOCK), n_levels)
            with _on_device(points.device):
                bwd[grid](
                    points, grad_out.contiguous().float(), gflat, meta.res, meta.offsets, meta.sizes, meta.dense,
                    level_mask, points.shape[0],
                    OUT_COLS=n_levels * feats, F=feats, FP=triton.next_power_of_2(feats), BLOCK_N=BLOCK,
                    num_warps=NUM_WARPS, enable_fp_fusion=False,
                )
        grads = gflat.split(list(meta.row_counts), dim=0)
        return (None, None, None) + tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[3:]))


def triton_hash_encoding(
    points: torch.Tensor, tables: Sequence[torch.Tensor], resolutions: Sequence[int], level_mask: torch.Tensor
) -> torch.Tensor:
    """[N, 3] float32 points in [0, 1]^3 -> [N, L * F]: ``HashEncoding.forward_torch`` in Triton.

    ``tables``: the L per-level ``[T_l, F]`` float32 parameters (a ParameterList works);
    ``resolutions``: N_l per level; ``level_mask``: [L] multipliers. Differentiable in the tables
    only; raises ``RuntimeError`` when ``points`` require grad under autograd (use the PyTorch
    encoder for gradients with respect to positions).
    """
    tables = list(tables)
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"triton_hash_encoding expects points of shape [N, 3], got {list(points.shape)}.")
    if len(tables) != len(resolutions) or level_mask.numel() != len(tables):
        raise ValueError(
            f"triton_hash_encoding got {len(tables)} tables, {len(resolutions)} resolutions and a level mask of "
            f"{level_mask.numel()} entries; they must agree."
        )
    if torch.is_grad_enabled() and points.requires_grad:
        raise RuntimeError(
            "The Triton hash encoding computes gradients for the hash tables only, but the points require grad. "
            "Use the PyTorch encoder (geometry backend=torch, or backend=auto, which falls back to it for such "
            "points) when gradients with respect to positions are needed."
        )
    dtypes = {points.dtype} | {t.dtype for t in tables}
    if dtypes != {torch.float32}:
        raise TypeError(f"triton_hash_encoding supports float32 points and tables only, got {sorted(map(str, dtypes))}.")
    devices = {points.device} | {t.device for t in tables}
    if len(devices) != 1:
        raise ValueError(f"triton_hash_encoding needs points and tables on one device, got {sorted(map(str, devices))}.")
    feats = {t.shape[1] for t in tables}
    if len(feats) != 1:
        raise ValueError(f"triton_hash_encoding needs the same feature count per level, got {sorted(feats)}.")
    meta = level_meta(resolutions, [t.shape[0] for t in tables], points.device)
    mask = level_mask.detach().to(device=points.device, dtype=torch.float32).contiguous()
    return _HashEncodeTriton.apply(points.detach().contiguous(), mask, meta, *tables)
