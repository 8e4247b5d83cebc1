"""A real writer of a set of files in an output folder, stopped or killed mid-commit, for the front ends that take
or write that folder (`sigma eval --out`, `sigma annotate -o`, `POST /v1/batches`' `out`): a `replace_together` (or
a `finish_replacements` of the sets killed writers left) in a process of its own, stopped (SIGSTOP: its exclusive
flock on the folder held, as Ctrl-Z or a hung network write leave one) or killed (SIGKILL: its journal left, its pid
dead) by an audit hook at its rename of metrics.json — inside the commit. Shared by tests/test_folderlock.py and
tests/test_service_batches.py (it was test_folderlock's own)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

# A real writer of a set in FOLDER (`replace_together`: config.yaml, then metrics.json, as `sigma eval` writes them),
# or a reader finishing the sets killed writers left there (MODE `finish`: `finish_replacements`), stopped or killed
# (STOP, a signal's name) by an audit hook at its rename of metrics.json — inside the commit, its exclusive flock on
# the folder held. Its stdout says "at the rename" there.
SET_WRITER = """import os, signal, sys
from pathlib import Path
folder, stop, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def hook(event, args):
    if event == "os.rename" and Path(os.fspath(args[1])) == folder / "metrics.json":
        print("at the rename", flush=True)
        os.kill(os.getpid(), getattr(signal, stop))
sys.addaudithook(hook)
from sigma.tempfiles import finish_replacements, replace_together
if mode == "finish":
    finish_replacements(folder)
else:
    replace_together([(folder / "config.yaml", b"writer: " + mode.encode() + b"\\n"),
                      (folder / "metrics.json", b'{"writer": "' + mode.encode() + b'"}')])
"""


def set_writer(folder: Path, stop: str, mode: str) -> subprocess.Popen:
    """`SET_WRITER` in a process of its own, at its rename of metrics.json once this returns: stopped (its flock
    held; the caller must `end` it in a `finally`) or killed (its journal left, its pid dead)."""
    proc = subprocess.Popen([sys.executable, "-c", SET_WRITER, str(folder), stop, mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == "at the rename", (line, proc.stderr.read() if proc.poll() is not None else "")
        if stop == "SIGSTOP":
            assert os.waitpid(proc.pid, os.WUNTRACED)[1]              # stopped, the commit's flock held
        else:
            proc.wait(timeout=60)
    except BaseException:
        end(proc)
        raise
    return proc


def end(proc: subprocess.Popen | None) -> None:
    """A process still there (a failed test, a command that hung) is killed: the kernel drops its flock."""
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=30)
