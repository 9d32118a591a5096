"""Writing images, grids and videos of renders."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import temp_path

log = logging.getLogger(__name__)

def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] floats in [0, 1] (C = 1 or 3) -> [B, H, W, 3] uint8."""
    images = images.detach().float().clamp(0, 1).cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (images.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def make_grid(images: torch.Tensor, n_cols: int | None = None, pad: int = 2) -> torch.Tensor:
    """[B, C, H, W] -> [C, rows*(H+pad)-pad, cols*(W+pad)-pad], white padding."""
    B, C, H, W = images.shape
    n_cols = n_cols or math.ceil(math.sqrt(B))
    n_rows = math.ceil(B / n_cols)
    grid = torch.ones(C, n_rows * (H + pad) - pad, n_cols * (W + pad) - pad, dtype=images.dtype)
    for k in range(B):
        r, c = divmod(k, n_cols)
        grid[:, r * (H + pad) : r * (H + pad) + H, c * (W + pad) : c * (W + pad) + W] = images[k].cpu()
    return grid


def write_png(path: str | Path, image: torch.Tensor) -> None:
    """image: [C, H, W] in [0, 1] -> 8-bit PNG (values stored as they are, no sRGB curve), written
    atomically: a reader (an image viewer keeping preview.png open) sees the old image or the new
    one, never half of one."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        iio.imwrite(tmp, to_uint8(image[None])[0], extension=".png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_video(path: str | Path, frames: torch.Tensor, fps: int = 20) -> Path:
    """frames: [N, 3, H, W] in [0, 1] -> H.264 mp4 (imageio-ffmpeg), upscaled to at least 256
    pixels by nearest neighbour so small renders stay visible in players. Without imageio-ffmpeg
    a GIF is written next to ``path`` instead, at the frames' own size (a GIF's size grows with
    its pixels, and viewers scale it anyway); returns the path written."""
    import imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        gif = path.with_suffix(".gif")
        log.warning("imageio-ffmpeg is not installed: writing %s instead of an mp4.", gif)
        imageio.mimsave(gif, list(to_uint8(frames)), duration=1000 / fps, loop=0)
        return gif
    scale = max(1, math.ceil(256 / frames.shape[-1]))
    if scale > 1:
        frames = torch.nn.functional.interpolate(frames.float(), scale_factor=scale, mode="nearest")
    # H.264 needs even sizes; macro_block_size=1 keeps imageio from resizing with a warning.
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
        for frame in to_uint8(frames):
            writer.append_data(frame)
    return path
