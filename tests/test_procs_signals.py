"""`sigma batch run --procs N` and Ctrl-C, with real processes: the signal reaches the whole process group (a
terminal's), the inference processes leave it to the driver from the moment they start, and the driver alone
stops the run: one line `sigma: interrupted`, exit 130 (docs/foundation.md), no traceback from anyone, every
published shard kept, and `--resume` finishes the run with every pair annotated once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from procfs import children_of, communicate, env, takes_ctrl_c

from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

TESTS = Path(__file__).resolve().parent

pytestmark = [pytest.mark.timeout(420),
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")]

PAIRS, SHARD_SIZE = 24, 3


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def takes_sigint(pid: int) -> bool:
    """Whether a SIGINT would reach `pid` now: neither blocked nor ignored (/proc/PID/status; a process gone
    takes nothing)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return False
    bit = 1 << (signal.SIGINT - 1)
    return not (int(fields["SigBlk"], 16) | int(fields["SigIgn"], 16)) & bit


def published(out: Path) -> int:
    return len(list((out / "status").glob("*.json"))) if (out / "status").is_dir() else 0


def start_run(source: Path, out: Path, resume: bool) -> subprocess.Popen:
    args = ["batch", "run", str(source), "--out", str(out), "--procs", "2", "--shard-size", str(SHARD_SIZE),
            "--annotator", "slow-diff", "--set", "options.delay_ms=150", "--batch-size", "1", "--workers", "0",
            "--plugin", "service_plugins", "--no-progress", "--json", *(["--resume"] if resume else [])]
    return subprocess.Popen([sys.executable, "-m", "sigma", *args], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(TESTS.parent), start_new_session=True,
                            preexec_fn=takes_ctrl_c)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    out, err = communicate(proc, timeout)
    return proc.returncode, out.decode(), err


def interrupted_run(source: Path, out: Path, resume: bool, when) -> tuple[int, str, list[int], set[int]]:
    """Start a run, wait until `when(driver, children)` says so, then SIGINT its whole process group every 5 ms
    until it has exited: (exit status, stderr, the children it had, those seen open to SIGINT at some point).
    The last is read from /proc because the driver kills its children within 0.1 s of its own Ctrl-C, often
    before one that took the signal has printed its traceback."""
    proc = start_run(source, out, resume)
    children: set[int] = set()
    exposed: set[int] = set()

    def look() -> None:
        children.update(children_of(proc.pid, spawned=True))
        exposed.update(pid for pid in children if takes_sigint(pid))

    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        look()
        if when(out, children):
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before the signals: {finish(proc, 10)}"
    try:
        while proc.poll() is None:
            look()
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.005)
    except ProcessLookupError:       # the group ended between poll() and the signal
        pass
    code, _, err = finish(proc, 60)
    return code, err, sorted(children), exposed


def test_ctrl_c_on_a_procs_run_stops_it_cleanly_and_resume_finishes_it(tmp_path):
    """Three runs of the same folder under a storm of SIGINTs to the process group, started (1) as the first
    inference process is being spawned, (2) as the second one is, (3) once the resumed run has published a
    shard (children at work). The children took Ctrl-C as theirs: each printed a KeyboardInterrupt traceback
    (from spawn's imports or from the middle of a shard), and a second SIGINT in the driver's own stop (killing
    its children, the interpreter's exit) printed more and ended it killed by SIGINT instead of with 130. Now
    no child is ever open to SIGINT (blocked from its start, then ignored), each stop is one line and 130, no
    child outlives it, and a last `--resume` annotates every pair once."""
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(PAIRS, size=40))
    source, out = tmp_path / "set", tmp_path / "out"
    shards = PAIRS // SHARD_SIZE
    seen = {"published": 0}

    def first_child(out: Path, children: set[int]) -> bool:
        return len(children) >= 1

    def second_child(out: Path, children: set[int]) -> bool:
        return len(children) >= 2

    def a_shard_published(out: Path, children: set[int]) -> bool:
        return published(out) > seen["published"]

    for n, (resume, when) in enumerate([(False, first_child), (True, second_child), (True, a_shard_published)]):
        seen["published"] = published(out)
        code, err, children, exposed = interrupted_run(source, out, resume, when)
        assert (code, err.strip()) == (130, "sigma: interrupted"), (n, code, err)
        assert children and not exposed, (n, children, exposed)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(c) for c in children):
            time.sleep(0.05)
        assert not any(alive(c) for c in children), f"round {n}: inference processes outlived the driver"
    kept = published(out)
    assert kept >= 1, "the third round's published shard was not kept"

    code, stdout, err = finish(start_run(source, out, resume=True), 240)
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["skipped"], summary["done_now"], summary["failed_now"]) == (kept, shards - kept, 0), summary
    ids = [i for path in sorted((out / "shards").glob("*.parquet")) for i in pq.read_table(path)["pair_id"].to_pylist()]
    expected = sorted(f"set/{json.loads(line)['id']}" for line in (source / "pairs.jsonl").read_text().splitlines())
    assert sorted(ids) == expected, (len(ids), len(expected))        # each pair once: none lost, none twice
    rows = [json.loads(p.read_text()) for p in sorted((out / "status").glob("*.json"))]
    assert [(r["status"], r["ok"]) for r in rows] == [("done", SHARD_SIZE)] * shards, rows


FIRST_PROCESS = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import first_process_target
    from sigma.lifeline import ShieldedSpawnContext

    if __name__ == "__main__":
        process = ShieldedSpawnContext().Process(target=first_process_target.blocked)
        process.start()
        process.join()
        sys.exit(process.exitcode)
""")


def test_the_first_process_a_program_starts_starts_with_stop_signals_blocked(tmp_path):
    """The first process a program starts also starts multiprocessing's resource tracker, which unblocked
    SIGINT/SIGTERM in the starting thread on its way (it blocks them for the tracker, then unblocks rather than
    restoring the mask): that first process, the first `--procs` child, started unshielded. Read from the
    child's /proc/self/status before it changes anything."""
    (tmp_path / "first_process_target.py").write_text(textwrap.dedent("""
        import signal, sys

        def blocked():
            line = next(l for l in open("/proc/self/status") if l.startswith("SigBlk:"))
            mask = int(line.split()[1], 16)
            wanted = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
            print(hex(mask), flush=True)
            sys.exit(0 if mask & wanted == wanted else 1)
    """))
    (tmp_path / "main.py").write_text(FIRST_PROCESS)
    done = subprocess.run([sys.executable, str(tmp_path / "main.py"), str(tmp_path)], env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)
