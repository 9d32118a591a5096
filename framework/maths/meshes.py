"""Triangle-mesh maths the mesh parts share: face normals, edges, and the faces around each edge.

vertices [V, 3] float, faces [F, 3] long (counter-clockwise seen from outside)."""

from __future__ import annotations

import torch


def face_normals(vertices: torch.Tensor, faces: torch.Tensor, unit: bool = True) -> torch.Tensor:
    """[F, 3] normals (unit, or with twice the triangle's area as length)."""
    p = vertices[faces]
    n = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1)
    return torch.nn.functional.normalize(n, dim=-1, eps=1e-12) if unit else n


def unique_pairs(pairs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pairs [M, 2] long of vertex indices below ``n`` -> (the distinct pairs [U, 2], sorted, and
    each input pair's row among them [M]): torch.unique(pairs, dim=0), through one 1-D key per
    pair, which is far faster."""
    keys, inverse = torch.unique(pairs[:, 0] * n + pairs[:, 1], return_inverse=True)
    return torch.stack([keys // n, keys % n], dim=1), inverse


def edges_of(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mesh's undirected edges [E, 2] (sorted pairs) and, for each face's three edges
    (v0 v1, v1 v2, v2 v0), its edge number: [F, 3]."""
    pairs = torch.sort(faces[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2), dim=1).values
    edges, inverse = unique_pairs(pairs, int(faces.max()) + 1 if faces.numel() else 1)
    return edges, inverse.reshape(-1, 3)


def face_pairs(faces: torch.Tensor) -> torch.Tensor:
    """[P, 2] the two faces on each edge that exactly two faces share (the interior edges of a
    manifold mesh: all of them when it is closed)."""
    _, edge_ids = edges_of(faces)
    flat = edge_ids.reshape(-1)
    face = torch.arange(faces.shape[0], device=faces.device).repeat_interleave(3)
    order = torch.argsort(flat, stable=True)
    flat, face = flat[order], face[order]
    counts = torch.bincount(flat)
    starts = torch.cumsum(counts, 0) - counts
    two = (counts == 2).nonzero(as_tuple=True)[0]
    return torch.stack([face[starts[two]], face[starts[two] + 1]], dim=1)
