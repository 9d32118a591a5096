"""Train the pixel-cubes prior: an unconditional 32 x 32 pixel-space DDPM of the shapes world's cube.

    python -m scorelift.shapes_world.training.train_pixel_prior --out outputs/pixel_prior --time-limit 300   # CUDA
    python -m scorelift.shapes_world.training.train_pixel_prior --out /tmp/pixel_smoke --smoke              # CPU
    python -m scorelift.shapes_world.training.train_pixel_prior --out DIR --sample-only   # re-run the sample check
    python -m scorelift.shapes_world.training.train_pixel_prior --out DIR --card-only     # re-write MODEL_CARD.md

The analogue of SJC's custom diffusion model trained on one category: one shape ("cube") of the
shapes world in all six colours, under the world's training cameras, and nothing else (no text, no
classes). ``--out`` is a diffusers ``DDPMPipeline`` directory (``save_pretrained`` layout:
``model_index.json``, ``unet/`` = ``UNet2DModel``, ``scheduler/`` = ``DDPMScheduler``) in fp16, plus
``samples.png`` and ``MODEL_CARD.md``; ``metrics.json`` goes to ``--work`` (default: ``--out``).

Data: ``--n-images`` ground-truth renders (``render_ground_truth``, 64 x 64, 2 x 2 sub-pixels) of
the cube with a uniform colour at cameras of ``sample_training_cameras``, box-filtered to 32 x 32
and kept on the device in fp16; each step draws a batch from them. No augmentation: a horizontal
flip would mirror the fixed world light, which is not mirror symmetric, so flipped renders are not
renders of the world. ``x = 2 * rgb - 1`` in [-1, 1], as ``DDPMPipeline`` outputs ``x / 2 + 0.5``.

Objective: DDPM epsilon prediction under the linear schedule 1e-4..0.02 over 1000 steps, t uniform
over all 1000 (score distillation queries every t), unweighted MSE. AdamW, linear warm-up then
cosine decay to 10 % on ``progress = max(step / steps, elapsed / time_limit)`` (train_vae.lr_factor),
grad-norm clip 1, bf16 autocast on CUDA; the exported weights are an EMA of the trained ones.
``--time-limit`` bounds the training loop only; rendering, export and the sample check come on top
(tens of seconds on a GPU).

Sample check (``sample_check``): DDIM 50 steps from the saved directory, each 32 x 32 sample
upsampled bilinearly to 64 x 64 and classified as the nearest of the world's 36 objects over the
evaluator's camera bank (the ranking of ``scorelift.shapes_world.evaluate.classify_samples``), with
its RMS distance to that nearest render; ground-truth cube renders put through the same 32 -> 64
round trip give the baseline of both (see ``nearest_objects`` for why the distance is needed).
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import world
from ..dataset import sample_training_cameras
from ..render import render_ground_truth
from . import models
from .train_unet import ema_update
from .train_vae import lr_factor

SHAPE = "cube"
RENDER_SIZE = 64  # the world's image size; renders are box-filtered down to SAMPLE_SIZE
SAMPLE_SIZE = 32
DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
TIMESTEP_BANDS = ((0, 100), (100, 300), (300, 600), (600, 1000))
WEIGHT_LIMIT_BYTES = 4_000_000  # the fp16 weight file is committed to the repository
COMMAND = "python -m scorelift.shapes_world.training.train_pixel_prior"

PRESETS: dict[str, dict] = {
    # 1.71 M parameters, 3.4 MB in fp16.
    "full": dict(channels=(32, 64, 64), layers=2, head_dim=8, groups=8),
    # Tiny, for the CPU tests: same block types, so the same module names (to_q, to_k, ...).
    "smoke": dict(channels=(8, 16, 16), layers=1, head_dim=4, groups=4),
}


# --- model and schedule ----------------------------------------------------------------------


def build_unet(preset: str):
    """UNet2DModel: x_t [B, 3, 32, 32], t [B] -> eps [B, 3, 32, 32].

    Resolutions 32, 16, 8: plain ResNets at 32 x 32, self-attention at 16 x 16, 8 x 8 and in the
    8 x 8 mid block (diffusers ``Attention`` modules with to_q / to_k / to_v / to_out.0, where
    LoRA adapters attach). For this class ``attention_head_dim`` is the width of one head.
    """
    from diffusers import UNet2DModel

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected one of {sorted(PRESETS)}.")
    p = PRESETS[preset]
    return UNet2DModel(
        sample_size=SAMPLE_SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(p["channels"]),
        down_block_types=DOWN_BLOCKS,
        up_block_types=UP_BLOCKS,
        layers_per_block=p["layers"],
        attention_head_dim=p["head_dim"],
        norm_num_groups=p["groups"],
    )


def build_scheduler():
    """DDPM's original schedule (linear betas 1e-4..0.02, 1000 steps), epsilon, samples clipped to [-1, 1]."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=True,
        variance_type="fixed_small",
    )


