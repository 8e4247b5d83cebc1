"""The signals thread of a worker (`sigma.workers.lifecycle.StopSignals`) in a real process with real signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# A process that installs StopSignals with a `stop` event whose first set() raises (as a MemoryError under a low
# RLIMIT_AS, or a caller's event, can), says "ready", and waits for stop without ever returning by itself.
PROGRAM = """import logging, threading, time
from sigma.workers.lifecycle import StopSignals
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
class Stop(threading.Event):
    calls = 0
    def set(self):
        Stop.calls += 1
        if Stop.calls == 1:
            raise RuntimeError("the stop hook failed")
        super().set()
stop = Stop()
StopSignals(stop, lambda reason: print(f"stopped ({reason})", flush=True)).install()
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def test_the_signals_thread_outlives_a_failure_acting_on_a_signal_and_a_second_signal_still_exits(tmp_path: Path):
    """A failure inside the signals thread's action on SIGTERM ended that thread: the process then ignored every
    further SIGTERM (only SIGKILL stopped it). Now the failure is logged once, and the next SIGTERM is acted on: a
    second signal exits at once with status 0."""
    log = tmp_path / "out.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while "ready" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ready" in log.read_text(), log.read_text()
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "acting on signal" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)          # without the fix: the thread is gone, SIGTERM ignored for ever
        except subprocess.TimeoutExpired:
            raise AssertionError(f"SIGTERM ignored after the failure:\n{log.read_text()}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert code == 0 and "stopped (second SIGTERM" in out, out
    assert out.count("acting on signal 15 failed (RuntimeError: the stop hook failed)") == 1, out
    assert "Traceback" not in out, out
