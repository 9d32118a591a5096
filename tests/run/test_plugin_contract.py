"""What a guidance or loss plugin returns is checked on the first training step: a broken contract
stops the run with one PluginError paragraph naming the plugin (kind, name, class, module and,
for an installed plugin, its package), what it returned and the contract; the launcher turns it
into exit code 2. The check runs once, not on every step.

The plugins here are registered under names no other test uses. Each guidance keeps SDS's
options (its Config) and spoils SDS's real output in one way; the run's config is composed for
``guidance=sds`` with ``guidance.type`` set to the plugin's name.
"""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import open_dict

from scorelift import PluginError, SDSGuidance, builders, register, registry
from scorelift.plugins.losses.sparsity import SparsityLoss
from scorelift.run import checkpoint_path, run
from scorelift.systems import contracts
from scorelift.systems.score_distillation import ScoreDistillationSystem, loss_key
from tests.run.test_system import compose_cfg, latent_size, small_run_overrides  # noqa: F401  (latent_size: a fixture)


def defaults_file(kind: str, name: str):
    """The YAML file of a built-in part's defaults, or None where its Config dataclass holds them:
    a subclass that keeps the part's Config then needs no file of its own."""
    path = builders.config_file(kind, name)
    return path if path.is_file() else None


SDS_YAML = defaults_file("guidance", "sds")
SPARSITY_YAML = defaults_file("loss", "sparsity")

GUIDANCE_CONTRACT_WORDS = ["broke the guidance contract at the first training step", "dict", "'loss'",
                           "scalar (0-dim)", "dL/d(render)", "loggable scalar"]
LOSS_CONTRACT_WORDS = ["broke the loss contract at the first training step", "scalar (0-dim)", "unweighted"]


class SpoiledSDS(SDSGuidance):
    """SDS whose output ``spoil`` changes; keeps SDS's Config (and its defaults)."""

    config_file = SDS_YAML

    def __call__(self, image, is_latent, text, generator, cameras=None):
        return self.spoil(super().__call__(image, is_latent, text, generator, cameras), image)

    def spoil(self, out: dict, image: torch.Tensor):
        raise NotImplementedError


@register("guidance", "contract-test-no-loss")
class NoLossGuidance(SpoiledSDS):
    def spoil(self, out, image):
        out["objective"] = out.pop("loss")  # a misnamed key
        return out


@register("guidance", "contract-test-per-sample-loss")
class PerSampleLossGuidance(SpoiledSDS):
    def spoil(self, out, image):
        out["loss"] = (image**2).mean(dim=(1, 2, 3))  # [B]: not reduced to a scalar
        return out


@register("guidance", "contract-test-tensor-not-dict")
class TensorGuidance(SpoiledSDS):
    def spoil(self, out, image):
        return out["loss"]  # the loss alone, not the dict


@register("guidance", "contract-test-unloggable")
class UnloggableGuidance(SpoiledSDS):
    def spoil(self, out, image):
        out["t_per_sample"] = torch.arange(image.shape[0], dtype=torch.float32)  # [B]: not one scalar
        return out


@register("guidance", "contract-test-detached")
class DetachedGuidance(SpoiledSDS):
    def spoil(self, out, image):
        out["loss"] = out["loss"].detach()  # no gradient reaches the render
        return out


@register("loss", "contract-test-per-pixel")
class PerPixelLoss(SparsityLoss):
    """Sparsity without the mean: a [B, H, W, 1] tensor instead of a scalar."""

    config_file = SPARSITY_YAML

    def __call__(self, render, cameras):
        return torch.sqrt(render.opacity.square() + self.cfg.eps)


def run_config(pipeline, size: int, guidance: str = "sds", loss: str | None = None, steps: int = 2):
    """dreamfusion + SDS's options on the tiny pipeline, with ``guidance.type`` set to ``guidance``
    and, if given, ``loss`` as the only loss (weight 1)."""
    cfg = compose_cfg(small_run_overrides(pipeline, size, "dreamfusion", "sds", steps))
    with open_dict(cfg):
        cfg.guidance.type = guidance
        if loss is not None:
            cfg.system.losses = {loss: {}}
            cfg.system.loss_weights = {"lambda_guidance": 1.0, loss_key(loss): 1.0}
    return cfg


def assert_names_plugin(message: str, kind: str, name: str, cls: type) -> None:
    assert "\n" not in message, "one paragraph"
    assert f"{kind} {name!r}" in message
    assert f"class {cls.__qualname__} in module {cls.__module__}" in message


