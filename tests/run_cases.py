"""Run launch.py as ``__main__`` once per case of a JSON list, all in this one process, and write
the results to a JSON file: ``python tests/run_cases.py CASES.json RESULTS.json LAUNCH.py``.

launch.py starts in about 7 s (imports), so tests with many command lines run them here through
runpy, the same code path as ``python launch.py``. A case is ``{"id", "args", "watch"?}``: the
result holds the exit code, stdout, stderr and, with ``watch``, SHA-256 digests of every file
below that folder before and after. A case ``{"id", "probe"}`` instead runs the Python code in
``probe`` in this process (after the cases before it) and records the dict it leaves in
``result``: what, e.g., the registry of a process that ran those command lines holds.
"""

import contextlib
import hashlib
import io
import json
import runpy
import sys
from pathlib import Path


def snapshot(folder):
    if not folder:
        return None
    root = Path(folder)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_case(case: dict, launch: str) -> dict:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    before = snapshot(case.get("watch"))
    sys.argv = [launch, *case["args"]]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(launch, run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001  (recorded for the test to show)
            code = "exception"
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "before": before, "after": snapshot(case.get("watch"))}


def main(cases_file: str, out_file: str, launch: str) -> None:
    results = {}
    for case in json.loads(Path(cases_file).read_text()):
        if "probe" in case:
            scope: dict = {}
            exec(case["probe"], scope)
            results[case["id"]] = scope["result"]
        else:
            results[case["id"]] = run_case(case, launch)
    Path(out_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:4])
