"""Sample-accuracy of a shapes-prior pipeline: DDIM samples of all 36 prompts, scored by the evaluator.

    python -m scorelift.shapes_world.training.sample_accuracy --pipeline apps/shapes_world/prior \
        --n-per-prompt 8 --json outputs/shapes_prior/sample_accuracy.json \
        --grid apps/shapes_world/prior/samples.png

Loads the directory with ``StableDiffusionPipeline.from_pretrained(dir, torch_dtype=torch.float32)``
(exactly as a user would), draws ``--n-per-prompt`` samples of each of the 36 prompts
``a {colour} {shape}`` with DDIM (``--steps``, default 50) and classifier-free guidance
(``--cfg``, default 7.5, diffusers' convention e_u + s (e_c - e_u)), each sample from its own CPU
generator seeded ``seed * 1_000_003 + prompt_index * 1000 + k`` (so samples do not depend on the
device or on the batch size), and scores them with
``scorelift.shapes_world.evaluate.classify_samples``. With ``--view-prompts`` it also scores
samples of view-phrased prompts (both suffix and prefix styles), reported separately.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from .. import world
from . import models


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, cfg: float, batch: int) -> torch.Tensor:
    """Samples [N, 3, 64, 64] in [0, 1] (float32, CPU), one per (prompt, seed)."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + batch]]
        res = pipe(
            prompt=prompts[i : i + batch],
            height=models.IMAGE_SIZE,
            width=models.IMAGE_SIZE,
            num_inference_steps=steps,
            guidance_scale=cfg,
            generator=gens,
            output_type="pt",
        )
        out.append(res.images.float().cpu())
    return torch.cat(out)


def save_grid(images: torch.Tensor, n_per_prompt: int, k: int, path: Path) -> None:
    """PNG grid: 6 rows (colours), 6 groups of k columns (shapes); images ordered prompt-major."""
    from PIL import Image

    n_c, n_s = len(world.COLOURS), len(world.SHAPES)
    imgs = images.view(n_c * n_s, n_per_prompt, 3, models.IMAGE_SIZE, models.IMAGE_SIZE)[:, :k]
    gap = 2
    H = n_c * (models.IMAGE_SIZE + gap) - gap
    W = n_s * (k * models.IMAGE_SIZE + 3 * gap) - 3 * gap
    canvas = torch.full((3, H, W), 0.5)
    for c in range(n_c):
        for s in range(n_s):
            for j in range(k):
                y = c * (models.IMAGE_SIZE + gap)
                x = s * (k * models.IMAGE_SIZE + 3 * gap) + j * models.IMAGE_SIZE
                canvas[:, y : y + models.IMAGE_SIZE, x : x + models.IMAGE_SIZE] = imgs[c * n_s + s, j]
    arr = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--n-per-prompt", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=288)
    ap.add_argument("--grid-samples", type=int, default=4, help="samples per prompt in the grid")
    ap.add_argument("--view-prompts", action="store_true", help="also score view-phrased prompts")
    ap.add_argument("--json", default=None)
    ap.add_argument("--grid", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    from diffusers import StableDiffusionPipeline

    from ..evaluate import classify_samples

    t0 = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, torch_dtype=torch.float32).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    base = models.all_prompts()  # 36, colour-major
    prompts = [p for p in base for _ in range(args.n_per_prompt)]
    seeds = [args.seed * 1_000_003 + i * 1000 + k for i in range(len(base)) for k in range(args.n_per_prompt)]
    images = generate(pipe, prompts, seeds, args.steps, args.cfg, args.batch)
    res = classify_samples(images, prompts)
    seconds = time.time() - t0
    worst = sorted(res["per_prompt"].items(), key=lambda kv: kv[1])[:5]
    confusions: dict[str, int] = {}
    for p, q in zip(prompts, res["predictions"]):
        if p != q:
            confusions[f"{p} -> {q}"] = confusions.get(f"{p} -> {q}", 0) + 1
    out = dict(
        accuracy=res["accuracy"],
        per_prompt=res["per_prompt"],
        confusions=dict(sorted(confusions.items(), key=lambda kv: -kv[1])),
        n_per_prompt=args.n_per_prompt,
        n_samples=len(prompts),
        steps=args.steps,
        guidance_scale=args.cfg,
        seed=args.seed,
        device=torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        seconds=seconds,
        grid_samples_per_prompt=min(args.grid_samples, args.n_per_prompt),
        command="python -m scorelift.shapes_world.training.sample_accuracy " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        versions=models.software_versions(),
        image_mean=float(images.mean()),
    )
    print(f"sample accuracy {res['accuracy'] * 100:.2f} % over {len(prompts)} samples in {seconds:.0f} s; "
          f"lowest: {worst}; confusions: {list(out['confusions'].items())[:8]}", flush=True)

    if args.view_prompts:
        # One view phrase per sample, both styles, so the prior is checked on what guidance sends.
        g = torch.Generator().manual_seed(args.seed + 1)
        vp, vs = [], []
        for i, (c, s) in enumerate(world.ALL_OBJECTS):
            for k in range(args.n_per_prompt):
                variant = 1 + int(torch.randint(2 * len(world.VIEWS), (1,), generator=g))
                vp.append(models.caption_variant(c, s, False, variant))
                vs.append(args.seed * 1_000_003 + 500 + i * 1000 + k)
        vimg = generate(pipe, vp, vs, args.steps, args.cfg, args.batch)
        vres = classify_samples(vimg, vp)
        out["view_prompt_accuracy"] = vres["accuracy"]
        out["view_prompt_lowest"] = dict(sorted(vres["per_prompt"].items(), key=lambda kv: kv[1])[:5])
        print(f"view-phrased prompts: accuracy {vres['accuracy'] * 100:.2f} %; lowest {out['view_prompt_lowest']}",
              flush=True)

    if args.grid:
        save_grid(images, args.n_per_prompt, out["grid_samples_per_prompt"], Path(args.grid))
    if args.json:
        models.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
