"""Tetrahedral grids and marching tetrahedra, in PyTorch (DMTet's surface extraction).

``tet_grid`` fills a cube with a regular grid of tetrahedra: every grid cell is cut into six
tetrahedra around its main diagonal (the Kuhn subdivision), so that neighbouring cells share
their faces' diagonals and the whole grid is conforming (no hanging edges).

``marching_tets`` extracts the zero level set of a signed distance given at the grid's vertices:
inside is where the value is negative. Each tetrahedron with inside and outside vertices gives
one triangle (one or three inside) or two (two inside); each surface vertex lies on a grid edge
with a sign change, at the linear interpolation of the zero crossing

    p = v_a + s_a / (s_a - s_b) (v_b - v_a)

which is differentiable in the signed distances and the vertex positions (DMTet's deformation).
Surface vertices are shared between the triangles of neighbouring tetrahedra (one per grid edge),
so the mesh is watertight wherever the level set stays inside the grid. Triangles are wound
counter-clockwise seen from outside (normals point from inside to outside).
"""

from __future__ import annotations

import itertools

import torch

from .meshes import unique_pairs

# The Kuhn subdivision of the unit cube: each tetrahedron follows a monotone path from corner 0
# (0, 0, 0) to corner 7 (1, 1, 1) that adds one axis at a time; corner c has offset bits (x, y, z)
# = (c & 1, c >> 1 & 1, c >> 2 & 1).
KUHN_TETS = [[0, 1 << a, (1 << a) | (1 << b), 7] for a, b in itertools.permutations(range(3), 2)]
# The six edges of a tetrahedron, as pairs of its local vertex indices.
TET_EDGES = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])


