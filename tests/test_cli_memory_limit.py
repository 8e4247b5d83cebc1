"""`sigma` under a low address-space limit (`ulimit -v`, RLIMIT_AS; a container's memory): one line, exit 2."""
from __future__ import annotations

import subprocess
import sys

import pytest

# The real CLI (`main()` with the process's own argv) in a child whose RLIMIT_AS is set, once `sigma.cli` itself is
# imported, to what the child then maps plus a few MB: the next imports (pydantic's, numpy's or torch's libraries,
# or Python modules) or the image read are refused, as they are under `ulimit -v` (an absolute `ulimit -v` would
# depend on how large this machine's libraries are). No root needed.
CHILD = """
import resource, sys
import sigma.cli
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]) * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.argv = ["sigma", *sys.argv[2:]]
sys.exit(sigma.cli.main())
"""


@pytest.mark.parametrize("spare_mb", [4, 16, 32])
def test_memory_the_system_refuses_is_one_line_not_a_traceback(tmp_path, spare_mb):
    """Under `ulimit -v 800000` `sigma annotate` was an ImportError traceback (`libtorch_cpu.so: failed to map
    segment from shared object`), exit 1; a little higher, a MemoryError traceback reading the image; and with
    almost nothing left, the import of the error line's own helpers failed in its turn."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(spare_mb), "annotate", "--example", "--annotator",
                           "pixel-diff", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sigma: error [out_of_memory]: the system gave no more memory ("), \
        proc.stderr[-3000:]
    assert "ulimit -v" in lines[0]
