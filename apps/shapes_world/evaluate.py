"""The shapes world's evaluator: generated objects and prior samples against the analytic truth.

Protocol (the contract's "Evaluation of a generated object"):
- a run writes ``eval/view_{k}.png`` and ``eval/alpha_{k}.png``, k = 0..7, at
  ``evaluation_cameras(64)`` (``write_eval_views``);
- ``evaluate_views`` compares them with the ground truth at the same cameras, searching one global
  rotation of the object about z over 0..85 deg in steps of 5 deg:
  * iou: |pred & true| / |pred | true| of the masks opacity > 0.5, pooled over the 8 views,
    at the best rotation;
  * colour_error: mean |rgb - true rgb| over the channels and the pixels of both masks, at that
    rotation (1.0, the worst possible, when the masks do not meet);
  * identification: fraction of views whose nearest (L2 over pixels) true render among the 36
    objects at that camera, each object at its own best rotation for that view, is the prompt's.
- ``classify_samples`` scores 2D samples of the prior against the 36 objects at a grid of
  cameras (d 2.0, elev -10..60 step 10, azim step 15; fovy 40 in the contract, widened by
  default to 34..46 step 3, see CLASSIFY_FOVYS).

Nearest-neighbour search never materialises 36 coloured renders: a render of albedo c is
``c * shade + (1 - alpha)`` (see render.py), so the squared distance to every colour of a
geometry follows from dot products with its shade and alpha images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch

from scorelift.data.cameras import CameraBatch, evaluation_cameras, make_cameras
from scorelift.atomic import write_text_atomic
from . import claim_measures
from .dataset import save_png
from .render import RENDER_KEY, albedo_table, render_shading
from .world import (
    ALL_OBJECTS,
    COLOURS,
    SHAPES,
    colour_index,
    object_index,
    object_prompt,
    parse_prompt,
    shape_index,
)

EVAL_SIZE = 64
# Truth at the evaluation cameras uses 3 x 3 sub-pixels: coverage is then k / 9, never exactly the
# 0.5 mask threshold, so the true silhouette has no ties (2 x 2 gives many pixels of exactly 0.5,
# which an 8-bit PNG turns into 128 / 255 > 0.5).
EVAL_SUPERSAMPLE = 3
N_VIEWS = 8
ROTATIONS_DEG = tuple(range(0, 90, 5))  # 0..85: the cube and pyramid are 4-fold symmetric
# Shapes whose renders do not change with a turn about z: rendered once, not per rotation.
_Z_SYMMETRIC = ("sphere", "cylinder", "cone", "torus")
_CLASSIFY_ELEVATIONS = tuple(range(-10, 61, 10))  # 8
_CLASSIFY_AZIMUTHS = tuple(range(0, 360, 15))  # 24
# The contract's grid has fovy 40 only; samples of the prior follow the training distribution
# (d in [1.8, 2.2], fovy in [35, 45]), whose object scale varies by -20 %..+28 %, and at one scale
# ground-truth renders from training cameras are classified right only ~75 % of the time (the
# L2 distance is dominated by silhouette size: big spheres look like cubes, cones like pyramids).
# Five fields of view span that scale range: ~99.5 % of ground-truth renders are classified right.
CLASSIFY_FOVYS = (34.0, 37.0, 40.0, 43.0, 46.0)
_CACHE_VERSION = "v1"
_CHUNK = 256

_eval_truth_cache: dict = {}
_classify_bank_cache: dict = {}


# --- disk cache ----------------------------------------------------------------------------


def _cache_path(kind: str, params) -> Path:
    """~/.cache/scorelift (or $SCORELIFT_CACHE) file named by a hash of everything that defines it."""
    key = repr((_CACHE_VERSION, kind, EVAL_SIZE, SHAPES, RENDER_KEY, params))
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    root = Path(os.environ.get("SCORELIFT_CACHE", Path.home() / ".cache" / "scorelift"))
    return root / f"shapes_world_{kind}_{digest}.pt"


def _load_or_render(path: Path, render_fn):
    """torch.load(path) if it holds a good file, else render_fn() saved there (best effort)."""
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu")
        except Exception:  # a truncated or stale file: render again
            pass
    value = render_fn()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(value, tmp)
        os.replace(tmp, path)  # atomic, so concurrent processes never read half a file
    except OSError:
        pass  # a read-only home only costs the render next time
    return value


# --- nearest objects -------------------------------------------------------------------------


def _object_distances(images: torch.Tensor, shade: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances from images to every colour of every geometry, up to a per-image constant.

    images: [n, 3, P] flattened RGB; shade, alpha: [G, P] from render_shading, flattened.
    Returns [n, 6, G]: entry (i, c, g) is ||images[i] - render(colour c, geometry g)||^2 minus
    ||images[i] - 1||^2, which is the same for every candidate and so changes no ranking.
    With y = x - 1 and render = a_c * S + 1 - A per channel:
    ||y + A - a_c S||^2 = ||y||^2 + 2 y.A - 2 a_c y.S + ||A||^2 - 2 a_c A.S + a_c^2 ||S||^2.
    """
    n, channels, P = images.shape
    albedo = albedo_table(images.device).to(images.dtype)  # [6, 3]
    y = (images - 1.0).reshape(n * channels, P)
    y_a = (y @ alpha.T).reshape(n, channels, -1)  # [n, 3, G]
    y_s = (y @ shade.T).reshape(n, channels, -1)
    a_a = (alpha * alpha).sum(-1)  # [G]
    a_s = (alpha * shade).sum(-1)
    s_s = (shade * shade).sum(-1)
    dist = 2.0 * y_a.sum(1)[:, None, :] - 2.0 * torch.einsum("ck,nkg->ncg", albedo, y_s)
    dist = dist + channels * a_a - 2.0 * albedo.sum(1)[:, None] * a_s + (albedo**2).sum(1)[:, None] * s_s
    return dist


