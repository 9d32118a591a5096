"""Volume renderer: analytic opacity and depth, compositing identities, determinism, backends,
gradients, backgrounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scorelift.builders import build_named
from scorelift.data.cameras import make_cameras
from scorelift.errors import ConfigError
from scorelift.interfaces.geometry import Geometry, GeometryOutput
from scorelift.maths.compositing import composite_nerfacc, composite_torch, nerfacc_available, resolve_backend
from scorelift.plugins.renderers.volume import ray_aabb, sample_count


def grid(**over):
    base = dict(resolution=8, bbox_radius=1.0, n_features=4, feature_activation="none")
    base.update(over)
    return build_named("geometry", "voxel-grid", base)


def renderer(**over):
    return build_named("renderer", "volume", over)


def solid(value=0.25, n=4):
    return build_named("background", "solid", dict(n_features=n, color=[value] * n))


def camera_rays(h=8, distance=2.5, fovy=30.0, elevation=20.0, azimuth=30.0):
    return make_cameras(elevation, azimuth, distance, fovy, h).rays()


def chord_lengths(o: torch.Tensor, d: torch.Tensor, r: float) -> torch.Tensor:
    """Length of each ray's chord through [-r, r]^3, by brute force along the ray (reference)."""
    t = torch.linspace(0, 10, 200001, dtype=torch.float64)
    p = o[..., None, :].double() + t[:, None] * d[..., None, :].double()
    inside = (p.abs() <= r).all(dim=-1)
    return inside.double().sum(dim=-1) * (t[1] - t[0])


class Wall(Geometry):
    """Analytic test geometry: density ``sigma`` for |x - x0| < half, 0 elsewhere, in [-1, 1]^3."""

    def __init__(self, x0=0.3, half=0.05, sigma=1e4):
        super().__init__()
        self.x0, self.half, self.sigma = x0, half, sigma
        self.n_features, self.feature_kind = 4, "latent"
        self.register_buffer("bbox", torch.tensor([[-1.0] * 3, [1.0] * 3]))

    def forward(self, points):
        density = torch.where((points[:, 0] - self.x0).abs() < self.half, self.sigma, 0.0).to(points)
        return GeometryOutput(density=density, features=torch.ones(points.shape[0], 4, dtype=points.dtype))


def test_defaults_and_sample_count():
    r = build_named("renderer", "volume")
    assert r.cfg.step_size == 0.01 and r.cfg.num_samples == 0 and r.cfg.backend == "auto"
    # SJC: 100^3 over [-1, 1]^3, half-voxel steps -> ceil(2 sqrt(3) / 0.01) samples per ray.
    assert r.samples_per_ray(grid()) == math.ceil(2 * math.sqrt(3) / 0.01) == 347
    assert sample_count(torch.tensor([[-1.0] * 3, [1.0] * 3]), 0.5) == 7


def test_ray_aabb_hits_and_misses():
    # towards the box, away from it, from inside it, beside it
    o = torch.tensor([[3.0, 0, 0], [3.0, 0, 0], [0.0, 0, 0], [3.0, 2.0, 0]])
    d = torch.tensor([[-1.0, 0, 0], [1.0, 0, 0], [0.0, 0, 1], [-1.0, 0, 0]])
    t0, t1 = ray_aabb(o, d, torch.tensor([[-1.0] * 3, [1.0] * 3]), near=0.0)
    assert t0[0] == 2.0 and t1[0] == 4.0
    assert t0[2] == 0.0 and t1[2] == 1.0  # a camera inside the box starts at `near`
    assert t1[1] == t0[1] and t1[3] == t0[3]  # misses: empty segments


def test_empty_grid_renders_background_exactly():
    g = grid(density_init=-1000.0)  # softplus(-1001) is exactly 0
    bg = build_named("background", "texture", dict(n_features=4))
    o, d = camera_rays()
    out = renderer().render_rays(g, bg, o, d)
    assert torch.equal(out.opacity, torch.zeros(1, 8, 8, 1))
    assert torch.equal(out.depth, torch.zeros(1, 8, 8, 1))
    assert torch.equal(out.color, bg(d))


