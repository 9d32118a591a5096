"""The pure-PyTorch splatter with hand-computed numbers: two Gaussians' image (values and depth
order) from the EWA formula written out here, gradients against finite differences, tiling that
changes nothing, and the Gaussians read as a density field."""

from __future__ import annotations

import math

import pytest
import torch

from scorelift.data.cameras import CameraBatch
from scorelift.maths.splat import (
    ALPHA_MIN,
    LOW_PASS,
    covariance_3d,
    gaussian_field,
    project_gaussians,
    quaternion_to_rotation,
    sh_colour,
    splat,
)


def camera_on_z(distance: float = 2.0, fovy_deg: float = 40.0, size: int = 16, dtype=torch.float64) -> CameraBatch:
    """One camera at (0, 0, distance) looking at the origin along -z, y up."""
    c2w = torch.eye(4, dtype=dtype)
    c2w[2, 3] = distance
    return CameraBatch(c2w=c2w[None], fovy=torch.tensor([math.radians(fovy_deg)], dtype=dtype),
                       elevation=torch.zeros(1), azimuth=torch.zeros(1), distance=torch.tensor([distance]),
                       height=size, width=size)


def hand_image(means, sigmas, opacities, colours, cam: CameraBatch, background):
    """The image of isotropic Gaussians written out pixel by pixel from the formulas: centre
    x = W/2 + f u / z, y = H/2 - f v / z; Sigma2D = sigma^2 J J^T + 0.3 I with
    J J^T = (f / z)^2 [[1 + u^2 / z^2, u v / z^2], [u v / z^2, 1 + v^2 / z^2]]; front to back."""
    H = W = cam.height
    f = 0.5 * H / math.tan(0.5 * float(cam.fovy[0]))
    eye = cam.c2w[0, :3, 3].tolist()
    items = []
    for m, s, o, c in zip(means, sigmas, opacities, colours):
        u, v, w = m[0] - eye[0], m[1] - eye[1], m[2] - eye[2]
        z = -w
        x0, y0 = W / 2 + f * u / z, H / 2 - f * v / z
        k = (f / z) ** 2 * s * s
        a = k * (1 + u * u / (z * z)) + LOW_PASS
        b = k * (u * v / (z * z)) * -1.0  # y points down in pixels: the off-diagonal changes sign
        cc = k * (1 + v * v / (z * z)) + LOW_PASS
        det = a * cc - b * b
        items.append((z, x0, y0, cc / det, -b / det, a / det, o, c))
    items.sort(key=lambda t: t[0])  # nearest first
    image = torch.zeros((H, W, 3), dtype=torch.float64)
    for i in range(H):
        for j in range(W):
            px, py = j + 0.5, i + 0.5
            T, col = 1.0, [0.0, 0.0, 0.0]
            for z, x0, y0, A, B, C, o, c in items:
                dx, dy = px - x0, py - y0
                alpha = min(0.99, o * math.exp(-0.5 * (A * dx * dx + C * dy * dy) - B * dx * dy))
                if alpha < ALPHA_MIN:
                    continue
                col = [col[k] + alpha * T * c[k] for k in range(3)]
                T *= 1 - alpha
            image[i, j] = torch.tensor([col[k] + T * background[k] for k in range(3)])
    return image


def render(means, sigmas, opacities, colours, cam, background, tile=8, max_pairs=1 << 22):
    N = means.shape[0]
    scales = sigmas[:, None].expand(N, 3)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=means.dtype).expand(N, 4)
    p = project_gaussians(means, covariance_3d(scales, quats), cam.c2w, cam.fovy, cam.height, cam.width)
    bg = torch.tensor(background, dtype=means.dtype).expand(1, cam.height, cam.width, 3)
    return splat(p, opacities, colours, bg, tile=tile, max_pairs=max_pairs)


TWO = dict(
    means=[[0.05, 0.02, 0.3], [-0.08, -0.04, -0.2]],  # the first is nearer the camera at z = 2
    sigmas=[0.08, 0.12],
    opacities=[0.8, 0.9],
    colours=[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
)


def as_tensors(d):
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in d.items()}


