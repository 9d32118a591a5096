"""The pixel-cubes prior's training script: its data, its model presets and a CPU smoke run.

The smoke run trains the tiny preset for a few steps in a temporary directory and checks that
the result is a DDPMPipeline directory in fp16 that loads with ``DDPMPipeline.from_pretrained``,
that its metrics and model card are written, and that the run is deterministic given the seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scorelift.shapes_world import world
from scorelift.shapes_world.training import train_pixel_prior as tpp

METRIC_FIELDS = (
    "steps", "batch", "train_seconds", "final_loss", "ema_loss_by_timestep", "parameters", "pipeline_bytes",
    "weight_files", "versions", "seed", "n_images", "command", "sample_check", "total_seconds",
)
SAMPLE_FIELDS = (
    "n", "steps", "cube_fraction", "close_cube_fraction", "colour_histogram", "close_colour_histogram",
    "shape_histogram", "rms_median", "rms_threshold", "baseline",
)


def _smoke(out: Path) -> dict:
    return tpp.main(["--out", str(out), "--smoke", "--device", "cpu", "--seed", "3"])


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Two smoke runs with the same seed: (directory, metrics) of each."""
    root = tmp_path_factory.mktemp("pixel_prior")
    a, b = root / "a", root / "b"
    return (a, _smoke(a)), (b, _smoke(b))


def test_cube_renderer_returns_only_cubes_in_every_colour():
    data = tpp.render_cube_dataset(96, seed=0, device="cpu", log=None)
    assert data["shape"] == "cube"
    assert (data["shape_idx"] == world.shape_index("cube")).all()
    images = data["images"]
    assert images.shape == (96, 3, 32, 32) and images.dtype == torch.float16
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert set(data["colour_idx"].tolist()) == set(range(len(world.COLOURS)))
    # Every image shows the object (the background is white), and corners are background.
    assert bool(((images < 0.9).flatten(1).sum(1) > 20).all())
    assert float(images[:, :, 0, 0].min()) > 0.99
    # The object's pixels carry the image's own colour label: their mean chromaticity is nearest
    # to that colour's albedo.
    albedo = torch.tensor(list(world.COLOURS.values()))  # [6, 3]
    obj = (images.float() < 0.95).all(1, keepdim=True)  # [n, 1, 32, 32]
    mean_rgb = (images.float() * obj).sum((2, 3)) / obj.sum((2, 3)).clamp_min(1)  # [n, 3]
    chroma = mean_rgb / mean_rgb.sum(1, keepdim=True)
    ref = albedo / albedo.sum(1, keepdim=True)
    assert (torch.cdist(chroma, ref).argmin(1) == data["colour_idx"]).float().mean() > 0.95
    again = tpp.render_cube_dataset(96, seed=0, device="cpu", log=None)
    assert torch.equal(again["images"], images) and torch.equal(again["colour_idx"], data["colour_idx"])


def test_full_preset_has_attention_and_fits_the_size_budget():
    unet = tpp.build_unet("full")
    n = sum(p.numel() for p in unet.parameters())
    assert 2 * n < tpp.WEIGHT_LIMIT_BYTES  # fp16
    names = [name for name, _ in unet.named_modules()]
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        assert any(name.endswith("attentions.0." + proj) for name in names), proj
    assert unet.config.sample_size == 32 and unet.config.in_channels == 3 and unet.config.out_channels == 3


def test_scheduler_is_ddpm_linear():
    s = tpp.build_scheduler()
    torch.testing.assert_close(s.betas, torch.linspace(1e-4, 0.02, 1000))
    assert s.config.prediction_type == "epsilon" and s.config.clip_sample and s.config.variance_type == "fixed_small"


def test_smoke_run_writes_a_loadable_fp16_ddpm_pipeline(smoke_runs):
    from diffusers import DDPMPipeline
    from safetensors.torch import load_file

    (out, metrics), _ = smoke_runs
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"][1] == "UNet2DModel" and index["scheduler"][1] == "DDPMScheduler"
    cfg = json.loads((out / "unet" / "config.json").read_text())
    assert cfg["in_channels"] == 3 and cfg["out_channels"] == 3 and cfg["sample_size"] == 32
    assert "AttnDownBlock2D" in cfg["down_block_types"] and "AttnUpBlock2D" in cfg["up_block_types"]
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["beta_schedule"] == "linear" and sched["beta_start"] == 1e-4 and sched["beta_end"] == 0.02
    weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert weights and all(w.dtype == torch.float16 for w in weights.values())
    assert any(".to_q." in k for k in weights) and any(".to_out.0." in k for k in weights)
    for name in ("MODEL_CARD.md", "samples.png", "metrics.json"):
        assert (out / name).is_file(), name

    pipe = DDPMPipeline.from_pretrained(out, torch_dtype=torch.float32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eps = pipe.unet(x, torch.tensor([10, 900])).sample
    assert eps.shape == (2, 3, 32, 32) and torch.isfinite(eps).all()

    for key in METRIC_FIELDS:
        assert key in metrics, key
    assert metrics["steps"] > 0 and metrics["n_images"] == 64
    assert set(metrics["ema_loss_by_timestep"]) == {"0-99", "100-299", "300-599", "600-999", "all"}
    assert metrics["parameters"] == sum(p.numel() for p in pipe.unet.parameters())
    assert metrics["command"].startswith("python -m scorelift.shapes_world.training.train_pixel_prior")
    sc = metrics["sample_check"]
    for key in SAMPLE_FIELDS:
        assert key in sc, key
    assert sc["n"] == 4 and sum(sc["shape_histogram"].values()) == 4 and sum(sc["colour_histogram"].values()) == 4
    assert 0.0 <= sc["close_cube_fraction"] <= sc["cube_fraction"] <= 1.0
    # The classifier recognises ground-truth cubes through the 32 -> 64 round trip. The smoke run
    # scores against one field of view only (~85 % cubes; all five give ~100 %).
    assert sc["fovys"] == [40.0]
    assert sc["baseline"]["cube_fraction"] > 0.7 and sc["baseline"]["colour_accuracy"] > 0.85
    assert sc["baseline"]["rms_median"] < sc["rms_threshold"] < 0.5
    assert json.loads((out / "metrics.json").read_text())["sample_check"]["n"] == 4


def test_smoke_runs_with_one_seed_are_identical(smoke_runs):
    from safetensors.torch import load_file

    (a, ma), (b, mb) = smoke_runs
    wa = load_file(a / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(b / "unet" / "diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ma["final_loss"] == mb["final_loss"]


def test_card_only_rewrites_the_card_from_the_metrics(smoke_runs):
    (out, metrics), _ = smoke_runs
    (out / "MODEL_CARD.md").unlink()
    tpp.main(["--out", str(out), "--card-only"])
    card = (out / "MODEL_CARD.md").read_text()
    assert "DDPMPipeline.from_pretrained" in card and "prior=pixel-cubes" in card
    assert f"{metrics['parameters']:,} parameters" in card
    assert metrics["command"] in card and "Sample check" in card
