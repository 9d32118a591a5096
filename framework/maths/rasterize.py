"""Triangle rasterisation in pure PyTorch: projection, coverage with a depth test, perspective-
correct barycentrics, and antialiased silhouettes that pass gradients to the vertices.

The pipeline of a differentiable rasteriser (the split is nvdiffrast's, Laine et al. 2020):

1. ``project``: world vertices -> pixel coordinates and view depth, for a ``CameraBatch``
   (OpenGL camera, looking along -z; pixel (i, j) has its centre at x = j + 0.5, y = i + 0.5,
   exactly where ``CameraBatch.rays`` shoots its rays).
2. ``rasterize`` (no gradient): which triangle is nearest at each pixel centre. Each triangle is
   tested only against the pixel centres inside its screen bounding box, so the work grows with
   the covered area, not with pixels x triangles.
3. ``barycentrics``: the perspective-correct barycentric coordinates of each covered pixel centre
   in its triangle, differentiable in the projected vertices: attributes interpolated with them
   pass gradients to the vertices through the interior of each triangle.
4. ``antialias``: coverage alone is a step function of the vertex positions, with no gradient at
   the silhouette. Where two horizontally or vertically adjacent pixels see different triangles
   and a silhouette edge of the mesh (``silhouette_edges``: an edge between a face turned towards
   the camera and one turned away, or an edge of one face only) crosses the segment between their
   centres, at a fraction s of the way from the front pixel's centre (s in [0, 1)), the pixel on
   the side the edge does not reach is blended towards the other by the area the edge moves
   across its half of the segment: the far pixel gains (s - 1/2) of the front colour when s >
   1/2, the front pixel gives up (1/2 - s) of its colour when s < 1/2. The blend is linear in s,
   and s is differentiable in the edge's vertices: moving a silhouette edge by one pixel changes
   the crossed pixels' colour by the colour difference across the edge. Pairs inside one surface
   cross no silhouette edge and are left alone.
"""

from __future__ import annotations

import torch

from .grid_cells import box_cells

NEAR = 1e-3  # triangles with a vertex closer than this to the camera plane are not drawn


def project(vertices: torch.Tensor, c2w: torch.Tensor, fovy: torch.Tensor, height: int, width: int):
    """vertices [V, 3] world; c2w [B, 4, 4]; fovy [B] radians -> (xy [B, V, 2] pixel coordinates
    (x right, y down), z [B, V] depth in front of the camera)."""
    w2c = torch.linalg.inv(c2w.to(vertices.dtype))
    cam = torch.einsum("bij,vj->bvi", w2c[:, :3, :3], vertices) + w2c[:, None, :3, 3]  # [B, V, 3]
    z = -cam[..., 2]
    focal = (0.5 * height / torch.tan(0.5 * fovy.to(vertices.dtype)))[:, None]  # [B, 1]
    safe_z = torch.where(z.abs() < NEAR, torch.full_like(z, NEAR), z)
    x = 0.5 * width + focal * cam[..., 0] / safe_z
    y = 0.5 * height - focal * cam[..., 1] / safe_z
    return torch.stack([x, y], dim=-1), z


def edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of (a, b, p): [..., 2] each -> [...]."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def screen_barycentrics(tri: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """tri [..., 3, 2] screen vertices, p [..., 2] -> [..., 3] barycentric coordinates of p
    (all >= 0 inside, whatever the winding; any value where the triangle has no area)."""
    area = edge(tri[..., 0, :], tri[..., 1, :], tri[..., 2, :])
    safe = torch.where(area.abs() < 1e-20, torch.full_like(area, 1e-20), area)
    w0 = edge(tri[..., 1, :], tri[..., 2, :], p)
    w1 = edge(tri[..., 2, :], tri[..., 0, :], p)
    w2 = edge(tri[..., 0, :], tri[..., 1, :], p)
    return torch.stack([w0, w1, w2], dim=-1) / safe[..., None]


@torch.no_grad()
def rasterize(xy: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, height: int, width: int,
              max_pairs: int = 1 << 22) -> torch.Tensor:
    """The nearest triangle at every pixel centre: xy [B, V, 2], z [B, V], faces [F, 3] long ->
    face_id [B, H, W] long, -1 where no triangle covers the centre. A centre on an edge shared by
    two triangles goes to the nearer one (the lower index at equal depth). ``max_pairs`` bounds
    the (triangle, pixel) candidates held at once (memory), not the result."""
    B = xy.shape[0]
    device = xy.device
    face_id = torch.full((B, height * width), -1, dtype=torch.long, device=device)
    if faces.shape[0] == 0:
        return face_id.reshape(B, height, width)
    for b in range(B):
        tri, tz = xy[b][faces], z[b][faces]  # [F, 3, 2], [F, 3]
        lo, hi = tri.amin(dim=1), tri.amax(dim=1)  # [F, 2]
        # pixel centres c + 0.5 inside [lo, hi]: c from ceil(lo - 0.5) to floor(hi - 0.5)
        c0 = torch.ceil(lo - 0.5).clamp_min(0).long()
        c1 = torch.minimum(torch.floor(hi - 0.5).long(), torch.tensor([width - 1, height - 1], device=device))
        drawable = (tz > NEAR).all(dim=1) & (edge(tri[:, 0], tri[:, 1], tri[:, 2]).abs() > 1e-12)
        size = (c1 - c0 + 1).clamp_min(0) * drawable[:, None]  # [F, 2] columns, rows (none if not drawn)
        counts = size.prod(dim=-1)
        best_z = torch.full((height * width,), float("inf"), dtype=z.dtype, device=device)
        best_f = face_id[b]
        # faces in chunks whose candidate pairs fit max_pairs (one face may exceed it alone)
        ends = torch.cumsum(counts, 0)
        start = 0
        while start < faces.shape[0]:
            base = ends[start - 1] if start else 0
            stop = int(torch.searchsorted(ends, base + max_pairs, right=True))
            stop = max(stop, start + 1)
            _merge_chunk(tri, tz, c0, size, start, stop, width, best_z, best_f)
            start = stop
    return face_id.reshape(B, height, width)


def _merge_chunk(tri, tz, c0, size, start, stop, width, best_z, best_f) -> None:
    """Rasterise faces [start, stop) (each over the ``size`` [F, 2] pixels from ``c0``) and keep,
    per pixel, the nearer of them and of what ``best_z`` / ``best_f`` hold (updated in place)."""
    local, cells = box_cells(c0[start:stop], size[start:stop])  # [P] face (from start), [P, 2] pixel
    if local.numel() == 0:
        return
    local = local + start
    px, py = cells[:, 0], cells[:, 1]
    centre = torch.stack([px, py], dim=-1).to(tri.dtype) + 0.5
    bary = screen_barycentrics(tri[local], centre)  # [P, 3]
    inside = (bary >= 0).all(dim=-1)
    inv_z = (bary / tz[local]).sum(-1)
    depth = 1.0 / inv_z
    inside &= inv_z > 0
    local, depth, pixel = local[inside], depth[inside], (py * width + px)[inside]
    chunk_z = torch.full_like(best_z, float("inf")).scatter_reduce(0, pixel, depth, "amin")
    # among the candidates at a pixel's nearest depth, the lowest face index
    at_min = depth == chunk_z[pixel]
    chunk_f = torch.full_like(best_f, torch.iinfo(torch.long).max)
    chunk_f = chunk_f.scatter_reduce(0, pixel[at_min], local[at_min], "amin")
    nearer = chunk_z < best_z  # earlier chunks hold lower indices, so they win ties
    best_z[nearer] = chunk_z[nearer]
    best_f[nearer] = chunk_f[nearer]


def barycentrics(xy: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor):
    """The covered pixels and their perspective-correct barycentrics, differentiable in ``xy``
    and ``z``: face_id [B, H, W] -> (index (b, i, j) [3 x n] of the covered pixels, faces [n] of
    them, bary [n, 3] (summing to 1), depth [n] view depth)."""
    b, i, j = (face_id >= 0).nonzero(as_tuple=True)
    f = face_id[b, i, j]
    corners = faces[f]  # [n, 3]
    tri = xy[b[:, None], corners]  # [n, 3, 2]
    tz = z[b[:, None], corners]  # [n, 3]
    centre = torch.stack([j, i], dim=-1).to(xy.dtype) + 0.5
    screen = screen_barycentrics(tri, centre)
    weighted = screen / tz
    inv_z = weighted.sum(-1, keepdim=True)
    return (b, i, j), f, weighted / inv_z, 1.0 / inv_z[:, 0]


def silhouette_edges(vertices: torch.Tensor, faces: torch.Tensor, origins: torch.Tensor) -> list[torch.Tensor]:
    """Per camera, the mesh edges on its silhouette: the edges of one face only, and the edges
    between a face turned towards the camera and one turned away. vertices [V, 3], faces [F, 3],
    origins [B, 3] camera positions -> B tensors [E_b, 2] of vertex indices."""
    from .meshes import edges_of, face_normals

    if faces.shape[0] == 0:
        return [faces.new_zeros((0, 2)) for _ in range(origins.shape[0])]
    edges, edge_ids = edges_of(faces)
    normals = face_normals(vertices.detach(), faces, unit=False)  # [F, 3]
    centroids = vertices.detach()[faces].mean(dim=1)
    flat = edge_ids.reshape(-1)
    count = torch.bincount(flat, minlength=edges.shape[0])
    out = []
    for origin in origins:
        towards = ((normals * (origin - centroids)).sum(-1) > 0).long()  # [F]
        per_edge = torch.zeros(edges.shape[0], dtype=torch.long, device=faces.device)
        per_edge = per_edge.index_add(0, flat, towards.repeat_interleave(3))
        # boundary (one face), or a face each way (two faces, one towards the camera)
        mask = (count == 1) | ((count == 2) & (per_edge == 1))
        out.append(edges[mask])
    return out


def antialias(color: torch.Tensor, opacity: torch.Tensor, depth: torch.Tensor, face_id: torch.Tensor,
              xy: torch.Tensor, edges: list[torch.Tensor], max_pairs: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend the pixels across silhouette edges (see the module docstring).

    color [B, H, W, C], opacity [B, H, W, 1], depth [B, H, W] (any value where empty), face_id
    [B, H, W], xy [B, V, 2] (differentiable), edges: per image the silhouette edges [E_b, 2]
    (``silhouette_edges``) -> (color, opacity). A pair of adjacent pixels that see different
    triangles is blended where a silhouette edge crosses the segment between their centres (the
    crossing nearest the front pixel); pairs within one surface cross no silhouette edge."""
    signal = torch.cat([color, opacity], dim=-1)  # [B, H, W, C + 1], blended together
    delta = torch.zeros_like(signal)
    for axis in (1, 2):  # vertical pairs (rows i, i + 1), then horizontal (columns j, j + 1)
        n = face_id.shape[axis] - 1
        fa, fb = face_id.narrow(axis, 0, n), face_id.narrow(axis, 1, n)
        da, db = depth.narrow(axis, 0, n), depth.narrow(axis, 1, n)
        a_front = (fb < 0) | ((fa >= 0) & (da <= db))  # the only covered one, or the nearer
        step = torch.tensor([1, 0] if axis == 1 else [0, 1], device=face_id.device)  # (di, dj) to the second
        for b in range(face_id.shape[0]):
            i, j = (fa[b] != fb[b]).nonzero(as_tuple=True)
            e = edges[b]
            if i.numel() == 0 or e.shape[0] == 0:
                continue
            first = torch.stack([i, j], dim=-1)
            front_first = a_front[b, i, j][:, None]
            front = torch.where(front_first, first, first + step)
            back = torch.where(front_first, first + step, first)
            s = edge_crossings(front.flip(-1).to(xy.dtype) + 0.5, back.flip(-1).to(xy.dtype) + 0.5,
                               xy[b, e[:, 0]], xy[b, e[:, 1]], max_pairs)
            ok = s < 1.0
            if not ok.any():
                continue
            front, back, s = front[ok], back[ok], s[ok]
            sf = signal[b, front[:, 0], front[:, 1]]
            sb = signal[b, back[:, 0], back[:, 1]]
            reach = (s - 0.5)[:, None]
            to_back = torch.where(reach > 0, reach * (sf - sb), torch.zeros_like(sf))
            to_front = torch.where(reach < 0, -reach * (sb - sf), torch.zeros_like(sf))
            index = torch.full_like(front[:, 0], b)
            delta = delta.index_put((index, back[:, 0], back[:, 1]), to_back, accumulate=True)
            delta = delta.index_put((index, front[:, 0], front[:, 1]), to_front, accumulate=True)
    out = signal + delta
    return out[..., :-1], out[..., -1:]


