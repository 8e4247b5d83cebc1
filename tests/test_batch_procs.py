"""`sigma batch run --procs N`: the same bytes as one process, a child killed mid-shard (its shard retried), a
SIGKILLed driver whose children die with it (then --resume), the default number of processes, bad flags."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from procfs import children_of

from sigma.batch import BatchConfig, run_batch
from sigma.batch.procs import inference_procs
from sigma.cli import main
from sigma.io.corpora.base import Shard
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

TESTS = Path(__file__).resolve().parent
SLOW = {"annotator": "slow-diff", "options": {"delay_ms": 200}, "batch_size": 1, "plugins": ["service_plugins"]}


def cfg_for(path: Path, **kw) -> BatchConfig:
    base = {"input": {"path": str(path), "shard_size": 3}, "annotator": "pixel-diff", "workers": 0}
    return BatchConfig.model_validate({**base, **kw})


def digests(out: Path) -> dict[str, str]:
    files = sorted((out / "shards").glob("*.parquet")) + sorted((out / "status").glob("*.json"))
    return {f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_children_mid_run(cfg: BatchConfig, out: Path):
    """Start `run_batch` in a thread, SIGSTOP all its spawned children once a shard is done,
    and wait for the run: (its summary, the stopped pids). A run that is still waiting after 120 s fails."""
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(s=run_batch(cfg, out, progress=False)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((out / "status").glob("*.json")):
        time.sleep(0.01)
    spawned = [p for p in children_of(os.getpid()) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert spawned, "no spawned process found"
    stopped = spawned
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    thread.join(120)
    assert not thread.is_alive(), "the run waited for the stopped process"
    return box["s"], stopped


def stop_a_child_inside_a_shard(busy: Path, timeout_s: float = 120) -> int:
    """SIGSTOP an inference process (spawned by this one) that provably holds a shard: stopped and found inside
    slow-diff's batch (its `busy/<pid>` marker, removed by itself on leaving it). A child picked otherwise (the first
    spawned one once a status exists) could be between shards — it had just published one, the driver had not yet
    handed it the next (a loaded CPU) — or still starting, and then held no shard: nothing to retry. Its pid."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for marker in list(busy.iterdir()):
            pid = int(marker.name)
            if pid not in children_of(os.getpid(), spawned=True):
                continue
            os.kill(pid, signal.SIGSTOP)
            while alive(pid) and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
                time.sleep(0.001)
            if marker.exists():                 # stopped inside a batch: its shard is in hand, not published
                return pid
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("no inference process was found inside a shard")


def kill_a_child_inside_a_shard(busy: Path, timeout_s: float = 120) -> int:
    """SIGKILL an inference process that provably holds a shard (`stop_a_child_inside_a_shard`). Its pid."""
    pid = stop_a_child_inside_a_shard(busy, timeout_s)
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("procs")
    write_pairs_jsonl(root / "set", synthetic_pairs(12, size=40))
    with open(root / "set" / "pairs.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "gone", "original": "nope.png", "edited": "nope.png", "instruction": "x"})
                     + "\n")
    return root


@pytest.fixture(scope="module")
def slow_reference(corpus) -> Path:
    import service_plugins  # noqa: F401 - registers slow-diff

    run_batch(cfg_for(corpus / "set", **SLOW), corpus / "slow-one", progress=False)
    return corpus / "slow-one"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_two_processes_same_bytes_and_a_killed_child_is_retried(corpus, slow_reference, tmp_path, monkeypatch):
    one = run_batch(cfg_for(corpus / "set"), corpus / "one", progress=False)
    two = run_batch(cfg_for(corpus / "set", procs=2), corpus / "two", progress=False)
    assert (one.backend["procs"], two.backend["procs"], two.backend["threads"]) == (1, 2, 1)
    assert (two.done_now, two.pairs, two.errors) == (one.done_now, one.pairs, one.errors) == (5, 13, 1)
    assert digests(corpus / "two") == digests(corpus / "one")
    assert sum(two.backend["shards_by_worker"].values()) == 5
    # both processes take shards when each shard takes a while (pixel-diff is so fast on 40 px pairs that the
    # first process to start can finish all five before the second has imported torch)
    both = run_batch(cfg_for(corpus / "set", procs=2, **SLOW), corpus / "two-slow", progress=False)
    assert len(both.backend["shards_by_worker"]) == 2
    assert digests(corpus / "two-slow") == digests(slow_reference)

    # SIGKILL one child while it works on a shard: that shard is run again by a child, same bytes
    out = corpus / "killed-child"
    busy = tmp_path / "busy"
    busy.mkdir()
    monkeypatch.setenv("SIGMA_TEST_BUSY_DIR", str(busy))     # slow-diff: busy/<pid> while inside a batch
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(s=run_batch(cfg_for(corpus / "set", procs=2, **SLOW), out,
                                                                   progress=False)), daemon=True)
    thread.start()
    victim = kill_a_child_inside_a_shard(busy)
    thread.join(120)
    summary = box["s"]
    # it was killed inside a batch, so before its shard was published: that shard is retried, never "already_done"
    assert len(summary.retried) == 1 and summary.retried[0]["action"] == "retried", (victim, summary.retried)
    assert "signal 9" in summary.retried[0]["reason"]
    assert summary.done_now == 5 and summary.failed_now == 0 and summary.backend["processes_started"] == 3
    assert digests(out) == digests(slow_reference)


