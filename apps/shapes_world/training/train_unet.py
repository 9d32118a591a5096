"""Train the shapes prior's text encoder and UNet jointly on VAE latents of the shapes world.

    python -m scorelift.shapes_world.training.train_unet --work outputs/shapes_prior --time-limit 480   # CUDA
    python -m scorelift.shapes_world.training.train_unet --work /tmp/w --smoke                           # CPU

Reads ``{work}/vae`` (from train_vae.py); writes the EMA weights as ``{work}/unet``,
``{work}/text_encoder``, the tokenizer files as ``{work}/tokenizer`` and
``{work}/unet_metrics.json``.

Data: ``--n-images`` ground-truth renders of the contract's training distribution, encoded once
by the frozen VAE into posterior moments (mean, std) [n, 4, 16, 16] in normalised units
``(z - shift) * scale``; every step draws a fresh posterior sample and a fresh caption
(models.CaptionSampler: view phrase w.p. 0.5, empty w.p. 0.1, see there).

Objective: standard DDPM epsilon prediction under SD's schedule (scaled-linear betas
0.00085..0.012, 1000 steps), t uniform over all 1000 steps (score distillation queries the whole
range), unweighted MSE. AdamW, linear warm-up then cosine decay to 10 %; the schedule's progress
is max(step / steps, elapsed / time_limit), so a run with a time limit still anneals fully.
The exported weights are an exponential moving average of the trained ones. ``--init-from`` a
work directory continues a run (fresh optimiser and warm-up); the metrics of the earlier stages
are kept under ``previous_stages``.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import models
from .train_vae import lr_factor


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="work directory holding vae/; outputs go here")
    ap.add_argument("--preset", default="full", choices=sorted(models.PRESETS))
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps, CPU-friendly sizes")
    ap.add_argument("--steps", type=int, default=30_000, help="upper bound on steps (see --time-limit)")
    ap.add_argument("--time-limit", type=float, default=0.0, help="seconds of training (0 = none)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4, help="UNet learning rate")
    ap.add_argument("--text-lr", type=float, default=3e-4, help="text encoder learning rate")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--n-images", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-from", default=None, help="directory with unet/ and text_encoder/ to start from "
                    "(a work directory or a pipeline directory)")
    ap.add_argument("--vae-dir", default=None, help="the VAE to encode the data with (default: {work}/vae)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset = "smoke"
        args.steps, args.batch, args.n_images, args.warmup = 4, 8, 32, 1
    return args


@torch.no_grad()
def encode_dataset(vae, images: torch.Tensor, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """images [n, 3, 64, 64] in [0, 1] -> normalised posterior (mean, std), each [n, 4, 16, 16] fp32."""
    shift, scale = vae.config.shift_factor or 0.0, vae.config.scaling_factor
    means, stds = [], []
    for i in range(0, images.shape[0], batch):
        dist = vae.encode(images[i : i + batch].float() * 2.0 - 1.0).latent_dist
        means.append((dist.mean.float() - shift) * scale)
        stds.append(dist.std.float() * scale)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * param, in one multi-tensor kernel per dtype/device."""
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


