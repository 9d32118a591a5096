"""SDS and SJC-PAAS against hand computations with the same noise (tiny random prior, CPU)."""

from __future__ import annotations

import pytest
import torch

from scorelift.errors import ConfigError
from scorelift.maths import score_math as sm
from scorelift.plugins.guidance.paas import PAASGuidance
from scorelift.library.sds import SDSGuidance

B, C, H = 2, 4, 8
PROMPT = "a red cube"
pytestmark = pytest.mark.usefixtures("single_thread")


def make_sds(prior, **over) -> SDSGuidance:
    return SDSGuidance(dict(**over), prior)


def make_paas(prior, **over) -> PAASGuidance:
    return PAASGuidance(dict(**over), prior)


def latent(seed: int = 0, batch: int = B) -> torch.Tensor:
    return torch.randn(batch, C, H, H, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)


def hand_eps(prior, x, t, text, scale, convention):
    """e_cfg from a UNet call written out here: batch [x, x] with [cond, uncond]."""
    with torch.no_grad():
        out = prior.unet(
            torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([text.cond, text.uncond])
        ).sample
    e_c, e_u = out.chunk(2)
    base = e_u if convention == "standard" else e_c
    return base + scale * (e_c - e_u), e_c, e_u


@pytest.fixture(scope="module")
def text(tiny_prior):
    return tiny_prior.condition(PROMPT, ["front", "back"])


# ---------------------------------------------------------------- score_math
def test_sigma_and_t_maps_on_sd_schedule(tiny_prior):
    sigmas = sm.sigmas_from_alphas_cumprod(tiny_prior.alphas_cumprod)
    assert sigmas[0].item() == pytest.approx(0.0292, abs=5e-4)
    assert sigmas[999].item() == pytest.approx(14.6, abs=0.05)
    assert sigmas[10].item() == pytest.approx(0.098, abs=2e-3) and sigmas[969].item() == pytest.approx(12.2, abs=0.1)
    assert torch.all(sigmas[1:] > sigmas[:-1])
    t = torch.arange(1000)
    assert torch.equal(sm.timesteps_from_sigmas(sigmas[t], tiny_prior.alphas_cumprod), t)
    # a sigma between two ticks maps to the nearer one
    mid = (sigmas[500] * 0.9 + sigmas[501] * 0.1).reshape(1)
    assert sm.timesteps_from_sigmas(mid, tiny_prior.alphas_cumprod).item() == 500


def test_cfg_conventions_differ_by_one():
    g = torch.Generator().manual_seed(1)
    e_c, e_u = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    torch.testing.assert_close(sm.cfg_combine(e_c, e_u, 7.5, "standard"), e_u + 7.5 * (e_c - e_u))
    torch.testing.assert_close(sm.cfg_combine(e_c, e_u, 7.5, "threestudio"), e_c + 7.5 * (e_c - e_u))
    torch.testing.assert_close(sm.cfg_combine(e_c, e_u, 7.5, "threestudio"), sm.cfg_combine(e_c, e_u, 8.5, "standard"))
    torch.testing.assert_close(sm.cfg_combine(e_c, e_u, 1.0, "standard"), e_c)
    assert sm.cfg_combine(e_c.half(), e_u.half(), 100.0, "standard").dtype == torch.float32
    with pytest.raises(ConfigError, match="cfg_convention"):
        sm.cfg_combine(e_c, e_u, 7.5, "diffusers")


def test_inject_gradient_gives_g_over_batch():
    z = torch.randn(3, 4, 2, 2, requires_grad=True)
    g = torch.randn(3, 4, 2, 2)
    loss = sm.inject_gradient(z, g)
    loss.backward()
    torch.testing.assert_close(z.grad, g / 3)
    assert loss.item() == pytest.approx(0.5 * g.square().sum().item() / 3, rel=1e-5)


def test_step_range_and_sampling():
    assert sm.step_range(0.02, 0.98, 1000) == (20, 980)
    assert sm.step_range(0.5, 1.0, 1000) == (500, 999)
    with pytest.raises(ConfigError, match="min <= max"):
        sm.step_range(0.6, 0.5, 1000)
    t = sm.sample_timesteps(20000, 20, 980, torch.Generator().manual_seed(0), "cpu")
    assert t.min().item() == 20 and t.max().item() == 980  # inclusive on both ends


