"""A job: one scorelift run, named by its folder, defined by its overrides.

Every client of the runner (a sweep of ``scorelift -m``, a benchmark's cells) hands it jobs. A
job's process is ``python -m scorelift <overrides> hydra.run.dir=<out>/<key>/run ...``; its
fingerprint says which run the folder must hold for the job to count as done, so a finished job
whose definition changed is not mistaken for this one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Job:
    """One run of the runner.

    key: the job's folder below the runner's output folder ("3" for job 3 of a sweep,
        "cells/sds/a_red_cube/s0" for a benchmark cell).
    overrides: the run's scorelift overrides (the runner adds the run directory and the stop signals).
    label: how messages name the job ("job 3", "sds | a red cube | seed 0").
    fingerprint: changes when anything that defines the job's result changes (default: a hash of
        the overrides).
    facts: what the client wants in the job's records beside the runner's own fields (a benchmark
        cell's method, prompt and seed), written into job.json and failed.json.
    """

    key: str
    overrides: tuple[str, ...]
    label: str
    fingerprint: str = ""
    facts: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint_of(list(self.overrides)))

    def folder(self, out: Path) -> Path:
        return Path(out) / self.key


def fingerprint_of(parts) -> str:
    """A short hash of ``parts`` (anything JSON can write)."""
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]