def tet_grid(resolution: int, radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A cube [-radius, radius]^3 of ``resolution`` cells per axis, each cut into 6 tetrahedra.

    Returns vertices [(R+1)^3, 3] (float32) and tets [6 R^3, 4] (long, indices into vertices)."""
    n = resolution + 1
    axis = torch.linspace(-radius, radius, n)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vertices = torch.stack([x, y, z], dim=-1).reshape(-1, 3)  # index = (k * n + j) * n + i

    def index(i, j, k):
        return (k * n + j) * n + i

    cells = torch.arange(resolution)
    k, j, i = torch.meshgrid(cells, cells, cells, indexing="ij")
    i, j, k = i.reshape(-1), j.reshape(-1), k.reshape(-1)
    corners = torch.stack([index(i + (c & 1), j + (c >> 1 & 1), k + (c >> 2 & 1)) for c in range(8)], dim=-1)
    tets = corners[:, torch.tensor(KUHN_TETS)].reshape(-1, 4)  # [cells * 6, 4]
    return vertices, tets


def marching_tets(vertices: torch.Tensor, tets: torch.Tensor, sdf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The triangle mesh of ``sdf`` = 0 over a tetrahedral grid.

    vertices: [V, 3] (deformed) grid vertex positions; tets: [T, 4] long; sdf: [V] signed
    distance, negative inside. Returns surface vertices [M, 3] (differentiable in ``vertices``
    and ``sdf``) and faces [K, 3] (long, counter-clockwise seen from outside); both empty where the
    level set crosses no tetrahedron."""
    device = vertices.device
    inside = sdf < 0  # [V]
    tet_inside = inside[tets]  # [T, 4]
    count = tet_inside.sum(dim=1)
    crossing = (count > 0) & (count < 4)
    tets = tets[crossing]
    tet_inside = tet_inside[crossing]
    if tets.shape[0] == 0:
        return vertices.new_zeros((0, 3)), torch.zeros((0, 3), dtype=torch.long, device=device)

    # Every edge of the crossing tets, as a sorted pair of global vertex indices; the edges with a
    # sign change get one surface vertex each, shared by every tet around the edge.
    edges = tets[:, TET_EDGES.to(device)]  # [T, 6, 2]
    edges = torch.sort(edges, dim=-1).values
    edge_inside = inside[edges]  # [T, 6, 2]
    cut = edge_inside[..., 0] != edge_inside[..., 1]  # [T, 6]
    unique, edge_id = unique_pairs(edges[cut], vertices.shape[0])  # [M, 2], [cuts]
    s_a, s_b = sdf[unique[:, 0]], sdf[unique[:, 1]]
    v_a, v_b = vertices[unique[:, 0]], vertices[unique[:, 1]]
    weight = (s_a / (s_a - s_b))[:, None]  # in [0, 1]: s_a and s_b have opposite signs (or one is 0)
    surface = v_a + weight * (v_b - v_a)  # [M, 3]

    # Per tet, the surface vertex of each of its six edges (-1 where the edge has no crossing).
    vertex_of_edge = torch.full(cut.shape, -1, dtype=torch.long, device=device)
    vertex_of_edge[cut] = edge_id

    faces = []
    # One inside vertex (or one outside): the three edges at that vertex give one triangle.
    single = (tet_inside.sum(1) == 1) | (tet_inside.sum(1) == 3)
    if single.any():
        t_single = vertex_of_edge[single]
        faces.append(t_single[t_single >= 0].reshape(-1, 3))
    # Two inside (a, b) and two outside (c, d): the quad (a,c) (a,d) (b,d) (b,c), as two triangles.
    double = tet_inside.sum(1) == 2
    if double.any():
        local = tet_inside[double]  # [D, 4] bool
        order = torch.argsort((~local).to(torch.int8), dim=1, stable=True)  # inside first: a, b, c, d
        a, b, c, d = order.unbind(1)
        lookup = edge_index_table(device)  # [4, 4] local pair -> edge number
        rows = vertex_of_edge[double]
        ar = torch.arange(rows.shape[0], device=device)
        ac, ad, bd, bc = (rows[ar, lookup[x, y]] for x, y in ((a, c), (a, d), (b, d), (b, c)))
        faces.append(torch.stack([ac, ad, bd], dim=1))
        faces.append(torch.stack([ac, bd, bc], dim=1))
    faces = torch.cat(faces, dim=0)
    faces = orient_outwards(surface, faces, vertices, tets, tet_inside, single, double)
    return surface, faces


def tet_grid_edges(tets: torch.Tensor, n_vertices: int) -> torch.Tensor:
    """The distinct edges [E, 2] (sorted pairs) of the tetrahedra [T, 4] over ``n_vertices`` vertices."""
    pairs = torch.sort(tets[:, TET_EDGES.to(tets.device)].reshape(-1, 2), dim=1).values
    return unique_pairs(pairs, n_vertices)[0]


def close_inside(sdf: torch.Tensor, tets: torch.Tensor, steps: int, fill: float = 1e-3) -> torch.Tensor:
    """``sdf`` [V] with the inside region (negative) closed morphologically by ``steps`` grid edges:
    grown by ``steps`` edges, then the outside grown back by as many. Outside vertices that the
    closing turns inside get ``-fill``; every other value is kept.

    Why: a surface optimised through renders can hold cracks a cell wide between two inside
    pieces, or pockets a cell deep, where no ray ever looks (the rasteriser shows them edge-on,
    below a pixel). They split what renders as one surface into pieces, and keeping the largest
    piece then drops a visible part. The closing joins inside pieces whose vertices are at most
    2 x ``steps`` edges apart (for 1: one layer of outside vertices between them) and fills
    concavities that narrow; a convex surface is left as it is (the outside grows back over every
    vertex it gained)."""
    if steps <= 0:
        return sdf
    edges = tet_grid_edges(tets, sdf.shape[0])
    a, b = edges[:, 0], edges[:, 1]

    def grow(mask: torch.Tensor) -> torch.Tensor:
        out = mask.clone()
        out[b[mask[a]]] = True
        out[a[mask[b]]] = True
        return out

    inside = sdf < 0
    grown = inside
    for _ in range(steps):
        grown = grow(grown)
    outside = ~grown
    for _ in range(steps):
        outside = grow(outside)
    filled = ~outside & ~inside
    return torch.where(filled, torch.full_like(sdf, -fill), sdf)


def edge_index_table(device) -> torch.Tensor:
    """[4, 4] long: the number (0..5, in TET_EDGES) of the edge between two local vertices."""
    table = torch.full((4, 4), -1, dtype=torch.long)
    for e, (i, j) in enumerate(TET_EDGES.tolist()):
        table[i, j] = table[j, i] = e
    return table.to(device)


def orient_outwards(surface, faces, vertices, tets, tet_inside, single, double) -> torch.Tensor:
    """``faces`` with each triangle's winding flipped where its normal points inside: the normal
    must point from the mean of its tet's inside vertices to the mean of the outside ones."""
    inside_f = tet_inside.to(vertices.dtype)
    corners = vertices.detach()[tets]  # [T, 4, 3]
    inside_mean = (corners * inside_f[..., None]).sum(1) / inside_f.sum(1, keepdim=True)
    outside_mean = (corners * (1 - inside_f)[..., None]).sum(1) / (1 - inside_f).sum(1, keepdim=True)
    direction = outside_mean - inside_mean  # [T, 3]
    # faces were appended as: single tets (one each), then double tets (two each, as two blocks)
    per_face = torch.cat([direction[single], direction[double], direction[double]], dim=0)
    p = surface.detach()[faces]  # [K, 3, 3]
    normal = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1)
    flip = (normal * per_face).sum(-1) < 0
    return torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