# --- data ------------------------------------------------------------------------------------


def render_cube_dataset(n: int, seed: int, device, chunk: int = 4096, log=print) -> dict:
    """n renders of the cube, uniform colour, training cameras, box-filtered to 32 x 32.

    Returns dict(images [n, 3, 32, 32] float16 in [0, 1] on device, colour_idx [n] long,
    shape_idx [n] long (all world.SHAPES.index("cube")), shape "cube"). Every random draw is made
    on one CPU generator in a fixed order, so the colours and cameras depend on (n, seed, chunk)
    only, not on the device (the renders themselves up to float rounding).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}.")
    g = torch.Generator().manual_seed(seed)
    cube = world.shape_index(SHAPE)
    images = torch.empty(n, 3, SAMPLE_SIZE, SAMPLE_SIZE, dtype=torch.float16, device=device)
    colour_idx = torch.empty(n, dtype=torch.long)
    factor = RENDER_SIZE // SAMPLE_SIZE
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        colours = torch.randint(len(world.COLOURS), (m,), generator=g)
        cams = sample_training_cameras(m, g, size=RENDER_SIZE).to(device)
        rgb, _ = render_ground_truth(torch.full((m,), cube, device=device), colours.to(device), cams)
        # Area averaging = an exact 2 x 2 box filter: the 32 x 32 image is what 4 x 4 sub-pixels
        # per pixel would give, with no aliasing of the cube's edges.
        images[start : start + m] = F.avg_pool2d(rgb, factor).to(torch.float16)
        colour_idx[start : start + m] = colours
        if log is not None and (start // chunk) % 8 == 0:
            log(f"rendered {start + m}/{n}")
    return dict(
        images=images,
        colour_idx=colour_idx.to(device),
        shape_idx=torch.full((n,), cube, dtype=torch.long, device=device),
        shape=SHAPE,
    )


def to_model_range(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] (any float dtype) -> float32 in [-1, 1]."""
    return rgb.float() * 2.0 - 1.0


# --- measurements ----------------------------------------------------------------------------


@torch.no_grad()
def eps_mse_by_timestep(unet, images: torch.Tensor, alphas_cumprod: torch.Tensor, n: int = 2048,
                        seed: int = 123, batch: int = 512) -> dict:
    """Eps-MSE of a UNet on n fixed (image, t, noise) draws, in float32, per timestep band.

    images: [N, 3, 32, 32] in [0, 1] (drawn in order, cycling when N < n); alphas_cumprod: [1000]
    on the UNet's device. Returns {"0-99": mse, "100-299": ..., "300-599": ..., "600-999": ..., "all": ...}.
    """
    device = alphas_cumprod.device
    g = torch.Generator().manual_seed(seed)  # CPU draws: the same figures on every device
    idx = torch.arange(n) % images.shape[0]
    t = torch.randint(0, 1000, (n,), generator=g)
    noise = torch.randn(n, 3, SAMPLE_SIZE, SAMPLE_SIZE, generator=g)
    dtype = next(unet.parameters()).dtype
    errs = []
    for i in range(0, n, batch):
        x0 = to_model_range(images[idx[i : i + batch].to(images.device)]).to(device)
        ti, ni = t[i : i + batch].to(device), noise[i : i + batch].to(device)
        ab = alphas_cumprod[ti][:, None, None, None]
        xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * ni
        pred = unet(xt.to(dtype), ti).sample.float()
        errs.append((pred - ni).pow(2).mean(dim=(1, 2, 3)).cpu())
    err = torch.cat(errs)
    out = {}
    for lo, hi in TIMESTEP_BANDS:
        m = (t >= lo) & (t < hi)
        out[f"{lo}-{hi - 1}"] = float(err[m].mean()) if m.any() else float("nan")
    out["all"] = float(err.mean())
    return out


