"""Alpha compositing along rays: the pure-PyTorch path and the optional nerfacc path.

Both take dense per-ray samples and return the same quantities, so the renderer can switch
between them (``backend: auto | torch | nerfacc``) without any other change:

    alpha_k = 1 - exp(-sigma_k * delta_k)
    T_k     = exp(-sum_{j<k} sigma_j * delta_j)       (exclusive transmittance)
    w_k     = T_k * alpha_k
    colour  = sum_k w_k f_k,  opacity = sum_k w_k,  depth = sum_k w_k t_k

The transmittance is written with an exclusive cumulative sum of optical depths rather than a
cumulative product of (1 - alpha): the same value, but its gradient stays correct where an
alpha is exactly 1 (nerfacc makes the same choice in ``render_transmittance_from_density``).
nerfacc is imported lazily, inside the function, so a missing or CPU-only nerfacc never breaks
the pure path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import ConfigError

BACKENDS = ("auto", "torch", "nerfacc")


class Composited(NamedTuple):
    """weights: [N, S]; color: [N, C]; opacity: [N, 1]; depth: [N, 1]."""

    weights: torch.Tensor
    color: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor


def composite_torch(sigma, delta, t, feats, ray_idx, sample_idx) -> Composited:
    """Composite dense densities with features given only where samples exist.

    sigma, delta, t: [N, S] density, interval length and sample distance (sigma = 0 where no
    sample); feats: [M, C] features of the M samples at (ray_idx[m], sample_idx[m]), both [M]
    long. Features stay packed: a dense [N, S, C] copy would cost more than the lookup itself.
    """
    optical = sigma * delta
    alpha = 1.0 - torch.exp(-optical)
    trans = torch.exp(-(torch.cumsum(optical, dim=-1) - optical))  # exclusive: sum over j < k
    weights = trans * alpha
    w = weights[ray_idx, sample_idx]  # [M]
    contrib = w[:, None] * feats  # float32 weights x features (bfloat16/float16 under autocast)
    color = torch.zeros((sigma.shape[0], feats.shape[-1]), dtype=contrib.dtype, device=feats.device)
    color = color.index_add(0, ray_idx, contrib)
    opacity = weights.sum(dim=1, keepdim=True)
    depth = (weights * t).sum(dim=1, keepdim=True)
    return Composited(weights, color, opacity, depth)


def composite_nerfacc(sigma, delta, t, feats, ray_idx, sample_idx) -> Composited:
    """The same as :func:`composite_torch` through nerfacc 0.5's ``render_weight_from_density``.

    On CUDA the samples go in packed (``ray_indices``), which runs nerfacc's compiled scan
    kernels; on the CPU they go in batched [N, S], where nerfacc computes with plain torch ops
    (its kernels are CUDA-only). Opacity and depth are batched sums, features accumulate packed.
    """
    import nerfacc  # lazy: optional dependency

    n, s = sigma.shape
    t_starts = t - 0.5 * delta  # only t_ends - t_starts = delta enters the weights
    if sigma.is_cuda:
        rays = torch.arange(n, device=sigma.device).repeat_interleave(s)
        packed, _, _ = nerfacc.render_weight_from_density(
            t_starts.reshape(-1), (t_starts + delta).reshape(-1), sigma.reshape(-1), ray_indices=rays, n_rays=n
        )
        weights = packed.view(n, s)
    else:
        weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_starts + delta, sigma)
    color = nerfacc.accumulate_along_rays(weights[ray_idx, sample_idx], feats, ray_indices=ray_idx, n_rays=n)
    opacity = nerfacc.accumulate_along_rays(weights, None)
    depth = nerfacc.accumulate_along_rays(weights, t[..., None])
    return Composited(weights, color, opacity, depth)


def nerfacc_available() -> bool:
    try:
        import nerfacc  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA extension raising at import
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> "nerfacc" on CUDA when nerfacc imports, else "torch" (also under PyTorch's
    deterministic algorithms, whose fixed-order implementations cover the torch path only);
    explicit names are checked."""
    if backend not in BACKENDS:
        raise ConfigError(
            f"renderer backend={backend!r} is not one of {', '.join(BACKENDS)}. Use 'auto' to pick "
            f"nerfacc on CUDA when it is installed and the pure-PyTorch path otherwise."
        )
    if backend == "auto":
        wanted = torch.device(device).type == "cuda" and not torch.are_deterministic_algorithms_enabled()
        return "nerfacc" if wanted and nerfacc_available() else "torch"
    if backend == "nerfacc" and not nerfacc_available():
        raise ConfigError(
            "renderer backend='nerfacc' was requested but `import nerfacc` fails. Install nerfacc "
            "(pip install nerfacc) or set renderer.backend=auto (or torch) to use the pure-PyTorch path."
        )
    return backend


def composite(backend: str, sigma, delta, t, feats, ray_idx, sample_idx) -> Composited:
    """Dispatch to a resolved backend name ("torch" or "nerfacc")."""
    fn = composite_nerfacc if backend == "nerfacc" else composite_torch
    return fn(sigma, delta, t, feats, ray_idx, sample_idx)
