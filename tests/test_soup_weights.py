"""`scripts/soup_weights.py` killed while it writes OUT: the earlier soup there stands whole, and the next soup leaves
only its three files.

It wrote with safetensors' `save_file` (a `.tmpXXXXXX` of its own, renamed at the end; killed mid-write, left in OUT
for good), then config.json and soup.json in place one after the other: killed between, OUT held the new weights
beside the earlier soup's config and record. It now writes the three as one set (`write_model_files`).
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "soup_weights.py"
SHIPPED = str(ROOT / "sigma" / "weights" / "sigma-lite.safetensors")
SET = {"config.json", "model.safetensors", "soup.json"}

# killed as it opens config.json (or its temporary file) for writing: after the weights, before the config
KILL_AT_CONFIG = """import os, signal, sys
def _hook(event, args):
    if event == "open" and "config.json" in str(args[0]) and any(c in str(args[1] or "") for c in "wax"):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(_hook)
"""
# killed by the kernel mid-write of the weights: a file-size limit's SIGXFSZ (Python ignores it unless told not to)
KILL_BY_FILE_SIZE = "import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _soup(out: Path, coef: str, prelude: str = "", limited: bool = False) -> subprocess.CompletedProcess:
    argv = [str(SCRIPT), str(out), SHIPPED, SHIPPED, "--coef", coef]
    code = prelude + f"import runpy, sys\nsys.argv = {argv!r}\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_files if limited else None)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.name in SET}


@pytest.mark.parametrize("kill", ["at_config", "by_file_size"])
def test_a_killed_soup_leaves_the_earlier_one_whole_and_the_next_soup_no_junk(tmp_path, kill):
    out = tmp_path / "soup"
    assert _soup(out, "1,0").returncode == 0
    earlier = _files(out)
    assert set(earlier) == SET

    killed = _soup(out, "0.7,0.2", KILL_AT_CONFIG, False) if kill == "at_config" else \
        _soup(out, "0.7,0.2", KILL_BY_FILE_SIZE, True)
    assert killed.returncode < 0, killed.stderr[-2000:]           # it died, not an error of its own
    assert _files(out) == earlier                                   # the earlier soup, whole: weights, config, record

    assert _soup(out, "0.25,0.75").returncode == 0
    assert {p.name for p in out.iterdir()} == SET                   # what the killed writer left is gone
    assert b'"coef": [\n  0.25,\n  0.75\n ]' in (out / "soup.json").read_bytes()
    from sigma.models import load_model

    load_model(out)
