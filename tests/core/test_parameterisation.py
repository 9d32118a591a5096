"""The exact conversions between VP / VE parameterisations and eps (framework/maths/parameterisation.py),
checked against the forward process built by hand: y and eps are known, so every prediction type's
ideal output is known, and converting it back must give eps exactly (up to float32 rounding)."""

import pytest
import torch

from scorelift.maths import parameterisation as pz


def ideal(seed: int = 0):
    """Clean y, noise eps, a VP table entry per sample and the VP point z_t = sqrt(ab) y + sqrt(1 - ab) eps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=g)
    ab = torch.tensor([0.9999, 0.7, 0.2, 1e-4]).view(4, 1, 1, 1)
    return y, eps, ab, ab.sqrt() * y + (1 - ab).sqrt() * eps


def test_sigma_and_alpha_bar_are_inverse_maps():
    sigmas = torch.tensor([0.01, 0.5, 1.0, 80.0, 1348.0])
    ab = pz.alphas_cumprod_from_sigmas(sigmas)
    assert torch.allclose(ab, 1 / (1 + sigmas.double() ** 2).float(), rtol=1e-6)
    # ab is stored in float32: at sigma 0.01 it is 0.9999, whose float32 rounding (6e-8) is 6e-4 of
    # 1 - ab, so the round trip keeps sigma to 3e-4 relative there and to 1e-6 above sigma 0.5.
    back = pz.sigmas_from_alphas_cumprod(ab.double())
    assert torch.allclose(back[1:], sigmas[1:].double(), rtol=1e-6)
    assert torch.allclose(back[:1], sigmas[:1].double(), rtol=1e-3)
    assert float(ab[2]) == pytest.approx(0.5)  # sigma 1 is half signal, half noise


def test_the_ve_input_is_the_clean_image_plus_sigma_noise():
    y, eps, ab, z_t = ideal()
    sigma = ((1 - ab) / ab).sqrt()
    assert torch.allclose(pz.model_input(z_t, ab, "ve"), y + sigma * eps, atol=1e-4)
    assert pz.model_input(z_t, ab, "vp") is z_t


@pytest.mark.parametrize("parameterisation,prediction", [
    ("vp", "epsilon"), ("vp", "v_prediction"), ("vp", "sample"), ("ve", "epsilon"), ("ve", "sample"), ("ve", "score"),
])
def test_each_ideal_output_converts_back_to_the_noise(parameterisation, prediction):
    y, eps, ab, z_t = ideal()
    sigma = ((1 - ab) / ab).sqrt()
    out = {
        "epsilon": eps,
        "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * y,
        "sample": y,
        "score": -eps / sigma,  # grad_x log N(x; y, sigma^2) at x = y + sigma eps
    }[prediction]
    got = pz.eps_from_output(out, z_t, ab, prediction, parameterisation)
    # sample prediction divides by sqrt(1 - ab) (VP) or sigma (VE): at ab = 0.9999 that amplifies
    # float32 rounding of z_t 100 times, so the tolerance is relative to that.
    assert torch.allclose(got, eps, atol=2e-3 if prediction == "sample" else 1e-4), (got - eps).abs().max()


@pytest.mark.parametrize("parameterisation,prediction", [
    ("vp", "epsilon"), ("vp", "v_prediction"), ("vp", "sample"), ("ve", "score"),
])
def test_the_training_target_is_the_ideal_output_in_its_loss_space(parameterisation, prediction):
    y, eps, ab, z_t = ideal(1)
    target = pz.training_target(y, eps, ab, prediction, parameterisation)
    expected = {"epsilon": eps, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * y, "sample": y, "score": eps}[prediction]
    assert torch.equal(target, expected)
    assert pz.loss_space(prediction) == ("eps" if prediction == "score" else "output")


def test_unsupported_pairs_are_named():
    assert pz.check_prediction("v_prediction", "vp") is None
    assert "VE models here predict epsilon, sample, score" in pz.check_prediction("v_prediction", "ve")
    assert "VP models here predict epsilon, v_prediction, sample" in pz.check_prediction("score", "vp")
    assert "not one of vp, ve" in pz.check_prediction("epsilon", "edm")
    with pytest.raises(ValueError, match="VE models here predict"):
        pz.eps_from_output(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.full((1, 1, 1, 1), 0.5), "v_prediction", "ve")
