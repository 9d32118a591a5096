"""The stable-diffusion and tiny-random priors on a tiny random-weight pipeline (CPU, offline)."""

from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from scorelift.errors import ConfigError, PriorLoadError
from tests.conftest import TINY_LATENT_SIZE, load_prior, pipeline_variant

VIEWS = ["front", "side", "back", "overhead"]
pytestmark = pytest.mark.usefixtures("single_thread")


def manual_unet(prior, x, t, cond, uncond):
    """The raw UNet output for batch [x, x] with [cond, uncond], called by hand."""
    with torch.no_grad():
        return prior.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([cond, uncond])).sample


# ---------------------------------------------------------------- loading
def test_loads_from_directory_and_exposes_the_interface(tiny_prior):
    p = tiny_prior
    assert (p.latent_channels, p.latent_size, p.pixel_size) == (4, TINY_LATENT_SIZE, 2 * TINY_LATENT_SIZE)
    assert p.num_train_timesteps == 1000 and p.prediction_type == "epsilon"
    assert p.device == torch.device("cpu") and p.dtype == torch.float32  # dtype auto on a CPU
    # SD's scaled-linear schedule, computed by hand.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, 0).float()
    assert p.alphas_cumprod.dtype == torch.float32 and p.alphas_cumprod.shape == (1000,)
    torch.testing.assert_close(p.alphas_cumprod, expected)
    for module in (p.unet, p.vae, p.text_encoder):
        assert not any(q.requires_grad for q in module.parameters())
    assert p.scheduler is not None and p.tokenizer.model_max_length == 77
    assert (p.vae_shift, p.vae_scale) == (0.0, pytest.approx(0.18215))


def test_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(PriorLoadError) as err:
        load_prior(missing)
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "model_index.json" in msg and "unet/" in msg and "prior.model" in msg  # says what is valid


def test_directory_without_unet_names_the_path(tiny_pipeline_dir, tmp_path):
    broken = pipeline_variant(tiny_pipeline_dir, tmp_path / "broken", {})
    shutil.rmtree(broken / "unet")
    with pytest.raises(PriorLoadError, match="no unet/ sub-folder") as err:
        load_prior(broken)
    assert str(broken) in str(err.value)


@pytest.mark.parametrize("damage", ["config", "weights"])
def test_corrupt_directory_names_the_path_and_the_cause(tiny_pipeline_dir, tmp_path, damage):
    broken = pipeline_variant(tiny_pipeline_dir, tmp_path / "corrupt", {})
    if damage == "config":
        (broken / "unet" / "config.json").write_text("{not json")
    else:
        weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    with pytest.raises(PriorLoadError) as err:
        load_prior(broken)
    msg = str(err.value)
    assert str(broken) in msg and "diffusers failed with" in msg


def test_directory_without_model_index_or_weights(tiny_pipeline_dir, tmp_path):
    no_index = pipeline_variant(tiny_pipeline_dir, tmp_path / "no-index", {})
    (no_index / "model_index.json").unlink()
    with pytest.raises(PriorLoadError, match="no model_index.json"):
        load_prior(no_index)
    no_weights = pipeline_variant(tiny_pipeline_dir, tmp_path / "no-weights", {})
    (no_weights / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PriorLoadError, match="lacks diffusion_pytorch_model.safetensors"):
        load_prior(no_weights)


def test_unknown_hub_id_offline_is_a_prior_load_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PriorLoadError) as err:
        load_prior("nobody-here/no-such-model")
    assert "'nobody-here/no-such-model'" in str(err.value) and "local_files_only" in str(err.value)


def test_bad_view_templates_are_config_errors(tiny_pipeline_dir):
    with pytest.raises(ConfigError, match="lacks the placeholder"):
        load_prior(tiny_pipeline_dir, view_templates={v: "no placeholder" for v in VIEWS})
    with pytest.raises(ConfigError, match="key 'left'"):
        load_prior(tiny_pipeline_dir, view_templates={"left": "{prompt}"})
    with pytest.raises(ConfigError, match="lacks overhead"):
        load_prior(tiny_pipeline_dir, view_templates={v: "{prompt}" for v in VIEWS[:3]})


# ---------------------------------------------------------------- VAE
def test_encode_decode_shapes_and_gradient(tiny_prior):
    p = tiny_prior
    rgb = torch.rand(2, 3, 20, 20, requires_grad=True)  # not the pixel size: resized inside
    z = p.encode_images(rgb)
    assert z.shape == (2, 4, TINY_LATENT_SIZE, TINY_LATENT_SIZE) and z.dtype == torch.float32
    z.square().sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert all(q.grad is None for q in p.vae.parameters())
    x = p.decode_latents(z.detach())
    assert x.shape == (2, 3, p.pixel_size, p.pixel_size)
    assert x.min() >= 0 and x.max() <= 1


