"""The deepfloyd-if prior on a tiny random-weight IF stage-I pipeline (CPU, offline): the declared
facts, the pixel range map, one CFG call returning eps with the learned variance dropped, T5 with
its attention mask, view words, named load errors, and a two-step run through launch.py."""

from __future__ import annotations

import json
import math
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

from scorelift.errors import ConfigError, PriorLoadError
from scorelift.plugins.priors.deepfloyd_if import DeepFloydIFPrior
from tests.conftest import pipeline_variant
from tests.tiny_if_pipeline import TINY_IF_SIZE, TINY_IF_TEXT_DIM, build_tiny_if_pipeline

pytestmark = pytest.mark.subprocess

VIEWS = ["front", "side", "back", "overhead"]
S = TINY_IF_SIZE
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def if_dir(tmp_path_factory):
    return build_tiny_if_pipeline(tmp_path_factory.mktemp("tiny-if") / "pipeline", seed=0)


def load(model, **options) -> DeepFloydIFPrior:
    return DeepFloydIFPrior({"model": str(model), **options}, "cpu")


def inspect(model, prompt="a red cube", **options) -> dict:
    return DeepFloydIFPrior.inspect({"model": str(model), **options}, prompt)


@pytest.fixture(scope="module")
def if_prior(if_dir):
    """Shared: do not mutate it."""
    return load(if_dir)


def cosine_alphas_cumprod(T: int = 1000) -> torch.Tensor:
    """IF's squaredcos_cap_v2 schedule by hand: beta_i = min(1 - f((i+1)/T) / f(i/T), 0.999),
    f(u) = cos((u + 0.008) / 1.008 * pi / 2)^2."""
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


# ---------------------------------------------------------------- loading and facts
def test_loads_on_cpu_with_the_declared_facts(if_prior):
    p = if_prior
    assert (p.space, p.conditioning, p.has_unconditional, p.parameterisation) == ("pixel", "text", True, "vp")
    assert p.prediction_type == "epsilon" and p.num_train_timesteps == 1000
    assert (p.latent_channels, p.latent_size, p.pixel_size, p.eps_channels) == (3, S, S, 3)
    assert p.unet.config.out_channels == 6  # eps and the learned variance
    assert p.data_range == (-1.0, 1.0) and p.text_attention_mask is True
    assert p.tokenizer.model_max_length == 77
    assert p.device == torch.device("cpu") and p.dtype == torch.float32  # dtype auto on a CPU
    assert p.capabilities == frozenset({"trainable_denoiser"})
    torch.testing.assert_close(p.alphas_cumprod, cosine_alphas_cumprod())
    for module in (p.unet, p.text_encoder):
        assert not any(q.requires_grad for q in module.parameters())
    # TextPrompts' text side wins over PixelDenoiserPrior's class-label one.
    assert DeepFloydIFPrior.condition.__qualname__.startswith("TextPrompts.")
    assert DeepFloydIFPrior.encode_text.__qualname__.startswith("TextPrompts.")


def test_inspect_returns_the_facts_without_loading_weights(if_dir, monkeypatch):
    import diffusers
    import safetensors.torch
    import transformers

    def refuse(*args, **kwargs):
        pytest.fail("inspect loaded weights")

    for owner, name in [(diffusers.DiffusionPipeline, "from_pretrained"), (diffusers.IFPipeline, "from_pretrained"),
                        (diffusers.UNet2DConditionModel, "from_pretrained"),
                        (transformers.T5EncoderModel, "from_pretrained"), (safetensors.torch, "load_file")]:
        monkeypatch.setattr(owner, name, refuse)
    assert inspect(if_dir) == {"space": "pixel", "conditioning": "text", "has_unconditional": True,
                               "latent_channels": 3, "latent_size": S, "pixel_size": S}


def test_registered_as_a_prior_option():
    from scorelift.compose import compose_config
    from scorelift.registry import find

    assert find("prior", "deepfloyd-if") is DeepFloydIFPrior
    cfg = compose_config(["prior=deepfloyd-if"], with_hydra=False)
    assert cfg.prior.model == "DeepFloyd/IF-I-XL-v1.0" and cfg.prior.local_files_only is True
    assert cfg.prior.view_templates["back"] == "{prompt}, back view"