def stopped(pid: int) -> None:
    """SIGSTOP `pid` and wait until it is stopped (or gone)."""
    os.kill(pid, signal.SIGSTOP)
    while alive(pid) and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.001)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_child_killed_holding_no_shard_is_recorded_and_the_run_finishes(tmp_path, monkeypatch):
    """Two shards (3 pairs and 1) for 2 processes: once both are handed out and the driver has heard one back, the
    child that holds none is SIGKILLed while the other is inside its shard. Its death was recorded nowhere but
    `processes_started`. Now the run finishes every shard, and the death is in `backend.idle_deaths` (with its signal)
    and `processes_died`, and said on stderr.

    The victim is chosen from the driver's own state (its pool and ledger, recorded as the run builds them), not from
    the files: a child that has written its status is not yet known to the driver as free (its "done" still in the
    pipe), and killed then it held a shard (recorded as `already_done`, rightly, but not an idle death)."""
    import service_plugins  # noqa: F401 - registers slow-diff

    from sigma.batch import procs

    seen: dict = {}

    class SeenPool(procs.ProcPool):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            seen["pool"] = self

    class SeenLedger(procs.ShardLedger):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            seen["ledger"] = self

    monkeypatch.setattr(procs, "ProcPool", SeenPool)
    monkeypatch.setattr(procs, "ShardLedger", SeenLedger)
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(4, size=40))
    busy = tmp_path / "busy"
    busy.mkdir()
    monkeypatch.setenv("SIGMA_TEST_BUSY_DIR", str(busy))
    out = tmp_path / "run"
    slow = {**SLOW, "options": {"delay_ms": 1500}}
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(s=run_batch(cfg_for(tmp_path / "set", procs=2, **slow), out,
                                                                   progress=False)), daemon=True)
    thread.start()
    victim = None
    deadline = time.monotonic() + 90
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.01)
        pool, ledger = seen.get("pool"), seen.get("ledger")
        if pool is None or ledger is None or ledger.queue or len(ledger.outcomes) != 1:
            continue
        # every shard handed out, one heard back: the child that holds none can be given nothing more
        free = [c for c in pool.live() if c.ready and c.shard is None]
        holding = [c for c in pool.live() if c.shard is not None]
        if len(free) != 1 or len(holding) != 1:
            continue
        worker = holding[0].process.pid
        stopped(worker)                      # it cannot finish (and end the run) before the death is seen
        try:
            # inside its batch: it has not sent its shard back, so the driver still holds the run open
            if (busy / str(worker)).exists() and free[0].alive and free[0].shard is None and not ledger.finished:
                victim = free[0].process.pid
                os.kill(victim, signal.SIGKILL)
                deadline = time.monotonic() + 60
                while free[0].alive and time.monotonic() < deadline:     # the driver has buried it
                    time.sleep(0.01)
        finally:
            os.kill(worker, signal.SIGCONT)
    assert victim is not None, "no free child was found while the other worked"
    thread.join(120)
    assert not thread.is_alive() and "s" in box, "the run did not finish"
    summary = box["s"]
    assert summary.done_now == 2 and summary.failed_now == 0 and summary.pairs == 4, summary
    assert summary.backend["processes_died"] == 1, summary.backend
    deaths = summary.backend["idle_deaths"]
    assert len(deaths) == 1 and "signal 9" in deaths[0]["reason"] and deaths[0]["replaced_by"] is None, deaths
    assert summary.retried == [], summary.retried


