"""gsplat (the maintained CUDA rasteriser of 3D Gaussians) as the splatter's fast path.

gsplat ships Python and CUDA sources and compiles its kernels the first time they are used
(``torch.utils.cpp_extension``, which needs the CUDA toolkit's nvcc and ninja). The build is kept in
``$TORCH_EXTENSIONS_DIR``; where that is unset, scorelift sets it to
``~/.cache/scorelift/torch_extensions`` so that every later run reuses it. ``load_gsplat`` tries
the import and a tiny render once per process and says why it failed; the splatter then draws
with the pure-PyTorch splatter (``scorelift.maths.splat``), the reference both are tested against.

Conventions: gsplat's cameras are OpenCV's (looking along +z, y down) with intrinsics K; ours are
OpenGL's (looking along -z, y up) with a vertical field of view, so the view matrix is
diag(1, -1, -1, 1) @ world-to-camera. gsplat composites over a constant colour per image, ours
over a background image, so gsplat renders without one and the background is added here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

BUILD_DIR_DEFAULT = Path("~/.cache/scorelift/torch_extensions").expanduser()
_FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def gsplat_problems() -> list[str]:
    """Why gsplat cannot run on this machine, told without importing it (empty: it may; whether
    its kernels build is known only when they are first used)."""
    import importlib.util
    import shutil

    problems = []
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is available (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("gsplat") is None:
        problems.append("the gsplat package is not installed (pip install gsplat)")
    if torch.cuda.is_available() and shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        problems.append("no CUDA compiler (nvcc) to build gsplat's kernels on first use")
    return problems


def load_gsplat(device: torch.device):
    """(gsplat's ``rasterization`` function, "") where gsplat imports and draws on ``device``, else
    (False, why). The first call in a fresh build folder compiles the kernels (minutes)."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(BUILD_DIR_DEFAULT))
    try:
        import gsplat  # noqa: F401  (optional: only where the CUDA path is wanted)
        from gsplat import rasterization
    except Exception as exc:  # noqa: BLE001  (ImportError, or a build error raised at import)
        return False, f"import gsplat failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    try:
        start = time.perf_counter()
        means = torch.zeros((1, 3), device=device)
        means[0, 2] = -2.0
        eye = torch.eye(4, device=device)[None]
        K = torch.tensor([[[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]], device=device)
        rasterization(means, torch.tensor([[1.0, 0, 0, 0]], device=device), torch.full((1, 3), 0.1, device=device),
                      torch.ones(1, device=device), torch.ones((1, 3), device=device), _FLIP.to(device)[None] @ eye,
                      K, 8, 8, packed=False)
        torch.cuda.synchronize(device)
        load_gsplat.first_use_s = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001  (a failed JIT build raises RuntimeError or OSError)
        return False, f"its CUDA kernels did not build or run: {type(exc).__name__}: {str(exc).strip()[:300]}"
    return rasterization, ""


def render_gsplat(rasterization, g, colour: torch.Tensor, c2w: torch.Tensor, fovy: torch.Tensor, height: int,
                  width: int, background: torch.Tensor):
    """Draw GaussianSet ``g`` with gsplat: colour [B, N, C] (evaluated per view) or [1, N, C] (the
    same for every view), c2w [B, 4, 4]
    (OpenGL), fovy [B] radians, background [B, H, W, C] -> (color [B, H, W, C], opacity [B, H, W, 1],
    depth [B, H, W, 1], means2d [B, N, 2] (gradient retained), radii [B, N])."""
    B = c2w.shape[0]
    viewmats = _FLIP.to(c2w)[None] @ torch.linalg.inv(c2w)
    focal = 0.5 * height / torch.tan(0.5 * fovy.to(c2w))  # [B]
    K = torch.zeros((B, 3, 3), dtype=c2w.dtype, device=c2w.device)
    K[:, 0, 0], K[:, 1, 1] = focal, focal
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = 0.5 * width, 0.5 * height, 1.0
    if colour.shape[0] == 1:  # one colour per Gaussian for every view (SH degree 0): gsplat takes [N, C]
        colour = colour[0]
    rendered, alpha, meta = rasterization(
        g.means, torch.nn.functional.normalize(g.quats, dim=-1), g.scales, g.opacities, colour, viewmats, K,
        width, height, near_plane=0.01, eps2d=0.3, packed=False, render_mode="RGB+ED")
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"]
    if radii.dim() == 3:  # gsplat >= 1.5 gives a radius per image axis
        radii = radii.amax(dim=-1)
    C = colour.shape[-1]
    color = rendered[..., :C] + (1.0 - alpha) * background
    depth = rendered[..., C:] * alpha  # expected z-depth times opacity (the pure splatter: distances)
    return color, alpha, depth, means2d, radii
