"""Mesh export: marching cubes on a voxel grid holding a known shapes-world object."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
from omegaconf import OmegaConf

from framework.builders import build_named
from framework.errors import ConfigError
from framework.outputs.mesh import export_mesh

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
    # the iso-level (half the inside density) crosses half-way along the voxel edge at the boundary
    np.testing.assert_allclose(np.array(info["bounds"]), [[-CUBE_HALF] * 3, [CUBE_HALF] * 3], atol=voxel)
    assert info["level"] == pytest.approx(10.0, rel=0.01)
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
])
def test_bad_export_settings_fail_clearly(over, words, tmp_path):
    system = SimpleNamespace(geometry=cube_grid(3, "sigmoid", torch.zeros(3)), prior=None)
    with pytest.raises(ConfigError) as err:
        export_mesh(system, export_cfg(**over), tmp_path)
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "mesh").exists() or not any((tmp_path / "mesh").iterdir())
