"""Composition: presets build on one another, a part's defaults come from one place, and a preset
never gives a part a key the part does not declare."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from scorelift import DiffusionPrior, Guidance, register
from scorelift.checks import check_part
from scorelift.compose import compose_config


@dataclass
class ScalelessConfig:
    strength: float = 0.5  # no guidance_scale: the shapes presets must not give it one


@register("guidance", "test-scaleless")
class ScalelessGuidance(Guidance):
    """A guidance without SDS's options (this test's own)."""

    Config = ScalelessConfig

    def __call__(self, image, is_latent, text, generator, cameras=None):
        return {"loss": image.float().mean()}


def job(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_config(list(overrides), with_hydra=False), resolve=True)


def test_prolificdreamer_builds_on_dreamfusion():
    """system/prolificdreamer.yaml names dreamfusion in its defaults list and sets only what differs."""
    df, pd = job("system=dreamfusion", "prior=stable-diffusion"), job("system=prolificdreamer", "prior=stable-diffusion")
    assert (pd["geometry"]["type"], pd["guidance"]["type"], pd["background"]["type"]) == ("hash-grid", "vsd", "solid")
    assert pd["system"]["name"] == "prolificdreamer" and pd["trainer"]["max_steps"] == 25000
    assert pd["system"]["loss_weights"] == {"lambda_guidance": 1.0, "lambda_sparsity": 10.0}
    for key in ("losses", "optimizer", "views", "validation_every", "n_validation_views", "max_nonfinite_steps"):
        assert pd["system"][key] == df["system"][key], key
    # the command line still beats the inherited overrides
    assert job("system=prolificdreamer", "geometry=voxel-grid")["geometry"]["type"] == "voxel-grid"


def test_a_guidance_config_is_its_dataclass():
    """ssd's options are SDS's (dataclass inheritance) plus its own, defaults from the dataclass."""
    ssd = job("guidance=ssd", "prior=stable-diffusion")["guidance"]
    sds = job("guidance=sds", "prior=stable-diffusion")["guidance"]
    assert {k: v for k, v in ssd.items() if k in sds and k != "type"} == {k: v for k, v in sds.items() if k != "type"}
    assert (ssd["tau"], ssd["combine"], ssd["control_coefficient"], ssd["rescale"]) == (200, "switch", "projection", True)
    cls, parsed = check_part("guidance", ssd, "guidance")
    assert parsed.guidance_scale == 100.0 and cls.__name__ == "SSDGuidance"


@pytest.mark.parametrize("system", ["sjc", "dreamfusion"])
def test_shapes_presets_reach_only_the_parts_that_declare_their_keys(system):
    """On the shapes prior SDS gets scale 10 from the preset; a guidance without that option gets
    nothing and its config parses; a geometry other than the voxel grid gets no voxel options."""
    assert job(f"system={system}", "guidance=sds")["guidance"]["guidance_scale"] == 10.0
    scaleless = job(f"system={system}", "guidance=test-scaleless")["guidance"]
    assert scaleless == {"type": "test-scaleless", "strength": 0.5}
    check_part("guidance", scaleless, "guidance")
    voxel = job(f"system={system}")["geometry"]
    assert (voxel["resolution"], voxel["bbox_radius"], voxel["learn_density_scale"]) == (48, 0.6, False)
    hashed = job(f"system={system}", "geometry=hash-grid")["geometry"]
    assert "resolution" not in hashed and "density_init" not in hashed and hashed["bbox_radius"] == 1.0
    check_part("geometry", hashed, "geometry")


def test_prior_capabilities_are_declared_checked_and_required():
    """A guidance that needs a capability the chosen prior lacks fails at start-up naming both;
    registration refuses a prior that declares a capability it does not implement."""
    from scorelift.checks import check_inputs
    from scorelift.errors import ConfigError, PluginError
    from scorelift.plugins.priors.stable_diffusion import StableDiffusionPrior

    @register("prior", "test-frozen-sd")
    class FrozenStableDiffusion(StableDiffusionPrior):
        """Stable Diffusion without a trainable copy of its UNet (this test's own)."""

        capabilities = frozenset()

    cfg = compose_config(["system=dreamfusion", "guidance=vsd", "prior=stable-diffusion",
                          "prior.type=test-frozen-sd"], with_hydra=False)
    with pytest.raises(ConfigError, match=r"guidance=vsd needs the prior capability trainable_denoiser, which "
                                          r"prior 'test-frozen-sd' \(FrozenStableDiffusion\) does not declare"):
        check_inputs(cfg)

    with pytest.raises(PluginError, match="declares the capability trainable_denoiser without implementing "
                                          "trainable_denoiser_copy"):
        @register("prior", "test-claims-denoiser")
        class Claims(DiffusionPrior):
            capabilities = frozenset({"trainable_denoiser"})

            def encode_text(self, prompts): ...
            def condition(self, prompt, view_names): ...
            def encode_images(self, rgb): ...
            def decode_latents(self, latents): ...
            def predict_eps(self, z_t, t, cond, uncond): ...
