"""scorelift: text-to-3D by score distillation, on a laptop CPU or a GPU.

The repository's folders map onto one import package, ``scorelift``:

    framework/            -> scorelift               the core (registry, interfaces, system, start-up, outputs)
    plugins/              -> scorelift.plugins       the built-in parts
    configs/              -> scorelift.configs       Hydra config groups (package data)
    apps/shapes_world/    -> scorelift.shapes_world  the ground-truth world, its prior and evaluator
    apps/benchmark/       -> scorelift.benchmark     the method benchmark

so nothing generic (``framework``, ``plugins``, ``configs``) lands at the top of site-packages.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# import prefix -> repository folder
PACKAGE_ROOTS = {
    "scorelift": "framework",
    "scorelift.plugins": "plugins",
    "scorelift.configs": "configs",
    "scorelift.shapes_world": "apps/shapes_world",
    "scorelift.benchmark": "apps/benchmark",
}


def packages_and_dirs() -> tuple[list[str], dict[str, str]]:
    """Every package under each root, named with its import prefix, and where it lives."""
    packages, dirs = [], {}
    for prefix, folder in PACKAGE_ROOTS.items():
        packages.append(prefix)
        dirs[prefix] = folder
        for sub in find_packages(where=str(HERE / folder)):
            packages.append(f"{prefix}.{sub}")
            dirs[f"{prefix}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages, dirs


PACKAGES, PACKAGE_DIR = packages_and_dirs()

setup(
    name="scorelift",
    version="0.2.0",
    description="Modular text-to-3D score distillation (SJC, SDS, SSD, VSD) with an embedded ground-truth prior",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={
        "scorelift.configs": ["*.yaml", "*/*.yaml"],
        "scorelift.shapes_world": [
            "prior/*", "prior/*/*", "pixel_prior/*", "pixel_prior/*/*", "training/*.md", "training/*.sh",
        ],
        "scorelift.shapes_world.configs": ["*/*.yaml", "*/*/*.yaml"],  # prior/, preset/, part_preset/<kind>/
        "scorelift.benchmark": ["presets/*.yaml", "claims/*.yaml"],
    },
    entry_points={
        # The shapes world plugs into the core like any third-party package: its evaluator.
        "scorelift.plugins": ["shapes-world = scorelift.shapes_world.evaluator"],
        # ... and its embedded prior and presets are options of the core's config groups.
        "scorelift.configs": ["shapes-world = scorelift.shapes_world.configs"],
        "console_scripts": [
            "scorelift = scorelift.launcher:main",
            "scorelift-bench = scorelift.benchmark.cli:main",
        ],
    },
    install_requires=[
        # torch is pinned by the install instructions (pip install torch==2.13.0 first): a bare
        # requirement here would let pip pull a multi-GB CUDA build on machines without a GPU.
        "torch>=2.1",
        "pytorch-lightning>=2.1",
        "diffusers>=0.30",
        "transformers>=4.40",
        "safetensors",
        # Below 1.4 and 2.4: hydra-submitit-launcher asks for hydra-core>=1.1.0.dev7, a pre-release
        # specifier that lets pip pick release candidates (1.4.0rc3 with omegaconf 2.4.1rc1).
        "hydra-core>=1.3,<1.4",
        # Sweeps and benchmark cells run as submitit tasks, locally or on SLURM; the local controller
        # is started the way this version starts it (scorelift.jobs.local), hence the pin.
        "submitit==1.5.4",
        # The schema of launch.py -m hydra/launcher=submitit_local|submitit_slurm's options, which
        # scorelift.multirun reads (the jobs themselves go through scorelift.jobs).
        "hydra-submitit-launcher==1.2.0",
        "omegaconf>=2.3,<2.4",
        "imageio>=2.30",
        "imageio-ffmpeg",
        "numpy",
        "scikit-image",  # marching cubes for mode=export
        "trimesh",       # mesh files for mode=export
        "peft",          # LoRA adapters of guidance=vsd
        "matplotlib",    # the benchmark's figures
        "pillow",        # the benchmark's contact sheet
        "pyyaml",
        "tqdm",
        "tensorboard",   # Lightning's TensorBoard logger beside the CSV one
    ],
    extras_require={
        # the packaging test builds a wheel; import-linter holds the package's layers (tests/core/test_layers.py)
        "test": ["pytest>=7", "pytest-xdist>=3", "nerfacc==0.5.3", "setuptools>=64", "wheel", "import-linter>=2.16,<3",
                 "plyfile>=1.0",  # the splat export read back as viewers read it
                 "viser>=1.1,<2"],  # the live viewer's screenshot test (with Debian's chromium)
        "viewer": ["viser>=1.1,<2"],  # the live viewer in the browser (viewer=true, scorelift view RUN)
        "cuda": ["nerfacc==0.5.3"],  # tinycudann is not on PyPI: build it from its repository
    },
)
