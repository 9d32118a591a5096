"""Voxel-grid geometry: trilinear sampling, density parameterisation, box, normals, config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scorelift.builders import build_named
from scorelift.errors import ConfigError


def make_grid(**over):
    base = dict(resolution=9, bbox_radius=1.0, n_features=4, feature_activation="none")
    base.update(over)
    return build_named("geometry", "voxel-grid", base)


def grid_points(geom) -> torch.Tensor:
    """World positions of the grid points, indexed like the stored grids: [R, R, R, 3] at [z, y, x]."""
    R, r = geom.cfg.resolution, geom.cfg.bbox_radius
    axis = torch.linspace(-r, r, R)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def random_inside(n: int, r: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 3), generator=g) * 2 - 1) * r


LINEAR = [  # four different linear functions of (x, y, z): an axis swap changes the values
    lambda p: p[..., 0],
    lambda p: p[..., 1],
    lambda p: p[..., 2],
    lambda p: 2 * p[..., 0] - p[..., 1] + 3 * p[..., 2] + 1,
]


def test_defaults_are_sjc():
    geom = build_named("geometry", "voxel-grid")
    c = geom.cfg
    assert (c.resolution, c.bbox_radius, c.n_features, c.feature_activation) == (100, 1.0, 4, "none")
    assert geom.feature_kind == "latent" and geom.n_features == 4
    assert geom.density_grid.shape == (1, 1, 100, 100, 100)
    assert geom.feature_grid.shape == (1, 4, 100, 100, 100)
    assert geom.d_scale.item() == 0.0
    assert torch.equal(geom.bbox, torch.tensor([[-1.0] * 3, [1.0] * 3]))


def test_trilinear_sampling_reproduces_linear_functions():
    geom = make_grid(resolution=7, bbox_radius=1.5)
    pos = grid_points(geom)
    with torch.no_grad():
        for c, f in enumerate(LINEAR):
            geom.feature_grid[0, c] = f(pos)
    pts = random_inside(500, 1.5)
    feats = geom(pts).features
    expected = torch.stack([f(pts) for f in LINEAR], dim=-1)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    # Box corners and face points hit grid values exactly (align_corners=True).
    corners = torch.tensor([[-1.5, -1.5, -1.5], [1.5, -1.5, 1.5], [1.5, 1.5, 1.5], [0.0, -1.5, 0.5]])
    expected = torch.stack([f(corners) for f in LINEAR], dim=-1)
    torch.testing.assert_close(geom(corners).features, expected, atol=1e-5, rtol=1e-5)


def test_density_parameterisation():
    geom = make_grid(density_shift=-1.0)
    pos = grid_points(geom)
    with torch.no_grad():
        geom.density_grid[0, 0] = 0.7 * pos[..., 0] - 0.4 * pos[..., 2] + 0.2
        geom.d_scale.fill_(0.3)
    pts = random_inside(200, 1.0, seed=1)
    raw = 0.7 * pts[:, 0] - 0.4 * pts[:, 2] + 0.2
    expected = F.softplus(raw * math.exp(0.3) - 1.0)
    torch.testing.assert_close(geom(pts).density, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(geom.density(pts), expected, atol=1e-6, rtol=1e-5)


def test_initial_density_value():
    # density_init sets the starting density: the authors' 0 gives softplus(-1); -5 is nearly clear.
    pts = random_inside(10, 1.0)
    for init in (0.0, -5.0):
        geom = make_grid(density_init=init)
        torch.testing.assert_close(geom.density(pts), torch.full((10,), F.softplus(torch.tensor(init - 1.0)).item()))


def test_zero_density_outside_the_box():
    geom = make_grid(bbox_radius=0.5, density_init=5.0)
    inside = torch.tensor([[0.49, 0.0, 0.0], [-0.5, 0.5, 0.2], [0.0, 0.0, -0.4999]])
    outside = torch.tensor([[0.51, 0.0, 0.0], [0.0, -0.7, 0.0], [0.0, 0.0, 3.0], [0.6, 0.6, 0.6]])
    assert (geom.density(inside) > 1.0).all()
    assert torch.equal(geom.density(outside), torch.zeros(4))
    assert torch.equal(geom(outside).density, torch.zeros(4))


def test_feature_activation_and_kind():
    rgb = make_grid(n_features=3, feature_activation="sigmoid", feature_init_std=2.0)
    assert rgb.feature_kind == "rgb"
    f = rgb(random_inside(100, 1.0)).features
    assert f.shape == (100, 3) and (f > 0).all() and (f < 1).all()
    latent = make_grid(feature_init_std=2.0)
    assert latent(random_inside(100, 1.0)).features.min() < 0  # no activation


def test_finite_difference_normals_point_outward():
    geom = make_grid(resolution=33, density_shift=0.0)
    pos = grid_points(geom)
    with torch.no_grad():  # density falls off away from the centre: a fuzzy ball
        geom.density_grid[0, 0] = 4.0 * (0.6 - pos.norm(dim=-1))
    dirs = F.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(3)), dim=-1)
    radii = torch.linspace(0.2, 0.7, 64)[:, None]
    normals = geom.normals(dirs * radii)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(64))
    cos = (normals * dirs).sum(dim=-1)
    assert cos.min() > 0.99, cos.min()


def test_normals_are_zero_where_density_is_flat():
    geom = make_grid(density_init=1.0)
    n = geom.normals(torch.tensor([[0.0, 0.1, 0.2]]))
    assert torch.equal(n, torch.zeros(1, 3))


def test_parameters_and_seeded_init():
    geom = make_grid()
    assert {name for name, _ in geom.named_parameters()} == {"density_grid", "feature_grid", "d_scale"}
    again = make_grid()
    assert torch.equal(geom.feature_grid, again.feature_grid)
    other = make_grid(init_seed=1)
    assert not torch.equal(geom.feature_grid, other.feature_grid)
    assert torch.equal(make_grid(feature_init_std=0.0).feature_grid, torch.zeros(1, 4, 9, 9, 9))


def test_gradients_reach_grid_and_d_scale():
    geom = make_grid(density_init=0.5)  # d_scale multiplies the raw value: 0 would give it no gradient
    out = geom(random_inside(50, 1.0))
    (out.density.sum() + out.features.sum()).backward()
    assert geom.density_grid.grad.abs().sum() > 0
    assert geom.feature_grid.grad.abs().sum() > 0
    assert geom.d_scale.grad is not None and geom.d_scale.grad.abs() > 0


def test_frozen_density_scale_gets_no_gradient_and_no_optimizer_slot():
    from scorelift.systems.optim import build_optimizer
    from omegaconf import OmegaConf

    geom = make_grid(density_init=0.5, learn_density_scale=False)
    out = geom(random_inside(50, 1.0))
    out.density.sum().backward()
    assert geom.d_scale.grad is None and geom.density_grid.grad.abs().sum() > 0
    opt = build_optimizer(OmegaConf.create({"name": "adam", "args": {}, "lr": {"geometry": 0.1}}), {"geometry": geom.parameters()})
    optimised = {id(p) for group in opt.param_groups for p in group["params"]}
    assert id(geom.d_scale) not in optimised and id(geom.density_grid) in optimised


@pytest.mark.parametrize(
    "over, words",
    [
        (dict(feature_activation="relu"), ["relu", "none", "sigmoid"]),
        (dict(feature_activation="sigmoid", n_features=4), ["n_features=4", "n_features=3"]),
        (dict(resolution=1), ["resolution=1"]),
        (dict(bbox_radius=0.0), ["bbox_radius=0.0"]),
    ],
)
def test_config_errors_name_the_bad_value(over, words):
    with pytest.raises(ConfigError) as err:
        make_grid(**over)
    for w in words:
        assert w in str(err.value)


def test_gather_lookup_equals_grid_sample_value_and_gradient():
    """trilinear_gather (deterministic runs) against F.grid_sample(align_corners=True, border) in
    float64: inside, on the faces, beyond them (border clamps) and on a non-cubic grid."""
    from scorelift.plugins.geometry.voxel_grid import trilinear_gather

    gen = torch.Generator().manual_seed(3)
    grid = torch.randn(1, 3, 5, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    coords = torch.cat([
        torch.rand(300, 3, generator=gen, dtype=torch.float64) * 2 - 1,
        torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.0, -0.3, 0.2], [1.3, -1.2, 0.5]], dtype=torch.float64),
    ])
    reference = F.grid_sample(grid, coords.reshape(1, -1, 1, 1, 3), mode="bilinear", padding_mode="border",
                              align_corners=True).reshape(3, -1).t()
    ours = trilinear_gather(grid, coords)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    weights = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((reference * weights).sum(), grid)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), grid)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)


def test_deterministic_mode_uses_the_gather_lookup(deterministic_algorithms, monkeypatch):
    """Under PyTorch's deterministic algorithms the grid never calls grid_sample (whose CUDA
    backward uses atomics), and renders the same field."""
    geom = make_grid(resolution=7, feature_init_std=0.3)
    pts = random_inside(200, 1.0)
    torch.use_deterministic_algorithms(False)
    expected = geom(pts)
    torch.use_deterministic_algorithms(True)
    monkeypatch.setattr(F, "grid_sample", lambda *a, **k: pytest.fail("grid_sample called in deterministic mode"))
    out = geom(pts)
    torch.testing.assert_close(out.features, expected.features)
    torch.testing.assert_close(out.density, expected.density)


# ---------------------------------------------------------------- memory estimate
def real_parameter_bytes(geom) -> int:
    return sum(p.numel() * p.element_size() for p in geom.parameters())


@pytest.mark.parametrize("resolution, n_features, learn_density_scale", [(2, 1, True), (9, 4, True), (12, 3, False)])
def test_parameter_bytes_counts_what_init_allocates(resolution, n_features, learn_density_scale):
    """The start-up memory check's estimate is exactly the built grid's parameters (a frozen
    d_scale is a parameter too); the only buffer is the 6-number box."""
    over = dict(resolution=resolution, n_features=n_features, learn_density_scale=learn_density_scale)
    if n_features == 3:
        over["feature_activation"] = "sigmoid"
    geom = make_grid(**over)
    assert type(geom).parameter_bytes(geom.cfg) == real_parameter_bytes(geom)
    assert sum(b.numel() for b in geom.buffers()) == 6


def test_parameter_bytes_by_hand():
    """((1 + C) R^3 + 1) float32 numbers: density grid, feature grid, d_scale."""
    from scorelift.plugins.geometry.voxel_grid import VoxelGrid, VoxelGridConfig

    assert VoxelGrid.parameter_bytes(VoxelGridConfig(resolution=10, n_features=4)) == 4 * (5 * 1000 + 1) == 20004
    # the bad-input case: 100000 points per axis, 3 features: 4e15 numbers, 16 PB (14.2 PiB)
    assert VoxelGrid.parameter_bytes(VoxelGridConfig(resolution=100_000, n_features=3)) == 4 * (4 * 10**15 + 1)
