"""Mesh export (``mode=export``): marching cubes on the geometry's density, coloured vertices.

The density is sampled on a regular lattice over the geometry's box, so any Geometry (voxel grid,
hash grid, a plugin's) exports the same way. Vertex colours are the geometry's features at the
vertices: RGB directly, latents through the prior's VAE (each vertex's latent is decoded as a
small constant latent image and its pixels averaged, since the VAE is convolutional and has no
per-pixel decode).

scikit-image (marching cubes) and trimesh (writing .glb / .obj / .ply) are imported only here.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

log = logging.getLogger(__name__)

FORMATS = ("glb", "obj", "ply")
# "auto" threshold: the density level whose iso-surface has the silhouettes of the rendered object.
# A score-distilled object is a soft blob: its density falls off over several voxels, and its peak
# varies from run to run, so no fixed level (nor a fixed fraction of the peak) lands on the surface
# the renders show. What the renders (and the shapes world's IoU) define as the object is where
# opacity passes 0.5. So, seen from AUTO_VIEWS cameras around the box, each candidate level's
# silhouette (rays whose largest density along them exceeds the level) is compared with the
# opacity > 0.5 mask of the same density field, and the level of best IoU is taken.
AUTO_VIEWS = 8
AUTO_RESOLUTION = 64
AUTO_CANDIDATES = 96
# export.max_faces: below this, the coarsest grids a cap would need no longer hold a recognisable shape
MIN_FACE_CAP = 500
# export.closing: a closing by k edges also fills every gap narrower than about 2k cells, so beyond a
# few it would fill real features (the torus's hole is 10 cells across on the shapes presets' mesh grid)
MAX_CLOSING = 3


@dataclass(kw_only=True)
class MeshExportConfig:
    resolution: int  # lattice points per axis
    threshold: float | str  # density level, or "auto"
    keep_largest: bool  # drop floaters: keep the connected piece with the most faces
    formats: list  # any of FORMATS
    max_faces: int = 0  # extract on a coarser grid until the mesh has at most this many faces (0: no cap)
    closing: int = 0  # mesh geometries: close the inside by this many grid edges first (0: the surface as trained)


def check_export_config(cfg) -> MeshExportConfig:
    c = MeshExportConfig(resolution=cfg.resolution, threshold=cfg.threshold, keep_largest=bool(cfg.keep_largest),
                         formats=list(cfg.formats), max_faces=cfg.get("max_faces", 0),
                         closing=cfg.get("closing", 0))
    if c.resolution < 8:
        raise ConfigError(f"export.resolution={c.resolution} is too small: use at least 8 (default 128).")
    if not (c.threshold == "auto" or (isinstance(c.threshold, (int, float)) and c.threshold > 0)):
        raise ConfigError(f"export.threshold={c.threshold!r} must be a positive density or 'auto'.")
    if not (isinstance(c.max_faces, int) and not isinstance(c.max_faces, bool)
            and (c.max_faces == 0 or c.max_faces >= MIN_FACE_CAP)):
        raise ConfigError(f"export.max_faces={c.max_faces!r} must be 0 (no cap) or a whole number of at least "
                          f"{MIN_FACE_CAP} (default 50000): the export extracts the surface on a coarser grid until "
                          "it has at most that many faces.")
    if not (isinstance(c.closing, int) and not isinstance(c.closing, bool) and 0 <= c.closing <= MAX_CLOSING):
        raise ConfigError(f"export.closing={c.closing!r} must be a whole number from 0 to {MAX_CLOSING} (default 1): "
                          "the grid edges by which a mesh geometry's inside is closed before its surface is "
                          "extracted, so that cracks the renders never show do not split it; 0 exports the "
                          "surface as trained.")
    bad = [f for f in c.formats if f not in FORMATS]
    if bad or not c.formats:
        raise ConfigError(f"export.formats={c.formats} must be a non-empty list of {', '.join(FORMATS)}.")
    return c


@torch.no_grad()
def sample_density(geometry, resolution: int, chunk: int = 262_144) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Density on a resolution^3 lattice over ``geometry.bbox``.

    Returns (density [R, R, R] indexed [x, y, z], lo [3], spacing [3]) as numpy arrays.
    """
    lo, hi = geometry.bbox[0].float(), geometry.bbox[1].float()
    axes = [torch.linspace(float(lo[i]), float(hi[i]), resolution, device=lo.device) for i in range(3)]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    points = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    density = torch.cat([geometry.density(p).float() for p in points.split(chunk)])
    spacing = ((hi - lo) / (resolution - 1)).cpu().numpy()
    return density.reshape(resolution, resolution, resolution).cpu().numpy(), lo.cpu().numpy(), spacing


