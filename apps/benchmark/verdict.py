"""The rule that turns a claim's measurements into a verdict, fixed before any run (docs/claims.md).

Every part of a claim compares arm ``a`` with arm ``b`` (or arm ``a`` with a bound) on one
measure. The differences are paired: d_i = m_a(i) - m_b(i) for each unit i that both arms
finished, a unit being a (prompt, seed) pair, or a prompt for the measures taken across seeds
(diversity). Their mean is the effect; its 95 % interval is the percentile bootstrap over units
(BOOTSTRAP_RESAMPLES resamples with a fixed seed, so a report is reproducible to the digit).

    expect greater:  holds if the interval lies above 0, does not hold if it lies below 0
    expect less:     the mirror image
    expect equal:    holds if the interval lies inside (-margin, margin), does not hold if it
                     lies wholly outside it, on either side
    expect at_most:  one arm: holds if the interval of mean m_a lies below margin, does not hold
                     if it lies above it

and inconclusive otherwise, or with fewer than MIN_UNITS units. A claim holds when all its parts
hold, does not hold when any part does not hold, and is inconclusive otherwise.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
MIN_UNITS = 3
EXPECTATIONS = ("greater", "less", "equal", "at_most")
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass
class PartResult:
    verdict: str
    effect: float  # mean paired difference (or mean value, at_most); nan without units
    low: float  # the 95 % bootstrap interval of the effect
    high: float
    units: int  # paired units that entered
    why: str  # one line: the rule's reading of the interval


def bootstrap_interval(values: list[float], resamples: int = BOOTSTRAP_RESAMPLES, level: float = LEVEL,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling with replacement)."""
    if not values:
        return math.nan, math.nan
    rng = random.Random(seed)
    n = len(values)
    means = sorted(statistics.fmean(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    lo = means[int(math.floor(tail * (resamples - 1)))]
    hi = means[int(math.ceil((1.0 - tail) * (resamples - 1)))]
    return lo, hi


def paired_differences(a: dict, b: dict) -> list[float]:
    """m_a - m_b over the units (keys) both have a finite value for, in sorted key order."""
    keys = sorted(k for k in a.keys() & b.keys() if _finite(a[k]) and _finite(b[k]))
    return [float(a[k]) - float(b[k]) for k in keys]


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def judge(expect: str, a: dict, b: dict | None = None, margin: float = 0.0) -> PartResult:
    """The verdict of one part from the per-unit values of arm a (and b): {unit: value}."""
    if expect not in EXPECTATIONS:
        raise ValueError(f"expect {expect!r} is not one of {', '.join(EXPECTATIONS)}.")
    if expect == "at_most":
        values = [float(v) for _, v in sorted(a.items()) if _finite(v)]
    else:
        values = paired_differences(a, b or {})
    if len(values) < MIN_UNITS:
        return PartResult(INCONCLUSIVE, statistics.fmean(values) if values else math.nan, math.nan, math.nan,
                          len(values), f"only {len(values)} unit(s) finished in both arms (at least {MIN_UNITS} needed)")
    effect = statistics.fmean(values)
    lo, hi = bootstrap_interval(values)
    if expect == "greater":
        verdict = HOLDS if lo > 0 else FAILS if hi < 0 else INCONCLUSIVE
        why = {HOLDS: "interval above 0", FAILS: "interval below 0", INCONCLUSIVE: "interval contains 0"}[verdict]
    elif expect == "less":
        verdict = HOLDS if hi < 0 else FAILS if lo > 0 else INCONCLUSIVE
        why = {HOLDS: "interval below 0", FAILS: "interval above 0", INCONCLUSIVE: "interval contains 0"}[verdict]
    elif expect == "equal":
        verdict = HOLDS if -margin < lo and hi < margin else FAILS if lo >= margin or hi <= -margin else INCONCLUSIVE
        why = {HOLDS: f"interval inside ±{margin:g}", FAILS: f"interval outside ±{margin:g}",
               INCONCLUSIVE: f"interval crosses ±{margin:g}"}[verdict]
    else:  # at_most
        verdict = HOLDS if hi < margin else FAILS if lo > margin else INCONCLUSIVE
        why = {HOLDS: f"interval below {margin:g}", FAILS: f"interval above {margin:g}",
               INCONCLUSIVE: f"interval contains {margin:g}"}[verdict]
    return PartResult(verdict, effect, lo, hi, len(values), why)


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its parts': all hold -> holds; any does not hold -> does not hold."""
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == FAILS for v in verdicts):
        return FAILS
    return INCONCLUSIVE
