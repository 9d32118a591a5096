"""``hash-grid`` geometry: a multi-resolution hash encoding with small density and feature MLPs.

Encoding (Instant-NGP). Level l (0..L-1) is a grid of resolution ``N_l = floor(N_min * b^l)``
cells per axis over the box (n = N_l + 1 grid points), b the growth factor; a point x in the
unit box lies in cell ``clamp(floor(x N_l), 0, N_l - 1)``. Its 8 surrounding grid corners index
the level's table of T entries x F features: directly (x + n y + n^2 z) while the level's
n^3 corners fit in T, else by the spatial hash (x * 1) xor (y * 2654435761) xor
(z * 805459861) mod T. Corner features are blended trilinearly; the L x F values concatenate.
Table entries start uniform in [-1e-4, 1e-4] (the reference implementation's init).

Heads. ``density = softplus(mlp_d(enc) + blob(x))`` with the blob bias
``blob_scale * (1 - |x| / blob_std)`` (threestudio's "blob_magic3d": a soft ball at the centre
to start from) and ``features = act(mlp_f(enc))`` (sigmoid for RGB, none for latents).

Progressive levels (optional): only the first ``start_levels`` levels are active at step 0, one
more every ``update_steps`` steps; inactive levels are multiplied by 0 (Magic3D / threestudio).

Backends (config ``backend``), all on the same parameters (identical state_dict):

* ``torch``: this module's pure-PyTorch encoder (``HashEncoding.forward_torch``), any device.
  It is the reference.
* ``triton``: ``hash_encoding_triton.py``, Triton kernels for exactly the same function (equal to
  float32 rounding), CUDA only (or CPU tensors under ``TRITON_INTERPRET=1``); table gradients
  only, no gradient with respect to the points.
* ``tcnn``: ``hash_encoding_tcnn.py``, tinycudann's HashGrid on CUDA. tcnn's formula differs
  from ours (grid resolution ceil(N_min b^l) vs floor(N_min b^l) + 1 points per axis, a half-cell
  offset, padded dense tables; see that module), so it evaluates a DIFFERENT function of the
  same tables. Only used when asked for explicitly.
* ``auto``: decided per call from the points: Triton when they are float32 CUDA tensors that
  do not require grad and Triton imports, else PyTorch (CPU points always use PyTorch; so do
  runs under PyTorch's deterministic algorithms, since the Triton backward adds with atomics).
  auto never picks tcnn, because that would change the model's function from machine to machine.

An explicit ``triton`` / ``tcnn`` is checked at construction (package importable, a CUDA GPU
present) and again per call (CUDA points); failures are ConfigErrors naming what is missing.
Triton and tinycudann are imported only when used, never at module import.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scorelift.errors import ConfigError
from scorelift.interfaces.geometry import Geometry, GeometryOutput
from scorelift.registry import register

PRIMES = (1, 2654435761, 805459861)
FEATURE_KINDS = {"none": "latent", "sigmoid": "rgb"}


@dataclass(kw_only=True)
class HashGridConfig:
    """Options of ``hash-grid`` and their defaults (``geometry=hash-grid geometry.<option>=...``):
    Instant-NGP's encoding with threestudio's defaults. For a CPU run use fewer levels and a
    smaller table, e.g. ``geometry.n_levels=8 geometry.log2_hashmap_size=15``."""

    bbox_radius: float = 1.0  # the box [-r, r]^3; density is 0 outside it
    n_features: int = 3  # C: 3 with sigmoid (RGB) or 4 with none (latents)
    feature_activation: str = "sigmoid"  # "sigmoid" or "none"
    n_levels: int = 16  # L
    features_per_level: int = 2  # F
    log2_hashmap_size: int = 19  # log2 T: T = 2^19 entries per level
    base_resolution: int = 16  # N_min
    per_level_scale: float = 1.447269237440378  # b: the finest level is 16 * 1.447^15 = 4096
    mlp_width: int = 64  # hidden units of each head
    mlp_layers: int = 1  # hidden layers of each head
    # Density bias at the centre: 10 (1 - |x| / 0.5), a soft ball to start from (threestudio's
    # blob_magic3d); 0 disables the blob.
    blob_scale: float = 10.0
    blob_std: float = 0.5  # radius where the bias crosses 0
    # Progressive levels: those active at step 0, e.g. 8 with update_steps 500 (None: all active).
    start_levels: int | None = None
    update_steps: int = 0  # one more level every this many steps (0: start_levels stay)
    # auto | torch | triton | tcnn (see the module docstring); the parameters (state_dict) are the
    # same for all four.
    #   auto:   per call, Triton for float32 CUDA points (if triton imports), else pure PyTorch (CPU
    #           points always); both compute the same encoding. Never picks tcnn.
    #   torch:  pure PyTorch (this module), the reference; any device.
    #   triton: Triton kernels, same encoding to float32 rounding; CUDA only, no gradient w.r.t. points.
    #   tcnn:   tinycudann's HashGrid on CUDA. Its formula differs from ours (resolution, half-cell
    #           offset, padded dense tables: hash_encoding_tcnn.py), so it computes a different
    #           function of the same tables: train and evaluate with the same backend.
    backend: str = "auto"
    init_seed: int = 0  # seed of the table and MLP initialisation


BACKENDS = ("auto", "torch", "triton", "tcnn")
BACKEND_HELP = (
    "auto (Triton on CUDA when it imports, else PyTorch), torch (pure PyTorch, any device), "
    "triton (Triton kernels, same encoding, CUDA only) or tcnn (tinycudann's own HashGrid formula, CUDA only)"
)
_IMPORTS: dict[str, str | None] = {}  # module -> None when it imports, else the error text


# The finest level's cells per axis at most (the default's finest is 4096 = 2^12). Points reach the
# encoding as float32 in [0, 1], spaced 2^-24 near 1, so no point could tell finer cells apart; the
# bound also keeps level_resolutions from overflowing a float (1.447^l does past l = 1900).
MAX_LEVEL_RESOLUTION = 2**24


def level_resolutions(base: int, scale: float, n_levels: int) -> list[int]:
    return [int(math.floor(base * scale**level)) for level in range(n_levels)]


def table_sizes(resolutions: list[int], table_size: int) -> list[int]:
    """Rows of each level's table: its (N_l + 1)^3 grid corners while they fit in T, else T."""
    return [min(table_size, (n + 1) ** 3) for n in resolutions]