@torch.no_grad()
def loss_by_timestep(unet, text_encoder, sampler, data, alphas_cumprod, device, n=2048, seed=123) -> dict:
    """Eps-MSE of the given weights on fixed draws, per timestep band, conditional captions only.

    Returns {"0-99": mse, "100-299": ..., "300-599": ..., "600-999": ..., "all": ...}.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    n = min(n, data["mean"].shape[0])
    idx = torch.arange(n, device=device)
    z0 = data["mean"][idx] + data["std"][idx] * torch.randn(data["mean"][idx].shape, device=device, generator=g)
    ids, _ = sampler.sample(data["colour_idx"][idx], data["shape_idx"][idx], data["view_idx"][idx], g, p_empty=0.0)
    t = torch.randint(0, 1000, (n,), device=device, generator=g)
    noise = torch.randn(z0.shape, device=device, generator=g)
    ab = alphas_cumprod[t][:, None, None, None]
    zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
    errs = []
    for i in range(0, n, 512):
        enc = text_encoder(ids[i : i + 512])[0]
        pred = unet(zt[i : i + 512], t[i : i + 512], enc).sample.float()
        errs.append((pred - noise[i : i + 512]).pow(2).mean(dim=(1, 2, 3)))
    err = torch.cat(errs)
    out = {}
    for lo, hi in ((0, 100), (100, 300), (300, 600), (600, 1000)):
        m = (t >= lo) & (t < hi)
        out[f"{lo}-{hi - 1}"] = float(err[m].mean()) if m.any() else float("nan")
    out["all"] = float(err.mean())
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    t0 = time.time()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    # --- data: renders -> normalised posterior moments ---------------------------------------
    vae_dir = Path(args.vae_dir) if args.vae_dir else work / "vae"
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).to(device).eval()
    rendered = models.render_dataset(args.n_images, args.seed + 7, device)
    t_render = time.time() - t0
    mean, std = encode_dataset(vae, rendered.pop("images"))
    data = dict(mean=mean, std=std, **rendered)
    del vae
    if cuda:
        torch.cuda.empty_cache()
    t_data = time.time() - t0
    print(f"data: {args.n_images} renders in {t_render:.1f} s, encoded by {t_data:.1f} s; latent mean "
          f"{float(mean.mean()):.3f} std {float((mean.var() + std.pow(2).mean()).sqrt()):.3f}", flush=True)

    # --- models --------------------------------------------------------------------------------
    p = models.preset(args.preset)
    tokenizer = models.build_tokenizer(work / "tokenizer")
    previous_stages = []
    if args.init_from:
        src = Path(args.init_from)
        if (src / "unet_metrics.json").exists():  # a work directory: keep the record of earlier stages
            prev = models.read_json(src / "unet_metrics.json")
            previous_stages = prev.pop("previous_stages", []) + [{k: v for k, v in prev.items() if k != "history"}]
        text_encoder = CLIPTextModel.from_pretrained(src / "text_encoder", torch_dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(src / "unet", torch_dtype=torch.float32)
    else:
        text_encoder = models.build_text_encoder(p, tokenizer)
        unet = models.build_unet(p, cross_attention_dim=text_encoder.config.hidden_size)
    text_encoder.to(device).train()
    unet.to(device).train()
    ema_text, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    for m in (ema_text, ema_unet):
        m.requires_grad_(False)
    n_unet, n_text = models.count_parameters(unet), models.count_parameters(text_encoder)
    print(f"UNet {n_unet / 1e6:.2f} M parameters, text encoder {n_text / 1e6:.2f} M", flush=True)

    sampler = models.CaptionSampler(tokenizer, device)
    alphas_cumprod = models.build_scheduler().alphas_cumprod.to(device=device, dtype=torch.float32)  # [1000]
    opt = torch.optim.AdamW(
        [dict(params=unet.parameters(), lr=args.lr, base_lr=args.lr),
         dict(params=text_encoder.parameters(), lr=args.text_lr, base_lr=args.text_lr)],
        betas=(0.9, 0.999), weight_decay=0.01, fused=cuda,
    )
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    g = torch.Generator(device=device).manual_seed(args.seed)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    N = data["mean"].shape[0]

    # --- training ----------------------------------------------------------------------------
    t_train = time.time()
    log_every = max(1, min(500, args.steps // 10))
    running, history, steps_done = 0.0, [], 0
    for step in range(args.steps):
        elapsed = time.time() - t_train
        progress = step / args.steps
        if args.time_limit > 0:
            if elapsed > args.time_limit:
                print(f"time limit reached at step {step}", flush=True)
                break
            progress = max(progress, elapsed / args.time_limit)
        f = lr_factor(progress, step, args.warmup)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * f
        idx = torch.randint(N, (args.batch,), device=device, generator=g)
        z0 = data["mean"][idx] + data["std"][idx] * torch.randn(
            (args.batch, models.LATENT_CHANNELS, models.LATENT_SIZE, models.LATENT_SIZE), device=device, generator=g)
        ids, _ = sampler.sample(data["colour_idx"][idx], data["shape_idx"][idx], data["view_idx"][idx], g)
        t = torch.randint(0, 1000, (args.batch,), device=device, generator=g)
        noise = torch.randn(z0.shape, device=device, generator=g)
        ab = alphas_cumprod[t][:, None, None, None]
        zt = ab.sqrt() * z0 + (1.0 - ab).sqrt() * noise  # [B, 4, 16, 16]
        with autocast:
            enc = text_encoder(ids)[0]  # [B, L, D], as StableDiffusionPipeline.encode_prompt gets it
            pred = unet(zt, t, enc).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # EMA warm-up: early on the average must not be dominated by the random initialisation.
        decay = min(args.ema_decay, (1.0 + step) / (10.0 + step))
        ema_update(ema_params, params, decay)
        running += loss.detach()
        steps_done = step + 1
        if steps_done % log_every == 0:
            l = float(running) / log_every
            dt = time.time() - t_train
            history.append(dict(step=steps_done, loss=l, seconds=dt))
            print(f"step {steps_done:6d}  loss {l:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{steps_done / dt:.1f} it/s  {steps_done * args.batch / dt:.0f} samples/s", flush=True)
            running = 0.0
    if cuda:
        torch.cuda.synchronize()
    train_seconds = time.time() - t_train

    # --- export --------------------------------------------------------------------------------
    band_ema = loss_by_timestep(ema_unet, ema_text, sampler, data, alphas_cumprod, device)
    ema_unet.save_pretrained(work / "unet")
    ema_text.save_pretrained(work / "text_encoder")
    tokenizer.save_pretrained(work / "tokenizer")
    metrics = dict(
        preset=args.preset,
        unet_parameters=n_unet,
        text_encoder_parameters=n_text,
        steps=steps_done,
        batch=args.batch,
        lr=args.lr,
        text_lr=args.text_lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        time_limit=args.time_limit,
        n_images=args.n_images,
        seed=args.seed,
        init_from=args.init_from,
        vae_dir=str(vae_dir),
        data_seconds=t_data,
        train_seconds=train_seconds,
        steps_per_second=steps_done / max(train_seconds, 1e-9),
        final_loss=history[-1]["loss"] if history else None,
        ema_loss_by_timestep=band_ema,
        history=history,
        previous_stages=previous_stages,
        versions=models.software_versions(),
        total_seconds=time.time() - t0,
    )
    models.write_json(work / "unet_metrics.json", metrics)
    print(f"UNet: {steps_done} steps of batch {args.batch} in {train_seconds:.0f} s; final loss "
          f"{metrics['final_loss']}; EMA eps-MSE by t {band_ema}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