def _nearest_object(dist_by_shape: torch.Tensor) -> torch.Tensor:
    """Index into ALL_OBJECTS of the nearest object: [n, 6 colours, 6 shapes] -> [n] long."""
    return dist_by_shape.reshape(dist_by_shape.shape[0], -1).argmin(dim=-1)  # colour-major, as ALL_OBJECTS


# --- ground truth at the evaluation cameras --------------------------------------------------


def evaluation_truth() -> tuple[torch.Tensor, torch.Tensor]:
    """(shade, alpha), each [6 shapes, 18 rotations, 8 views, 64, 64] (CPU), cached per process and on disk.

    Rendered with EVAL_SUPERSAMPLE x EVAL_SUPERSAMPLE sub-pixels.
    """
    if "truth" not in _eval_truth_cache:
        path = _cache_path("eval_truth", (EVAL_SUPERSAMPLE, ROTATIONS_DEG, N_VIEWS))
        _eval_truth_cache["truth"] = _load_or_render(path, _render_evaluation_truth)
    return _eval_truth_cache["truth"]


def _render_evaluation_truth() -> tuple[torch.Tensor, torch.Tensor]:
    cams = evaluation_cameras(EVAL_SIZE)
    n_rot = len(ROTATIONS_DEG)
    shade = torch.empty(len(SHAPES), n_rot, N_VIEWS, EVAL_SIZE, EVAL_SIZE)
    alpha = torch.empty_like(shade)
    for s, name in enumerate(SHAPES):
        rotations = (0,) if name in _Z_SYMMETRIC else ROTATIONS_DEG
        rot = torch.tensor(rotations, dtype=torch.float32).repeat_interleave(N_VIEWS)
        idx = list(range(N_VIEWS)) * len(rotations)
        sh, al = render_shading(torch.full((len(idx),), s), cams[idx], EVAL_SUPERSAMPLE, rotation_deg=rot)
        shade[s] = sh.reshape(len(rotations), N_VIEWS, EVAL_SIZE, EVAL_SIZE)  # broadcasts 1 -> 18
        alpha[s] = al.reshape(len(rotations), N_VIEWS, EVAL_SIZE, EVAL_SIZE)
    return shade, alpha


