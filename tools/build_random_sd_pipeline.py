"""Build a Stable-Diffusion-2.1-base-shaped pipeline with RANDOM weights, for timing guidance.

No machine here can download SD's weights, but cost per step depends only on the shapes: this
writes a pipeline with the published SD 2.1-base component configs (UNet ~865M parameters,
SD's VAE, an OpenCLIP-H-sized 23-layer text encoder, SD's scheduler, epsilon prediction) and
random weights, in the diffusers ``save_pretrained`` layout, loadable with
``prior=stable-diffusion prior.model=<out_dir>``. Its outputs mean nothing.

    python tools/build_random_sd_pipeline.py /path/to/out [--dtype float16] [--seed 0] [--check]

The tokenizer is the project's closed-vocabulary CLIPTokenizer (shapes-world words; the text
encoder keeps SD's 49408-row embedding table, so cost is unchanged).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the repo

from scorelift.library.bpe_vocabulary import build_clip_tokenizer  # noqa: E402
from scorelift.plugins.priors.tiny_random import SHAPES_WORLD_WORDS  # noqa: E402

# stabilityai/stable-diffusion-2-1-base, unet/config.json (published values).
SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0, layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, dual_cross_attention=False,
)  # fmt: skip

# vae/config.json of SD 1.x/2.x (sample_size 512 for 2.1-base).
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), act_fn="silu", norm_num_groups=32, scaling_factor=0.18215,
)  # fmt: skip

# text_encoder/config.json (OpenCLIP ViT-H/14 text tower without its last layer, as SD 2.x ships it).
SD21_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
    layer_norm_eps=1e-5,
)  # fmt: skip

# scheduler/scheduler_config.json (PNDMScheduler in the published repo).
SD21_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)  # fmt: skip

SD21_UNET_PARAMS = 865_910_724  # the published checkpoint's UNet parameter count


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(out_dir: Path, dtype: torch.dtype, seed: int) -> dict[str, int]:
    """Write the pipeline to ``out_dir``; returns the parameter count of each component."""
    import tempfile

    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = build_clip_tokenizer(list(SHAPES_WORLD_WORDS), tok_dir, model_max_length=77)
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD_VAE)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **SD21_TEXT,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        counts = {"unet": count(unet), "vae": count(vae), "text_encoder": count(text_encoder)}
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=PNDMScheduler(**SD21_SCHEDULER),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
        pipe.to(dtype=dtype)
        pipe.save_pretrained(str(out_dir), safe_serialization=True)
    return counts


def check(out_dir: Path) -> None:
    """Load the result as the stable-diffusion prior and time one CFG UNet call (batch 2)."""
    from scorelift.plugins.priors.stable_diffusion import StableDiffusionPrior

    device = "cuda" if torch.cuda.is_available() else "cpu"
    prior = StableDiffusionPrior(
        dict(model=str(out_dir), local_files_only=True, dtype="auto", view_templates={}, text_cache_dir=None),
        device=device,
    )
    text = prior.condition("a red cube", ["front"])
    z = torch.randn(1, prior.latent_channels, prior.latent_size, prior.latent_size, device=device)
    t = torch.tensor([500], device=device)
    for i in range(3):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        e_c, _ = prior.predict_eps(z, t, text.cond, text.uncond)
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"check: UNet CFG call {i}: {1000 * (time.perf_counter() - start):.1f} ms on {device} "
              f"({prior.dtype}), e_c {tuple(e_c.shape)}, finite={bool(e_c.isfinite().all())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the pipeline to")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="load it as a prior and time one UNet call")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    counts = build(args.out_dir, getattr(torch, args.dtype), args.seed)
    for name, n in counts.items():
        print(f"{name}: {n:,} parameters")
    note = "matches" if counts["unet"] == SD21_UNET_PARAMS else f"DIFFERS from the published {SD21_UNET_PARAMS:,}"
    print(f"UNet parameter count {counts['unet']:,} {note} (SD 2.1-base)")
    print(f"wrote {args.out_dir} ({args.dtype}) in {time.perf_counter() - start:.0f} s")
    if args.check:
        check(args.out_dir)
    return 0 if counts["unet"] == SD21_UNET_PARAMS else 1


if __name__ == "__main__":
    sys.exit(main())
