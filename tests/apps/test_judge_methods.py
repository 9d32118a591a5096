"""apps/benchmark/judge.py: two methods of a results.csv judged by the claims' rule, on tables
whose verdicts and effects are known by construction."""

from __future__ import annotations

import csv

import pytest

from scorelift.benchmark.judge import main

COLUMNS = ["method", "prompt", "seed", "status", "iou", "colour_error"]


def write_results(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(dict(zip(COLUMNS, r)) for r in rows)
    return path


def test_a_constant_gain_holds_with_a_point_interval_and_unfinished_rows_drop_out(tmp_path, capsys):
    rows = [("random", p, s, "ok", 0.5 + 0.1 * s + 0.25, 0.1) for p in ("a red cube", "a blue sphere") for s in (0, 1)]
    rows += [("annealed", p, s, "ok", 0.5 + 0.1 * s, 0.1) for p in ("a red cube", "a blue sphere") for s in (0, 1)]
    rows += [("random", "a red cube", 2, "failed", 0.0, 1.0), ("annealed", "a red cube", 2, "ok", 0.9, 0.1)]
    path = write_results(tmp_path / "results.csv", rows)
    assert main([str(path), "random", "annealed"]) == 0
    out = capsys.readouterr().out
    assert "random vs annealed on iou (expected A > B): holds; A - B = 0.250 [0.250, 0.250] over 4 paired" in out


def test_the_expected_sign_and_the_metric_are_chosen(tmp_path, capsys):
    rows = [("sds", "p", s, "ok", 0.8, e) for s, e in ((0, 0.30), (1, 0.32), (2, 0.31))]
    rows += [("ssd", "p", s, "ok", 0.8, e) for s, e in ((0, 0.10), (1, 0.33), (2, 0.12))]
    path = write_results(tmp_path / "results.csv", rows)
    assert main([str(path), "ssd", "sds", "--metric", "colour_error", "--expect", "less"]) == 0
    out = capsys.readouterr().out
    # differences -0.20, +0.01, -0.19: the bootstrap of their mean reaches above 0
    assert "ssd vs sds on colour_error (expected A < B): inconclusive; A - B = -0.127" in out
    assert "over 3 paired (prompt, seed) units; interval contains 0" in out


@pytest.mark.parametrize("args, words", [
    (["random", "sgd"], "method(s) sgd not in"),
    (["random", "annealed", "--metric", "beauty"], "--metric 'beauty' not in"),
])
def test_an_unknown_method_or_column_exits_2_naming_what_there_is(tmp_path, capsys, args, words):
    path = write_results(tmp_path / "results.csv", [("random", "p", 0, "ok", 0.5, 0.1), ("annealed", "p", 0, "ok", 0.4, 0.1)])
    assert main([str(path), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "its methods: annealed, random" in err and "columns: method, prompt, seed" in err


def test_rows_of_another_benchmark_join_and_a_cell_given_twice_is_refused(tmp_path, capsys):
    new = write_results(tmp_path / "new.csv", [("sjc-sds", "p", s, "ok", 0.6 + 0.01 * s, 0.1) for s in (0, 1, 2)])
    old = write_results(tmp_path / "old.csv", [("sjc-paas", "p", s, "ok", 0.5 + 0.01 * s, 0.1) for s in (0, 1, 2)])
    assert main([str(new), "sjc-sds", "sjc-paas", "--also", str(old)]) == 0
    assert "holds; A - B = 0.100 [0.100, 0.100] over 3 paired" in capsys.readouterr().out
    assert main([str(new), "sjc-sds", "sjc-paas", "--also", str(old), "--also", str(old)]) == 2
    assert "3 (method, prompt, seed) row(s) appear in more than one place, such as ('sjc-paas', 'p', '0')" in \
        capsys.readouterr().err
