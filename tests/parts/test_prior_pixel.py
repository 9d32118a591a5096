"""The pixel-space priors ``diffusers-unet`` and ``score-sde`` on tiny random pipelines in the
real diffusers formats (tests/tiny_pixel_pipelines.py), and the start-up checks of pixel,
class-conditional and unconditional priors (CPU, offline)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from scorelift.errors import ConfigError, PriorLoadError
from scorelift.plugins.priors.diffusers_unet import DiffusersUNetPrior
from scorelift.plugins.priors.score_sde import ScoreSdePrior, ve_sigma_ladder
from tests import tiny_pixel_pipelines as tiny
from tests.run.test_system import compose_cfg

pytestmark = pytest.mark.usefixtures("single_thread")
VIEWS = ["front", "side"]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel-pipes")
    return {"ddpm": tiny.build_ddpm(root / "ddpm"), "class": tiny.build_class_ddim(root / "class"),
            "sde": tiny.build_score_sde(root / "sde"), "no-attention": tiny.build_ddpm(root / "plain", attention=False)}


def unet_prior(path, **options):
    return DiffusersUNetPrior(dict(model=str(path), **options), "cpu")


def sde_prior(path):
    return ScoreSdePrior(dict(model=str(path)), "cpu")


def draws(seed=0, t=(5, 700)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, tiny.SIZE, tiny.SIZE, generator=g), torch.tensor(t)


# ---------------------------------------------------------------- diffusers-unet
def test_unconditional_ddpm_is_one_call_of_the_unet_and_declares_itself(pipes):
    p = unet_prior(pipes["ddpm"])
    assert (p.space, p.conditioning, p.has_unconditional, p.parameterisation) == ("pixel", "none", True, "vp")
    assert (p.latent_channels, p.latent_size, p.pixel_size, p.num_train_timesteps) == (3, 16, 16, 1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # DDPM's linear schedule, by hand
    torch.testing.assert_close(p.alphas_cumprod, torch.cumprod(1 - betas, 0).float())
    text = p.condition(None, VIEWS)
    assert (text.cond, text.uncond, text.cond_view_independent) == (None, None, None) and not text.guided
    z, t = draws()
    e_c, e_u = p.predict_eps(z, t, text.cond, text.uncond)
    with torch.no_grad():
        expected = p.unet(z, t).sample  # eps prediction: the output itself
    torch.testing.assert_close(e_c, expected)
    assert torch.equal(e_c, e_u)  # one prediction, returned as both: CFG has nothing to combine
    assert not any(q.requires_grad for q in p.unet.parameters())


def test_pixels_map_to_the_data_range_and_back_exactly(pipes):
    rgb = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    p = unet_prior(pipes["ddpm"])
    x = p.encode_images(torch.nn.functional.interpolate(rgb, size=16, mode="nearest"))
    assert x.shape == (1, 3, 16, 16) and x.min() == -1.0 and x.max() == 1.0  # DDPM data: [-1, 1]
    torch.testing.assert_close(p.decode_latents(x), torch.nn.functional.interpolate(rgb, size=16, mode="nearest"))
    s = sde_prior(pipes["sde"])
    assert s.data_range == (0.0, 1.0)  # score-SDE data: [0, 1] (its pipeline clamps its samples there)
    torch.testing.assert_close(s.encode_images(torch.full((1, 3, 16, 16), 0.3)), torch.full((1, 3, 16, 16), 0.3))
    big = torch.rand(1, 3, 32, 32, requires_grad=True)
    p.encode_images(big).sum().backward()  # renders of another size are resized, with gradient
    assert big.grad is not None and big.grad.abs().sum() > 0


def test_class_prior_guides_against_its_null_class_and_drops_the_learned_variance(pipes):
    p = unet_prior(pipes["class"], class_names=["cube", "sphere", "torus"], null_class=3)
    assert (p.conditioning, p.has_unconditional, p.num_classes) == ("class", True, 4)
    text = p.condition("Sphere ", VIEWS)  # names match without case or surrounding space
    assert text.cond.tolist() == [1, 1] and text.uncond.tolist() == [3, 3] and text.guided
    z, t = draws(1)
    e_c, e_u = p.predict_eps(z, t, text.cond, text.uncond)
    with torch.no_grad():
        out = p.unet(torch.cat([z, z]), torch.cat([t, t]), class_labels=torch.tensor([1, 1, 3, 3])).sample
    assert out.shape[1] == 6  # [eps, variance]
    torch.testing.assert_close(torch.cat([e_c, e_u]), out[:, :3])
    assert p.class_index("2") == 2  # an index works as well as a name
    with pytest.raises(ConfigError, match=r"prompt='a red cube' names no class.*'cube', 'sphere', 'torus'.*0\.\.3"):
        p.class_index("a red cube")


def test_class_prior_without_a_null_class_has_no_unconditional_branch(pipes):
    p = unet_prior(pipes["class"])
    assert (p.conditioning, p.has_unconditional) == ("class", False)
    text = p.condition("1", VIEWS)
    assert text.uncond is None and not text.guided
    z, t = draws(2)
    e_c, e_u = p.predict_eps(z, t, text.cond, text.uncond)
    assert torch.equal(e_c, e_u)


def test_options_that_do_not_fit_the_model_are_refused_before_loading(pipes):
    with pytest.raises(ConfigError, match=r"prior.null_class=0 is set, but the model .* is unconditional"):
        DiffusersUNetPrior.inspect({"model": str(pipes["ddpm"]), "null_class": 0}, None)
    with pytest.raises(ConfigError, match=r"prior.null_class=9 is not a class of the model .* which has 4 \(labels 0..3\)"):
        DiffusersUNetPrior.inspect({"model": str(pipes["class"]), "null_class": 9}, "1")
    with pytest.raises(ConfigError, match="repeats a name"):
        DiffusersUNetPrior.inspect({"model": "x", "class_names": ["a", "A"]}, None)


# ---------------------------------------------------------------- score-sde
def test_score_sde_ticks_are_its_sigma_ladder_in_vp_notation(pipes):
    s = sde_prior(pipes["sde"])
    assert (s.parameterisation, s.prediction_type, s.conditioning, s.num_train_timesteps) == ("ve", "score", "none", 100)
    s.scheduler.set_sigmas(100)  # diffusers' own ladder
    torch.testing.assert_close(s.sigmas, s.scheduler.discrete_sigmas.double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(s.sigmas, ve_sigma_ladder(0.01, 50.0, 100))
    torch.testing.assert_close(s.alphas_cumprod, (1.0 / (1.0 + s.sigmas**2)).float())


def test_score_sde_eps_is_minus_sigma_times_the_score_at_the_ve_point(pipes):
    s = sde_prior(pipes["sde"])
    z_vp, t = draws(3, t=(0, 99))
    e_c, e_u = s.predict_eps(z_vp, t, None, None)
    sigma = s.sigmas[t].float().view(-1, 1, 1, 1)
    x_ve = z_vp * (1.0 + sigma**2).sqrt()  # z_t = x / sqrt(1 + sigma^2) for x = y + sigma n
    with torch.no_grad():
        score = s.unet(x_ve, sigma.flatten()).sample  # the Fourier UNet takes sigma, returns the score
    torch.testing.assert_close(e_c, -sigma * score, rtol=1e-4, atol=1e-5)
    assert torch.equal(e_c, e_u)


def test_score_sde_refuses_a_ddpm_directory_and_the_other_way_round(pipes):
    with pytest.raises(PriorLoadError, match=r"not ScoreSdeVeScheduler \(DDPM/DDIM models: prior=diffusers-unet\)"):
        sde_prior(pipes["ddpm"])
    with pytest.raises(PriorLoadError, match=r"'ScoreSdeVeScheduler'.*use prior=score-sde"):
        unet_prior(pipes["sde"])


# ---------------------------------------------------------------- loader errors
@pytest.mark.parametrize("loader", ["diffusers-unet", "score-sde"])
def test_missing_and_incomplete_directories_name_the_path_and_the_layout(pipes, tmp_path, loader):
    load = unet_prior if loader == "diffusers-unet" else sde_prior
    source = pipes["ddpm" if loader == "diffusers-unet" else "sde"]
    layout = "DDPMPipeline or DDIMPipeline directory" if loader == "diffusers-unet" else "ScoreSdeVePipeline directory"
    with pytest.raises(PriorLoadError, match="does not exist") as err:
        load(tmp_path / "nothing-here")
    assert str(tmp_path / "nothing-here") in str(err.value) and layout in str(err.value)
    no_unet = tmp_path / "no-unet"
    shutil.copytree(source, no_unet)
    shutil.rmtree(no_unet / "unet")
    with pytest.raises(PriorLoadError, match="has no unet/ sub-folder"):
        load(no_unet)
    no_sched = tmp_path / "no-scheduler"
    shutil.copytree(source, no_sched)
    (no_sched / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(PriorLoadError, match="lacks scheduler_config.json"):
        load(no_sched)
    truncated = tmp_path / "truncated"
    shutil.copytree(source, truncated)
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(PriorLoadError, match="truncated"):
        load(truncated)
    bad_json = tmp_path / "bad-json"
    shutil.copytree(source, bad_json)
    (bad_json / "unet" / "config.json").write_text("{oops")
    with pytest.raises(PriorLoadError, match="not a readable JSON file") as err:
        load(bad_json)
    assert layout in str(err.value)


def test_a_hub_id_offline_and_not_cached_says_so():
    with pytest.raises(PriorLoadError, match=r"not in the local Hugging Face cache.*local_files_only.*DDPMPipeline"):
        DiffusersUNetPrior.inspect({"model": "nobody/no-such-ddpm"}, None)


def test_learned_variance_must_match_the_output_channels(pipes, tmp_path):
    broken = tmp_path / "mismatch"
    shutil.copytree(pipes["ddpm"], broken)
    cfg_path = broken / "scheduler" / "scheduler_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "variance_type": "learned_range"}))
    with pytest.raises(PriorLoadError, match=r"outputs 3 channels for 3 in, but its scheduler's variance_type 'learned_range' means 6"):
        unet_prior(broken)


# ---------------------------------------------------------------- start-up checks and runs
def pixel_run(model, *extra, prior="diffusers-unet", system="dreamfusion", guidance="sds", steps=2):
    """Overrides of a tiny RGB run on a pixel prior (16 x 16 renders, the prior's size)."""
    return [f"system={system}", f"guidance={guidance}", f"prior={prior}", f"prior.model={model}",
            "geometry.resolution=12", "geometry.bbox_radius=1.0", "renderer.step_size=0.04",
            "geometry.n_features=3", "geometry.feature_activation=sigmoid", "background.n_features=3",
            "data.height=16", "data.width=16", "data.batch_size=2", "system.views.resolution=16",
            "system.views.n_frames=4", "system.validation_every=10", f"trainer.max_steps={steps}",
            "trainer.checkpoint_every=5", "trainer.progress_bar=false", "device=cpu", "prompt=null", *extra]


def start_check(overrides, tmp_path):
    from scorelift.checks import check_inputs

    check_inputs(compose_cfg(overrides), tmp_path / "run")


def test_latent_renders_on_a_pixel_prior_are_refused_with_the_rgb_settings(pipes, tmp_path):
    over = [o for o in pixel_run(pipes["ddpm"], system="sjc", guidance="paas") if not o.startswith(("geometry.n_f", "geometry.feature", "background.n"))]
    with pytest.raises(ConfigError, match=r"pixel-space model \(no VAE.*renders 4-channel latents.*geometry.n_features=3 "
                                          r"geometry.feature_activation=sigmoid background.n_features=3"):
        start_check(over, tmp_path)


def test_an_unconditional_prior_takes_no_prompt_and_no_cfg_settings(pipes, tmp_path):
    with pytest.raises(ConfigError, match=r"prompt='a red cube' was given, but prior=diffusers-unet .* is an unconditional model.*prompt=null"):
        start_check(pixel_run(pipes["ddpm"], "prompt=a red cube"), tmp_path)
    with pytest.raises(ConfigError, match=r"guidance.guidance_scale=7.5 sets classifier-free guidance, but prior=diffusers-unet .* is unconditional"):
        start_check(pixel_run(pipes["ddpm"], "guidance.guidance_scale=7.5"), tmp_path)
    with pytest.raises(ConfigError, match=r"guidance.cfg_convention='standard'.*has no unconditional branch"):
        start_check(pixel_run(pipes["class"], "prompt=1", "guidance.cfg_convention=standard"), tmp_path)
    with pytest.raises(ConfigError, match=r"prompt=None names no class"):
        start_check(pixel_run(pipes["class"], "prior.null_class=3"), tmp_path)
    start_check(pixel_run(pipes["class"], "prior.null_class=3", "prompt=1", "guidance.guidance_scale=3"), tmp_path)  # fine
    start_check(pixel_run(pipes["sde"], prior="score-sde", system="sjc", guidance="paas"), tmp_path)  # fine


def test_a_text_prior_still_needs_a_prompt(tiny_pipeline_dir, tmp_path):
    from tests.run.test_system import small_run_overrides

    with pytest.raises(ConfigError, match=r"The prompt is empty \(None\)"):
        start_check(small_run_overrides(tiny_pipeline_dir, 8, "sjc", "paas", 1) + ["prompt=null"], tmp_path)


@pytest.mark.parametrize("prior,guidance", [("diffusers-unet", "paas"), ("diffusers-unet", "ssd"),
                                            ("diffusers-unet", "vsd"), ("score-sde", "sds")])
def test_prompt_less_runs_on_pixel_priors_train_and_write_their_outputs(pipes, tmp_path, prior, guidance, caplog):
    from scorelift.run import run

    model = pipes["ddpm" if prior == "diffusers-unet" else "sde"]
    system = "prolificdreamer" if guidance == "vsd" else "dreamfusion"
    over = pixel_run(model, prior=prior, system=system, guidance=guidance, steps=3)
    if system == "prolificdreamer":
        over = [o for o in over if not o.startswith("geometry.res")] + [
            "geometry.n_levels=4", "geometry.log2_hashmap_size=10", "geometry.base_resolution=4",
            "geometry.per_level_scale=2.0", "geometry.mlp_width=16", "system.optimizer.lr.guidance=0.01"]
    with caplog.at_level("INFO"):
        run(compose_cfg(over), tmp_path)
    assert "uses its single prediction, with no classifier-free guidance" in caplog.text
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["prompt"] is None and info["evaluate_as"] is None
    for name in ("grid.png", "turntable.mp4", "checkpoints/last.ckpt"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "metrics.json").exists()  # nothing to score it as: no evaluate_as
    if guidance == "vsd":
        lora = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["scorelift"]["guidance_state"]["lora"]
        assert any("to_q.lora_B" in k and v.abs().sum() > 0 for k, v in lora.items())  # LoRA on a UNet2DModel trained
    if guidance == "ssd":
        assert "variance-reduced term d_ms" in caplog.text


def test_vsd_on_a_denoiser_without_attention_is_refused_clearly(pipes):
    from scorelift.builders import build

    prior = unet_prior(pipes["no-attention"])
    with pytest.raises(ConfigError, match=r"guidance=vsd trains LoRA adapters on the attention projections.*UNet2DModel.*has none"):
        build("guidance", {"type": "vsd"}, prior)


def test_the_unconditional_run_directory_is_named_unconditional():
    from scorelift.resolvers import slugify

    assert slugify(None) == "unconditional" and slugify("  ") == "unconditional" and slugify("A red cube!") == "a_red_cube"