def _check_views(rgb: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and normalise the evaluated views to CPU float [8, 3, 64, 64] and [8, 64, 64]."""
    rgb = torch.as_tensor(rgb).detach().float().cpu()
    alpha = torch.as_tensor(alpha).detach().float().cpu()
    if alpha.dim() == 4 and alpha.shape[1] == 1:
        alpha = alpha[:, 0]
    expected = (N_VIEWS, 3, EVAL_SIZE, EVAL_SIZE)
    if tuple(rgb.shape) != expected:
        raise ValueError(f"rgb views must have shape {list(expected)}, got {list(rgb.shape)}.")
    if tuple(alpha.shape) != (N_VIEWS, EVAL_SIZE, EVAL_SIZE):
        raise ValueError(f"alpha views must have shape [8, 1, 64, 64], got {list(alpha.shape)}.")
    return rgb, alpha


def parse_target(text) -> tuple[str | None, str] | None:
    """(colour, shape) of what a run is scored as: a world prompt ('a red cube'), or a shape alone
    ('a cube', 'cube': a run of an unconditional prior of one shape, any colour) -> (None, shape);
    None when the text names neither."""
    parsed = parse_prompt(text)
    if parsed is not None or not isinstance(text, str):
        return parsed
    words = " ".join(text.strip().lower().rstrip(".").split()).split(" ")
    if words and words[0] in ("a", "an"):
        words = words[1:]
    return (None, words[0]) if len(words) == 1 and words[0] in SHAPES else None


def _view_predictions(rgb: torch.Tensor, true_shade: torch.Tensor, true_alpha: torch.Tensor) -> list[int]:
    """Per view, the index into ALL_OBJECTS of the nearest of the 36 objects at that camera, each
    object at its own best rotation for that view. rgb [8, 3, 64, 64]; truth [6, 18, 8, 64, 64]."""
    x = rgb.reshape(N_VIEWS, 3, -1)
    predictions = []
    for k in range(N_VIEWS):
        geo_shade = true_shade[:, :, k].reshape(-1, EVAL_SIZE * EVAL_SIZE)  # [6 * 18, P]
        geo_alpha = true_alpha[:, :, k].reshape(-1, EVAL_SIZE * EVAL_SIZE)
        dist = _object_distances(x[k : k + 1], geo_shade, geo_alpha)  # [1, 6 colours, 6 * 18]
        dist = dist.reshape(1, len(COLOURS), len(SHAPES), len(ROTATIONS_DEG)).amin(-1)
        predictions.append(int(_nearest_object(dist)))
    return predictions


def identified_colour(predictions: list[int], shape: str) -> str:
    """The colour a shape-only target is scored in: the commonest colour among the views
    identified as ``shape`` (among all views if none is), ties to the earlier colour of COLOURS."""
    on_shape = [ALL_OBJECTS[p][0] for p in predictions if ALL_OBJECTS[p][1] == shape]
    pool = on_shape or [ALL_OBJECTS[p][0] for p in predictions]
    names = list(COLOURS)
    return max(names, key=lambda c: (pool.count(c), -names.index(c)))


def evaluate_views(rgb: torch.Tensor, alpha: torch.Tensor, colour: str | None, shape: str) -> dict:
    """Metrics of 8 views of a generated object against the true (colour, shape).

    rgb: [8, 3, 64, 64] in [0, 1], alpha: [8, 1, 64, 64] (opacity), at evaluation_cameras(64).
    ``colour`` None (a shape-only target, 'a cube'): identification counts the views whose nearest
    object has the shape, in any colour, and IoU and colour error are measured against the shape
    in the colour it is identified as (``identified_colour``).
    Returns dict(iou, colour_error, identification, rotation_deg, view_predictions,
    identified_colour), see the module docstring; view_predictions names the nearest object of
    each view. Also the claims' view measures against the truth at that rotation (floaters,
    oversaturation, sharpness_ratio, centring_offset: claim_measures.py).
    """
    rgb, alpha = _check_views(rgb, alpha)
    true_shade, true_alpha = evaluation_truth()
    predictions = _view_predictions(rgb, true_shade, true_alpha)
    if colour is None:
        colour = identified_colour(predictions, shape)
        identification = sum(ALL_OBJECTS[p][1] == shape for p in predictions) / N_VIEWS
    else:
        identification = sum(p == object_index(colour, shape) for p in predictions) / N_VIEWS
    s, c = shape_index(shape), colour_index(colour)

    # IoU over the 8 views pooled, for each candidate rotation of the true object.
    pred_mask = alpha > 0.5  # [8, H, W]
    true_mask = true_alpha[s] > 0.5  # [18, 8, H, W]
    inter = (true_mask & pred_mask).flatten(1).sum(-1).float()
    union = (true_mask | pred_mask).flatten(1).sum(-1).float()
    iou = inter / union.clamp_min(1.0)
    best = int(iou.argmax())

    # Colour error inside both masks, at the best rotation.
    albedo = albedo_table()[c][None, :, None, None]
    true_rgb = albedo * true_shade[s, best][:, None] + (1.0 - true_alpha[s, best][:, None])  # [8, 3, H, W]
    both = (true_mask[best] & pred_mask)[:, None].expand_as(rgb)
    colour_error = float((rgb - true_rgb).abs()[both].mean()) if both.any() else 1.0
    claim = claim_measures.view_measures(rgb, alpha, true_rgb, true_alpha[s, best])

    return dict(
        iou=float(iou[best]),
        colour_error=colour_error,
        identification=identification,
        rotation_deg=ROTATIONS_DEG[best],
        view_predictions=[object_prompt(*ALL_OBJECTS[p]) for p in predictions],
        identified_colour=colour,
        **claim,
    )


# --- run directories -------------------------------------------------------------------------


def _load_png(path: Path, channels: int) -> torch.Tensor:
    """PNG -> [channels, H, W] float in [0, 1]."""
    import numpy as np
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(
            f"Missing evaluation view {path}: the run must write eval/view_k.png and eval/alpha_k.png."
        )
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array)
    return tensor.permute(2, 0, 1) if channels == 3 else tensor[None]


def write_eval_views(run_dir: str | Path, rgb: torch.Tensor, alpha: torch.Tensor) -> Path:
    """Write run_dir/eval/view_{k}.png (RGB) and alpha_{k}.png (grayscale), k = 0..B-1.

    rgb: [B, 3, H, W] in [0, 1], alpha: [B, 1, H, W] or [B, H, W]; linear values stored as they are.
    Returns the eval directory.
    """
    if alpha.dim() == 3:
        alpha = alpha[:, None]
    if rgb.dim() != 4 or rgb.shape[1] != 3 or alpha.shape[0] != rgb.shape[0] or alpha.shape[2:] != rgb.shape[2:]:
        raise ValueError(
            f"Expected rgb [B, 3, H, W] and alpha [B, 1, H, W], got {list(rgb.shape)} and {list(alpha.shape)}."
        )
    out = Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    for k in range(rgb.shape[0]):
        save_png(out / f"view_{k}.png", rgb[k])
        save_png(out / f"alpha_{k}.png", alpha[k])
    return out


def _find_key(tree, key: str):
    """First value of `key` in a nested mapping, breadth first (top level wins)."""
    queue = [tree]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            if isinstance(node.get(key), str):
                return node[key]
            queue.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            queue.extend(v for v in node if isinstance(v, (dict, list)))
    return None


def read_run_prompt(run_dir: str | Path) -> str:
    """What a run is scored as: run_info.json key "evaluate_as" (else "prompt"), else config.yaml
    (or .hydra/config.yaml) key evaluate_as (else prompt)."""
    run_dir = Path(run_dir)
    info = run_dir / "run_info.json"
    sources = [json.loads(info.read_text())] if info.is_file() else []
    for config in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if config.is_file():
            import yaml

            sources.append(yaml.safe_load(config.read_text()))
    for tree in sources:
        for key in ("evaluate_as", "prompt"):
            prompt = _find_key(tree, key)
            if prompt is not None:
                return prompt
    raise ValueError(f"No prompt found for run {run_dir}: expected run_info.json or config.yaml with a 'prompt' key.")


def load_eval_views(run_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A run's eval/view_k.png and eval/alpha_k.png: rgb [8, 3, 64, 64] and alpha [8, 1, 64, 64]."""
    eval_dir = Path(run_dir) / "eval"
    rgb = torch.stack([_load_png(eval_dir / f"view_{k}.png", 3) for k in range(N_VIEWS)])
    alpha = torch.stack([_load_png(eval_dir / f"alpha_{k}.png", 1) for k in range(N_VIEWS)])
    return rgb, alpha


