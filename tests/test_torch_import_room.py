"""A torch annotator started under an address-space limit too low for `import torch` itself (`prlimit --as`)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image


def test_a_limit_too_low_to_import_torch_is_one_out_of_memory_line_not_an_abort(tmp_path):
    """`sigma annotate --annotator sigma-lite` under `prlimit --as` 680-720 MB aborted in torch's import (`terminate
    called after throwing an instance of 'std::bad_alloc'`, SIGABRT; `cannot allocate memory for thread-local data`):
    no line of sigma's. Now, over a sweep of limits across that window, every run says `out_of_memory` in one line.
    (Higher, a run may still end in glibc when a thread starts later with no room for its thread-local data: not
    covered here.)"""
    picture = np.full((64, 64, 3), 90, np.uint8)
    Image.fromarray(picture).save(tmp_path / "o.png")
    picture[10:20, 10:20] = 250
    Image.fromarray(picture).save(tmp_path / "e.png")
    probe = subprocess.run([sys.executable, "-c", "import sigma.cli, numpy, cv2, PIL.Image; print(next(int(line.split()"
                            "[1]) for line in open('/proc/self/status') if line.startswith('VmSize:')))"],
                           capture_output=True, text=True, timeout=60, check=True,
                           env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})      # as under a limit (sigma.cli.blas)
    base_kb = int(probe.stdout)            # the interpreter, the CLI and the image libraries, before torch
    for spare_mb in range(330, 440, 10):
        proc = subprocess.run(["prlimit", f"--as={base_kb * 1024 + spare_mb * 2**20}", sys.executable, "-m", "sigma",
                               "annotate", str(tmp_path / "o.png"), str(tmp_path / "e.png"), "--annotator",
                               "sigma-lite", "-o", str(tmp_path / f"out{spare_mb}")],
                              capture_output=True, text=True, timeout=180, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (spare_mb, proc.returncode, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("sigma: error [out_of_memory]:"), (spare_mb, proc.stderr)