# ---------------------------------------------------------------- PAAS
@pytest.mark.parametrize("var_red", [True, False])
def test_paas_gradient_matches_hand_computation(tiny_prior, text, var_red):
    guidance = make_paas(tiny_prior, var_red=var_red, guidance_scale=7.5, cfg_convention="standard")
    y = latent()
    out = guidance(y, True, text, torch.Generator().manual_seed(5))
    out["loss"].backward()

    g = torch.Generator().manual_seed(5)  # reproduce the draws: t, then the noise
    t = torch.randint(10, 970, (B,), generator=g)
    n = torch.randn(B, C, H, H, generator=g)
    ab = tiny_prior.alphas_cumprod[t].reshape(B, 1, 1, 1)
    sigma = ((1 - ab) / ab).sqrt()
    z_ve = y.detach() + sigma * n
    e_cfg, _, _ = hand_eps(tiny_prior, z_ve / (1 + sigma**2).sqrt(), t, text, 7.5, "standard")
    D = z_ve - sigma * e_cfg  # the denoiser
    ascent = (D - y.detach()) / sigma if var_red else (D - z_ve) / sigma
    expected = -ascent  # dL/dy
    torch.testing.assert_close(expected, (e_cfg - n) if var_red else e_cfg, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y.grad * B, expected, rtol=1e-4, atol=1e-4)
    assert out["t_mean"].item() == pytest.approx(t.float().mean().item())
    assert out["sigma_mean"].item() == pytest.approx(sigma.mean().item(), rel=1e-5)
    assert out["grad_norm"].item() == pytest.approx(expected.norm().item(), rel=1e-4)


def test_paas_without_perturbation_scores_the_clean_render(tiny_prior, text):
    """perturb: false (the naive score of SJC's Sec. 3.3): the eps model sees y / sqrt(1 + sigma^2)
    itself, no noise, so dL/dy = e_cfg(y / sqrt(1 + sigma^2), t) with var_red on or off."""
    for var_red in (True, False):
        guidance = make_paas(tiny_prior, var_red=var_red, perturb=False, guidance_scale=7.5, cfg_convention="standard")
        y = latent(2)
        guidance(y, True, text, torch.Generator().manual_seed(5))["loss"].backward()
        g = torch.Generator().manual_seed(5)
        t = torch.randint(10, 970, (B,), generator=g)
        sigma = sm.sigmas_from_alphas_cumprod(tiny_prior.alphas_cumprod)[t].reshape(B, 1, 1, 1)
        e_cfg, _, _ = hand_eps(tiny_prior, y.detach() / (1 + sigma**2).sqrt(), t, text, 7.5, "standard")
        torch.testing.assert_close(y.grad * B, e_cfg, rtol=1e-4, atol=1e-4)