@pytest.mark.parametrize("name, cls, returned", [
    ("contract-test-no-loss", NoLossGuidance, ["keys ['grad_norm', 'objective', 't_mean'] and no 'loss'"]),
    ("contract-test-per-sample-loss", PerSampleLossGuidance, ["its 'loss' is a tensor of shape (2,) (float32, requires_grad)"]),
    ("contract-test-tensor-not-dict", TensorGuidance, ["it returned a tensor of shape () (float32, requires_grad) instead of a dict"]),
    ("contract-test-unloggable", UnloggableGuidance, ["cannot be logged as scalars: 't_per_sample' is a tensor of shape (2,)"]),
    ("contract-test-detached", DetachedGuidance, ["its 'loss' is a tensor of shape () (float32)", "does not depend on the render"]),
])
def test_broken_guidance_fails_at_step_one_naming_plugin_and_contract(name, cls, returned, tiny_pipeline_dir, latent_size, tmp_path):
    with pytest.raises(PluginError) as err:
        run(run_config(tiny_pipeline_dir, latent_size, guidance=name), tmp_path)
    assert type(err.value) is PluginError  # Lightning re-raises it as it is
    message = str(err.value)
    assert_names_plugin(message, "guidance", name, cls)
    for words in [*returned, *GUIDANCE_CONTRACT_WORDS]:
        assert words in message, (words, message)
    assert (tmp_path / "config.yaml").is_file() and not checkpoint_path(tmp_path).exists()  # stopped at step 1


def test_broken_loss_fails_at_step_one_naming_plugin_and_contract(tiny_pipeline_dir, latent_size, tmp_path):
    name = "contract-test-per-pixel"
    with pytest.raises(PluginError) as err:
        run(run_config(tiny_pipeline_dir, latent_size, loss=name), tmp_path)
    message = str(err.value)
    assert_names_plugin(message, "loss", name, PerPixelLoss)
    for words in [f"it returned a tensor of shape (2, {latent_size}, {latent_size}, 1) (float32, requires_grad)", *LOSS_CONTRACT_WORDS]:
        assert words in message, (words, message)
    assert not checkpoint_path(tmp_path).exists()


def test_installed_plugin_is_named_with_its_package(monkeypatch):
    """A plugin registered while an entry point is imported carries the package in its origin."""
    monkeypatch.setattr(registry, "_current_origin", "contract_pkg.guidance (package contract-pkg 1.2.3)")

    @register("guidance", "contract-test-packaged")
    class PackagedGuidance(SpoiledSDS):
        pass

    monkeypatch.setattr(registry, "_current_origin", None)
    with pytest.raises(PluginError) as err:
        contracts.check_guidance_output({"loss": torch.zeros(3)}, "contract-test-packaged", object.__new__(PackagedGuidance))
    message = str(err.value)
    assert_names_plugin(message, "guidance", "contract-test-packaged", PackagedGuidance)
    assert "registered by contract_pkg.guidance (package contract-pkg 1.2.3)" in message


def test_launcher_exits_2_with_one_paragraph(tiny_pipeline_dir, latent_size, tmp_path, capsys):
    """Raised inside Lightning's fit, the PluginError reaches the launcher, which prints one
    paragraph and exits with 2; what the run wrote before its first step stays."""
    from scorelift.launcher import main

    run_dir = tmp_path / "run"
    args = [*small_run_overrides(tiny_pipeline_dir, latent_size, "dreamfusion", "sds", 2),
            "guidance.type=contract-test-no-loss", f"hydra.run.dir={run_dir}"]
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        code = main(args)
    finally:  # the launcher sets up console logging; leave the test process as it was
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("scorelift: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert_names_plugin(lines[0], "guidance", "contract-test-no-loss", NoLossGuidance)
    assert "dL/d(render)" in lines[0]
    for name in ("config.yaml", "run_info.json", "launch.log", ".hydra/overrides.yaml"):
        assert (run_dir / name).is_file(), name
    assert not checkpoint_path(run_dir).exists()


def test_contract_is_checked_on_the_first_step_only(tiny_pipeline_dir, latent_size, tmp_path, monkeypatch):
    calls = {"guidance": 0, "loss": 0, "steps": 0}
    check_guidance, check_loss = contracts.check_guidance_output, contracts.check_loss_output
    step = ScoreDistillationSystem.training_step

    def counting(key, fn):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(contracts, "check_guidance_output", counting("guidance", check_guidance))
    monkeypatch.setattr(contracts, "check_loss_output", counting("loss", check_loss))
    monkeypatch.setattr(ScoreDistillationSystem, "training_step", counting("steps", step))
    run(run_config(tiny_pipeline_dir, latent_size, guidance="sds", steps=4), tmp_path)
    assert calls == {"guidance": 1, "loss": 1, "steps": 4}  # dreamfusion has one loss (sparsity)
    assert torch.load(checkpoint_path(tmp_path), weights_only=False)["global_step"] == 4
