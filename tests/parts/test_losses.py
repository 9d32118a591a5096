"""Regularisers against hand computations: emptiness (and its boost), centre depth (sign and
guard), sparsity, opacity entropy, orientation."""

from __future__ import annotations

import math

import pytest
import torch

from scorelift.builders import build_named
from scorelift.data.cameras import make_cameras
from scorelift.errors import ConfigError
from scorelift.interfaces.renderer import RenderOutput

CAMS = make_cameras(20.0, 0.0, 1.5, 60.0, 64)


def render(weights=None, opacity=None, depth=None, extras=None, hw=(64, 64)) -> RenderOutput:
    H, W = hw
    return RenderOutput(
        color=torch.zeros(1, H, W, 4),
        opacity=opacity if opacity is not None else torch.ones(1, H, W, 1),
        depth=depth if depth is not None else torch.ones(1, H, W, 1),
        weights=weights if weights is not None else torch.zeros(1, H, W, 3),
        extras=extras or {},
    )


def test_emptiness_value_and_boost_at_half_the_steps():
    loss = build_named("loss", "emptiness")
    assert (loss.cfg.scale, loss.cfg.boost_factor, loss.cfg.boost_at) == (10.0, 20.0, 0.5)
    w = torch.tensor([0.0, 0.1, 0.5, 0.02]).reshape(1, 1, 1, 4)
    hand = (math.log(1) + math.log(2) + math.log(6) + math.log(1.2)) / 4
    r = render(weights=w, hw=(1, 1))
    assert loss(r, CAMS).item() == pytest.approx(hand, rel=1e-6)
    loss.do_update_step(499, 1000)
    assert loss(r, CAMS).item() == pytest.approx(hand, rel=1e-6)
    loss.do_update_step(500, 1000)
    assert loss(r, CAMS).item() == pytest.approx(20 * hand, rel=1e-6)
    loss.do_update_step(10, 1000)  # resuming from an earlier step drops the boost again
    assert loss(r, CAMS).item() == pytest.approx(hand, rel=1e-6)


def depth_map(center: float, border: float, hw=64, crop=50) -> torch.Tensor:
    d = torch.full((1, hw, hw, 1), border)
    s = (hw - crop) // 2
    d[:, s : s + crop, s : s + crop] = center
    return d


def test_center_depth_value_uses_the_50_of_64_crop():
    loss = build_named("loss", "center-depth")
    r = render(depth=depth_map(1.5, 2.0))
    assert loss(r, CAMS).item() == pytest.approx(-math.log(0.5), rel=1e-5)
    # Moving one pixel just inside the crop edge changes only the centre mean.
    d = depth_map(1.5, 2.0)
    d[0, 7, 7] = 1.5 + 2500 * 0.1
    assert loss(render(depth=d), CAMS).item() == pytest.approx(-math.log(0.5 - 0.1), rel=1e-5)


def test_center_depth_fills_empty_pixels_with_far():
    loss = build_named("loss", "center-depth")
    opacity = depth_map(1.0, 0.0)  # centre opaque, border empty (depth 0 there)
    depth = depth_map(1.2, 0.0)
    value = loss(render(opacity=opacity, depth=depth), CAMS).item()
    assert value == pytest.approx(-math.log(10.0 - 1.2), rel=1e-5)


def test_center_depth_gradient_pulls_the_centre_forward():
    loss = build_named("loss", "center-depth")
    for center in (1.5, 2.5):  # in front of the border (log branch) and behind it (guard branch)
        depth = depth_map(center, 2.0).requires_grad_()
        value = loss(render(depth=depth), CAMS)
        assert torch.isfinite(value)
        value.backward()
        g = depth.grad[0, :, :, 0]
        assert (g[7:57, 7:57] > 0).all(), "descent must lower the centre depth"
        assert (g[:7] < 0).all(), "descent must raise the border depth"
    # The authors' -log(center - border) would be NaN here; the guarded form is finite.
    assert torch.isnan(-torch.log(torch.tensor(1.5 - 2.0)))


