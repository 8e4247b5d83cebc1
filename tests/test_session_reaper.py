"""The test session's own hygiene: the processes a test starts die with the session, however pytest ends.

A SIGTERMed (CI's timeout), SIGKILLed or Ctrl-C'd pytest left `sigma serve`, workers and redis-servers running as
orphans, holding ports and CPU for the rest of the CI run: SIGTERM and SIGKILL run no fixture teardown. These tests
run a small real pytest session (this directory's conftest as its plugin, so its real reaper) that starts a
redis-server (the session fixture), a child in its own session with a grandchild (as `sigma serve all` and its worker),
and a stopped (SIGSTOP) child, then end that pytest with a real signal and wait until none of them is left.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAPER_ENV
from servicekit import TESTS, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the reaper needs pidfds (Linux >= 5.3)")

INNER = '''
import os, signal, subprocess, sys, time
from pathlib import Path

def test_starts_children_and_waits(redis_server):
    child = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "time.sleep(600)"], start_new_session=True)
    stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    os.kill(stopped.pid, signal.SIGSTOP)
    def grandchildren():
        return [int(p) for p in Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()]
    deadline = time.monotonic() + 120
    while not grandchildren():
        assert time.monotonic() < deadline, "the grandchild never started"
        time.sleep(0.05)
    pids = [redis_server.proc.pid, child.pid, stopped.pid, *grandchildren()]
    Path(os.environ["PIDS_FILE"]).write_text(" ".join(map(str, pids)))
    while True:                       # ended from outside, by the signal under test
        time.sleep(1)
'''


def _alive(pid: int) -> bool:
    """Whether `pid` is still a running (or stopped) process, not gone or a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _interruptible() -> None:
    """The inner pytest gets SIGINT's default, as a pytest at a terminal has. This session may have it ignored (CI's
    `bash .ci/run` started as a background job: a shell without job control sets SIGINT to SIG_IGN for it, inherited
    by every child), and a Python started so installs no KeyboardInterrupt handler: the Ctrl-C case waited 120 s for
    an inner session that never saw its signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT], ids=["sigterm", "sigkill", "sigint"])
def test_every_process_a_session_started_dies_with_it(sig, tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    pids_file = tmp_path / "pids"
    env = {**os.environ, "PIDS_FILE": str(pids_file),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    session = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                                "--rootdir", str(tmp_path), "test_inner.py"], cwd=tmp_path, env=env,
                               stdout=open(tmp_path / "out", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                               preexec_fn=_interruptible)
    pids: list[int] = []
    try:
        def started() -> bool:
            if session.poll() is not None:
                raise AssertionError((tmp_path / "out").read_text(errors="replace"))
            return pids_file.is_file() and bool(pids_file.read_text())
        wait_until(started, 300, "the inner session's children", 0.1)
        pids = [int(p) for p in pids_file.read_text().split()]
        assert len(pids) == 4 and all(_alive(p) for p in pids), pids
        # what marks them: each holds the inner session's token (not this session's: its own reaper, its own children)
        os.kill(session.pid, sig)
        session.wait(timeout=120)
        wait_until(lambda: not [p for p in pids if _alive(p)], 60,
                   f"every process of the {sig.name}ed session to go ({[p for p in pids if _alive(p)]} left)", 0.1)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait(timeout=30)
        for pid in pids:                 # what the test found left, not left for the rest of the run
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_this_sessions_children_carry_its_token_and_the_reaper_is_running():
    """The mark the reaper finds children by is in this session's environment (so in every child's), and its reaper
    is alive: without them nothing above would hold for this very run."""
    token = os.environ.get(REAPER_ENV, "")
    assert token, f"{REAPER_ENV} is not set: conftest.pytest_configure started no reaper"
    child = subprocess.run([sys.executable, "-c", f"import os; print(os.environ['{REAPER_ENV}'])"],
                           capture_output=True, text=True, timeout=120)
    assert child.stdout.strip() == token
    reapers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(int(p), f"{REAPER_ENV}={token}")]
    assert reapers, "no reaper process watches this session"


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def test_the_reaper_spares_other_sessions(tmp_path):
    """A process of another session (another token) is never killed: reap() matches the whole entry."""
    import reaper

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             env={**os.environ, REAPER_ENV: "another-session"})
    try:
        wait_until(lambda: _alive(other.pid) and b"another-session" in Path(f"/proc/{other.pid}/environ").read_bytes(),
                   60, "the other session's process", 0.05)
        assert reaper.reap(f"{REAPER_ENV}=another-session-not".encode(), rounds=1) == 0      # it signalled none
        assert reaper.reap(f"{REAPER_ENV}=another".encode(), rounds=1) == 0                  # nor a prefix of it
        assert other.poll() is None and _alive(other.pid)
    finally:
        other.kill()
        other.wait(timeout=30)
