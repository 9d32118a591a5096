"""The true cube that tools/start_from_truth.py writes into a voxel grid: where it is solid and
which colour each face gets, against the world's definition worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tools.start_from_truth import cube_grid


def test_the_cube_is_solid_inside_its_half_extent_and_clear_outside():
    # 13 points over [-0.6, 0.6]: spacing 0.1, so x = -0.3 .. 0.3 (7 points) are inside |x| <= 0.35.
    density, features = cube_grid("red", resolution=13, radius=0.6, inside=8.0, outside=-4.0)
    assert density.shape == (1, 1, 13, 13, 13) and features.shape == (1, 3, 13, 13, 13)
    solid = density[0, 0] == 8.0
    assert int(solid.sum()) == 7**3
    assert bool(solid[6, 6, 6]) and not bool(solid[6, 6, 10])  # centre; x = 0.4 is outside
    assert float(density[0, 0, 0, 0, 0]) == -4.0


def test_each_voxel_takes_the_world_shade_of_its_nearest_face():
    _, features = cube_grid("red", resolution=13, radius=0.6, inside=8.0, outside=-4.0)
    rgb = torch.sigmoid(features[0])  # [3, z, y, x]
    norm = math.sqrt(2**2 + 1**2 + 3**2)  # the world's light direction is (2, -1, 3) normalised
    red = (0.86, 0.16, 0.16)
    expected = {  # (z, y, x) index of a point just inside a face -> its shade 0.3 + 0.7 max(0, n . l)
        (9, 6, 6): 0.3 + 0.7 * 3 / norm,  # top face, n = +z
        (6, 6, 9): 0.3 + 0.7 * 2 / norm,  # +x face
        (6, 3, 6): 0.3 + 0.7 * 1 / norm,  # -y face
        (6, 9, 6): 0.3,  # +y face, turned away from the light
        (3, 6, 6): 0.3,  # bottom face
    }
    for (z, y, x), shade in expected.items():
        assert rgb[:, z, y, x].tolist() == pytest.approx([c * shade for c in red], abs=1e-5), (z, y, x)
