"""The Gaussian geometry: adaptive density control on constructed gradients (counts, the cap, the
optimizer's state carried row by row), checkpoints of another row count, the field it exports,
and the splatter drawing it."""

from __future__ import annotations

import math

import pytest
import torch

from scorelift.builders import build_named
from scorelift.data.cameras import make_cameras
from scorelift.library.parameter_surgery import append_rows, select_rows
from scorelift.interfaces.renderer import RenderOutput


def gaussians(**options):
    base = dict(n_gaussians=6, max_gaussians=100, init_radius=0.3, bbox_radius=0.6, init_scale=0.01,
                init_opacity=0.5, split_scale=0.02, densify_grad_threshold=0.1)
    base.update(options)
    return build_named("geometry", "gaussians", base)


def adam_for(geometry, lr=0.01):
    groups = [{"params": ps, "lr": lr * f, "name": n} for n, ps, f in geometry.optimizer_groups()]
    return torch.optim.Adam(groups)


def step_once(geometry, optimizer):
    """One Adam step on a loss that touches every parameter, so that every row has state."""
    g = geometry.gaussians()
    loss = (g.means ** 2).sum() + g.scales.sum() + g.quats.sum() + g.opacities.sum() + g.sh.sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_densification_clones_small_splits_large_and_prunes_transparent_gaussians():
    geo = gaussians()
    opt = adam_for(geo)
    step_once(geo, opt)
    with torch.no_grad():
        geo.log_scales[3:5] = math.log(0.05)  # rows 3, 4 are large (above split_scale 0.02)
        geo.opacity_logits[5] = -10.0  # row 5 is transparent (below prune_opacity 0.01)
    # Mean view-space gradients: rows 0, 1 (small) and 3 (large) reach the threshold 0.1.
    geo.grad_accum.copy_(torch.tensor([0.3, 0.5, 0.05, 0.4, 0.0, 0.0]))
    geo.seen.copy_(torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0, 0.0]))
    before = {name: getattr(geo, name).detach().clone() for name in ("means", "log_scales", "opacity_logits")}
    moments = opt.state[geo.means]["exp_avg"].clone()
    counts = geo.densify_and_prune(opt, torch.Generator().manual_seed(0))

    assert counts == {"cloned": 2, "split": 1, "pruned": 2, "count": 6 + 2 + 2 - 2}
    # Survivors in order: rows 0, 1, 2, 4 (3 split, 5 pruned), then the clones of 0, 1, then 3's two halves.
    kept = [0, 1, 2, 4]
    assert torch.equal(geo.means[:4].detach(), before["means"][kept])
    assert torch.equal(geo.means[4:6].detach(), before["means"][[0, 1]])
    halves = geo.log_scales[6:8].detach()
    assert torch.allclose(halves, (before["log_scales"][3] - math.log(1.6)).expand(2, 3))
    assert ((geo.means[6:8].detach() - before["means"][3]).norm(dim=-1) < 4 * 0.05).all()
    # The optimizer holds the new tensors, with the kept rows' moments and zero for the new rows.
    assert opt.param_groups[0]["params"][0] is geo.means
    state = opt.state[geo.means]
    assert state["exp_avg"].shape == (8, 3)
    assert torch.equal(state["exp_avg"][:4], moments[kept])
    assert torch.equal(state["exp_avg"][4:], torch.zeros(4, 3))
    assert geo.grad_accum.shape == (8,) and geo.grad_accum.sum() == 0
    step_once(geo, opt)  # and it keeps training


def test_the_cap_takes_the_largest_gradients_first():
    geo = gaussians(max_gaussians=8)
    geo.grad_accum.copy_(torch.tensor([0.2, 0.9, 0.5, 0.3, 0.0, 0.7]))
    geo.seen.fill_(1.0)
    counts = geo.densify_and_prune(None, torch.Generator().manual_seed(0))
    assert counts["cloned"] == 2 and counts["count"] == 8
    assert torch.equal(geo.means[6:].detach(), geo.means[[1, 5]].detach())  # 0.9 and 0.7