def test_paas_averages_n_samples(tiny_prior, text):
    guidance = make_paas(tiny_prior, n_samples=3, cfg_convention="threestudio", guidance_scale=10.0)
    y = latent(1)
    guidance(y, True, text, torch.Generator().manual_seed(9))["loss"].backward()
    g = torch.Generator().manual_seed(9)
    t = torch.randint(10, 970, (B,), generator=g)  # one t per image, shared by its draws
    sigma = sm.sigmas_from_alphas_cumprod(tiny_prior.alphas_cumprod)[t].reshape(B, 1, 1, 1)
    per_draw = []
    for _ in range(3):
        n = torch.randn(B, C, H, H, generator=g)
        x = (y.detach() + sigma * n) / (1 + sigma**2).sqrt()
        e_cfg, _, _ = hand_eps(tiny_prior, x, t, text, 10.0, "threestudio")
        per_draw.append(e_cfg - n)
    torch.testing.assert_close(y.grad * B, torch.stack(per_draw).mean(0), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(per_draw[0], per_draw[1])


def test_paas_annealed_schedule(tiny_prior, text):
    guidance = make_paas(tiny_prior, sigma_schedule="annealed")
    steps = {0: 969, 99: 10, 50: round(969 - 50 / 99 * 959)}
    for step, t_expected in steps.items():
        guidance.update_step(step, 100)
        out = guidance(latent(), True, text, torch.Generator().manual_seed(0))
        assert out["t_mean"].item() == t_expected
    # annealed draws no t: the first draw from the generator is the noise
    guidance.update_step(0, 100)
    y = latent()
    guidance(y, True, text, torch.Generator().manual_seed(3))["loss"].backward()
    n = torch.randn(B, C, H, H, generator=torch.Generator().manual_seed(3))
    t = torch.full((B,), 969)
    sigma = sm.sigmas_from_alphas_cumprod(tiny_prior.alphas_cumprod)[t].reshape(B, 1, 1, 1)
    e_cfg, _, _ = hand_eps(tiny_prior, (y.detach() + sigma * n) / (1 + sigma**2).sqrt(), t, text, 100.0, "threestudio")
    torch.testing.assert_close(y.grad * B, e_cfg - n, rtol=1e-4, atol=1e-3)


def test_paas_scheduled_t_max(tiny_prior, text):
    """t_max [start_step, start, end, end_step]: the random draws stay in [t_min, t_max(step)], and
    t is the same draw as a fixed t_max of that value (one randint over the current range)."""
    guidance = make_paas(tiny_prior, t_max=[100, 969, 200, 300])
    for step, t_max in ((0, 969), (100, 969), (200, 584), (300, 200), (1000, 200)):
        guidance.update_step(step, 1000)
        assert guidance.t_max == t_max
        fixed = make_paas(tiny_prior, t_max=t_max)
        fixed.update_step(step, 1000)
        got = guidance._timesteps(4096, torch.Generator().manual_seed(step), "cpu")
        want = fixed._timesteps(4096, torch.Generator().manual_seed(step), "cpu")
        assert torch.equal(got, want)
        assert got.min() >= 10 and got.max() <= t_max
    assert int(got.max()) == 200  # the range's top is reached (4096 draws over 191 values)


def test_paas_rgb_input_goes_through_the_vae(tiny_prior, text):
    guidance = make_paas(tiny_prior)
    rgb = torch.rand(B, 3, 12, 12, requires_grad=True)
    guidance(rgb, False, text, torch.Generator().manual_seed(2))["loss"].backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0


def test_paas_config_errors(tiny_prior):
    with pytest.raises(ConfigError, match="t_min"):
        make_paas(tiny_prior, t_min=500, t_max=400)
    with pytest.raises(ConfigError, match="sigma_schedule"):
        make_paas(tiny_prior, sigma_schedule="cosine")
    with pytest.raises(ConfigError, match="n_samples"):
        make_paas(tiny_prior, n_samples=0)
    with pytest.raises(ConfigError, match=r"t_max=\[0, 969, 5, 100\]"):  # ends below t_min
        make_paas(tiny_prior, t_max=[0, 969, 5, 100])
    with pytest.raises(ConfigError, match="only the random sigma schedule"):
        make_paas(tiny_prior, t_max=[0, 969, 500, 100], sigma_schedule="annealed")
    with pytest.raises(ConfigError, match="ends .* before it starts"):
        make_paas(tiny_prior, t_max=[100, 969, 500, 50])


# ---------------------------------------------------------------- SDS
@pytest.mark.parametrize("weighting", ["sds", "uniform"])
def test_sds_gradient_matches_hand_computation(tiny_prior, text, weighting):
    guidance = make_sds(tiny_prior, weighting=weighting)  # defaults: scale 100, threestudio
    z = latent(2)
    out = guidance(z, True, text, torch.Generator().manual_seed(11))
    out["loss"].backward()

    g = torch.Generator().manual_seed(11)
    t = torch.randint(20, 981, (B,), generator=g)
    eps = torch.randn(B, C, H, H, generator=g)
    ab = tiny_prior.alphas_cumprod[t].reshape(B, 1, 1, 1)
    z_t = ab.sqrt() * z.detach() + (1 - ab).sqrt() * eps
    e_cfg, e_c, e_u = hand_eps(tiny_prior, z_t, t, text, 100.0, "threestudio")
    w = (1 - ab) if weighting == "sds" else 1.0
    expected = w * (e_cfg - eps)
    torch.testing.assert_close(z.grad * B, expected, rtol=1e-4, atol=1e-4)
    assert out["t_mean"].item() == pytest.approx(t.float().mean().item())
    # The batch order matters: with (uncond, cond) swapped the gradient would be far off.
    swapped = w * (e_u + 100.0 * (e_u - e_c) - eps)
    assert (swapped - expected).abs().max() > 100 * (z.grad * B - expected).abs().max()


def test_sds_rgb_gradient_is_the_vae_vjp(tiny_prior, text):
    guidance = make_sds(tiny_prior)
    rgb = torch.rand(B, 3, 16, 16, requires_grad=True)
    guidance(rgb, False, text, torch.Generator().manual_seed(4))["loss"].backward()

    g = torch.Generator().manual_seed(4)
    t = torch.randint(20, 981, (B,), generator=g)
    eps = torch.randn(B, C, H, H, generator=g)
    rgb2 = rgb.detach().clone().requires_grad_(True)
    z = tiny_prior.encode_images(rgb2)
    ab = tiny_prior.alphas_cumprod[t].reshape(B, 1, 1, 1)
    e_cfg, _, _ = hand_eps(tiny_prior, ab.sqrt() * z.detach() + (1 - ab).sqrt() * eps, t, text, 100.0, "threestudio")
    (expected,) = torch.autograd.grad(z, rgb2, (1 - ab) * (e_cfg - eps) / B)
    torch.testing.assert_close(rgb.grad, expected, rtol=1e-4, atol=1e-6)


def test_sds_grad_clip(tiny_prior, text):
    free = make_sds(tiny_prior)
    clipped = make_sds(tiny_prior, grad_clip=0.05)
    z1, z2 = latent(), latent()
    free(z1, True, text, torch.Generator().manual_seed(0))["loss"].backward()
    clipped(z2, True, text, torch.Generator().manual_seed(0))["loss"].backward()
    assert (z1.grad * B).abs().max() > 0.05  # the clip is active
    torch.testing.assert_close(z2.grad * B, (z1.grad * B).clamp(-0.05, 0.05))
    scheduled = make_sds(tiny_prior, grad_clip=[0, 0.1, 0.5, 100])
    scheduled.update_step(50, 1000)
    assert scheduled.grad_clip == pytest.approx(0.3)


def test_sds_scheduled_timestep_bounds(tiny_prior, text):
    guidance = make_sds(tiny_prior, max_step_percent=[100, 0.98, 0.5, 100])
    assert (guidance.t_min, guidance.t_max) == (20, 980)
    guidance.update_step(200, 1000)
    assert (guidance.t_min, guidance.t_max) == (20, 500)
    t = sm.sample_timesteps(1000, guidance.t_min, guidance.t_max, torch.Generator().manual_seed(0), "cpu")
    out = guidance(latent(0, batch=16), True, tiny_prior.condition(PROMPT, ["front"]), torch.Generator().manual_seed(0))
    assert out["t_mean"].item() <= 500 and t.max() <= 500
    with pytest.raises(ConfigError, match="weighting"):
        make_sds(tiny_prior, weighting="snr")


def test_cfg_convention_threestudio_equals_standard_plus_one(tiny_prior, text):
    grads = []
    for convention, scale in (("threestudio", 7.5), ("standard", 8.5), ("standard", 7.5)):
        z = latent()
        make_paas(tiny_prior, cfg_convention=convention, guidance_scale=scale)(
            z, True, text, torch.Generator().manual_seed(1)
        )["loss"].backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(grads[0], grads[2], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- both methods
@pytest.mark.parametrize("make", [make_sds, make_paas])
def test_deterministic_given_the_generator(tiny_prior, text, make):
    guidance = make(tiny_prior)
    results = []
    for seed in (7, 7, 8):
        z = latent()
        out = guidance(z, True, text, torch.Generator().manual_seed(seed))
        out["loss"].backward()
        results.append((out["loss"].item(), z.grad))
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])
    assert not torch.equal(results[0][1], results[2][1])


