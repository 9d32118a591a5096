"""The host synchronisations of one training step, found on the CPU: the calls that, on a GPU,
make the host wait for the device (a tensor read as a Python number or truth value, an output
whose size depends on the data), which keep a step from being captured as one CUDA graph.

    python tools/count_host_syncs.py [--steps 3] [overrides ...]      (default: the main job)

Runs the run's system for a few steps by hand (as tools/profile_cpu_step.py does) under a
dispatch mode that records every such operator with the scorelift line that called it, and prints
them per step, most frequent first. On the CPU nothing waits, but the same calls are made: the
list is what the capture work has to remove or move off the step. (On the CPU it also lists
reads of tensors that a GPU run keeps on the host, such as the sampled cameras' angles.)
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Operators that read device data on the host (the scalar reads) or size their output by it.
SYNCING = {
    "aten._local_scalar_dense": "a tensor read as a Python number or truth value (.item(), bool(), float())",
    "aten.nonzero": "an output sized by the data (nonzero / boolean indexing)",
    "aten.masked_select": "an output sized by the data (masked_select)",
    "aten._unique2": "an output sized by the data (unique)",
    "aten.unique_consecutive": "an output sized by the data (unique_consecutive)",
    "aten.unique_dim": "an output sized by the data (unique along a dim)",
    "aten.repeat_interleave": "an output sized by the data (repeat_interleave without output_size)",
    "aten.bincount": "an output sized by the data (bincount without minlength covering it)",
}


def caller() -> str:
    """The innermost frame in scorelift's own code (or the tool) that led to the call."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        path = frame.filename
        if ("/framework/" in path or "/plugins/" in path or "/apps/" in path) and "count_host_syncs" not in path:
            rel = path.split("/framework/")[-1] if "/framework/" in path else path.split("/plugins/")[-1]
            return f"{rel}:{frame.lineno} ({frame.line.strip()[:70] if frame.line else ''})"
    outer = [f for f in traceback.extract_stack()[:-3] if "count_host_syncs" not in f.filename and "torch/utils/_python_dispatch" not in f.filename]
    last = outer[-1] if outer else None
    return f"outside scorelift: {'/'.join(last.filename.split('/')[-2:])}:{last.lineno}" if last else "outside scorelift"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("overrides", nargs="*", default=["system=sjc", "guidance=paas"])
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf
    from torch.utils._python_dispatch import TorchDispatchMode

    from scorelift.checks import check_inputs
    from scorelift.compose import compose_config
    from scorelift.run import build_system

    found: collections.Counter = collections.Counter()

    class Syncs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket).replace("aten::", "aten.")
            if name in SYNCING and not (name == "aten.repeat_interleave" and (kwargs or {}).get("output_size")):
                found[(name, caller())] += 1
            return func(*args, **(kwargs or {}))

    from scorelift.library_noise import quiet_known_library_noise

    quiet_known_library_noise()
    cfg = compose_config([*args.overrides, "evaluators=[]"])
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    plan = check_inputs(cfg, None)
    system = build_system(plan)
    optimizer = system.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    optimizer = optimizer[0] if isinstance(optimizer, (list, tuple)) else optimizer
    system.log = lambda *a, **k: None  # Lightning's logging is outside the step's own work
    system.train()
    for step in range(args.steps + 1):  # step 0 also checks the plugins' outputs once: not counted
        type(system).global_step = property(lambda self, s=step: s)
        if step == 1:
            found.clear()
        with Syncs():
            loss = system.training_step(None, step)
            loss.backward()
            system.on_after_backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    per_step = {k: v / args.steps for k, v in found.items()}
    print(f"{' '.join(args.overrides)}: {sum(per_step.values()):.1f} host syncs a step")
    for (name, where), n in sorted(per_step.items(), key=lambda kv: -kv[1]):
        print(f"  {n:5.1f}  {name:<26} {where}")


if __name__ == "__main__":
    sys.exit(main())
