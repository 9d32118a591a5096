"""Train the shapes prior's VAE, fold the latent normalisation into it, and measure it.

    python -m scorelift.shapes_world.training.train_vae --work outputs/shapes_prior            # CUDA, full size
    python -m scorelift.shapes_world.training.train_vae --work /tmp/w --smoke                   # CPU, seconds

Writes ``{work}/vae/`` (diffusers AutoencoderKL, fp32), ``{work}/vae_metrics.json`` and
``{work}/vae_recon.png`` (top row: held-out renders; bottom row: reconstructions).

Data: ground-truth renders of the contract's training distribution
(scorelift.shapes_world.dataset), rendered once on the training device. Loss per image:
MSE + 0.5 * L1 on RGB in [-1, 1] of the decoded posterior sample, plus kl_weight times the mean
per-element KL to N(0, I); the KL only keeps the posterior a smooth, bounded distribution (the
diffusion model trains on its samples), it is far too weak to cost sharpness.

Afterwards the per-channel mean of the posterior mean and the per-channel std of posterior
samples over the data are folded into
quant_conv / post_quant_conv (models.fold_latent_normalisation), and the remaining scalar
statistics of posterior samples give ``shift_factor`` (about 0) and ``scaling_factor`` (about 1):
``(z - shift) * scale`` then has zero mean and unit variance on the data, and SD's pipeline,
which ignores shift_factor, is still right because the shift is ~0.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import models


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="work directory (vae/ and metrics are written here)")
    ap.add_argument("--preset", default="full", choices=sorted(models.PRESETS))
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps, CPU-friendly sizes")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    ap.add_argument("--n-images", type=int, default=100_000, help="training renders")
    ap.add_argument("--n-eval", type=int, default=2048, help="held-out renders for PSNR")
    ap.add_argument("--n-stats", type=int, default=32_768, help="renders used for latent statistics")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=0.0, help="seconds; stop training early (0 = none)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset = "smoke"
        args.steps, args.batch, args.n_images, args.n_eval, args.n_stats, args.warmup = 4, 8, 32, 16, 32, 1
    return args


def lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 % at progress 1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def encode_moments(vae, images: torch.Tensor, batch: int = 1024):
    """images [n, 3, 64, 64] in [0, 1] -> posterior (mean, std), each [n, 4, 16, 16] float32."""
    means, stds = [], []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].float() * 2.0 - 1.0
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruction_mse(vae, images: torch.Tensor, batch: int = 512, sample: bool = False, seed: int = 0) -> float:
    """Mean squared error in [0, 1] units of decode(encode(x)) (posterior mean, or a sample)."""
    g = torch.Generator(device=images.device).manual_seed(seed)
    total, count = 0.0, 0
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].float()
        dist = vae.encode(x * 2.0 - 1.0).latent_dist
        z = dist.sample(generator=g) if sample else dist.mean
        rec = (vae.decode(z).sample.float().clamp(-1, 1) + 1.0) / 2.0
        total += F.mse_loss(rec, x, reduction="sum").item()
        count += x.numel()
    return total / count


def save_recon_grid(vae, images: torch.Tensor, path: Path, n: int = 16) -> None:
    """A 2-row PNG: n held-out renders over their reconstructions."""
    from PIL import Image

    with torch.no_grad():
        x = images[:n].float()
        rec = (vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample.float().clamp(-1, 1) + 1) / 2
    rows = [torch.cat(list(t), dim=-1) for t in (x, rec)]  # each [3, 64, 64n]
    grid = torch.cat(rows, dim=-2)
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr).save(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    t0 = time.time()

    # --- data: rendered once on the device; the held-out set uses another seed -------------
    data = models.render_dataset(args.n_images, args.seed, device)
    held_out = models.render_dataset(args.n_eval, args.seed + 1_000_001, device, log=None)["images"]
    images = data["images"]
    t_data = time.time() - t0
    print(f"rendered {args.n_images} + {args.n_eval} images in {t_data:.1f} s", flush=True)

    # --- model -------------------------------------------------------------------------------
    vae = models.build_vae(models.preset(args.preset)).to(device)
    n_params = models.count_parameters(vae)
    print(f"VAE parameters: {n_params / 1e6:.2f} M", flush=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    g = torch.Generator(device=device).manual_seed(args.seed)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    t_train = time.time()
    log_every = max(1, min(250, args.steps // 10))
    run_rec, run_kl, steps_done = 0.0, 0.0, 0
    history = []
    for step in range(args.steps):
        elapsed = time.time() - t_train
        progress = step / args.steps
        if args.time_limit > 0:
            progress = max(progress, elapsed / args.time_limit)
            if elapsed > args.time_limit:
                print(f"time limit reached at step {step}", flush=True)
                break
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(progress, step, args.warmup)
        idx = torch.randint(images.shape[0], (args.batch,), device=device, generator=g)
        x = images[idx].float() * 2.0 - 1.0  # [B, 3, 64, 64]
        # No flips or rotations: the light is fixed in the world frame, so they would change the data.
        with autocast:
            dist = vae.encode(x).latent_dist
            z = dist.sample(generator=g)
            rec = vae.decode(z).sample.float()
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        mean, logvar = dist.mean.float(), dist.logvar.float()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = rec_loss + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        run_rec += rec_loss.detach()  # summed on the device: no sync per step
        run_kl += kl.detach()
        steps_done = step + 1
        if steps_done % log_every == 0:
            r, k = float(run_rec) / log_every, float(run_kl) / log_every
            dt = time.time() - t_train
            history.append(dict(step=steps_done, rec=r, kl=k, seconds=dt))
            print(f"step {steps_done:6d}  rec {r:.5f}  kl {k:.2f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{steps_done / dt:.1f} it/s", flush=True)
            run_rec, run_kl = 0.0, 0.0
    if cuda:
        torch.cuda.synchronize()
    train_seconds = time.time() - t_train
    vae.eval()

    # --- latent statistics, folded into the convs -------------------------------------------
    stats_imgs = images[: args.n_stats]
    mu, sd = encode_moments(vae, stats_imgs)  # [n, 4, 16, 16] each
    channel_mean = mu.mean(dim=(0, 2, 3))
    # Std of posterior samples (spread of the means plus the posterior noise), per channel.
    channel_std = (mu.var(dim=(0, 2, 3)) + sd.pow(2).mean(dim=(0, 2, 3))).sqrt()
    mse_before = reconstruction_mse(vae, held_out)
    models.fold_latent_normalisation(vae, channel_mean, channel_std)
    mu, sd = encode_moments(vae, stats_imgs)
    z = mu + sd * torch.randn(mu.shape, generator=torch.Generator(device=device).manual_seed(1), device=device)
    shift = float(z.mean())
    scale = float(1.0 / z.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    zn = (z - shift) * scale
    per_channel = dict(mean=zn.mean(dim=(0, 2, 3)).tolist(), std=zn.std(dim=(0, 2, 3)).tolist())

    # --- reconstruction quality on held-out renders ------------------------------------------
    mse_mean = reconstruction_mse(vae, held_out)
    mse_sample = reconstruction_mse(vae, held_out, sample=True)
    vae_half = models.build_vae(models.preset(args.preset)).to(device)
    vae_half.load_state_dict(vae.state_dict())
    vae_half.register_to_config(shift_factor=shift, scaling_factor=scale)
    vae_half.half().float()  # round-trip the weights through fp16, as the pipeline stores them
    mse_fp16 = reconstruction_mse(vae_half.eval(), held_out)
    metrics = dict(
        preset=args.preset,
        parameters=n_params,
        steps=steps_done,
        batch=args.batch,
        lr=args.lr,
        kl_weight=args.kl_weight,
        n_images=args.n_images,
        n_eval=args.n_eval,
        seed=args.seed,
        render_seconds=t_data,
        train_seconds=train_seconds,
        final_rec_loss=history[-1]["rec"] if history else None,
        final_kl=history[-1]["kl"] if history else None,
        history=history,
        channel_mean_folded=channel_mean.tolist(),
        channel_std_folded=channel_std.tolist(),
        shift_factor=shift,
        scaling_factor=scale,
        normalised_latent_per_channel=per_channel,
        posterior_std_mean=float((sd * scale).mean()),
        psnr_mean_before_fold=models.psnr(mse_before),
        psnr_mean=models.psnr(mse_mean),
        psnr_sample=models.psnr(mse_sample),
        psnr_fp16_weights=models.psnr(mse_fp16),
        versions=models.software_versions(),
        total_seconds=time.time() - t0,
    )
    vae.save_pretrained(work / "vae")
    save_recon_grid(vae, held_out, work / "vae_recon.png")
    models.write_json(work / "vae_metrics.json", metrics)
    print(
        f"VAE: {steps_done} steps in {train_seconds:.0f} s; held-out PSNR {metrics['psnr_mean']:.2f} dB "
        f"(posterior sample {metrics['psnr_sample']:.2f}, fp16 weights {metrics['psnr_fp16_weights']:.2f}); "
        f"shift {shift:.4g} scale {scale:.4g}",
        flush=True,
    )
    return metrics


if __name__ == "__main__":
    main()