def test_encode_resizes_bilinearly_then_maps_to_minus_one_one(tiny_prior):
    p = tiny_prior
    rgb = torch.rand(1, 3, 24, 24)
    resized = F.interpolate(rgb, (p.pixel_size, p.pixel_size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        raw = p.vae.encode(2 * resized - 1).latent_dist.mean
        torch.testing.assert_close(p.encode_images(rgb), raw * 0.18215)


def test_shift_and_scale_factors_are_applied(tiny_pipeline_dir, tiny_prior, tmp_path):
    shifted_dir = pipeline_variant(
        tiny_pipeline_dir, tmp_path / "shifted", {"vae/config.json": {"shift_factor": 0.3, "scaling_factor": 0.5}}
    )
    shifted = load_prior(shifted_dir)
    assert (shifted.vae_shift, shifted.vae_scale) == (0.3, 0.5)
    rgb = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        raw = tiny_prior.encode_images(rgb) / 0.18215  # same weights, SD-style (no shift)
        torch.testing.assert_close(shifted.encode_images(rgb), (raw - 0.3) * 0.5)
        # decode inverts the normalisation: the same raw latent decodes to the same image.
        z_plain = torch.randn(1, 4, 8, 8)
        z_shifted = (z_plain / 0.18215 - 0.3) * 0.5
        torch.testing.assert_close(shifted.decode_latents(z_shifted), tiny_prior.decode_latents(z_plain))


# ---------------------------------------------------------------- UNet
def test_predict_eps_is_one_unet_call_in_cond_uncond_order(tiny_prior):
    p = tiny_prior
    text = p.condition("a red cube", ["front", "back"])
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.tensor([30, 700])
    e_c, e_u = p.predict_eps(z, t, text.cond, text.uncond)
    assert e_c.shape == e_u.shape == z.shape and e_c.dtype == torch.float32
    assert not e_c.requires_grad and not e_u.requires_grad  # computed under no_grad
    out = manual_unet(p, z.detach(), t, text.cond, text.uncond)
    torch.testing.assert_close(e_c, out[:2])
    torch.testing.assert_close(e_u, out[2:])
    # The two halves differ clearly, so a swapped (uncond, cond) order fails the checks above.
    assert (e_c - e_u).abs().max() > 100 * 1.3e-6 * e_c.abs().max()


def test_v_prediction_is_converted_to_eps(tiny_pipeline_dir, tmp_path):
    vdir = pipeline_variant(
        tiny_pipeline_dir, tmp_path / "vpred", {"scheduler/scheduler_config.json": {"prediction_type": "v_prediction"}}
    )
    p = load_prior(vdir)
    assert p.prediction_type == "v_prediction"
    text = p.condition("a blue torus", ["side"])
    z_t = torch.randn(1, 4, 8, 8)
    t = torch.tensor([600])
    e_c, e_u = p.predict_eps(z_t, t, text.cond, text.uncond)
    v = manual_unet(p, z_t, t, text.cond, text.uncond)
    ab = p.alphas_cumprod[600]
    torch.testing.assert_close(e_c, ab.sqrt() * v[:1] + (1 - ab).sqrt() * z_t)
    torch.testing.assert_close(e_u, ab.sqrt() * v[1:] + (1 - ab).sqrt() * z_t)


def test_v_conversion_formula_recovers_eps():
    """eps = sqrt(ab) v + sqrt(1 - ab) z_t inverts v = sqrt(ab) eps - sqrt(1 - ab) x0."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    ab = torch.tensor(0.3)
    z_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(ab.sqrt() * v + (1 - ab).sqrt() * z_t, eps)


# ---------------------------------------------------------------- text
def test_text_embeddings_are_cached_in_memory(fresh_prior, monkeypatch):
    p = fresh_prior
    calls = []
    original = p._run_text_encoder
    monkeypatch.setattr(p, "_run_text_encoder", lambda prompts: calls.append(list(prompts)) or original(prompts))
    first = p.encode_text(["a red cube", ""])
    second = p.encode_text(["", "a red cube", "a red cube"])
    assert calls == [["a red cube", ""]]
    assert first.shape == (2, 77, p.text_encoder.config.hidden_size)
    torch.testing.assert_close(second[1], first[0])
    torch.testing.assert_close(second[0], first[1])
    assert not torch.allclose(first[0], first[1])


def test_text_embeddings_disk_cache(tiny_pipeline_dir, tmp_path, monkeypatch):
    cache = tmp_path / "text-cache"
    a = load_prior(tiny_pipeline_dir, text_cache_dir=str(cache))
    emb = a.encode_text(["a green cone"])
    assert len(list(cache.glob("*.pt"))) == 1
    b = load_prior(tiny_pipeline_dir, text_cache_dir=str(cache))
    monkeypatch.setattr(b, "_run_text_encoder", lambda prompts: pytest.fail(f"re-encoded {prompts}"))
    torch.testing.assert_close(b.encode_text(["a green cone"]), emb)


def test_view_dependent_prompts_use_the_templates(fresh_prior):
    p = fresh_prior
    text = p.condition("  a red cube ", VIEWS)
    expected = p.encode_text([f"a red cube, {v} view" for v in VIEWS])
    torch.testing.assert_close(text.cond, expected)
    torch.testing.assert_close(text.cond_view_independent, p.encode_text(["a red cube"] * 4))
    torch.testing.assert_close(text.uncond, p.encode_text([""] * 4))
    assert not torch.allclose(text.cond[0], text.cond[2])  # front and back differ


def test_custom_and_empty_view_templates(tiny_pipeline_dir):
    sjc_style = {"front": "front view of {prompt}", "side": "side view of {prompt}",
                 "back": "backside view of {prompt}", "overhead": "overhead view of {prompt}"}  # fmt: skip
    p = load_prior(tiny_pipeline_dir, view_templates=sjc_style)
    assert p.view_prompt("a cone", "back") == "backside view of a cone"
    text = p.condition("a cone", ["back", "overhead"])
    torch.testing.assert_close(text.cond, p.encode_text(["backside view of a cone", "overhead view of a cone"]))
    plain = load_prior(tiny_pipeline_dir, view_templates={})
    text = plain.condition("a cone", ["front", "back"])
    torch.testing.assert_close(text.cond, text.cond_view_independent)


def test_validate_prompt_errors(tiny_prior):
    for empty in ("", "   "):
        with pytest.raises(ConfigError, match="empty"):
            tiny_prior.validate_prompt(empty)
    long_prompt = " ".join(["a red cube"] * 30)  # 90 words + start/end = 92 tokens
    with pytest.raises(ConfigError, match=r"92 tokens long .* at most 77"):
        tiny_prior.validate_prompt(long_prompt)
    tiny_prior.validate_prompt("An Orange Cone")  # fine


# ---------------------------------------------------------------- tiny-random
def test_tiny_random_prior_builds_once_and_warns(tmp_path, monkeypatch):
    from scorelift.plugins.priors import tiny_random

    cfg = dict(cache_dir=str(tmp_path), latent_size=8, vae_blocks=2)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        first = tiny_random.TinyRandomPrior(cfg)
    assert (first.latent_size, first.pixel_size) == (8, 16)
    built = [d for d in tmp_path.iterdir() if d.name.startswith("tiny-random-")]
    assert len(built) == 1 and (built[0] / "model_index.json").is_file()
    monkeypatch.setattr(tiny_random, "build_tiny_pipeline", lambda *a, **k: pytest.fail("rebuilt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = tiny_random.TinyRandomPrior(cfg)
    for a, b in zip(first.unet.parameters(), second.unet.parameters()):
        assert torch.equal(a, b)
    text = second.condition("a purple torus", ["front"])
    e_c, _ = second.predict_eps(torch.randn(1, 4, 8, 8), torch.tensor([500]), text.cond, text.uncond)
    assert torch.isfinite(e_c).all()


def test_registration(tiny_pipeline_dir, tmp_path):
    from scorelift.builders import build_named

    p = build_named("prior", "stable-diffusion", {"model": str(tiny_pipeline_dir)})
    assert p.latent_size == TINY_LATENT_SIZE
    with pytest.warns(UserWarning):
        tr = build_named("prior", "tiny-random", {"cache_dir": str(tmp_path), "latent_size": 8, "vae_blocks": 2})
    assert tr.pixel_size == 16
    assert math.isclose(tr.alphas_cumprod[0].item(), 1 - 0.00085, rel_tol=1e-6)


def test_half_precision_unet_returns_float32(tiny_pipeline_dir, tiny_prior):
    """dtype float16 (what `auto` picks on CUDA) runs here too: inputs are cast, outputs are fp32."""
    half = load_prior(tiny_pipeline_dir, dtype="float16")
    assert half.unet.dtype == half.vae.dtype == torch.float16 and half.dtype == torch.float16
    text16, text32 = half.condition("a red cube", ["front"]), tiny_prior.condition("a red cube", ["front"])
    z, t = torch.randn(1, 4, 8, 8), torch.tensor([400])
    e16, _ = half.predict_eps(z, t, text16.cond, text16.uncond)
    e32, _ = tiny_prior.predict_eps(z, t, text32.cond, text32.uncond)
    assert e16.dtype == torch.float32
    torch.testing.assert_close(e16, e32, rtol=0.02, atol=0.02)
    rgb = torch.rand(1, 3, 16, 16, requires_grad=True)
    half.encode_images(rgb).sum().backward()
    assert rgb.grad.dtype == torch.float32 and torch.isfinite(rgb.grad).all()
    with pytest.raises(ConfigError, match="prior.dtype"):
        load_prior(tiny_pipeline_dir, dtype="float8")


@pytest.mark.parametrize("size", [(7, 5), (16, 16), (3, 2)])
def test_deterministic_resize_equals_interpolate(size, deterministic_algorithms):
    """The matrix form of bilinear resizing (deterministic runs; F.interpolate's CUDA backward is
    not deterministic) equals F.interpolate(align_corners=False), up and down, value and gradient."""
    from scorelift.maths.resize import resize_bilinear

    x = torch.randn(2, 3, 6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    ours = resize_bilinear(x, size)
    torch.use_deterministic_algorithms(False)
    reference = F.interpolate(x, size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    w = torch.randn(ours.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
    (g_ref,) = torch.autograd.grad((reference * w).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)