# ---------------------------------------------------------------- pixels
def test_encode_and_decode_map_to_minus_one_one_and_back(if_prior):
    p = if_prior
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0]).repeat(S * S * 3 // 4)
    rgb = levels.reshape(1, 3, S, S).clone().requires_grad_(True)
    x = p.encode_images(rgb)
    assert x.shape == (1, 3, S, S) and x.dtype == torch.float32
    torch.testing.assert_close(x, 2 * rgb.detach() - 1)
    assert set(x.unique().tolist()) == {-1.0, -0.5, 0.0, 1.0}
    torch.testing.assert_close(p.decode_latents(x.detach()), rgb.detach())
    x.sum().backward()
    torch.testing.assert_close(rgb.grad, torch.full_like(rgb, 2.0))  # d(2x - 1)/dx
    # Renders of another size are resized bilinearly first; decoding clamps to [0, 1].
    big = torch.rand(2, 3, 24, 24)
    torch.testing.assert_close(p.encode_images(big), 2 * F.interpolate(big, (S, S), mode="bilinear") - 1)
    assert p.decode_latents(torch.tensor([-3.0, 3.0]).reshape(1, 2, 1, 1)).tolist() == [[[[0.0]], [[1.0]]]]


# ---------------------------------------------------------------- denoiser
def test_predict_eps_is_one_cfg_call_with_the_variance_dropped(if_prior):
    p = if_prior
    text = p.condition("a red cube", ["front", "back"])
    z = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([30, 700])
    e_c, e_u = p.predict_eps(z, t, text.cond, text.uncond)
    assert e_c.shape == e_u.shape == (2, 3, S, S) and e_c.dtype == torch.float32
    with torch.no_grad():
        out = p.unet(torch.cat([z, z]), torch.cat([t, t]),
                     encoder_hidden_states=torch.cat([text.cond, text.uncond])).sample
    assert out.shape == (4, 6, S, S)
    torch.testing.assert_close(e_c, out[:2, :3])
    torch.testing.assert_close(e_u, out[2:, :3])
    assert (e_c - e_u).abs().max() > 1e-4  # the halves differ: a swapped order would fail above


def test_half_precision_returns_float32_eps(if_dir, if_prior):
    """dtype float16 (what `auto` picks on CUDA) runs here too: inputs are cast, eps is float32."""
    half = load(if_dir, dtype="float16")
    assert half.unet.dtype == torch.float16 and half.dtype == torch.float16
    t16, t32 = half.condition("a red cube", ["front"]), if_prior.condition("a red cube", ["front"])
    assert t16.cond.dtype == torch.float16
    z, t = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(2)), torch.tensor([400])
    e16, _ = half.predict_eps(z, t, t16.cond, t16.uncond)
    e32, _ = if_prior.predict_eps(z, t, t32.cond, t32.uncond)
    assert e16.dtype == torch.float32
    torch.testing.assert_close(e16, e32, rtol=0.02, atol=0.02)