def _import_error(module: str) -> str | None:
    """Import ``module`` once (only when a backend needs it); None if it works, else why not."""
    if module not in _IMPORTS:
        try:
            importlib.import_module(module)
            _IMPORTS[module] = None
        except Exception as err:  # tinycudann raises EnvironmentError without CUDA
            _IMPORTS[module] = f"{type(err).__name__}: {err}"
    return _IMPORTS[module]


def _triton_interpreter() -> bool:
    from scorelift.library.hash_encoding_triton import interpreter_mode

    return interpreter_mode()


def check_backend(backend: str) -> str:
    """Validate a ``backend`` value at construction; explicit triton / tcnn must be able to run here."""
    where = "geometry (hash-grid)"
    if backend not in BACKENDS:
        raise ConfigError(f"{where} backend={backend!r} is not one of {', '.join(BACKENDS)}: {BACKEND_HELP}.")
    problems = []
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            problems.append("the triton package is not installed (pip install triton; CUDA builds of PyTorch ship it)")
        if not torch.cuda.is_available() and not _triton_interpreter():
            problems.append("no CUDA GPU is available (torch.cuda.is_available() is False)")
    elif backend == "tcnn":
        if not torch.cuda.is_available():
            problems.append("no CUDA GPU is available (torch.cuda.is_available() is False)")
        if importlib.util.find_spec("tinycudann") is None:
            problems.append("the tinycudann package is not installed (it builds from NVlabs/tiny-cuda-nn, bindings/torch)")
        elif torch.cuda.is_available() and _import_error("tinycudann"):
            problems.append(f"tinycudann does not import ({_import_error('tinycudann')})")
    if problems:
        raise ConfigError(
            f"{where} backend={backend!r} cannot run here: {'; and '.join(problems)}. The allowed values are "
            f"{', '.join(BACKENDS)}: {BACKEND_HELP}; use backend=auto or backend=torch on this machine."
        )
    return backend


