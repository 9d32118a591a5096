"""Gaussian splatting in pure PyTorch (CPU and GPU alike): the reference splatter.

Each 3D Gaussian (mean, covariance from a scale and a rotation) is projected to a 2D Gaussian in
pixel space with the EWA approximation (the projection's Jacobian at the mean), dilated by a
fixed low-pass filter, and alpha-composited front to back over the pixels it reaches, as 3D
Gaussian splatting does (Kerbl et al. 2023):

    alpha_i(p) = min(ALPHA_MAX, opacity_i * exp(-0.5 d^T Sigma2D_i^-1 d)),   d = p - mean2D_i
    colour(p)  = sum_i w_i c_i + T(p) * background,   w_i = alpha_i T_i,   T_i = prod_{j<i} (1 - alpha_j)

with Gaussians sorted by the depth of their centre. Like the reference CUDA rasteriser, an alpha
below ALPHA_MIN is skipped, and compositing stops before the Gaussian that would take the
transmittance below T_MIN (a prefix, so ``w_i`` is kept while ``T_{i+1} >= T_MIN``).

Conventions are the rasteriser's (``scorelift.maths.rasterize``): an OpenGL camera looking
along -z, pixel (i, j) with its centre at x = j + 0.5, y = i + 0.5.

Work is split into square tiles: a Gaussian is paired with every tile that its box (out to where
its alpha falls below ALPHA_MIN, ``reach``) touches, the pairs are sorted by (tile, depth), and
tiles are composited in groups of similar length so that padding stays small; ``max_pairs``
bounds the (pair, pixel) entries held at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .grid_cells import box_cells

ALPHA_MIN = 1.0 / 255.0  # alphas below this are skipped
ALPHA_MAX = 0.99  # one Gaussian never hides everything behind it (and log(1 - alpha) stays finite)
T_MIN = 1e-4  # compositing stops before the transmittance would fall below this
LOW_PASS = 0.3  # pixels^2 added to each projected covariance: no Gaussian is thinner than a pixel
NEAR = 0.01  # Gaussians whose centre is nearer than this (in front of the camera) are not drawn
JACOBIAN_CLAMP = 1.3  # the Jacobian is taken at most 1.3 half-fields of view off-axis, as in 3DGS

# Real spherical harmonics of degree 0..3 (the constants of 3DGS's colour model).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)


def quaternion_to_rotation(q: torch.Tensor) -> torch.Tensor:
    """q [N, 4] (w, x, y, z), any norm -> rotation matrices [N, 3, 3]."""
    q = torch.nn.functional.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


def covariance_3d(scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """scales [N, 3] (standard deviations along the Gaussian's axes), quats [N, 4] -> [N, 3, 3]
    covariances R S S^T R^T."""
    m = quaternion_to_rotation(quats) * scales[:, None, :]  # R S
    return m @ m.transpose(1, 2)


def sh_colour(sh: torch.Tensor, dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """sh [N, K, C] coefficients (K >= (degree + 1)^2), dirs [..., N, 3] unit directions from the
    camera to each Gaussian -> [..., N, C] values sum_k Y_k(dir) sh_k (before 3DGS's +0.5)."""
    out = SH_C0 * sh[:, 0]
    if degree == 0:
        return out.expand(*dirs.shape[:-1], sh.shape[-1])
    x, y, z = (dirs[..., i : i + 1] for i in range(3))
    out = out - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    if degree > 1:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out = (out + SH_C2[0] * xy * sh[:, 4] + SH_C2[1] * yz * sh[:, 5] + SH_C2[2] * (2 * zz - xx - yy) * sh[:, 6]
               + SH_C2[3] * xz * sh[:, 7] + SH_C2[4] * (xx - yy) * sh[:, 8])
        if degree > 2:
            out = (out + SH_C3[0] * y * (3 * xx - yy) * sh[:, 9] + SH_C3[1] * xy * z * sh[:, 10]
                   + SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11] + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                   + SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + SH_C3[5] * z * (xx - yy) * sh[:, 14]
                   + SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15])
    return out


