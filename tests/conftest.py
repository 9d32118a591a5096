"""Shared fixtures: a tiny random-weight Stable-Diffusion pipeline and priors loaded from it.

Everything runs on the CPU without network. The pipeline (8 x 8 latents, 16 x 16 pixels) is
built once per session; a UNet call on it takes about 10 ms.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest` from anywhere imports the tests package (tests.conftest)
    sys.path.insert(0, str(ROOT))

TINY_LATENT_SIZE = 8
TINY_VAE_BLOCKS = 2  # pixels 16 x 16


def pytest_collection_modifyitems(config, items):
    """The slowest modules first: the SLURM one, then those that run scorelift as processes, then the
    rest (each group in its collected order). pytest-xdist hands whole files to its two workers in
    this order (``--dist loadfile``, pytest.ini), so the long files start at once instead of one of
    them ending the run alone."""
    def weight(item) -> int:
        marks = {m.name for m in item.iter_markers()}
        return 0 if "slurm" in marks else 1 if "subprocess" in marks else 2

    items.sort(key=weight)  # stable: a module's tests stay together and in order


def pipeline_variant(src: Path, dst: Path, edits: dict[str, dict]) -> Path:
    """Copy pipeline ``src`` to ``dst`` and update JSON configs: {"vae/config.json": {...}}."""
    shutil.copytree(src, dst)
    for rel, changes in edits.items():
        path = dst / rel
        config = json.loads(path.read_text())
        config.update(changes)
        path.write_text(json.dumps(config, indent=2))
    return dst


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    from scorelift.plugins.priors.tiny_random import build_tiny_pipeline

    return build_tiny_pipeline(
        tmp_path_factory.mktemp("tiny-sd") / "pipeline",
        latent_size=TINY_LATENT_SIZE,
        vae_blocks=TINY_VAE_BLOCKS,
        seed=0,
    )


def load_prior(model: Path | str, device: str = "cpu", fast_path: bool = True, **overrides):
    from scorelift.plugins.priors.stable_diffusion import StableDiffusionPrior

    return StableDiffusionPrior(dict(model=str(model), **overrides), device, fast_path=fast_path)


@pytest.fixture(scope="session")
def tiny_prior(tiny_pipeline_dir):
    """The stable-diffusion prior on the tiny pipeline (shared: do not mutate it)."""
    return load_prior(tiny_pipeline_dir)


@pytest.fixture
def fresh_prior(tiny_pipeline_dir):
    """A prior of its own (empty text cache), for tests that count or patch things."""
    return load_prior(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tiny-model tests on one intra-op thread, then restore the setting.

    The tiny UNet's ops are so small that a second thread only adds synchronisation, and on a
    busy 2-core machine spinning OpenMP threads made these tests 5x slower (8 s vs 40 s).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def deterministic_algorithms():
    """PyTorch's deterministic algorithms on for one test (as ``deterministic=true`` runs have
    them), then the previous setting back."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)
