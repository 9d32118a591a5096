"""Bad input on launch.py's command line: each case exits with code 2 and one
paragraph naming the offending value and what is allowed, and writes nothing: no run directory,
no .hydra/, no launch.log, no outputs folder. A resume with a bad override leaves the run it
names byte-identical.

launch.py starts in about 7 s here (imports), so the cases run in one subprocess that executes
launch.py as ``__main__`` once per case (tests/run_cases.py: the same code path as ``python launch.py``).
A finished tiny run made by a real ``python launch.py`` (the normal short run) is resumed with bad
overrides, then once with a good one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import pipeline_variant
from tests.launching import error_paragraph
from tests.run.test_system import small_run_overrides

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]
LATENT = 8  # the conftest tiny pipeline: 8 x 8 latents, 16 x 16 pixels
SHAPES_LIMIT = 16  # the shapes prior's tokenizer takes 16 tokens

def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def launch(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, **kw)


def tiny_prior(pipeline: Path) -> list[str]:
    return ["prior=stable-diffusion", f"prior.model={pipeline}"]


@pytest.fixture(scope="module")
def finished_run(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """A normal short run (sjc + paas on the tiny pipeline, 2 steps) through `python launch.py`."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    done = launch([*small_run_overrides(tiny_pipeline_dir, LATENT, "sjc", "paas", 2), "system.views.n_frames=2",
                   f"hydra.run.dir={run_dir}"])
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def case_list(root: Path, pipeline: Path, finished: Path) -> list[dict]:
    """(id, extra args, words the message must hold); each case writes (if at all) under root/<id>."""
    broken_json = pipeline_variant(pipeline, root / "models" / "broken-json", {})
    (broken_json / "unet" / "config.json").write_text("{not json")
    truncated = pipeline_variant(pipeline, root / "models" / "truncated", {})
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    knows = pipeline_variant(pipeline, root / "models" / "knows-three", {})  # declares the prompts it knows
    (knows / "vocabulary.json").write_text(json.dumps({"prompts": ["a red cube", "a blue cube", "a red torus"],
                                                       "extra_words": ["side", "view"]}))
    no_ckpt = root / "models" / "no-ckpt"
    (no_ckpt / ".hydra").mkdir(parents=True)
    (no_ckpt / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    no_ckpt_run = root / "models" / "no-ckpt-run"  # a run folder whose run never checkpointed
    no_ckpt_run.mkdir(parents=True)
    (no_ckpt_run / "config.yaml").write_text("seed: 0\n")
    tiny = tiny_prior(pipeline)
    twelve_words = " ".join(["a", "red", "cube"] * 4 + ["a"])  # 13 words: 15 tokens, 18 with ", overhead view"
    w = str(finished)
    spec = [
        # unknown system, guidance, geometry, renderer (and prior) names
        ("system-name", ["system=nosuch"], ["system=nosuch", "'system'", "dreamfusion, dreamgaussian, gaussian, magic3d, magic3d-fine, prolificdreamer, sjc"]),
        ("guidance-name", ["guidance=nosuch"], ["guidance=nosuch", "paas, sds, ssd, vsd"]),
        ("geometry-name", ["geometry=nosuch"], ["geometry=nosuch", "hash-grid, voxel-grid"]),
        ("renderer-name", ["renderer=nosuch"], ["renderer=nosuch", "volume"]),
        ("prior-name", ["prior=nosuch"], ["prior=nosuch", "shapes, stable-diffusion, tiny-random"]),
        ("guidance-type", ["guidance.type=nosuch"], ["guidance.type='nosuch'", "paas, sds, ssd, vsd"]),
        ("system-type", ["system.type=nosuch"], ["system.type='nosuch'", "score-distillation"]),
        ("not-a-group", ["loss=nosuch"], ["loss=nosuch", "geometry", "guidance", "system"]),
        # unknown config keys
        ("key-root", ["foo=1"], ["'foo'", "prompt, seed"]),
        ("key-data", ["data.foo=1"], ["'data.foo'", "elevation_range"]),
        ("key-guidance", ["guidance.nosuch_key=1"], ["'guidance.nosuch_key'", "guidance_scale"]),
        ("key-added-root", ["+foo=1"], ["'foo'", "prompt, seed"]),
        ("key-added-data", ["+data.foo=1"], ["'foo'", "data", "elevation_range"]),
        # wrong value types
        ("type-trainer", ["trainer.max_steps=abc"], ["'max_steps'", "'abc'", "int"]),
        ("type-data", ["data.height=abc"], ["'height'", "'abc'", "int"]),
        ("type-guidance", ["guidance.guidance_scale=abc"], ["'guidance_scale'", "'abc'", "float"]),
        ("type-seed", ["seed=abc"], ["seed='abc'", "whole number"]),
        ("seed-negative", ["seed=-1"], ["seed=-1", "0..4294967295"]),
        ("seed-too-large", ["seed=4294967296"], ["seed=4294967296", "0..4294967295"]),
        ("nan-guidance-scale", ["guidance.guidance_scale=nan"], ["guidance.guidance_scale=nan", "finite"]),
        ("inf-loss-weight", ["system.loss_weights.lambda_emptiness=inf"],
         ["system.loss_weights.lambda_emptiness=inf", "finite"]),
        # learning rates and optimizer options torch would refuse (or that train nothing useful)
        ("lr-negative", ["system.optimizer.lr.geometry=-1"], ["system.optimizer.lr.geometry=-1", "negative", "0..10"]),
        ("lr-huge", ["system.optimizer.lr.geometry=1e30"],
         ["system.optimizer.lr.geometry=1e+30", "0..10", "about lr per step", "system.optimizer.allow_unusual_lr=true"]),
        ("optimizer-betas", ["+system.optimizer.args.betas=[2,0.9]"],
         ["system.optimizer.args.betas=[2, 0.9]", "torch.optim.Adam", "Invalid beta parameter"]),
        ("optimizer-arg-unknown", ["+system.optimizer.args.nosuch=1"], ["system.optimizer.args.nosuch=1", "betas, eps"]),
        ("optimizer-name", ["system.optimizer.name=nosuch"], ["system.optimizer.name='nosuch'", "adam, adamax, adamw, sgd"]),
        # a geometry whose parameters, gradients and optimizer state cannot fit in memory
        ("geometry-memory", ["geometry.resolution=100000"],
         ["geometry.resolution=100000", "PiB of float32 parameters", "RAM available", "Lower geometry.resolution"]),
        ("hash-grid-memory", ["system=dreamfusion", "guidance=sds", "geometry=hash-grid", "geometry.features_per_level=100000"],
         ["geometry.features_per_level=100000", "TiB of float32 parameters", "Lower geometry.features_per_level"]),
        ("hash-grid-levels", ["system=dreamfusion", "guidance=sds", "geometry=hash-grid", "geometry.n_levels=3000"],
         ["n_levels=3000", "2^24"]),
        ("type-deterministic", ["deterministic=sometimes"], ["deterministic='sometimes'", "true or false"]),
        ("stop-signal-uncatchable", ["trainer.stop_signals=[SIGKILL]"], ["'SIGKILL'", "cannot be caught"]),
        ("stop-signal-unknown", ["trainer.stop_signals=[SIGFOO]"], ["'SIGFOO'", "not a signal"]),
        ("keep-checkpoints-zero", ["trainer.keep_checkpoints=0"], ["trainer.keep_checkpoints=0", "at least 1"]),
        ("type-section", ["data=5"], ["data", "mapping", "5"]),
        ("type-mode", ["mode=nosuch"], ["mode='nosuch'", "train, test, export"]),
        ("type-syntax", ["seed=[1"], ["'seed=[1'", "cannot be parsed"]),
        # prompts
        ("prompt-empty", ["prompt=''"], ["prompt is empty", "''"]),
        ("prompt-blank", ["prompt='   '"], ["prompt is empty", "'   '"]),
        ("prompt-long", ["prompt='" + "red " * 20 + "cube'"], ["23 tokens long", f"at most {SHAPES_LIMIT}"]),
        ("prompt-long-views", [f"prompt='{twelve_words}'"], ["view words of prior.view_templates.front", f"at most {SHAPES_LIMIT}"]),
        ("prompt-long-tiny", [*tiny, "prompt='" + "red " * 80 + "cube'"], ["83 tokens long", "at most 77"]),
        # a prompt with a word that the prior declares it does not know (vocabulary.json)
        ("prompt-unknown", ["prior=stable-diffusion", f"prior.model={knows}", "prompt='a red hamburger'"],
         ["prompt='a red hamburger'", "knows 3 prompts", "'hamburger'", "'a red cube'", "allow_unknown_prompt=true"]),
        # missing or corrupt model directory
        ("model-missing", ["prior=stable-diffusion", f"prior.model={root / 'nowhere'}"],
         [str(root / "nowhere"), "does not exist", "model_index.json"]),
        ("model-hub-offline", ["prior=stable-diffusion", "prior.model=nobody-here/no-such-model"],
         ["'nobody-here/no-such-model'", "Hugging Face cache", "local_files_only"]),
        ("model-bad-json", ["prior=stable-diffusion", f"prior.model={broken_json}"],
         [str(broken_json / "unet" / "config.json"), "JSON"]),
        ("model-truncated", ["prior=stable-diffusion", f"prior.model={truncated}"],
         [str(weights), "truncated"]),
        # a loss that reads what the renderer does not return
        ("loss-reads-normals", ["+system.losses.orientation={}", "+system.loss_weights.lambda_orientation=1"],
         ["loss 'orientation' (OrientationLoss) reads normals, ray_dirs", "renderer=volume (VolumeRenderer)",
          "renderer.return_normals=true"]),
        # geometry, renderer and losses that do not fit, stages, and a mesh stage with nothing to start from
        ("geometry-kind", ["system=dreamfusion", "geometry=dmtet"],
         ["geometry=dmtet (DMTetGeometry) is a mesh", "renderer=volume (VolumeRenderer) draws field geometry only"]),
        ("loss-reads-weights", ["system=magic3d-fine", "+system.losses.emptiness={}", "+system.loss_weights.lambda_emptiness=1"],
         ["loss 'emptiness' (EmptinessLoss) reads weights", "renderer=rasterizer (Rasterizer)"]),
        ("dmtet-memory", ["system=magic3d-fine", "geometry.resolution=20000"],
         ["geometry.resolution=20000", "TiB of float32 parameters", "Lower geometry.resolution"]),
        ("gaussians-none", ["system=gaussian", "geometry.max_gaussians=0"],
         ["geometry (gaussians) max_gaussians=0", "at least 1"]),
        ("gaussians-sh-degree", ["system=gaussian", "geometry.sh_degree=7"],
         ["geometry (gaussians) sh_degree=7", "0..3"]),
        ("gaussians-loss-reads-weights", ["system=gaussian", "+system.losses.emptiness={}",
                                          "+system.loss_weights.lambda_emptiness=1"],
         ["loss 'emptiness' (EmptinessLoss) reads weights", "renderer=splatter (Splatter)"]),
        ("gaussians-ply-missing", ["system=gaussian", f"geometry.init_ply={root / 'no.ply'}"],
         ["geometry (gaussians) init_ply:", f"'{root / 'no.ply'}' cannot be read as a splat file"]),
        ("init-from-no-ckpt", ["system=magic3d-fine", f"init_from={no_ckpt_run}"],
         [f"init_from='{no_ckpt_run}'", "holds no readable checkpoint"]),
        ("stage-key-plain-run", ["stages.fine.trainer.max_steps=3"], ["sets a key of one stage, but this run has no stages"]),
        ("stage-unknown", ["system=magic3d", "stages.nosuch.seed=1"], ["no stage 'nosuch'", "coarse, fine"]),
        # a key of one stage's parts given without its stage: every stage gets it, and the hint says how
        ("stage-key-every-stage", ["system=dreamgaussian", "geometry.max_gaussians=0"],
         ["'geometry.max_gaussians'", "stage 'mesh'", "stages.splats.geometry.max_gaussians=..."]),
        # a render resolution the prior cannot take
        ("res-latent", ["system=sjc", *tiny, "data.height=9", "data.width=9"],
         ["latent size 8x8", "9x9", "data.height=8 data.width=8"]),
        ("res-non-square", ["data.width=32"], ["64x32", "64x64", "square", "data.width=64"]),
        # inverted or impossible camera ranges
        ("cam-elevation", ["data.elevation_range=[60,-10]"], ["data.elevation_range=[60.0, -10.0]", "inverted"]),
        ("cam-distance", ["data.distance_range=[2,1]"], ["data.distance_range=[2.0, 1.0]", "inverted"]),
        ("cam-distance-zero", ["data.distance_range=[0,1]"], ["data.distance_range=[0.0, 1.0]", "positive"]),
        ("cam-fovy", ["data.fovy_range=[10,200]"], ["data.fovy_range=[10.0, 200.0]", "(0, 180)"]),
        # render-size phases
        ("phase-count", ["data.height=[32,64]", "data.width=[32,64]"],
         ["data.height=[32, 64] has 2 values", "resolution_milestones=[] makes 1 phases"]),
        ("phase-order", ["data.resolution_milestones=[300,200]", "data.height=[16,32,64]", "data.width=[16,32,64]"],
         ["data.resolution_milestones=[300, 200]", "strictly ascending"]),
        ("phase-size", ["data.resolution_milestones=[5]", "data.batch_size=[2,0]"],
         ["'batch_size' is [2, 0]", "positive whole numbers"]),
        ("phase-non-square", ["data.resolution_milestones=[5]", "data.height=[32,64]", "data.width=[32,48]"],
         ["64x48", "data.width=64"]),
        # resume and mode
        ("resume-missing", [f"resume={root / 'no-run'}"], [str(root / "no-run"), "does not exist"]),
        ("resume-no-ckpt", [f"resume={no_ckpt}"], ["no checkpoint", "last.ckpt"]),
        ("test-without-resume", ["mode=test"], ["mode=test", "resume="]),
        # sweeps and --cfg are checked too
        ("multirun", ["-m", "seed=0,1", "prompt=''"], ["prompt is empty"]),
        ("cfg-job-bad", ["--cfg", "job", "system=nosuch"], ["system=nosuch", "dreamfusion"]),
    ]
    cases = []
    for cid, args, words in spec:
        out = root / cid
        flags = {"-m": 1, "--cfg": 2}.get(args[0], 0)  # flags go first: argparse takes one run of overrides
        cases.append({"id": cid, "args": [*args[:flags], "trainer.max_steps=2", "device=cpu", f"output_root={out}",
                                          *args[flags:]], "words": words, "dir": str(out)})
    # a resume with a bad override must leave the run it names as it was
    for cid, args, words in [
        ("resume-foreign-system", ["system=dreamfusion"], ["written by system 'sjc'", "system=sjc"]),
        ("resume-foreign-ckpt", ["system=dreamfusion"], ["written by system 'sjc'"]),
        ("resume-bad-type", ["data.height=abc"], ["'height'", "'abc'"]),
        ("resume-bad-name", ["guidance=nosuch"], ["guidance=nosuch", "paas"]),
        ("resume-bad-key", ["nosuch=1"], ["'nosuch'"]),
        ("resume-bad-prompt", ["prompt=''"], ["prompt is empty"]),
        ("resume-bad-camera", ["data.distance_range=[2,1]"], ["inverted"]),
        ("resume-bad-resolution", ["data.height=9", "data.width=9"], ["latent size 8x8"]),
        ("resume-bad-trainer", ["trainer.max_steps=0"], ["trainer.max_steps=0", "positive"]),
        # an export that fails in the run (its level cuts nothing): the run's config, saved
        # overrides, history and log stay as they were
        ("resume-export-no-surface", ["mode=export", "export.threshold=1e9"], ["export.threshold=1e+09", "no surface"]),
    ]:
        target = str(finished / "checkpoints" / "last.ckpt") if cid == "resume-foreign-ckpt" else w
        cases.append({"id": cid, "args": [f"resume={target}", *args], "words": words, "watch": w})
    # an error only the run itself finds (the solid background's colour has 3 values for 4
    # channels): Hydra's fresh run directory is removed again
    cases.append({"id": "in-run", "args": [*small_run_overrides(pipeline, LATENT, "dreamfusion", "sds", 2),
                                           "background.n_features=4", f"output_root={root / 'in-run'}"],
                  "words": ["n_features=4"], "dir": str(root / "in-run")})
    # what must still work, last (the good resume trains on)
    cases.append({"id": "cfg-job", "args": ["--cfg", "job", f"output_root={root / 'cfg-job'}"], "dir": str(root / "cfg-job")})
    cases.append({"id": "help", "args": ["--help"]})
    cases.append({"id": "export-good", "args": [f"resume={w}", "mode=export", "export.resolution=16",
                                                "export.formats=[ply]"], "watch": w})
    cases.append({"id": "resume-good", "args": [f"resume={w}", "trainer.max_steps=3"], "watch": w})
    return cases


@pytest.fixture(scope="module")
def results(tiny_pipeline_dir, finished_run, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad")
    cases = case_list(root, tiny_pipeline_dir, finished_run)
    (root / "cases.json").write_text(json.dumps(cases))
    out_file = root / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "run_cases.py"), str(root / "cases.json"), str(out_file), str(REPO / "launch.py")],
        cwd=REPO, env=dict(env(), HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf")), capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(out_file.read_text())
    return {c["id"]: {**c, **found[c["id"]]} for c in cases}


BAD = [
    "system-name", "guidance-name", "geometry-name", "renderer-name", "prior-name", "guidance-type", "system-type",
    "not-a-group", "key-root", "key-data", "key-guidance", "key-added-root", "key-added-data", "type-trainer",
    "type-data", "type-guidance", "type-seed", "seed-negative", "seed-too-large", "nan-guidance-scale",
    "inf-loss-weight", "stop-signal-uncatchable", "stop-signal-unknown", "keep-checkpoints-zero", "lr-negative",
    "lr-huge", "optimizer-betas", "optimizer-arg-unknown", "optimizer-name", "geometry-memory", "hash-grid-memory",
    "hash-grid-levels", "loss-reads-normals", "geometry-kind", "loss-reads-weights", "dmtet-memory", "init-from-no-ckpt",
    "gaussians-none", "gaussians-sh-degree", "gaussians-loss-reads-weights", "gaussians-ply-missing", "stage-key-plain-run", "stage-unknown", "stage-key-every-stage", "type-section", "type-mode", "type-syntax", "prompt-empty",
    "prompt-blank", "prompt-unknown", "prompt-long", "prompt-long-views", "prompt-long-tiny", "model-missing", "model-hub-offline",
    "model-bad-json", "model-truncated", "res-latent", "res-non-square", "cam-elevation", "cam-distance",
    "cam-distance-zero", "cam-fovy", "phase-count", "phase-order", "phase-size", "phase-non-square", "resume-missing", "resume-no-ckpt", "test-without-resume", "multirun",
    "cfg-job-bad",
]
BAD_RESUMES = [
    "resume-foreign-system", "resume-foreign-ckpt", "resume-bad-type", "resume-bad-name", "resume-bad-key",
    "resume-bad-prompt", "resume-bad-camera", "resume-bad-resolution", "resume-bad-trainer", "resume-export-no-surface",
]


@pytest.mark.parametrize("cid", BAD)
def test_bad_input_fails_clearly_and_writes_nothing(results, cid):
    result = results[cid]
    assert result["code"] == 2, result["stderr"][-3000:]
    message = error_paragraph(result)
    for word in result["words"]:
        assert word in message, (word, message)
    assert not Path(result["dir"]).exists(), sorted(str(p) for p in Path(result["dir"]).rglob("*"))


@pytest.mark.parametrize("cid", BAD_RESUMES)
def test_bad_resume_leaves_the_run_byte_identical(results, finished_run, cid):
    result = results[cid]
    assert result["code"] == 2, result["stderr"][-3000:]
    message = error_paragraph(result)
    for word in result["words"]:
        assert word in message, (word, message)
    before, after = result["before"], result["after"]
    if cid == "resume-export-no-surface":  # it got as far as taking the run's lock, which notes its holder
        before, after = ({k: v for k, v in d.items() if k != ".lock"} for d in (before, after))
    assert before and after == before


def test_the_normal_run_and_its_files(finished_run):
    for name in ("checkpoints/last.ckpt", "config.yaml", ".hydra/overrides.yaml", "launch.log"):
        assert (finished_run / name).is_file(), name


def test_cfg_job_help_and_a_good_resume_still_work(results, finished_run):
    shown = results["cfg-job"]
    assert shown["code"] == 0 and "prompt: a red cube" in shown["stdout"], shown["stderr"][-2000:]
    assert not Path(shown["dir"]).exists()
    assert results["help"]["code"] == 0 and "usage: scorelift" in results["help"]["stdout"]
    assert "Bad input exits with code 2" in results["help"]["stdout"]
    good = results["resume-good"]
    assert good["code"] == 0, good["stderr"][-3000:]
    assert torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3


def test_a_failure_after_the_start_check_is_undone(results):
    """What the start-up check cannot see fails in the run, and still leaves nothing behind."""
    result = results["in-run"]
    assert result["code"] == 2, result["stderr"][-3000:]
    assert "n_features=4" in error_paragraph(result)
    assert not Path(result["dir"]).exists(), sorted(str(p) for p in Path(result["dir"]).rglob("*"))


def test_an_export_adds_its_mesh_and_a_line_of_history_and_changes_nothing_else(results):
    """mode=export reads a run: its config.yaml, .hydra/ (the overrides resume= re-applies: no
    export.* lands there) and checkpoints stay byte-identical; run_info.json gains the export's
    invocation and launch.log its lines."""
    result = results["export-good"]
    assert result["code"] == 0, result["stderr"][-3000:]
    before, after = result["before"], result["after"]
    changed = sorted(k for k in after if before.get(k) != after[k] and k != ".lock")  # (the lock notes its holder)
    assert changed == ["launch.log", "mesh/mesh.ply", "run_info.json"], changed
    assert set(before) - set(after) == set()
