"""The package's layering (docs/architecture.md), kept by import-linter contracts (.importlinter):
imports point only down the layers, and the modules of a package import each other in no cycle.
Function-level imports count (import-linter reads every import statement)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))  # this copy of the package, not the installed one
    return subprocess.run([*LINT, "--config", str(root / ".importlinter"), "--no-cache"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    p = _lint(ROOT)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "2 kept, 0 broken" in p.stdout


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(ROOT / "adapter4rec", tmp_path / "adapter4rec",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _probe():\n    {line}\n",
                    encoding="utf-8")


def test_contracts_catch_an_upward_import(copy):
    # a function-level import from a low layer (data) into a high one (training)
    _append(copy / "adapter4rec" / "data" / "readers.py", "from ..training import trainer")
    p = _lint(copy)
    assert p.returncode != 0 and "Layers: imports point only down BROKEN" in p.stdout, p.stdout[-3000:]


def test_contracts_catch_a_cycle_inside_a_package(copy):
    # registry <-> layernorm: the core of peft depending on one of its plugins
    _append(copy / "adapter4rec" / "peft" / "registry.py", "from . import layernorm")
    p = _lint(copy)
    assert p.returncode != 0 and "No import cycles between the modules of a package BROKEN" in p.stdout, \
        p.stdout[-3000:]


def test_a_new_top_level_module_must_be_placed_in_a_layer(copy):
    (copy / "adapter4rec" / "stray.py").write_text('"""not in any layer"""\n', encoding="utf-8")
    p = _lint(copy)
    assert p.returncode != 0, p.stdout[-3000:]