class HashEncoding(torch.nn.Module):
    """[N, 3] points in [0, 1]^3 -> [N, L * F] features; ``forward_torch`` is the reference and
    ``forward`` dispatches to the backend (see the module docstring). The parameters are the same
    for every backend: only the L tables (``tables.0`` ... ``tables.{L-1}``)."""

    def __init__(
        self, n_levels: int, features_per_level: int, log2_size: int, base: int, scale: float, seed: int,
        backend: str = "torch",
    ):
        super().__init__()
        self.resolutions = level_resolutions(base, scale, n_levels)
        self.table_size = 2**log2_size
        self.features_per_level = features_per_level
        self.log2_size = log2_size
        self.base_resolution = base
        self.per_level_scale = scale
        self.seed = seed
        self.backend = check_backend(backend)
        sizes = table_sizes(self.resolutions, self.table_size)
        gen = torch.Generator().manual_seed(seed)
        self.tables = torch.nn.ParameterList(
            [torch.nn.Parameter((torch.rand(s, features_per_level, generator=gen) * 2 - 1) * 1e-4) for s in sizes]
        )
        self.register_buffer("level_mask", torch.ones(n_levels), persistent=False)
        self._tcnn: dict[str, object] = {}  # device -> TcnnHashEncoding (a plain dict: no state_dict entries)

    @property
    def output_dim(self) -> int:
        return len(self.resolutions) * self.features_per_level

    def corner_index(self, corners: torch.Tensor, level: int) -> torch.Tensor:
        """[..., 3] integer corners -> [...] table rows (dense while it fits, hashed after)."""
        return self.axis_rows(corners[..., 0], corners[..., 1], corners[..., 2], level)

    def axis_rows(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, level: int) -> torch.Tensor:
        """Table rows of integer grid coordinates given per axis (any broadcastable shapes)."""
        n = self.resolutions[level] + 1  # grid points per axis
        size = self.tables[level].shape[0]
        if n**3 <= size:
            return x + n * y + n * n * z
        return ((x * PRIMES[0]) ^ (y * PRIMES[1]) ^ (z * PRIMES[2])) % size

    def active_backend(self, unit_points: torch.Tensor) -> str:
        """The backend ``forward`` uses for these points: torch, triton or tcnn."""
        where = f"geometry (hash-grid) backend={self.backend!r}"
        if self.backend == "torch":
            return "torch"
        if self.backend == "auto":
            usable = (
                unit_points.is_cuda
                and unit_points.dtype == torch.float32
                and all(t.dtype == torch.float32 for t in self.tables)
                and not (torch.is_grad_enabled() and unit_points.requires_grad)
                and not torch.are_deterministic_algorithms_enabled()
            )
            return "triton" if usable and _import_error("triton") is None else "torch"
        if self.backend == "triton":
            if not unit_points.is_cuda and not _triton_interpreter():
                raise ConfigError(
                    f"{where} got points on {unit_points.device}: the Triton kernels run on CUDA tensors only. Move the "
                    f"geometry to the GPU, or use backend=auto (Triton on CUDA, PyTorch elsewhere) or backend=torch."
                )
            err = _import_error("triton")
            if err:
                raise ConfigError(f"{where}: triton does not import ({err}); use backend=auto or backend=torch.")
            return "triton"
        if not unit_points.is_cuda:
            raise ConfigError(
                f"{where} got points on {unit_points.device}: tinycudann runs on CUDA tensors only (its formula on the "
                f"CPU is scorelift.library.hash_encoding_tcnn.tcnn_reference_encoding). Move the geometry to the GPU."
            )
        return "tcnn"

    def forward(self, unit_points: torch.Tensor) -> torch.Tensor:
        backend = self.active_backend(unit_points)
        if backend == "triton":
            from scorelift.library.hash_encoding_triton import triton_hash_encoding

            return triton_hash_encoding(unit_points, list(self.tables), self.resolutions, self.level_mask)
        if backend == "tcnn":
            return self.tcnn_adapter(unit_points.device)(unit_points, list(self.tables), self.level_mask)
        return self.forward_torch(unit_points)

    def tcnn_adapter(self, device: torch.device):
        """The tinycudann encoder for ``device``, built on first use."""
        key = str(device)
        if key not in self._tcnn:
            from scorelift.library.hash_encoding_tcnn import TcnnGridSpec, TcnnHashEncoding

            spec = TcnnGridSpec(
                len(self.resolutions), self.features_per_level, self.log2_size, self.base_resolution, self.per_level_scale
            )
            sizes = [t.shape[0] for t in self.tables]
            self._tcnn[key] = TcnnHashEncoding(spec, self.resolutions, sizes, device, seed=self.seed)
        return self._tcnn[key]

    def forward_torch(self, unit_points: torch.Tensor) -> torch.Tensor:
        """The reference encoder in pure PyTorch (any device, differentiable in points and tables).

        The 8 corners' rows and trilinear weights are separable per axis, so they are built from
        [N, 2] per-axis values broadcast to [N, 2, 2, 2] (z, y, x: corner index x + 2y + 4z, as
        in the Triton kernels) rather than from [N, 8, 3] corner coordinates: the same numbers
        (the weight products keep the order (w_x w_y) w_z) with a third of the integer work.
        """
        out = []
        step = torch.tensor([0, 1], device=unit_points.device)
        n_points = unit_points.shape[0]
        for level, res in enumerate(self.resolutions):
            pos = unit_points * res
            base = pos.floor().clamp(0, res - 1)
            frac = pos - base  # [N, 3] in [0, 1]
            lo = base.long()
            ix, iy, iz = (lo[:, k, None] + step for k in range(3))  # [N, 2] each
            rows = self.axis_rows(ix[:, None, None, :], iy[:, None, :, None], iz[:, :, None, None], level)
            wx, wy, wz = (torch.stack([1 - frac[:, k], frac[:, k]], dim=-1) for k in range(3))  # [N, 2] each
            weights = (wx[:, None, None, :] * wy[:, None, :, None]) * wz[:, :, None, None]  # [N, 2, 2, 2]
            feats = self.tables[level][rows.reshape(n_points, 8)]  # [N, 8, F]
            out.append((weights.reshape(n_points, 8, 1) * feats).sum(1) * self.level_mask[level])
        return torch.cat(out, dim=-1)


