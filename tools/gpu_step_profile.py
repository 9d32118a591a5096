"""Profile of a method's training step on a GPU: GPU busy time, kernels, launch calls, host syncs.

    python tools/gpu_step_profile.py --out sjc.json -- system=sjc guidance=paas prior=stable-diffusion prior.model=/tmp/sd21

Runs a real training run in this process (``scorelift.run.run``) and records steps ``--start``
.. ``--start + --steps - 1`` with torch.profiler (CPU and CUDA activity). Per step it reports:
the GPU busy time (the union of kernel intervals, so overlapping kernels count once), the number
of kernels run, the CUDA launch calls the host made (kernel launches, graph launches, async copies
and memsets) and the host synchronisations (stream, device and event syncs, blocking copies). The
step timer itself synchronises twice per step (to time the step, not its launch): those two are
included in ``host_syncs``. Prints a summary and writes ``--out`` (JSON, with the top kernels).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytorch_lightning as pl
import torch

LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                "cudaMemcpyAsync", "cudaMemsetAsync")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaStreamWaitEvent_sync")


def busy_time_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals (microseconds)."""
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


class ProfileSteps(pl.Callback):
    def __init__(self, start: int, steps: int):
        self.start, self.steps, self.prof, self.result = start, steps, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.start and self.prof is None:
            torch.cuda.synchronize()
            self.prof = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
            self.prof.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.prof is not None and self.result is None and trainer.global_step >= self.start + self.steps:
            torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            self.result = summarise(self.prof, self.steps)


def is_gpu_work(evt) -> bool:
    """A kernel, copy or memset on the GPU. Not a user annotation: a ``record_function`` range
    (Lightning wraps the whole training step in ``Optimizer.step#...``) is mirrored on the GPU
    timeline as one event spanning every kernel inside it, and counting it would make the whole
    span look busy."""
    return evt.device_type == torch.autograd.DeviceType.CUDA and not getattr(evt, "is_user_annotation", False)


def summarise(prof, steps: int) -> dict:
    kernels, calls, names = [], Counter(), Counter()
    kernel_time = Counter()
    for evt in prof.events():
        if is_gpu_work(evt):
            start = evt.time_range.start
            kernels.append((start, evt.time_range.end))
            names[evt.name] += 1
            kernel_time[evt.name] += evt.time_range.elapsed_us()
        elif evt.device_type != torch.autograd.DeviceType.CUDA:  # host side: launches, syncs
            calls[evt.name] += 1
    launches = sum(calls[n] for n in LAUNCH_CALLS)
    syncs = sum(calls[n] for n in SYNC_CALLS)
    top = [{"kernel": n[:120], "calls_per_step": names[n] / steps, "us_per_step": t / steps}
           for n, t in kernel_time.most_common(12)]
    return {
        "steps_profiled": steps,
        "gpu_busy_ms_per_step": busy_time_us(kernels) / 1e3 / steps,
        "kernels_per_step": len(kernels) / steps,
        "launch_calls_per_step": launches / steps,
        "graph_launches_per_step": calls["cudaGraphLaunch"] / steps,
        "host_syncs_per_step": syncs / steps,
        "sync_calls": {n: calls[n] / steps for n in SYNC_CALLS if calls[n]},
        "top_kernels": top,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--start", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import scorelift.run as run_module
    from scorelift.compose import compose_config

    probe = ProfileSteps(args.start, args.steps)
    original = run_module.make_trainer

    def with_profiler(*a, **kw):
        trainer = original(*a, **kw)
        trainer.callbacks.append(probe)
        return trainer

    run_module.make_trainer = with_profiler
    steps = args.start + args.steps + 1
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(args.overrides + [f"trainer.max_steps={steps}", "trainer.progress_bar=false",
                                               "system.views.n_frames=4", "evaluators=[]"], with_hydra=False)
        run_module.run(cfg, Path(tmp) / "run")
    if probe.result is None:
        sys.exit("the run ended before the profiled steps")
    result = {"overrides": args.overrides, **probe.result}
    Path(args.out).write_text(json.dumps(result, indent=2))
    r = result
    print(f"{' '.join(args.overrides)}: GPU busy {r['gpu_busy_ms_per_step']:.1f} ms/step, {r['kernels_per_step']:.0f} kernels, "
          f"{r['launch_calls_per_step']:.0f} launch calls ({r['graph_launches_per_step']:.0f} graph launches), "
          f"{r['host_syncs_per_step']:.1f} host syncs per step")


if __name__ == "__main__":
    main()