def test_a_child_killed_while_every_child_starts_leaves_the_run_to_the_others(tmp_path, monkeypatch):
    """`--procs 2`, one child SIGKILLed while starting (the OOM killer during the imports) before any child was ready:
    the whole run failed `worker_failed` though the other child was about to work (`sigma batch run --procs 2`, a
    child killed at once: exit 2). Now it is an idle death while starting, not replaced (no child is ready), and the
    other child runs every shard. (`startdeath_plugin`: a real SIGKILL in the child, the other held until then.)"""
    starts = tmp_path / "starts"
    starts.mkdir()
    monkeypatch.setenv("SIGMA_TEST_START_DEATHS", str(starts))
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(6, size=40))
    summary = run_batch(cfg_for(tmp_path / "set", procs=2, plugins=["startdeath_plugin"]), tmp_path / "run",
                        progress=False)
    assert (starts / "victim").read_text()              # the death happened
    assert summary.done_now == 2 and summary.failed_now == 0 and summary.pairs == 6, summary
    assert summary.backend["processes_started"] == 2 and summary.backend["processes_died"] == 1, summary.backend
    deaths = summary.backend["idle_deaths"]
    assert len(deaths) == 1 and "signal 9 while starting" in deaths[0]["reason"], deaths
    assert deaths[0]["replaced_by"] is None and summary.retried == [], (deaths, summary.retried)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_children_stopped_while_starting_end_the_run_after_stall_s_instead_of_hanging(tmp_path):
    """Every child SIGSTOPped before it said "ready" (a start-up hung in native code, a stopped process): the stall
    bound held only for a child with a shard, so the run waited for ever. Now a child silent for `stall_s` since its
    start is killed as hung too, and with no child started the run fails `worker_failed` saying so."""
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(6, size=40))
    box: dict = {}

    def run() -> None:
        try:
            box["s"] = run_batch(cfg_for(tmp_path / "set", procs=2, stall_s=3), tmp_path / "run",
                                 progress=False)
        except Exception as exc:  # noqa: BLE001 - the test reads it
            box["e"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    stopped: set[int] = set()
    deadline = time.monotonic() + 60
    while len(stopped) < 2 and time.monotonic() < deadline and thread.is_alive():
        for pid in set(children_of(os.getpid(), spawned=True)) - stopped:
            os.kill(pid, signal.SIGSTOP)
            stopped.add(pid)
        time.sleep(0.001)
    try:
        thread.join(60)                          # without the change: waits for ever
        assert not thread.is_alive(), "the run waited for children stopped while starting"
    finally:
        for pid in stopped:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    error = box.get("e")
    assert getattr(error, "code", None) == "worker_failed", box
    assert "after no progress for 3 s (taken as hung) before it was ready" in error.message, error.message


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_children_die_with_a_killed_driver_and_the_run_resumes(corpus, slow_reference):
    out = corpus / "killed-driver"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    args = ["batch", "run", str(corpus / "set"), "--out", str(out), "--procs", "2", "--shard-size", "3",
            "--annotator", "slow-diff", "--set", "options.delay_ms=200", "--batch-size", "1", "--workers", "0",
            "--plugin", "service_plugins", "--no-progress"]
    driver = subprocess.Popen([sys.executable, "-m", "sigma", *args], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((out / "status").glob("*.json")):
        assert driver.poll() is None, driver.stderr.read().decode()
        time.sleep(0.01)
    kids = children_of(driver.pid)
    assert len(kids) >= 2
    driver.kill()                         # SIGKILL the driver only, not its process group
    driver.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(k) for k in kids):
        time.sleep(0.05)
    assert not any(alive(k) for k in kids), "inference processes outlived their driver"
    done = len(list((out / "status").glob("*.json")))
    assert 1 <= done < 5
    resumed = run_batch(cfg_for(corpus / "set", **SLOW), out, resume=True, progress=False)
    assert (resumed.skipped, resumed.done_now) == (done, 5 - done)
    assert digests(out) == digests(slow_reference)


def test_default_processes_and_threads(corpus, monkeypatch):
    from sigma.batch import procs
    from sigma.batch.procs import inference_threads

    monkeypatch.setattr(procs, "available_cores", lambda: 4)
    monkeypatch.setattr(procs, "has_gpu", lambda: False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert procs.idle_cores() == 4
    lite = cfg_for(corpus / "set", annotator="sigma-lite")
    assert (inference_procs(lite, 10), inference_threads(lite, 4)) == (4, 1)   # a network on an idle CPU
    assert (inference_procs(lite, 1), inference_threads(lite, 1)) == (1, 4)    # one shard: one process, 4 threads
    assert inference_procs(lite, 3) == 3                                       # never more than the shards left
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 2.0, 2.0))             # other jobs hold 2.6 cores
    assert (procs.idle_cores(), inference_procs(lite, 10), inference_threads(lite, 1)) == (1, 1, 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (15.0, 15.0, 15.0))          # this machine while measured
    assert (inference_procs(lite, 10), inference_threads(lite, 1)) == (1, 1)
    pixel = cfg_for(corpus / "set")
    assert (inference_procs(pixel, 10), inference_threads(pixel, 1)) == (1, None)   # pixel-diff: as before
    explicit = cfg_for(corpus / "set", annotator="sigma-lite", procs=3)
    assert (inference_procs(explicit, 10), inference_threads(explicit, 3)) == (3, 1)  # --procs N: N x 1 thread
    assert inference_threads(cfg_for(corpus / "set", threads=2), 1) == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(procs, "has_gpu", lambda: True)
    assert (inference_procs(lite, 10), inference_threads(lite, 1)) == (1, None)     # a GPU: one process


