"""The shapes prior: its training scripts (CPU smoke run) and the committed pipeline directory.

The smoke run trains tiny models for a few steps with every script of the shapes world's training tools, in a
temporary directory, and checks that the result is a StableDiffusionPipeline that loads and
generates a 64 x 64 image. The committed prior (apps/shapes_world/prior) is checked for the
contract's layout, size, schedule and latent normalisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scorelift.shapes_world import world
from scorelift.shapes_world.training import models

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "apps" / "shapes_world" / "prior"


def test_captions_cover_the_world_and_tokenize_to_single_tokens(tmp_path):
    tok = models.build_tokenizer(tmp_path / "tok")
    sampler = models.CaptionSampler(tok, "cpu")
    assert sampler.table.shape == (36, 2, models.N_VIEW_VARIANTS, models.TOKENIZER_MAX_LENGTH)
    colours = list(world.COLOURS)
    for o, (c, s) in enumerate(world.ALL_OBJECTS):
        for a in range(2):
            for v in range(models.N_VIEW_VARIANTS):
                text = sampler.text(colours.index(c), world.SHAPES.index(s), a, v)
                assert world.parse_prompt(text) == (c, s), text
                ids = sampler.table[o, a, v]
                # Every word is one token, so BOS + words + EOS fits well inside the length.
                n_words = len(text.replace(",", " ,").split())
                assert int((ids != tok.pad_token_id).sum()) == 1 + n_words, text
                assert ids[1 + n_words] == tok.eos_token_id
    assert sampler.text(0, 1, 0, 0) == "a red cube"
    assert sampler.text(5, 3, 0, 2) == "an orange cone, side view"
    assert sampler.text(0, 1, 0, 7) == "backside view of a red cube"
    assert sampler.text(0, 1, 1, 0) == "an red cube"


def test_caption_sampler_probabilities(tmp_path):
    tok = models.build_tokenizer(tmp_path / "tok")
    sampler = models.CaptionSampler(tok, "cpu")
    n = 20_000
    g = torch.Generator().manual_seed(0)
    colour = torch.randint(6, (n,), generator=g)
    shape = torch.randint(6, (n,), generator=g)
    view = torch.randint(4, (n,), generator=g)
    ids, variant = sampler.sample(colour, shape, view, g)
    empty = variant < 0
    assert abs(empty.float().mean().item() - 0.1) < 0.01
    assert (ids[empty] == sampler.empty).all()
    with_view = (variant > 0)[~empty].float().mean().item()
    assert abs(with_view - 0.5) < 0.02
    # The view phrase names the sample's own view word.
    v = variant[variant > 0]
    assert ((v - 1) % 4 == view[variant > 0]).all()


def test_fold_latent_normalisation_keeps_decodes_and_normalises_means():
    torch.manual_seed(0)
    vae = models.build_vae(models.preset("smoke")).eval()
    x = torch.rand(6, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        before_mean, before_std = dist.mean.clone(), dist.std.clone()
        before_dec = vae.decode(dist.mean).sample
    m = torch.tensor([0.5, -1.0, 2.0, 0.1])
    s = torch.tensor([2.0, 0.5, 3.0, 1.5])
    models.fold_latent_normalisation(vae, m, s)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        after_dec = vae.decode(dist.mean).sample
    shape = (1, 4, 1, 1)
    torch.testing.assert_close(dist.mean, (before_mean - m.view(shape)) / s.view(shape), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dist.std, before_std / s.view(shape), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(after_dec, before_dec, atol=1e-5, rtol=1e-4)


def test_smoke_training_produces_a_loadable_pipeline(tmp_path):
    """Every script on the CPU with tiny models; the pipeline loads and makes a 64x64 image."""
    from diffusers import StableDiffusionPipeline

    from scorelift.shapes_world.training import build_pipeline, sample_accuracy, train_unet, train_vae

    work, pipe_dir = tmp_path / "work", tmp_path / "pipe"
    vae_metrics = train_vae.main(["--work", str(work), "--smoke", "--device", "cpu"])
    assert vae_metrics["steps"] > 0 and (work / "vae" / "config.json").exists()
    # The latent statistics were folded: normalised posterior samples are ~zero-mean, ~unit-std.
    assert abs(vae_metrics["shift_factor"]) < 0.2
    unet_metrics = train_unet.main(["--work", str(work), "--smoke", "--device", "cpu"])
    assert unet_metrics["steps"] > 0 and (work / "unet" / "config.json").exists()
    build_pipeline.main(["--work", str(work), "--out", str(pipe_dir), "--fp32"])
    acc = sample_accuracy.main([
        "--pipeline", str(pipe_dir), "--n-per-prompt", "1", "--steps", "2", "--device", "cpu",
        "--json", str(work / "sample_accuracy.json"), "--grid", str(pipe_dir / "samples.png"),
    ])
    assert acc["n_samples"] == 36 and 0.0 <= acc["accuracy"] <= 1.0
    assert (pipe_dir / "samples.png").exists()
    build_pipeline.main(["--work", str(work), "--out", str(pipe_dir), "--card-only"])
    assert "Sample accuracy" in (pipe_dir / "MODEL_CARD.md").read_text()

    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red cube, front view", height=64, width=64, num_inference_steps=2, guidance_scale=7.5,
               generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (1, 3, 64, 64)
    assert torch.isfinite(out.images).all()


@pytest.mark.skipif(not (SHIPPED / "model_index.json").exists(), reason="the shapes prior is not committed")
def test_shipped_prior_follows_the_contract():
    from diffusers import StableDiffusionPipeline

    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size < 40_000_000
    for name in ("MODEL_CARD.md", "samples.png"):
        assert (SHIPPED / name).exists()
    sched = json.loads((SHIPPED / "scheduler" / "scheduler_config.json").read_text())
    assert sched["beta_schedule"] == "scaled_linear"
    assert sched["beta_start"] == 0.00085 and sched["beta_end"] == 0.012
    assert sched["num_train_timesteps"] == 1000 and sched["prediction_type"] == "epsilon"

    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == 4
    assert pipe.vae.config.latent_channels == 4 and 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 4
    # SD's pipeline ignores shift_factor: it is ~0 because the means are folded into the VAE.
    assert abs(pipe.vae.config.shift_factor) < 0.01
    torch.testing.assert_close(
        pipe.scheduler.alphas_cumprod,
        torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2, 0),
    )
    # Latent normalisation on ground-truth renders: (z - shift) * scale ~ zero mean, unit variance.
    from scorelift.shapes_world.dataset import sample_training_batch

    batch = sample_training_batch(128, torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = pipe.vae.encode(batch["images"] * 2 - 1).latent_dist.sample(torch.Generator().manual_seed(0))
    zn = (z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    assert abs(float(zn.mean())) < 0.15 and 0.85 < float(zn.std()) < 1.15

    # It knows the world: a few DDIM samples at CFG 7.5, both prompt styles, are the right objects.
    from scorelift.shapes_world.evaluate import classify_samples

    prompts = ["a purple torus", "an orange cone, side view", "backside view of a green cube"]
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, height=64, width=64, num_inference_steps=20, guidance_scale=7.5, generator=gens,
                  output_type="pt").images
    assert images.shape == (3, 3, 64, 64)
    assert classify_samples(images, prompts)["accuracy"] == 1.0
