"""The claims benchmark: the verdict rule on numbers whose answer is known, the claim files (they
load, their arms start, shared cells run once), and ``scorelift-bench claims --size ci`` end to end
in a real subprocess: it runs, resumes, and its verdicts follow from the cells' own metrics."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from scorelift.benchmark import claim_spec, verdict
from scorelift.errors import ConfigError
from tests.apps.test_benchmark import linked_files, turntables

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the rule
def units(values) -> dict:
    return {("a red cube", i): v for i, v in enumerate(values)}


def test_a_constant_difference_has_a_point_interval_on_its_side():
    r = verdict.judge("greater", units([0.7] * 5), units([0.5] * 5))
    assert r.verdict == verdict.HOLDS and r.units == 5
    assert r.effect == pytest.approx(0.2) and r.low == pytest.approx(0.2) and r.high == pytest.approx(0.2)
    assert verdict.judge("less", units([0.7] * 5), units([0.5] * 5)).verdict == verdict.FAILS


def test_differences_around_zero_are_inconclusive_and_the_interval_is_the_bootstrap_of_the_mean():
    d = [0.3, -0.2, 0.1, -0.25, 0.05, 0.0]
    r = verdict.judge("greater", units(d), units([0.0] * 6))
    assert r.verdict == verdict.INCONCLUSIVE and r.why == "interval contains 0"
    assert r.effect == pytest.approx(statistics.fmean(d))
    assert min(d) <= r.low < r.effect < r.high <= max(d)
    assert (r.low, r.high) == verdict.bootstrap_interval(d)  # fixed seed: the same interval every time


def test_a_clear_negative_effect_does_not_hold():
    r = verdict.judge("greater", units([0.1, 0.2, 0.15, 0.12]), units([0.5, 0.6, 0.55, 0.52]))
    assert r.verdict == verdict.FAILS and r.high < 0


def test_pairs_are_matched_by_unit_and_missing_or_nan_values_drop_out():
    a = {("p", 0): 1.0, ("p", 1): 2.0, ("p", 2): float("nan"), ("p", 3): 4.0}
    b = {("p", 0): 0.5, ("p", 1): 1.0, ("p", 2): 0.0, ("q", 9): 7.0}
    assert verdict.paired_differences(a, b) == [0.5, 1.0]
    r = verdict.judge("greater", a, b)
    assert r.verdict == verdict.INCONCLUSIVE and r.units == 2 and "only 2 unit(s)" in r.why


def test_equal_within_a_margin_and_at_most_a_bound():
    base = [0.80, 0.82, 0.78, 0.81, 0.79]
    assert verdict.judge("equal", units([v + 0.01 for v in base]), units(base), margin=0.05).verdict == verdict.HOLDS
    assert verdict.judge("equal", units([v + 0.2 for v in base]), units(base), margin=0.05).verdict == verdict.FAILS
    assert verdict.judge("equal", units([v + 0.05 for v in base]), units(base), margin=0.05).verdict == verdict.FAILS
    assert verdict.judge("at_most", units([0.01, 0.02, 0.0]), margin=0.05).verdict == verdict.HOLDS
    assert verdict.judge("at_most", units([0.1, 0.12, 0.09]), margin=0.05).verdict == verdict.FAILS


def test_a_claim_holds_only_when_every_part_holds():
    H, F, I = verdict.HOLDS, verdict.FAILS, verdict.INCONCLUSIVE
    assert verdict.combine([H, H]) == H
    assert verdict.combine([H, I]) == I
    assert verdict.combine([H, F, I]) == F
    assert verdict.combine([]) == I


# ---------------------------------------------------------------- the claim files
def test_every_claim_loads_and_shared_cells_run_once():
    names = claim_spec.claim_names()
    assert names == ["sds-cfg", "sjc-paas", "sjc-regularisers", "sjc-schedule", "sjc-vs-dreamfusion", "ssd", "vsd"]
    claims = [claim_spec.load_claim(n) for n in names]
    for c in claims:
        assert c.claim and c.paper and c.translation and c.parts
        for b in c.benchmarks.values():
            assert len(b.seeds) >= 5 and b.steps == 1000, c.name
    plan = claim_spec.plan(claims)
    arm_cells = sum(len(v) for v in plan.arms.values())
    assert len(plan.cells) == 288 < arm_cells == 383
    # SJC's shapes preset at seed 0 on the red cube is the baseline of four claims: one cell.
    baseline = {id(next(c for c in plan.arms[key] if c.prompt == "a red cube" and c.seed == 0))
                for key in [("sjc-paas", "main", "paas"), ("sjc-schedule", "text", "random"),
                            ("sjc-regularisers", "main", "emptiness"), ("sjc-vs-dreamfusion", "main", "sjc-paas")]}
    assert len(baseline) == 1
    assert len({c.key for c in plan.cells}) == len(plan.cells)  # one folder per distinct cell


def test_the_ci_size_keeps_every_part_but_shrinks_the_budget():
    claim = claim_spec.sized(claim_spec.load_claim("sjc-vs-dreamfusion"), "ci")
    for b in claim.benchmarks.values():
        assert b.steps == claim_spec.CI_STEPS and b.seeds == claim_spec.CI_SEEDS and len(b.prompts) == 1
        assert b.eval_every == 2
    assert len(claim.parts) == 2 and len(claim.diagnosis) == 3
    with pytest.raises(ConfigError, match="--size 'huge'"):
        claim_spec.sized(claim, "huge")


def write_claim(tmp_path: Path, part: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "claim: c\npaper: p\nbenchmarks:\n  main:\n    prompts: ['a red cube']\n    seeds: [0, 1, 2]\n    steps: 10\n"
        "    common: ['prior=shapes']\n    methods:\n      x: []\n      y: ['guidance=sds']\n"
        f"parts:\n  - {part}\n")
    return path


@pytest.mark.parametrize("part, message", [
    ("{sentence: s, benchmark: main, a: x, b: z, metric: iou, expect: greater}", r"arm\(s\) \['z'\]; benchmark 'main' has x, y"),
    ("{sentence: s, benchmark: main, a: x, b: y, metric: beauty, expect: greater}", "metric 'beauty' is not a measure"),
    ("{sentence: s, benchmark: other, a: x, b: y, metric: iou, expect: greater}", "benchmark 'other'"),
    ("{sentence: s, benchmark: main, a: x, b: y, metric: iou, expect: bigger}", "expect 'bigger'"),
    ("{sentence: s, benchmark: main, a: x, metric: iou, expect: greater}", "needs arm b"),
    ("{sentence: s, benchmark: main, a: x, b: y, metric: iou, expect: equal}", "positive margin"),
    ("{sentence: s, benchmark: main, a: x, b: y, metric: iou_at_shared_time, expect: greater}", "eval_every > 0"),
])
def test_a_bad_claim_file_is_refused_with_what_is_allowed(tmp_path, part, message):
    with pytest.raises(ConfigError, match=message):
        claim_spec.load_claim(str(write_claim(tmp_path, part)))


def test_every_arm_of_every_claim_passes_the_start_up_checks():
    from scorelift.checks import check_inputs
    from scorelift.compose import compose_config

    plan = claim_spec.plan([claim_spec.load_claim(n) for n in claim_spec.claim_names()])
    first = {}
    for cell in plan.cells:
        first.setdefault(cell.method, cell)
    for method, cell in first.items():
        cfg = compose_config([*cell.overrides, *cell.prompt_overrides(), f"seed={cell.seed}"], with_hydra=False)
        check_inputs(cfg)
        assert cfg.trainer.max_steps == 1000, method


# ---------------------------------------------------------------- end to end
def claims_command(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scorelift.benchmark", "claims", "--out", str(out), "--size", "ci",
                           "--claims", "sjc-paas", "--workers", "2", *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=900)


def test_claims_ci_runs_resumes_and_judges_from_the_cells_metrics(tmp_path):
    out = tmp_path / "claims"
    first = claims_command(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "running 6 with 2 worker(s)" in first.stdout

    report = json.loads((out / "claims.json").read_text())
    (claim,) = report["claims"]
    assert claim["name"] == "sjc-paas" and claim["cells"] == 6 and claim["finished"] == 6
    for part in claim["parts"]:
        # recompute the part from the cells' own metrics.json: paired by seed, a - b
        values = {}
        for arm in ("paas", "naive"):
            for seed in claim_spec.CI_SEEDS:
                metrics = json.loads((out / "cells" / f"sjc-paas.main.{arm}" / "a_red_cube" / f"s{seed}" / "run"
                                      / "metrics.json").read_text())
                values[(arm, seed)] = metrics[part["metric"]]
        d = [values[("paas", s)] - values[("naive", s)] for s in claim_spec.CI_SEEDS]
        assert part["units"] == 3 and part["effect"] == pytest.approx(statistics.fmean(d))
        assert part["low"] <= part["effect"] <= part["high"] and not math.isnan(part["low"])
        assert part["verdict"] == verdict.judge("greater", part["values_a"], part["values_b"]).verdict
    assert claim["verdict"] == verdict.combine([p["verdict"] for p in claim["parts"]])

    md = (out / "claims.md").read_text()
    assert "## sjc-paas: " + claim["verdict"] in md and "Perturb-and-Average Scoring fixes it" in md
    linked = {p.relative_to(out).as_posix() for p in linked_files(out / "claims.html")}  # nothing embedded, all small
    assert "claim_sjc-paas.png" in linked
    assert len(turntables(out / "claims.html")) == 2  # each arm's representative cell
    assert sum(p.startswith("claims_files/sjc-paas.main.") and p.endswith(".webp") for p in linked) == 2

    again = claims_command(out)  # resume: nothing runs again, the same verdicts
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 of 6 jobs already finished" in again.stdout
    assert json.loads((out / "claims.json").read_text())["claims"] == report["claims"]


def test_an_unknown_claim_is_refused_before_anything_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scorelift.benchmark", "claims", "--out", str(tmp_path / "o"),
                             "--claims", "sjc-paas,beauty"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "--claims 'sjc-paas,beauty': ['beauty'] not a claim; the claims: sds-cfg, sjc-paas" in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_claim_file_of_ones_own_is_chosen_by_its_path(tmp_path):
    from scorelift.benchmark.claims_cli import select_claims

    path = write_claim(tmp_path, "{sentence: s, benchmark: main, a: x, b: y, metric: iou, expect: greater}")
    assert select_claims(f"sjc-paas,{path}") == ["sjc-paas", str(path)]
    assert claim_spec.load_claim(str(path)).name == "mine"
    with pytest.raises(ConfigError, match=r"not a claim; .* or the path of a claim file"):
        select_claims(str(tmp_path / "missing.yaml"))


def test_a_shared_cells_folder_does_not_depend_on_which_claims_are_run_or_their_order():
    """With the catalogue of every claim, the SJC preset's red-cube cell, which four claims share, has
    the folder of the catalogue's first arm that runs it, whether sjc-schedule runs alone, first, or
    not at all; without it, the first chosen claim names it."""
    catalogue = [claim_spec.load_claim(n) for n in claim_spec.claim_names()]
    def baseline_key(names, with_catalogue=True):
        plan = claim_spec.plan([claim_spec.load_claim(n) for n in names], None, catalogue if with_catalogue else None)
        cells = plan.arms[("sjc-schedule", "text", "random")] if "sjc-schedule" in names else plan.arms[("sjc-paas", "main", "paas")]
        return next(c for c in cells if c.prompt == "a red cube" and c.seed == 0).key, plan

    keys = {baseline_key(names)[0] for names in (["sjc-schedule"], ["sjc-schedule", "sjc-paas"],
                                                 ["sjc-paas", "sjc-schedule"], ["sjc-paas"])}
    assert len(keys) == 1 and next(iter(keys)).startswith("sjc-paas.main.paas/")
    assert baseline_key(["sjc-schedule", "sjc-paas"], with_catalogue=False)[0].startswith("sjc-schedule.text.random/")
    _, alone = baseline_key(["sjc-schedule"])  # the catalogue names cells; only the chosen claim's run
    assert len(alone.cells) == len({id(c) for cells in alone.arms.values() for c in cells})
    assert {k[0] for k in alone.arms} == {"sjc-schedule"}