@pytest.mark.parametrize("make", [make_sds, make_paas])
def test_unet_gets_no_gradient_and_runs_under_no_grad(tiny_prior, text, make):
    guidance = make(tiny_prior)
    grad_modes = []
    handle = tiny_prior.unet.register_forward_pre_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    try:
        z = latent()
        out = guidance(z, True, text, torch.Generator().manual_seed(0))
        out["loss"].backward()
    finally:
        handle.remove()
    assert grad_modes and not any(grad_modes)
    assert all(p.grad is None and not p.requires_grad for p in tiny_prior.unet.parameters())
    assert z.grad is not None and torch.isfinite(z.grad).all()
    for key, value in out.items():
        assert value.ndim == 0 and (key == "loss" or not value.requires_grad)


def test_text_batch_mismatch_is_explained(tiny_prior):
    text3 = tiny_prior.condition(PROMPT, ["front", "side", "back"])
    with pytest.raises(ValueError, match="3 embeddings but the render batch has 2"):
        make_sds(tiny_prior)(latent(), True, text3, torch.Generator().manual_seed(0))


def test_registration(tiny_prior):
    from scorelift.builders import build_named

    assert isinstance(build_named("guidance", "sds", {}, tiny_prior), SDSGuidance)
    paas = build_named("guidance", "paas", {"n_samples": 2}, tiny_prior)
    assert isinstance(paas, PAASGuidance) and paas.cfg.n_samples == 2


