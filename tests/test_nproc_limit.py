"""`sigma annotate` run by a user under a low limit on processes and threads (`ulimit -u`, `prlimit --nproc`).

RLIMIT_NPROC never binds root, so the command runs as nobody (`setpriv`), as a user meets it: OpenBLAS raised
SIGINT on itself when it could not start its threads (`sigma: interrupted`, 130, nothing done) and libgomp ended a
torch annotator (`libgomp: Thread creation failed`, exit 1). Now both libraries get the threads that fit."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("prlimit"),
                                reason="RLIMIT_NPROC binds only a user other than root: run as root to become nobody")


@pytest.fixture
def shared_dir():
    """A folder nobody may write in (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="sigma-nproc-", dir="/tmp"))
    path.chmod(0o777)
    picture = np.full((96, 128, 3), 90, np.uint8)
    Image.fromarray(picture).save(path / "o.png")
    picture[20:50, 30:70] = 250
    Image.fromarray(picture).save(path / "e.png")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _annotate_as_nobody(folder: Path, nproc: int, annotator: str, blas: str | None = None
                        ) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(folder)}
    env.pop("OPENBLAS_NUM_THREADS", None)
    if blas:
        env["OPENBLAS_NUM_THREADS"] = blas
    return subprocess.run(["prlimit", f"--nproc={nproc}", "setpriv", "--reuid=65534", "--regid=65534",
                           "--clear-groups", sys.executable, "-m", "sigma", "annotate", str(folder / "o.png"),
                           str(folder / "e.png"), "-i", "brighten the box", "--annotator", annotator,
                           "-o", str(folder / f"out-{annotator}-{nproc}")],
                          capture_output=True, text=True, timeout=300, check=False, env=env)


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_command_under_a_low_limit_on_threads_annotates_the_pair(shared_dir, nproc):
    """pixel-diff loads numpy's and OpenCV's OpenBLAS, which start a thread per core as they load."""
    proc = _annotate_as_nobody(shared_dir, nproc, "pixel-diff")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (shared_dir / f"out-pixel-diff-{nproc}" / "mask.png").exists()


def test_a_torch_annotator_under_a_low_limit_on_threads_runs_on_the_threads_that_fit(shared_dir):
    """sigma-lite: torch's libgomp pool started its threads at the model's first op and ended the process (OpenBLAS
    given one thread by the user here, so that only torch's pool is tried)."""
    proc = _annotate_as_nobody(shared_dir, 1, "sigma-lite", blas="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (shared_dir / "out-sigma-lite-1" / "mask.png").exists()


def test_opencvs_pool_under_a_low_limit_on_threads_prints_nothing_into_the_output(shared_dir):
    """A 600x800 pair under `prlimit --nproc` 1: OpenCV's pool, started at pixel-diff's first parallel call, printed
    `[ERROR:0@1.1] global parallel_impl.cpp:246 WorkerThread 0: Can't spawn new thread: res = 11` above the command's
    own line. Now OpenCV is given one thread there (it starts none): the pair is annotated and stderr is empty."""
    picture = np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    Image.fromarray(picture).save(shared_dir / "o.png")
    picture[100:400, 100:400] = 0
    Image.fromarray(picture).save(shared_dir / "e.png")
    proc = _annotate_as_nobody(shared_dir, 1, "pixel-diff")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    assert (shared_dir / "out-pixel-diff-1" / "mask.png").exists()
