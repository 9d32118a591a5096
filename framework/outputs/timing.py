"""Step timing and peak memory of a training run, written to ``timing.json`` when training ends.

The benchmark and the GPU figures read this file: median seconds per optimizer step (the first
``warmup`` steps excluded: they pay for CUDA context, cuDNN autotuning and allocator growth),
wall time, every step's time (``step_seconds``, for other statistics: the GPU speed benchmark takes
the median and spread of steps 20-80), peak memory (CUDA max allocated, and max reserved by the
caching allocator, on a GPU run; the process's max RSS otherwise) and the final loss (mean total
loss of the last ``FINAL_LOSS_STEPS`` steps: one step's loss is a single noisy draw of t and noise).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

FINAL_LOSS_STEPS = 50

def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA max allocated on ``device``, else this process's max RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_max_rss"


def peak_reserved_bytes(device: torch.device) -> int | None:
    """CUDA max reserved (what the caching allocator held from the driver) on ``device``; None on the CPU."""
    return int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None


class StepTimer(pl.Callback):
    """Times every optimizer step (synchronising CUDA so the time is the step's, not its launch's)."""

    def __init__(self, run_dir: Path, warmup: int = 5):
        self.path = Path(run_dir) / "timing.json"
        self.warmup = warmup
        self.step_seconds: list[float] = []
        self.step_losses: list[float] = []
        self._start: float | None = None
        self._fit_start: float | None = None
        self._wall_before = 0.0  # wall time of the earlier parts of a resumed run

    def state_dict(self) -> dict:
        """Saved in every checkpoint, so a resumed run's timing.json and eval_curve.csv cover all
        its steps, not just those since the resume."""
        wall = self._wall_before + (time.perf_counter() - self._fit_start if self._fit_start else 0.0)
        return {"step_seconds": list(self.step_seconds), "step_losses": list(self.step_losses), "wall_s": wall}

    def load_state_dict(self, state: dict) -> None:
        self.step_seconds = [float(x) for x in state.get("step_seconds", [])]
        self.step_losses = [float(x) for x in state.get("step_losses", [])]
        self._wall_before = float(state.get("wall_s", 0.0))

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        if self._start is not None:
            self.step_seconds.append(time.perf_counter() - self._start)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.step_losses.append(float(loss))

    def summary(self, device: torch.device) -> dict:
        timed = self.step_seconds[self.warmup:] or self.step_seconds
        peak, kind = peak_memory_bytes(device)
        return {
            "steps_timed": len(timed),
            "median_s_per_it": statistics.median(timed) if timed else None,
            "mean_s_per_it": statistics.fmean(timed) if timed else None,
            "train_wall_s": self._wall_before + (time.perf_counter() - self._fit_start) if self._fit_start else None,
            "train_steps_s": sum(self.step_seconds),  # the optimizer steps alone, warm-up included
            "peak_memory_bytes": peak,
            "peak_memory_kind": kind,
            "peak_reserved_bytes": peak_reserved_bytes(device),
            "final_loss": statistics.fmean(self.step_losses[-FINAL_LOSS_STEPS:]) if self.step_losses else None,
            "device": str(device),
            "step_seconds": [round(s, 7) for s in self.step_seconds],
        }

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.write_text(json.dumps(self.summary(pl_module.device), indent=2) + "\n")
