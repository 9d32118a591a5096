"""The papers' claims as experiments: apps/benchmark/claims/<name>.yaml, one file per claim.

A claim file holds the claim's sentence, where the paper makes it, how its budgets and scales were
translated to the shapes world (``translation``), one or more benchmarks (each with a preset's
keys: prompts, seeds, steps, common, methods; the methods are the claim's arms) and its parts: each
part compares arm ``a`` with arm ``b`` of one benchmark on one measure, with the expected sign
(scorelift.benchmark.verdict). ``diagnosis`` parts are measured the same way but are findings,
not part of the verdict.

Planning puts every claim's cells in one pool: two arms of any claims that would run the same
launch.py overrides on the same prompt and seed are one cell, run once (the SJC preset on the
shapes prior, say, is the baseline of four claims).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import spec as spec_mod
from .spec import BenchmarkSpec, Cell
from .verdict import EXPECTATIONS
from scorelift.errors import ConfigError
from scorelift.resolvers import package_data_path

CLAIM_DIR = Path(package_data_path("scorelift.benchmark", "claims"))
CLAIM_KEYS = {"claim", "paper", "translation", "benchmarks", "parts", "diagnosis"}
PART_KEYS = {"sentence", "benchmark", "a", "b", "metric", "expect", "margin"}
# Measures of one cell (metrics.json of its run), and measures across the seeds of one prompt.
CELL_MEASURES = ("iou", "colour_error", "identification", "floaters", "oversaturation", "sharpness_ratio",
                 "centring_offset", "disconnected_mass", "iou_at_shared_time")
PROMPT_MEASURES = ("geometry_spread", "colour_spread")
SIZES = ("full", "ci")
CI_STEPS, CI_SEEDS = 4, [0, 1, 2]  # --size ci: enough units (3) for the rule to give a verdict


@dataclass
class Part:
    sentence: str
    benchmark: str
    a: str
    metric: str
    expect: str
    b: str | None = None
    margin: float = 0.0


@dataclass
class Claim:
    name: str
    claim: str  # the sentence the paper claims
    paper: str  # where
    translation: str  # budgets and scales on the shapes world, and why
    benchmarks: dict[str, BenchmarkSpec]
    parts: list[Part]
    diagnosis: list[Part] = field(default_factory=list)


def claim_names() -> list[str]:
    return sorted(p.stem for p in CLAIM_DIR.glob("*.yaml"))


def load_claim(name: str) -> Claim:
    """A claim by name (apps/benchmark/claims/<name>.yaml) or by the path of a YAML file of that form."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else CLAIM_DIR / f"{name}.yaml"
    name = path.stem
    if not path.is_file():
        raise ConfigError(f"Claim {name!r} not found (looked for {str(path)!r}). Claims: {', '.join(claim_names())}.")
    raw = yaml.safe_load(path.read_text()) or {}
    where = f"Claim file {str(path)!r}"
    unknown, missing = set(raw) - CLAIM_KEYS, {"claim", "paper", "benchmarks", "parts"} - set(raw)
    if unknown or missing:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; the keys are "
                          f"{sorted(CLAIM_KEYS)}.")
    benchmarks = {str(b): spec_mod.spec_from_mapping(f"{name}/{b}", body, f"{where}, benchmark {b!r}")
                  for b, body in raw["benchmarks"].items()}
    claim = Claim(name=name, claim=str(raw["claim"]), paper=str(raw["paper"]), translation=str(raw.get("translation", "")),
                  benchmarks=benchmarks, parts=[_part(p, where) for p in raw["parts"]],
                  diagnosis=[_part(p, where) for p in raw.get("diagnosis") or []])
    for part in claim.parts + claim.diagnosis:
        check_part(claim, part, where)
    return claim


def _part(raw: dict, where: str) -> Part:
    unknown = set(raw) - PART_KEYS
    missing = {"sentence", "benchmark", "a", "metric", "expect"} - set(raw)
    if unknown or missing:
        raise ConfigError(f"{where}: a part has unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; a "
                          f"part's keys are {sorted(PART_KEYS)}.")
    return Part(sentence=str(raw["sentence"]), benchmark=str(raw["benchmark"]), a=str(raw["a"]), metric=str(raw["metric"]),
                expect=str(raw["expect"]), b=None if raw.get("b") is None else str(raw["b"]), margin=float(raw.get("margin", 0.0)))


