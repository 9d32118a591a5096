"""The typed plan of a run: what start-up decided, handed to building and training.

Start-up (``scorelift.checks.check_inputs``) composes nothing and builds nothing: it parses every
part's config once against its ``Config`` dataclass, runs each part's ``check_config`` once,
checks how the parts fit together, resolves the device and the fast path, asks the prior for its
facts, and returns a ``RunPlan``. Building (``scorelift.run.build_system`` and the system's
``__init__``) takes the plan and parses nothing: a part is ``plan.<kind>.build(...)``, its class
called with its parsed, checked config.

A plan is made from a config alone, or (a stage of a multi-stage system) from a config and the
checkpoint of the stage before it (``init_from``): the plan of each stage is checked before the
first stage trains, so a run that cannot finish says so before it starts.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .prompts import prompt_words

PART_KINDS = ("geometry", "background", "renderer", "guidance", "prior")


@dataclass(frozen=True)
class PartPlan:
    """One part: its kind, its registered name, its class and its parsed, checked config (an
    instance of ``cls.Config``; a plain dict for a part that declares no Config)."""

    kind: str
    name: str
    cls: type
    config: Any

    def build(self, *args, **settings):
        """The part, built from its config: ``cls(config, *args)`` (the prior for a guidance, the
        device for a prior). ``settings`` are start-up's run-wide choices (``fast_path``), passed
        only to a class whose ``__init__`` takes that keyword, so parts written before a setting
        existed keep being built as they were."""
        takes = inspect.signature(self.cls.__init__).parameters
        return self.cls(self.config, *args, **{k: v for k, v in settings.items() if k in takes})


@dataclass(frozen=True)
class PriorFacts:
    """What the prior declares and what its config tells without loading weights.

    space: "latent" (a VAE between renders and the denoiser) or "pixel"; conditioning: "text",
    "class" or "none"; has_unconditional: a null branch for classifier-free guidance exists;
    latent_channels, latent_size (the denoiser's input, for latent renders) and pixel_size (the
    image size its pixels are resized to): None where unknown. vocabulary: the prompts the prior
    declares it knows (a prompt with another word is refused unless allow_unknown_prompt=true)."""

    space: str
    conditioning: str
    has_unconditional: bool
    latent_channels: int | None = None
    latent_size: int | None = None
    pixel_size: int | None = None
    # the prompts the prior declares it knows and their words (None: it declares none)
    vocabulary: tuple[str, ...] | None = None
    vocabulary_words: frozenset[str] | None = None

    @classmethod
    def of(cls, prior_cls: type, inspected: Mapping[str, Any]) -> "PriorFacts":
        """The class's declarations, with what ``prior_cls.inspect`` returned on top (a prior may
        refine its class's declarations from its config, e.g. a pipeline's model_index)."""
        given = {k: inspected[k] for k in ("space", "conditioning", "has_unconditional", "latent_channels",
                                           "latent_size", "pixel_size") if inspected.get(k) is not None}
        base = {"space": prior_cls.space, "conditioning": prior_cls.conditioning,
                "has_unconditional": prior_cls.has_unconditional}
        facts = {**base, **given}
        for key in ("latent_channels", "latent_size", "pixel_size"):
            if facts.get(key) is not None:
                facts[key] = int(facts[key])
        if inspected.get("vocabulary"):
            facts["vocabulary"] = tuple(inspected["vocabulary"])
            facts["vocabulary_words"] = frozenset(inspected.get("vocabulary_words") or
                                                  {w for p in facts["vocabulary"] for w in prompt_words(p)})
        return cls(**facts)


@dataclass(frozen=True)
class InitSource:
    """A checked ``init_from``: the source run's folder, the checkpoint to read (None: a stage
    before this one will write it), and its geometry's and background's classes and parsed configs."""

    run_dir: Path
    checkpoint: Path | None
    geometry_cls: type
    geometry_config: Any
    background_cls: type
    background_config: Any


@dataclass(frozen=True)
class RunPlan:
    """Everything start-up decided for one run (one stage of a multi-stage system).

    config: the composed run config, resolved (what ``config.yaml`` records); mode: train, test or
    export; prompt: the stripped prompt (None: an unconditional prior's run); device and
    fast_path: where the run trains and whether the fast path is on (see ``scorelift.fast_path``);
    system, geometry, background, renderer, guidance, prior: each a ``PartPlan``; losses: name ->
    ``PartPlan`` of each configured loss; data: the camera sampler's parsed config; trainer: the
    trainer section's parsed config; prior_facts: ``PriorFacts``; init_from: the run whose
    geometry starts this one (``InitSource``; None: the parts' own initialisation).
    """

    config: Mapping[str, Any]
    mode: str
    seed: int
    prompt: str | None
    device: torch.device
    fast_path: bool
    deterministic: bool
    system: PartPlan
    geometry: PartPlan
    background: PartPlan
    renderer: PartPlan
    guidance: PartPlan
    prior: PartPlan
    losses: dict[str, PartPlan]
    data: Any
    trainer: Any
    prior_facts: PriorFacts
    init_from: InitSource | None = None