def test_a_checkpoint_of_another_row_count_loads_with_its_rows():
    source = gaussians(n_gaussians=6)
    source.densify_and_prune(None, torch.Generator().manual_seed(0))
    source.grad_accum.copy_(torch.tensor([0.2, 0.9, 0.5, 0.3, 0.0, 0.7]))
    source.seen.fill_(1.0)
    source.densify_and_prune(None, torch.Generator().manual_seed(0))
    source.grad_accum.fill_(0.25)
    state = source.state_dict()
    target = gaussians(n_gaussians=3)
    target.load_state_dict(state)
    assert target.count == source.count == 11  # five clones
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def test_surgery_keeps_state_of_kept_rows_and_zeroes_new_ones():
    p = torch.nn.Parameter(torch.arange(8.0).reshape(4, 2))
    opt = torch.optim.Adam([p], lr=0.1)
    p.sum().backward()
    opt.step()
    old = opt.state[p]["exp_avg_sq"].clone()
    q = select_rows(p, torch.tensor([True, False, True, True]), opt)
    assert opt.param_groups[0]["params"] == [q] and p not in opt.state
    assert torch.equal(opt.state[q]["exp_avg_sq"], old[[0, 2, 3]])
    r = append_rows(q, torch.ones(2, 2), opt)
    assert torch.equal(r.detach()[3:], torch.ones(2, 2))
    assert torch.equal(opt.state[r]["exp_avg_sq"][3:], torch.zeros(2, 2))
    assert opt.state[r]["step"] == opt.state[r]["step"]  # the step count is carried as it was


def test_the_field_is_the_sum_of_kernels_and_its_colour_the_gaussians():
    geo = gaussians(n_gaussians=1, init_radius=0.1, init_scale=0.05, init_opacity=0.8)
    with torch.no_grad():
        geo.means.zero_()
        geo.sh_dc.copy_(torch.tensor([[1.0, 0.0, -1.0]]))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.2, 0.0, 0.0]])
    out = geo(points)
    peak = -math.log(1 - 0.8) / (math.sqrt(2 * math.pi) * 0.05)  # optical depth through the centre: -log(1 - 0.8)
    expected = peak * torch.exp(-0.5 * torch.tensor([0.0, 1.0, 16.0]))
    expected[2] = 0.0  # beyond 3 sigma
    assert torch.allclose(out.density, expected, rtol=1e-5)
    colour = (0.5 + 0.28209479177387814 * torch.tensor([1.0, 0.0, -1.0]))
    assert torch.allclose(out.features[0], colour, atol=1e-6)


def test_the_splatter_draws_the_geometry_and_reports_centre_gradients():
    geo = gaussians(n_gaussians=50, init_scale=0.04, init_opacity=0.6)
    renderer = build_named("renderer", "splatter", {})
    background = build_named("background", "solid", {"n_features": 3})
    cams = make_cameras(20.0, torch.tensor([0.0, 90.0]), 2.0, 40.0, 32)
    out = renderer.render(geo, background, cams)
    assert isinstance(out, RenderOutput) and out.color.shape == (2, 32, 32, 3)
    assert 0.05 < out.opacity.mean() < 0.95
    out.color.sum().backward()
    xy = out.extras["means2d"]
    assert xy.shape == (2, 50, 2) and xy.grad is not None and xy.grad.abs().sum() > 0
    geo.cfg.densify_from, geo.cfg.densify_until = 0, 10
    geo.after_backward(0, out)
    drawn = (out.extras["radii"] > 0).sum(0).float()
    assert torch.equal(geo.seen, drawn)
    assert torch.allclose(geo.grad_accum, ((xy.grad * 16).norm(dim=-1) * (out.extras["radii"] > 0)).sum(0))


class Ball(torch.nn.Module):
    """A density field: 10 inside a ball of radius 0.3, 0 outside, one colour everywhere."""

    n_features = 3
    kind = "field"

    def __init__(self):
        super().__init__()
        self.register_buffer("bbox", torch.tensor([[-0.6] * 3, [0.6] * 3]))

    def density(self, points):
        return 10.0 * (points.norm(dim=-1) < 0.3).float()

    def forward(self, points):
        from scorelift.interfaces.geometry import GeometryOutput

        return GeometryOutput(density=self.density(points),
                              features=torch.tensor([0.2, 0.6, 0.9]).expand(points.shape[0], 3))


def test_a_start_from_a_density_field_puts_the_centres_where_it_is_dense_in_its_colour():
    geo = gaussians(n_gaussians=500, max_gaussians=1000, init_opacity=0.3)
    geo.init_from(Ball(), level=5.0)
    cell = 1.2 / 63
    assert geo.count == 500
    assert (geo.means.norm(dim=-1) < 0.3 + cell).all()  # lattice points inside, jittered within a cell
    assert geo.means.norm(dim=-1).max() > 0.2  # spread through the ball, not piled at its centre
    colour = geo.base_features()
    assert torch.allclose(colour, torch.tensor([0.2, 0.6, 0.9]).expand(500, 3), atol=1e-5)
    assert torch.allclose(torch.exp(geo.log_scales), torch.full((500, 3), cell), rtol=1e-5)
    assert torch.allclose(torch.sigmoid(geo.opacity_logits), torch.full((500,), 0.3))
