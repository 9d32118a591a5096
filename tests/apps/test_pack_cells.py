"""apps/benchmark/pack.py: what travels of a benchmark folder (records and what reports read) and what stays
(checkpoints, logs), on a folder built here, packed, split and unpacked again."""

from __future__ import annotations

import io
import tarfile

from scorelift.benchmark.cli import main as bench_main
from scorelift.benchmark.pack import main


def test_a_packed_folder_keeps_records_and_results_and_drops_checkpoints(tmp_path):
    out = tmp_path / "out"
    done = out / "cells" / "m" / "a_red_cube" / "s0"
    failed = out / "cells" / "m" / "a_red_cube" / "s1"
    files = {
        "results.csv": b"x", "driver_log.txt": b"x",
        "cells/m/a_red_cube/s0/cell.json": b"{}", "cells/m/a_red_cube/s0/stdout.log": b"x",
        "cells/m/a_red_cube/s0/run/metrics.json": b"{}", "cells/m/a_red_cube/s0/run/eval/view_0.png": b"x",
        "cells/m/a_red_cube/s0/run/turntable.mp4": b"x", "cells/m/a_red_cube/s0/run/checkpoints/last.ckpt": b"x" * 5000,
        "cells/m/a_red_cube/s0/run/logs/metrics.csv": b"x", "cells/m/a_red_cube/s0/run/validation/step_1.png": b"x",
        "cells/m/a_red_cube/s1/failed.json": b"{}", "cells/m/a_red_cube/s1/stdout.log": b"x",
        # a staged run: each stage's results travel too, not its checkpoints or hydra files
        "cells/m/a_red_cube/s0/run/stages.json": b"{}", "cells/m/a_red_cube/s0/run/fine/metrics.json": b"{}",
        "cells/m/a_red_cube/s0/run/fine/eval/view_0.png": b"x", "cells/m/a_red_cube/s0/run/fine/checkpoints/last.ckpt": b"x",
        "cells/m/a_red_cube/s0/run/fine/logs/metrics.csv": b"x", "cells/m/a_red_cube/s0/run/.hydra/config.yaml": b"x",
    }
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    assert done.is_dir() and failed.is_dir()
    assert main([str(out), str(tmp_path / "pack"), "--part-mb", "0.0001"]) == 0  # 104-byte parts: several of them
    parts = sorted((tmp_path / "pack").glob("cells.tar.gz.part*"))
    assert len(parts) > 1
    data = b"".join(p.read_bytes() for p in parts)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = set(tar.getnames())
    assert names == {
        "results.csv", "driver_log.txt", "cells/m/a_red_cube/s0/cell.json", "cells/m/a_red_cube/s0/run/metrics.json",
        "cells/m/a_red_cube/s0/run/eval/view_0.png", "cells/m/a_red_cube/s0/run/turntable.mp4",
        "cells/m/a_red_cube/s1/failed.json", "cells/m/a_red_cube/s1/stdout.log",  # a failed cell keeps its log
        "cells/m/a_red_cube/s0/run/stages.json", "cells/m/a_red_cube/s0/run/fine/metrics.json",
        "cells/m/a_red_cube/s0/run/fine/eval/view_0.png",
    }


def test_pack_is_a_command_of_the_benchmark_and_refuses_a_missing_folder(tmp_path, capsys):
    assert bench_main(["pack", str(tmp_path / "nowhere"), str(tmp_path / "dest")]) == 2
    assert "is not a folder; give a benchmark's --out folder" in capsys.readouterr().err
    assert not (tmp_path / "dest").exists()
