"""Assemble the trained parts into a StableDiffusionPipeline directory, and write its model card.

    python -m scorelift.shapes_world.training.build_pipeline --work outputs/shapes_prior --out apps/shapes_world/prior
    python -m scorelift.shapes_world.training.build_pipeline --work outputs/shapes_prior --out apps/shapes_world/prior --card-only

The pipeline reads ``{work}/vae``, ``{work}/unet``, ``{work}/text_encoder``, ``{work}/tokenizer``,
adds SD's DDIM scheduler config (models.build_scheduler) and no safety checker, and saves with
``save_pretrained`` in fp16 (the whole directory stays under 40 MB). Load it with
``StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32)``.

``--card-only`` (re)writes ``{out}/MODEL_CARD.md`` from ``{work}/vae_metrics.json``,
``unet_metrics.json`` and ``sample_accuracy.json`` (written by sample_accuracy.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import models

SIZE_LIMIT_BYTES = 40_000_000


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def build(work: Path, out: Path, dtype: torch.dtype = torch.float16) -> int:
    """Write the pipeline directory; returns the size in bytes of its files."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(work / "vae", torch_dtype=torch.float32),
        text_encoder=CLIPTextModel.from_pretrained(work / "text_encoder", torch_dtype=torch.float32),
        tokenizer=CLIPTokenizer.from_pretrained(work / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(work / "unet", torch_dtype=torch.float32),
        scheduler=models.build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; the BPE files let the slow CLIPTokenizer of
    # transformers 4 load the directory too.
    for name in ("vocab.json", "merges.txt"):
        if (work / "tokenizer" / name).exists():
            (out / "tokenizer" / name).write_bytes((work / "tokenizer" / name).read_bytes())
    size = directory_bytes(out)
    print(f"pipeline written to {out}: {size / 1e6:.2f} MB", flush=True)
    if size > SIZE_LIMIT_BYTES:
        raise SystemExit(f"pipeline directory is {size / 1e6:.1f} MB, over the 40 MB limit")
    return size


def _fmt(x, spec=".4f"):
    return "n/a" if x is None else format(x, spec)


def write_model_card(work: Path, out: Path) -> Path:
    """MODEL_CARD.md beside the weights, from the metrics the scripts wrote into ``work``."""
    vae = models.read_json(work / "vae_metrics.json")
    unet = models.read_json(work / "unet_metrics.json")
    acc_path = work / "sample_accuracy.json"
    acc = models.read_json(acc_path) if acc_path.exists() else None
    size = directory_bytes(out) - ((out / "MODEL_CARD.md").stat().st_size if (out / "MODEL_CARD.md").exists() else 0)
    v = unet["versions"]
    bands = unet["ema_loss_by_timestep"]
    stages = unet.get("previous_stages", []) + [unet]
    lines = [
        "# shapes_prior: the embedded Stable-Diffusion-format prior of the shapes world",
        "",
        "A small latent diffusion model trained on the shapes world of scorelift's `docs/shapes-world.md`",
        "(36 objects: 6 colours x 6 shapes, Lambertian, white background, 64 x 64). Load with",
        "`StableDiffusionPipeline.from_pretrained(this_dir, torch_dtype=torch.float32)`. Training code and",
        "exact commands: `apps/shapes_world/training/README.md`.",
        "",
        "## Parts",
        f"- VAE: AutoencoderKL 64x64x3 -> 4x16x16, {vae['parameters'] / 1e6:.2f} M parameters; per-channel latent "
        "mean and std folded into quant_conv / post_quant_conv, then "
        f"`shift_factor` = {vae['shift_factor']:.6g}, `scaling_factor` = {vae['scaling_factor']:.6g} so "
        "`(z - shift) * scale` has zero mean and unit variance on the data (the shift is ~0, so SD's "
        "pipeline, which ignores it, stays exact).",
        f"- Text: CLIPTokenizer over the world's words (model_max_length {models.TOKENIZER_MAX_LENGTH}), "
        f"CLIPTextModel {unet['text_encoder_parameters'] / 1e6:.2f} M parameters, trained jointly with the UNet.",
        f"- UNet2DConditionModel at 16 x 16, epsilon prediction, {unet['unet_parameters'] / 1e6:.2f} M parameters.",
        "- Scheduler: DDIM with SD's training schedule (scaled-linear betas 0.00085..0.012, 1000 steps, "
        "set_alpha_to_one False, steps_offset 1).",
        f"- Stored in fp16; directory size {size / 1e6:.2f} MB.",
        "",
        "## Data",
        "Ground-truth renders from `scorelift.shapes_world.dataset.sample_training_batch` (the contract's "
        "camera distribution: d ~ U[1.8, 2.2], fovy ~ U[35, 45], elev ~ U[-10, 60], azim ~ U[-180, 180)).",
        f"- VAE: {vae['n_images']:,} renders (seed {vae['seed']}), PSNR measured on {vae['n_eval']:,} held-out renders.",
        "- UNet: per training stage, "
        + "; ".join(f"stage {i + 1}: {st['n_images']:,} renders (seed {st['seed'] + 7})" for i, st in enumerate(stages))
        + ", encoded once to posterior moments; a fresh posterior sample and caption per use. Captions: empty "
        "w.p. 0.1; else `a {colour} {shape}` with a view phrase w.p. 0.5 (of those, 75 % the contract's suffix "
        "`, front view`, 25 % the prefix style `backside view of ...`); w.p. 0.1 the other article (`an red cube`).",
        "",
        "## Training",
        "Epsilon-prediction MSE, t uniform over all 1000 steps, AdamW (weight decay 0.01 for text encoder + UNet, "
        "0 for the VAE), linear warm-up then cosine decay to 10 % over the stage's time limit, grad-norm clip 1, "
        "bf16 autocast; exported weights are the EMA. A later stage starts from the previous stage's EMA weights "
        "with a fresh optimiser.",
        "",
        "| | VAE | " + " | ".join(f"text encoder + UNet, stage {i + 1}" for i in range(len(stages))) + " |",
        "|---|---|" + "---|" * len(stages),
        f"| steps | {vae['steps']:,} | " + " | ".join(f"{st['steps']:,}" for st in stages) + " |",
        f"| batch | {vae['batch']} | " + " | ".join(str(st["batch"]) for st in stages) + " |",
        f"| peak learning rate | {vae['lr']:g} | "
        + " | ".join(f"UNet {st['lr']:g}, text {st['text_lr']:g}" for st in stages) + " |",
        f"| wall time of the training loop | {vae['train_seconds']:.0f} s | "
        + " | ".join(f"{st['train_seconds']:.0f} s ({st['steps_per_second']:.1f} steps/s)" for st in stages) + " |",
        f"| final training loss (mean of the last logging window) | rec (MSE + 0.5 L1, [-1, 1]) "
        f"{_fmt(vae['final_rec_loss'])}, KL {_fmt(vae['final_kl'], '.2f')} (weight {vae['kl_weight']:g}) | "
        + " | ".join(f"eps-MSE {_fmt(st['final_loss'])}" for st in stages) + " |",
        f"| EMA eps-MSE, all t (2,048 fixed draws) | | "
        + " | ".join(f"{st['ema_loss_by_timestep']['all']:.4f}" for st in stages) + " |",
        "",
        f"Final EMA eps-MSE by timestep band (2,048 fixed draws, conditional captions): "
        + ", ".join(f"t {k}: {val:.4f}" for k, val in bands.items()),
        "",
        f"VAE reconstruction PSNR on held-out renders: {vae['psnr_mean']:.2f} dB (posterior mean), "
        f"{vae['psnr_sample']:.2f} dB (posterior sample), {vae['psnr_fp16_weights']:.2f} dB (fp16-rounded weights).",
        "",
        "## Sample accuracy",
    ]
    if acc is None:
        lines.append("Not measured yet (run sample_accuracy.py).")
    else:
        worst = sorted(acc["per_prompt"].items(), key=lambda kv: kv[1])[:5]
        lines += [
            f"DDIM {acc['steps']} steps, CFG {acc['guidance_scale']}, {acc['n_per_prompt']} seeded samples for each "
            f"of the 36 prompts ({acc['n_samples']} samples), scored by "
            "`scorelift.shapes_world.evaluate.classify_samples` (nearest of the 36 objects' renders over a camera grid):",
            "",
            f"**accuracy {acc['accuracy'] * 100:.2f} %** (contract: >= 90 %); "
            + ("every prompt 100 %." if worst[0][1] == 1.0 else
               "lowest prompts: " + ", ".join(f"{k} {val * 100:.1f} %" for k, val in worst)),
            "",
            f"Command: `{acc['command']}` ({acc['seconds']:.0f} s on {acc['device']}).",
        ]
        if "view_prompt_accuracy" in acc:
            lines += [
                "",
                f"Same command, view-phrased prompts (one random view phrase per sample, both styles, e.g. "
                f"`a red cube, side view`, `backside view of a red cube`): accuracy "
                f"{acc['view_prompt_accuracy'] * 100:.2f} %; lowest: "
                + ", ".join(f"{k} {val * 100:.1f} %" for k, val in acc["view_prompt_lowest"].items()),
            ]
        # Further measurements of the same pipeline (e.g. on the CPU), if their files exist.
        for extra in sorted(work.glob("sample_accuracy_*.json")):
            e = models.read_json(extra)
            lines += [
                "",
                f"Also `{e['command']}` on {e['device']} (torch {e['versions']['torch']}): accuracy "
                f"{e['accuracy'] * 100:.2f} % over {e['n_samples']} samples ({e['seconds']:.0f} s).",
            ]
        lines += [
            "",
            "`samples.png`: rows are colours (red, green, blue, yellow, purple, orange), column groups shapes "
            f"(sphere, cube, cylinder, cone, torus, pyramid), {acc['grid_samples_per_prompt']} samples each.",
        ]
    lines += [
        "",
        "## Software",
        f"Trained with Python {v['python']}, torch {v['torch']}, diffusers {v['diffusers']}, transformers "
        f"{v['transformers']}" + (f", CUDA {v['cuda']} on {v['gpu']}" if "gpu" in v else "") + ".",
        "",
    ]
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fp32", action="store_true", help="store fp32 weights (only for tiny test pipelines)")
    ap.add_argument("--card-only", action="store_true")
    args = ap.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    if not args.card_only:
        build(work, out, torch.float32 if args.fp32 else torch.float16)
    if (work / "unet_metrics.json").exists():
        print(f"model card: {write_model_card(work, out)}")


if __name__ == "__main__":
    main()
