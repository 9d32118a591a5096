"""Training data for the embedded prior: random objects at random cameras, with captions.

The distribution is the contract's: a uniform object among the 36, d ~ U[1.8, 2.2],
fovy ~ U[35, 45] deg, elev ~ U[-10, 60] deg, azim ~ U[-180, 180) deg, 64 x 64 renders; the caption
is the prompt, with a DreamFusion-style view phrase with probability p_view, and empty with
probability p_empty (for classifier-free guidance).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scorelift.data.cameras import CameraBatch, make_cameras
from .render import render_ground_truth
from .world import COLOURS, SHAPES, caption

IMAGE_SIZE = 64
DISTANCE_RANGE = (1.8, 2.2)
FOVY_RANGE = (35.0, 45.0)
ELEVATION_RANGE = (-10.0, 60.0)
AZIMUTH_RANGE = (-180.0, 180.0)


def _uniform(n: int, rng: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    return rng[0] + (rng[1] - rng[0]) * torch.rand(n, generator=generator)


def sample_training_cameras(n: int, generator: torch.Generator, size: int = IMAGE_SIZE) -> CameraBatch:
    """n cameras (on the CPU) from the contract's training distribution."""
    distance = _uniform(n, DISTANCE_RANGE, generator)
    fovy = _uniform(n, FOVY_RANGE, generator)
    elevation = _uniform(n, ELEVATION_RANGE, generator)
    azimuth = _uniform(n, AZIMUTH_RANGE, generator)
    return make_cameras(elevation, azimuth, distance, fovy, size)


def _captions(
    shape_idx: torch.Tensor, colour_idx: torch.Tensor, views: list[str], generator: torch.Generator,
    p_view: float, p_empty: float,
) -> list[str]:
    """One caption per sample: empty w.p. p_empty, else the prompt plus its view phrase w.p. p_view."""
    n = shape_idx.numel()
    u_empty = torch.rand(n, generator=generator).tolist()
    u_view = torch.rand(n, generator=generator).tolist()
    colours = list(COLOURS)
    out = []
    for i in range(n):
        if u_empty[i] < p_empty:
            out.append("")
            continue
        view = views[i] if u_view[i] < p_view else None
        out.append(caption(colours[int(colour_idx[i])], SHAPES[int(shape_idx[i])], view))
    return out


def sample_training_batch(
    n: int,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
    p_view: float = 0.5,
    p_empty: float = 0.1,
) -> dict:
    """A batch of n training samples; deterministic given the (CPU) generator's state.

    Returns dict(images [n, 3, 64, 64] float in [0, 1] on device, captions list[str] of n,
    shape_idx [n] long, colour_idx [n] long, cameras CameraBatch on device).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}.")
    for name, p in (("p_view", p_view), ("p_empty", p_empty)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}.")
    # All random draws happen on the CPU generator in a fixed order, so the batch does not
    # depend on the device it is rendered on.
    shape_idx = torch.randint(len(SHAPES), (n,), generator=generator)
    colour_idx = torch.randint(len(COLOURS), (n,), generator=generator)
    cameras = sample_training_cameras(n, generator)
    captions = _captions(shape_idx, colour_idx, cameras.view_names(), generator, p_view, p_empty)
    cameras = cameras.to(device)
    shape_idx, colour_idx = shape_idx.to(device), colour_idx.to(device)
    images, _ = render_ground_truth(shape_idx, colour_idx, cameras)
    return dict(images=images, captions=captions, shape_idx=shape_idx, colour_idx=colour_idx, cameras=cameras)


def save_png(path: str | Path, image: torch.Tensor) -> None:
    """Write [3, H, W] or [1, H, W] values in [0, 1] as an 8-bit PNG, linear values as they are."""
    import numpy as np
    from PIL import Image

    array = (image.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    if array.shape[0] == 1:
        Image.fromarray(array[0].numpy()).save(path)
    else:
        Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy())).save(path)


def write_dataset(out_dir: str | Path, n: int, seed: int = 0) -> Path:
    """Write n samples as out_dir/{i:05d}.png plus out_dir/captions.jsonl, for inspection."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = sample_training_batch(n, torch.Generator().manual_seed(seed))
    cams = batch["cameras"]
    with open(out / "captions.jsonl", "w") as f:
        for i in range(n):
            name = f"{i:05d}.png"
            save_png(out / name, batch["images"][i])
            record = dict(
                file=name,
                caption=batch["captions"][i],
                shape=SHAPES[int(batch["shape_idx"][i])],
                colour=list(COLOURS)[int(batch["colour_idx"][i])],
                elevation=float(cams.elevation[i]),
                azimuth=float(cams.azimuth[i]),
                distance=float(cams.distance[i]),
                fovy_deg=float(torch.rad2deg(cams.fovy[i])),
            )
            f.write(json.dumps(record) + "\n")
    return out