def mlp(n_in: int, n_out: int, width: int, layers: int) -> torch.nn.Sequential:
    dims = [n_in] + [width] * layers
    mods: list[torch.nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    mods.append(torch.nn.Linear(dims[-1], n_out))
    return torch.nn.Sequential(*mods)


def mlp_parameter_count(n_in: int, n_out: int, width: int, layers: int) -> int:
    """Elements of ``mlp(n_in, n_out, width, layers)``'s parameters: a weight [b, a] and a bias [b]
    per Linear(a, b)."""
    dims = [n_in] + [width] * layers + [n_out]
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


@register("geometry", "hash-grid")
class HashGrid(Geometry):
    """Parameters: the encoding's L tables [T_l, F] and the two heads' weights. Buffer ``bbox`` [2, 3]."""

    # one line for `scorelift --list`
    summary = "A multiresolution hash encoding with small MLP heads (Instant-NGP; tinycudann on CUDA if installed)."

    Config = HashGridConfig
    feature_kinds = FEATURE_KINDS
    size_options = ("log2_hashmap_size", "n_levels", "features_per_level", "mlp_width", "mlp_layers", "n_features")

    def __init__(self, cfg=None):
        super().__init__(cfg)
        c = self.cfg
        self.n_features = c.n_features
        self.feature_kind = FEATURE_KINDS[c.feature_activation]
        r = c.bbox_radius
        self.register_buffer("bbox", torch.tensor([[-r] * 3, [r] * 3], dtype=torch.float32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.init_seed)
            self.encoding = HashEncoding(
                c.n_levels, c.features_per_level, c.log2_hashmap_size, c.base_resolution, c.per_level_scale, c.init_seed,
                backend=c.backend,
            )
            self.density_head = mlp(self.encoding.output_dim, 1, c.mlp_width, c.mlp_layers)
            self.feature_head = mlp(self.encoding.output_dim, c.n_features, c.mlp_width, c.mlp_layers)
        self.update_step(0, 1)

    @classmethod
    def check_config(cls, c: HashGridConfig) -> None:
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
        # In log10 space: base * scale^(L - 1) itself overflows a float for a large level count
        # (the 1e-9 absorbs the logs' rounding, so that exactly 2^24 passes).
        finest = math.log10(c.base_resolution) + (c.n_levels - 1) * math.log10(c.per_level_scale)
        if finest > math.log10(MAX_LEVEL_RESOLUTION) + 1e-9:
            raise ConfigError(
                f"geometry (hash-grid) n_levels={c.n_levels}, base_resolution={c.base_resolution} and "
                f"per_level_scale={c.per_level_scale} give the finest level base_resolution * per_level_scale^"
                f"(n_levels - 1) = about 10^{finest:.1f} cells per axis, more than 2^24 (16777216): float32 points "
                f"in [0, 1] cannot tell finer cells apart. Use fewer levels or a smaller per_level_scale "
                f"(threestudio: 16 levels from 16 at 1.447, the finest 4096)."
            )
        if c.mlp_width < 1 or c.mlp_layers < 0:
            raise ConfigError(
                f"geometry (hash-grid) mlp_width={c.mlp_width} must be >= 1 and mlp_layers={c.mlp_layers} >= 0 "
                f"(hidden units and hidden layers of each head; threestudio: 64 and 1)."
            )
        if c.start_levels is not None and not 1 <= c.start_levels <= c.n_levels:
            raise ConfigError(f"geometry (hash-grid) start_levels={c.start_levels} must lie in 1..n_levels={c.n_levels}.")
        check_backend(c.backend)

    @classmethod
    def parameter_bytes(cls, c: HashGridConfig) -> int:
        """What ``__init__`` allocates as parameters, at the default dtype: the L tables [T_l, F]
        (``table_sizes``) and the two heads, ``mlp(L F, 1, width, layers)`` and ``mlp(L F, C, width,
        layers)``. The buffers (bbox [2, 3], level_mask [L]) are left out."""
        resolutions = level_resolutions(c.base_resolution, c.per_level_scale, c.n_levels)
        tables = sum(table_sizes(resolutions, 2**c.log2_hashmap_size)) * c.features_per_level
        n_in = c.n_levels * c.features_per_level
        heads = mlp_parameter_count(n_in, 1, c.mlp_width, c.mlp_layers) + mlp_parameter_count(
            n_in, c.n_features, c.mlp_width, c.mlp_layers
        )
        return (tables + heads) * torch.get_default_dtype().itemsize

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
