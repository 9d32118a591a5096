"""hash-grid geometry: the encoding against trilinear interpolation and the hash formula, the
blob start, progressive levels, gradients and config errors (pure PyTorch, CPU, small sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scorelift.builders import build_named
from scorelift.errors import ConfigError
from scorelift.plugins.geometry.hash_grid import PRIMES, level_resolutions

SMALL = dict(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0, mlp_width=16)


def make(**over):
    return build_named("geometry", "hash-grid", {**SMALL, **over})


def test_level_resolutions_follow_the_growth_factor():
    assert level_resolutions(16, 1.447269237440378, 16)[-1] == 4095  # floor(16 * b^15), b^15 = 256 - eps
    assert level_resolutions(4, 2.0, 4) == [4, 8, 16, 32]


def test_dense_level_is_trilinear_interpolation_of_its_table():
    geom = make()
    enc = geom.encoding
    with torch.no_grad():
        for table in enc.tables:
            table.normal_()
    level, res = 1, enc.resolutions[1]  # 9^3 = 729 corners <= 4096: stored densely
    n = res + 1
    assert enc.tables[level].shape[0] == n**3
    pts = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    ours = enc(pts)[:, 2 * level:2 * level + 2]
    grid = enc.tables[level].detach().reshape(n, n, n, 2).permute(3, 0, 1, 2)[None]  # rows x + n y + n^2 z -> [1, F, z, y, x]
    ref = F.grid_sample(grid, (pts * 2 - 1).reshape(1, -1, 1, 1, 3), mode="bilinear", align_corners=True)
    torch.testing.assert_close(ours, ref.reshape(2, -1).t(), rtol=1e-5, atol=1e-5)


def test_fine_level_uses_the_spatial_hash():
    enc = make().encoding
    level = 3  # 33^3 corners > 4096: hashed
    corner = torch.tensor([[[5, 17, 30]]])
    expected = (5 * PRIMES[0]) ^ (17 * PRIMES[1]) ^ (30 * PRIMES[2])
    assert enc.corner_index(corner, level).item() == expected % 4096
    assert enc.tables[level].shape[0] == 4096


def test_blob_start_and_outward_normals():
    geom = make(bbox_radius=1.0)
    centre, far = geom.density(torch.zeros(1, 3)), geom.density(torch.tensor([[0.9, 0.0, 0.0]]))
    assert centre.item() == pytest.approx(10.0, abs=0.5) and far.item() < 0.1  # softplus(10 (1 - |x| / 0.5) + ~0)
    assert geom.density(torch.tensor([[1.2, 0.0, 0.0]])).item() == 0.0  # outside the box
    pts = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    pts = 0.3 * pts / pts.norm(dim=-1, keepdim=True)
    normals = geom.normals(pts)
    cos = (normals * pts / 0.3).sum(-1)
    assert cos.min().item() > 0.99


def test_progressive_levels_mask_the_fine_levels():
    geom = make(start_levels=2, update_steps=100)
    with torch.no_grad():
        for table in geom.encoding.tables:
            table.fill_(1.0)
    pts = torch.rand(10, 3)
    assert geom.encoding(pts)[:, 4:].abs().max() == 0 and geom.encoding(pts)[:, :4].abs().min() > 0.99
    geom.update_step(150, 1000)
    assert geom.encoding(pts)[:, 4:6].abs().min() > 0.99 and geom.encoding(pts)[:, 6:].abs().max() == 0
    geom.update_step(1000, 1000)
    assert geom.encoding(pts).abs().min() > 0.99


def test_gradients_reach_tables_and_heads_and_init_is_seeded():
    geom = make()
    out = geom(torch.rand(200, 3) * 1.6 - 0.8)
    assert out.density.shape == (200,) and out.features.shape == (200, 3)
    assert ((out.features >= 0) & (out.features <= 1)).all()
    (out.density.sum() + out.features.sum()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in geom.encoding.tables)
    assert all(p.grad is not None for p in geom.density_head.parameters())
    again, other = make(), make(init_seed=1)
    assert torch.equal(geom.encoding.tables[0], again.encoding.tables[0])
    assert torch.equal(geom.density_head[0].weight, again.density_head[0].weight)
    assert not torch.equal(geom.encoding.tables[0], other.encoding.tables[0])
    assert make(n_features=4, feature_activation="none").feature_kind == "latent"


@pytest.mark.parametrize("over, words", [
    (dict(feature_activation="relu"), ["relu", "sigmoid"]),
    (dict(n_features=4), ["n_features=3", "4"]),
    (dict(log2_hashmap_size=30), ["log2_hashmap_size", "19"]),
    (dict(start_levels=9), ["start_levels=9", "n_levels=4"]),
    (dict(backend="tcnn"), ["tcnn", "backend=auto"]),
])
def test_config_errors(over, words):
    with pytest.raises(ConfigError) as err:
        make(**over)
    for word in words:
        assert word in str(err.value)


# ---------------------------------------------------------------- memory estimate
@pytest.mark.parametrize("over", [
    {},  # SMALL: levels 4, 8, 16, 32; the last (33^3 corners) hashed into 4096 rows
    dict(n_levels=2, log2_hashmap_size=4, mlp_layers=0),  # every level hashed into 16 rows, linear heads
    dict(features_per_level=3, mlp_layers=2, feature_activation="none", n_features=4, per_level_scale=1.0),
])
def test_parameter_bytes_counts_what_init_allocates(over):
    """The start-up memory check's estimate is exactly the built geometry's parameters (the
    tables and both heads); the buffers (bbox, level mask) are a few numbers."""
    geom = make(**over)
    real = sum(p.numel() * p.element_size() for p in geom.parameters())
    assert type(geom).parameter_bytes(geom.cfg) == real
    assert sum(b.numel() for b in geom.buffers()) == 6 + geom.cfg.n_levels


def test_parameter_bytes_by_hand():
    """2 levels of 2 features from 4 cells at scale 2: 5^3 = 125 and 9^3 = 729 rows (dense, T = 1024);
    heads of width 8: Linear(4, 8) + Linear(8, 1) = 40 + 9, Linear(4, 8) + Linear(8, 3) = 40 + 27.
    With T = 64 both levels hash into 64 rows."""
    from scorelift.plugins.geometry.hash_grid import HashGrid, HashGridConfig

    small = dict(n_levels=2, features_per_level=2, base_resolution=4, per_level_scale=2.0, mlp_width=8, mlp_layers=1)
    assert HashGrid.parameter_bytes(HashGridConfig(log2_hashmap_size=10, **small)) == 4 * ((125 + 729) * 2 + 49 + 67) == 7296
    assert HashGrid.parameter_bytes(HashGridConfig(log2_hashmap_size=6, **small)) == 4 * (128 * 2 + 49 + 67) == 1488


@pytest.mark.parametrize("over, words", [
    (dict(n_levels=3000), ["n_levels=3000", "10^", "2^24"]),  # 4 * 2^2999 overflows a float
    (dict(n_levels=24, per_level_scale=2.0), ["n_levels=24", "2^24"]),  # finest 4 * 2^23 = 2^25
    (dict(mlp_width=0), ["mlp_width=0", ">= 1"]),
    (dict(mlp_layers=-1), ["mlp_layers=-1", ">= 0"]),
])
def test_levels_too_fine_and_empty_heads_are_config_errors(over, words):
    with pytest.raises(ConfigError) as err:
        make(**over)
    for word in words:
        assert word in str(err.value)
    make(n_levels=23, per_level_scale=2.0, log2_hashmap_size=4)  # finest 4 * 2^22 = 2^24: allowed
