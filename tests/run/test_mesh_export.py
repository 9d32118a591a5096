"""Mesh export: marching cubes on voxel grids holding a known object, a soft blob with an analytic
silhouette, and the geometry of a real shapes-world run (tests/data)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
from omegaconf import OmegaConf

from scorelift.builders import build_named
from scorelift.errors import ConfigError
from scorelift.outputs.mesh import export_mesh, fit_threshold, sample_density

DATA = Path(__file__).resolve().parents[1] / "data"

CUBE_HALF = 0.35  # the contract's cube


def cube_grid(n_features: int, activation: str, colour_logit: torch.Tensor):
    """A 41^3 voxel grid over [-0.6, 0.6]^3 whose density is 20 inside the cube and ~0 outside."""
    geom = build_named("geometry", "voxel-grid", dict(
        resolution=41, bbox_radius=0.6, n_features=n_features, feature_activation=activation, feature_init_std=0.0,
    ))
    axis = torch.linspace(-0.6, 0.6, 41)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    inside = (x.abs() <= CUBE_HALF) & (y.abs() <= CUBE_HALF) & (z.abs() <= CUBE_HALF)
    with torch.no_grad():
        # softplus(g - 1) = 20 inside (g = 21), ~0.007 outside (g = -4)
        geom.density_grid.copy_(torch.where(inside, 21.0, -4.0)[None, None])
        geom.feature_grid.copy_(colour_logit.view(1, -1, 1, 1, 1).expand_as(geom.feature_grid))
    return geom


def export_cfg(**over):
    return OmegaConf.create(dict(dict(resolution=64, threshold="auto", keep_largest=True, formats=["glb", "obj", "ply"]), **over))


def test_cube_mesh_has_the_cube_bounds_and_colour(tmp_path):
    red = torch.tensor([0.86, 0.16, 0.16])
    system = SimpleNamespace(geometry=cube_grid(3, "sigmoid", torch.logit(red)), prior=None)
    info = export_mesh(system, export_cfg(), tmp_path)
    voxel = 1.2 / 40
    # a hard-edged object: any level inside the jump from ~0 to 20 has the cube's silhouette
    np.testing.assert_allclose(np.array(info["bounds"]), [[-CUBE_HALF] * 3, [CUBE_HALF] * 3], atol=voxel)
    assert 1.0 < info["level"] < 19.0
    for fmt in ("glb", "obj", "ply"):
        assert (tmp_path / "mesh" / f"mesh.{fmt}").stat().st_size > 1000
    mesh = trimesh.load(tmp_path / "mesh" / "mesh.ply")
    assert mesh.is_watertight and mesh.volume > 0  # faces point outward
    np.testing.assert_allclose(mesh.volume, (2 * CUBE_HALF) ** 3, rtol=0.15)
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
    np.testing.assert_allclose(colours.mean(0), red.numpy(), atol=1 / 255 + 1e-6)


def test_floaters_are_dropped_and_a_fixed_level_is_used(tmp_path):
    system = SimpleNamespace(geometry=cube_grid(3, "sigmoid", torch.zeros(3)), prior=None)
    with torch.no_grad():
        system.geometry.density_grid[0, 0, 2:5, 2:5, 2:5] = 21.0  # a small floater in a corner
    kept = export_mesh(system, export_cfg(threshold=5.0), tmp_path / "a")
    both = export_mesh(system, export_cfg(threshold=5.0, keep_largest=False), tmp_path / "b")
    assert kept["level"] == 5.0
    assert kept["bounds"][0][0] > -0.4 and both["bounds"][0][0] < -0.5


def test_latent_vertex_colours_go_through_the_vae(tiny_prior, tmp_path):
    latent = torch.tensor([0.5, -0.3, 0.2, 0.1])
    system = SimpleNamespace(geometry=cube_grid(4, "none", latent), prior=tiny_prior)
    export_mesh(system, export_cfg(formats=["ply"]), tmp_path)
    colours = np.asarray(trimesh.load(tmp_path / "mesh" / "mesh.ply").visual.vertex_colors)[:, :3] / 255.0
    expected = tiny_prior.decode_latents(latent.view(1, 4, 1, 1).expand(1, 4, 4, 4)).mean(dim=(2, 3))[0]
    np.testing.assert_allclose(colours.mean(0), expected.clamp(0, 1).numpy(), atol=1 / 255 + 1e-4)


@pytest.mark.parametrize("over, words", [
    (dict(threshold=100.0), ["threshold=100", "no surface"]),
    (dict(threshold=-1.0), ["threshold=-1", "positive"]),
    (dict(formats=["stl"]), ["stl", "glb, obj, ply"]),
    (dict(resolution=4), ["resolution=4"]),
    (dict(max_faces=-1), ["export.max_faces=-1", "0 (no cap)", "at least 500"]),
    (dict(max_faces=100), ["export.max_faces=100", "at least 500"]),
    (dict(max_faces=1.5), ["export.max_faces=1.5", "whole number"]),
    (dict(closing=-1), ["export.closing=-1", "from 0 to 3", "as trained"]),
    (dict(closing=4), ["export.closing=4", "from 0 to 3"]),
    (dict(closing=True), ["export.closing=True", "whole number"]),
])
def test_bad_export_settings_fail_clearly(over, words, tmp_path):
    system = SimpleNamespace(geometry=cube_grid(3, "sigmoid", torch.zeros(3)), prior=None)
    with pytest.raises(ConfigError) as err:
        export_mesh(system, export_cfg(**over), tmp_path)
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "mesh").exists() or not any((tmp_path / "mesh").iterdir())


def blob_grid(peak: float, sigma: float, resolution: int = 61):
    """A voxel grid over [-0.6, 0.6]^3 whose density is the Gaussian peak * exp(-r^2 / (2 sigma^2))."""
    geom = build_named("geometry", "voxel-grid", dict(resolution=resolution, bbox_radius=0.6, n_features=3,
                                                      feature_activation="sigmoid", feature_init_std=0.0))
    axis = torch.linspace(-0.6, 0.6, resolution, dtype=torch.float64)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    density = peak * torch.exp(-(x**2 + y**2 + z**2) / (2 * sigma**2))
    raw = density + torch.log(-torch.expm1(-density.clamp_min(1e-30))) + 1.0  # softplus^-1, minus the shift -1
    with torch.no_grad():
        geom.density_grid.copy_(raw.float()[None, None])
    assert float(geom.density(torch.zeros(1, 3))[0]) == pytest.approx(peak, rel=1e-4)
    return geom


def test_auto_level_puts_a_soft_blob_surface_on_its_opacity_silhouette(tmp_path):
    """A ray at distance b from the centre of a Gaussian blob (peak A, width s) integrates
    A s sqrt(2 pi) exp(-b^2 / 2 s^2) of density; opacity passes 0.5 where that is ln 2, at
    b* = s sqrt(2 ln(A s sqrt(2 pi) / ln 2)), where the largest density along the ray is
    ln 2 / (s sqrt(2 pi)). The iso-surface at that level is the sphere of radius b*. (Half the
    peak, the old automatic level, gives s sqrt(2 ln 2): less than half of it.)"""
    A, s = 50.0, 0.15
    geom = blob_grid(A, s)
    b_star = s * math.sqrt(2 * math.log(A * s * math.sqrt(2 * math.pi) / math.log(2)))
    level_star = math.log(2) / (s * math.sqrt(2 * math.pi))
    density, lo, spacing = sample_density(geom, 97)
    assert fit_threshold(density, lo, spacing) == pytest.approx(level_star, rel=0.15)
    info = export_mesh(SimpleNamespace(geometry=geom, prior=None), export_cfg(resolution=97), tmp_path)
    np.testing.assert_allclose(np.array(info["bounds"]), [[-b_star] * 3, [b_star] * 3], atol=0.02)  # b* = 0.385


def test_mesh_of_a_trained_shapes_world_run_has_the_object_bounds(tmp_path):
    """The geometry of a real 1,000-step run of the main job on "a green sphere" (IoU 0.854):
    its mesh's box is the true sphere's (radius 0.45, the contract) within 0.06."""
    saved = torch.load(DATA / "green_sphere_sjc_geometry.pt", weights_only=False)
    geom = build_named("geometry", "voxel-grid", {k: v for k, v in saved["geometry_config"].items() if k != "type"})
    geom.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()})
    info = export_mesh(SimpleNamespace(geometry=geom, prior=None), export_cfg(resolution=96), tmp_path)
    np.testing.assert_allclose(np.array(info["bounds"]), [[-0.45] * 3, [0.45] * 3], atol=0.06)
    mesh = trimesh.load(tmp_path / "mesh" / "mesh.ply")
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3].mean(0) / 255.0
    assert colours[1] > colours[0] + 0.1 and colours[1] > colours[2] + 0.1, colours  # green (shading baked in: dark)


def test_a_mesh_above_the_face_cap_is_extracted_on_a_coarser_lattice(tmp_path):
    """The cube at a 64^3 lattice has about 2 faces per lattice square of its surface (~18k);
    capped at 3,000 the export samples the density on a coarser lattice at the same level: the
    mesh fits, stays closed and in one piece, and keeps the cube's box within a coarse voxel."""
    system = SimpleNamespace(geometry=cube_grid(3, "sigmoid", torch.zeros(3)), prior=None)
    full = export_mesh(system, export_cfg(formats=["ply"]), tmp_path / "full")
    capped = export_mesh(system, export_cfg(formats=["ply"], max_faces=3000), tmp_path / "capped")
    assert full["n_faces"] > 3000 >= capped["n_faces"] > 1000  # not coarser than it needs
    assert capped["level"] == full["level"]
    mesh = trimesh.load(tmp_path / "capped" / "mesh" / "mesh.ply")
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    coarse_voxel = 1.2 / 20
    np.testing.assert_allclose(np.array(capped["bounds"]), [[-CUBE_HALF] * 3, [CUBE_HALF] * 3], atol=coarse_voxel)
