"""The fast path: one setting (the root key ``fast_path``, in the run's plan) and the questions parts ask of it.

A training step of score distillation on a GPU is launch-bound: the frozen denoiser alone is
hundreds of small kernels, each queued by Python, while the GPU waits. With ``fast_path=true``
(the default) a run on CUDA

- replays the frozen denoiser's forward pass as a CUDA graph (``scorelift.cuda_graphs``): one
  launch instead of hundreds, the same kernels and the same result;
- keeps the prior's networks and their inputs in channels-last layout, so cuDNN runs its NHWC
  fp16 convolutions without converting every activation from NCHW and back;
- draws each step's random numbers on the GPU, from generators seeded by (seed, step, stream)
  exactly as the CPU ones are, instead of drawing on the CPU and copying (parts that declare
  ``draws_on_device``; see ``draw_device``).

On the CPU the fast path samples the voxel grid in 4 batch entries (PyTorch's CPU grid_sample
parallelises over the batch only) and runs the UNet channels-last (oneDNN is faster so).

None of this changes a method: the same denoiser calls, render resolution and VAE passes. The
numbers do change against ``fast_path=false``: on a GPU the draws come from CUDA's generator
instead of the CPU's; on the CPU the grid's gradient is summed in 4 parts and channels-last
convolutions round differently (rounding only). Every run still repeats itself: CPU runs exactly,
GPU runs bit for bit with ``deterministic=true``. ``fast_path=false`` is the switch for debugging
and gives the numbers of scorelift before the fast path.
"""

from __future__ import annotations

import torch


def setting(cfg) -> bool:
    """The run config's ``fast_path`` (true when absent: the config.yaml of a run made before the
    switch existed resumes with it on). Start-up puts it in the run's plan; parts that honour it
    take it as the keyword ``fast_path`` of their ``__init__`` (``scorelift.plan.PartPlan.build``)."""
    return cfg.get("fast_path", True)


def applies(enabled: bool, device: torch.device | str) -> bool:
    """True where the fast path is on and ``device`` is a CUDA device (the GPU parts of it)."""
    return bool(enabled) and torch.device(device).type == "cuda"


def draw_device(part, device: torch.device | str, enabled: bool) -> torch.device:
    """Where the random numbers of ``part`` (a renderer, guidance, ...) are drawn this run: on
    ``device`` when the fast path (``enabled``) applies and the part declares ``draws_on_device =
    True`` (it draws on ``generator.device``); on the CPU otherwise, which is what a part written
    before the fast path expects of the generator it is given."""
    device = torch.device(device)
    if applies(enabled, device) and getattr(part, "draws_on_device", False):
        return device
    return torch.device("cpu")
