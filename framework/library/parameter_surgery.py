"""Changing the number of rows of trained parameters mid-run, optimizer state included.

Adaptive density control clones, splits and prunes Gaussians: every per-Gaussian parameter
[N, ...] becomes [N', ...]. The optimizer holds the old tensors and per-row state (Adam's moments);
``select_rows`` and ``append_rows`` make the new parameter, put it in the old one's place in the
optimizer's group, and carry the state of the rows that stay (new rows start with zero state, as
a fresh parameter's would; the step count stays, so bias correction is unchanged).
"""

from __future__ import annotations

import torch


def _replace(optimizer: torch.optim.Optimizer | None, old: torch.nn.Parameter, new: torch.nn.Parameter, remap) -> None:
    """Put ``new`` where ``old`` is in ``optimizer`` (if it is there), with state ``remap(tensor)``
    for every per-row state tensor of ``old`` (tensors shaped like ``old``; scalars are kept)."""
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, None)
                if state is not None:
                    optimizer.state[new] = {
                        k: (remap(v) if torch.is_tensor(v) and v.shape == old.shape else v) for k, v in state.items()
                    }
                return


def select_rows(param: torch.nn.Parameter, rows: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> torch.nn.Parameter:
    """A new parameter of ``param``'s rows ``rows`` (a bool mask [N] or indices [N']), in ``param``'s
    place in ``optimizer`` with the same rows of its state."""
    new = torch.nn.Parameter(param.detach()[rows].clone(), requires_grad=param.requires_grad)
    _replace(optimizer, param, new, lambda v: v[rows].clone())
    return new


def append_rows(param: torch.nn.Parameter, rows: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> torch.nn.Parameter:
    """A new parameter of ``param`` followed by ``rows`` [M, ...], in ``param``'s place in
    ``optimizer``; the new rows' state is zero."""
    new = torch.nn.Parameter(torch.cat([param.detach(), rows.to(param)], dim=0), requires_grad=param.requires_grad)
    _replace(optimizer, param, new, lambda v: torch.cat([v, v.new_zeros((rows.shape[0], *v.shape[1:]))], dim=0))
    return new


def reset_rows(param: torch.nn.Parameter, values: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """Overwrite ``param`` with ``values`` (same shape) in place and zero its per-row optimizer
    state, as 3DGS does when it resets opacities."""
    with torch.no_grad():
        param.copy_(values)
    if optimizer is not None and param in optimizer.state:
        state = optimizer.state[param]
        for k, v in state.items():
            if torch.is_tensor(v) and v.shape == param.shape:
                v.zero_()