def test_two_gaussians_give_the_hand_computed_image():
    cam = camera_on_z()
    t = as_tensors(TWO)
    out = render(t["means"], t["sigmas"], t["opacities"], t["colours"], cam, [1.0, 1.0, 1.0])
    expected = hand_image(TWO["means"], TWO["sigmas"], TWO["opacities"], TWO["colours"], cam, [1.0, 1.0, 1.0])
    assert torch.allclose(out.color[0], expected, atol=1e-9)
    # opacity is 1 - the transmittance left: white Gaussians over black show it in every channel
    white = render(t["means"], t["sigmas"], t["opacities"], torch.ones(2, 3, dtype=torch.float64), cam, [0.0, 0.0, 0.0])
    assert torch.allclose(out.opacity, white.color[..., :1], atol=1e-12)
    assert torch.allclose(white.color[0], hand_image(TWO["means"], TWO["sigmas"], TWO["opacities"], [[1.0] * 3] * 2,
                                                     cam, [0.0, 0.0, 0.0]), atol=1e-9)
    centre = out.color[0, 8, 8]
    assert centre[0] > 0.5 and centre[0] > 2 * centre[2]  # the near red Gaussian covers the blue one


def test_depth_order_decides_which_colour_is_in_front():
    cam = camera_on_z()
    swapped = dict(TWO, means=[[0.05, 0.02, -0.2], [-0.08, -0.04, 0.3]])  # now blue is nearer
    t = as_tensors(swapped)
    out = render(t["means"], t["sigmas"], t["opacities"], t["colours"], cam, [1.0, 1.0, 1.0])
    expected = hand_image(swapped["means"], swapped["sigmas"], swapped["opacities"], swapped["colours"], cam,
                          [1.0, 1.0, 1.0])
    assert torch.allclose(out.color[0], expected, atol=1e-9)
    before = render(**{k: v for k, v in zip(("means", "sigmas", "opacities", "colours"), as_tensors(TWO).values())},
                    cam=cam, background=[1.0, 1.0, 1.0]).color[0, 8, 8]
    centre = out.color[0, 8, 8]
    assert centre[2] > centre[0] and before[0] > before[2]  # the nearer one's colour wins
    # Pure alpha-compositing of the centre pixel by hand: alpha = o * exp(-0.5 d^2 / var).
    assert out.opacity.max() < 1.0 and out.opacity.min() >= 0.0


def test_opacity_and_depth_of_a_single_gaussian_at_its_centre():
    cam = camera_on_z(size=16)
    # A Gaussian centred exactly on pixel (8, 8)'s centre: x = 8.5 means u = 0.5 f^-1 z.
    f = 8 / math.tan(math.radians(20))
    z = 2.0
    u = 0.5 * z / f
    means = torch.tensor([[u, -u, 0.0]], dtype=torch.float64)
    out = render(means, torch.tensor([0.1], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64),
                 torch.tensor([[0.2, 0.4, 0.6]], dtype=torch.float64), cam, [0.0, 0.0, 0.0])
    assert out.opacity[0, 8, 8, 0].item() == pytest.approx(0.7, abs=1e-12)
    assert torch.allclose(out.color[0, 8, 8], torch.tensor([0.14, 0.28, 0.42], dtype=torch.float64))
    distance = math.sqrt(2 * u * u + z * z)
    assert out.depth[0, 8, 8, 0].item() == pytest.approx(0.7 * distance, rel=1e-12)


def test_tiles_and_memory_bound_change_nothing():
    torch.manual_seed(0)
    cam = camera_on_z(size=24)
    means = (torch.rand(60, 3, dtype=torch.float64) - 0.5) * 0.8
    sigmas = torch.rand(60, dtype=torch.float64) * 0.05 + 0.02
    opac = torch.rand(60, dtype=torch.float64) * 0.8 + 0.1
    cols = torch.rand(60, 3, dtype=torch.float64)
    ref = render(means, sigmas, opac, cols, cam, [1.0, 1.0, 1.0], tile=8)
    for tile, max_pairs in ((4, 1 << 22), (16, 1 << 22), (8, 64), (5, 300)):
        out = render(means, sigmas, opac, cols, cam, [1.0, 1.0, 1.0], tile=tile, max_pairs=max_pairs)
        assert torch.allclose(out.color, ref.color, atol=1e-12), (tile, max_pairs)
        assert torch.allclose(out.depth, ref.depth, atol=1e-12)