def check_part(claim: Claim, part: Part, where: str) -> None:
    bench = claim.benchmarks.get(part.benchmark)
    if bench is None:
        raise ConfigError(f"{where}: part {part.sentence!r} names benchmark {part.benchmark!r}; the claim's benchmarks: "
                          f"{', '.join(claim.benchmarks)}.")
    arms = [part.a] + ([part.b] if part.b is not None else [])
    bad = [a for a in arms if a not in bench.methods]
    if bad:
        raise ConfigError(f"{where}: part {part.sentence!r} names arm(s) {bad}; benchmark {part.benchmark!r} has "
                          f"{', '.join(bench.methods)}.")
    if part.metric not in CELL_MEASURES + PROMPT_MEASURES:
        raise ConfigError(f"{where}: part {part.sentence!r}: metric {part.metric!r} is not a measure; the measures: "
                          f"{', '.join(CELL_MEASURES + PROMPT_MEASURES)}.")
    if part.expect not in EXPECTATIONS:
        raise ConfigError(f"{where}: part {part.sentence!r}: expect {part.expect!r}; use one of {', '.join(EXPECTATIONS)}.")
    if (part.expect == "at_most") != (part.b is None):
        raise ConfigError(f"{where}: part {part.sentence!r}: expect {part.expect!r} "
                          + ("compares one arm with a bound and takes no b." if part.b else "needs arm b."))
    if part.expect == "equal" and not part.margin > 0:
        raise ConfigError(f"{where}: part {part.sentence!r}: expect equal needs a positive margin.")
    if part.metric == "iou_at_shared_time" and bench.eval_every <= 0:
        raise ConfigError(f"{where}: part {part.sentence!r} reads the evaluation curve (iou_at_shared_time): benchmark "
                          f"{part.benchmark!r} needs eval_every > 0.")


def sized(claim: Claim, size: str) -> Claim:
    """The claim at a budget: ``full`` as written; ``ci`` CI_STEPS steps, seeds CI_SEEDS, the first
    prompt (a check that every part runs end to end, whose numbers mean nothing)."""
    if size not in SIZES:
        raise ConfigError(f"--size {size!r}: use one of {', '.join(SIZES)}.")
    if size == "full":
        return claim
    small = {
        b: dataclasses.replace(s, steps=CI_STEPS, seeds=list(CI_SEEDS), prompts=s.prompts[:1],
                               eval_every=min(s.eval_every, 2))
        for b, s in claim.benchmarks.items()
    }
    return dataclasses.replace(claim, benchmarks=small)


@dataclass
class Plan:
    cells: list[Cell]  # each distinct run once
    arms: dict[tuple[str, str, str], list[Cell]]  # (claim, benchmark, arm) -> its cells, in the pool
    relative_cost: dict[str, float]


def _arm_cells(claim: Claim, extra: list[str] | None):
    """(benchmark name, benchmark, arm, cell, identity) of every cell of every arm of ``claim``. The
    identity sorts the overrides: Hydra applies group choices before values whatever their order,
    so two arms listing the same overrides in another order run the same thing."""
    for bname, bench in claim.benchmarks.items():
        named = dataclasses.replace(bench, methods={f"{claim.name}.{bname}.{arm}": o for arm, o in bench.methods.items()})
        for cell in spec_mod.expand(named, extra):
            identity = (cell.prompt, cell.seed, cell.unconditional, tuple(sorted(cell.overrides)))
            yield bname, bench, cell.method.split(".", 2)[2], cell, identity


def plan(claims: list[Claim], extra: list[str] | None = None, catalogue: list[Claim] | None = None) -> Plan:
    """The pool of distinct cells of ``claims``. A cell is named after the first arm that runs it
    (``<claim>.<benchmark>.<arm>``) in ``catalogue`` (default: ``claims``): with the catalogue of
    every claim, a cell that several claims share has one folder whichever claims are chosen and
    in whatever order, so a run of some claims and a later run or report of others find it."""
    pool: dict[tuple, Cell] = {}
    for claim in catalogue or []:
        for *_, cell, identity in _arm_cells(claim, extra):
            pool.setdefault(identity, cell)
    arms: dict[tuple[str, str, str], list[Cell]] = {}
    cost: dict[str, float] = {}
    for claim in claims:
        for bname, bench, arm, cell, identity in _arm_cells(claim, extra):
            canonical = pool.setdefault(identity, cell)
            arms.setdefault((claim.name, bname, arm), []).append(canonical)
            if arm in bench.relative_cost:
                cost[canonical.method] = bench.relative_cost[arm]
    used = {id(cell) for cells in arms.values() for cell in cells}
    return Plan(cells=[c for c in pool.values() if id(c) in used], arms=arms, relative_cost=cost)