def test_center_depth_guard_is_continuous_at_eps():
    from scorelift.plugins.losses.center_depth import safe_neg_log

    eps = 1e-3
    x = torch.tensor([eps * (1 - 1e-6), eps, eps * (1 + 1e-6)], dtype=torch.float64)
    v = safe_neg_log(x, eps)
    assert (v[0] - v[1]).abs() < 1e-5 and (v[2] - v[1]).abs() < 1e-5
    assert safe_neg_log(torch.tensor([-1.0]), eps).item() == pytest.approx(-math.log(eps) + (1 + eps) / eps)


def test_sparsity():
    loss = build_named("loss", "sparsity")
    o = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 3, 1)
    hand = (math.sqrt(0.01) + math.sqrt(0.26) + math.sqrt(1.01)) / 3
    assert loss(render(opacity=o, hw=(1, 3)), CAMS).item() == pytest.approx(hand, rel=1e-6)


def test_opacity_entropy():
    loss = build_named("loss", "opacity-entropy")
    o = torch.tensor([0.5, 0.0, 1.0]).reshape(1, 1, 3, 1)
    assert loss(render(opacity=o, hw=(1, 3)), CAMS).item() == pytest.approx(math.log(2) / 3, rel=1e-3)


def orientation_render(sign: float):
    d = torch.nn.functional.normalize(torch.tensor([[-1.0, 0.2, -0.1], [-0.8, -0.3, 0.2]]), dim=-1)
    dirs = d.reshape(1, 1, 2, 3)
    w = torch.tensor([[0.1, 0.6, 0.2], [0.3, 0.3, 0.0]]).reshape(1, 1, 2, 3)
    normals = (sign * dirs[..., None, :]).expand(1, 1, 2, 3, 3).clone().requires_grad_()
    return render(weights=w.requires_grad_(), extras={"normals": normals, "ray_dirs": dirs}, hw=(1, 2))


def test_orientation_zero_for_front_facing_positive_for_back_facing():
    loss = build_named("loss", "orientation")
    assert loss(orientation_render(-1.0), CAMS).item() == 0.0  # normals towards the camera
    r = orientation_render(+1.0)  # normals along the ray: back-facing, n . d = 1
    value = loss(r, CAMS)
    assert value.item() == pytest.approx((0.9 + 0.6) / 2, rel=1e-6)  # sum of weights, mean over rays
    value.backward()
    assert r.weights.grad is None  # weights are detached
    assert r.extras["normals"].grad.abs().sum() > 0
    # Normals perpendicular to the ray (silhouette) cost nothing either.
    r = orientation_render(1.0)
    side = torch.linalg.cross(r.extras["ray_dirs"], torch.tensor([0.0, 0.0, 1.0]).expand(1, 1, 2, 3), dim=-1)
    r.extras["normals"] = side[..., None, :].expand(1, 1, 2, 3, 3)
    assert loss(r, CAMS).item() == pytest.approx(0.0, abs=1e-12)


def test_orientation_without_normals_says_how_to_fix_it():
    loss = build_named("loss", "orientation")
    with pytest.raises(ConfigError, match=r"renderer\.return_normals=true"):
        loss(render(), CAMS)


def test_loss_config_errors():
    with pytest.raises(ConfigError, match="crop_fraction=1.5"):
        build_named("loss", "center-depth", dict(crop_fraction=1.5))
    with pytest.raises(ConfigError, match="boost_at=2"):
        build_named("loss", "emptiness", dict(boost_at=2.0))
    with pytest.raises(ConfigError, match="Unknown config key"):
        build_named("loss", "sparsity", dict(scale=3.0))


def test_end_to_end_render_then_losses():
    """The renderer's outputs feed every loss, and the losses' gradients reach the grid."""
    geom = build_named("geometry", "voxel-grid", dict(resolution=12, density_init=0.5))
    bg = build_named("background", "texture")
    rend = build_named("renderer", "volume", dict(step_size=0.05, return_normals=True))
    cams = make_cameras(20.0, 0.0, 2.0, 40.0, 16)
    out = rend.render(geom, bg, cams)
    total = 0
    for name in ("emptiness", "center-depth", "sparsity", "opacity-entropy", "orientation"):
        value = build_named("loss", name)(out, cams)
        assert value.dim() == 0 and torch.isfinite(value), name
        total = total + value
    total.backward()
    assert geom.density_grid.grad.abs().sum() > 0
