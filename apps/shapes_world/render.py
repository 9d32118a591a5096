"""Exact ground-truth renders of the shapes world: batched analytic ray casting in pure PyTorch.

Rays come from ``CameraBatch.rays()`` (at ``supersample`` times the resolution, so sub-pixel
centres are those of the framework's own renderer) and are intersected with the analytic
surfaces of the contract: closed-form roots for the sphere, the cylinder and the cone, slab tests
for the convex polyhedra (cube, pyramid), and sphere tracing of the exact torus SDF (with a
sampled root search for the rays that graze it). Shading is Lambertian with the fixed world
light; the background is white.

Colour enters linearly: with per-sub-pixel coverage a in {0, 1} and shade f,
``pixel = albedo * mean(a * f) + (1 - mean(a))`` (white background), so ``render_shading`` returns
the two colour-free images ``mean(a * f)`` and ``mean(a)`` and any albedo is applied afterwards.
The evaluator relies on that to render 6 geometries instead of 36 objects.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scorelift.data.cameras import CameraBatch
from .world import AMBIENT, COLOURS, DIFFUSE, LIGHT_DIR, SHAPES

# --- the contract's dimensions -------------------------------------------------------------
SPHERE_R = 0.45
CUBE_H = 0.35
CYL_R, CYL_H = 0.35, 0.35
CONE_R, CONE_ZB, CONE_ZA = 0.40, -0.35, 0.40
TORUS_R, TORUS_r = 0.33, 0.13
PYR_H, PYR_ZB, PYR_ZA = 0.38, -0.30, 0.40
# Everything that defines a render, for caches of rendered banks: bump the version whenever the
# renderer's output changes.
RENDER_VERSION = 3
RENDER_KEY = (
    RENDER_VERSION, SPHERE_R, CUBE_H, CYL_R, CYL_H, CONE_R, CONE_ZB, CONE_ZA, TORUS_R, TORUS_r,
    PYR_H, PYR_ZB, PYR_ZA, AMBIENT, DIFFUSE, LIGHT_DIR,
)

# Bounding-sphere radius per shape (index = SHAPES order), with a small margin: rays that miss it
# are culled before the exact test, which roughly halves the work at the training cameras.
_BOUND_R = (
    SPHERE_R,
    CUBE_H * math.sqrt(3.0),
    math.hypot(CYL_R, CYL_H),
    max(math.hypot(CONE_R, CONE_ZB), CONE_ZA),
    TORUS_R + TORUS_r,
    max(math.sqrt(2 * PYR_H**2 + PYR_ZB**2), PYR_ZA),
)
_BOUND_MARGIN = 1e-3

_INF = float("inf")


def _plane_set(normals: list[tuple[float, float, float]], offsets: list[float]) -> list[tuple[float, ...]]:
    """Half-spaces n . p <= d as (nx, ny, nz, d) with unit n (plain floats: scalar kernels are cheap)."""
    planes = []
    for (nx, ny, nz), d in zip(normals, offsets):
        length = math.sqrt(nx * nx + ny * ny + nz * nz)
        planes.append((nx / length, ny / length, nz / length, d / length))
    return planes


_CUBE_PLANES = _plane_set(
    [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)], [CUBE_H] * 6
)
# A pyramid side through the base edge (h, ., zb) and the apex (0, 0, za) has the outward normal
# (za - zb, 0, h) (rotated for the other sides) and offset h * za.
_PYR_SIDE = (PYR_ZA - PYR_ZB, PYR_H)
_PYRAMID_PLANES = _plane_set(
    [
        (_PYR_SIDE[0], 0, _PYR_SIDE[1]),
        (-_PYR_SIDE[0], 0, _PYR_SIDE[1]),
        (0, _PYR_SIDE[0], _PYR_SIDE[1]),
        (0, -_PYR_SIDE[0], _PYR_SIDE[1]),
        (0, 0, -1),
    ],
    [PYR_H * PYR_ZA] * 4 + [-PYR_ZB],
)


# --- ray / surface intersections -------------------------------------------------------------
# Rays are kept as separate contiguous component tensors (structure of arrays), which runs about
# twice as fast on a CPU as slicing [M, 3] tensors. Each function takes origins o = (ox, oy, oz),
# unit directions v = (vx, vy, vz), each [M], in the object frame, and the light l = (lx, ly, lz)
# in the object frame (floats, or [M] tensors when objects are turned), and returns
# (t [M], n_dot_l [M]) of the first hit in front of the origin, t = inf where the ray misses.
# Only n . l is needed for Lambert shading, so no normal vectors are materialised.


class _Nearest:
    """Running choice of the nearest valid hit among candidate surfaces, per ray."""

    def __init__(self, like: torch.Tensor):
        self.t = torch.full_like(like, _INF)
        self.ndl = torch.zeros_like(like)

    def offer(self, t: torch.Tensor, valid: torch.Tensor, ndl) -> None:
        take = valid & (t > 0.0) & (t < self.t)
        self.t = torch.where(take, t, self.t)
        self.ndl = torch.where(take, ndl, self.ndl)


def _quadratic_roots(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor):
    """Real roots of a t^2 + b t + c (inf where there are none), numerically stable.

    Uses q = -(b + sign(b) sqrt(disc)) / 2, t = q / a and c / q, which stays accurate when a -> 0
    (a ray parallel to a cylinder's axis) and avoids cancellation between b and sqrt(disc).
    """
    disc = b * b - 4.0 * a * c
    real = disc >= 0.0
    q = -0.5 * (b + torch.copysign(disc.clamp_min(0.0).sqrt(), b))
    t1 = q / a
    t2 = c / q
    t1 = torch.where(real & t1.isfinite(), t1, _INF)
    t2 = torch.where(real & t2.isfinite(), t2, _INF)
    return t1, t2


def _point(o, v, t):
    """Points o + t v as components; t = inf is clamped so misses give finite (unused) points."""
    t = t.clamp(max=1e6)
    return o[0] + t * v[0], o[1] + t * v[1], o[2] + t * v[2]


def _hit_sphere(o, v, l):
    b = o[0] * v[0] + o[1] * v[1] + o[2] * v[2]  # half the linear coefficient (|v| = 1)
    c = o[0] * o[0] + o[1] * o[1] + o[2] * o[2] - SPHERE_R**2
    disc = b * b - c
    t = -b - disc.clamp_min(0.0).sqrt()  # the near root: the camera is always outside
    t = torch.where((disc >= 0.0) & (t > 0.0), t, _INF)
    px, py, pz = _point(o, v, t)
    return t, (px * l[0] + py * l[1] + pz * l[2]) / SPHERE_R


def _hit_convex_polyhedron(o, v, l, planes):
    """Slab test against the intersection of half-spaces n . p <= d; n . l of the entry plane."""
    t_enter = torch.full_like(o[0], -_INF)
    t_exit = torch.full_like(o[0], _INF)
    ndl = torch.zeros_like(o[0])
    outside = torch.zeros_like(o[0], dtype=torch.bool)
    for nx, ny, nz, d in planes:
        no = nx * o[0] + ny * o[1] + nz * o[2]
        nv = nx * v[0] + ny * v[1] + nz * v[2]
        t = (d - no) / nv  # +-inf or nan where nv == 0: masked by the comparisons below
        entering = (nv < 0.0) & (t > t_enter)
        t_enter = torch.where(entering, t, t_enter)
        ndl = torch.where(entering, nx * l[0] + ny * l[1] + nz * l[2], ndl)
        t_exit = torch.where((nv > 0.0) & (t < t_exit), t, t_exit)
        # A ray parallel to a plane misses the solid if it starts on the wrong side of it.
        outside = outside | ((nv == 0.0) & (no > d))
    hit = (t_enter <= t_exit) & (t_enter > 0.0) & ~outside
    return torch.where(hit, t_enter, _INF), ndl


def _hit_cube(o, v, l):
    return _hit_convex_polyhedron(o, v, l, _CUBE_PLANES)


def _hit_pyramid(o, v, l):
    return _hit_convex_polyhedron(o, v, l, _PYRAMID_PLANES)


def _offer_cap(best: _Nearest, o, v, l, z0: float, radius: float, normal_z: float) -> None:
    """Offer the disc z = z0, x^2 + y^2 <= radius^2 (normal (0, 0, normal_z)) to `best`."""
    t = (z0 - o[2]) / v[2]
    t = torch.where(t.isfinite(), t, _INF)
    px, py, _ = _point(o, v, t)
    best.offer(t, px * px + py * py <= radius * radius, normal_z * l[2])


def _hit_cylinder(o, v, l):
    best = _Nearest(o[0])
    a = v[0] * v[0] + v[1] * v[1]
    b = 2.0 * (o[0] * v[0] + o[1] * v[1])
    c = o[0] * o[0] + o[1] * o[1] - CYL_R**2
    for t in _quadratic_roots(a, b, c):
        px, py, pz = _point(o, v, t)
        best.offer(t, pz.abs() <= CYL_H, (px * l[0] + py * l[1]) / CYL_R)
    _offer_cap(best, o, v, l, CYL_H, CYL_R, 1.0)
    _offer_cap(best, o, v, l, -CYL_H, CYL_R, -1.0)
    return best.t, best.ndl


def _hit_cone(o, v, l):
    # Lateral surface: x^2 + y^2 = k^2 (za - z)^2 with k = base radius / height, for zb <= z <= za
    # (the lower nappe only). Its outward normal is proportional to (x, y, k^2 (za - z)).
    best = _Nearest(o[0])
    k2 = (CONE_R / (CONE_ZA - CONE_ZB)) ** 2
    w = CONE_ZA - o[2]  # za - z at t = 0; za - z(t) = w - t v_z
    a = v[0] * v[0] + v[1] * v[1] - k2 * v[2] * v[2]
    b = 2.0 * (o[0] * v[0] + o[1] * v[1] + k2 * w * v[2])
    c = o[0] * o[0] + o[1] * o[1] - k2 * w * w
    for t in _quadratic_roots(a, b, c):
        px, py, pz = _point(o, v, t)
        nz = k2 * (CONE_ZA - pz)
        norm = torch.sqrt(px * px + py * py + nz * nz).clamp_min(1e-12)
        best.offer(t, (pz >= CONE_ZB) & (pz <= CONE_ZA), (px * l[0] + py * l[1] + nz * l[2]) / norm)
    _offer_cap(best, o, v, l, CONE_ZB, CONE_R, -1.0)
    return best.t, best.ndl


def _torus_sdf(px, py, pz) -> torch.Tensor:
    """Exact signed distance to the torus, components [M] -> [M]."""
    ring = torch.sqrt(px * px + py * py) - TORUS_R
    return torch.sqrt(ring * ring + pz * pz) - TORUS_r


def _torus_first_crossing(o, v, t0, t1, n_samples: int = 256, n_bisect: int = 20, chunk: int = 65536):
    """First t in [t0, t1] where the ray enters the torus (SDF < 0), [M] (inf where it does not).

    For the few rays that sphere tracing leaves crawling along the rim. The SDF is sampled at
    n_samples points (a fixed amount of batched work, unlike the crawl, and GPU-friendly) and the
    first sign change is bisected. A ray could only slip through between two samples where its
    chord is shorter than the spacing (< 1 / 250 of the bounding sphere), i.e. where it dips less
    than ~2e-5 into the tube: far below a pixel.
    """
    out = torch.full_like(t0, _INF)
    frac = torch.linspace(0.0, 1.0, n_samples + 1, device=t0.device, dtype=t0.dtype)[1:]  # t0 is outside
    for a in range(0, t0.shape[0], chunk):  # chunks cap memory at ~chunk * n_samples floats a tensor
        sl = slice(a, a + chunk)
        oc, vc, lo0, hi0 = tuple(x[sl, None] for x in o), tuple(x[sl, None] for x in v), t0[sl], t1[sl]
        ts = lo0[:, None] + (hi0 - lo0)[:, None] * frac  # [m, S]
        inside = _torus_sdf(*(oi + ts * vi for oi, vi in zip(oc, vc))) < 0.0
        entered = inside.any(dim=-1)
        first = inside.to(torch.uint8).argmax(dim=-1)  # index of the first inside sample
        hi = ts.gather(1, first[:, None]).squeeze(1)
        lo = torch.where(first > 0, ts.gather(1, (first - 1).clamp_min(0)[:, None]).squeeze(1), lo0)
        oc, vc = tuple(x[:, 0] for x in oc), tuple(x[:, 0] for x in vc)
        for _ in range(n_bisect):
            mid = 0.5 * (lo + hi)
            in_mid = _torus_sdf(*(oi + mid * vi for oi, vi in zip(oc, vc))) < 0.0
            hi = torch.where(in_mid, mid, hi)
            lo = torch.where(in_mid, lo, mid)
        out[sl] = torch.where(entered, hi, _INF)
    return out


def _hit_torus(o, v, l, t_near, t_far, trace_steps: int = 32, eps: float = 2e-5):
    """Sphere tracing of the exact SDF, finished by a sampled search for the slow rays.

    Tracing from the bounding-sphere entry t_near never overshoots (the SDF is exact) and settles
    most rays within eps of the surface, or past the bounding-sphere exit t_far, in a few steps.
    Rays that graze the rim crawl along it in tiny steps (hundreds of them); after trace_steps the
    rays still marching are finished by _torus_first_crossing instead, so the cost stays bounded.
    """
    t = t_near.clone()
    # The marching rays are kept compacted (index `active` into the inputs, their components and
    # t in `march`); finished ones are dropped every few steps, after writing their t back.
    active = torch.arange(t.shape[0], device=t.device)
    march = (*o, *v, t_near, t_far)
    for step in range(trace_steps):
        ox, oy, oz, vx, vy, vz, ta, tf = march
        dist = _torus_sdf(ox + ta * vx, oy + ta * vy, oz + ta * vz)
        ta = ta + dist
        march = (ox, oy, oz, vx, vy, vz, ta, tf)
        if step % 4 == 3 or step == trace_steps - 1:
            t[active] = ta
            keep = ((dist > eps) & (ta <= tf)).nonzero().squeeze(1)
            active = active[keep]
            march = tuple(x[keep] for x in march)
            if active.numel() == 0:
                break
    if active.numel() > 0:
        ox, oy, oz, vx, vy, vz, ta, tf = march
        t[active] = _torus_first_crossing((ox, oy, oz), (vx, vy, vz), ta, tf)
    px, py, pz = _point(o, v, t)
    hit = (t <= t_far) & (_torus_sdf(px, py, pz) < 1e-3)
    # The outward normal points from the nearest point of the tube's core circle.
    scale = TORUS_R / torch.sqrt(px * px + py * py).clamp_min(1e-12)
    nx, ny = px * (1.0 - scale), py * (1.0 - scale)
    norm = torch.sqrt(nx * nx + ny * ny + pz * pz).clamp_min(1e-12)
    return torch.where(hit, t, _INF), (nx * l[0] + ny * l[1] + pz * l[2]) / norm


def _bounding_interval(o, v, radius: float):
    """Entry/exit t of the bounding sphere [M] each, and whether the ray meets it in front."""
    b = o[0] * v[0] + o[1] * v[1] + o[2] * v[2]
    c = o[0] * o[0] + o[1] * o[1] + o[2] * o[2] - radius * radius
    disc = b * b - c
    sq = disc.clamp_min(0.0).sqrt()
    t_near, t_far = -b - sq, -b + sq
    return t_near.clamp_min(0.0), t_far, (disc > 0.0) & (t_far > 0.0)


_HIT = {"sphere": _hit_sphere, "cube": _hit_cube, "cylinder": _hit_cylinder, "cone": _hit_cone, "pyramid": _hit_pyramid}


def _intersect_shape(shape: int, o, v, l):
    """(hit [M] bool, n . l [M]) of shape index `shape` for object-frame rays (component tuples)."""
    radius = _BOUND_R[shape] + _BOUND_MARGIN
    t_near, t_far, near = _bounding_interval(o, v, radius)
    hit = torch.zeros_like(near)
    ndl = torch.zeros_like(o[0])
    idx = near.nonzero().squeeze(1)
    if idx.numel() == 0:
        return hit, ndl
    # Only rays that meet the bounding sphere go through the exact test.
    oc, vc = tuple(x[idx] for x in o), tuple(x[idx] for x in v)
    lc = tuple(x[idx] if torch.is_tensor(x) else x for x in l)
    if SHAPES[shape] == "torus":
        t, n_dot_l = _hit_torus(oc, vc, lc, t_near[idx], t_far[idx])
    else:
        t, n_dot_l = _HIT[SHAPES[shape]](oc, vc, lc)
    hit[idx] = t.isfinite()
    ndl[idx] = n_dot_l
    return hit, ndl


# --- public API ----------------------------------------------------------------------------


def _as_rotation(rotation_deg, batch: int, device) -> torch.Tensor:
    """Rotation about z per image, radians [B]."""
    rot = torch.as_tensor(rotation_deg, dtype=torch.float32, device=device).reshape(-1)
    if rot.numel() not in (1, batch):
        raise ValueError(f"rotation_deg has {rot.numel()} values for a batch of {batch} images.")
    return torch.deg2rad(rot.expand(batch))


def _check_indices(shape_idx: torch.Tensor, batch: int, name: str, count: int) -> torch.Tensor:
    idx = torch.as_tensor(shape_idx).reshape(-1)
    if idx.numel() != batch:
        raise ValueError(f"{name} has {idx.numel()} entries for {batch} cameras.")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= count):
        raise ValueError(f"{name} must lie in [0, {count}), got values {idx.min().item()}..{idx.max().item()}.")
    return idx.long()


def _rows(components, imgs: torch.Tensor, batch: int) -> tuple:
    """The rays of images `imgs`, flattened: [B, N] components -> [len(imgs) * N]; floats pass."""
    every = imgs.numel() == batch  # all images: a view, no gather
    return tuple(
        (x.reshape(-1) if every else x[imgs].reshape(-1)) if torch.is_tensor(x) else x for x in components
    )


def render_shading(
    shape_idx: torch.Tensor,
    cameras: CameraBatch,
    supersample: int = 2,
    rotation_deg: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour-free ground truth: (shade, alpha), each [B, 1, H, W] on cameras.device.

    shade = mean over sub-pixels of coverage * (0.3 + 0.7 max(0, n . l)), alpha = mean coverage, so
    the RGB image of albedo c is ``c * shade + (1 - alpha)`` (white background).
    shape_idx: [B] indices into SHAPES; rotation_deg: scalar or [B], the object's turn about z.
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}.")
    B, H, W = cameras.batch_size, cameras.height, cameras.width
    device = cameras.device
    shape_idx = _check_indices(shape_idx, B, "shape_idx", len(SHAPES)).to(device)
    theta = _as_rotation(rotation_deg, B, device)
    h, w = H * supersample, W * supersample
    origins, dirs = cameras.with_resolution(h, w).rays()  # [B, h, w, 3]
    o = tuple(origins[..., k].float().reshape(B, h * w) for k in range(3))  # contiguous components
    v = tuple(dirs[..., k].float().reshape(B, h * w) for k in range(3))
    light = LIGHT_DIR

    # Turning the object by +theta equals turning the rays by -theta; the light, fixed in the
    # world, turns with the rays so that n_obj . l_obj = n_world . l_world.
    if bool((theta != 0).any()):
        cos, sin = theta.cos()[:, None], theta.sin()[:, None]
        o = (cos * o[0] + sin * o[1], -sin * o[0] + cos * o[1], o[2])
        v = (cos * v[0] + sin * v[1], -sin * v[0] + cos * v[1], v[2])
        ones = torch.ones(1, h * w, device=device)
        light = (
            (cos * LIGHT_DIR[0] + sin * LIGHT_DIR[1]) * ones,
            (-sin * LIGHT_DIR[0] + cos * LIGHT_DIR[1]) * ones,
            LIGHT_DIR[2],
        )  # [B, h*w] each (x, y), a float (z)

    coverage = torch.zeros(B, h * w, device=device)
    shade = torch.zeros(B, h * w, device=device)
    for s in shape_idx.unique().tolist():
        imgs = (shape_idx == s).nonzero().squeeze(1)
        hit, ndl = _intersect_shape(s, _rows(o, imgs, B), _rows(v, imgs, B), _rows(light, imgs, B))
        hit, ndl = hit.reshape(-1, h * w), ndl.reshape(-1, h * w)
        coverage[imgs] = hit.float()
        shade[imgs] = torch.where(hit, AMBIENT + DIFFUSE * ndl.clamp_min(0.0), 0.0)

    def pool(x):  # [B, h*w] -> [B, 1, H, W], box filter over each pixel's sub-pixels
        return F.avg_pool2d(x.reshape(B, 1, h, w), supersample) if supersample > 1 else x.reshape(B, 1, H, W)

    return pool(shade), pool(coverage)


def albedo_table(device=None) -> torch.Tensor:
    """[6, 3] linear albedos in COLOURS order."""
    return torch.tensor(list(COLOURS.values()), dtype=torch.float32, device=device)


def colourise(shade: torch.Tensor, alpha: torch.Tensor, colour_idx: torch.Tensor) -> torch.Tensor:
    """RGB [B, 3, H, W] from render_shading's (shade, alpha) [B, 1, H, W] and colour indices [B]."""
    albedo = albedo_table(shade.device)[colour_idx.to(shade.device)]  # [B, 3]
    return (albedo[:, :, None, None] * shade + (1.0 - alpha)).clamp(0.0, 1.0)


def render_ground_truth(
    shape_idx: torch.Tensor,
    colour_idx: torch.Tensor,
    cameras: CameraBatch,
    supersample: int = 2,
    rotation_deg: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anti-aliased renders of the objects (SHAPES[shape_idx], COLOURS[colour_idx]).

    shape_idx, colour_idx: [B] long; cameras: B cameras (device = the render's device);
    supersample: s x s rays per pixel, box-filtered; rotation_deg: scalar or [B], turn about z.
    Returns rgb [B, 3, H, W] in [0, 1] (linear, white background) and alpha [B, 1, H, W].
    """
    B = cameras.batch_size
    colour_idx = _check_indices(colour_idx, B, "colour_idx", len(COLOURS))
    shade, alpha = render_shading(shape_idx, cameras, supersample, rotation_deg)
    return colourise(shade, alpha, colour_idx), alpha
