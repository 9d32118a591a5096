#!/usr/bin/env python
"""scorelift's entry point.

    python launch.py system=sjc guidance=paas                      # the main job
    python launch.py system=dreamfusion guidance=sds prompt="a blue torus" seed=3
    python launch.py resume=outputs/sjc-paas/a_red_cube@...         # continue a run
    python launch.py mode=test resume=outputs/sjc-paas/a_red_cube@...  # re-render it
    python launch.py --list                                         # available parts
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import framework.resolvers  # noqa: F401  (registers ${slug:...} before Hydra composes)
from framework.cli import RunDirGuard, check_command_line, expand_resume, fail, handle_listing, with_plugin_searchpath
from framework.errors import ScoreliftError

# Set before main() runs: undoes Hydra's writes (and the run's) if the run fails before training.
guard = RunDirGuard(None)


@hydra.main(version_base=None, config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from framework.run import run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir)
    except ScoreliftError as exc:
        guard.undo(run_dir)
        fail(exc)


if __name__ == "__main__":
    if handle_listing(sys.argv[1:]):
        sys.exit(0)
    try:
        # Compose and check everything that needs no model weights before Hydra creates the run
        # directory: bad input fails with one paragraph and nothing written.
        checked = check_command_line(with_plugin_searchpath(expand_resume(sys.argv[1:])))
    except ScoreliftError as exc:
        fail(exc)
    sys.argv = sys.argv[:1] + checked.argv
    guard = RunDirGuard(checked.run_dir)
    main()
