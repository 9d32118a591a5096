"""OmegaConf resolvers used by the configs (registered once, on import)."""

from __future__ import annotations

import re
from importlib import resources

from omegaconf import OmegaConf


def slugify(text: str | None, max_len: int = 60) -> str:
    """'A red cube, front view!' -> 'a_red_cube_front_view' (safe as a directory name); no prompt
    (null: an unconditional prior's run) -> 'unconditional'."""
    if text is None or not str(text).strip():
        return "unconditional"
    slug = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")
    return slug[:max_len] or "empty"


def step_fraction(steps, fraction, offset=0) -> int:
    """``${step_fraction:${trainer.max_steps},0.5}``: the step at a fraction of the run (+ offset),
    so a schedule written against the run's length follows trainer.max_steps."""
    return int(round(int(steps) * float(fraction))) + int(offset)


def package_data_path(package: str, relative: str = "") -> str:
    """``${scorelift_data:scorelift.shapes_world,prior}``: the path of a data folder shipped inside
    an installed package (found through importlib.resources, wherever the package lives)."""
    root = resources.files(package)
    return str(root.joinpath(*relative.split("/")) if relative else root)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("slug"):
        OmegaConf.register_new_resolver("slug", slugify)
    if not OmegaConf.has_resolver("step_fraction"):
        OmegaConf.register_new_resolver("step_fraction", step_fraction)
    if not OmegaConf.has_resolver("scorelift_data"):
        OmegaConf.register_new_resolver("scorelift_data", package_data_path)


register_resolvers()
