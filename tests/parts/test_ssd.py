"""SSD: the decomposition, the projection ratio, the rescaling and the CSD / SDS limits, on fixed
tensors and against a hand computation with the tiny random prior."""

from __future__ import annotations

import pytest
import torch

from scorelift.errors import ConfigError
from scorelift.library.sds import SDSGuidance
from scorelift.plugins.guidance.ssd import SSDGuidance, projection_ratio

B, C, H = 3, 4, 8
pytestmark = pytest.mark.usefixtures("single_thread")


def make_ssd(prior, **over) -> SSDGuidance:
    return SSDGuidance(dict(**over), prior)


def fixed(seed: int) -> torch.Tensor:
    return torch.randn(B, C, H, H, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def eps_triplet():
    e_c, e_u, eps = fixed(1), fixed(2), fixed(3)
    return e_c, e_u, eps


@pytest.mark.parametrize("convention, scale, w", [("threestudio", 100.0, 100.0), ("standard", 7.5, 6.5)])
def test_three_terms_sum_to_the_sds_estimator(tiny_prior, eps_triplet, convention, scale, w):
    e_c, e_u, eps = eps_triplet
    ssd = make_ssd(tiny_prior, guidance_scale=scale, cfg_convention=convention)
    sds = SDSGuidance(dict(guidance_scale=scale, cfg_convention=convention), tiny_prior)
    parts = ssd.terms(e_c, e_u, eps)
    torch.testing.assert_close(parts["disengaging"], w * (e_c - e_u))
    t = torch.full((B,), 500)
    torch.testing.assert_close(parts["disengaging"] + parts["seeking"] + parts["variance"], sds.direction(e_c, e_u, eps, t))


def test_c_is_the_projection_ratio(tiny_prior, eps_triplet):
    e_c, e_u, eps = eps_triplet
    e_c = e_c + 0.7 * eps  # a known component along eps
    c = make_ssd(tiny_prior).terms(e_c, e_u, eps)["c"]
    for i in range(B):
        a, b = e_c[i].flatten(), eps[i].flatten()
        assert c[i].item() == pytest.approx((a @ b / (b @ b)).item(), rel=1e-5)
        # d_ms is orthogonal to eps: the projection removes eps's share of e_c
        d = (e_c[i] - c[i] * eps[i]).flatten()
        assert abs((d @ b).item()) < 1e-3 * d.norm().item() * b.norm().item()
    assert c.mean().item() == pytest.approx(0.7, abs=0.1)
    torch.testing.assert_close(projection_ratio(2 * eps, eps), torch.full((B,), 2.0))


def test_switch_rescales_the_seeking_term_to_the_disengaging_norm(tiny_prior, eps_triplet):
    e_c, e_u, eps = eps_triplet
    ssd = make_ssd(tiny_prior, tau=200)
    t = torch.tensor([100, 200, 201])
    delta = ssd.direction(e_c, e_u, eps, t)
    parts = ssd.terms(e_c, e_u, eps)
    wh, d_ms = parts["disengaging"], parts["d_ms"]
    for i in (0, 1):  # t <= tau: d_ms direction, |w h| norm
        assert delta[i].norm().item() == pytest.approx(wh[i].norm().item(), rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(delta[i].flatten(), d_ms[i].flatten(), dim=0)
        assert cos.item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(delta[2], wh[2])  # t > tau: mode-disengaging only


def test_tau_zero_is_csd(tiny_prior, eps_triplet):
    e_c, e_u, eps = eps_triplet
    ssd = make_ssd(tiny_prior, tau=0, guidance_scale=7.5, cfg_convention="standard")
    t = torch.tensor([1, 20, 980])
    torch.testing.assert_close(ssd.direction(e_c, e_u, eps, t), 6.5 * (e_c - e_u))


def test_tau_T_add_with_c_one_and_no_rescale_is_sds(tiny_prior):
    """The full guidance call, against SDS with the same generator: identical gradients."""
    text = tiny_prior.condition("a red cube", ["front", "side", "back"])
    ssd = make_ssd(tiny_prior, tau=tiny_prior.num_train_timesteps, combine="add", control_coefficient=1.0, rescale=False)
    sds = SDSGuidance({}, tiny_prior)
    grads = []
    for guidance in (ssd, sds):
        z = fixed(5).requires_grad_(True)
        guidance(z, True, text, torch.Generator().manual_seed(3))["loss"].backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    assert grads[1].abs().max() > 0
    # and the default SSD differs from SDS on the same draw
    z = fixed(5).requires_grad_(True)
    make_ssd(tiny_prior)(z, True, text, torch.Generator().manual_seed(3))["loss"].backward()
    assert not torch.allclose(z.grad, grads[1], atol=1e-3)


@pytest.mark.parametrize("over, words", [
    (dict(tau=1001), ["tau=1001", "0..1000"]),
    (dict(combine="mix"), ["combine='mix'", "switch, add"]),
    (dict(control_coefficient="optimal"), ["control_coefficient='optimal'", "projection"]),
])
def test_ssd_config_errors(tiny_prior, over, words):
    with pytest.raises(ConfigError) as err:
        make_ssd(tiny_prior, **over)
    for word in words:
        assert word in str(err.value)
