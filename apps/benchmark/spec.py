"""What a benchmark runs: a preset (apps/benchmark/presets/<name>.yaml) expanded into cells.

A preset names the methods (each a list of launch.py overrides), the prompts, the seeds, one step
budget for every method, how often the shapes-world metrics are taken during training, and
overrides common to all cells (the prior, say). A cell is one (method, prompt, seed) run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from scorelift.errors import ConfigError
from scorelift.jobs import Job
from scorelift.resolvers import package_data_path, slugify

PRESET_DIR = Path(package_data_path("scorelift.benchmark", "presets"))
KEYS = {"description", "prompts", "seeds", "steps", "eval_every", "common", "methods", "relative_cost", "unconditional"}


@dataclass
class BenchmarkSpec:
    name: str
    description: str
    prompts: list[str]
    seeds: list[int]
    steps: int  # the same optimizer-step budget for every method
    eval_every: int  # shapes-world metrics every this many steps (0: final metrics only, no curve)
    common: list[str]  # launch.py overrides of every cell
    methods: dict[str, list[str]]  # method name -> its launch.py overrides
    # method -> its cells' expected run time relative to the others (default 1), used only to start
    # the slowest cells first; measured times of finished cells replace it (cells.schedule).
    relative_cost: dict[str, float] = field(default_factory=dict)
    # true: the prior is unconditional, and the prompts are what its cells are scored as ("a cube"):
    # each cell runs with prompt=null evaluate_as=<prompt>.
    unconditional: bool = False


@dataclass(frozen=True)
class Cell:
    method: str
    prompt: str  # the cell's prompt, or (unconditional) what it is scored as
    seed: int
    overrides: tuple[str, ...] = field(compare=False)
    unconditional: bool = False

    def prompt_overrides(self) -> list[str]:
        """How the cell's prompt reaches launch.py: as the prompt, or (unconditional) as the target."""
        if self.unconditional:
            return ["prompt=null", f"evaluate_as={self.prompt}"]
        return [f"prompt={self.prompt}"]

    @property
    def key(self) -> str:
        """The cell's folder below <out>/cells: method/prompt-slug/s<seed>."""
        return f"{self.method}/{slugify(self.prompt)}/s{self.seed}"

    @property
    def job(self) -> Job:
        """The cell as a job of the runner: its folder is ``cells/<key>`` of the benchmark's output."""
        return Job(key=f"cells/{self.key}", overrides=(*self.overrides, *self.prompt_overrides(), f"seed={self.seed}"),
                   label=f"{self.method} | {self.prompt} | seed {self.seed}", fingerprint=self.fingerprint,
                   facts={"method": self.method, "prompt": self.prompt, "seed": self.seed})

    @property
    def fingerprint(self) -> str:
        """Changes when anything that defines the cell's result changes (a finished cell whose
        fingerprint differs is stale and runs again)."""
        parts = [self.method, self.prompt, self.seed, list(self.overrides)] + (["unconditional"] if self.unconditional else [])
        text = json.dumps(parts)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_spec(name_or_path: str) -> BenchmarkSpec:
    """A preset by name (apps/benchmark/presets/<name>.yaml) or by path to a YAML file of the same form."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"Benchmark preset {name_or_path!r} not found (looked for {str(path)!r}). Presets: "
            f"{', '.join(preset_names())}; or pass the path of a YAML file with keys {sorted(KEYS)}."
        )
    raw = yaml.safe_load(path.read_text()) or {}
    return spec_from_mapping(path.stem, raw, f"Benchmark preset {str(path)!r}")


def spec_from_mapping(name: str, raw: dict, where: str) -> BenchmarkSpec:
    """A BenchmarkSpec from a preset's keys (a preset file, or one benchmark of a claim file);
    ``where`` names it in errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {sorted(KEYS)}, got {type(raw).__name__}.")
    unknown = set(raw) - KEYS
    missing = {"prompts", "seeds", "steps", "methods"} - set(raw)
    if unknown or missing:
        raise ConfigError(
            f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
            f"the keys are {sorted(KEYS)}."
        )
    spec = BenchmarkSpec(
        name=name,
        description=str(raw.get("description", "")),
        prompts=[str(p) for p in raw["prompts"]],
        seeds=[int(s) for s in raw["seeds"]],
        steps=int(raw["steps"]),
        eval_every=int(raw.get("eval_every", 0)),
        common=[str(o) for o in raw.get("common", [])],
        methods={str(k): [str(o) for o in v] for k, v in raw["methods"].items()},
        relative_cost={str(k): float(v) for k, v in (raw.get("relative_cost") or {}).items()},
        unconditional=bool(raw.get("unconditional", False)),
    )
    check_spec(spec)
    return spec


def check_spec(spec: BenchmarkSpec) -> None:
    if not spec.prompts or not spec.seeds or not spec.methods:
        raise ConfigError(f"Benchmark {spec.name!r} needs at least one prompt, seed and method.")
    if spec.steps < 1 or spec.eval_every < 0:
        raise ConfigError(
            f"Benchmark {spec.name!r}: steps={spec.steps} must be >= 1 and eval_every={spec.eval_every} >= 0."
        )
    for method, cost in spec.relative_cost.items():
        if method not in spec.methods or not cost > 0:
            raise ConfigError(
                f"Benchmark {spec.name!r}: relative_cost {method}: {cost} must name one of the preset's methods "
                f"({', '.join(spec.methods)}) and give it a positive number (its cells' run time relative to the others)."
            )
    owned = ("prompt=", "evaluate_as=", "seed=", "trainer.max_steps=", "hydra.run.dir=")
    for name, overrides in [("common", spec.common), *spec.methods.items()]:
        for o in overrides:
            if o.startswith(owned):
                raise ConfigError(
                    f"Benchmark {spec.name!r}, {name}: {o!r} is set by the benchmark itself (prompts, "
                    f"seeds, steps and run folders come from the preset's own keys); remove it."
                )


def select(spec: BenchmarkSpec, methods: str | None, seeds: str | None, prompts: str | None) -> BenchmarkSpec:
    """A subset of the preset from comma-separated names / numbers (None keeps all)."""
    if methods:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in names if m not in spec.methods]
        if bad:
            raise ConfigError(f"--methods {bad} not in preset {spec.name!r}; its methods: {', '.join(spec.methods)}.")
        spec.methods = {m: spec.methods[m] for m in names}
        spec.relative_cost = {m: c for m, c in spec.relative_cost.items() if m in spec.methods}
    if seeds:
        try:
            spec.seeds = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds {seeds!r} must be comma-separated integers, e.g. 0,1,2.") from None
    if prompts:
        spec.prompts = [p.strip() for p in prompts.split(",") if p.strip()]
    check_spec(spec)
    return spec


def expand(spec: BenchmarkSpec, extra: list[str] | None = None) -> list[Cell]:
    """Every (method, prompt, seed), ordered seed-major so that a partly finished benchmark has
    every method at the first seeds rather than some methods complete and others absent."""
    cells = []
    for seed in spec.seeds:
        for prompt in spec.prompts:
            for method, overrides in spec.methods.items():
                full = [
                    *spec.common,
                    *overrides,
                    *(extra or []),
                    f"trainer.max_steps={spec.steps}",
                    f"trainer.eval_every={spec.eval_every}",
                ]
                cells.append(Cell(method, prompt, seed, tuple(full), spec.unconditional))
    return cells