def edge_crossings(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, max_pairs: int) -> torch.Tensor:
    """For each segment a -> b between two adjacent pixel centres ([P, 2] each), the smallest s in
    [0, 1) at which it crosses one of the segments c -> d ([E, 2] each), or 2 where it crosses none:
    [P], differentiable in c and d.

    Only the edges whose screen bounding box touches the pixel of a or of b can cross the segment
    (it lies inside those two pixels), so each edge is listed under the pixels its box covers and
    each segment is tested against the edges listed under its two pixels: the work follows the
    edges' lengths in pixels, not segments x edges."""
    device = a.device
    result = torch.full((a.shape[0],), 2.0, dtype=c.dtype, device=device)
    if a.shape[0] == 0 or c.shape[0] == 0:
        return result
    with torch.no_grad():
        lo = torch.floor(torch.minimum(c, d)).long()  # [E, 2] pixel columns / rows the box covers
        hi = torch.floor(torch.maximum(c, d)).long()
        span = hi - lo + 1
        keep = span.prod(dim=-1) <= max_pairs  # a degenerate huge edge (behind the camera) covers no real pixel here
        edge, cells = box_cells(lo, span * keep[:, None])
        width = int(max(a[:, 0].max().item(), b[:, 0].max().item())) + 2
        key = cells[:, 1] * width + cells[:, 0]  # [L] a (pixel, edge) list ...
        order = torch.argsort(key)
        key, edge = key[order], edge[order]  # ... sorted by pixel
        pair_rows, pair_edges = [], []
        for centre in (a, b):
            pixel = torch.floor(centre).long()
            pkey = pixel[:, 1] * width + pixel[:, 0]
            start = torch.searchsorted(key, pkey)
            stop = torch.searchsorted(key, pkey, right=True)
            n = stop - start
            rows = torch.repeat_interleave(torch.arange(a.shape[0], device=device), n)
            base = torch.repeat_interleave(start - (torch.cumsum(n, 0) - n), n)
            pair_rows.append(rows)
            pair_edges.append(edge[base + torch.arange(rows.shape[0], device=device)])
        rows, edges = torch.cat(pair_rows), torch.cat(pair_edges)
    if rows.numel() == 0:
        return result
    ab = (b - a)[rows]
    cd = (d - c)[edges]
    ca = c[edges] - a[rows]
    denom = ab[:, 0] * cd[:, 1] - ab[:, 1] * cd[:, 0]  # cross(ab, cd)
    safe = torch.where(denom.abs() < 1e-12, torch.ones_like(denom), denom)
    s = (ca[:, 0] * cd[:, 1] - ca[:, 1] * cd[:, 0]) / safe
    t = (ca[:, 0] * ab[:, 1] - ca[:, 1] * ab[:, 0]) / safe
    hit = (denom.abs() >= 1e-12) & (s >= 0) & (s < 1) & (t >= 0) & (t <= 1)
    s = torch.where(hit, s, torch.full_like(s, 2.0))
    return result.scatter_reduce(0, rows, s, "amin")