@pytest.mark.parametrize("mode", [dict(), dict(num_samples=37), dict(step_size=0.07)])
def test_uniform_density_opacity_matches_analytic(mode):
    g = grid(density_init=0.5, density_shift=-1.0)
    sigma = F.softplus(torch.tensor(-0.5)).item()
    o, d = camera_rays(h=6, distance=2.2, fovy=70.0)
    r = renderer(**mode)
    for train in (False, True):  # jitter moves samples but cannot change a uniform density's integral
        r.train(train)
        out = r.render_rays(g, solid(), o, d, torch.Generator().manual_seed(0))
        chords = chord_lengths(o, d, 1.0)
        expected = 1 - torch.exp(-sigma * chords)
        assert (chords == 0).sum() in range(1, 9) and chords.max() > 2.4  # wide view: corners miss
        torch.testing.assert_close(out.opacity[..., 0].double(), expected, atol=2e-4, rtol=0)


def test_depth_of_thin_opaque_wall():
    # Rays from x = 3 at several angles; the wall's front face is at x = 0.35.
    wall = Wall(x0=0.3, half=0.05)
    angles = torch.tensor([0.0, 0.15, -0.25, 0.3])
    d = torch.stack([-torch.cos(angles), torch.sin(angles), 0.3 * torch.sin(angles)], dim=-1)
    d = F.normalize(d, dim=-1).reshape(1, 1, 4, 3)
    o = torch.tensor([3.0, 0.0, 0.0]).expand(1, 1, 4, 3)
    out = renderer(step_size=0.005).render_rays(wall, solid(), o, d)
    expected = (3.0 - 0.35) / -d[..., 0]
    torch.testing.assert_close(out.opacity[..., 0], torch.ones(1, 1, 4))
    torch.testing.assert_close(out.depth[..., 0], expected, atol=0.006, rtol=0)
    torch.testing.assert_close(out.color, torch.ones(1, 1, 4, 4))  # features 1, opaque


def test_weights_sum_to_opacity_and_composite_identities():
    g = grid(density_init=1.5, feature_init_std=1.0)
    o, d = camera_rays()
    out = renderer(step_size=0.05).render_rays(g, solid(0.7), o, d)
    torch.testing.assert_close(out.weights.sum(dim=-1, keepdim=True), out.opacity)
    assert (out.opacity > 0.1).all() and (out.opacity < 1).all()
    assert (out.weights >= 0).all()
    # Depth lies between the box entry and exit, weighted by opacity.
    t0, t1 = ray_aabb(o.reshape(-1, 3), d.reshape(-1, 3), g.bbox, 0.0)
    dep = out.depth.reshape(-1) / out.opacity.reshape(-1)
    assert (dep > t0).all() and (dep < t1).all()


def test_stratified_jitter_is_deterministic_given_the_generator():
    g = grid(density_init=2.0)
    o, d = camera_rays()
    r = renderer(step_size=0.05)
    bg = solid()
    r.train()
    a = r.render_rays(g, bg, o, d, torch.Generator().manual_seed(5))
    b = r.render_rays(g, bg, o, d, torch.Generator().manual_seed(5))
    c = r.render_rays(g, bg, o, d, torch.Generator().manual_seed(6))
    assert torch.equal(a.color, b.color) and torch.equal(a.weights, b.weights)
    assert not torch.equal(a.color, c.color)
    mid = r.render_rays(g, bg, o, d, None)  # training mode without a generator: midpoints
    r.eval()
    e1 = r.render_rays(g, bg, o, d, torch.Generator().manual_seed(5))
    e2 = r.render_rays(g, bg, o, d)
    assert torch.equal(e1.color, e2.color) and torch.equal(e1.color, mid.color)
    assert not torch.equal(e1.color, a.color)


def test_chunking_does_not_change_the_result():
    g = grid(density_init=2.0)
    o, d = camera_rays()
    a, b = renderer(step_size=0.05, chunk_size=0), renderer(step_size=0.05, chunk_size=7)
    a.train(), b.train()
    ra = a.render_rays(g, solid(), o, d, torch.Generator().manual_seed(1))
    rb = b.render_rays(g, solid(), o, d, torch.Generator().manual_seed(1))
    for x, y in [(ra.color, rb.color), (ra.weights, rb.weights), (ra.depth, rb.depth)]:
        torch.testing.assert_close(x, y)


