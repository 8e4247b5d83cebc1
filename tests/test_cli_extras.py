"""A command whose optional extra is not installed says so in one line and exits 2 before doing any work
(issue 11 item 17: `sigma batch run` used to annotate a whole corpus and only then die on `import pyarrow`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = ("import sys\nfor m in sys.argv[1].split(','):\n    sys.modules[m] = None\n"
         "from sigma.cli import main\nsys.exit(main(sys.argv[2:]))")


@pytest.mark.parametrize("blocked, argv, extra", [
    ("pyarrow", ["batch", "run", "{examples}", "--out", "{tmp}/run"], "batch"),
    ("pyarrow", ["export", "coco", "{tmp}/run", "--out", "{tmp}/coco"], "batch"),
    ("pyarrow", ["report", "{tmp}/run"], "batch"),
    ("fastapi", ["serve", "api", "--port", "1"], "serve"),
    ("redis", ["worker"], "serve"),
    ("redis", ["batch", "status", "{tmp}/run", "--redis", "redis://127.0.0.1:1/0"], "serve"),
])
def test_missing_extra_is_one_line_and_exit_2_before_work(tmp_path, blocked, argv, extra):
    argv = [a.format(examples=ROOT / "sigma" / "assets" / "examples", tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-c", BLOCK, blocked, *argv], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sigma: error [missing_extra]:"), proc.stderr
    assert f"pip install 'sigma-masks[{extra}]'" in lines[0] and blocked in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "coco").exists()


def test_the_serve_extra_is_checked_by_python_multiparts_own_name_not_its_deprecated_one():
    """The check imported `multipart`, python-multipart's old name (a PendingDeprecationWarning since 0.0.15 on every
    `sigma serve` start, an error for a user running with -W error), while the API imports `python_multipart`,
    which an install of 0.0.9 to 0.0.12 (the old floor) lacks: the check passed and `sigma serve` failed later. The
    check names the module the API imports, and the floor is 0.0.18 (the first without CVE-2024-53981)."""
    code = ("import warnings\nwarnings.simplefilter('error')\nfrom sigma.cli.common import missing_extras\n"
            "print(missing_extras(('serve',)))\nimport sys\nprint('multipart' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["[]", "False"], proc.stderr[-2000:]
    requirement = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if "serve = [" in line)
    assert '"python-multipart>=0.0.18"' in requirement
