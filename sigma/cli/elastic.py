"""A rank's failure under torchrun, said once and carried into torchrun's own report.

Seen before: `torchrun --nproc_per_node=2 -m sigma train CONFIG data.photos=/missing` printed sigma's one-line error
once per rank, then torchrun's report said `error_file: <N/A>` and `traceback : To enable traceback see:
https://pytorch.org/docs/stable/elastic/errors.html` for the rank that failed, and `exitcode : -15` for the rank it
stopped while that one was still on its way out with the same error. torchrun's own `ChildFailedError` traceback
(printed by the torchrun process whenever a rank ends non-zero) is not sigma's to change.

Now (for an error, `sigma: interrupted` after a Ctrl-C, and a SIGTERM's stop line alike): every rank writes its line
to the error file torchrun gives it (`TORCHELASTIC_ERROR_FILE`, in the JSON form
torch's `ErrorHandler.record_exception` writes and `ProcessFailure` reads), so torchrun's report shows sigma's line,
code included, as the failure's `traceback` — for the rank that failed first as its "Root Cause". Only rank 0 prints
the line itself; another rank's line (an error only that rank met) is in the report. A rank that failed ignores the
SIGTERM torchrun sends while it is on its way out, so it ends with sigma's own exit code, like the others.
No torch here: the CLI imports this on every error.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

ERROR_FILE = "TORCHELASTIC_ERROR_FILE"   # set by torchrun for each rank it starts ("" when it keeps no logs)


def under_torchrun() -> bool:
    return ERROR_FILE in os.environ


def _error_file() -> str:
    return os.environ.get(ERROR_FILE, "")


def _rank() -> int:
    """This rank, for a failure's report: a `$RANK` that is no rank (the failure may be that very error) is 0."""
    from sigma.errors import ConfigError
    from sigma.training.world import rank

    try:
        return rank()
    except ConfigError:
        return 0


def record(line: str) -> bool:
    """Write `line` (an error said in several lines: all of them, one per line) to this rank's error file when
    torchrun gave one; True when the process should print it too:
    always outside torchrun, on rank 0, and on a rank whose error file could not be written (its line would be lost).
    `py_callstack` is what torchrun's report shows as the failure's `traceback`: sigma's line, not a stack."""
    path = _error_file()
    if not path:
        return True
    data = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
    except OSError:
        return True
    return _rank() == 0


def leaving_quietly() -> None:
    """A rank that failed, under torchrun, ends with its own exit code: torchrun stops the other ranks with SIGTERM
    as soon as one fails, and one reaching the same error a moment later was killed in its exit (`exitcode: -15` in
    the report). Only in the main thread (signal handlers can be set only there)."""
    if under_torchrun() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