def silhouette_cameras(lo: np.ndarray, hi: np.ndarray, n: int = AUTO_VIEWS, resolution: int = AUTO_RESOLUTION):
    """n cameras around the box's centre at elevations alternating 15 / 45 deg, framing the whole box."""
    from ..data.cameras import make_cameras

    radius = float(np.linalg.norm(hi - lo) / 2)  # the box's circumscribed sphere
    fovy = 40.0
    distance = 1.1 * radius / np.sin(np.radians(fovy / 2))
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    elevation = torch.tensor([15.0 if k % 2 == 0 else 45.0 for k in range(n)])
    cams = make_cameras(elevation, azimuth, distance, fovy, resolution)
    return cams, torch.as_tensor((lo + hi) / 2, dtype=torch.float32)


@torch.no_grad()
def ray_profiles(density: np.ndarray, lo: np.ndarray, spacing: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel of the silhouette cameras: the largest density along the ray and the opacity
    1 - exp(-integral of density), both [V, H, W], from the lattice density (trilinear)."""
    hi = lo + spacing * (np.array(density.shape) - 1)
    cams, centre = silhouette_cameras(lo, hi)
    rays_o, rays_d = cams.rays()  # [V, H, W, 3]
    rays_o = rays_o + centre
    radius = float(np.linalg.norm(hi - lo) / 2)
    dist = (rays_o - centre).norm(dim=-1, keepdim=True)  # [V, H, W, 1]
    step = float(spacing.min()) / 2
    n_samples = int(np.ceil(2 * radius / step)) + 1
    t = (dist - radius) + step * torch.arange(n_samples, dtype=torch.float32)  # [V, H, W, S]
    points = rays_o[..., None, :] + t[..., None] * rays_d[..., None, :]  # [V, H, W, S, 3]
    lo_t, hi_t = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    grid = (points - lo_t) / (hi_t - lo_t) * 2 - 1  # [-1, 1] over the lattice
    volume = torch.as_tensor(density, dtype=torch.float32).permute(2, 1, 0)[None, None]  # [1, 1, z, y, x]
    V, H, W, S, _ = points.shape
    values = torch.nn.functional.grid_sample(
        volume, grid.reshape(1, V * H * W, S, 1, 3), mode="bilinear", padding_mode="zeros", align_corners=True
    ).reshape(V, H, W, S)
    return values.amax(-1), 1.0 - torch.exp(-values.sum(-1) * step)


def fit_threshold(density: np.ndarray, lo: np.ndarray, spacing: np.ndarray) -> float:
    """The level whose silhouettes best match the opacity > 0.5 masks (see AUTO_VIEWS above)."""
    peak, opacity = ray_profiles(density, lo, spacing)
    target = opacity > 0.5
    if not target.any():
        raise ConfigError(
            "export.threshold=auto found nothing to export: no ray through the density reaches opacity 0.5 "
            f"(largest density {float(density.max()):.4g}). The run may be empty; pass a numeric export.threshold."
        )
    floor, top = float(np.median(density)), float(density.max())
    # log-spaced above the empty space's level: the opacity-0.5 surface of a soft blob lies far down
    # its flank (a few percent of the peak), where a linear grid of levels is too coarse
    levels = floor + (top - floor) * torch.logspace(-3, 0, AUTO_CANDIDATES + 1)[:-1]
    masks = peak[None] > levels[:, None, None, None]  # [K, V, H, W]
    inter = (masks & target).flatten(1).sum(-1).float()
    union = (masks | target).flatten(1).sum(-1).float()
    iou = inter / union.clamp_min(1.0)
    return float(levels[int(iou.argmax())])


def pick_threshold(density: np.ndarray, threshold: float | str, lo: np.ndarray, spacing: np.ndarray) -> float:
    return fit_threshold(density, lo, spacing) if threshold == "auto" else float(threshold)


@torch.no_grad()
def vertex_colours(system, vertices: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """[V, 3] world vertices -> [V, 3] RGB in [0, 1] from the geometry's features."""
    geometry = system.geometry
    device = geometry.bbox.device
    pts = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    out = []
    for p in pts.split(chunk):
        feats = geometry(p).features.float()  # [N, C]
        if geometry.feature_kind == "rgb":
            out.append(feats.clamp(0, 1))
        else:
            # A 4 x 4 constant latent image per vertex; the decoded pixels' mean is its colour.
            latents = feats[:, :, None, None].expand(-1, -1, 4, 4)
            out.append(system.prior.decode_latents(latents).float().mean(dim=(2, 3)).clamp(0, 1))
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 3), dtype=np.float32)