def test_auto_backend_is_torch_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ConfigError, match="'cuda-only'"):
        resolve_backend("cuda-only", torch.device("cpu"))


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: nerfacc's CUDA kernels cannot run"))]


@pytest.mark.parametrize("device", DEVICES)
def test_pure_path_agrees_with_nerfacc(device):
    """On CUDA this runs nerfacc's compiled packed-scan kernels; on the CPU its batched torch path."""
    if not nerfacc_available():
        print("SKIP: nerfacc is not importable, so there is nothing to compare the pure path against")
        pytest.skip("nerfacc not importable")
    gen = torch.Generator().manual_seed(0)
    n, S, C = 50, 40, 4
    dtype = torch.float64 if device == "cpu" else torch.float32  # nerfacc's kernels are float32
    sigma = (torch.rand(n, S, generator=gen, dtype=dtype) * 5).to(device).requires_grad_()
    delta = (torch.rand(n, S, generator=gen, dtype=dtype) * 0.1).to(device)
    t = torch.cumsum(delta, dim=-1)
    feats_dense = torch.randn(n, S, C, generator=gen, dtype=dtype).to(device)
    keep = (torch.rand(n, S, generator=gen) > 0.2).to(device)
    ri, si = keep.nonzero(as_tuple=True)
    feats = feats_dense[ri, si].requires_grad_()
    a = composite_torch(sigma, delta, t, feats, ri, si)
    b = composite_nerfacc(sigma, delta, t, feats, ri, si)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    la = sum((x * torch.linspace(0, 1, x.numel(), dtype=x.dtype, device=device).reshape(x.shape)).sum() for x in a)
    lb = sum((x * torch.linspace(0, 1, x.numel(), dtype=x.dtype, device=device).reshape(x.shape)).sum() for x in b)
    ga = torch.autograd.grad(la, (sigma, feats))
    gb = torch.autograd.grad(lb, (sigma, feats))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y)
    # And the whole renderer with backend=nerfacc.
    g = grid(density_init=1.0).to(device)
    o, d = camera_rays()
    o, d = o.to(device), d.to(device)
    rt = renderer(step_size=0.05, backend="torch").render_rays(g, solid().to(device), o, d)
    rn = renderer(step_size=0.05, backend="nerfacc").render_rays(g, solid().to(device), o, d)
    for x, y in [(rt.color, rn.color), (rt.opacity, rn.opacity), (rt.depth, rn.depth), (rt.weights, rn.weights)]:
        torch.testing.assert_close(x, y)


