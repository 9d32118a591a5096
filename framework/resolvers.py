"""OmegaConf resolvers used by the configs (registered once, on import)."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent


def slugify(text: str, max_len: int = 60) -> str:
    """'A red cube, front view!' -> 'a_red_cube_front_view' (safe as a directory name)."""
    slug = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")
    return slug[:max_len] or "empty"


def step_fraction(steps, fraction, offset=0) -> int:
    """``${step_fraction:${trainer.max_steps},0.5}``: the step at a fraction of the run (+ offset),
    so a schedule written against the run's length follows trainer.max_steps."""
    return int(round(int(steps) * float(fraction))) + int(offset)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("slug"):
        OmegaConf.register_new_resolver("slug", slugify)
    if not OmegaConf.has_resolver("step_fraction"):
        OmegaConf.register_new_resolver("step_fraction", step_fraction)
    if not OmegaConf.has_resolver("scorelift_root"):
        OmegaConf.register_new_resolver("scorelift_root", lambda: str(REPO_ROOT))


register_resolvers()