def surface_mesh(system, cfg: MeshExportConfig):
    """A mesh geometry's own surface (``kind = "mesh"``: the DMTet's marching tetrahedra) as a
    trimesh.Trimesh with vertex colours; None as its level (no density is cut). Above
    ``cfg.max_faces`` faces, the surface is extracted again on coarser grids (the geometry's
    ``mesh(resolution=N)``) until it fits; ``cfg.closing`` closes the inside first (``mesh(closing=k)``)."""
    import trimesh

    geometry = system.geometry
    # mesh(closing=k) is optional (since 0.2): a plugin's mesh() without it is exported as trained
    closing = {"closing": cfg.closing} if cfg.closing and accepts_keyword(geometry.mesh, "closing") else {}
    if cfg.closing and not closing:
        log.warning("export.closing=%d: %s.mesh() takes no closing argument; its surface is exported as "
                    "trained.", cfg.closing, type(geometry).__name__)

    def extract(resolution=None):
        with torch.no_grad():
            sizing = {} if resolution is None else {"resolution": resolution}
            vertices, faces = geometry.mesh(**sizing, **closing)
        return trimesh.Trimesh(vertices=vertices.cpu().numpy(), faces=faces.cpu().numpy(), process=True)

    mesh = extract()
    if not len(mesh.faces):
        raise ConfigError("The mesh geometry has no surface (its signed distance has no zero crossing): nothing "
                          "to export. Resume the run from an earlier checkpoint, or start it again.")
    own = getattr(geometry, "mesh_resolution", None)
    if cfg.max_faces and len(mesh.faces) > cfg.max_faces:
        if own is None:
            log.warning("The mesh has %d faces, more than export.max_faces=%d, and %s cannot extract its surface "
                        "on a coarser grid (no mesh_resolution): exported as it is.", len(mesh.faces),
                        cfg.max_faces, type(geometry).__name__)
        else:
            mesh = within_face_cap(extract, own, len(mesh.faces), cfg.max_faces, mesh)
    return finish_mesh(system, cfg, mesh), None