def load_run_views(run_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A finished run's evaluation views: rgb [8, 3, 64, 64], alpha [8, 64, 64] (eval/*.png)."""
    rgb, alpha = load_eval_views(run_dir)
    return rgb, alpha[:, 0]


def _geometry_measures_written(run_dir: Path) -> dict:
    """The measures of an earlier metrics.json that the views cannot give again (re-evaluating a
    run from its PNGs keeps them)."""
    path = run_dir / "metrics.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    return {key: old[key] for key in claim_measures.GEOMETRY_MEASURES if key in old}


def evaluate_run_dir(run_dir: str | Path, extra: dict | None = None) -> dict:
    """Evaluate a finished run: reads eval/view_k.png, eval/alpha_k.png and the prompt.

    Writes run_dir/metrics.json (prompt, colour, shape, iou, colour_error, identification, the
    claims' view measures, the best rotation and per-view predictions, and ``extra``: measures
    that need more than the views, such as disconnected_mass) atomically, and returns the same dict.
    """
    run_dir = Path(run_dir)
    prompt = read_run_prompt(run_dir)
    parsed = parse_target(prompt)
    if parsed is None:
        raise ValueError(
            f"The prompt {prompt!r} of run {run_dir} is not in the shapes world: expected "
            f"'a {{colour}} {{shape}}' (or 'a {{shape}}' for a run scored in any colour) with colour in "
            f"{', '.join(COLOURS)} and shape in {', '.join(SHAPES)}."
        )
    colour, shape = parsed
    rgb, alpha = load_eval_views(run_dir)
    metrics = evaluate_views(rgb, alpha, colour, shape)
    metrics = dict(prompt=prompt, colour=metrics["identified_colour"], shape=shape, **metrics)
    metrics.update(_geometry_measures_written(run_dir) if extra is None else extra)
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


# --- 2D samples of the prior -----------------------------------------------------------------


def classify_cameras(fovy_deg: float = 40.0) -> CameraBatch:
    """The 192 cameras of the classification grid at one fovy: d 2.0, elev -10..60 step 10, azim step 15."""
    elev = torch.tensor(_CLASSIFY_ELEVATIONS, dtype=torch.float32).repeat_interleave(len(_CLASSIFY_AZIMUTHS))
    azim = torch.tensor(_CLASSIFY_AZIMUTHS, dtype=torch.float32).repeat(len(_CLASSIFY_ELEVATIONS))
    return make_cameras(elev, azim, 2.0, fovy_deg, EVAL_SIZE)


def _bank_path(fovy_deg: float) -> Path:
    """Cache file of one fovy's bank."""
    return _cache_path("classify_bank", (float(fovy_deg), _CLASSIFY_ELEVATIONS, _CLASSIFY_AZIMUTHS))


def _render_bank(fovy_deg: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(shade, alpha) [6 * 192, 64 * 64] float16 on the CPU, shape-major, rendered on `device`."""
    cams = classify_cameras(fovy_deg)
    n_cam = cams.batch_size
    shapes = torch.arange(len(SHAPES)).repeat_interleave(n_cam)
    shade, alpha = render_shading(shapes, cams[list(range(n_cam)) * len(SHAPES)].to(device))
    # float16 halves the cache; its 5e-4 steps are far below the distances that rank neighbours.
    return tuple(x.reshape(-1, EVAL_SIZE * EVAL_SIZE).half().cpu() for x in (shade, alpha))


def classify_bank(fovy_deg: float = 40.0, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(shade, alpha), each [6 shapes * 192 cameras, 64 * 64] float16 on the CPU, shape-major.

    Rendered once per fovy (on `device`; a few seconds on a CPU) and cached in memory and under
    ~/.cache/scorelift/ (or $SCORELIFT_CACHE).
    """
    key = float(fovy_deg)
    if key not in _classify_bank_cache:
        _classify_bank_cache[key] = _load_or_render(_bank_path(key), lambda: _render_bank(key, device))
    return _classify_bank_cache[key]


def _parse_prompts(prompts, n: int) -> list[tuple[str, str]]:
    """(colour, shape) per sample from a prompt or a list of n prompts; ValueError on a bad one."""
    if isinstance(prompts, str):
        prompts = [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"Got {len(prompts)} prompts for {n} images.")
    parsed = []
    for p in prompts:
        obj = parse_prompt(p)
        if obj is None:
            raise ValueError(f"The prompt {p!r} is not in the shapes world.")
        parsed.append(obj)
    return parsed


def classify_samples(images: torch.Tensor, prompts, fovys: tuple[float, ...] = CLASSIFY_FOVYS) -> dict:
    """Score 2D samples of the prior: is each sample's nearest true render the prompt's object?

    images: [N, 3, 64, 64] in [0, 1]; prompts: N shapes-world prompts (or one for all);
    fovys: the grid's fields of view in degrees, (40.0,) for the contract's grid alone.
    Returns dict(accuracy: float, per_prompt: {object prompt: accuracy},
    predictions: list of N object prompts, the nearest object of each sample).
    """
    images = torch.as_tensor(images).detach().float()
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, EVAL_SIZE, EVAL_SIZE):
        raise ValueError(f"images must have shape [N, 3, 64, 64], got {list(images.shape)}.")
    n = images.shape[0]
    targets = [object_index(c, s) for c, s in _parse_prompts(prompts, n)]
    device = images.device
    best = torch.full((n, len(COLOURS), len(SHAPES)), math.inf, device=device)
    for fovy in fovys:  # one fovy's bank at a time keeps memory to ~40 MB beyond the cache
        shade, alpha = (x.to(device, torch.float32) for x in classify_bank(fovy, device))
        for start in range(0, n, _CHUNK):  # chunks keep the [chunk, 6, 1152] distances small
            x = images[start : start + _CHUNK].reshape(-1, 3, EVAL_SIZE * EVAL_SIZE)
            dist = _object_distances(x, shade, alpha)  # [chunk, 6 colours, 6 shapes * 192 cameras]
            dist = dist.reshape(x.shape[0], len(COLOURS), len(SHAPES), -1).amin(-1)
            best[start : start + _CHUNK] = torch.minimum(best[start : start + _CHUNK], dist)
    predictions = _nearest_object(best).tolist()
    correct = [p == t for p, t in zip(predictions, targets)]
    per_prompt: dict[str, list[bool]] = {}
    for t, ok in zip(targets, correct):
        per_prompt.setdefault(object_prompt(*ALL_OBJECTS[t]), []).append(ok)
    return dict(
        accuracy=sum(correct) / max(n, 1),
        per_prompt={k: sum(v) / len(v) for k, v in per_prompt.items()},
        predictions=[object_prompt(*ALL_OBJECTS[p]) for p in predictions],
    )


# --- command line ----------------------------------------------------------------------------


def _format(metrics: dict) -> str:
    return (
        f"iou {metrics['iou']:.3f}  colour_error {metrics['colour_error']:.3f}  "
        f"identification {metrics['identification']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scorelift.shapes_world.evaluate",
        description="Evaluate finished shapes-world runs against the analytic ground truth; "
        "writes metrics.json into each run directory.",
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directory with eval/view_k.png and eval/alpha_k.png"
    )
    args = parser.parse_args(argv)
    results, failed = [], 0
    for run_dir in args.run_dirs:
        try:
            metrics = evaluate_run_dir(run_dir)
        except (ValueError, FileNotFoundError) as exc:
            print(f"{run_dir}: ERROR {exc}", file=sys.stderr)
            failed += 1
            continue
        results.append(metrics)
        print(f"{run_dir}: {metrics['prompt']!r}  {_format(metrics)}")
    if len(results) > 1:
        mean = {k: sum(m[k] for m in results) / len(results) for k in ("iou", "colour_error", "identification")}
        print(f"mean over {len(results)} runs: {_format(mean)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
