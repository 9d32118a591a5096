"""scorelift: text-to-3D by score distillation, on a laptop CPU or a GPU."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="scorelift",
    version="0.1.0",
    description="Modular text-to-3D score distillation (SJC, SDS, SSD, VSD) with an embedded ground-truth prior",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["framework", "framework.*", "plugins", "plugins.*", "configs"]),
    package_data={
        "configs": ["*.yaml", "*/*.yaml"],
        "plugins": ["priors/shapes_prior/*", "priors/shapes_prior/*/*"],
    },
    py_modules=["launch", "benchmark"],
    install_requires=[
        # torch is pinned by the install instructions (pip install torch==2.13.0 first): a bare
        # requirement here would let pip pull a multi-GB CUDA build on machines without a GPU.
        "torch>=2.1",
        "pytorch-lightning>=2.1",
        "diffusers>=0.30",
        "transformers>=4.40",
        "safetensors",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
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
    ],
    extras_require={
        "test": ["pytest>=7", "nerfacc==0.5.3"],
        "cuda": ["nerfacc==0.5.3"],  # tinycudann is not on PyPI: build it from its repository
    },
)
