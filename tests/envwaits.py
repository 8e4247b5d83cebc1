"""Lock waits set in the environment (`$SIGMA_FOLDER_LOCK_WAIT_S`, `$SIGMA_MODEL_LOCK_WAIT_S`) that a command
must refuse, and what its refusal must look like: shared by test_folderlock (`sigma eval`) and test_models
(`sigma annotate`); test_models imported them, a private helper included, from test_folderlock's test module."""
from __future__ import annotations

import subprocess

from sigma.text import shown

# what a lock wait in the environment must refuse: past 30 days (MAX_DURATION_S) — an integer of 500 digits was an
# OverflowError where the wait became a deadline (`time.monotonic() + wait_s`), 1e300 a wait of 10**300 s (for ever),
# first: they were taken — and, refused before too, NaN and infinity, not positive, no number; and a fraction, which
# int() cut without a word (2.5 was a wait of 2 s)
BAD_WAITS = ["9" * 500, "1e300", "2592001", "1e400", "inf", "nan", "-5", "0", "abc", "2.5"]


def refused_wait(proc: subprocess.CompletedProcess, env: str, value: str) -> None:
    """One `invalid_config` line naming the variable and its bound, exit 2, no traceback."""
    err = proc.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, (value[:40], err[-2000:])
    assert lines[0].startswith(f"sigma: error [invalid_config]: ${env}={shown(value, 40)!r}: "), (value[:40], err)
    assert "a whole number of seconds from 1 to 2592000 (30 days, MAX_DURATION_S)" in lines[0], err
    assert ("." in value) == (f"({value} is not a whole number)" in lines[0]), err
