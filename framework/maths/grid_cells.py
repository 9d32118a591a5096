"""The integer cells of axis-aligned boxes, listed one (box, cell) pair per entry.

Binning things on a grid (triangles on pixels, edges on pixels, Gaussians on screen tiles or on
the cells of a 3D grid) starts the same way: each box covers ``size`` cells from ``start`` along
each axis, and every covered cell becomes one entry, without a Python loop over boxes.
"""

from __future__ import annotations

import torch


def box_cells(start: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """start [N, D] long (each box's first cell), size [N, D] long (cells per axis, >= 0; a box with
    a 0 has no cells) -> (owner [P] the box of each entry, cells [P, D]), box by box in order and,
    within a box, the first axis fastest."""
    counts = size.prod(dim=-1)  # [N]
    device = start.device
    owner = torch.repeat_interleave(torch.arange(start.shape[0], device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(owner.shape[0], device=device) - first[owner]  # the entry's index within its box
    sizes = size[owner]
    cells = []
    for axis in range(start.shape[1]):
        cells.append(start[owner, axis] + k % sizes[:, axis])
        k = k // sizes[:, axis]
    return owner, torch.stack(cells, dim=-1)
