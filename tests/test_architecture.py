"""The house keeps its shape: import-linter's layer contracts (pyproject.toml) and ruff, run by the test suite
so that CI (which runs exactly the README's test command) enforces them."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    exe = BIN / name
    if not exe.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
        return found
    return str(exe)


def _staged_tree(tmp_path: Path) -> Path:
    """The package as it installs (api/ → sigma/api, workers/ → sigma/workers), which is what import-linter
    must see: it walks the package folder, and the front ends sit beside it in the repository."""
    stage = tmp_path / "stage"
    shutil.copytree(ROOT / "sigma", stage / "sigma", ignore=shutil.ignore_patterns("__pycache__", "weights", "assets"))
    shutil.copytree(ROOT / "api", stage / "sigma" / "api", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "workers", stage / "sigma" / "workers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", stage / "pyproject.toml")
    return stage


def test_import_layers_hold(tmp_path):
    stage = _staged_tree(tmp_path)
    proc = subprocess.run([_tool("lint-imports"), "--config", "pyproject.toml", "--no-cache"], cwd=stage,
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(stage)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " 0 broken" in proc.stdout


def test_a_layer_violation_is_caught(tmp_path):
    """The contract can fail: a model importing the service must break it."""
    stage = _staged_tree(tmp_path)
    (stage / "sigma" / "models" / "leak.py").write_text("from sigma.service import keys  # noqa: F401\n")
    proc = subprocess.run([_tool("lint-imports"), "--config", "pyproject.toml", "--no-cache"], cwd=stage,
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(stage)})
    assert proc.returncode != 0 and "sigma.models.leak" in proc.stdout


def test_ruff_finds_nothing():
    proc = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
