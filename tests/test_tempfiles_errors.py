"""`replace_atomically`'s failures said of the file the user named, never of its hidden temporary file."""
from __future__ import annotations

import subprocess
import sys

# The real CLI in a child whose RLIMIT_FSIZE is 100 bytes (SIGXFSZ ignored, as a shell's `ulimit -f` with a trap
# would leave it): a write past it fails with EFBIG, as one to a full disk fails with ENOSPC. No root needed.
CHILD = """
import resource, signal, sys
import sigma.cli
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.argv = ["sigma", *sys.argv[1:]]
sys.exit(sigma.cli.main())
"""


def test_a_write_refused_for_room_names_the_out_file_the_user_gave(tmp_path):
    """`sigma parse --file in.txt --out p.jsonl` past RLIMIT_FSIZE: the line was `os_error: File too large`, naming
    no file (the write of the temporary `.p.jsonl.PID.RANDOM.tmp` carries none; a failed rename or open named that
    hidden file, gone by then). Now `File too large: DIR/p.jsonl`, and no temporary file is left."""
    src, out = tmp_path / "in.txt", tmp_path / "p.jsonl"
    src.write_text("remove the big red boat from the lake please\nadd a cat to the sofa in the living room\n")
    proc = subprocess.run([sys.executable, "-c", CHILD, "parse", "--file", str(src), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip() == f"sigma: error [os_error]: File too large: {out}", proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