def accepts_keyword(function, name: str) -> bool:
    """Whether ``function`` can be called with the keyword argument ``name``."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def within_face_cap(extract, resolution: int, n_faces: int, max_faces: int, mesh):
    """The mesh extracted (``extract(resolution) -> trimesh``) on the finest grid coarser than
    ``resolution`` whose mesh has at most ``max_faces`` faces (``mesh``: the one at ``resolution``,
    with ``n_faces``). A smooth surface's face count goes with the square of the resolution, which
    gives the first guess; a rough one loses more of its faces, so the largest fitting resolution
    is then found by bisection (a few more extractions, each a fraction of a second)."""
    own, too_big, fits = resolution, resolution, None
    while fits is None and resolution > 2:
        guess = int(resolution * (max_faces / len(mesh.faces)) ** 0.5)
        resolution = max(2, min(guess, resolution - 1))
        mesh = extract(resolution)
        if len(mesh.faces) > max_faces:
            too_big = resolution
        else:
            fits = (resolution, mesh)
    while fits is not None and too_big - fits[0] > 1:
        middle = (too_big + fits[0]) // 2
        candidate = extract(middle)
        if len(candidate.faces) > max_faces:
            too_big = middle
        else:
            fits = (middle, candidate)
    resolution, mesh = fits if fits is not None else (resolution, mesh)
    log.info("Mesh: %d faces on the own grid (%d per axis) is above export.max_faces=%d: extracted on %d per "
             "axis instead, %d faces.", n_faces, own, max_faces, resolution, len(mesh.faces))
    return mesh


def finish_mesh(system, cfg: MeshExportConfig, mesh):
    """Keep the largest piece (where asked) and colour the vertices from the geometry's features."""
    if cfg.keep_largest and len(mesh.faces):
        pieces = mesh.split(only_watertight=False)
        if len(pieces) > 1:
            mesh = max(pieces, key=lambda m: len(m.faces))
    colours = vertex_colours(system, np.asarray(mesh.vertices))
    mesh.visual.vertex_colors = np.concatenate(
        [np.round(colours * 255).astype(np.uint8), np.full((len(colours), 1), 255, np.uint8)], axis=1
    )
    return mesh


def extract_mesh(system, cfg: MeshExportConfig):
    """The geometry's surface as a trimesh.Trimesh with vertex colours, and the density level used
    (None for a mesh geometry, whose own surface is exported)."""
    import trimesh
    from skimage.measure import marching_cubes

    if getattr(system.geometry, "kind", "field") == "mesh":
        return surface_mesh(system, cfg)
    density, lo, spacing = sample_density(system.geometry, cfg.resolution)
    level = pick_threshold(density, cfg.threshold, lo, spacing)
    if not density.min() < level < density.max():
        raise ConfigError(
            f"export.threshold={level:.4g} does not cut the density (range {density.min():.4g} to "
            f"{density.max():.4g}): no surface. Pick a level inside that range, or 'auto'."
        )

    def cubes(density, lo, spacing):
        verts, faces, _, _ = marching_cubes(density, level=level, spacing=tuple(spacing))
        # skimage orients faces for a field that increases outward; density decreases outward
        return trimesh.Trimesh(vertices=verts + lo, faces=faces[:, ::-1], process=True)

    mesh = cubes(density, lo, spacing)
    if cfg.max_faces and len(mesh.faces) > cfg.max_faces:
        # the level stays the one fitted at the full lattice: a density level means the same at any
        mesh = within_face_cap(lambda r: cubes(*sample_density(system.geometry, r)), cfg.resolution,
                               len(mesh.faces), cfg.max_faces, mesh)
    return finish_mesh(system, cfg, mesh), level


def export_mesh(system, cfg, run_dir: Path) -> dict:
    """Write mesh/mesh.{glb,obj,ply} into ``run_dir``; returns {"level", "n_vertices", "n_faces", "bounds", paths}."""
    c = check_export_config(cfg)
    mesh, level = extract_mesh(system, c)
    out_dir = Path(run_dir) / "mesh"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in c.formats:
        path = out_dir / f"mesh.{fmt}"
        tmp = path.with_name(path.name + ".tmp")
        mesh.export(str(tmp), file_type=fmt)
        tmp.replace(path)  # atomic: a reader never sees half a mesh
        paths[fmt] = str(path)
    info = {
        "level": level,
        "n_vertices": int(len(mesh.vertices)),
        "n_faces": int(len(mesh.faces)),
        "bounds": np.asarray(mesh.bounds).round(4).tolist(),
        "paths": paths,
    }
    log.info("Mesh: %d vertices, %d faces, %s, bounds %s -> %s", info["n_vertices"], info["n_faces"],
             "the geometry's own surface" if level is None else f"density level {level:.4g}", info["bounds"], out_dir)
    return info
