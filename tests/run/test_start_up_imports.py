"""``--help``, ``--list`` and a refused command line answer without importing the heavy libraries
(Lightning and what it pulls in, diffusers, transformers): on a 2-core machine those imports are
seconds that a user who mistyped a value should not wait for. Each case runs ``scorelift``'s
``main`` in a fresh interpreter and reports its exit code and which heavy modules got imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("pytorch_lightning", "lightning_fabric", "torchmetrics", "diffusers", "transformers", "skimage", "trimesh",
         "imageio")
DRIVER = f"""
import contextlib, io, json, sys
from scorelift.launcher import main
out = io.StringIO()
try:
    with contextlib.redirect_stdout(out):
        code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules], "stdout": out.getvalue()}}))
"""

CASES = {
    "help": (["--help"], 0),
    "list": (["--list"], 0),
    "unknown-option": (["system=sjc", "guidance=nope"], 2),  # refused while composing
    "bad-seed": (["system=sjc", "guidance=paas", "seed=-1"], 2),  # refused by the start-up check
    "bad-steps-staged": (["system=magic3d", "guidance=sds", "trainer.max_steps=-3"], 2),  # a staged system's check
    "missing-resume": (["system=sjc", "guidance=paas", "resume=/nonexistent/run"], 2),
}


@pytest.mark.parametrize("cid", sorted(CASES))
def test_start_up_answers_without_the_heavy_libraries(cid, tmp_path):
    args, code = CASES[cid]
    if code == 2:  # a run would write under output_root: a refused one must not
        args = [*args, f"output_root={tmp_path / 'out'}"]
    proc = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == code, proc.stderr[-2000:]
    assert result["heavy"] == [], result["heavy"]
    if code == 2:
        assert proc.stderr.startswith("scorelift: error: "), proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    if cid == "bad-steps-staged":  # (it once split -3 steps into 1 + 1 and trained the first stage)
        assert "trainer.max_steps=-3" in proc.stderr and "at least one step per stage" in proc.stderr
    if cid == "list":
        assert "sjc" in result["stdout"] and "score-distillation" in result["stdout"]
