"""End-to-end: every system x guidance composes; short runs write their outputs; resume and
determinism are exact. Runs on the tiny random pipeline the conftest fixture builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from scorelift.builders import build_named
from scorelift.command_line import expand_resume
from scorelift.compose import compose_config
from scorelift.errors import ConfigError
import scorelift.run as run_module
from scorelift.run import checkpoint_path, run

SYSTEMS = ["sjc", "dreamfusion", "prolificdreamer"]
GUIDANCES = ["paas", "sds", "ssd", "vsd"]


def compose_cfg(overrides: list[str]):
    return compose_config(overrides, with_hydra=False)


HASH_GRID_SMALL = ["geometry.n_levels=4", "geometry.log2_hashmap_size=10", "geometry.base_resolution=4",
                   "geometry.per_level_scale=2.0", "geometry.mlp_width=16"]


def small_run_overrides(pipeline_dir: Path, latent_size: int, system: str, guidance: str, steps: int) -> list[str]:
    return [
        f"system={system}",
        f"guidance={guidance}",
        "prior=stable-diffusion",
        f"prior.model={pipeline_dir}",
        f"trainer.max_steps={steps}",
        "trainer.checkpoint_every=5",
        "trainer.progress_bar=false",
        *(HASH_GRID_SMALL if system == "prolificdreamer" else ["geometry.resolution=12"]),
        "geometry.bbox_radius=1.0",
        "renderer.step_size=0.04",
        f"data.height={latent_size}",
        f"data.width={latent_size}",
        "data.batch_size=2",
        f"system.views.resolution={latent_size}",
        "system.views.n_frames=4",
        "system.validation_every=10",
        "device=cpu",
    ]


@pytest.fixture(scope="module")
def latent_size(tiny_pipeline_dir):
    cfg = json.loads((Path(tiny_pipeline_dir) / "unet" / "config.json").read_text())
    return int(cfg["sample_size"])


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("guidance", GUIDANCES)
def test_every_system_and_guidance_composes(system, guidance, tiny_pipeline_dir, latent_size):
    cfg = compose_cfg(small_run_overrides(tiny_pipeline_dir, latent_size, system, guidance, 1))
    assert cfg.system.name == system and cfg.guidance.type == guidance
    assert cfg.geometry.n_features == (4 if system == "sjc" else 3)


@pytest.mark.parametrize("system,guidance", [("sjc", "paas"), ("dreamfusion", "sds"), ("dreamfusion", "ssd")])
def test_short_run_writes_outputs(system, guidance, tiny_pipeline_dir, latent_size, tmp_path):
    cfg = compose_cfg(small_run_overrides(tiny_pipeline_dir, latent_size, system, guidance, 20))
    run(cfg, tmp_path)
    for name in ("turntable.mp4", "grid.png", "config.yaml", "run_info.json", "validation/step_000010.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "turntable.mp4").stat().st_size > 1000
    ckpt = torch.load(checkpoint_path(tmp_path), weights_only=False)
    assert ckpt["global_step"] == 20
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["seed"] == 0 and info["versions"]["torch"]
    # eval views and metrics for a shapes-world prompt ("a red cube" is the default prompt)
    assert (tmp_path / "eval" / "view_7.png").is_file() and (tmp_path / "metrics.json").is_file()
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["steps_timed"] == 15  # 20 steps less the 5 warm-up steps
    assert 0 < timing["median_s_per_it"] < timing["train_wall_s"]
    assert timing["peak_memory_kind"] == "cpu_max_rss" and timing["peak_memory_bytes"] > 10_000_000


def test_hash_grid_geometry_trains_in_a_system(tiny_pipeline_dir, latent_size, tmp_path):
    over = [o for o in small_run_overrides(tiny_pipeline_dir, latent_size, "dreamfusion", "sds", 6) if not o.startswith("geometry.res")]
    over += ["geometry=hash-grid", *HASH_GRID_SMALL]
    cfg = compose_cfg(over)
    assert cfg.geometry.type == "hash-grid"
    run(cfg, tmp_path)
    before = build_named("geometry", "hash-grid", dict(n_levels=4, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0, mlp_width=16))
    after = final_params(tmp_path)
    assert not torch.equal(after["geometry.encoding.tables.0"], before.encoding.tables[0])  # it trained
    assert (tmp_path / "grid.png").is_file()


def test_prolificdreamer_trains_its_lora_and_checkpoints_it(tiny_pipeline_dir, latent_size, tmp_path):
    over = small_run_overrides(tiny_pipeline_dir, latent_size, "prolificdreamer", "vsd", 4) + ["system.optimizer.lr.guidance=0.01"]
    run(compose_cfg(over), tmp_path)
    state = torch.load(checkpoint_path(tmp_path), weights_only=False)
    lora = state["scorelift"]["guidance_state"]["lora"]
    up = [v for k, v in lora.items() if "lora_B" in k]
    assert up and any(v.abs().sum() > 0 for v in up)  # lora_B starts at 0: non-zero means it trained
    assert (tmp_path / "grid.png").is_file()


def test_vsd_on_latent_renders_fails_clearly(tiny_pipeline_dir, latent_size, tmp_path):
    with pytest.raises(ConfigError, match=r"guidance=vsd needs RGB renders, but this system renders 4-channel latents.*system=dreamfusion or system=prolificdreamer"):
        run(compose_cfg(small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "vsd", 1)), tmp_path)
    assert not checkpoint_path(tmp_path).exists()


# The valid pairs that the other tests here and tests/apps/test_benchmark.py do not already train.
@pytest.mark.parametrize("system,guidance", [
    ("sjc", "sds"), ("sjc", "ssd"), ("dreamfusion", "paas"), ("prolificdreamer", "sds"), ("prolificdreamer", "paas"),
])
def test_every_valid_pair_trains(system, guidance, tiny_pipeline_dir, latent_size, tmp_path):
    """SDS / SSD on latent renders, PAAS on RGB renders (VAE-encoded), any guidance on the hash grid."""
    run(compose_cfg(small_run_overrides(tiny_pipeline_dir, latent_size, system, guidance, 2)), tmp_path)
    assert torch.load(checkpoint_path(tmp_path), weights_only=False)["global_step"] == 2


class CrashAtStep(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint_path(run_dir), weights_only=False)["state_dict"]


def test_resume_is_exact_and_same_seed_is_bit_identical(tiny_pipeline_dir, latent_size, tmp_path, monkeypatch):
    base = small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "paas", 10)
    straight_a, straight_b, resumed = tmp_path / "a", tmp_path / "b", tmp_path / "r"
    run(compose_cfg(base + ["trainer.preview_every=0"]), straight_a)
    # measuring quality and drawing previews must not change training
    run(compose_cfg(base + ["trainer.eval_every=3", "trainer.preview_every=4"]), straight_b)
    a, b = final_params(straight_a), final_params(straight_b)
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed must give bit-identical parameters"
    steps = [int(line.split(",")[0]) for line in (straight_b / "eval_curve.csv").read_text().splitlines()[1:]]
    assert steps == [0, 3, 6, 9, 10] and not (straight_a / "eval_curve.csv").exists()
    # preview.png: 4 views of the decoded 16-pixel renders, each scaled x10, 2-pixel white gaps
    import imageio.v3 as iio

    assert not (straight_a / "preview.png").exists()
    preview = iio.imread(straight_b / "preview.png")
    assert preview.shape == (160, 4 * 160 + 3 * 2, 3)
    assert (preview[:, 160:162] == 255).all() and preview[:, :160].std() > 0
    assert not [p.name for p in straight_b.iterdir() if ".tmp-" in p.name]

    # the same 10-step run, crashed after step 7: its last checkpoint is step 5's
    original = run_module.make_trainer

    def crashing_trainer(*args):
        trainer = original(*args)
        trainer.callbacks.append(CrashAtStep(7))
        return trainer

    monkeypatch.setattr(run_module, "make_trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose_cfg(base), resumed)
    monkeypatch.setattr(run_module, "make_trainer", original)
    assert torch.load(checkpoint_path(resumed), weights_only=False)["global_step"] == 5
    run(compose_cfg(base + [f"resume={resumed}"]), resumed)
    r = final_params(resumed)
    assert torch.load(checkpoint_path(resumed), weights_only=False)["global_step"] == 10
    assert all(torch.equal(a[k], r[k]) for k in a), "a resumed run must end where an uninterrupted one does"

    # mode=export on the finished run writes a mesh; without resume= it refuses clearly
    out = run(compose_cfg(base + [f"resume={straight_a}", "mode=export", "export.resolution=16"]), straight_a)
    assert out["mesh"]["n_faces"] > 0 and (straight_a / "mesh" / "mesh.glb").is_file()
    with pytest.raises(ConfigError, match="mode=export exports the mesh of a finished run"):
        run(compose_cfg(base + ["mode=export"]), tmp_path / "none")

    different = tmp_path / "s"
    run(compose_cfg(base + ["seed=1"]), different)
    d = final_params(different)
    assert any(not torch.equal(a[k], d[k]) for k in a)


def test_latent_render_size_must_match_prior(tiny_pipeline_dir, latent_size, tmp_path):
    over = small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "paas", 1)
    over[over.index(f"data.height={latent_size}")] = f"data.height={latent_size + 3}"
    with pytest.raises(ConfigError, match="latent size"):
        run(compose_cfg(over), tmp_path)


def test_latent_channels_and_background_must_match_at_start(tiny_pipeline_dir, latent_size, tmp_path):
    """The parts' fit is checked once, at start-up, from what their configs declare: nothing is
    built or written (the renderer and guidance no longer re-check it every step)."""
    base = small_run_overrides(tiny_pipeline_dir, latent_size, "sjc", "paas", 1)
    with pytest.raises(ConfigError, match="prior's latents have 4; set geometry.n_features=4"):
        run(compose_cfg(base + ["geometry.n_features=3", "background.n_features=3"]), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"geometry renders 4 channels .* background has 3"):
        run(compose_cfg(base + ["background.n_features=3"]), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_expand_resume_reuses_saved_overrides(tmp_path):
    run_dir = tmp_path / "outputs" / "sjc-paas" / "a_red_cube@1"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- system=sjc\n- seed=3\n- mode=train\n")
    argv = expand_resume([f"resume={run_dir}", "trainer.max_steps=50"])
    assert argv[:2] == ["system=sjc", "seed=3"]
    assert "mode=train" not in argv and argv[-1] == f"hydra.run.dir='{run_dir.as_posix()}'"
    with pytest.raises(ConfigError, match="does not exist"):
        expand_resume([f"resume={tmp_path / 'missing'}"])