def test_trainable_copy_has_lora_targets_and_vsd_starts_as_the_prior(if_prior):
    from scorelift.data.cameras import make_cameras
    from scorelift.plugins.guidance.vsd import LORA_TARGETS, VSDGuidance

    copy = if_prior.trainable_denoiser_copy()
    assert copy is not if_prior.unet
    names = {n.rsplit(".", 1)[-1] if not n.endswith("to_out.0") else "to_out.0" for n, _ in copy.named_modules()}
    assert set(LORA_TARGETS) <= names and {"add_k_proj", "add_v_proj"} <= names
    vsd = VSDGuidance({}, if_prior)
    text = if_prior.condition("a blue sphere", ["front", "side"])
    cams = make_cameras(torch.tensor([20.0, 30.0]), torch.tensor([0.0, 90.0]), torch.tensor([2.0, 2.0]),
                        torch.tensor([40.0, 40.0]), S)
    z_t, t = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(1)), torch.tensor([250, 600])
    with torch.no_grad():
        e_lora = vsd.lora_eps(z_t, t, text.cond_view_independent, cams.c2w)
    e_ref, _ = if_prior.predict_eps(z_t, t, text.cond_view_independent, text.uncond)
    torch.testing.assert_close(e_lora, e_ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- text
def test_t5_is_called_with_the_attention_mask(if_prior):
    p = if_prior
    tokens = p.tokenizer(["a green cone"], padding="max_length", max_length=77, return_tensors="pt")
    assert tokens.attention_mask.sum() == 4  # three words and </s>: the rest is padding
    assert p.tokenizer.unk_token_id not in tokens.input_ids[0].tolist()
    with torch.no_grad():
        masked = p.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        unmasked = p.text_encoder(tokens.input_ids).last_hidden_state
    assert not torch.allclose(masked, unmasked, atol=1e-4)
    ours = p.encode_text(["a green cone"])
    assert ours.shape == (1, 77, TINY_IF_TEXT_DIM)
    torch.testing.assert_close(ours, masked)


def test_prompts_are_lower_cased_as_if_does(if_prior):
    p = if_prior
    torch.testing.assert_close(p.encode_text(["  A Green CONE "]), p.encode_text(["a green cone"]))
    assert p.token_count("A Green CONE") == p.token_count("a green cone") == 4


def test_view_dependent_prompts_differ_per_view(if_prior):
    p = if_prior
    text = p.condition(" a yellow torus ", VIEWS)
    assert text.cond.shape == (4, 77, TINY_IF_TEXT_DIM)
    torch.testing.assert_close(text.cond, p.encode_text([f"a yellow torus, {v} view" for v in VIEWS]))
    torch.testing.assert_close(text.cond_view_independent, p.encode_text(["a yellow torus"] * 4))
    torch.testing.assert_close(text.uncond, p.encode_text([""] * 4))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(text.cond[i], text.cond[j])


def test_too_long_prompts_are_config_errors_at_inspect(if_dir, if_prior):
    too_long = " ".join(["a red cube"] * 26)  # 78 words + </s>
    with pytest.raises(ConfigError, match=r"79 tokens long .* at most 77"):
        inspect(if_dir, too_long)
    fits_alone = " ".join(["a red cube"] * 25)  # 76 tokens; ", front view" adds 3
    with pytest.raises(ConfigError, match=r"front view words .* 79 tokens long"):
        inspect(if_dir, fits_alone)
    assert inspect(if_dir, fits_alone, view_templates={})["pixel_size"] == S
    with pytest.raises(ConfigError, match="at most 77"):
        if_prior.validate_prompt(too_long)
    with pytest.raises(ConfigError, match="empty"):
        if_prior.validate_prompt("  ")


# ---------------------------------------------------------------- errors
def assert_names_path_and_layout(msg: str, path) -> None:
    assert str(path) in msg
    assert "IFPipeline" in msg and "model_index.json" in msg and "unet/" in msg and "tokenizer/" in msg
    assert "prior.model" in msg


def test_missing_directory_names_the_path_and_the_valid_layout(tmp_path):
    missing = tmp_path / "no-such-model"
    for attempt in (inspect, load):
        with pytest.raises(PriorLoadError, match="does not exist") as err:
            attempt(missing)
        assert_names_path_and_layout(str(err.value), missing)


@pytest.mark.parametrize("damage, words", [
    ("no unet", "has no unet/ sub-folder"),
    ("no tokenizer", "has no tokenizer/ sub-folder"),
    ("corrupt config", "is not a readable JSON file"),
    ("truncated weights", "is truncated"),
    ("stage II", "'IFSuperResolutionPipeline'"),
    ("variance without channels", "learned variance"),
    ("odd out channels", "outputs 4 channels"),
    ("score prediction", "predicts 'score'"),
])  # fmt: skip
def test_broken_directories_are_named_load_errors(if_dir, tmp_path, damage, words):
    broken = pipeline_variant(if_dir, tmp_path / "broken", {
        "stage II": {"model_index.json": {"_class_name": "IFSuperResolutionPipeline"}},
        "variance without channels": {"unet/config.json": {"out_channels": 3}},
        "odd out channels": {"unet/config.json": {"out_channels": 4}},
        "score prediction": {"scheduler/scheduler_config.json": {"prediction_type": "score"}},
    }.get(damage, {}))
    if damage == "no unet":
        shutil.rmtree(broken / "unet")
    elif damage == "no tokenizer":
        shutil.rmtree(broken / "tokenizer")
    elif damage == "corrupt config":
        (broken / "unet" / "config.json").write_text("{not json")
    elif damage == "truncated weights":
        weights = broken / "text_encoder" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:5000])  # an interrupted download
    for attempt in (inspect, load):  # the same named error before and at loading
        with pytest.raises(PriorLoadError, match=words) as err:
            attempt(broken)
        assert_names_path_and_layout(str(err.value), broken)


def test_an_uncached_hub_id_offline_is_a_load_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for attempt in (inspect, load):
        with pytest.raises(PriorLoadError) as err:
            attempt("nobody-here/no-such-if")
        msg = str(err.value)
        assert "'nobody-here/no-such-if'" in msg and "local_files_only" in msg and "IFPipeline" in msg


def test_an_fp16_variant_download_loads(if_dir, if_prior, tmp_path):
    """The hub's variant="fp16" files alone (what most people download): found and loaded."""
    variant = pipeline_variant(if_dir, tmp_path / "fp16", {})
    for part, name in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (variant / part / f"{name}.safetensors").rename(variant / part / f"{name}.fp16.safetensors")
    p = load(variant)
    for a, b in zip(p.unet.parameters(), if_prior.unet.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- a run
def test_two_dreamfusion_sds_steps_through_launch(if_dir, tmp_path):
    """prior=deepfloyd-if through scorelift's own start-up: compose, checks, build, train, outputs."""
    from tests.launching import REPO, launch

    run_dir = tmp_path / "run"
    result = launch([
        sys.executable, str(REPO / "launch.py"), "system=dreamfusion", "guidance=sds", "prior=deepfloyd-if",
        f"prior.model={if_dir}", "trainer.max_steps=2", "trainer.progress_bar=false", "geometry.resolution=12",
        "geometry.bbox_radius=1.0", "renderer.step_size=0.04", f"data.height={S}", f"data.width={S}",
        "data.batch_size=2", f"system.views.resolution={S}", "system.views.n_frames=4", "system.validation_every=10",
        "evaluators=[]", "device=cpu", f"hydra.run.dir={run_dir}",
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["invocations"][-1]["status"] == "finished" and info["invocations"][-1]["step"] == 2
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
