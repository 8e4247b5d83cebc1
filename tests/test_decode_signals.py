"""The decode processes of a batch pipeline and signals, with real processes: Ctrl-C to the process group (a
terminal's), even at the moment the decode processes are being started, never reaches them; and a decode process
that dies anyway (SIGKILL, the OOM killer) costs no shard: its pool is replaced and the chunks it held are
decoded again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from procfs import children_of, communicate, env

from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

TESTS = Path(__file__).resolve().parent

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")]

# `run_batch` in a process that takes SIGINT as a stopping worker does (a handler that notes it, no exception),
# `rounds` times over, each round with a new pipeline and so new decode processes; one summary line a round
RUNS = textwrap.dedent("""
    import json, signal, sys
    from sigma.batch import BatchConfig, run_batch

    signals = []
    signal.signal(signal.SIGINT, lambda signum, frame: signals.append(signum))
    source, out, rounds, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    print("started", flush=True)
    for n in range(rounds):
        cfg = BatchConfig.model_validate({"input": {"path": source, "shard_size": 8}, "annotator": "pixel-diff",
                                          "batch_size": 1, **extra})
        summary = run_batch(cfg, f"{out}/{n}", progress=False)
        print(json.dumps({"done": summary.done_now, "failed": summary.failed, "signals": len(signals)}),
              flush=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the interpreter's exit puts back SIG_DFL, which would end it
""")


def start_runs(tmp_path: Path, pairs: int, rounds: int, **extra) -> subprocess.Popen:
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(pairs, size=32))
    return subprocess.Popen([sys.executable, "-c", RUNS, str(tmp_path / "set"), str(tmp_path / "out"), str(rounds),
                             json.dumps(extra)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=str(TESTS.parent), start_new_session=True)


def outcome(proc: subprocess.Popen, timeout: float) -> tuple[int, list[dict], str]:
    out, err = communicate(proc, timeout)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return proc.returncode, lines, err


def test_ctrl_c_while_decode_processes_start_never_reaches_them(tmp_path):
    """SIGINT to the whole process group every few ms while runs start their decode processes, again and again.
    A decode process set itself to ignore SIGINT only in its pool initializer, which runs after the interpreter
    has started and imported the pipeline (a second or more on a loaded machine): a signal in that window killed
    it (a KeyboardInterrupt traceback, or no word at all before Python's own handler), the pool broke and the
    run ended in BrokenProcessPool or a failed shard. The processes now start with the signals blocked and ignore
    them before unblocking, so every round finishes every shard and nothing is printed."""
    rounds = 4
    proc = start_runs(tmp_path, pairs=16, rounds=rounds, workers=2)
    assert proc.stdout.readline().strip() == b"started"
    sent = 0
    try:
        while proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            sent += 1
            time.sleep(0.005)
    except ProcessLookupError:      # the group ended between poll() and the signal
        pass
    code, summaries, err = outcome(proc, 60)
    assert code == 0 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert len(summaries) == rounds, (summaries, err)
    assert all((s["done"], s["failed"]) == (2, []) for s in summaries), summaries
    assert summaries[-1]["signals"] > rounds and sent > rounds, (summaries, sent)    # the storm did reach the run


def test_a_decode_process_killed_mid_run_costs_no_shard(tmp_path):
    """The decode process SIGKILLed (as the OOM killer kills) once the first of three shards is published: its pool
    broke, and every chunk handed to it failed with it: the shard being decoded was failed (BrokenProcessPool) and,
    as the reading thread's next submit raised the same, so was the next one, "unreadable". Now a new pool takes
    over and decodes those chunks again: all three shards are done, every pair annotated."""
    proc = start_runs(tmp_path, pairs=24, rounds=1, workers=1, annotator="slow-diff", options={"delay_ms": 150},
                      plugins=["service_plugins"])
    status = tmp_path / "out" / "0" / "status"
    killed: list[int] = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not killed:
        if status.is_dir() and any(status.glob("*.json")):
            for pid in children_of(proc.pid, spawned=True):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.02)
    code, summaries, err = outcome(proc, 120)
    assert killed, f"no decode process seen while the run went on\n{err}"
    assert code == 0 and "Traceback" not in err, err
    assert [(s["done"], s["failed"]) for s in summaries] == [(3, [])], summaries
    rows = [json.loads(p.read_text()) for p in sorted(status.glob("*.json"))]
    assert [(r["status"], r["ok"]) for r in rows] == [("done", 8)] * 3, rows
