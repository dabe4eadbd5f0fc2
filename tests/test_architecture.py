"""The layering rules of DESIGN.md §3 that a refactor could silently break."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "transferlab"
RUNNER = ("transferlab.runner", "transferlab.experiment")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_eval_interaction_and_rundir_do_not_import_the_runner():
    offenders = []
    for folder in ("eval", "interaction", "rundir"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            bad = [m for m in imported_modules(path) if m.startswith(RUNNER)]
            if bad:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}: {bad}")
    assert not offenders, offenders


def test_reports_load_without_the_runner():
    code = (
        "import sys, transferlab.eval.report, transferlab.eval.merge, transferlab.eval.correlation, "
        "transferlab.interaction.measure, transferlab.rundir\n"
        "print([m for m in sys.modules if m.startswith(('transferlab.runner', 'transferlab.experiment'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_rule_checker_sees_a_violation(tmp_path, monkeypatch):
    fake = tmp_path / "transferlab" / "eval"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from ..runner.experiment import Experiment\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "transferlab")
    assert "transferlab.runner.experiment" in imported_modules(fake / "bad.py")
