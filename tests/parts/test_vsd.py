"""VSD with LoRA: the prior pass is independent of the LoRA, the LoRA gets no VSD gradient, the
LoRA loss decreases on a fixed render, g against a hand computation, state round trip."""

from __future__ import annotations

import pytest
import torch

from scorelift.data.cameras import make_cameras
from scorelift.maths import score_math as sm
from scorelift.plugins.guidance.vsd import VSDGuidance

B, C = 2, 4
pytestmark = pytest.mark.usefixtures("single_thread")


def make_vsd(prior, **over) -> VSDGuidance:
    return VSDGuidance(dict(**over), prior)


@pytest.fixture()
def setup(fresh_prior):
    prior = fresh_prior
    size = prior.latent_size
    text = prior.condition("a red cube", ["front", "back"])
    cams = make_cameras(torch.tensor([20.0, 30.0]), torch.tensor([0.0, 180.0]), torch.tensor([2.0, 2.0]), torch.tensor([40.0, 40.0]), 8)
    z = torch.randn(B, C, size, size, generator=torch.Generator().manual_seed(0))
    return prior, text, cams, z


def test_prior_pass_is_unchanged_when_lora_weights_change(setup):
    prior, text, cams, z = setup
    vsd = make_vsd(prior)
    t = torch.tensor([300, 700])
    before = prior.predict_eps(z, t, text.cond, text.uncond)
    with torch.no_grad():
        for p in vsd.parameters():
            p.add_(torch.randn_like(p))
    after = prior.predict_eps(z, t, text.cond, text.uncond)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    lora_out = vsd.lora_eps(z, t, text.cond_view_independent, cams.c2w)
    assert not torch.allclose(lora_out, before[0], atol=1e-4)  # the LoRA model did change


def test_lora_starts_as_the_prior_and_g_matches_hand_computation(setup):
    prior, text, cams, z = setup
    vsd = make_vsd(prior, max_step_percent=0.98)
    t = torch.tensor([250, 600])
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    ab = prior.alphas_cumprod[t].view(B, 1, 1, 1)
    z_t = ab.sqrt() * z + (1 - ab).sqrt() * eps
    # zero-initialised camera MLP and "gaussian" LoRA init (B = 0): the copy equals the prior
    e_lora = vsd.lora_eps(z_t, t, text.cond_view_independent, cams.c2w)
    e_ref, _ = prior.predict_eps(z_t, t, text.cond_view_independent, text.uncond)
    torch.testing.assert_close(e_lora, e_ref, rtol=1e-4, atol=1e-5)
    e_c, e_u = prior.predict_eps(z_t, t, text.cond, text.uncond)
    expected = (1 - ab) * (e_u + 7.5 * (e_c - e_u) - e_lora)
    torch.testing.assert_close(vsd.vsd_gradient(z, t, eps, text, cams.c2w), expected, rtol=1e-4, atol=1e-5)


def test_lora_gets_no_vsd_gradient_and_the_render_gets_no_lora_gradient(setup):
    prior, text, cams, z = setup
    vsd = make_vsd(prior)
    rgb = torch.rand(B, 3, prior.pixel_size, prior.pixel_size, generator=torch.Generator().manual_seed(2)).requires_grad_()
    # the VSD part, as the call computes it: g carries no graph, so only the render gets gradient
    latents = sm.render_latents(prior, rgb, False)
    t = torch.tensor([300, 800])
    g = vsd.vsd_gradient(latents, t, torch.randn(latents.shape), text, cams.c2w)
    assert g.grad_fn is None and not g.requires_grad
    sm.inject_gradient(latents, g).backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for p in vsd.parameters())
    # the full call: its render gradient is the VSD part alone (same draws), and the LoRA loss
    # reaches the LoRA and camera parameters
    rgb.grad = None
    out = vsd(rgb, False, text, torch.Generator().manual_seed(3), cams)
    out["loss"].backward()
    gen = torch.Generator().manual_seed(3)
    latents = sm.render_latents(prior, rgb, False)
    t = sm.sample_timesteps(B, vsd.t_min, vsd.t_max, gen, latents.device)
    eps = sm.sample_noise(latents.shape, gen, latents.device)
    expected = torch.autograd.grad(sm.inject_gradient(latents, vsd.vsd_gradient(latents, t, eps, text, cams.c2w)), rgb)[0]
    torch.testing.assert_close(rgb.grad, expected)
    assert sum(p.grad.abs().sum() for p in vsd.parameters() if p.grad is not None) > 0
    assert not any(p.requires_grad for p in prior.unet.parameters())


def test_lora_loss_decreases_on_a_fixed_render(setup):
    prior, text, cams, z = setup
    vsd = make_vsd(prior)
    opt = torch.optim.Adam(vsd.parameters(), lr=3e-3)
    emb = text.cond_view_independent
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = vsd.lora_loss(z, emb, cams.c2w, torch.Generator().manual_seed(4))  # same t', noise each step
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 20  # falls (almost) every step


def test_state_dict_round_trip(setup, fresh_prior):
    prior, text, cams, z = setup
    a = make_vsd(prior)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.01 * torch.randn_like(p))
    b = make_vsd(prior)
    b.load_state_dict(a.state_dict())
    t = torch.tensor([100, 900])
    torch.testing.assert_close(a.lora_eps(z, t, text.cond, cams.c2w), b.lora_eps(z, t, text.cond, cams.c2w))
    assert len(a.state_dict()["lora"]) > 0


@pytest.mark.parametrize("value, clip", [(float("nan"), None), (float("inf"), 0.05)])
def test_a_non_finite_prior_eps_makes_the_loss_non_finite(setup, value, clip):
    """One bad pixel of the prior's eps is not zeroed (nor clamped to +-grad_clip): g and the loss
    are non-finite, so the system skips the step and counts it."""
    prior, text, cams, z = setup
    original = prior.predict_eps

    def predict_eps(*args, **kwargs):  # this prior instance only
        e_c, e_u = original(*args, **kwargs)
        e_c = e_c.clone()
        e_c[0, 0, 0, 0] = value
        return e_c, e_u

    prior.predict_eps = predict_eps
    vsd = make_vsd(prior, grad_clip=clip)
    out = vsd(z.clone().requires_grad_(True), True, text, torch.Generator().manual_seed(0), cams)
    assert not torch.isfinite(out["loss"]) and not torch.isfinite(out["grad_norm"])
    assert torch.isfinite(out["lora_loss"])  # the LoRA's own loss is untouched
