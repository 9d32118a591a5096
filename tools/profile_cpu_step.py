"""Where a training step's time goes on the CPU, and how busy the cores are:

    python tools/profile_cpu_step.py [--steps 40] [--skip 10] [overrides ...]   (default: the main job)

Builds the run's system as ``launch.py`` does (composed config, start-up check, parts), then runs
its training steps by hand (the system's own ``training_step``, backward, optimizer step) and
times, per step, the parts that the step is made of: rendering (forward), the prior's denoiser
(every ``predict_eps`` call, the UNet forward), the rest of the guidance and the losses, the
backward pass, and the optimizer step. Each part's wall time is the sum of its calls, and the CPU
time of the process over the same stretch says how many cores were busy. Prints one table of
medians over the steps after the first ``skip`` (warm-up), as JSON and as text.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timed:
    """Wraps a callable: adds its wall time to ``store[name]`` (nested calls counted once)."""

    def __init__(self, fn, name: str, store: dict):
        self.fn, self.name, self.store, self.depth = fn, name, store, 0

    def __call__(self, *args, **kwargs):
        self.depth += 1
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.store[self.name] = self.store.get(self.name, 0.0) + time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=10)
    ap.add_argument("overrides", nargs="*", default=["system=sjc", "guidance=paas"])
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf

    from scorelift.checks import check_inputs
    from scorelift.compose import compose_config
    from scorelift.run import build_system

    cfg = compose_config([*args.overrides, "evaluators=[]"])
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    plan = check_inputs(cfg, None)
    torch.manual_seed(int(cfg.seed))
    system = build_system(plan)
    optimizer = system.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    optimizer = optimizer[0] if isinstance(optimizer, (list, tuple)) else optimizer
    system.log = lambda *a, **k: None  # no Lightning trainer here: logging is not part of the step's work
    system.train()

    parts: dict[str, float] = {}
    system.render = Timed(system.render, "render forward", parts)
    prior = system.prior
    prior.predict_eps = Timed(prior.predict_eps, "prior denoiser (UNet forward)", parts)
    rows = []
    for step in range(args.steps):
        parts.clear()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        t = time.perf_counter()
        loss = step_with_global(system, step)
        parts["step forward (all)"] = time.perf_counter() - t
        t = time.perf_counter()
        loss.backward()
        system.on_after_backward()
        parts["backward"] = time.perf_counter() - t
        t = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        parts["optimizer step"] = time.perf_counter() - t
        wall = time.perf_counter() - wall0
        parts["step"] = wall
        parts["cores busy"] = (cpu_seconds() - cpu0) / wall
        rows.append(dict(parts))
    kept = rows[args.skip:]
    summary = {k: statistics.median(r[k] for r in kept) for k in kept[0]}
    other = summary["step forward (all)"] - summary.get("render forward", 0) - summary.get(
        "prior denoiser (UNet forward)", 0)
    summary["guidance and losses, not the denoiser"] = other
    print(json.dumps({"overrides": args.overrides, "threads": torch.get_num_threads(), "steps": len(kept),
                      "median_s": summary}, indent=1))
    step = summary["step"]
    for name in ("render forward", "prior denoiser (UNet forward)", "guidance and losses, not the denoiser",
                 "backward", "optimizer step"):
        if name in summary:
            print(f"{name:<40} {summary[name] * 1000:8.1f} ms  {100 * summary[name] / step:5.1f} %")
    print(f"{'step':<40} {step * 1000:8.1f} ms   cores busy {summary['cores busy']:.2f} of {torch.get_num_threads()}")


def step_with_global(system, step: int):
    """The system's training_step at ``step`` (its global_step is Lightning's; set it here)."""
    type(system).global_step = property(lambda self: step)
    return system.training_step(None, step)


if __name__ == "__main__":
    sys.exit(main())
