"""DMTet mesh geometry (Magic3D's fine stage): a signed distance and a vertex offset on a
tetrahedral grid, marching tetrahedra in PyTorch, and a feature field read at surface points.

Layout. ``resolution`` cells per axis over the box [-r, r]^3, each cut into 6 tetrahedra
(``scorelift.maths.tetrahedra.tet_grid``). Each grid vertex holds a signed distance (negative
inside) and an offset that moves it within ``deform_scale`` of half a cell
(``offset = deform_scale * h / 2 * tanh(raw)``, h the cell size), as DMTet bounds it so that
tetrahedra cannot fold. ``mesh()`` runs marching tetrahedra on the deformed grid: the surface is
differentiable in both, and closed (the grid's outer vertices count as outside).

Features (colour or latents) come from a dense grid of ``feature_resolution`` points per axis,
trilinearly interpolated at the surface points the renderer asks for, with the activation of
the voxel grid (``sigmoid``: RGB; ``none`` / ``tanh``: latents).

Initialisation. A sphere of ``init_radius`` (the signed distance of a sphere), or
``init_from(geometry)``: a finished density-field run's geometry, as Magic3D starts its mesh
stage. The signed distance becomes ``level - density`` at the grid vertices (``level``: the
density the mesh export chooses, ``scorelift.outputs.mesh.pick_threshold``), scaled to world units
(``sdf_scale``); the features are the field's own at the feature grid's points
(``feature_init="field"``) or what the field renders there, seen along the outward normal
(``"rendered"``, ``rendered_features``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scorelift.errors import ConfigError
from scorelift.interfaces.geometry import Geometry, GeometryOutput
from scorelift.maths.tetrahedra import close_inside, marching_tets, tet_grid
from scorelift.registry import register

FEATURE_KINDS = {"none": "latent", "tanh": "latent", "sigmoid": "rgb"}
FEATURE_INITS = ("field", "rendered")
RENDERED_SAMPLES = 32  # samples along each normal segment of feature_init="rendered"
LATENT_BOUND = 3.0  # tanh latents are bounded to +-3, as the voxel grid's
BOUNDARY_SDF = 1e-3  # the least signed distance of a vertex on the grid's faces (outside: the mesh closes)


def rendered_features(field: Geometry, points: torch.Tensor, depth: float, h: float,
                      n_samples: int = RENDERED_SAMPLES) -> torch.Tensor:
    """[N, C]: the features a density field shows at each of ``points`` [N, 3] to a camera looking
    along the point's outward normal (minus the density gradient, central differences of step
    ``h``): the field's features composited front to back over the segment from ``depth`` outside
    the point to ``depth`` inside it, as the volume renderer composites them, divided by the
    segment's opacity so that the background does not enter. Where the segment holds no density
    (opacity below 1e-4) or the field is flat, the field's own features at the point.

    Why: a score-distilled density field is a soft blob whose renders mix the features of several
    layers around the level the mesh starts on; the features at the level set alone can be ones no
    render ever showed (speckled, off-colour), and the mesh stage would start from those."""
    normals = field.central_difference_normals(points, h)  # [N, 3], zero where flat
    step = 2.0 * depth / n_samples
    s = depth - step * (torch.arange(n_samples, dtype=points.dtype, device=points.device) + 0.5)  # [S], outside first
    samples = points[:, None, :] + normals[:, None, :] * s[None, :, None]  # [N, S, 3]
    out = field(samples.reshape(-1, 3))
    density = out.density.reshape(len(points), n_samples)
    features = out.features.reshape(len(points), n_samples, -1)
    alpha = 1.0 - torch.exp(-density * step)  # [N, S]
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=1), dim=1)
    weights = transmittance * alpha
    opacity = weights.sum(dim=1, keepdim=True)  # [N, 1]
    composite = (weights[..., None] * features).sum(dim=1) / opacity.clamp_min(1e-12)
    own = field(points).features
    usable = (opacity > 1e-4) & (normals.abs().sum(dim=1, keepdim=True) > 0)
    return torch.where(usable, composite, own)


def on_grid_faces(vertices: torch.Tensor, radius: float) -> torch.Tensor:
    """[V] True for the vertices [V, 3] of a tet grid over [-radius, radius]^3 that lie on its faces."""
    return (vertices.abs() >= radius - 1e-6).any(dim=-1)


def closed(sdf: torch.Tensor, on_faces: torch.Tensor) -> torch.Tensor:
    """``sdf`` [V] with the grid's face vertices counted as outside (at least BOUNDARY_SDF), so that
    the surface is closed even where the object (or a start from a foggy field) reaches the box."""
    return torch.where(on_faces, sdf.clamp_min(BOUNDARY_SDF), sdf)


@dataclass(kw_only=True)
class DMTetConfig:
    """Options of ``dmtet`` and their defaults (``geometry=dmtet geometry.<option>=...``)."""

    resolution: int = 32  # tetrahedral grid cells per axis (6 tetrahedra per cell)
    bbox_radius: float = 1.0  # the grid spans [-r, r]^3
    n_features: int = 3  # C: 3 for RGB (sigmoid), the prior's latent channels otherwise
    feature_activation: str = "sigmoid"  # sigmoid (RGB) | none | tanh (latents, bounded to +-3)
    feature_resolution: int = 64  # feature grid points per axis
    deform_scale: float = 1.0  # vertex offsets reach this fraction of half a cell (0: no deformation)
    init_radius: float = 0.5  # the starting sphere, when not started from a run (init_from=)
    # Signed distance per unit of density below the export level, when started from a density field.
    sdf_scale: float = 0.1
    feature_init_std: float = 0.0  # features start as N(0, std^2) before activation (0: mid-grey / zero latents)
    # The feature grid's learning rate as a factor on system.optimizer.lr.geometry (1: the surface's
    # rate, one optimizer group as before; another value splits surface and features into two).
    lr_features: float = 1.0
    # Started from a density field, the features at each feature-grid point are: "rendered", what
    # the field shows a camera looking at that point along its outward normal (its features
    # composited front to back along the normal, through ``init_depth`` either side of the point);
    # or "field", the field's own features at the point (the surface then starts with whatever the
    # field holds at its level set, which the renders may never have shown).
    feature_init: str = "field"
    init_depth: float = 0.2
    init_seed: int = 0


@register("geometry", "dmtet")
class DMTetGeometry(Geometry):
    """Parameters ``sdf`` [V], ``deform`` [V, 3] on the tetrahedral grid's V vertices and
    ``feature_grid`` [1, C, R_f, R_f, R_f]; ``mesh()`` -> vertices [M, 3], faces [K, 3];
    ``forward(points [N, 3])`` -> features [N, C] (density 1 inside the grid's box, 0 outside:
    a rasteriser reads the surface, not a density)."""

    # one line for `scorelift --list`
    summary = "A DMTet mesh: signed distance and vertex offsets on a tetrahedral grid (Magic3D's fine stage)."

    Config = DMTetConfig
    kind = "mesh"
    feature_kinds = FEATURE_KINDS
    size_options = ("resolution", "feature_resolution", "n_features")

    @classmethod
    def check_config(cls, c: DMTetConfig) -> None:
        if c.resolution < 2:
            raise ConfigError(f"geometry (dmtet) resolution={c.resolution} must be at least 2 cells per axis.")
        if c.feature_resolution < 2:
            raise ConfigError(f"geometry (dmtet) feature_resolution={c.feature_resolution} must be at least 2.")
        if c.feature_activation not in FEATURE_KINDS:
            raise ConfigError(f"geometry (dmtet) feature_activation={c.feature_activation!r} is not one of "
                              f"{', '.join(FEATURE_KINDS)}.")
        if c.feature_activation == "sigmoid" and c.n_features != 3:
            raise ConfigError(f"geometry (dmtet) feature_activation='sigmoid' renders RGB and needs n_features=3, "
                              f"got {c.n_features}.")
        if not c.bbox_radius > 0 or not 0 < c.init_radius < c.bbox_radius:
            raise ConfigError(f"geometry (dmtet) bbox_radius={c.bbox_radius} must be positive and init_radius="
                              f"{c.init_radius} inside it.")
        if not 0 <= c.deform_scale <= 1:
            raise ConfigError(f"geometry (dmtet) deform_scale={c.deform_scale} must lie in [0, 1] (a fraction of "
                              f"half a cell; more lets tetrahedra fold).")
        if not c.lr_features >= 0:
            raise ConfigError(f"geometry (dmtet) lr_features={c.lr_features} must be a factor >= 0 on "
                              f"system.optimizer.lr.geometry (1: the surface's rate; 0: frozen features).")
        if c.feature_init not in FEATURE_INITS:
            raise ConfigError(f"geometry (dmtet) feature_init={c.feature_init!r} is not one of {', '.join(FEATURE_INITS)}: "
                              "how the features start when the mesh is started from a density field.")
        if not c.init_depth > 0:
            raise ConfigError(f"geometry (dmtet) init_depth={c.init_depth} must be positive (world units either side "
                              "of a feature point along which feature_init='rendered' composites the field).")
        if not c.sdf_scale > 0 or c.feature_init_std < 0:
            raise ConfigError(f"geometry (dmtet) sdf_scale={c.sdf_scale} must be positive and feature_init_std="
                              f"{c.feature_init_std} non-negative.")

    @classmethod
    def parameter_bytes(cls, c: DMTetConfig) -> int:
        vertices = (c.resolution + 1) ** 3
        return 4 * (4 * vertices + c.n_features * c.feature_resolution ** 3)

    def __init__(self, cfg=None):
        super().__init__(cfg)
        c = self.cfg
        self.n_features = c.n_features
        self.feature_kind = FEATURE_KINDS[c.feature_activation]
        r = float(c.bbox_radius)
        self.register_buffer("bbox", torch.tensor([[-r] * 3, [r] * 3]))
        vertices, tets = tet_grid(c.resolution, r)
        self.register_buffer("grid_vertices", vertices, persistent=False)
        self.register_buffer("tets", tets, persistent=False)
        # Vertices on the grid's faces count as outside whatever their signed distance, so that the
        # surface is closed even where the object (or a start from a foggy field) reaches the box.
        self.register_buffer("on_boundary", on_grid_faces(vertices, r), persistent=False)
        self.cell = 2.0 * r / c.resolution
        self.sdf = torch.nn.Parameter(vertices.norm(dim=-1) - c.init_radius)
        self.deform = torch.nn.Parameter(torch.zeros_like(vertices))
        gen = torch.Generator().manual_seed(c.init_seed)
        R = c.feature_resolution
        self.feature_grid = torch.nn.Parameter(torch.randn((1, c.n_features, R, R, R), generator=gen) * c.feature_init_std)

    # ----------------------------------------------------------------------------- the surface
    def deformed_vertices(self) -> torch.Tensor:
        """[V, 3] grid vertices moved by their bounded offsets."""
        return self.grid_vertices + self.cfg.deform_scale * 0.5 * self.cell * torch.tanh(self.deform)

    @property
    def mesh_resolution(self) -> int:
        """Cells per axis of the grid ``mesh()`` extracts on (the export coarsens from it)."""
        return self.cfg.resolution

    def mesh(self, resolution: int | None = None, closing: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The surface: vertices [M, 3] (differentiable in ``sdf`` and ``deform``), faces [K, 3].

        ``resolution``: extract on a grid of that many cells per axis instead of the geometry's
        own, its signed distance and vertex offsets interpolated trilinearly from the own grid's
        (the export's face cap: a coarser grid gives about (resolution / own)^2 as many faces, and
        is as closed as the own one, which a decimation of the finished mesh would not promise).
        ``closing``: close the inside region by that many grid edges first
        (``scorelift.maths.tetrahedra.close_inside``; the export's ``export.closing``): cracks
        and pockets the renders never show no longer split the surface. Training uses neither."""
        if resolution is None or resolution == self.cfg.resolution:
            vertices, tets, sdf, on_faces = self.deformed_vertices(), self.tets, self.sdf, self.on_boundary
        else:
            vertices, tets, sdf, on_faces = self.resampled_grid(resolution)
        sdf = closed(sdf, on_faces)
        if closing:
            sdf = closed(close_inside(sdf, tets, closing), on_faces)
        return marching_tets(vertices, tets, sdf)

    def resampled_grid(self, resolution: int):
        """A tet grid of ``resolution`` cells per axis over the same box, its signed distance and
        vertex offsets interpolated trilinearly from the own grid's: (deformed vertices [V', 3],
        tets [T', 4], signed distance [V'], which vertices lie on the grid's faces [V'])."""
        if resolution < 2:
            raise ConfigError(f"dmtet mesh(resolution={resolution}): use at least 2 cells per axis.")
        r = float(self.cfg.bbox_radius)
        vertices, tets = tet_grid(resolution, r)
        vertices, tets = vertices.to(self.sdf.device), tets.to(self.sdf.device)
        n = self.cfg.resolution + 1
        offsets = self.deformed_vertices() - self.grid_vertices  # [V, 3]
        # grid vertex (i, j, k) is row (k * n + j) * n + i: a [z, y, x] volume, which grid_sample
        # addresses with (x, y, z) coordinates in [-1, 1]
        volume = torch.cat([self.sdf[:, None], offsets], dim=1).t().reshape(1, 4, n, n, n)
        sampled = F.grid_sample(volume, (vertices / r).view(1, -1, 1, 1, 3), mode="bilinear",
                                align_corners=True).view(4, -1).t()  # [V', 4]
        return vertices + sampled[:, 1:], tets, sampled[:, 0], on_grid_faces(vertices, r)

    def optimizer_groups(self):
        """None (one group, the geometry's rate) unless ``lr_features`` sets the feature grid apart:
        a run's optimizer groups stay those of its checkpoints when the option is left alone."""
        if self.cfg.lr_features == 1.0:
            return None
        return [("surface", [self.sdf, self.deform], 1.0), ("features", [self.feature_grid], self.cfg.lr_features)]

    # ----------------------------------------------------------------------------- features
    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        act = self.cfg.feature_activation
        if act == "sigmoid":
            return torch.sigmoid(raw)
        if act == "tanh":
            return LATENT_BOUND * torch.tanh(raw / LATENT_BOUND)
        return raw

    def inverse_activation(self, value: torch.Tensor) -> torch.Tensor:
        act = self.cfg.feature_activation
        if act == "sigmoid":
            return torch.logit(value.clamp(1e-4, 1 - 1e-4))
        if act == "tanh":
            return LATENT_BOUND * torch.atanh((value / LATENT_BOUND).clamp(-0.999, 0.999))
        return value

    def forward(self, points: torch.Tensor) -> GeometryOutput:
        r = self.cfg.bbox_radius
        coords = (points / r).clamp(-1.0, 1.0).to(self.feature_grid.dtype)
        raw = F.grid_sample(self.feature_grid, coords.view(1, -1, 1, 1, 3), mode="bilinear",
                            padding_mode="border", align_corners=True)  # [1, C, N, 1, 1]
        features = self.activate(raw.view(self.n_features, -1).t())
        inside = (points.abs() <= r).all(dim=-1).to(features.dtype)
        return GeometryOutput(density=inside, features=features)

    # ----------------------------------------------------------------------------- from a density field
    @torch.no_grad()
    def init_from(self, field: Geometry, level: float) -> None:
        """Start from a finished density-field geometry: the signed distance ``sdf_scale *
        (level - density)`` at the grid vertices; the features at the feature grid's points as
        ``feature_init`` says (what the field renders there, or its own features)."""
        if field.n_features != self.n_features:
            raise ConfigError(
                f"init_from: the density field renders {field.n_features} channels but geometry.n_features="
                f"{self.n_features}; set geometry.n_features={field.n_features} (and the matching "
                f"feature_activation).")
        device = self.sdf.device
        field = field.to(device)
        density = torch.cat([field.density(chunk) for chunk in self.grid_vertices.split(65536)])
        self.sdf.copy_(self.cfg.sdf_scale * (level - density))
        self.deform.zero_()
        R = self.cfg.feature_resolution
        axis = torch.linspace(-self.cfg.bbox_radius, self.cfg.bbox_radius, R, device=device)
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        points = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
        if self.cfg.feature_init == "rendered":
            h = 2.0 * self.cfg.bbox_radius / (R - 1)  # the feature grid's spacing
            features = torch.cat([rendered_features(field, chunk, self.cfg.init_depth, h)
                                  for chunk in points.split(8192)])  # [R^3, C]
        else:
            features = torch.cat([field(chunk).features for chunk in points.split(65536)])  # [R^3, C]
        raw = self.inverse_activation(features.to(self.feature_grid.dtype))
        self.feature_grid.copy_(raw.t().reshape(1, self.n_features, R, R, R))
