"""A torch annotator started under an address-space limit too low for `import torch` itself (`prlimit --as`)."""
from __future__ import annotations

import subprocess
import sys

from addresslimits import mapped_kb_after, small_changed_pair


def test_a_limit_too_low_to_import_torch_is_one_out_of_memory_line_not_an_abort(tmp_path):
    """`sigma annotate --annotator sigma-lite` under `prlimit --as` 680-720 MB aborted in torch's import (`terminate
    called after throwing an instance of 'std::bad_alloc'`, SIGABRT; `cannot allocate memory for thread-local data`):
    no line of sigma's. Now, over a sweep of limits across that window, every run says `out_of_memory` in one line.
    (Higher, a run may still end in glibc when a thread starts later with no room for its thread-local data: not
    covered here.)"""
    original, edited = small_changed_pair(tmp_path)
    # the interpreter, the CLI and the image libraries, before torch; OpenBLAS with one thread, as under a limit
    base_kb = mapped_kb_after("sigma.cli, numpy, cv2, PIL.Image", {"OPENBLAS_NUM_THREADS": "1"})   # (sigma.cli.blas)
    for spare_mb in range(330, 440, 10):
        proc = subprocess.run(["prlimit", f"--as={base_kb * 1024 + spare_mb * 2**20}", sys.executable, "-m", "sigma",
                               "annotate", original, edited, "--annotator",
                               "sigma-lite", "-o", str(tmp_path / f"out{spare_mb}")],
                              capture_output=True, text=True, timeout=180, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (spare_mb, proc.returncode, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("sigma: error [out_of_memory]:"), (spare_mb, proc.stderr)
