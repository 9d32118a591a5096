"""tinycudann adapter for the hash-grid geometry, and a pure-PyTorch copy of tcnn's own formula.

tiny-cuda-nn's ``HashGrid`` encoding is NOT the same function as our ``HashEncoding`` (the
reference, ``hash_grid.py``). Facts from NVlabs/tiny-cuda-nn ``include/tiny-cuda-nn/encodings/grid.h``
(``GridEncodingTemplated`` constructor, ``kernel_grid``, ``kernel_grid_backward``) and
``include/tiny-cuda-nn/common_device.h`` (``grid_scale``, ``grid_resolution``, ``pos_fract``,
``grid_index``, ``coherent_prime_hash``; older releases inline the same as ``fast_hash`` in grid.h):

* Resolution. tcnn: ``scale_l = exp2f(l * log2f(b)) * N_min - 1`` (float32) and
  ``res_l = ceil(scale_l) + 1`` grid points per axis. Ours: ``N_l = floor(N_min * b^l)`` cells,
  ``n_l = N_l + 1`` points per axis (float64). The point counts agree (``res_l == n_l``) except
  where ``N_min * b^l`` is an integer: always at level 0 (tcnn 16 points per axis for N_min = 16,
  ours 17) and at every level for integer b (b = 2: 16, 32, 64 ... vs 17, 33, 65 ...).
* Position. tcnn: ``pos = fmaf(scale_l, x, 0.5)``, corner ``floor(pos)``, weights from
  ``pos - floor(pos)``, no clamping. Ours: ``pos = x * N_l``, corner ``clamp(floor(pos), 0, N_l - 1)``.
  So tcnn's cells are ``1 / scale_l`` wide and shifted by half a cell (the "+0.5 offset" of the
  Instant-NGP paper's appendix, to decorrelate levels), and at x = 1 its upper corners reach
  coordinate ``ceil(scale_l + 0.5)``, one past its grid: dense levels then wrap around
  (index modulo the level's row count), as tcnn's own comment says.
* Dense vs hashed, and hashing. Both: a level is dense while its grid points fit in the table
  (tcnn: ``res^3 <= rows``; ours: ``n^3 <= T``), with row ``x + res*y + res^2*z``, else the
  coherent prime hash ``x*1 ^ y*2654435761 ^ z*805459861`` (tcnn in uint32 arithmetic; its low
  bits equal our int64 ones) modulo T = 2^log2_hashmap_size. Same hash, same table size for
  hashed levels; different integer corners are fed to it (previous two points).
* Layout. tcnn: one flat parameter vector; level l starts at row ``offset_l`` (feature-major
  inside a row: ``(offset_l + row) * F + f``) and has ``min(next_multiple(res^3, 8), T)`` rows,
  i.e. dense levels are padded to a multiple of 8 rows (and padding rows can be read through
  the wrap-around above). Ours: one ``[min(n^3, T), F]`` table per level, no padding.
* Initialisation: both uniform in [-1e-4, 1e-4] (different generators). Level masking: tcnn has
  no per-level mask in its PyTorch bindings; the adapter multiplies its output by ours.

Design. Our per-level tables stay THE parameters for every backend (identical state_dict), and
``backend=tcnn`` evaluates tcnn's formula on them: ``tables_to_tcnn_params`` builds tcnn's flat
vector from our tables, differentiably, wherever a tcnn row has a counterpart in ours:

* hashed in both (same T, same hash): the table is used as is;
* dense in tcnn: tcnn row ``x + res*y + res^2*z`` (x, y, z < res) takes our row for the same
  integer grid point when that point exists in our grid (all coordinates < n). Rows without a
  counterpart (tcnn's padding rows past res^3; grid points past ours should res exceed n) are
  held at 0 and get no gradient, where real tcnn would train them. At integer-scale levels
  (level 0) tcnn's res^3 grid is the x, y, z < res corner of our (res + 1)^3 one;
* hashed in tcnn but dense in ours: no row correspondence -> ``ValueError`` (only reachable
  through float32 rounding of ``scale_l`` right at an integer).

So a checkpoint loads under every backend, but a model trained with ``backend=tcnn`` computes
a different function under ``torch`` / ``triton`` (and vice versa); that is why
``backend=auto`` never picks tcnn. ``tcnn_reference_encoding`` reproduces tcnn's formula in
PyTorch (to float32 rounding: tcnn uses one fused multiply-add for ``pos`` and CUDA's
``exp2f`` for ``scale_l``, which may differ from numpy's by an ulp); the CUDA test compares
tinycudann against it, and the CPU tests pin its behaviour on hand-computed values.

tinycudann is imported only inside ``TcnnHashEncoding`` (it raises at import without CUDA). The
adapter calls tcnn's autograd function with our flat vector (``tinycudann.modules.
_module_function``, ``native_tcnn_module``, ``_C.batch_size_granularity``: the internals
``tcnn.Encoding.forward`` itself uses) instead of the module's own ``params``, which it frees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

COHERENT_PRIMES = (1, 2654435761, 805459861)  # common_device.h coherent_prime_hash, dims 0..2
PARAM_ALIGNMENT = 8  # grid.h: params_in_level = next_multiple(params_in_level, 8u)
MAX_DENSE_RES_3D = 0x659  # common_device.h grid_index MAX_BASES[3]: res^3 fits in uint32
UINT32_MAX = 0xFFFFFFFF
CORNERS = torch.tensor([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)])  # tcnn's corner bits too


@dataclass(frozen=True)
class TcnnGridSpec:
    """The hash-grid hyper-parameters tcnn is configured with."""

    n_levels: int
    features_per_level: int
    log2_hashmap_size: int
    base_resolution: int
    per_level_scale: float


@dataclass(frozen=True)
class TcnnLevel:
    scale: float  # float32 value of exp2f(l * log2f(b)) * N_min - 1
    resolution: int  # grid points per axis: ceil(scale) + 1
    rows: int  # table rows of this level (feature vectors of F values)
    offset: int  # first row in the flat parameter vector
    hashed: bool


def as_spec(cfg: Any) -> TcnnGridSpec:
    """A ``TcnnGridSpec`` from a spec, a dict or an object with the same field names."""
    if isinstance(cfg, TcnnGridSpec):
        return cfg
    get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
    return TcnnGridSpec(
        int(get("n_levels")), int(get("features_per_level")), int(get("log2_hashmap_size")),
        int(get("base_resolution")), float(get("per_level_scale")),
    )


def tcnn_encoding_config(cfg: Any) -> dict:
    """The ``encoding_config`` for ``tcnn.Encoding(3, config, dtype=torch.float32)``."""
    s = as_spec(cfg)
    return {
        "otype": "HashGrid",
        "n_levels": s.n_levels,
        "n_features_per_level": s.features_per_level,
        "log2_hashmap_size": s.log2_hashmap_size,
        "base_resolution": s.base_resolution,
        "per_level_scale": s.per_level_scale,
    }


def tcnn_layout(cfg: Any) -> list[TcnnLevel]:
    """Per-level scale, resolution, rows and offset, as tcnn's GridEncodingTemplated computes them."""
    s = as_spec(cfg)
    log2_scale = np.float32(np.log2(np.float32(s.per_level_scale)))
    table = 1 << s.log2_hashmap_size
    levels, offset = [], 0
    for level in range(s.n_levels):
        scale = np.float32(np.exp2(np.float32(level) * log2_scale)) * np.float32(s.base_resolution) - np.float32(1.0)
        res = int(math.ceil(float(scale))) + 1
        max_params = UINT32_MAX // 2
        dense_params = max_params if float(res) ** 3 > max_params else res**3
        rows = min(-(-dense_params // PARAM_ALIGNMENT) * PARAM_ALIGNMENT, table)
        stride = res**3 if res <= MAX_DENSE_RES_3D else UINT32_MAX
        levels.append(TcnnLevel(float(scale), res, rows, offset, hashed=rows < stride))
        offset += rows
    return levels


def tcnn_n_params(cfg: Any) -> int:
    s = as_spec(cfg)
    return sum(lv.rows for lv in tcnn_layout(s)) * s.features_per_level


def tcnn_reference_encoding(points: torch.Tensor, flat_params: torch.Tensor, cfg: Any) -> torch.Tensor:
    """tcnn's HashGrid (linear interpolation, CoherentPrime hash) in PyTorch: [N, 3] in [0, 1]^3 and
    the flat ``[n_params]`` vector -> [N, L * F]. Differentiable in ``flat_params`` (and points)."""
    s = as_spec(cfg)
    feats = s.features_per_level
    params = flat_params.reshape(-1, feats)
    offsets = CORNERS.to(points.device)
    pts = points.to(torch.float32)
    out = []
    for lv in tcnn_layout(s):
        pos = pts * lv.scale + 0.5
        cell = pos.floor()
        frac = pos - cell
        corners = cell.long()[:, None, :] + offsets  # [N, 8, 3], may reach res (one past the grid)
        if lv.hashed:
            idx = corners[..., 0] * COHERENT_PRIMES[0]
            idx = idx ^ (corners[..., 1] * COHERENT_PRIMES[1])
            idx = (idx ^ (corners[..., 2] * COHERENT_PRIMES[2])) & UINT32_MAX
        else:
            r = lv.resolution
            idx = corners[..., 0] + r * corners[..., 1] + r * r * corners[..., 2]
        rows = lv.offset + idx % lv.rows
        weights = torch.where(offsets.bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(-1)  # [N, 8]
        out.append((weights[..., None] * params[rows]).sum(1))
    return torch.cat(out, dim=-1)


def _our_rows(coords: torch.Tensor, res: int, size: int) -> torch.Tensor:
    """Rows of our table for integer grid points [M, 3] (hash_grid.HashEncoding.corner_index)."""
    n = res + 1
    if n**3 <= size:
        return coords[:, 0] + n * coords[:, 1] + n * n * coords[:, 2]
    h = coords[:, 0] * COHERENT_PRIMES[0] ^ coords[:, 1] * COHERENT_PRIMES[1] ^ coords[:, 2] * COHERENT_PRIMES[2]
    return h % size


def tcnn_row_sources(cfg: Any, resolutions: Sequence[int], sizes: Sequence[int]) -> list[torch.Tensor | None]:
    """For each level, which of our table rows fills each tcnn row: ``None`` (identical tables, both
    hashed) or a [rows] int64 tensor of our row indices, -1 where the tcnn row is held at 0."""
    sources: list[torch.Tensor | None] = []
    for level, (lv, res, size) in enumerate(zip(tcnn_layout(cfg), resolutions, sizes)):
        ours_dense = (res + 1) ** 3 <= size
        if lv.hashed:
            if ours_dense or size != lv.rows:
                raise ValueError(
                    f"hash-grid level {level}: tcnn hashes it into {lv.rows} rows but our table is dense "
                    f"({size} rows for {res + 1}^3 grid points); the two tables have no row correspondence."
                )
            sources.append(None)
            continue
        r, n = lv.resolution, res + 1
        row = torch.arange(lv.rows, dtype=torch.int64)
        coords = torch.stack([row % r, (row // r) % r, row // (r * r)], dim=-1)
        valid = (row < r**3) & (coords < n).all(dim=-1)
        src = torch.full((lv.rows,), -1, dtype=torch.int64)
        src[valid] = _our_rows(coords[valid], res, size)
        sources.append(src)
    return sources


def tables_to_tcnn_params(tables: Sequence[torch.Tensor], sources: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Our per-level [T_l, F] tables -> tcnn's flat vector (differentiable; see module docstring)."""
    parts = []
    for table, src in zip(tables, sources):
        if src is None:
            parts.append(table)
            continue
        src = src.to(table.device)
        gathered = table.index_select(0, src.clamp(min=0))
        parts.append(torch.where((src >= 0)[:, None], gathered, torch.zeros_like(gathered)))
    return torch.cat(parts, dim=0).reshape(-1)


class TcnnHashEncoding:
    """tcnn's HashGrid evaluated on our tables (CUDA + tinycudann). Not an nn.Module on purpose:
    it owns no parameters, so the geometry's state_dict is the same as with the other backends."""

    def __init__(self, cfg: Any, resolutions: Sequence[int], sizes: Sequence[int], device: torch.device, seed: int = 1337):
        import tinycudann as tcnn
        from tinycudann import modules as tcnn_modules

        self.spec = as_spec(cfg)
        self.device = torch.device(device)
        with torch.cuda.device(self.device):
            module = tcnn.Encoding(3, tcnn_encoding_config(self.spec), seed=seed, dtype=torch.float32)
        expected, got = tcnn_n_params(self.spec), module.params.numel()
        if got != expected:
            raise RuntimeError(
                f"tinycudann's HashGrid has {got} parameters but scorelift's copy of its layout expects {expected} "
                f"(levels {[(lv.resolution, lv.rows) for lv in tcnn_layout(self.spec)]}); this tinycudann version "
                f"lays out its grid differently, so the adapter cannot map our tables onto it."
            )
        module.params = None  # our tables are the parameters; free tcnn's own copy
        self.module = module
        self._apply = tcnn_modules._module_function.apply
        self._granularity = int(tcnn_modules._C.batch_size_granularity())
        self.sources = [None if s is None else s.to(self.device) for s in tcnn_row_sources(self.spec, resolutions, sizes)]

    def __call__(self, points: torch.Tensor, tables: Sequence[torch.Tensor], level_mask: torch.Tensor) -> torch.Tensor:
        s = self.spec
        n = points.shape[0]
        width = s.n_levels * s.features_per_level
        if n == 0:
            return points.new_zeros(0, width)
        flat = tables_to_tcnn_params(list(tables), self.sources).float().contiguous()
        x = points.float().contiguous()
        padded = -(-n // self._granularity) * self._granularity
        if padded != n:
            x = torch.nn.functional.pad(x, [0, 0, 0, padded - n])
        out = self._apply(self.module.native_tcnn_module, x, flat, self.module.loss_scale)
        out = out[:n, :width].float()
        return out * level_mask.to(out).repeat_interleave(s.features_per_level)
