"""``scorelift view RUN [key=value ...]``: the live viewer (``scorelift.viewer``) on a finished or
running run, without writing anything into it.

The run's config is composed as a re-render's (``resume=RUN mode=test``) and checked; its system
is built and its newest readable checkpoint loaded. While a browser is open the viewer renders
from the camera it drags; when the run writes a newer checkpoint (a run still training), the
weights are loaded again and every browser's frame redrawn. Ctrl+C (or SIGTERM) stops it.

    scorelift view outputs/sjc-paas/a_red_cube@20261123-101500
    scorelift view outputs/sjc-paas/a_red_cube@20261123-101500 viewer.port=8080 device=cpu
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from .errors import ConfigError, ScoreliftError

log = logging.getLogger(__name__)

RELOAD_EVERY_S = 2.0  # how often the run's checkpoints are looked at for a newer one


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scorelift view", description="Open the live viewer on a finished or running run (nothing is written "
                                            "into it).")
    parser.add_argument("run", help="the run directory (outputs/<preset>-<guidance>/<prompt>@<time>)")
    parser.add_argument("overrides", nargs="*", help="key=value: viewer.port, viewer.host, viewer.resolution, device")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    from .command_line import expand_resume
    from .compose import compose_config
    from .console import setup_console_logging

    args = parse(argv)
    run_dir = Path(args.run).expanduser()
    if not (run_dir / ".hydra" / "overrides.yaml").is_file():
        raise ConfigError(f"scorelift view {args.run}: {str(run_dir)!r} is not a scorelift run directory (no "
                          f".hydra/overrides.yaml); pass a run folder, e.g. outputs/sjc-paas/a_red_cube@<time>.")
    cfg = compose_config(expand_resume([f"resume={run_dir}", "mode=test", *args.overrides]))
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    with open_dict(cfg):
        cfg.viewer.enabled = True

    from .checks import check_inputs
    from .viewer import check_viewer_config

    viewer_cfg = check_viewer_config(cfg.viewer)
    plan = check_inputs(cfg, None)  # None: a running run's lock is its own business; this only reads
    setup_console_logging()
    serve(plan, run_dir, viewer_cfg)
    return 0


def logged_loss(run_dir: Path, step: int) -> float | None:
    """The loss the run logged at its last row up to ``step`` (``logs/metrics.csv``), or None."""
    import csv

    try:
        with open(run_dir / "logs" / "metrics.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("loss") and int(r["step"]) <= step]
    except (OSError, ValueError, KeyError):
        return None
    return float(rows[-1]["loss"]) if rows else None


def serve(plan, run_dir: Path, viewer_cfg) -> None:
    """Build the run's system, load its newest checkpoint and serve browsers until stopped."""
    from .library_noise import quiet_known_library_noise
    from .outputs.checkpoint_files import newest_readable
    from .run import build_system, load_weights
    from .viewer import start_view

    quiet_known_library_noise()
    system = build_system(plan)
    system.eval()
    checkpoint = newest_readable(run_dir)
    if checkpoint is None:
        raise ConfigError(f"scorelift view: {run_dir} has no readable checkpoint yet; try again once it has written one.")
    loaded = (checkpoint, checkpoint.stat().st_mtime_ns)
    step = load_weights(system, checkpoint)
    view = start_view(viewer_cfg, f"scorelift: {run_dir.name}")
    view.paused.visible = False  # nothing to pause: this process does not train
    view.set_status(step, logged_loss(run_dir, step))
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    looked = time.monotonic()
    try:
        while not stopping:
            view.serve(system)
            if time.monotonic() - looked > RELOAD_EVERY_S:
                looked = time.monotonic()
                newest = newest_readable(run_dir)
                if newest is not None and (newest, newest.stat().st_mtime_ns) != loaded:
                    loaded = (newest, newest.stat().st_mtime_ns)
                    step = load_weights(system, newest)
                    view.set_status(step, logged_loss(run_dir, step))
                    view.serve(system, everyone=True)
                    log.info("Viewer: loaded step %d from %s", step, newest)
            time.sleep(0.03)
    except KeyboardInterrupt:
        pass
    finally:
        view.close()


def run_view(argv: list[str]) -> int:
    """The ``scorelift view`` entry: one paragraph and exit 2 for bad input, as every command."""
    try:
        return main(argv)
    except ScoreliftError as exc:
        print(f"scorelift: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
