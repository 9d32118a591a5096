"""The package's layers and the absence of import cycles, held by import-linter's contracts in
``.importlinter`` (not by a hand-written check): ``lint-imports`` runs on the package as it is
installed (the repository's folders map onto one package, see setup.py, so the tree is laid out
the installed way first), and a contract it reports broken fails here with its report."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]


def package_roots() -> dict[str, str]:
    """setup.py's import prefix -> repository folder map (read, not executed: setup() would run)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PACKAGE_ROOTS")
    return ast.literal_eval(node.value)


def lay_out(target: Path) -> None:
    """Copy every package's .py files to where an install puts them (prefix.sub -> folder/sub)."""
    for prefix, folder in package_roots().items():
        for init in (REPO / folder).rglob("__init__.py"):
            source = init.parent
            relative = source.relative_to(REPO / folder)
            dest = target.joinpath(*prefix.split("."), *relative.parts)
            dest.mkdir(parents=True, exist_ok=True)
            for module in source.glob("*.py"):
                shutil.copy(module, dest / module.name)


def lint_imports(site: Path) -> subprocess.CompletedProcess:
    """import-linter's command line on the laid-out package in ``site``, with the repository's contracts."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                               "sys.exit(lint_imports_command())", "--no-cache", str(REPO / ".importlinter")],
        capture_output=True, text=True, cwd=site.parent, env=dict(os.environ, PYTHONPATH=str(site)),
    )


def test_the_layers_and_acyclic_contracts_are_kept(tmp_path):
    lay_out(tmp_path / "site")
    assert (tmp_path / "site" / "scorelift" / "plugins" / "guidance" / "sds.py").is_file()
    proc = lint_imports(tmp_path / "site")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout, proc.stdout[-2000:]


def test_a_core_module_that_imports_a_part_breaks_the_layers_contract(tmp_path):
    """The contract can fail: the same check on a copy where the registry imports a built-in part."""
    lay_out(tmp_path / "site")
    registry = tmp_path / "site" / "scorelift" / "registry.py"
    registry.write_text(registry.read_text() + "\nfrom scorelift.plugins.guidance import paas  # noqa\n")
    proc = lint_imports(tmp_path / "site")
    assert proc.returncode == 1
    assert "scorelift.registry is not allowed to import scorelift.plugins" in proc.stdout, proc.stdout[-3000:]