@dataclass
class Projected:
    """N Gaussians seen by B cameras.

    xy: [B, N, 2] pixel coordinates of the centres; depth: [B, N] distance in front of the
    camera (camera z); distance: [B, N] from the camera's centre; conic: [B, N, 3] (a, b, c) of
    the inverse 2D covariance [[a, b], [b, c]]; radius: [B, N] pixels (3 sigma of the major axis;
    0 where the Gaussian is not drawn: behind the near plane or degenerate)."""

    xy: torch.Tensor
    depth: torch.Tensor
    distance: torch.Tensor
    conic: torch.Tensor
    radius: torch.Tensor


def project_gaussians(means: torch.Tensor, cov3d: torch.Tensor, c2w: torch.Tensor, fovy: torch.Tensor,
                      height: int, width: int) -> Projected:
    """means [N, 3], cov3d [N, 3, 3] world; c2w [B, 4, 4]; fovy [B] radians -> Projected.

    The EWA step: with camera coordinates (u, v, w) and depth z = -w, the pixel position is
    x = W/2 + f u / z, y = H/2 - f v / z (f = H / (2 tan(fovy / 2))), whose Jacobian is
    J = [[f/z, 0, f u/z^2], [0, -f/z, -f v/z^2]]; Sigma2D = J R Sigma R^T J^T + LOW_PASS I."""
    dtype = means.dtype
    w2c = torch.linalg.inv(c2w.to(dtype))
    rot = w2c[:, :3, :3]  # [B, 3, 3]
    cam = torch.einsum("bij,nj->bni", rot, means) + w2c[:, None, :3, 3]  # [B, N, 3]
    z = -cam[..., 2]
    in_front = z > NEAR
    safe_z = torch.where(in_front, z, torch.full_like(z, NEAR))
    tan_y = torch.tan(0.5 * fovy.to(dtype))[:, None]  # [B, 1]
    tan_x = tan_y * (width / height)
    focal = 0.5 * height / tan_y  # [B, 1]
    x = 0.5 * width + focal * cam[..., 0] / safe_z
    y = 0.5 * height - focal * cam[..., 1] / safe_z

    # The Jacobian at the centre, its off-axis slope clamped as 3DGS does (a Gaussian far outside
    # the view would otherwise be stretched without bound).
    u = (cam[..., 0] / safe_z).clamp(-JACOBIAN_CLAMP * tan_x, JACOBIAN_CLAMP * tan_x) * safe_z
    v = (cam[..., 1] / safe_z).clamp(-JACOBIAN_CLAMP * tan_y, JACOBIAN_CLAMP * tan_y) * safe_z
    fz = focal / safe_z
    zero = torch.zeros_like(fz.expand_as(safe_z))
    J = torch.stack([
        fz.expand_as(safe_z), zero, fz * u / safe_z,
        zero, -fz.expand_as(safe_z), -fz * v / safe_z,
    ], dim=-1).reshape(*safe_z.shape, 2, 3)  # [B, N, 2, 3]
    M = J @ rot[:, None]  # [B, N, 2, 3]: world -> pixels
    cov2d = M @ cov3d[None] @ M.transpose(-1, -2)  # [B, N, 2, 2]
    a = cov2d[..., 0, 0] + LOW_PASS
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + LOW_PASS
    det = a * c - b * b
    ok = in_front & (det > 0)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    conic = torch.stack([c / safe_det, -b / safe_det, a / safe_det], dim=-1)
    mid = 0.5 * (a + c)
    major = mid + torch.sqrt((mid * mid - safe_det).clamp_min(0.1))
    radius = torch.where(ok, torch.ceil(3.0 * torch.sqrt(major.detach())), torch.zeros_like(major))
    distance = (means[None] - c2w[:, None, :3, 3].to(dtype)).norm(dim=-1)
    return Projected(xy=torch.stack([x, y], dim=-1), depth=z, distance=distance, conic=conic, radius=radius)