def directory_bytes(path: Path, exclude: tuple[str, ...] = ()) -> int:
    """Bytes of the files under path, leaving out top-level files named in exclude."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.relative_to(path).as_posix() not in exclude)


def weight_files(pipe_dir: Path) -> dict:
    """{relative path: bytes} of the weight files of a pipeline directory."""
    return {f.relative_to(pipe_dir).as_posix(): f.stat().st_size
            for f in sorted(Path(pipe_dir).rglob("*")) if f.suffix in (".safetensors", ".bin")}


def save_grid(images: torch.Tensor, path: Path, per_row: int = 8, zoom: int = 2, gap: int = 2) -> None:
    """PNG grid of images [N, 3, h, w] in [0, 1], per_row per row, each enlarged zoom x (nearest)."""
    from PIL import Image

    n, _, h, w = images.shape
    big = images.clamp(0, 1).repeat_interleave(zoom, 2).repeat_interleave(zoom, 3)
    h, w = h * zoom, w * zoom
    rows = (n + per_row - 1) // per_row
    cols = min(n, per_row)
    canvas = torch.full((3, rows * (h + gap) - gap, cols * (w + gap) - gap), 0.5)
    for i in range(n):
        y, x = (i // per_row) * (h + gap), (i % per_row) * (w + gap)
        canvas[:, y : y + h, x : x + w] = big[i]
    arr = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def nearest_objects(images32: torch.Tensor, fovys: tuple[float, ...] | None = None,
                    chunk: int = 256) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """The nearest world object of each image and how near it is.

    images32: [N, 3, 32, 32] in [0, 1]. Each image is upsampled bilinearly to the evaluator's
    64 x 64 and compared with the 36 objects over its camera bank (fields of view ``fovys``,
    default the evaluator's CLASSIFY_FOVYS), exactly as ``classify_samples`` ranks them. Returns ((colour, shape) per image, rms [N] CPU float: the
    root-mean-square RGB difference to that nearest render). The rms matters because the label
    alone is not enough: the nearest object of pure noise is a cube too (the biggest silhouette, in
    the greyest colour), so only a small rms says that a sample looks like a render of the world.
    """
    from ..evaluate import (
        CLASSIFY_FOVYS,
        EVAL_SIZE,
        _nearest_object,
        _object_distances,
        classify_bank,
    )

    device = images32.device
    up = F.interpolate(images32.float(), size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False)
    x = up.clamp(0, 1).reshape(up.shape[0], 3, EVAL_SIZE * EVAL_SIZE)  # [N, 3, P]
    n, n_c, n_s = x.shape[0], len(world.COLOURS), len(world.SHAPES)
    best = torch.full((n, n_c, n_s), float("inf"), device=device)
    for fovy in CLASSIFY_FOVYS if fovys is None else fovys:
        shade, alpha = (b.to(device, torch.float32) for b in classify_bank(fovy, device))  # [6 * 192, P]
        for i in range(0, n, chunk):
            dist = _object_distances(x[i : i + chunk], shade, alpha)  # [c, 6 colours, 6 shapes * 192 cameras]
            dist = dist.reshape(dist.shape[0], n_c, n_s, -1).amin(-1)
            best[i : i + chunk] = torch.minimum(best[i : i + chunk], dist)
    objects = _nearest_object(best).tolist()
    # _object_distances leaves out ||x - 1||^2, the same for every candidate; add it back.
    sq = best.reshape(n, -1).amin(-1) + (x - 1.0).pow(2).sum(dim=(1, 2))
    rms = (sq.clamp_min(0.0) / x[0].numel()).sqrt().cpu()
    return [world.ALL_OBJECTS[o] for o in objects], rms


def _summarise(pred: list[tuple[str, str]], rms: torch.Tensor, threshold: float) -> dict:
    """Shape / colour counts of the nearest objects, and the fractions that are close cubes."""
    n = max(len(pred), 1)
    close = (rms <= threshold).tolist()
    colours = {c: sum(pc == c for pc, _ in pred) for c in world.COLOURS}
    shapes = {s: sum(ps == s for _, ps in pred) for s in world.SHAPES}
    return dict(
        cube_fraction=shapes[SHAPE] / n,
        close_fraction=sum(close) / n,
        close_cube_fraction=sum(ok and ps == SHAPE for ok, (_, ps) in zip(close, pred)) / n,
        close_colour_histogram={c: sum(ok and pc == c and ps == SHAPE for ok, (pc, ps) in zip(close, pred))
                                for c in world.COLOURS},
        colour_histogram=colours,
        shape_histogram=shapes,
        rms_median=float(rms.median()) if rms.numel() else float("nan"),
        rms_mean=float(rms.mean()) if rms.numel() else float("nan"),
    )


@torch.no_grad()
def sample_check(pipe_dir, n: int = 64, steps: int = 50, seed: int = 0, device="cpu", batch: int = 256,
                 n_baseline: int = 256, quantile: float = 0.95, fovys: tuple[float, ...] | None = None) -> dict:
    """Draw n DDIM samples from a saved pipeline directory, classify them, write samples.png.

    Loads ``DDPMPipeline.from_pretrained(pipe_dir)`` in float32 (as a user would), swaps in
    ``DDIMScheduler.from_config`` of its scheduler (eta 0, ``steps`` steps); batch k starts from a
    CPU generator seeded ``seed + k`` (so the samples do not depend on the device). Each sample's
    nearest object and distance come from ``nearest_objects``. The baseline is n_baseline
    ground-truth cube renders at training cameras through the same 32 -> 64 round trip; a sample
    is "close" when its rms is at most the baseline's ``quantile`` (so a perfect model would
    have close_fraction ~ quantile). fovys: the camera bank's fields of view (None: the evaluator's
    five; the smoke run uses one, which renders a cold cache 5 x faster).

    Returns dict(n, steps, seed, cube_fraction (nearest object a cube, any colour),
    close_fraction, close_cube_fraction (close and a cube), colour_histogram (counts of the
    nearest object's colour, all samples), close_colour_histogram (close cubes only),
    shape_histogram, rms_median, rms_mean, rms_threshold, baseline (the same figures for the
    renders, plus colour_accuracy), seconds, image_mean).
    """
    from diffusers import DDIMScheduler, DDPMPipeline

    t0 = time.time()
    pipe_dir = Path(pipe_dir)
    pipe = DDPMPipeline.from_pretrained(pipe_dir, torch_dtype=torch.float32).to(device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    chunks = []
    for k, i in enumerate(range(0, n, batch)):
        out = pipe(batch_size=min(batch, n - i), generator=torch.Generator().manual_seed(seed + k),
                   num_inference_steps=steps, output_type="pt")
        chunks.append(torch.as_tensor(out.images).float().cpu())  # [b, 3, 32, 32] in [0, 1]
    images = torch.cat(chunks)
    save_grid(images, pipe_dir / "samples.png")

    truth = render_cube_dataset(n_baseline, seed + 999, device, log=None)
    base_pred, base_rms = nearest_objects(truth["images"].float(), fovys)
    threshold = float(torch.quantile(base_rms, quantile))
    base = _summarise(base_pred, base_rms, threshold)
    colours = list(world.COLOURS)
    base.update(n=n_baseline, colour_accuracy=sum(
        pc == colours[int(ci)] for (pc, _), ci in zip(base_pred, truth["colour_idx"].tolist())) / n_baseline)

    pred, rms = nearest_objects(images.to(device), fovys)
    result = dict(n=n, steps=steps, seed=seed, scheduler="DDIMScheduler (eta 0)", **_summarise(pred, rms, threshold))
    from ..evaluate import CLASSIFY_FOVYS

    result.update(fovys=list(CLASSIFY_FOVYS if fovys is None else fovys), rms_threshold=threshold,
                  rms_quantile=quantile, baseline=base, seconds=time.time() - t0, image_mean=float(images.mean()))
    print(f"sample check: {n} samples, DDIM {steps}: nearest object a cube {result['cube_fraction'] * 100:.1f} %, "
          f"close cubes (rms <= {threshold:.3f}, the {quantile:.0%} quantile of ground truth) "
          f"{result['close_cube_fraction'] * 100:.1f} %; median rms {result['rms_median']:.3f} "
          f"(ground truth {base['rms_median']:.3f}); colours of close cubes {result['close_colour_histogram']}; "
          f"shapes {result['shape_histogram']} ({result['seconds']:.1f} s)", flush=True)
    return result


# --- model card ------------------------------------------------------------------------------


def _fmt(x, spec=".4f"):
    return "n/a" if x is None else format(x, spec)


def write_model_card(work: Path, out: Path) -> Path:
    """MODEL_CARD.md in the pipeline directory, from ``{work}/metrics.json``."""
    m = models.read_json(Path(work) / "metrics.json")
    out = Path(out)
    size = directory_bytes(out, exclude=("MODEL_CARD.md",))
    p = m["architecture"]
    v = m["versions"]
    bands = m["ema_loss_by_timestep"]
    saved = m.get("saved_loss_by_timestep")
    lines = [
        "# pixel-cubes: an unconditional pixel-space DDPM of the shapes world's cube",
        "",
        "A small diffusion model of 32 x 32 RGB images of one shape of scorelift's shapes world "
        "(`docs/shapes-world.md`): the cube, in all six colours, under the world's training cameras. "
        "It has no text or class input; it is the analogue of SJC's custom diffusion model trained on one "
        "category. Training code and commands: `apps/shapes_world/training/README.md` "
        "(`train_pixel_prior.py`).",
        "",
        "## Loading",
        "```python",
        "from diffusers import DDPMPipeline",
        "pipe = DDPMPipeline.from_pretrained(this_dir, torch_dtype=torch.float32)",
        "x = pipe(batch_size=8, output_type=\"pt\").images  # [8, 3, 32, 32] in [0, 1]",
        "```",
        "In scorelift: `prior=pixel-cubes`. The model sees `x = 2 * rgb - 1` in [-1, 1]; "
        "`pipe.unet(x_t, t).sample` is the noise estimate eps [B, 3, 32, 32] with "
        "`x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps`.",
        "",
        "## Architecture",
        f"- `UNet2DModel`, sample size {SAMPLE_SIZE}, 3 -> 3 channels, block channels {tuple(p['channels'])}, "
        f"{p['layers']} ResNet layer(s) per block, GroupNorm with {p['groups']} groups; blocks "
        f"{', '.join(DOWN_BLOCKS)} / {', '.join(UP_BLOCKS)}: plain ResNets at 32 x 32, self-attention "
        f"(head width {p['head_dim']}) at 16 x 16, 8 x 8 and in the mid block. "
        f"**{m['parameters']:,} parameters** ({m['parameters'] / 1e6:.2f} M).",
        "- `DDPMScheduler`: 1000 steps, linear betas 1e-4..0.02, epsilon prediction, `clip_sample` True, "
        "`variance_type` fixed_small. For fast sampling swap in `DDIMScheduler.from_config(pipe.scheduler.config)`.",
        f"- Stored in fp16 (safetensors); weights {sum(m['weight_files'].values()) / 1e6:.2f} MB, directory "
        f"{size / 1e6:.2f} MB without this card.",
        "",
        "## Data",
        f"{m['n_images']:,} ground-truth renders (`scorelift.shapes_world.render.render_ground_truth`, 64 x 64 with "
        "2 x 2 sub-pixels, then 2 x 2 area-averaged to 32 x 32) of the cube; colour uniform over the six; cameras "
        "from `scorelift.shapes_world.dataset.sample_training_cameras` (d ~ U[1.8, 2.2], fovy ~ U[35, 45], "
        f"elev ~ U[-10, 60], azim ~ U[-180, 180)); data seed {m['data_seed']}. No augmentation (a mirror flip "
        "would mirror the fixed world light). Losses are measured on "
        f"{m['n_eval']:,} held-out renders (seed {m['eval_seed']}).",
        "",
        "## Training",
        "Epsilon-prediction MSE, t uniform over all 1000 steps, AdamW (weight decay 0.01), linear warm-up "
        f"({m['warmup']} steps) then cosine decay to 10 % of the peak learning rate over the run's time limit, "
        "grad-norm clip 1, " + ("bf16 autocast" if m["autocast_bf16"] else "float32") + f"; EMA (decay {m['ema_decay']}) "
        "weights exported.",
        "",
        "| | |",
        "|---|---|",
        f"| steps | {m['steps']:,} |",
        f"| batch | {m['batch']} |",
        f"| images seen | {m['steps'] * m['batch']:,} ({m['steps'] * m['batch'] / m['n_images']:.1f} epochs) |",
        f"| peak learning rate | {m['lr']:g} |",
        f"| wall time of the training loop | {m['train_seconds']:.0f} s ({m['steps_per_second']:.1f} steps/s), "
        f"time limit {m['time_limit']:g} s |",
        f"| rendering the data | {m['data_seconds']:.1f} s |",
        f"| final training loss (mean of the last logging window) | eps-MSE {_fmt(m['final_loss'])} |",
        f"| EMA eps-MSE, all t ({m['n_eval']:,} held-out draws, fp32 weights) | {bands['all']:.4f} |",
    ]
    if saved is not None:
        lines.append(f"| the same, fp16 weights as saved | {saved['all']:.4f} |")
    for i, stage in enumerate(m.get("previous_stages") or [], 1):
        lines.append(
            f"| earlier stage {i} (this run started from its weights) | {stage['steps']:,} steps of batch "
            f"{stage['batch']} in {stage['train_seconds']:.0f} s, EMA eps-MSE all t "
            f"{stage['ema_loss_by_timestep']['all']:.4f}; `{stage['command']}` |")
    lines += [
        "",
        "EMA eps-MSE by timestep band: " + ", ".join(f"t {k}: {val:.4f}" for k, val in bands.items() if k != "all"),
        "",
        "## Sample check",
    ]
    sc = m.get("sample_check")
    if sc is None:
        lines.append(f"Not measured yet (`{COMMAND} --out DIR --sample-only`).")
    else:
        b = sc["baseline"]
        lines += [
            f"{sc['n']} samples, DDIM {sc['steps']} steps (eta 0, seed {sc['seed']}), each upsampled bilinearly to "
            "64 x 64 and compared with the 36 objects over the evaluator's camera bank (the ranking of "
            "`scorelift.shapes_world.evaluate.classify_samples`: 6 shapes x 192 cameras x fields of view "
            f"{', '.join(f'{f:g}' for f in sc['fovys'])} deg). "
            "The nearest object alone is not enough (pure noise is nearest to a purple cube), so each sample's "
            "RMS difference to that nearest render is compared with the same figure for "
            f"{b['n']} ground-truth cube renders through the same 32 -> 64 round trip: a sample is *close* when "
            f"its RMS is at most the renders' {sc['rms_quantile']:.0%} quantile, {sc['rms_threshold']:.3f} "
            f"(a perfect model: ~{sc['rms_quantile']:.0%} close).",
            "",
            "| | samples | ground-truth cubes |",
            "|---|---|---|",
            f"| close cubes (close, nearest object a cube) | **{sc['close_cube_fraction'] * 100:.1f} %** | "
            f"{b['close_cube_fraction'] * 100:.1f} % |",
            f"| nearest object a cube (any colour, any distance) | {sc['cube_fraction'] * 100:.1f} % | "
            f"{b['cube_fraction'] * 100:.1f} % |",
            f"| close (any object) | {sc['close_fraction'] * 100:.1f} % | {b['close_fraction'] * 100:.1f} % |",
            f"| median RMS to the nearest render | {sc['rms_median']:.3f} | {b['rms_median']:.3f} |",
            f"| nearest colour right | | {b['colour_accuracy'] * 100:.1f} % |",
            "",
            "- nearest shapes of the samples: "
            + ", ".join(f"{k} {sc['shape_histogram'][k]}" for k in world.SHAPES if sc["shape_histogram"][k]) + ".",
            "- colours of the close cubes: " + ", ".join(f"{k} {sc['close_colour_histogram'][k]}" for k in world.COLOURS)
            + "; of all samples' nearest objects: " + ", ".join(f"{k} {sc['colour_histogram'][k]}" for k in world.COLOURS)
            + f" (uniform: {sc['n'] / len(world.COLOURS):.1f} each).",
            "",
            f"`samples.png`: the {sc['n']} samples, 8 per row, at 32 x 32 shown 2 x (nearest). "
            f"Sampling and scoring took {sc['seconds']:.0f} s on {sc.get('device', 'n/a')}.",
        ]
    lines += [
        "",
        "## Command",
        "```bash",
        m["command"],
        "```",
        f"(device: {v.get('gpu', 'cpu')}; total {m.get('total_seconds', float('nan')):.0f} s including rendering, export and the "
        "sample check).",
        "",
        "## Software",
        f"Trained with Python {v['python']}, torch {v['torch']}, diffusers {v['diffusers']}"
        + (f", CUDA {v['cuda']} on {v['gpu']}" if "gpu" in v else " on the CPU") + ".",
        "",
    ]
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


# --- command line ----------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the DDPMPipeline directory to write (or read, with --sample-only / --card-only)")
    ap.add_argument("--work", default=None, help="where metrics.json goes (default: --out)")
    ap.add_argument("--preset", default="full", choices=sorted(PRESETS))
    ap.add_argument("--smoke", action="store_true", help="tiny model, 64 images, a few steps, 4 samples of 2 steps")
    ap.add_argument("--steps", type=int, default=30_000, help="upper bound on steps (see --time-limit)")
    ap.add_argument("--time-limit", type=float, default=0.0, help="seconds of the training loop (0 = none)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--n-images", type=int, default=60_000)
    ap.add_argument("--n-eval", type=int, default=2048, help="held-out draws for the eps-MSE figures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-from", default=None, help="a pixel-prior directory to continue from (its unet/ "
                    "weights; fresh optimiser and warm-up; its metrics kept under previous_stages)")
    ap.add_argument("--n-samples", type=int, default=64, help="samples of the sample check")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the sample check")
    ap.add_argument("--sample-only", action="store_true", help="only the sample check of --out (updates metrics and card)")
    ap.add_argument("--card-only", action="store_true", help="only (re)write MODEL_CARD.md from the metrics")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset = "smoke"
        args.steps, args.batch, args.n_images, args.n_eval, args.warmup = 4, 8, 64, 64, 1
        args.n_samples, args.sample_steps = 4, 2
    # The smoke run scores against one field of view of the camera bank (a cold bank cache
    # renders in a fifth of the time on a CPU); real runs use the evaluator's five.
    args.fovys = (40.0,) if args.smoke else None
    return args


def _sample_and_record(args, work: Path, out: Path) -> dict:
    sc = sample_check(out, args.n_samples, args.sample_steps, args.seed, device=args.device, fovys=args.fovys)
    sc["device"] = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    metrics = models.read_json(work / "metrics.json")
    metrics["sample_check"] = sc
    models.write_json(work / "metrics.json", metrics)
    return metrics


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = Path(args.out)
    work = Path(args.work) if args.work else out
    if args.card_only:
        print(f"model card: {write_model_card(work, out)}")
        return models.read_json(work / "metrics.json")
    if args.sample_only:
        metrics = _sample_and_record(args, work, out)
        print(f"model card: {write_model_card(work, out)}")
        return metrics

    from diffusers import DDPMPipeline, UNet2DModel

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: pick the fastest conv kernels once
    t0 = time.time()

    # --- data ----------------------------------------------------------------------------------
    data_seed, eval_seed = args.seed + 7, args.seed + 1_000_003
    data = render_cube_dataset(args.n_images, data_seed, device)
    held_out = render_cube_dataset(args.n_eval, eval_seed, device, log=None)["images"]
    if cuda:
        torch.cuda.synchronize()
    t_data = time.time() - t0
    print(f"data: {args.n_images} + {args.n_eval} held-out cube renders at {SAMPLE_SIZE} x {SAMPLE_SIZE} in "
          f"{t_data:.1f} s; colour counts {torch.bincount(data['colour_idx'], minlength=6).tolist()}", flush=True)
    images = data["images"]  # [N, 3, 32, 32] fp16 in [0, 1]
    N = images.shape[0]

    # --- model -----------------------------------------------------------------------------------
    unet = build_unet(args.preset).to(device).train()
    previous_stages = []
    if args.init_from:  # a later stage: start from the earlier stage's exported (EMA) weights
        start = UNet2DModel.from_pretrained(Path(args.init_from) / "unet", torch_dtype=torch.float32)
        unet.load_state_dict(start.state_dict())
        del start
        earlier = Path(args.init_from) / "metrics.json"
        if earlier.is_file():
            m = models.read_json(earlier)
            previous_stages = [*m.pop("previous_stages", []), {k: v for k, v in m.items() if k != "history"}]
    ema_unet = copy.deepcopy(unet).eval().requires_grad_(False)
    n_params = models.count_parameters(unet)
    print(f"UNet2DModel ({args.preset}): {n_params:,} parameters, {2 * n_params / 1e6:.2f} MB in fp16", flush=True)
    scheduler = build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)  # [1000]
    params = list(unet.parameters())
    ema_params = list(ema_unet.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=0.01, fused=cuda)
    g = torch.Generator(device=device).manual_seed(args.seed)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    # --- training ------------------------------------------------------------------------------
    t_train = time.time()
    log_every = max(1, min(200, args.steps // 10))
    running, window, history, steps_done = 0.0, 0, [], 0
    for step in range(args.steps):
        elapsed = time.time() - t_train
        progress = step / args.steps
        if args.time_limit > 0:
            if elapsed > args.time_limit:
                print(f"time limit reached at step {step}", flush=True)
                break
            progress = max(progress, elapsed / args.time_limit)
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(progress, step, args.warmup)
        idx = torch.randint(N, (args.batch,), device=device, generator=g)
        x0 = to_model_range(images[idx])  # [B, 3, 32, 32]
        t = torch.randint(0, 1000, (args.batch,), device=device, generator=g)
        noise = torch.randn(x0.shape, device=device, generator=g)
        ab = alphas_cumprod[t][:, None, None, None]
        xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise
        with autocast:
            pred = unet(xt, t).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # EMA warm-up: early on the average must not be dominated by the random initialisation.
        ema_update(ema_params, params, min(args.ema_decay, (1.0 + step) / (10.0 + step)))
        running = running + loss.detach()  # no host sync per step
        window += 1
        steps_done = step + 1
        if steps_done % log_every == 0:
            mean_loss = float(running) / window
            dt = time.time() - t_train
            history.append(dict(step=steps_done, loss=mean_loss, seconds=dt))
            print(f"step {steps_done:6d}  loss {mean_loss:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{steps_done / dt:.1f} steps/s  {steps_done * args.batch / dt:.0f} samples/s", flush=True)
            running, window = 0.0, 0
    if cuda:
        torch.cuda.synchronize()
    train_seconds = time.time() - t_train
    if window:  # a partial last window still says where the loss ended
        history.append(dict(step=steps_done, loss=float(running) / window, seconds=train_seconds))

    # --- export --------------------------------------------------------------------------------
    band_ema = eps_mse_by_timestep(ema_unet, held_out, alphas_cumprod, n=args.n_eval)
    out.mkdir(parents=True, exist_ok=True)
    ema_unet.to(torch.float16)
    DDPMPipeline(unet=ema_unet, scheduler=scheduler).save_pretrained(out, safe_serialization=True)
    # What a user gets: the fp16 file loaded back in float32.
    saved = UNet2DModel.from_pretrained(out / "unet", torch_dtype=torch.float32).to(device).eval()
    band_saved = eps_mse_by_timestep(saved, held_out, alphas_cumprod, n=args.n_eval)
    del saved
    metrics = dict(
        preset=args.preset,
        architecture=dict(PRESETS[args.preset], down_blocks=DOWN_BLOCKS, up_blocks=UP_BLOCKS, sample_size=SAMPLE_SIZE),
        parameters=n_params,
        weight_files=weight_files(out),
        pipeline_bytes=directory_bytes(out, exclude=("MODEL_CARD.md", "samples.png", "metrics.json")),
        steps=steps_done,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        time_limit=args.time_limit,
        autocast_bf16=cuda,
        n_images=args.n_images,
        n_eval=args.n_eval,
        seed=args.seed,
        data_seed=data_seed,
        eval_seed=eval_seed,
        data_seconds=t_data,
        train_seconds=train_seconds,
        steps_per_second=steps_done / max(train_seconds, 1e-9),
        final_loss=history[-1]["loss"] if history else None,
        ema_loss_by_timestep=band_ema,
        saved_loss_by_timestep=band_saved,
        history=history,
        versions=models.software_versions(),
        command=f"{COMMAND} {shlex.join(argv)}".strip(),
        init_from=args.init_from,
        previous_stages=previous_stages,
    )
    models.write_json(work / "metrics.json", metrics)
    if sum(metrics["weight_files"].values()) > WEIGHT_LIMIT_BYTES:
        print(f"WARNING: the weights are {sum(metrics['weight_files'].values()) / 1e6:.2f} MB, over "
              f"{WEIGHT_LIMIT_BYTES / 1e6:.0f} MB", flush=True)
    print(f"pixel prior: {steps_done} steps of batch {args.batch} in {train_seconds:.0f} s; final loss "
          f"{metrics['final_loss']}; EMA eps-MSE by t {band_ema}; saved to {out} "
          f"({metrics['pipeline_bytes'] / 1e6:.2f} MB)", flush=True)

    # --- sample check and card -----------------------------------------------------------------
    metrics = _sample_and_record(args, work, out)
    metrics["total_seconds"] = time.time() - t0
    models.write_json(work / "metrics.json", metrics)
    print(f"model card: {write_model_card(work, out)}; total {metrics['total_seconds']:.0f} s", flush=True)
    return metrics


if __name__ == "__main__":
    main()