def test_scale_flags_that_do_not_fit(corpus, tmp_path, capsys):
    base = ["batch", "run", str(corpus / "set"), "--out", str(tmp_path / "x"), "--annotator", "pixel-diff"]
    assert main([*base, "--procs", "2", "--backend", "ray"]) == 2
    assert "--procs is for the local backend" in capsys.readouterr().err
    assert main([*base, "--actors", "2", "--backend", "local"]) == 2
    assert "--actors is a Ray option" in capsys.readouterr().err
    assert main([*base, "--plugin", "no_such_module_here", "--no-progress"]) == 2
    assert "no_such_module_here" in capsys.readouterr().err



@pytest.mark.parametrize(("setting", "said"), [
    ("start_retry.first_s=0", "start_retry.first_s"), ("start_retry.max_s=-1", "start_retry.max_s"),
    ("start_retry.tries=0", "start_retry.tries"), ("start_retry.tries=100000", "start_retry.tries"),
    ("start_retry.first_s=1e300", "start_retry.first_s"), ("start_retry.first_s=nan", "start_retry.first_s")])
def test_start_retry_settings_out_of_bounds_are_invalid_config(corpus, tmp_path, capsys, setting, said):
    """`start_retry.*` (how a failed `--procs` replacement start is tried again) are settings, each positive and
    bounded: refused before anything runs, naming the setting."""
    out = tmp_path / "x"
    assert main(["batch", "run", str(corpus / "set"), "--out", str(out), "--annotator", "pixel-diff", "--procs",
                 "2", "--no-progress", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert "[invalid_config]" in err and said in err, err
    assert not (out / "shards").exists()


def test_a_failed_start_is_tried_again_as_start_retry_says(tmp_path, capsys):
    """The wait after a failed replacement start and the tries with no process left are `start_retry`'s (they were
    module constants: 0.5 s doubled up to 10 s, 8 tries): 2 s, 4 s, then 5 s at most, and no try after the third."""
    from sigma.batch.layout import RunDir
    from sigma.batch.procs import ProcPool

    cfg = cfg_for(tmp_path, procs=2, start_retry={"first_s": 2, "max_s": 5, "tries": 3})
    pool = ProcPool(cfg, RunDir(tmp_path / "run"), "hash", threads=1)
    said = []
    for _ in range(3):
        assert pool.may_retry_start() or pool.retry_at is None
        pool.start_failed("could not start an inference process (OSError: test)")
        said.append(capsys.readouterr().err)
    assert [line.split("trying again in ")[1].split(" s")[0] for line in said] == ["2.0", "4.0", "5.0"], said
    assert "(try 3 of 3 with no process left)" in said[2], said
    assert not pool.may_retry_start()
    assert BatchConfig.model_validate({"input": {"path": "x"}}).start_retry.tries == 8

MIDDLE = '''
import multiprocessing, os, sys, time

def child(parent):
    from sigma.lifeline import die_with_parent
    die_with_parent(parent)
    print("armed", flush=True)
    time.sleep(120)

if __name__ == "__main__":
    p = multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(),))
    p.start()
    print(p.pid, flush=True)
    time.sleep(120)
'''


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_child_with_a_lifeline_dies_with_its_parent(tmp_path):
    """parent (SIGKILLed) -> child asleep for 2 minutes: the child must be gone within seconds."""
    script = tmp_path / "middle.py"
    script.write_text(MIDDLE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    # the parent says the child's pid, the child when its lifeline is armed, in either order (it was a 1 s sleep: on
    # a loaded machine the spawned child could still be importing, and then a 5 s deadline for its death was short)
    said = sorted([parent.stdout.readline(), parent.stdout.readline()])
    assert said[0].strip().isdigit() and said[1] == "armed\n", said
    child = int(said[0])
    assert alive(child)
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and alive(child):
        time.sleep(0.05)
    assert not alive(child), "the child outlived its parent"


def test_ray_actor_plans(corpus):
    """Ray placement from config alone (no cluster needed): GPUs, fractions, CPU-only clusters, caps."""
    from sigma.batch.ray_backend import plan_actors
    from sigma.errors import ConfigError

    def plan(resources, pending=1000, **kw):
        p = plan_actors(cfg_for(corpus / "set", **kw), resources, pending)
        return p.actors, p.num_cpus, p.num_gpus, p.threads, p.workers

    gpu_box = {"CPU": 64, "GPU": 8}
    assert plan(gpu_box) == (8, 1.0, 1.0, 1, 0)                                   # one actor per GPU
    assert plan(gpu_box, ray={"num_gpus": 0.25}) == (32, 1.0, 0.25, 1, 0)         # four sigma-lite actors a GPU
    assert plan(gpu_box, ray={"num_gpus": 0.5, "num_cpus": 8}, workers=7) == (8, 8.0, 0.5, 8, 7)   # CPU-bound
    assert plan({"CPU": 32}) == (32, 1.0, 0.0, 1, 0)                              # CPU cluster: a core, a thread
    assert plan({"CPU": 32}, pending=5) == (5, 1.0, 0.0, 1, 0)                    # never more than the shards
    assert plan({"CPU": 32}, ray={"actors": 3}, threads=2) == (3, 1.0, 0.0, 2, 0)
    with pytest.raises(ConfigError, match="GPU"):
        plan({"CPU": 32}, ray={"num_gpus": 1})
    with pytest.raises(ConfigError, match="CPU"):
        plan({"CPU": 2}, ray={"num_cpus": 4})


def test_thread_limit_gives_the_settings_back():
    import cv2
    import torch

    from sigma.batch.shard_runner import thread_limit

    before = (torch.get_num_threads(), cv2.getNumThreads(), os.environ.get("OMP_NUM_THREADS"))
    torch.set_num_threads(3)
    try:
        with thread_limit(1):
            assert (torch.get_num_threads(), cv2.getNumThreads(), os.environ["OMP_NUM_THREADS"]) == (1, 1, "1")
        assert torch.get_num_threads() == 3 and cv2.getNumThreads() == before[1]
        assert os.environ.get("OMP_NUM_THREADS") == before[2]
    finally:
        torch.set_num_threads(before[0])


def test_a_worker_lost_after_publishing_leaves_its_shard_done(corpus):
    """A child can die between writing a shard's "done" status and telling the driver: the ledger must count
    the shard done (its output is on disk for this run), never retry it, and never overwrite the status with
    "failed" — on the last attempt nor when the remaining queue is failed."""
    from sigma.batch.dispatch import ShardLedger
    from sigma.batch.layout import RunDir

    out = corpus / "ledger"
    summary = run_batch(cfg_for(corpus / "set"), out, progress=False)
    rundir = RunDir(out)
    shards = sorted((out / "status").glob("*.json"))
    statuses = [json.loads(p.read_text()) for p in shards]
    done = [Shard(index=s["index"], key=s["shard"]) for s in statuses if s["status"] == "done"]
    assert len(done) == 5
    first, second, third = done[:3]
    before = {p.name: p.read_bytes() for p in shards}
    (out / "status" / f"{third.key}.json").unlink()      # this one was never published

    ledger = ShardLedger(rundir, summary.run_hash, [first, second, third], max_attempts=1)
    for _ in range(3):
        ledger.next()
    ledger.lost(first, "signal 9", worker="pid 1")
    ledger.fail_remaining("driver stopping")               # nothing queued: nothing happens
    ledger.lost(third, "signal 9", worker="pid 2")
    ledger.queue.append(second)
    ledger.fail_remaining("driver stopping")
    assert ledger.outcomes[first.key].status == "done"
    assert ledger.outcomes[first.key].pairs == statuses[0]["pairs"] == 3
    assert ledger.outcomes[second.key].status == "done"
    assert ledger.outcomes[third.key].status == "failed"
    assert [r["action"] for r in ledger.retried] == ["already_done", "failed"]
    for key in (first.key, second.key):
        assert (out / "status" / f"{key}.json").read_bytes() == before[f"{key}.json"]
    assert json.loads((out / "status" / f"{third.key}.json").read_text())["status"] == "failed"
    assert ledger.pairs == 3


def test_an_error_crosses_a_process_boundary_with_its_class_and_code():
    """What a --procs child or a Ray actor reports when its annotator cannot be built is raised again by the
    driver as the same error: a missing weights file stays `weights_not_found` (exit 2 with that code), a
    custom code survives, and anything else is `worker_failed` naming who failed."""
    import pickle

    from sigma.errors import InputError, SigmaError, WeightsNotFoundError, error_record, raise_error_record

    cases = [(WeightsNotFoundError("no file at /w"), WeightsNotFoundError, "weights_not_found", "no file at /w"),
             (InputError("bad", code="path_outside_root"), InputError, "path_outside_root", "bad"),
             (ValueError("boom"), SigmaError, "worker_failed", "proc 1 could not start: ValueError: boom")]
    for exc, cls, code, message in cases:
        info = pickle.loads(pickle.dumps(error_record(exc)))          # what the pipe or Ray carries
        with pytest.raises(SigmaError) as caught:
            raise_error_record(info, "proc 1 could not start")
        assert type(caught.value) is cls and caught.value.code == code and caught.value.message == message


def test_a_driver_side_write_error_is_raised_not_taken_for_a_dead_child():
    """With --procs on a full disk the driver's own status write (a shard failed in a child) raised OSError
    inside `_drain`, which took it for the child's pipe breaking: the child was buried and the shard in
    hand dropped, so the run waited for it for ever. Now only the pipe's errors mean a death."""
    import multiprocessing

    from sigma.batch.procs import _Child, _drain

    class FullDisk:
        queue: list = []

        def lost(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    class Pool:
        def bury(self, child):
            raise AssertionError("a healthy child was buried")

    ours, theirs = multiprocessing.Pipe()
    child = _Child("inference process 1", process=None, conn=ours, ready=True,
                   shard=Shard(0, "s0", {}, 2))
    theirs.send(("shard_error", "writer failed: [Errno 28] No space left on device"))
    with pytest.raises(OSError) as err:
        _drain(child, FullDisk(), Pool())
    assert err.value.errno == 28 and child.alive
    ours.close()
    theirs.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_stopped_child_is_taken_as_hung_and_its_shard_runs_elsewhere(corpus, slow_reference, tmp_path,
                                                                        monkeypatch):
    """A process that holds a shard and says nothing (SIGSTOP here; a deadlock in native code alike) kept the
    run waiting for ever: a dead child is noticed, a silent one was not. After `stall_s` without a word it is
    killed and its shard goes to another process: same bytes as the one-process run.
    The child stopped is one found inside a batch (`stop_a_child_inside_a_shard`): the first spawned one, stopped
    once a status existed, could hold no shard on a loaded machine (still starting, or between two shards). And
    `stall_s` is 15 s, not 3: it also bounds a child's start-up, and under a load average of 11 on 2 cores a working
    child's start or first shard (its imports, the first parquet write) went 3 s without a word and was taken as hung
    too."""
    busy = tmp_path / "busy"
    busy.mkdir()
    monkeypatch.setenv("SIGMA_TEST_BUSY_DIR", str(busy))     # slow-diff: busy/<pid> while inside a batch
    out, box = corpus / "stopped-child", {}
    thread = threading.Thread(target=lambda: box.update(s=run_batch(
        cfg_for(corpus / "set", procs=2, stall_s=15, **SLOW), out, progress=False)), daemon=True)
    thread.start()
    victim = stop_a_child_inside_a_shard(busy)
    thread.join(180)
    assert not thread.is_alive(), "the run waited for the stopped process"
    summary = box["s"]
    assert summary.done_now == 5 and summary.failed_now == 0
    hung = [r for r in summary.retried if "taken as hung" in r["reason"]]
    # stopped inside a batch, so before its shard was published: that shard is retried, never "already_done"
    assert len(hung) == 1 and hung[0]["action"] == "retried", summary.retried
    assert not alive(victim)
    assert digests(out) == digests(slow_reference)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_stopped_decode_worker_fails_its_shards_instead_of_hanging_and_resume_finishes(corpus, tmp_path):
    """`--workers N` decode processes: one that gives no result for stall_s (SIGSTOP here) kept the run waiting
    for ever on its future. Now the pool is replaced, the shards it held are failed, the run ends, and
    `--resume` finishes every pair."""
    out = tmp_path / "stopped-decoder"
    first, decoders = stop_children_mid_run(cfg_for(corpus / "set", workers=1, stall_s=3, **SLOW), out)
    assert first.failed_now >= 1 and first.done_now + first.failed_now == 5
    assert all(not alive(pid) for pid in decoders)
    again = run_batch(cfg_for(corpus / "set", workers=1, **SLOW), out, resume=True, progress=False)
    assert again.failed_now == 0 and first.done_now + again.done_now == 5


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_decode_worker_hung_in_a_call_is_killed_and_a_new_pool_decodes(corpus):
    """A decode worker that never returns (here: blocked in a 1-hour sleep inside the worker, as a codec deadlock
    blocks; not stopped by a signal from outside) is killed when its pool is replaced. The pool's workers are now
    found through the processes its multiprocessing context started (`RecordingContext`, public `Process.kill`),
    not the executor's private `_processes` map; the behaviour is the same: the hung process dies, the work it held
    fails at once instead of waiting, and the new pool decodes."""
    from concurrent.futures import TimeoutError as FuturesTimeout

    from sigma.batch.pipeline import Pipeline

    pipeline = Pipeline(cfg_for(corpus / "set", workers=1))
    try:
        worker = pipeline.pool.submit(os.getpid).result(timeout=120)
        hung = pipeline.pool.submit(time.sleep, 3600)
        with pytest.raises(FuturesTimeout):
            hung.result(timeout=0.5)
        assert alive(worker)
        pipeline._replace_hung_pool()
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(worker), "the hung decode worker was not killed"
        with pytest.raises(Exception) as failed:               # BrokenProcessPool: not another hour of waiting
            hung.result(timeout=10)
        assert not isinstance(failed.value, FuturesTimeout), failed.value
        fresh = pipeline.pool.submit(os.getpid).result(timeout=120)
        assert fresh != worker and alive(fresh)
    finally:
        pipeline.close()


@pytest.mark.parametrize("procs", [1, 2])
def test_a_shard_whose_reader_gives_up_is_a_recorded_failure_and_resume_runs_it(tmp_path, capsys, procs):
    """A corpus reader (a plugin's) that gives up mid-shard with sys.exit() or a KeyboardInterrupt of its own ended
    the pipeline's reading thread: its shard had "no result from the pipeline" and no status file, so it showed as
    pending with its reason nowhere on disk; one process also left every later shard unread and exited 0. Now each
    such shard is failed like any other: OUT/status/<shard>.json holds the reason, `sigma batch status` counts it
    failed, and `--resume` runs it again."""
    import service_plugins  # noqa: F401 - registers the exit-jsonl reader

    pairs = list(synthetic_pairs(8, size=32))
    pairs[2]["instruction"], pairs[4]["instruction"] = "exit here", "interrupt here"
    manifest = write_pairs_jsonl(tmp_path / "set", pairs)
    stop = manifest.parent / "exit-reader.stop"
    stop.write_text("")
    out = tmp_path / "run"
    args = ["batch", "run", str(manifest.parent), "--out", str(out), "--format", "exit-jsonl", "--plugin",
            "service_plugins", "--annotator", "pixel-diff", "--shard-size", "2", "--workers", "0", "--procs",
            str(procs), "--no-progress"]
    assert main([*args, "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    keys = [f"set__pairs.r{i:07d}-{i + 1:07d}" for i in range(0, 8, 2)]
    # one process reads the shards in one thread, so the interrupt stops the last shard's reading too; with
    # --procs each shard is read by a pipeline of its own
    failed = keys[1:] if procs == 1 else keys[1:3]
    assert [f["shard"] for f in summary["failed"]] == failed
    assert summary["failed_now"] == len(failed) and summary["done_now"] == 4 - len(failed)
    reasons = {key: json.loads((out / "status" / f"{key}.json").read_text()) for key in failed}
    assert all(st["status"] == "failed" and st["run_hash"] == summary["run_hash"] for st in reasons.values())
    assert reasons[keys[1]]["error"] == "the corpus reader called sys.exit(4)"
    assert "no result from the pipeline" in reasons[keys[2]]["error"]
    assert "KeyboardInterrupt: the reader's own" in reasons[keys[2]]["error"]
    assert (summary["status"]["failed"], summary["status"]["pending"]) == (len(failed), 0)

    stop.unlink()                        # the reader reads again: --resume runs the failed shards, and only them
    assert main([*args, "--resume", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["skipped"], again["done_now"], again["failed_now"]) == (4 - len(failed), len(failed), 0)
    assert (again["status"]["done"], again["status"]["pairs"]) == (4, 8)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_lost_attempts_a_run_lists_are_bounded_like_its_failed_shards(tmp_path, capsys):
    """`retried` had one record for every attempt lost with its process, however many: a model that kills its
    process on every shard (out of memory at each load) wrote `attempts` records a shard, all of them, to stdout and
    summary.json. Now the first --failed-limit N, as for the failed shards, and `retried_omitted` counts the rest."""
    import service_plugins  # noqa: F401 - registers kill-diff

    pairs = list(synthetic_pairs(6, size=32))
    pairs[2]["instruction"] = pairs[4]["instruction"] = "die here"    # 2 shards whose child is SIGKILLed each time
    manifest = write_pairs_jsonl(tmp_path / "set", pairs)
    out = tmp_path / "run"
    # --procs 2 and never fewer than 2 shards to run: one process would run kill-diff in this one
    args = ["batch", "run", str(manifest.parent), "--out", str(out), "--plugin", "service_plugins", "--annotator",
            "kill-diff", "--shard-size", "2", "--workers", "0", "--procs", "2", "--set", "attempts=2",
            "--no-progress", "--json"]
    assert main([*args, "--failed-limit", "3"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done_now"], summary["failed_now"], summary["failed_shards_omitted"]) == (1, 2, 0)
    assert len(summary["retried"]) == 3 and summary["retried_omitted"] == 1      # 2 shards x 2 attempts lost
    assert all("signal 9" in r["reason"] and r["action"] in ("retried", "failed") for r in summary["retried"])
    assert json.loads((out / "summary.json").read_text())["retried"] == summary["retried"]

    assert main([*args, "--failed-limit", "0", "--resume"]) == 1          # none listed, all counted
    again = json.loads(capsys.readouterr().out)
    assert (again["retried"], again["retried_omitted"]) == ([], 4)
    assert (again["failed"], again["failed_shards_omitted"]) == ([], 2)
    assert main([*args, "--resume"]) == 1                                  # the default: 100, so all of them
    assert len(json.loads(capsys.readouterr().out)["retried"]) == 4


# `sigma batch run` whose run.json is replaced by another run's record (another run_hash, another threshold) the
# moment after it is written — inside the driver, just before config.yaml is written beside it (an audit hook on
# that open), so before any inference process starts. The record the driver wrote is kept as ORIGINAL.
_REPLACE_RUN_RECORD = r'''
import json, os, sys
def main_():
    out, original = os.path.realpath(sys.argv[1]), sys.argv[2]
    busy = []
    def hook(event, args):
        if busy or event != "open" or not isinstance(args[1], str) or "w" not in args[1]:
            return
        path = os.path.realpath(os.fsdecode(args[0]))   # config.yaml's temporary file, whatever its name
        if os.path.dirname(path) != out or "config.yaml" not in os.path.basename(path):
            return
        busy.append(1)
        run_file = os.path.join(out, "run.json")
        with open(run_file, "rb") as handle:
            data = handle.read()
        with open(original, "wb") as handle:
            handle.write(data)
        record = json.loads(data)
        record["run_hash"] = "0123456789ab"
        record["config"]["threshold"] = 0.9
        with open(run_file + ".other", "w") as handle:
            json.dump(record, handle)
        os.replace(run_file + ".other", run_file)
    sys.addaudithook(hook)
    from sigma.cli import main
    sys.exit(main(sys.argv[3:]))
if __name__ == "__main__":       # not again in a spawned child, which imports this file as __mp_main__
    main_()
'''


def test_inference_processes_take_the_run_hash_from_the_driver_not_run_json_again(corpus, tmp_path):
    """Each --procs child read run.json again, whole (up to ~15 MB a process and respawn), for its run_hash alone,
    with nothing checked: a run.json replaced after the driver read and checked it had the children write the
    driver's config under the other record's hash. They now take the driver's hash with its config: every shard
    file and status is named by the hash of the record the run was planned (and checked) with."""
    out, original = tmp_path / "run", tmp_path / "original.json"
    script = tmp_path / "replace_run_record.py"
    script.write_text(_REPLACE_RUN_RECORD)
    args = ["batch", "run", str(corpus / "set"), "--out", str(out), "--procs", "2", "--shard-size", "3",
            "--annotator", "pixel-diff", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(out), str(original), *args], capture_output=True,
                          text=True, timeout=300, env=env, check=False)
    planned = json.loads(original.read_text())
    assert json.loads((out / "run.json").read_text())["run_hash"] == "0123456789ab", proc.stderr  # it was replaced
    shard_files = sorted(p.name for p in (out / "shards").glob("*.parquet"))
    assert shard_files == sorted(f"{s['key']}.{planned['run_hash']}.parquet" for s in planned["shards"]), proc.stderr
    statuses = [json.loads(p.read_text()) for p in (out / "status").glob("*.json")]
    assert len(statuses) == len(planned["shards"])
    assert {s["run_hash"] for s in statuses} == {planned["run_hash"]} and {s["status"] for s in statuses} == {"done"}


def test_a_killed_decode_process_is_said_killed_while_another_thread_reaps_it():
    """The executor's manager thread joins a broken pool's processes as the futures learn of the break, so the
    death was read while another thread reaped it: of two `waitpid`s on one child only one gets its status, and the
    other saw `exitcode` None. The fleet worker then said "a decode process died (how is unknown)" (it failed once in
    test_batch_fleet under load). Here a thread waits in `join` on each process when it is killed, as that manager
    does; each death must still be said as a SIGKILL (without the wait for a settled code, about one in seven
    were not)."""
    import multiprocessing.connection

    from sigma.batch.pipeline import RecordingContext

    unknown = 0
    for _ in range(30):
        context = RecordingContext()
        process = context.Process(target=time.sleep, args=(60,))
        process.start()
        reaper = threading.Thread(target=process.join)
        reaper.start()
        time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        multiprocessing.connection.wait([process.sentinel], 30)
        said = context.deaths()
        reaper.join(30)
        assert said in ([], [f"pid {process.pid} killed by SIGKILL"]), said
        unknown += not said
    assert unknown == 0, f"{unknown} of 30 deaths said as unknown"