# ---------------------------------------------------------------- non-finite scores
def poison_eps(prior, value: float):
    """Patch this prior instance's predict_eps: ``value`` in one pixel of e_c, the rest untouched."""
    original = prior.predict_eps

    def predict_eps(*args, **kwargs):
        e_c, e_u = original(*args, **kwargs)
        e_c = e_c.clone()
        e_c[0, 0, 0, 0] = value
        return e_c, e_u

    prior.predict_eps = predict_eps


def test_inject_gradient_of_a_non_finite_g_is_non_finite():
    z = latent()
    for bad, check in [(float("nan"), torch.isnan), (float("inf"), torch.isinf), (-float("inf"), torch.isinf)]:
        g = torch.zeros_like(z)
        g[1, 2, 3, 4] = bad
        assert check(sm.inject_gradient(z, g))


def test_clamp_score_clamps_finite_entries_only():
    g = torch.tensor([-5.0, 0.5, 5.0, float("nan"), float("inf"), -float("inf")])
    out = sm.clamp_score(g, 1.0)
    assert out[:3].tolist() == [-1.0, 0.5, 1.0]
    assert out[3].isnan() and out[4] == float("inf") and out[5] == -float("inf")
    assert sm.clamp_score(g, None) is g


@pytest.mark.parametrize("make, over, value", [
    (make_sds, {}, float("nan")),
    (make_sds, {"grad_clip": 0.05}, float("inf")),  # a clamp would turn inf into 0.05
    (make_paas, {}, float("nan")),
    (make_paas, {"n_samples": 2}, float("inf")),
])
def test_a_non_finite_eps_makes_the_loss_non_finite(fresh_prior, make, over, value):
    """One bad pixel of the prior's prediction reaches the loss (the system then skips the step);
    before, nan_to_num zeroed it and the step trained on the rest as if nothing had happened."""
    text = fresh_prior.condition(PROMPT, ["front", "back"])
    poison_eps(fresh_prior, value)
    out = make(fresh_prior, **over)(latent(), True, text, torch.Generator().manual_seed(0))
    assert not torch.isfinite(out["loss"]) and not torch.isfinite(out["grad_norm"])


def test_ssd_passes_a_non_finite_eps_on(fresh_prior):
    from scorelift.plugins.guidance.ssd import SSDGuidance

    text = fresh_prior.condition(PROMPT, ["front", "back"])
    poison_eps(fresh_prior, float("nan"))
    ssd = SSDGuidance(dict(grad_clip=0.05), fresh_prior)
    assert torch.isnan(ssd(latent(), True, text, torch.Generator().manual_seed(0))["loss"])