def reach(radius: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
    """[B, N] pixels around each centre within which its alpha can reach ALPHA_MIN: every pixel
    where opacity * exp(-0.5 d^T Sigma^-1 d) >= ALPHA_MIN lies within sqrt(2 ln(opacity /
    ALPHA_MIN)) standard deviations (at most 3.33, where even ALPHA_MAX falls below ALPHA_MIN),
    and ``radius`` / 3 >= the major axis's standard deviation. So the image is the same whatever
    the tiling (every pixel a Gaussian's alpha passes ALPHA_MIN at is composited, the rest are
    not), as gsplat draws it (its opacity-aware boxes); a 3-sigma box would leave out pixels of an
    opaque Gaussian's rim, and which of them depends on the tile size.

    radius: [B, N] (``Projected.radius``, 0: not drawn); opacity: [N] -> [B, N]."""
    o = opacity.clamp_min(ALPHA_MIN)[None]
    extend = torch.sqrt(2.0 * torch.log(o / ALPHA_MIN)).clamp_max(3.33)
    return torch.where(opacity[None] >= ALPHA_MIN, torch.ceil(radius * (extend / 3.0)), torch.zeros_like(radius))


@dataclass
class Splatted:
    """color [B, H, W, C] over the background; opacity [B, H, W, 1] (1 - final transmittance);
    depth [B, H, W, 1] (sum_i w_i distance_i, 0 where empty)."""

    color: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor


@torch.no_grad()
def tile_pairs(xy: torch.Tensor, depth: torch.Tensor, radius: torch.Tensor, height: int, width: int,
               tile: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The (Gaussian, tile) pairs to composite, in compositing order.

    xy [B, N, 2], depth [B, N], radius [B, N] -> (gaussian [P] flat index b * N + n, tile_id [P]
    flat index (b * TY + ty) * TX + tx), TY, TX), sorted by tile and, within a tile, front to back."""
    B, N = depth.shape
    TY, TX = -(-height // tile), -(-width // tile)
    lo = ((xy - radius[..., None]) / tile).floor().long()
    hi = ((xy + radius[..., None]) / tile).floor().long()
    lo_x, hi_x = lo[..., 0].clamp(0, TX - 1), hi[..., 0].clamp(0, TX - 1)
    lo_y, hi_y = lo[..., 1].clamp(0, TY - 1), hi[..., 1].clamp(0, TY - 1)
    on_screen = (radius > 0) & (hi[..., 0] >= 0) & (lo[..., 0] < TX) & (hi[..., 1] >= 0) & (lo[..., 1] < TY)
    size = torch.stack([hi_x - lo_x + 1, hi_y - lo_y + 1], dim=-1) * on_screen[..., None]  # [B, N, 2] tiles
    gaussian, cells = box_cells(torch.stack([lo_x, lo_y], dim=-1).reshape(-1, 2), size.reshape(-1, 2))  # [P]
    tx, ty = cells[:, 0], cells[:, 1]
    b = gaussian // N
    tile_id = (b * TY + ty) * TX + tx
    # Front to back within each tile: sort by depth, then stably by tile.
    order = torch.argsort(depth.reshape(-1)[gaussian], stable=True)
    order = order[torch.argsort(tile_id[order], stable=True)]
    return gaussian[order], tile_id[order], TY, TX


def _alphas(pix, mean, conic, opacity, valid):
    """[G, K, Q] alphas (0 where skipped), the kernel exp(power) and whether alpha is clamped,
    with the offsets dx, dy [G, K, Q] (see composite_tiles)."""
    d = pix[:, None, :, :] - mean[:, :, None, :]  # [G, K, Q, 2]
    dx, dy = d[..., 0], d[..., 1]
    a, b, c = (conic[..., i : i + 1] for i in range(3))  # [G, K, 1]
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    kernel = torch.exp(power.clamp_max(0.0))
    raw = opacity[..., None] * kernel
    alpha = raw.clamp_max(ALPHA_MAX)
    skip = (power > 0) | (alpha < ALPHA_MIN) | ~valid[..., None]
    alpha = torch.where(skip, torch.zeros_like(alpha), alpha)
    live = ~skip & (raw < ALPHA_MAX)  # where alpha moves with the power and the opacity
    return alpha, kernel, live, dx, dy


def _composite(alpha: torch.Tensor):
    """alpha [G, K, Q] -> (alpha' (alpha where compositing has not stopped, else 0), T_k before
    each Gaussian, the final transmittance [G, Q])."""
    log_keep = torch.log1p(-alpha)
    after = torch.cumsum(log_keep, dim=1)  # log T_{k+1}
    used = after >= math.log(T_MIN)  # a prefix along K
    alpha = alpha * used
    log_keep = log_keep * used
    before = torch.exp(after - log_keep)  # T_k (1 where nothing is in front)
    return alpha, before, torch.exp(log_keep.sum(dim=1))


class _CompositeTiles(torch.autograd.Function):
    """Front-to-back compositing with a hand-written backward pass: autograd through the
    cumulative product keeps a dozen [G, K, Q] tensors; this one recomputes the alphas and keeps
    none. With L = sum_k alpha_k T_k v_k + T_final g_T (v_k = colour_k . g_colour + dist_k g_depth):
    dL/dalpha_k = T_k v_k - S_k / (1 - alpha_k), S_k = sum_{j > k} alpha_j T_j v_j + T_final g_T."""

    @staticmethod
    def forward(ctx, pix, mean, conic, opacity, colour, dist, valid):
        alpha, _, _, _, _ = _alphas(pix, mean, conic, opacity, valid)
        alpha, before, final = _composite(alpha)
        weights = alpha * before
        ctx.save_for_backward(pix, mean, conic, opacity, colour, dist, valid)
        return (torch.einsum("gkq,gkc->gqc", weights, colour), final,
                torch.einsum("gkq,gk->gq", weights, dist))

    @staticmethod
    def backward(ctx, g_colour, g_T, g_depth):
        pix, mean, conic, opacity, colour, dist, valid = ctx.saved_tensors
        alpha, kernel, live, dx, dy = _alphas(pix, mean, conic, opacity, valid)
        alpha, before, final = _composite(alpha)
        weights = alpha * before  # [G, K, Q]
        v = torch.einsum("gkc,gqc->gkq", colour, g_colour) + dist[..., None] * g_depth[:, None, :]
        wv = weights * v
        behind = wv.sum(dim=1, keepdim=True) - torch.cumsum(wv, dim=1) + (final * g_T)[:, None, :]
        d_alpha = before * v - behind / (1.0 - alpha)
        d_alpha = torch.where(live & (alpha > 0), d_alpha, torch.zeros_like(d_alpha))
        d_power = d_alpha * alpha  # d alpha / d power = alpha where it is not clamped
        d_opacity = (d_alpha * kernel).sum(dim=2)
        p, q = d_power * dx, d_power * dy
        d_a = -0.5 * (p * dx).sum(dim=2)
        d_b = -(p * dy).sum(dim=2)
        d_c = -0.5 * (q * dy).sum(dim=2)
        a, b, c = conic.unbind(-1)  # [G, K]
        # power depends on the centre through dx = px - mean_x: d power / d mean_x = a dx + b dy, and
        # the conic is constant over a Gaussian's pixels, so the sums over pixels come first
        p_sum, q_sum = p.sum(dim=2), q.sum(dim=2)
        d_mx = a * p_sum + b * q_sum
        d_my = b * p_sum + c * q_sum
        d_colour = torch.einsum("gkq,gqc->gkc", weights, g_colour)
        d_dist = (weights * g_depth[:, None, :]).sum(dim=2)
        return (None, torch.stack([d_mx, d_my], dim=-1), torch.stack([d_a, d_b, d_c], dim=-1), d_opacity,
                d_colour, d_dist, None)


def composite_tiles(pix: torch.Tensor, mean: torch.Tensor, conic: torch.Tensor, opacity: torch.Tensor,
                    colour: torch.Tensor, dist: torch.Tensor, valid: torch.Tensor):
    """Front-to-back compositing of K Gaussians (padded) over the pixels of G tiles.

    pix [G, Q, 2] pixel centres; mean [G, K, 2], conic [G, K, 3], opacity [G, K], colour [G, K, C],
    dist [G, K]; valid [G, K] (False: padding) -> (colour [G, Q, C], transmittance [G, Q],
    depth [G, Q]). Differentiable in mean, conic, opacity, colour and dist."""
    return _CompositeTiles.apply(pix, mean, conic, opacity, colour, dist, valid)


def splat(projected: Projected, opacity: torch.Tensor, colour: torch.Tensor, background: torch.Tensor,
          tile: int = 4, max_pairs: int = 1 << 22) -> Splatted:
    """Composite N projected Gaussians over ``background``.

    projected: Projected of B cameras; opacity [N] in [0, 1]; colour [N, C] or [B, N, C];
    background [B, H, W, C] -> Splatted. Differentiable in the projection (centres, conics),
    opacities and colours; the tiles and the depth order are not (they are where, not what)."""
    B, H, W, C = background.shape
    N = opacity.shape[0]
    dtype = background.dtype
    gaussian, tile_id, TY, TX = tile_pairs(projected.xy.detach(), projected.depth.detach(),
                                           reach(projected.radius, opacity.detach()), H, W, tile)
    n_tiles = B * TY * TX
    counts = torch.bincount(tile_id, minlength=n_tiles)  # [T]
    starts = torch.cumsum(counts, 0) - counts

    colour = colour.expand(B, N, C) if colour.dim() == 3 else colour[None].expand(B, N, C)
    flat_xy = projected.xy.reshape(B * N, 2)
    flat_conic = projected.conic.reshape(B * N, 3)
    flat_opacity = opacity[None].expand(B, N).reshape(B * N)
    flat_colour = colour.reshape(B * N, C)
    flat_dist = projected.distance.reshape(B * N)

    # Pixel centres of every tile: [T, Q, 2] (Q = tile^2; a tile may hang over the image's edge).
    q = torch.arange(tile, device=background.device, dtype=dtype) + 0.5
    qy, qx = torch.meshgrid(q, q, indexing="ij")
    t = torch.arange(n_tiles, device=background.device)
    ty, tx = (t // TX) % TY, t % TX
    pix = torch.stack([qx.reshape(-1)[None] + (tx * tile)[:, None].to(dtype),
                       qy.reshape(-1)[None] + (ty * tile)[:, None].to(dtype)], dim=-1)  # [T, Q, 2]

    Q = tile * tile
    out_colour = background.new_zeros((n_tiles, Q, C))
    out_T = background.new_ones((n_tiles, Q))
    out_depth = background.new_zeros((n_tiles, Q))
    # Tiles longest first, in groups whose padded (pair, pixel) entries stay under max_pairs.
    by_length = torch.argsort(counts, descending=True)
    lengths = counts[by_length].tolist()
    i = 0
    pieces = []
    while i < n_tiles and lengths[i] > 0:
        K = lengths[i]
        g = max(1, min(n_tiles - i, max_pairs // max(1, K * Q)))
        group = by_length[i : i + g]
        group = group[counts[group] > 0]
        i += g
        k = torch.arange(K, device=background.device)
        valid = k[None] < counts[group][:, None]  # [G, K]
        idx = gaussian[(starts[group][:, None] + k[None]).clamp_max(max(gaussian.shape[0] - 1, 0))]  # [G, K]
        col, T, dep = composite_tiles(pix[group], flat_xy[idx], flat_conic[idx], flat_opacity[idx],
                                      flat_colour[idx].to(dtype), flat_dist[idx], valid)
        pieces.append((group, col, T, dep))
    if pieces:
        groups = torch.cat([p[0] for p in pieces])
        out_colour = out_colour.index_put((groups,), torch.cat([p[1] for p in pieces]))
        out_T = out_T.index_put((groups,), torch.cat([p[2] for p in pieces]))
        out_depth = out_depth.index_put((groups,), torch.cat([p[3] for p in pieces]))

    def to_image(x: torch.Tensor) -> torch.Tensor:  # [T, Q, D] -> [B, H, W, D]
        D = x.shape[-1]
        x = x.reshape(B, TY, TX, tile, tile, D).permute(0, 1, 3, 2, 4, 5).reshape(B, TY * tile, TX * tile, D)
        return x[:, :H, :W]

    T_img = to_image(out_T[..., None])
    color = to_image(out_colour) + T_img * background
    return Splatted(color=color, opacity=1.0 - T_img, depth=to_image(out_depth[..., None]))


def cell_pairs(lo: torch.Tensor, hi: torch.Tensor, origin: torch.Tensor, cell: float, dims: int):
    """The (box, cell) pairs of N axis-aligned boxes on a grid of dims^3 cells of size ``cell``
    from ``origin`` [3]: lo, hi [N, 3] -> (box [P], cell index [P] (flat, x fastest)), boxes
    clipped to the grid, sorted by cell."""
    a = ((lo - origin) / cell).floor().long().clamp(0, dims - 1)
    b = ((hi - origin) / cell).floor().long().clamp(0, dims - 1)
    box, cells = box_cells(a, b - a + 1)
    cell_id = (cells[:, 2] * dims + cells[:, 1]) * dims + cells[:, 0]
    order = torch.argsort(cell_id, stable=True)
    return box[order], cell_id[order]


@torch.no_grad()
def gaussian_field(means: torch.Tensor, cov3d: torch.Tensor, peaks: torch.Tensor, values: torch.Tensor,
                   points: torch.Tensor, max_pairs: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussians as a field: at each point, density sum_i p_i exp(-0.5 d_i^T Sigma_i^-1 d_i)
    (d_i = point - mean_i, p_i the peak, each Gaussian cut at 3 sigma of its major axis) and the
    density-weighted mean of ``values``.

    means [N, 3], cov3d [N, 3, 3], peaks [N], values [N, C], points [P, 3] -> (density [P],
    values [P, C]; 0 where no Gaussian reaches). Gaussians are binned on a grid of cells about
    as large as a typical Gaussian, so each point meets only those of its own cell."""
    P, C = points.shape[0], values.shape[1]
    density = points.new_zeros(P)
    out = points.new_zeros((P, C))
    if means.shape[0] == 0 or P == 0:
        return density, out
    reach = 3.0 * torch.sqrt(torch.linalg.eigvalsh(cov3d)[:, -1].clamp_min(0.0))  # [N] world
    lo_all = torch.minimum(points.amin(0), (means - reach[:, None]).amin(0))
    hi_all = torch.maximum(points.amax(0), (means + reach[:, None]).amax(0))
    span = float((hi_all - lo_all).max()) + 1e-6
    cell = max(2.0 * float(reach.median()), span / 128)
    dims = max(1, min(128, int(span / cell) + 1))
    cell = span / dims
    box, cell_id = cell_pairs(means - reach[:, None], means + reach[:, None], lo_all, cell, dims)
    counts = torch.bincount(cell_id, minlength=dims ** 3)
    starts = torch.cumsum(counts, 0) - counts
    q = ((points - lo_all) / cell).floor().long().clamp(0, dims - 1)
    point_cell = (q[:, 2] * dims + q[:, 1]) * dims + q[:, 0]
    k_of = counts[point_cell]  # [P] Gaussians to test per point
    precision = torch.linalg.inv(cov3d)  # [N, 3, 3]
    by_k = torch.argsort(k_of, descending=True)
    i = 0
    while i < P:
        K = int(k_of[by_k[i]])
        if K == 0:
            break
        g = max(1, min(P - i, max_pairs // K))
        idx = by_k[i : i + g]
        i += g
        k = torch.arange(K, device=points.device)
        valid = k[None] < k_of[idx][:, None]  # [g, K]
        which = box[(starts[point_cell[idx]][:, None] + k[None]).clamp_max(box.shape[0] - 1)]  # [g, K]
        d = points[idx][:, None] - means[which]  # [g, K, 3]
        m = torch.einsum("gki,gkij,gkj->gk", d, precision[which], d)
        w = peaks[which] * torch.exp(-0.5 * m) * (valid & (m <= 9.0))
        density[idx] = w.sum(1)
        out[idx] = torch.einsum("gk,gkc->gc", w, values[which]) / w.sum(1, keepdim=True).clamp_min(1e-12)
    return density, out