def test_an_opaque_gaussians_rim_is_drawn_out_to_where_its_alpha_passes_the_cut_whatever_the_tiles():
    """An opaque Gaussian (opacity 0.98, 5.5 pixels wide) reaches alpha 1/255 at
    sqrt(2 ln(0.98 * 255)) = 3.32 standard deviations: past a 3-sigma box, so pixels of its rim
    would be drawn or not depending on the tile they fall in. The image must be the hand-computed
    one (every pixel whose alpha passes the cut) at every tile size, as gsplat draws it."""
    cam = camera_on_z(size=48)
    d = as_tensors(dict(means=[[0.03, -0.02, 0.0], [-0.2, 0.15, -0.3]], sigmas=[0.2, 0.05],
                        opacities=[0.98, 0.6], colours=[[0.9, 0.2, 0.1], [0.1, 0.3, 0.9]]))
    expected = hand_image(d["means"].tolist(), d["sigmas"].tolist(), d["opacities"].tolist(),
                          d["colours"].tolist(), cam, [1.0, 1.0, 1.0])
    for tile in (4, 8, 16):
        out = render(d["means"], d["sigmas"], d["opacities"], d["colours"], cam, [1.0, 1.0, 1.0], tile=tile)
        assert (out.color[0] - expected).abs().max().item() < 1e-6, tile


def test_gradients_match_finite_differences():
    cam = camera_on_z(size=12)
    means = torch.tensor([[0.05, 0.02, 0.3], [-0.08, -0.04, -0.2], [0.1, -0.1, 0.0]], dtype=torch.float64)
    log_scales = torch.log(torch.tensor([[0.08, 0.06, 0.1], [0.12, 0.1, 0.09], [0.07, 0.07, 0.05]], dtype=torch.float64))
    quats = torch.tensor([[1.0, 0.1, 0.0, 0.2], [0.9, 0.0, 0.3, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    opacity = torch.tensor([0.7, 0.8, 0.5], dtype=torch.float64)
    colours = torch.tensor([[1.0, 0.2, 0.0], [0.0, 0.3, 1.0], [0.5, 0.5, 0.5]], dtype=torch.float64)
    bg = torch.full((1, 12, 12, 3), 0.9, dtype=torch.float64)
    weights = torch.rand((1, 12, 12, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(m, ls, q, o, c):
        p = project_gaussians(m, covariance_3d(torch.exp(ls), q), cam.c2w, cam.fovy, 12, 12)
        out = splat(p, o, c, bg)
        return (out.color * weights).sum() + out.depth.sum()

    inputs = [x.clone().requires_grad_() for x in (means, log_scales, quats, opacity, colours)]
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_quaternions_give_rotations_and_sh_degree_zero_is_a_constant():
    q = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]])  # 90 degrees about z
    R = quaternion_to_rotation(q)[0]
    assert torch.allclose(R @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    cov = covariance_3d(torch.tensor([[2.0, 1.0, 0.5]]), q)[0]
    assert torch.allclose(cov, torch.diag(torch.tensor([1.0, 4.0, 0.25])), atol=1e-5)
    sh = torch.randn(5, 16, 3)
    dirs = torch.nn.functional.normalize(torch.randn(2, 5, 3), dim=-1)
    assert torch.allclose(sh_colour(sh, dirs, 0), 0.28209479177387814 * sh[:, 0].expand(2, 5, 3))
    # degree 1 along +z adds C1 * sh_2 (Y_1^0 = C1 z)
    z = torch.tensor([0.0, 0.0, 1.0]).expand(1, 5, 3)
    assert torch.allclose(sh_colour(sh, z, 1)[0], 0.28209479177387814 * sh[:, 0] + 0.4886025119029199 * sh[:, 2])


def test_the_gaussians_as_a_field_match_the_sum_of_their_kernels():
    torch.manual_seed(0)
    means = (torch.rand(40, 3, dtype=torch.float64) - 0.5)
    scales = torch.rand(40, 3, dtype=torch.float64) * 0.1 + 0.05
    quats = torch.randn(40, 4, dtype=torch.float64)
    cov = covariance_3d(scales, quats)
    opac = torch.rand(40, dtype=torch.float64)
    values = torch.rand(40, 2, dtype=torch.float64)
    points = (torch.rand(500, 3, dtype=torch.float64) - 0.5) * 1.2
    density, feats = gaussian_field(means, cov, opac, values, points, max_pairs=1000)
    d = points[:, None] - means[None]
    m = torch.einsum("pni,nij,pnj->pn", d, torch.linalg.inv(cov), d)
    w = opac * torch.exp(-0.5 * m) * (m <= 9.0)
    assert torch.allclose(density, w.sum(1), atol=1e-12)
    has = w.sum(1) > 0
    assert has.sum() > 50
    assert torch.allclose(feats[has], (w @ values)[has] / w.sum(1, keepdim=True)[has], atol=1e-10)