def test_gradients_match_finite_differences_float64():
    g = grid(resolution=4, n_features=2, density_init=0.3, feature_init_std=0.5).double()
    with torch.no_grad():
        g.density_grid.add_(torch.rand(g.density_grid.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
        g.d_scale.fill_(0.2)
    bg = build_named("background", "solid", dict(n_features=2, color=[0.3, -0.2])).double()
    o, d = camera_rays(h=4, fovy=40.0)
    o, d = o.double(), d.double()
    r = renderer(step_size=0.1)
    proj = [torch.randn(s, generator=torch.Generator().manual_seed(9), dtype=torch.float64) for s in [(1, 4, 4, 2), (1, 4, 4, 1), (1, 4, 4, 1)]]

    def loss():
        out = r.render_rays(g, bg, o, d)
        return (out.color * proj[0]).sum() + (out.opacity * proj[1]).sum() + (out.depth * proj[2]).sum()

    loss().backward()
    eps = 1e-6
    pick = torch.Generator().manual_seed(4)
    for param in (g.density_grid, g.feature_grid, g.d_scale):
        flat = param.data.view(-1)
        idx = torch.randperm(flat.numel(), generator=pick)[:6]
        for i in idx:
            old = flat[i].item()
            flat[i] = old + eps
            up = loss().item()
            flat[i] = old - eps
            down = loss().item()
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert param.grad.view(-1)[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    assert g.d_scale.grad.abs() > 0 and g.density_grid.grad.abs().sum() > 0


def test_normals_extras_and_errors():
    g = grid(resolution=24, density_shift=0.0)
    axis = torch.linspace(-1, 1, 24)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    with torch.no_grad():  # a ball of radius 0.5 with a sharp edge
        g.density_grid[0, 0] = 200.0 * (0.5 - torch.stack([x, y, z], -1).norm(dim=-1))
    o, d = camera_rays(h=6, fovy=25.0)
    out = renderer(step_size=0.05, return_normals=True).render_rays(g, solid(), o, d)
    S = out.weights.shape[-1]
    assert out.extras["normals"].shape == (1, 6, 6, S, 3) and torch.equal(out.extras["ray_dirs"], d)
    # The visible side of a ball faces the camera: the weighted n . d is negative, close to -1
    # where the view ray meets the surface head on (the central pixels).
    facing = (out.extras["normals"] * d[..., None, :]).sum(-1)
    assert (out.weights * facing).sum() < -0.4 * out.weights.sum()
    central = (out.weights * facing).sum(-1)[0, 2:4, 2:4] / out.opacity[0, 2:4, 2:4, 0]
    assert (central < -0.9).all(), central

    with pytest.raises(ConfigError, match="return_normals"):
        renderer(return_normals=True).render_rays(Wall(), solid(), o, d)
    # A background whose channels differ from the geometry's is refused at start-up
    # (tests/run/test_system.py), not by the renderer on every call.


def test_texture_background_upsampling():
    bg = build_named("background", "texture", dict(n_features=2, resolution=4, init_std=1.0))
    tex = bg.texture.detach()[0]  # [C, 4, 4]
    d = torch.zeros(2, 8, 8, 3)
    img = bg(d)
    assert img.shape == (2, 8, 8, 2) and torch.equal(img[0], img[1])
    # Bilinear x2 with half-pixel centres: output pixel j samples source (j + 0.5) / 2 - 0.5.
    torch.testing.assert_close(img[0, 0, 0], tex[:, 0, 0])  # corner: clamped to the corner texel
    torch.testing.assert_close(img[0, 0, 1], 0.75 * tex[:, 0, 0] + 0.25 * tex[:, 0, 1])
    # Pixel (3, 4) samples source row 1.25, column 1.75.
    row1 = 0.25 * tex[:, 1, 1] + 0.75 * tex[:, 1, 2]
    row2 = 0.25 * tex[:, 2, 1] + 0.75 * tex[:, 2, 2]
    torch.testing.assert_close(img[0, 3, 4], 0.75 * row1 + 0.25 * row2)
    assert {n for n, _ in bg.named_parameters()} == {"texture"}


def test_spherical_texture_depends_on_direction_only():
    bg = build_named("background", "texture", dict(n_features=4, mapping="spherical"))
    d = F.normalize(torch.randn(1, 3, 5, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    a = bg(d)
    b = bg(d.flip(2))
    torch.testing.assert_close(a.flip(2), b)


def test_solid_and_learned_color_backgrounds():
    d = torch.zeros(1, 2, 3, 3)
    s = build_named("background", "solid")
    assert torch.equal(s(d), torch.ones(1, 2, 3, 3)) and len(list(s.parameters())) == 0
    lc = build_named("background", "learned-color", dict(init_color=[0.2, 0.5, 0.9]))
    torch.testing.assert_close(lc(d)[0, 1, 2], torch.tensor([0.2, 0.5, 0.9]))
    lc(d).sum().backward()
    assert lc.logit.grad is not None
    with pytest.raises(ConfigError, match="n_features=3"):
        build_named("background", "solid", dict(color=[1.0, 1.0]))


def test_config_errors():
    with pytest.raises(ConfigError, match="step_size=0"):
        renderer(step_size=0.0)
    with pytest.raises(ConfigError, match="'cuda'"):
        renderer(backend="cuda")


def test_auto_backend_is_torch_under_deterministic_algorithms(deterministic_algorithms):
    """nerfacc's kernels are not covered by PyTorch's deterministic mode: auto keeps the torch path
    on CUDA then (resolve_backend only looks at the device type, so this runs without a GPU)."""
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    torch.use_deterministic_algorithms(False)
    assert resolve_backend("auto", torch.device("cuda")) == ("nerfacc" if nerfacc_available() else "torch")
