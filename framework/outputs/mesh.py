"""Mesh export (``mode=export``): marching cubes on the geometry's density, coloured vertices.

The density is sampled on a regular lattice over the geometry's box, so any Geometry (voxel grid,
hash grid, a plugin's) exports the same way. Vertex colours are the geometry's features at the
vertices: RGB directly, latents through the prior's VAE (each vertex's latent is decoded as a
small constant latent image and its pixels averaged, since the VAE is convolutional and has no
per-pixel decode).

scikit-image (marching cubes) and trimesh (writing .glb / .obj / .ply) are imported only here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from framework.errors import ConfigError

log = logging.getLogger(__name__)

FORMATS = ("glb", "obj", "ply")
# "auto" threshold: half-way between the median density (the empty space, most of the box) and
# the 99.9th percentile (the object's near-peak). A score-distilled object is a soft blob whose
# peak density varies from run to run, so an absolute level that suits one run is empty or a
# filled box in another; the half-way level lands on the object's boundary.
AUTO_FRACTION = 0.5
AUTO_QUANTILE = 0.999


@dataclass
class MeshExportConfig:
    resolution: int  # lattice points per axis
    threshold: float | str  # density level, or "auto"
    keep_largest: bool  # drop floaters: keep the connected piece with the most faces
    formats: list  # any of FORMATS


def check_export_config(cfg) -> MeshExportConfig:
    c = MeshExportConfig(cfg.resolution, cfg.threshold, bool(cfg.keep_largest), list(cfg.formats))
    if c.resolution < 8:
        raise ConfigError(f"export.resolution={c.resolution} is too small: use at least 8 (default 128).")
    if not (c.threshold == "auto" or (isinstance(c.threshold, (int, float)) and c.threshold > 0)):
        raise ConfigError(f"export.threshold={c.threshold!r} must be a positive density or 'auto'.")
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


def pick_threshold(density: np.ndarray, threshold: float | str) -> float:
    if threshold != "auto":
        return float(threshold)
    floor, peak = float(np.median(density)), float(np.quantile(density, AUTO_QUANTILE))
    return floor + AUTO_FRACTION * (peak - floor)


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


def extract_mesh(system, cfg: MeshExportConfig):
    """The geometry's iso-surface as a trimesh.Trimesh with vertex colours, and the level used."""
    import trimesh
    from skimage.measure import marching_cubes

    density, lo, spacing = sample_density(system.geometry, cfg.resolution)
    level = pick_threshold(density, cfg.threshold)
    if not density.min() < level < density.max():
        raise ConfigError(
            f"export.threshold={level:.4g} does not cut the density (range {density.min():.4g} to "
            f"{density.max():.4g}): no surface. Pick a level inside that range, or 'auto'."
        )
    verts, faces, _, _ = marching_cubes(density, level=level, spacing=tuple(spacing))
    verts = verts + lo
    # skimage orients faces for a field that increases outward; density decreases outward
    mesh = trimesh.Trimesh(vertices=verts, faces=faces[:, ::-1], process=True)
    if cfg.keep_largest and len(mesh.faces):
        pieces = mesh.split(only_watertight=False)
        if len(pieces) > 1:
            mesh = max(pieces, key=lambda m: len(m.faces))
    colours = vertex_colours(system, np.asarray(mesh.vertices))
    mesh.visual.vertex_colors = np.concatenate(
        [np.round(colours * 255).astype(np.uint8), np.full((len(colours), 1), 255, np.uint8)], axis=1
    )
    return mesh, level


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
    log.info("Mesh: %d vertices, %d faces, density level %.4g, bounds %s -> %s",
             info["n_vertices"], info["n_faces"], level, info["bounds"], out_dir)
    return info
