"""Fleet mode on a real redis-server: submit shard tasks, consume them with batch workers, reclaim the
tasks of a worker that died, dead-letter a poison task, and get the same bytes as a local run."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from servicekit import STARTUP_S

from sigma.batch import BatchConfig, run_batch
from sigma.batch.layout import RunDir
from sigma.cli import main
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl
from sigma.service.fleet import _run_task_ids, make_queue, queue_status, run_batch_worker, submit_run
from sigma.service.keys import Keys

pytestmark = pytest.mark.redis


@pytest.fixture
def corpus(tmp_path) -> Path:
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(18, size=48))
    return tmp_path / "set"


def cfg_for(path: Path) -> BatchConfig:
    return BatchConfig.model_validate({"input": {"path": str(path), "shard_size": 3}, "annotator": "pixel-diff",
                                       "workers": 0})


def prefix_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "shards").glob("*.parquet")}


def two_workers_until_idle(url: str, prefix: str) -> list:
    """Workers w1 and w2 in threads until the queue is empty; their results."""
    results: list = []
    threads = [threading.Thread(target=lambda c=c: results.append(
        run_batch_worker(url, prefix, c, block_ms=50, exit_when_idle=True))) for c in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_submit_and_two_workers_match_a_local_run(redis_server, corpus, tmp_path):
    prefix = prefix_name()
    info = submit_run(cfg_for(corpus), tmp_path / "fleet", redis_server.url, prefix)
    assert info["queued"] == 6 and info["skipped"] == 0
    status = queue_status(redis_server.url, prefix)
    assert status["queued"] == 6 and status["in_progress"] == 0
    results = two_workers_until_idle(redis_server.url, prefix)
    assert sum(r.done for r in results) == 6 and sum(r.failed + r.dead for r in results) == 0
    assert queue_status(redis_server.url, prefix)["queued"] == 0
    run_batch(cfg_for(corpus), tmp_path / "local", progress=False)
    assert shard_bytes(tmp_path / "fleet") == shard_bytes(tmp_path / "local")
    # re-submitting a finished run queues nothing
    assert submit_run(cfg_for(corpus), tmp_path / "fleet", redis_server.url, prefix)["queued"] == 0


def test_dead_worker_tasks_are_reclaimed_and_poison_is_dead_lettered(redis_server, corpus, tmp_path, capsys):
    prefix = prefix_name()
    keys = Keys(prefix)
    submit_run(cfg_for(corpus), tmp_path / "fleet", redis_server.url, prefix)
    client = redis_server.client()
    # a worker that took two tasks and died: they stay pending under its name
    ghost = make_queue(client, keys, "ghost", lease_ms=200)
    taken = ghost.read(2, None)
    assert len(taken) == 2 and ghost.pending_count() == 2
    # a poison task: its run folder does not exist
    ghost.add({"run_dir": str(tmp_path / "nowhere"), "shard": "x", "run_hash": "0"})
    time.sleep(0.3)   # the ghost's lease runs out
    stats = run_batch_worker(redis_server.url, prefix, "w1", lease_ms=200, block_ms=50, reclaim_interval_ms=50,
                             exit_when_idle=True)
    assert stats.done == 6 and stats.dead == 1 and "nowhere" in stats.errors[0]
    q = make_queue(client, keys, "check")
    assert q.depth() == 0 and q.pending_count() == 0 and q.dead_count() == 1
    assert q.dead_entries()[0].fields["run_dir"].endswith("nowhere")
    assert main(["batch", "status", str(tmp_path / "fleet"), "--redis", redis_server.url, "--key-prefix", prefix]) == 0
    out = capsys.readouterr().out
    assert "6/6 shards done" in out and "dead=1" in out


@pytest.mark.parametrize(("annotator", "option", "missing"), [
    ("sigma-lite", "weights", "models/typo.safetensors"),
    ("feature-diff", "backbone_weights", "models/dinov2-typo"),
])
def test_sigma_batch_submit_refuses_options_naming_weights_that_are_not_there(redis_server, corpus, tmp_path,
                                                                             annotator, option, missing):
    """`sigma batch submit --set options.weights=PATH` (or feature-diff's `options.backbone_weights`) with nothing at
    PATH planned the run and queued its shards, and every worker's load failed into dead letters. Now the submit fails
    (exit 2, `weights_not_found`, naming the option and the path), nothing planned in --out and nothing queued; the
    same check `POST /v1/batches` makes (`submit_run`)."""
    prefix = prefix_name()
    env = {**os.environ, "SIGMA_REDIS_URL": redis_server.url, "SIGMA__REDIS__KEY_PREFIX": prefix}
    missing = tmp_path / missing
    proc = subprocess.run([sys.executable, "-m", "sigma", "batch", "submit", str(corpus), "--out",
                           str(tmp_path / "fleet"), "--annotator", annotator, "--shard-size", "3", "--set",
                           f"options.{option}={missing}"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[weights_not_found]" in proc.stderr and f"options.{option}: {missing} does not exist" in proc.stderr, \
        proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not RunDir(tmp_path / "fleet").exists()
    assert redis_server.client().xlen(Keys(prefix).batch_tasks()) == 0


def test_sigma_worker_batch_cli_consumes_and_stops_on_sigterm(redis_server, corpus, tmp_path):
    # A non-default prefix reaches both sides through the one settings model: no --stream to hide a drift.
    stream_prefix = prefix_name()
    env = {**os.environ, "SIGMA_REDIS_URL": redis_server.url, "SIGMA__REDIS__KEY_PREFIX": stream_prefix}
    mp = pytest.MonkeyPatch()
    mp.setenv("SIGMA_REDIS_URL", redis_server.url)
    mp.setenv("SIGMA__REDIS__KEY_PREFIX", stream_prefix)
    try:
        assert main(["batch", "submit", str(corpus), "--out", str(tmp_path / "fleet"), "--annotator", "pixel-diff",
                     "--shard-size", "3", "--workers", "0"]) == 0
    finally:
        mp.undo()
    proc = subprocess.Popen([sys.executable, "-m", "sigma", "worker", "--batch", "--set", "queue.block_ms=100"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300       # ends when the 6 are done: a worker's imports alone take long on load
        while time.monotonic() < deadline and len(list((tmp_path / "fleet" / "status").glob("*.json"))) < 6:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert "6 shard(s) done" in output
    status = queue_status(redis_server.url, stream_prefix)
    assert status["stream"] == f"{stream_prefix}:batch:tasks"
    assert status["queued"] == 0 and status["live_workers"] == 0


def test_a_dead_lettered_shard_shows_as_failed_with_its_reason(redis_server, corpus, tmp_path, capsys):
    """Issue 11 item 7: a shard task given up on (dead-lettered) is "failed" in the run's status, with the
    reason, instead of "pending" for ever; a shard done meanwhile is never overwritten by it."""
    from sigma.batch.layout import RunDir
    from sigma.service.fleet import FleetHandler
    from sigma.service.queue import Entry

    prefix = prefix_name()
    out = tmp_path / "fleet"
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": 6}, "annotator": "pixel-diff",
                                      "workers": 0})
    tasks = {"lease_ms": 200, "block_ms": 50, "reclaim_interval_ms": 50, "max_deliveries": 2}
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 3
    first = run_batch_worker(redis_server.url, prefix, "w1", max_tasks=1, **tasks)
    assert first.done == 1
    corpus.rename(tmp_path / "moved")             # the corpus vanished: every later delivery fails the same way
    stats = run_batch_worker(redis_server.url, prefix, "w2", exit_when_idle=True, **tasks)
    assert stats.dead == 2 and stats.done == 0
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"], summary["pending"]) == (1, 2, 0), summary
    for failed in summary["failed_shards"]:
        assert failed["error"].startswith("dead-lettered after 2 deliveries: [shard_failed]"), failed
        assert str(corpus) in failed["error"], failed   # the underlying reason names the missing corpus
    assert main(["batch", "status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1/3 shards done, 2 failed, 0 pending" in printed and printed.count("failed: ") == 2
    # a dead letter arriving late for a shard another worker finished does not clobber it
    done_shard = next(s for s in RunDir(out).shards() if RunDir(out).is_done(s, summary["run_hash"]))
    late = Entry("0-1", {"run_dir": str(out.resolve()), "shard": done_shard.key, "run_hash": summary["run_hash"]},
                 deliveries=3)
    assert FleetHandler("late").on_dead(late, None)["code"] == "worker_lost"
    assert RunDir(out).status(done_shard)["status"] == "done" and RunDir(out).summary()["done"] == 1


def test_a_run_can_be_submitted_again_while_fleet_workers_hold_its_shards(redis_server, corpus, tmp_path):
    """Submitting a planned run again (to queue a dead-lettered shard, or tasks Redis lost) while fleet workers
    write other shards of it: it used to be refused (run_locked) for as long as any worker held a shard, since
    the submission held the folder exclusively; it now shares it as the workers do and leaves their temporary
    files alone. A local run still excludes it."""
    from sigma.batch.layout import RunDir
    from sigma.errors import InputError

    prefix = prefix_name()
    out = tmp_path / "fleet"
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 6
    in_the_making = out / "shards" / ".set__pairs.r0000000-0000002.x.1234.abcd.tmp"
    in_the_making.parent.mkdir(parents=True, exist_ok=True)
    in_the_making.write_bytes(b"a worker's shard file, half written")
    with RunDir(out).locked(exclusive=False):             # what `sigma worker --batch` holds while it writes a shard
        again = submit_run(cfg_for(corpus), out, redis_server.url, prefix)
    assert again["queued"] == 0 and again["already_queued"] == 6 and again["run_hash"] is not None
    assert in_the_making.exists()                          # not swept from under the worker
    with RunDir(out).locked(), pytest.raises(InputError) as refused:     # what `sigma batch run` holds
        submit_run(cfg_for(corpus), out, redis_server.url, prefix)
    assert refused.value.code == "run_locked"


def test_a_worker_reads_a_runs_plan_once_not_once_per_task(redis_server, corpus, tmp_path, monkeypatch):
    """Every task parsed the whole run.json (twice) and built every Shard: with 50,000 one-pair shards (15 MB)
    that was 1.4 s per task for 30 ms of work, quadratic in the shard count. The plan is read once per worker,
    and again only when run.json is another file."""
    from sigma.batch.layout import RunDir
    from sigma.service.fleet import PermanentTaskError, locate_task

    prefix = prefix_name()
    out = tmp_path / "fleet"
    info = submit_run(cfg_for(corpus), out, redis_server.url, prefix)
    assert info["queued"] == 6
    loads = []
    real_load = RunDir.load
    monkeypatch.setattr(RunDir, "load", lambda self: loads.append(self.root) or real_load(self))
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True)
    assert stats.done == 6 and stats.failed == 0
    assert len(loads) <= 1, loads                     # 12 before: two per task
    run_batch(cfg_for(corpus), tmp_path / "local", progress=False)
    assert shard_bytes(out) == shard_bytes(tmp_path / "local")
    # run.json replaced by another run's (a new file): read again, and the old run's task is refused
    record = real_load(RunDir(out))
    fields = {"run_dir": str(out.resolve()), "shard": record["shards"][0]["key"], "run_hash": info["run_hash"]}
    assert locate_task(fields)[2].key == fields["shard"]
    RunDir(out).write_run({**record, "run_hash": "another"})
    with pytest.raises(PermanentTaskError, match="now holds run another"):
        locate_task(fields)


def test_status_says_when_redis_lost_a_runs_tasks_and_submitting_again_requeues_them(redis_server, corpus,
                                                                                      tmp_path, capsys):
    """Redis restarted without its data (or flushed) mid-run: the workers carry on, but the run's remaining tasks
    are gone, so it stayed "pending" for ever with idle workers and a queue that said 0 of everything (and
    serves every run, so it could not say whose tasks it held). The status now counts the run's own tasks and
    says which pending shards have none, and what to do."""
    prefix = prefix_name()
    out = tmp_path / "fleet"
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 6
    assert run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, max_tasks=2).done == 2
    status = ["batch", "status", str(out), "--redis", redis_server.url, "--key-prefix", prefix]
    assert main([*status, "--json"]) == 0
    queue = json.loads(capsys.readouterr().out)["queue"]
    assert (queue["run_tasks"], queue["unqueued"]) == (4, 0), queue
    redis_server.client().delete(Keys(prefix).batch_tasks())          # what a restart without persistence does
    assert main(status) == 0
    printed = capsys.readouterr().out
    assert "4 pending shard(s) have no task" in printed and "submit the run again" in printed, printed
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 4
    assert queue_status(redis_server.url, prefix, run=RunDir(out))["unqueued"] == 0
    run_hash, pending = RunDir(out).pending_keys()
    tasks = _run_task_ids(redis_server.client(), Keys(prefix).batch_tasks(), str(out.resolve()), run_hash, page=3)
    count, keys = len(tasks), set(tasks.values())
    assert count == 4 and keys == set(pending)                         # read a page at a time, none twice
    assert run_batch_worker(redis_server.url, prefix, "w2", block_ms=50, exit_when_idle=True).done == 4
    assert RunDir(out).summary()["done"] == 6


def test_a_submission_sent_twice_queues_each_shard_once(redis_server, corpus, tmp_path):
    """A client retrying a slow POST /v1/batches (or a user running `sigma batch submit` twice) queued every
    pending shard a second time, so two workers could compute one shard side by side. A shard whose task is
    still on the stream (queued or held by a worker) is not queued again; one whose task is gone is."""
    prefix = prefix_name()
    out = tmp_path / "fleet"
    first = submit_run(cfg_for(corpus), out, redis_server.url, prefix)
    again = submit_run(cfg_for(corpus), out, redis_server.url, prefix)
    assert (first["queued"], again["queued"], again["already_queued"], again["skipped"]) == (6, 0, 6, 0), again
    assert queue_status(redis_server.url, prefix)["queued"] == 6
    client = redis_server.client()
    holder = make_queue(client, Keys(prefix), "holder")
    held = holder.read(1, None)                                              # one task held by a worker
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 0
    holder.ack([held[0].id])                                                 # its task gone, shard not done
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 1
    results = two_workers_until_idle(redis_server.url, prefix)
    assert sum(r.done for r in results) == 6 and sum(r.skipped for r in results) == 0, results


def test_a_worker_reclaims_one_dead_workers_task_at_a_time(redis_server, corpus, tmp_path):
    """A reclaim took up to 16 tasks of dead workers at once; the worker then ran those shards one after another
    (minutes each) with their leases kept alive, so idle workers could not take them. It takes one, as it reads
    one; the others stay claimable, their delivery count untouched."""
    prefix = prefix_name()
    keys = Keys(prefix)
    submit_run(cfg_for(corpus), tmp_path / "fleet", redis_server.url, prefix)
    client = redis_server.client()
    ghost = make_queue(client, keys, "ghost", lease_ms=200)
    assert len(ghost.read(3, None)) == 3                   # a worker took three tasks and died
    time.sleep(0.3)
    stats = run_batch_worker(redis_server.url, prefix, "w1", lease_ms=200, block_ms=50, reclaim_interval_ms=50,
                             max_tasks=1)
    assert stats.done == 1, stats                          # 3 before: the whole reclaim, one shard after another
    rows = client.xpending_range(keys.batch_tasks(), "sigma-batch", min="-", max="+", count=10)
    held = [(row["consumer"].decode(), row["times_delivered"]) for row in rows]
    assert held == [("ghost", 1), ("ghost", 1)], rows      # the other two: still the dead worker's, claimable


def test_a_kept_plan_is_checked_against_the_disk_before_a_task_is_given_up_on(redis_server, corpus, tmp_path):
    """The plan a worker keeps is keyed by run.json's inode, size and mtime; a run folder made again at once on a
    filesystem with coarse mtimes can match all three. A task that does not fit the kept plan is checked against
    the file before it is dead-lettered."""
    import json as json_lib
    import os as os_lib

    from sigma.batch.layout import RunDir
    from sigma.service.fleet import locate_task

    prefix = prefix_name()
    out = tmp_path / "fleet"
    info = submit_run(cfg_for(corpus), out, redis_server.url, prefix)
    record = RunDir(out).load()
    fields = {"run_dir": str(out.resolve()), "shard": record["shards"][0]["key"], "run_hash": info["run_hash"]}
    assert locate_task(fields)[1]["run_hash"] == info["run_hash"]           # kept
    run_file = RunDir(out).run_file
    st = os_lib.stat(run_file)
    other = "f" * len(info["run_hash"])
    text = run_file.read_text().replace(json_lib.dumps(info["run_hash"]), json_lib.dumps(other))
    with open(run_file, "r+") as handle:                                     # same inode, same size ...
        handle.write(text)
    os_lib.utime(run_file, ns=(st.st_atime_ns, st.st_mtime_ns))              # ... same mtime
    assert locate_task({**fields, "run_hash": other})[1]["run_hash"] == other


def test_a_task_naming_an_impossible_path_is_dead_lettered_without_ending_the_worker(redis_server, tmp_path):
    """A damaged task (a NUL byte in run_dir) raised ValueError where the worker dead-letters it: the worker ended
    (a bug ends it, crash-only), and every restarted worker reclaimed the entry and ended again."""
    prefix = prefix_name()
    client = redis_server.client()
    make_queue(client, Keys(prefix), "submitter").add({"run_dir": str(tmp_path / "a\x00b"), "shard": "s",
                                                       "run_hash": "0"})
    stats = run_batch_worker(redis_server.url, prefix, "w1", lease_ms=200, block_ms=50, reclaim_interval_ms=50,
                             exit_when_idle=True)
    assert stats.dead == 1 and "bad task" in stats.errors[0], stats
    q = make_queue(client, Keys(prefix), "check")
    assert q.depth() == 0 and q.pending_count() == 0 and q.dead_count() == 1


def test_a_run_json_briefly_unreadable_is_read_again_not_dead_lettered(redis_server, corpus, tmp_path):
    """A worker that found run.json half written (a write seen over NFS before it was whole) or missing for a
    moment (being replaced) dead-lettered the task at once, and the shard was failed for good. It reads the file
    again with backoff, and the shard is done once the file is whole."""
    prefix = prefix_name()
    out = tmp_path / "fleet"
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 6
    run_file = RunDir(out).run_file
    whole = run_file.read_bytes()
    run_file.write_bytes(whole[: len(whole) // 2])                   # torn: what a reader saw mid-write

    def mend() -> None:
        time.sleep(0.4)
        run_file.unlink()                                            # then gone for a moment (being replaced) ...
        time.sleep(0.3)
        run_file.write_bytes(whole)                                  # ... and whole again

    mender = threading.Thread(target=mend)
    mender.start()
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True, run_read_retry_s=5)
    mender.join()
    assert (stats.done, stats.dead, stats.failed) == (6, 0, 0), stats
    assert RunDir(out).summary()["done"] == 6


def test_a_run_json_that_stays_unreadable_goes_through_the_lease_and_is_dead_lettered_with_why(redis_server, corpus,
                                                                                            tmp_path):
    """A run.json that no retry mends is given back through the lease each time (a delivery each), and dead-lettered
    after max_deliveries with the code `run_unreadable` and what was wrong; a folder that is gone is still bad_task at
    once (the test above it)."""
    prefix = prefix_name()
    out = tmp_path / "fleet"
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": 18}, "annotator": "pixel-diff",
                                      "workers": 0})
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 1
    RunDir(out).run_file.write_bytes(b'{"run_hash": "')
    stats = run_batch_worker(redis_server.url, prefix, "w1", lease_ms=200, block_ms=50, reclaim_interval_ms=50,
                             max_deliveries=2, exit_when_idle=True, run_read_retry_s=0.2)
    assert (stats.failed, stats.dead, stats.done) == (2, 1, 0), stats
    q = make_queue(redis_server.client(), Keys(prefix), "check")
    assert q.depth() == 0 and q.pending_count() == 0 and q.dead_count() == 1
    record = json.loads(q.dead_entries()[0].fields["error"])
    assert record["code"] == "run_unreadable" and "unreadable for 0.2 s ([bad_run]" in record["message"], record


def test_a_run_folder_that_links_out_of_itself_is_refused_and_nothing_is_read_or_written_through_it(
        redis_server, corpus, tmp_path):
    """A run folder from elsewhere (a shared volume) whose run.json, shards/ or status/ is a symbolic link made the
    worker read or write outside the folder: a run.json linked to another run's record was worked on, a `shards/`
    linked to /elsewhere had the shard files written there. Refused (link_outside_run); the task is dead-lettered
    with why, and nothing lands outside."""
    from sigma.errors import InputError

    prefix = prefix_name()
    out = tmp_path / "fleet"
    info = submit_run(cfg_for(corpus), out, redis_server.url, prefix)
    assert info["queued"] == 6
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert not (out / "shards").exists()                      # nothing run yet
    (out / "shards").symlink_to(elsewhere)                    # writers would put the shard files there
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True)
    assert (stats.dead, stats.done) == (6, 0), stats
    assert "link_outside_run" in stats.errors[0], stats.errors
    assert list(elsewhere.iterdir()) == []
    # run.json itself a link to a record outside the folder: read by no one
    (out / "shards").unlink()
    outside = tmp_path / "outside.json"
    outside.write_bytes(RunDir(out).run_file.read_bytes())
    RunDir(out).run_file.unlink()
    RunDir(out).run_file.symlink_to(outside)
    with pytest.raises(InputError) as refused:
        RunDir(out).load()
    assert refused.value.code == "link_outside_run"
    assert main(["batch", "status", str(out)]) == 2
    # a link that stays inside the folder is fine
    RunDir(out).run_file.unlink()
    (out / "record.json").write_bytes(outside.read_bytes())
    RunDir(out).run_file.symlink_to(out / "record.json")
    assert RunDir(out).load()["run_hash"] == info["run_hash"]


def test_a_shard_key_that_is_a_path_is_refused(tmp_path, corpus):
    """A run.json from elsewhere naming a shard `../../x` had its shard and status files written outside the run
    folder by every worker and local run that took it."""
    from sigma.errors import InputError

    out = tmp_path / "run"
    run_batch(cfg_for(corpus), out, progress=False)
    record = RunDir(out).load()
    record["shards"][0]["key"] = "../../escaped"
    RunDir(out).write_run(record)
    with pytest.raises(InputError, match="not a plain file name") as refused:
        RunDir(out).load()
    assert refused.value.code == "bad_run"


def counting_client(url: str, fail_from: int | None = None, lose_first_reply: bool = False):
    """A real redis-py client on the real server whose connections count round trips (a packed send is one
    request; a pipeline or a script call with many tasks is one), and can fail every task-adding script call from
    the `fail_from`-th on (Redis gone mid-submit), or lose the reply to the first one (a timeout after Redis ran
    it: redis-py sends it again)."""
    import redis

    state = {"round_trips": 0, "chunks": 0, "lost": False}

    class Counting(redis.Connection):
        def send_packed_command(self, command, check_health=True):
            state["round_trips"] += 1
            data = b"".join(command) if isinstance(command, list) else command
            self.adding = b"EVALSHA" in data and b":submit:" in data
            if self.adding:
                state["chunks"] += 1
                if fail_from is not None and state["chunks"] >= fail_from:
                    raise redis.ConnectionError("injected: Redis went away")
            return super().send_packed_command(command, check_health)

        def read_response(self, *args, **kwargs):
            response = super().read_response(*args, **kwargs)
            if lose_first_reply and getattr(self, "adding", False) and not state["lost"]:
                state["lost"] = True
                raise redis.TimeoutError("injected: the reply was lost")
            return response

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from sigma.service.fleet import ADD_TASKS

    redis.Redis.from_url(url).script_load(ADD_TASKS)     # as after any earlier submission: no NOSCRIPT to count
    return redis.Redis.from_url(url, connection_class=Counting, retry=Retry(NoBackoff(), 1)), state


def test_a_run_of_many_shards_is_submitted_in_few_round_trips(redis_server, tmp_path):
    """One XADD (a round trip) per shard: 50,000 shards were 50,000 round trips. The tasks go in chunks, one script
    call each: 120 shards cost the round trips 12 do (the connection's handshake, the group, one read of the
    stream)."""
    trips = {}
    for pairs in (12, 120):
        write_pairs_jsonl(tmp_path / f"set{pairs}", synthetic_pairs(pairs, size=8))
        cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / f"set{pairs}"), "shard_size": 1},
                                          "annotator": "pixel-diff", "workers": 0})
        prefix = prefix_name()
        client, state = counting_client(redis_server.url)
        out = tmp_path / f"fleet{pairs}"
        assert submit_run(cfg, out, redis_server.url, prefix, client=client)["queued"] == pairs
        trips[pairs] = state["round_trips"]
        run_hash, pending = RunDir(out).pending_keys()
        tasks = _run_task_ids(redis_server.client(), Keys(prefix).batch_tasks(), str(out.resolve()), run_hash)
        count, shards = len(tasks), set(tasks.values())
        assert count == pairs and shards == set(pending)
    assert trips[120] == trips[12] < 10, trips                    # 120+ before


def test_a_submit_that_redis_fails_half_way_says_how_far_it_got_and_a_second_finishes_it(redis_server, corpus,
                                                                                        tmp_path, monkeypatch):
    """Redis gone half way through a submission: the chunks sent are queued whole, the message says how many tasks
    are and that submitting again queues the rest; it does, and no shard twice. A reply lost after Redis added a
    chunk (redis-py sends the call again) adds it once."""
    import sigma.service.fleet as fleet
    from sigma.errors import InputError

    monkeypatch.setattr(fleet, "SUBMIT_CHUNK", 4)
    prefix = prefix_name()
    out = tmp_path / "fleet"
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": 1}, "annotator": "pixel-diff",
                                      "workers": 0})
    client, _ = counting_client(redis_server.url, fail_from=3)
    with pytest.raises(InputError) as failed:
        submit_run(cfg, out, redis_server.url, prefix, client=client)
    assert failed.value.code == "redis_unavailable"
    assert ("8 of 18 shard task(s) were queued" in failed.value.message
            and "submit the run again" in failed.value.message)
    assert queue_status(redis_server.url, prefix)["queued"] == 8                  # two chunks, whole
    again = submit_run(cfg, out, redis_server.url, prefix)
    assert (again["queued"], again["already_queued"]) == (10, 8), again
    assert queue_status(redis_server.url, prefix)["queued"] == 18
    # a lost reply: the same chunk sent twice is added once
    prefix = prefix_name()
    client, state = counting_client(redis_server.url, lose_first_reply=True)
    assert submit_run(cfg, tmp_path / "other", redis_server.url, prefix, client=client)["queued"] == 18
    assert state["lost"] and queue_status(redis_server.url, prefix)["queued"] == 18


@pytest.mark.parametrize("damage", [{"index": "x"}, {"ref": 5}, {"num_items": "many"}, {"key": ["a"]}])
def test_a_plan_whose_shard_records_are_not_shards_is_bad_run_not_a_traceback(redis_server, corpus, tmp_path,
                                                                               capsys, damage):
    """A run.json whose shard records parse but are not shards (`"index": "x"`, `"ref": 5`) ended `sigma batch
    status` in a ValueError / TypeError traceback, and a fleet worker retried such tasks to the end, when the
    TypeError escaped the dead-letter path and ended the worker. Now bad_run, and the tasks bad_task at once."""
    prefix = prefix_name()
    out = tmp_path / "fleet"
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 6
    record = json.loads(RunDir(out).run_file.read_text())
    record["shards"][0].update(damage)
    RunDir(out).run_file.write_text(json.dumps(record))
    assert main(["batch", "status", str(out)]) == 2
    assert "[bad_run]" in capsys.readouterr().err
    stats = run_batch_worker(redis_server.url, prefix, "w1", lease_ms=200, block_ms=50, reclaim_interval_ms=50,
                             exit_when_idle=True, run_read_retry_s=0.1)
    assert (stats.dead, stats.done, stats.failed) == (6, 0, 0), stats
    assert all("not a shard record" in e or "plain file name" in e for e in stats.errors), stats


def test_a_chunk_that_would_pass_the_stream_limit_is_not_queued_and_the_submit_says_how_far_it_got(
        redis_server, corpus, tmp_path, monkeypatch):
    """The limit on the stream (api.max_batch_tasks) is checked before anything is queued, and again by each chunk's
    script, atomically with its XADDs: another submission that filled the stream meanwhile stops this one between
    chunks, never half way through one, and the message says how many were queued."""
    import sigma.service.fleet as fleet
    from sigma.errors import InputError

    monkeypatch.setattr(fleet, "SUBMIT_CHUNK", 4)
    prefix = prefix_name()
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": 1}, "annotator": "pixel-diff",
                                      "workers": 0})
    with pytest.raises(InputError) as full:
        submit_run(cfg, tmp_path / "a", redis_server.url, prefix, max_tasks=17)
    assert full.value.code == "queue_full" and "nothing was queued" in full.value.message
    assert queue_status(redis_server.url, prefix)["queued"] == 0
    real_add = fleet._add_tasks
    calls = []

    def add_while_another_fills(conn, q, keys, tasks, limit=0):
        calls.append(len(tasks))
        if len(calls) == 2:              # another submission takes 13 places after our first chunk
            for n in range(13):
                q.add({"run_dir": "/elsewhere", "shard": f"x{n}", "run_hash": "0"})
        return real_add(conn, q, keys, tasks, limit)

    monkeypatch.setattr(fleet, "_add_tasks", add_while_another_fills)
    with pytest.raises(InputError) as full:
        submit_run(cfg, tmp_path / "a", redis_server.url, prefix, max_tasks=20)
    assert full.value.code == "queue_full" and "4 of them were queued" in full.value.message, full.value.message
    assert queue_status(redis_server.url, prefix)["queued"] == 17           # 4 + the other's 13: no part of a chunk


def test_the_temporary_file_of_a_worker_killed_mid_write_is_removed_by_the_next_one_but_a_live_writers_is_kept(
        redis_server, corpus, tmp_path):
    """A worker killed while writing a shard's parquet (preempted, OOM-killed) left `.<shard file>.<pid>.<rand>.tmp`;
    a run worked on by fleet workers only is never swept (that needs the folder held exclusively), so each kill left
    up to a shard's size on the shared disk for good. The worker that takes the shard next removes it when no
    writer holds it (writers hold an flock until their rename); a live writer's file is left alone."""
    prefix = prefix_name()
    out = tmp_path / "fleet"
    info = submit_run(cfg_for(corpus), out, redis_server.url, prefix)
    shard = RunDir(out).shards()[0]
    target = RunDir(out).shard_path(shard, info["run_hash"])
    target.parent.mkdir(exist_ok=True)
    writer = ("import fcntl, os, sys, time\n"
              "h = open(sys.argv[1], 'xb'); fcntl.flock(h, fcntl.LOCK_EX); h.write(b'PAR1 half'); h.flush()\n"
              "os.utime(sys.argv[1], (time.time() - 60, time.time() - 60)); print('ready', flush=True)\n"
              "time.sleep(60)\n")
    dead_tmp = target.with_name(f".{target.name}.4242.dead0001.tmp")
    live_tmp = target.with_name(f".{target.name}.4343.live0001.tmp")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(p)], stdout=subprocess.PIPE, text=True)
             for p in (dead_tmp, live_tmp)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        procs[0].kill()                                     # killed mid-write: its file stays, nobody holds it
        procs[0].wait(timeout=10)
        stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True)
        assert stats.done == 6, stats
        assert not dead_tmp.exists()
        assert live_tmp.exists()                            # its writer still holds it
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
    assert RunDir(out).summary()["done"] == 6


def test_a_submit_to_a_redis_frozen_half_way_reports_how_far_it_got_and_adds_no_chunk_twice(
        private_redis, corpus, tmp_path, monkeypatch):
    """Redis SIGSTOPped between two chunks of a submission: the next call times out (and redis-py's retry, on a new
    connection, too) and the submission fails saying how many tasks were queued, and that the chunk in flight may be
    too: Redis runs the call it had buffered once it is thawed. Submitting again queues the rest, and no shard has
    two tasks."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    import sigma.service.fleet as fleet
    from sigma.errors import InputError

    monkeypatch.setattr(fleet, "SUBMIT_CHUNK", 4)
    prefix = prefix_name()
    out = tmp_path / "fleet"
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": 1}, "annotator": "pixel-diff",
                                      "workers": 0})
    real_add = fleet._add_tasks
    calls = []

    def freeze_after_the_first_chunk(conn, q, keys, tasks, limit=0):
        calls.append(len(tasks))
        if len(calls) == 2:
            private_redis.freeze()
        return real_add(conn, q, keys, tasks, limit)

    monkeypatch.setattr(fleet, "_add_tasks", freeze_after_the_first_chunk)
    client = redis.Redis.from_url(private_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                  retry=Retry(NoBackoff(), 1))
    try:
        with pytest.raises(InputError) as failed:
            submit_run(cfg, out, private_redis.url, prefix, client=client)
    finally:
        private_redis.thaw()
    assert failed.value.code == "redis_unavailable"
    assert "4 of 18 shard task(s) were queued" in failed.value.message, failed.value.message
    assert "the 4 in flight may be too" in failed.value.message, failed.value.message
    monkeypatch.setattr(fleet, "_add_tasks", real_add)
    stream = Keys(prefix).batch_tasks()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and private_redis.client().xlen(stream) < 8:
        time.sleep(0.05)                                     # the buffered calls run once Redis is thawed
    time.sleep(0.2)
    assert private_redis.client().xlen(stream) == 8           # the chunk in flight landed once Redis ran again
    again = submit_run(cfg, out, private_redis.url, prefix)
    assert (again["queued"], again["already_queued"]) == (10, 8), again
    run_hash, pending = RunDir(out).pending_keys()
    tasks = _run_task_ids(private_redis.client(), stream, str(out.resolve()), run_hash)
    count, shards = len(tasks), set(tasks.values())
    assert count == 18 and shards == set(pending)


@pytest.mark.parametrize("edit", ["corpus", "options"])
def test_a_run_json_edited_after_planning_cannot_lift_the_runs_confinement_or_change_its_options(
        redis_server, tmp_path, edit):
    """run.json sits on storage the users of the batch root may write. A run planned by POST /v1/batches (confined
    to the root) whose run.json was then rewritten — the corpus pointed out of the root with `input.root` dropped,
    or the annotator's options changed (a weights file anywhere) — had every worker run what it said. The root and
    the run hash come with the task (Redis): such a task is refused at once (bad_task), nothing run."""
    root = tmp_path / "root"
    write_pairs_jsonl(root / "corpus", synthetic_pairs(6, size=16))
    write_pairs_jsonl(tmp_path / "outside", synthetic_pairs(6, size=16))
    prefix = prefix_name()
    out = root / "runs" / "r"
    cfg = BatchConfig.model_validate({"input": {"path": str(root / "corpus"), "shard_size": 3,
                                                "root": str(root)}, "annotator": "pixel-diff", "workers": 0})
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
    record = json.loads(RunDir(out).run_file.read_text())
    if edit == "corpus":
        record["config"]["input"].update({"path": str(tmp_path / "outside"), "root": None})
    else:
        record["config"]["options"] = {"threshold": 0.9}
    RunDir(out).run_file.write_text(json.dumps(record))
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True)
    assert (stats.dead, stats.done, stats.failed) == (2, 0, 0), stats
    why = "outside the run's root" if edit == "corpus" else "no longer hashes to run"
    assert all(why in e for e in stats.errors), stats.errors
    assert not (out / "shards").exists() or not list((out / "shards").iterdir())


def test_a_task_whose_run_folder_is_now_a_file_is_dead_lettered_at_once(redis_server, corpus, tmp_path):
    """A run folder replaced by a file is as gone as a deleted one: its tasks were read again for the whole
    run.json patience and then given back through the lease max_deliveries times before they were dead-lettered."""
    prefix = prefix_name()
    out = tmp_path / "fleet"
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 6
    import shutil

    shutil.rmtree(out)
    out.write_bytes(b"not a folder")
    start = time.monotonic()
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True, run_read_retry_s=2)
    assert (stats.dead, stats.failed) == (6, 0), stats
    assert time.monotonic() - start < 6 and "not a batch run folder" in stats.errors[0], stats.errors


def test_a_shard_whose_model_hangs_ends_the_worker_and_is_dead_lettered_as_hung(redis_server, tmp_path):
    """A fleet worker whose model never returned held its shard for ever: the heartbeat extended the task's lease, so
    no other worker took it and the run stayed "pending". Now a shard with no pair done for worker.batch_timeout_s
    ends the worker with status 1 (no traceback) for its supervisor to restart, the task is redelivered, and after
    queue.max_deliveries hangs it is dead-lettered with `worker_hung` as its reason; the other shards are done.
    The watchdog is 10 s, not 1.5: it counts from a task's start, and on a loaded machine (load average 11 on 2
    cores) a good shard's first pair (the run read, its model built, pyarrow imported) took longer than 1.5 s and was
    taken for a hang too. The loop over workers ends when each worker does; its deadline is only a bound."""
    import service_plugins  # noqa: F401 - registers hang-diff here, for the plan
    from servicekit import Proc, base_env

    pairs = list(synthetic_pairs(3, size=32))
    pairs[1]["instruction"] = "hang the picture on the wall"
    write_pairs_jsonl(tmp_path / "set", pairs)
    prefix, out = prefix_name(), tmp_path / "fleet"
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "set"), "shard_size": 1},
                                      "annotator": "hang-diff", "workers": 0})
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 3
    settings = [f"redis.key_prefix={prefix}", "queue.lease_ms=800", "queue.block_ms=200",
                "queue.reclaim_interval_ms=150", "queue.heartbeat_interval_ms=150", "queue.max_deliveries=3",
                "worker.batch_timeout_s=10", "worker.run_read_retry_s=0.2"]
    sets = [arg for item in settings for arg in ("--set", item)]
    logs, hung = [], 0
    for attempt in range(6):
        # a watchdog must be above run.json's re-read (0.2 s) + the model folder's lock wait (1 s), or the worker is
        # refused at start-up
        env = {**base_env(redis_server.url), "SIGMA_MODEL_LOCK_WAIT_S": "1"}
        proc = Proc(["worker", "--batch", "--plugin", "service_plugins", "--consumer", f"b{attempt}", *sets],
                    env, tmp_path / f"worker-{attempt}.log")
        deadline = time.monotonic() + 180                 # a generous bound: the loop ends when the worker does
        try:
            while proc.alive() and RunDir(out).summary()["failed"] == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            code = proc.stop()
        log = proc.output()
        logs.append(log)
        assert "Traceback" not in log, log
        if RunDir(out).summary()["failed"]:
            assert code == 0, log                      # the worker that dead-lettered it goes on
            break
        assert code == 1 and "hang-diff: hanging" in log and "a shard hung for" in log, log
        assert not redis_server.client().exists(Keys(prefix).batch_worker(f"b{attempt}"))
        hung += 1
        time.sleep(0.9)                                # the lease (800 ms) runs out: redelivered
    assert hung == 3, logs                             # max_deliveries=3 hangs, then dead-lettered
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"], summary["pending"]) == (2, 1, 0), summary
    error = summary["failed_shards"][0]["error"]
    # the claim that finds it spent counts as a delivery too (XAUTOCLAIM): 3 hangs, then 4
    assert re.match(r"dead-lettered after [34] deliveries: \[worker_hung\] .*batch_timeout_s=10\b", error), error
    assert make_queue(redis_server.client(), Keys(prefix), "check").dead_count() == 1


def test_a_shard_longer_than_the_batch_timeout_is_not_taken_for_a_hang_while_its_pairs_progress(redis_server,
                                                                                                tmp_path):
    """worker.batch_timeout_s bounds one model batch of a shard, not the shard: a shard of many batches that takes
    longer in all, each batch well within it, is done, and nothing is reported stuck."""
    import service_plugins  # noqa: F401 - registers slow-diff

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(5, size=32))
    prefix, out = prefix_name(), tmp_path / "fleet"
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "set"), "shard_size": 5},
                                      "annotator": "slow-diff", "options": {"delay_ms": 400}, "batch_size": 1,
                                      "workers": 0})
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 1
    stuck: list = []
    start = time.monotonic()
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, heartbeat_interval_ms=100,
                             exit_when_idle=True, batch_timeout_s=1.0, on_stuck=lambda e, s: stuck.append(s))
    assert time.monotonic() - start > 1.5                 # the shard ran past the timeout in all
    assert (stats.done, stats.failed, stuck) == (1, 0, []), (stats, stuck)


def test_a_task_naming_a_huge_or_relative_run_dir_is_dead_lettered_at_once_with_a_short_reason(redis_server,
                                                                                              tmp_path):
    """A task whose run_dir is longer than the filesystem allows (ENAMETOOLONG) was taken for a run.json briefly
    unreadable: read again for worker.run_read_retry_s on each of max_deliveries deliveries before it was given up
    on, and its 300 KB path went, several times over, into every log line, error and dead letter. A relative
    run_dir was looked up in the worker's own folder. Each is now `bad_task` at once, its reason cut."""
    prefix = prefix_name()
    q = make_queue(redis_server.client(), Keys(prefix), "submitter")
    for run_dir in ["/tmp/" + "a" * 300_000, "/tmp/" + "/".join(["b" * 300] * 30), "relative/run"]:
        q.add({"run_dir": run_dir, "shard": "s" * 100_000, "run_hash": "0"})
    start = time.monotonic()
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, lease_ms=300, reclaim_interval_ms=50,
                             exit_when_idle=True, run_read_retry_s=3)
    assert (stats.dead, stats.failed) == (3, 0), (stats.dead, stats.failed, [e[:200] for e in stats.errors])
    assert time.monotonic() - start < 3, "read again as if unreadable"
    assert all(len(e) < 10_000 for e in stats.errors), [len(e) for e in stats.errors]
    assert "not an absolute path" in stats.errors[2], stats.errors[2][:300]
    for dead in q.dead_entries():
        error = json.loads(dead.fields["error"])
        assert error["code"] == "bad_task" and "characters)" in error["message"], error


def test_a_dead_letters_long_error_record_is_cut_and_stays_json(redis_server):
    """A dead letter kept the first 4000 characters of its error record: a longer one (a long path, a message with
    non-ASCII text escaped six-fold) was cut mid-string and no longer JSON, so a reader of the dead letter could not
    parse it. Each text in it is cut instead, and the record stays JSON."""
    prefix = prefix_name()
    q = make_queue(redis_server.client(), Keys(prefix), "w1", max_deliveries=1)
    q.add({"run_dir": "/r", "shard": "s", "run_hash": "0"})
    entry = q.read(1, None)[0]
    record = {"code": "shard_failed", "message": "é" * 3000 + " the end", "deliveries": 1}
    q.dead_letter(entry, json.dumps(record))
    error = json.loads(q.dead_entries()[0].fields["error"])
    assert error["code"] == "shard_failed" and error["deliveries"] == 1 and "characters)" in error["message"], error


def test_a_damaged_tasks_shard_key_is_cut_and_escaped_in_the_workers_heartbeat(redis_server, tmp_path):
    """The fleet worker's heartbeat hash (what `sigma batch status --redis` and operators read) copied the shard
    key of the task in hand as given: a damaged task's 1 MB key with terminal escapes was written to Redis on every
    beat. It is cut (with its length said) and its control characters escaped, as other echoes are."""
    prefix = prefix_name()
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "run.json").write_bytes(b"{")          # read again for run_read_retry_s: a task in hand
    q = make_queue(redis_server.client(), Keys(prefix), "submitter")
    q.add({"run_dir": str(tmp_path / "torn"), "shard": "\x1b[2J\x1b[31mkey" + "k" * 1_000_000, "run_hash": "0"})
    worker = threading.Thread(target=run_batch_worker, args=(redis_server.url, prefix, "hb"),
                              kwargs={"block_ms": 50, "max_tasks": 1, "run_read_retry_s": 2,
                                      "heartbeat_interval_ms": 20})
    worker.start()
    shown, rss, deadline = "", b"", time.monotonic() + 60
    try:
        while not shown and time.monotonic() < deadline:
            beat = redis_server.client().hgetall(Keys(prefix).batch_worker("hb"))
            shown, rss = (beat.get(b"shard") or b"").decode(), beat.get(b"rss_mb", b"")
            time.sleep(0.01)
    finally:
        worker.join(timeout=20)
    assert shown, "the heartbeat never named the task in hand"
    assert float(rss) > 1, rss       # as `sigma worker`'s: what worker.max_rss_mb is set against
    assert len(shown) < 300 and "\x1b" not in shown, (len(shown), shown[:100])
    assert shown.startswith("\\x1b[2J\\x1b[31mkey") and shown.endswith("kkk (1000018 characters)"), shown


def spawned_children() -> list[int]:
    """This process's live children started by multiprocessing's spawn (a decode pool's), from /proc (Linux)."""
    return spawned_children_of(os.getpid())


def spawned_children_of(parent: int) -> list[int]:
    """The live children of `parent` started by multiprocessing's spawn, from /proc (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and fields[0] != "Z" and \
                    b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_hung_decode_pool_under_a_fleet_worker_is_replaced_before_the_worker_is_taken_for_hung(redis_server,
                                                                                                tmp_path):
    """A fleet worker's decode pool waits `stall_s` (900 s by default) for a chunk before it replaces itself and fails
    the shard, but the worker takes itself for hung after `worker.batch_timeout_s` (600 s) with no pair done: the
    worker always exited first, and the shard was redelivered to hang again. Under a worker the pool now waits at
    most half the batch timeout: its decoders (SIGSTOPped here, as a codec deadlock stops them) are killed, the shard
    fails with `decode worker hung` and the worker, never reported stuck, goes on."""
    import service_plugins  # noqa: F401 - registers slow-diff, for the plan

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(40, size=32))
    prefix, out = prefix_name(), tmp_path / "fleet"
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "set"), "shard_size": 40},
                                      "annotator": "slow-diff", "options": {"delay_ms": 50}, "batch_size": 1,
                                      "png_masks": True, "workers": 1})
    assert cfg.stall_s == 900 and submit_run(cfg, out, redis_server.url, prefix)["queued"] == 1
    stuck: list[float] = []
    stopped: list[int] = []

    def on_stuck(entries, seconds) -> None:             # what `sigma worker --batch` would exit for; let it go on
        stuck.append(seconds)
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)

    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(stats=run_batch_worker(
        redis_server.url, prefix, "w1", block_ms=50, heartbeat_interval_ms=50, max_tasks=1, workers=1,
        batch_timeout_s=3.0, on_stuck=on_stuck)))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("masks/*/*.png")) and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped.extend(spawned_children())
        assert stopped, "no decode process found"
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        worker.join(timeout=60)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert not worker.is_alive()
    stats = box["stats"]
    assert stuck == [], stuck
    assert (stats.done, stats.failed) == (0, 1), stats
    assert "decode worker hung: no result for 1.5 s" in stats.errors[0], stats.errors


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_decode_process_killed_under_a_fleet_worker_is_said_and_every_shard_is_done(redis_server, tmp_path):
    """A real `sigma worker --batch` whose decode process (the run's `workers: 1`) is SIGKILLed mid-run, as the OOM
    killer ends one: the pool was replaced and the chunks decoded again (nothing lost, no hang), but without a word,
    so a worker whose decoders were killed over and over showed nothing in its log. Now one line names the process
    and its signal; every shard is done, none failed or dead-lettered, and the worker goes on."""
    import service_plugins  # noqa: F401 - registers slow-diff, for the plan
    from servicekit import Proc, base_env, wait_until

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(40, size=32))
    prefix, out = prefix_name(), tmp_path / "fleet"
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "set"), "shard_size": 10},
                                      "annotator": "slow-diff", "options": {"delay_ms": 100}, "batch_size": 1,
                                      "workers": 1, "plugins": ["service_plugins"]})
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 4
    settings = [f"redis.key_prefix={prefix}", "queue.lease_ms=2000", "queue.block_ms=200", "queue.max_deliveries=2",
                "queue.reclaim_interval_ms=300", "queue.heartbeat_interval_ms=300"]
    proc = Proc(["worker", "--batch", "--plugin", "service_plugins", "--consumer", "k1",
                 *[arg for item in settings for arg in ("--set", item)]], base_env(redis_server.url),
                tmp_path / "worker.log")
    try:
        # mid-run: a shard done, three to decode
        victims = wait_until(lambda: RunDir(out).summary()["done"] and spawned_children_of(proc.pid), 120,
                             f"a shard done and a decoder\n{proc.output()}", 0.05)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: RunDir(out).summary()["done"] == 4 or not proc.alive(), 180,
                   f"every shard done\n{proc.output()}", 0.2)
        assert proc.alive(), proc.output()
        summary = RunDir(out).summary()
        assert (summary["done"], summary["failed"], summary["pairs"]) == (4, 0, 40), summary
        assert make_queue(redis_server.client(), Keys(prefix), "check").dead_count() == 0
        died = [line for line in proc.output().splitlines() if "a decode process died" in line]
        assert died and f"pid {victims[0]} killed by SIGKILL" in died[0], proc.output()    # without the fix: none
        assert "Traceback" not in proc.output(), proc.output()
    finally:
        proc.stop()


def test_tasks_refused_while_a_local_run_holds_the_folder_spend_no_delivery_and_are_done_after_it(redis_server,
                                                                                                 corpus, tmp_path):
    """A fleet worker refused with `run_locked` (a local `sigma batch run` holds the run folder exclusively) spent
    one of the task's deliveries each time, so a local run longer than max_deliveries leases had the run's tasks
    dead-lettered and its shards failed, though nothing was wrong with them. Now such a task is deferred: retried
    after the lease with the delivery not counted, and done once the folder is free."""
    prefix, out = prefix_name(), tmp_path / "fleet"
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 6
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(stats=run_batch_worker(
        redis_server.url, prefix, "w1", block_ms=50, lease_ms=150, reclaim_interval_ms=30, max_deliveries=2,
        exit_when_idle=True)))
    with RunDir(out).locked(exclusive=True):           # what `sigma batch run --resume --out OUT` holds
        worker.start()
        time.sleep(2.0)                                # some 13 leases: each task refused again and again
        pending = redis_server.client().xpending_range(Keys(prefix).batch_tasks(), "sigma-batch", "-", "+", 100)
        assert len(pending) == 6 and max(row["times_delivered"] for row in pending) <= 1, pending
    worker.join(timeout=30)
    stats = box["stats"]
    assert (stats.done, stats.dead, stats.failed) == (6, 0, 0), stats
    assert stats.deferred >= 6, stats
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"]) == (6, 0), summary


def test_a_shard_whose_reader_gives_up_under_a_fleet_worker_is_failed_with_its_reason(redis_server, tmp_path):
    """A corpus reader (a plugin's) that gives up mid-shard with sys.exit() or a KeyboardInterrupt of its own, under
    a real `sigma worker --batch`: before 3b1aa80 the shard's pipeline had no result (a traceback in the worker's log),
    the task went back through the lease as "no result" and was dead-lettered with that alone. The pipeline fleet
    workers share now fails the shard with the reader's reason on each delivery (in its status file at once), the
    dead letter carries it, the worker goes on with the other shards, and once the reader reads again submitting the
    run again finishes it (checked to fail with 3b1aa80's parent's pipeline)."""
    import service_plugins  # noqa: F401 - registers the exit-jsonl reader here, for the plan
    from servicekit import Proc, base_env

    pairs = list(synthetic_pairs(8, size=32))
    pairs[2]["instruction"], pairs[4]["instruction"] = "exit here", "interrupt here"
    manifest = write_pairs_jsonl(tmp_path / "set", pairs)
    stop = manifest.parent / "exit-reader.stop"
    stop.write_text("")
    prefix, out = prefix_name(), tmp_path / "fleet"
    cfg = BatchConfig.model_validate({"input": {"path": str(manifest.parent), "shard_size": 2, "format": "exit-jsonl"},
                                      "annotator": "pixel-diff", "workers": 0, "plugins": ["service_plugins"]})
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 4
    settings = [f"redis.key_prefix={prefix}", "queue.lease_ms=300", "queue.block_ms=100",
                "queue.reclaim_interval_ms=100", "queue.heartbeat_interval_ms=100", "queue.max_deliveries=2"]
    sets = [arg for item in settings for arg in ("--set", item)]
    check = make_queue(redis_server.client(), Keys(prefix), "check")

    def work(name: str, until) -> str:
        proc = Proc(["worker", "--batch", "--plugin", "service_plugins", "--consumer", name, *sets],
                    base_env(redis_server.url), tmp_path / f"{name}.log")
        deadline = time.monotonic() + 90
        try:
            while proc.alive() and not until() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert proc.alive(), proc.output()
        finally:
            assert proc.stop() == 0, proc.output()
        return proc.output()

    log = work("w1", lambda: check.dead_count() == 2 and RunDir(out).summary()["done"] == 2)
    assert "Traceback" not in log, log
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"], summary["pending"]) == (2, 2, 0), (summary, log)
    errors = {f["shard"]: f["error"] for f in summary["failed_shards"]}
    exited, interrupted = "set__pairs.r0000002-0000003", "set__pairs.r0000004-0000005"
    assert set(errors) == {exited, interrupted}, errors
    assert re.match(r"dead-lettered after \d deliveries: \[shard_failed\] the corpus reader called sys\.exit\(4\)$",
                    errors[exited]), errors
    assert "[shard_failed] no result from the pipeline" in errors[interrupted], errors
    assert "KeyboardInterrupt: the reader's own" in errors[interrupted], errors

    stop.unlink()                            # the reader reads again: submitting again runs the failed shards only
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
    work("w2", lambda: RunDir(out).summary()["done"] == 4)
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"], summary["pairs"]) == (4, 0, 8), summary


def test_a_batch_worker_past_max_rss_mb_stops_after_a_stored_shard_and_a_fresh_one_goes_on(redis_server, tmp_path):
    """`sigma worker --batch` ignored worker.max_rss_mb (refused on its command line, said unused from a config file
    or SIGMA__WORKER__*), so a leak over hours of shards grew the worker until the OOM killer ended it mid-shard. Now,
    as `sigma worker` after a batch, once a shard's task is stored and acknowledged a worker past the limit says so in
    one warning line and exits 75 (RECYCLE_EXIT_STATUS; 0 was left stopped by an on-failure restart policy) for its
    supervisor to start a fresh one. With 1 MiB (always past it) each start does
    exactly one shard, leaves nothing held and the rest queued; a second start finishes the run, and the shards are
    those of a local run: nothing lost, none done twice."""
    from servicekit import Proc, base_env

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(6, size=32))
    prefix, out = prefix_name(), tmp_path / "fleet"
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "set"), "shard_size": 3},
                                      "annotator": "pixel-diff", "workers": 0})
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
    client, keys = redis_server.client(), Keys(prefix)
    check = make_queue(client, keys, "check")

    def start(name: str, args: list[str], env: dict[str, str]) -> tuple[int | None, str]:
        """A worker until it exits by itself (None: still running after the run was done, or after 60 s)."""
        proc = Proc(["worker", "--batch", "--consumer", name, "--set", f"redis.key_prefix={prefix}", "--set",
                     "queue.block_ms=100", *args], {**base_env(redis_server.url), **env}, tmp_path / f"{name}.log")
        deadline, grace = time.monotonic() + STARTUP_S, None    # its start (imports) took over 60 s on load
        try:
            while proc.alive() and time.monotonic() < deadline and (grace is None or time.monotonic() < grace):
                if grace is None and RunDir(out).summary()["done"] == 2:
                    grace = time.monotonic() + 60         # every shard is done: a recycling worker exits (5 s: tight)
                time.sleep(0.1)
            code = None if proc.alive() else proc.p.returncode
        finally:
            proc.stop()
        return code, proc.output()

    done = []
    for name, args, env in (("r1", ["--set", "worker.max_rss_mb=1"], {}),          # the command line's
                            ("r2", [], {"SIGMA__WORKER__MAX_RSS_MB": "1"})):        # a deployment's environment
        code, log = start(name, args, env)
        done.append(RunDir(out).summary()["done"])
        assert code == 75 and "Traceback" not in log and "sigma: warning" not in log, (code, log)
        warnings = [line for line in log.splitlines() if "exceeds worker.max_rss_mb=1 after a shard" in line]
        assert len(warnings) == 1 and f"batch worker {name}: resident memory" in warnings[0], log
        assert "1 shard(s) done, 0 already done, 0 failed, 0 dead-lettered" in log, log
        assert check.pending_count() == 0 and check.dead_count() == 0          # its shard acknowledged, none held
        assert client.xlen(keys.batch_tasks()) == 2 - len(done)                 # the other task still queued
        assert not client.exists(keys.batch_worker(name))                       # its heartbeat gone with it
    assert done == [1, 2], done
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"], summary["pending"], summary["pairs"]) == (2, 0, 0, 6), summary
    run_batch(cfg, tmp_path / "local", progress=False)
    assert shard_bytes(out) == shard_bytes(tmp_path / "local") and len(shard_bytes(out)) == 2


@pytest.mark.parametrize("edit", ["input", "shard_file", "plugins"])
def test_a_run_json_edited_after_submit_is_refused_by_the_workers_and_by_a_second_submit(redis_server, tmp_path,
                                                                                         monkeypatch, edit):
    """Fleet workers took from run.json what the run hash does not cover: the corpus path (`input` is outside the
    hash, its identity stands for it), the shard plan and the plugins to import. A run.json edited after submission
    had the workers annotate another corpus under the same run (or import a module it named) and report the
    shards done. Each task is now refused (bad_task, saying why, nothing read or imported), a second submission of
    the run is `run_modified`, nothing queued; the run.json put back, the run is submitted again and finishes with
    the bytes of a local run."""
    from sigma.errors import InputError

    corpus, other = tmp_path / "set", tmp_path / "other"
    write_pairs_jsonl(corpus, synthetic_pairs(6, size=48))
    write_pairs_jsonl(other, synthetic_pairs(6, size=48, seed=7))
    marker = tmp_path / "imported"
    plugin = f"evil_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{plugin}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    prefix = prefix_name()
    out = tmp_path / "fleet"
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 2
    planned = RunDir(out).run_file.read_bytes()
    record = json.loads(planned)
    if edit == "input":
        record["config"]["input"]["path"] = str(other)
    elif edit == "shard_file":
        record["shards"][1]["ref"]["file"] = str(other / "pairs.jsonl")
    else:
        record["config"]["plugins"] = [plugin]
    RunDir(out).run_file.write_text(json.dumps(record))
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True)
    assert (stats.dead, stats.done, stats.failed) == (2, 0, 0), stats
    why = {"input": "input.path", "shard_file": "shard plan", "plugins": "plugins"}[edit]
    assert len(stats.errors) == 2 and all(why in e for e in stats.errors), stats.errors
    assert not list((out / "shards").glob("*.parquet")) and not marker.exists()
    with pytest.raises(InputError) as refused:
        submit_run(cfg_for(corpus), out, redis_server.url, prefix)
    assert refused.value.code == "run_modified"
    assert queue_status(redis_server.url, prefix)["queued"] == 0
    RunDir(out).run_file.write_bytes(planned)
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 2
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True)
    assert (stats.dead, stats.done, stats.failed) == (0, 2, 0), stats
    run_batch(cfg_for(corpus), tmp_path / "local", progress=False)
    assert shard_bytes(out) == shard_bytes(tmp_path / "local") and not marker.exists()


def test_a_run_planned_before_the_plan_was_hashed_is_worked_while_its_corpus_plans_the_same_shards(
        redis_server, tmp_path):
    """A version 1 run.json (its run hash without the shard plan, queued by an older sigma: tasks without plugins)
    is still worked: its plan is checked once per worker against the corpus planned again. Its plan edited to read
    another corpus is refused (bad_task), nothing written."""
    corpus, other = tmp_path / "set", tmp_path / "other"
    write_pairs_jsonl(corpus, synthetic_pairs(6, size=48))
    write_pairs_jsonl(other, synthetic_pairs(6, size=48, seed=7))
    out = tmp_path / "fleet"
    run_batch(cfg_for(corpus), out, progress=False, max_shards=0)       # planned, nothing run
    record = json.loads(RunDir(out).run_file.read_text())
    legacy_hash = BatchConfig.model_validate(record["config"]).run_hash(record["corpus"], record["model"])
    record.update(version=1, run_hash=legacy_hash)
    legacy = json.dumps(record)
    prefix = prefix_name()
    q = make_queue(redis_server.client(), Keys(prefix), "old-submitter")
    for shard in record["shards"]:
        q.add({"run_dir": str(out.resolve()), "shard": shard["key"], "run_hash": legacy_hash})
    record["shards"][1]["ref"]["file"] = str(other / "pairs.jsonl")
    RunDir(out).run_file.write_text(json.dumps(record))
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True)
    assert (stats.dead, stats.done, stats.failed) == (2, 0, 0), stats
    assert all("planned by an older sigma" in e for e in stats.errors), stats.errors
    assert not list((out / "shards").glob("*.parquet"))
    RunDir(out).run_file.write_text(legacy)
    for shard in record["shards"]:
        q.add({"run_dir": str(out.resolve()), "shard": shard["key"], "run_hash": legacy_hash})
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True)
    assert (stats.dead, stats.done, stats.failed) == (0, 2, 0), stats
    assert sorted(p.name.split(".")[-2] for p in (out / "shards").glob("*.parquet")) == [legacy_hash] * 2


@pytest.mark.parametrize("needs", ["corpus format", "annotator"])
def test_a_worker_without_a_runs_plugin_says_plugin_missing_and_leaves_the_task_to_one_with_it(
        redis_server, tmp_path, capsys, needs):
    """A run whose corpus format or annotator a plugin registers (`sigma batch submit --plugin MODULE --format F`,
    itself refused as invalid_config before: --plugin was imported after the format was checked), taken by a
    `sigma worker --batch` that lacks the plugin. The format's run.json config did not validate and the task was
    dead-lettered at once as `bad_task` "run.json holds no usable config", as if the file had been tampered with;
    the annotator's was `shard_failed` "Unknown annotator ...". Now both say the same: the worker imports the
    plugins the task carries itself; one that cannot (not installed there) says `plugin_missing`, naming the format
    or annotator, the module and the flag, and hands the task back through its lease, so a worker that has the
    plugin does it; with none recorded, it is dead-lettered `plugin_missing` after max_deliveries."""
    from servicekit import TESTS, Proc, base_env

    name = "exit-jsonl" if needs == "corpus format" else "poison-diff"
    picks = ["--format", name, "--annotator", "pixel-diff"] if needs == "corpus format" else ["--annotator", name]
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(4, size=32))
    prefix, out = prefix_name(), tmp_path / "fleet"
    client, keys = redis_server.client(), Keys(prefix)
    mp = pytest.MonkeyPatch()
    mp.setenv("SIGMA_REDIS_URL", redis_server.url)
    mp.setenv("SIGMA__REDIS__KEY_PREFIX", prefix)
    try:
        assert main(["batch", "submit", str(tmp_path / "set"), "--out", str(out), "--plugin", "service_plugins",
                     *picks, "--shard-size", "2", "--workers", "0"]) == 0
    finally:
        mp.undo()
    assert "queued 2 shard task(s)" in capsys.readouterr().out
    with_plugin = base_env(redis_server.url)
    without = {**with_plugin, "PYTHONPATH": with_plugin["PYTHONPATH"].replace(str(TESTS), "").strip(os.pathsep)}
    sets = [arg for item in [f"redis.key_prefix={prefix}", "queue.lease_ms=300", "queue.block_ms=100",
                             "queue.reclaim_interval_ms=100", "queue.heartbeat_interval_ms=100"]
            for arg in ("--set", item)]
    check = make_queue(client, keys, "check")

    def errors() -> list[dict]:
        notes = [client.get(keys.batch_task_error(row["message_id"].decode()))
                 for row in client.xpending_range(keys.batch_tasks(), "sigma-batch", "-", "+", 10)]
        return [json.loads(n) for n in notes if n]

    def work(name: str, env: dict, until, *extra: str) -> str:
        proc = Proc(["worker", "--batch", "--consumer", name, *sets, *extra], env, tmp_path / f"{name}.log")
        deadline = time.monotonic() + 60
        try:
            while proc.alive() and not until() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert until(), proc.output()
        finally:
            assert proc.stop() == 0, proc.output()
        return proc.output()

    # a worker without it: each task handed back (not dead-lettered) with a plain reason
    log = work("bare", without, lambda: len(errors()) == 2, "--set", "queue.max_deliveries=50")
    assert "Traceback" not in log and "no usable config" not in log and "shard_failed" not in log, log
    assert check.dead_count() == 0 and check.pending_count() == 2
    for error in errors():
        assert error["code"] == "plugin_missing", error
        assert f"{needs} '{name}' is registered by a plugin" in error["message"], error
        assert "cannot import 'service_plugins'" in error["message"], error
        assert "`sigma worker --batch --plugin service_plugins`" in error["message"], error
    # one that has it (installed; the run's recorded plugin is imported, no flag needed) takes them over
    work("able", with_plugin, lambda: RunDir(out).summary()["done"] == 2, "--set", "queue.max_deliveries=50")
    assert check.dead_count() == 0 and check.pending_count() == 0

    # a run planned where the plugin was imported already records none (as POST /v1/batches with api.plugins):
    # dead-lettered with that reason once max_deliveries workers all lacked it
    import service_plugins  # noqa: F401 - registers exit-jsonl and poison-diff here, for the plan

    bare_run = tmp_path / "bare-run"
    source = {"path": str(tmp_path / "set"), "shard_size": 2, **({"format": name} if needs == "corpus format" else {})}
    cfg = BatchConfig.model_validate({"input": source, "annotator": "pixel-diff" if needs == "corpus format" else name,
                                      "workers": 0})
    assert submit_run(cfg, bare_run, redis_server.url, prefix)["queued"] == 2
    work("bare2", without, lambda: check.dead_count() == 2, "--set", "queue.max_deliveries=2")
    summary = RunDir(bare_run).summary()
    assert (summary["failed"], summary["pending"]) == (2, 0), summary
    for failed in summary["failed_shards"]:
        assert re.match(rf"dead-lettered after \d deliveries: \[plugin_missing\] .*{needs} '{name}' .*records no "
                        r"plugin.*`sigma worker --batch --plugin MODULE`", failed["error"]), failed


def test_a_fleet_shard_refused_memory_says_so_in_words_for_the_fleet_not_the_cli(redis_server, tmp_path):
    """A shard whose model the machine refuses memory mid-shard (`oom-diff`: a real MemoryError from the allocator)
    under a fleet worker: its reason, in the worker's log, its dead letter and the run's status, said "rerun with
    --resume", which is `sigma batch run`'s flag: a fleet worker's shard is delivered again by itself, and a
    dead-lettered one is submitted again. Now the reason says what was refused and what it needs, and no command."""
    import service_plugins  # noqa: F401 - registers oom-diff here, for the plan

    pairs = list(synthetic_pairs(4, size=32))
    pairs[1]["instruction"] = "oom here"
    write_pairs_jsonl(tmp_path / "set", pairs)
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "set"), "shard_size": 2},
                                      "annotator": "oom-diff", "batch_size": 1, "workers": 0,
                                      "plugins": ["service_plugins"]})
    prefix, out = prefix_name(), tmp_path / "fleet"
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, lease_ms=200, reclaim_interval_ms=30,
                             max_deliveries=2, exit_when_idle=True)
    assert (stats.done, stats.dead) == (1, 1), stats
    [failed] = RunDir(out).summary()["failed_shards"]
    error = failed["error"]
    assert error.startswith("dead-lettered after 2 deliveries: [shard_failed] the system gave no more memory "
                            "annotating this shard (MemoryError)"), error
    assert "nothing of it was published" in error and "--workers" in error, error
    assert "--resume" not in error, error              # without the fix: "rerun with --resume with more memory"


def test_a_dead_letter_does_not_wait_for_ever_on_a_shard_status_a_stopped_process_is_writing(redis_server, corpus,
                                                                                             tmp_path, monkeypatch):
    """A dead letter writes the shard's failed status under that shard's status lock, which it waited for without
    bound: a process stopped (Ctrl-Z, SIGSTOP) or hung while writing the same shard's status — a local run, another
    worker — held the worker there for ever, the task in hand and its lease extended by the heartbeat. It waits
    `FleetHandler.status_wait_s` (10 s), then leaves the status to the dead-letter stream's record and goes on."""
    from sigma.service.fleet import FleetHandler

    monkeypatch.setattr(FleetHandler, "status_wait_s", 0.5, raising=False)   # none before: it hung
    prefix, out = prefix_name(), tmp_path / "fleet"
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 6
    shard = RunDir(out).shards()[0]
    (out / ".locks").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom sigma.folderlock import waiting_lock\n"
                               "with waiting_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n",
                               str(out / ".locks" / f"status-{shard.key}.lock")], stdout=subprocess.PIPE, text=True)
    stop, box = threading.Event(), {}
    try:
        assert writer.stdout.readline().strip() == "held"
        writer.send_signal(signal.SIGSTOP)                    # stopped while it writes that shard's status
        corpus.rename(tmp_path / "moved")                     # every shard fails: dead-lettered at its one delivery
        worker = threading.Thread(target=lambda: box.update(stats=run_batch_worker(
            redis_server.url, prefix, "w1", stop=stop, block_ms=50, max_deliveries=1, exit_when_idle=True)))
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "the worker waits for the stopped writer's status lock"
    finally:
        stop.set()
        writer.kill()
        writer.wait(timeout=10)
    assert box["stats"].dead == 6, box["stats"]
    summary = RunDir(out).summary()
    assert (summary["failed"], summary["pending"]) == (5, 1), summary     # all but the held shard's status written
    dead = make_queue(redis_server.client(), Keys(prefix), "check").dead_entries()
    assert {e.fields["shard"] for e in dead} >= {shard.key}


def held_run(tmp_path: Path, shards: int, delay_ms: int) -> tuple[Path, BatchConfig, list[str]]:
    """A corpus of `shards` one-pair shards under slow-diff, and the `sigma batch run` arguments of that same run
    (same hash: a local run of the folder the fleet was given)."""
    import service_plugins  # noqa: F401 - registers slow-diff here, for the plan

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(shards, size=32))
    corpus = str(tmp_path / "set")
    cfg = BatchConfig.model_validate({"input": {"path": corpus, "shard_size": 1}, "annotator": "slow-diff",
                                      "options": {"delay_ms": delay_ms}, "batch_size": 1, "workers": 0,
                                      "plugins": ["service_plugins"]})
    local = ["batch", "run", corpus, "--out", str(tmp_path / "fleet"), "--resume", "--annotator", "slow-diff",
             "--set", f"options.delay_ms={delay_ms}", "--batch-size", "1", "--shard-size", "1", "--workers", "0",
             "--procs", "1", "--plugin", "service_plugins", "--no-progress"]
    return tmp_path / "fleet", cfg, local


def start_local_run(args: list[str], out: Path, redis_url: str, log: Path):
    """A real `sigma batch run` on the fleet's run folder, once it holds the folder and has finished a shard."""
    from servicekit import Proc, base_env

    proc = Proc(args, base_env(redis_url), log)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and proc.alive():
        holder = (out / ".lock").read_text().split() if (out / ".lock").exists() else []
        if holder[:1] == [str(proc.pid)] and RunDir(out).summary()["done"]:
            return proc
        time.sleep(0.02)
    proc.stop()
    raise AssertionError(f"the local run never held its folder: {proc.output()}")


def test_a_task_whose_run_folder_a_stopped_local_run_holds_is_dead_lettered_after_max_defer_s(redis_server,
                                                                                             tmp_path, capsys):
    """A task refused with `run_locked` is deferred without spending a delivery, and nothing bounded that: a local
    `sigma batch run` stopped with Ctrl-Z (SIGSTOP here), hung, or holding a lock its vanished host left on shared
    storage had the fleet's tasks deferred every lease for ever, the run "pending" with idle workers and no sign of
    why (the worker stayed busy deferring; without the fix it never goes idle). Now each deferral is counted in Redis,
    `sigma batch status --redis` shows it (with the holder's pid and host: on shared storage the pid may be another
    machine's), and a task whose folder's holder writes no shard for worker.max_defer_s is dead-lettered
    `run_locked_too_long`, saying which run, who holds it (pid and host) and how to go on.
    The lock is the kernel's (flock): the holder SIGKILLed, the folder is free at once, and submitting the run again
    finishes it."""
    out, cfg, local = held_run(tmp_path, 6, 1000)
    prefix = prefix_name()
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 6
    holder = start_local_run(local, out, redis_server.url, tmp_path / "local.log")
    stop, box = threading.Event(), {}
    try:
        holder.signal(signal.SIGSTOP)          # Ctrl-Z after a shard (1 s each): it holds the folder, writes nothing
        written = RunDir(out).summary()["done"]
        assert 1 <= written < 6, written
        worker = threading.Thread(target=lambda: box.update(stats=run_batch_worker(
            redis_server.url, prefix, "w1", stop=stop, block_ms=50, lease_ms=200, reclaim_interval_ms=30,
            max_deliveries=2, exit_when_idle=True, max_defer_s=3.0)))
        worker.start()
        deferred: dict = {}
        deadline = time.monotonic() + 60
        while not deferred.get("deferred") and time.monotonic() < deadline:
            deferred = queue_status(redis_server.url, prefix, run=RunDir(out))
            time.sleep(0.05)
        who = f"pid {holder.pid} on host {socket.gethostname()}"
        assert deferred.get("deferred") and who in deferred["deferred_reason"], deferred
        assert main(["batch", "status", str(out), "--redis", redis_server.url, "--key-prefix", prefix]) == 0
        shown = capsys.readouterr().out
        assert "task(s) deferred for up to" in shown and f"({who})" in shown, shown
        worker.join(timeout=40)
        assert not worker.is_alive(), "the tasks were deferred for ever"
    finally:
        stop.set()
        if box.get("stats") is None:
            holder.kill9()
    stats = box["stats"]
    assert stats.dead == 6 - written and stats.done == 0 and stats.deferred >= 6 - written, stats
    client, keys = redis_server.client(), Keys(prefix)
    dead = make_queue(client, keys, "check").dead_entries()
    assert len(dead) == 6 - written
    for entry in dead:
        error = json.loads(entry.fields["error"])
        assert error["code"] == "run_locked_too_long", error
        assert str(out) in error["message"] and who in error["message"], error
        assert "worker.max_defer_s=3" in error["message"] and "submit the run again" in error["message"], error
        assert re.search(r"deferred \d+ times since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, ", error["message"]), error  # UTC
    assert not list(client.scan_iter(match=keys.batch_task_deferred("*")))      # nothing left behind in Redis
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"]) == (written, 6 - written), summary
    assert all("[run_locked_too_long]" in f["error"] for f in summary["failed_shards"]), summary["failed_shards"]

    holder.kill9()                                   # SIGKILLed while stopped: the kernel drops its lock at once
    holder.stop()
    with RunDir(out).locked():
        pass
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 6 - written
    stats = run_batch_worker(redis_server.url, prefix, "w2", block_ms=50, exit_when_idle=True)
    assert (stats.done, stats.dead, stats.deferred) == (6 - written, 0, 0), stats
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"], summary["pending"]) == (6, 0, 0), summary


def test_a_task_deferred_longer_than_max_defer_s_is_not_given_up_while_the_local_run_writes_shards(redis_server,
                                                                                                  tmp_path):
    """worker.max_defer_s bounds a holder that writes nothing, not a long local run: a live `sigma batch run` that
    writes its shards keeps the fleet's tasks deferred for longer than the cap in all, none is dead-lettered, and
    once it ends they are found done."""
    # 600 ms a shard, 20 shards: the last task waits ~11 s in all, well past the cap (3 s) though the fleet worker,
    # a thread here, lags behind the run on a loaded machine (300 ms: 3.9 s seen, under three busy loops)
    out, cfg, local = held_run(tmp_path, 20, 600)
    prefix = prefix_name()
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 20
    holder = start_local_run(local, out, redis_server.url, tmp_path / "local.log")
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(stats=run_batch_worker(
        redis_server.url, prefix, "w1", block_ms=50, lease_ms=200, reclaim_interval_ms=30, max_deliveries=2,
        exit_when_idle=True, max_defer_s=3.0)))
    worker.start()
    longest = 0.0
    try:
        while worker.is_alive() and holder.alive():
            longest = max(longest, queue_status(redis_server.url, prefix, run=RunDir(out)).get("deferred_s", 0.0))
            time.sleep(0.1)
        worker.join(timeout=60)
        holder.p.wait(timeout=60)
    finally:
        code = holder.stop()
    assert code == 0, holder.output()
    stats = box["stats"]
    assert longest > 4.0, longest                    # deferred past the cap (3 s) in all
    assert stats.dead == 0 and stats.failed == 0 and stats.deferred > 0, stats
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"], summary["pending"]) == (20, 0, 0), summary


def _run_a_worker_below_the_drivers_run_size_limit(redis_server, corpus, tmp_path, monkeypatch, capsys):
    """A run submitted with the default $SIGMA_MAX_RUN_BYTES (6 shards), then one batch worker whose limit is one byte
    under its run.json's size, to idle. (out, prefix, run.json's size, the worker's stats, seconds it took)."""
    prefix = prefix_name()
    out = tmp_path / "fleet"
    assert main(["batch", "submit", str(corpus), "--out", str(out), "--shard-size", "3", "--annotator", "pixel-diff",
                 "--set", "workers=0", "--redis", redis_server.url, "--key-prefix", prefix]) == 0
    capsys.readouterr()
    size = (out / "run.json").stat().st_size
    monkeypatch.setenv("SIGMA_MAX_RUN_BYTES", str(size - 1))           # this worker's machine only
    start = time.monotonic()
    stats = run_batch_worker(redis_server.url, prefix, "low", lease_ms=200, block_ms=50, reclaim_interval_ms=50,
                             max_deliveries=3, run_read_retry_s=5, exit_when_idle=True)
    return out, prefix, size, stats, time.monotonic() - start


def test_a_worker_with_a_lower_run_size_limit_than_the_driver_dead_letters_at_once_saying_both(
        redis_server, corpus, tmp_path, monkeypatch, capsys):
    """The machines of one fleet set $SIGMA_MAX_RUN_BYTES differently: the driver (`sigma batch submit`, default
    64 MiB) wrote a run.json larger than a worker's limit. That worker, the only one live, refuses it by size: no
    worker can take it, so each task is dead-lettered on its first delivery (no run.json patience, no trip through
    the lease: another read is no bigger; with other workers live it is left to them, see the mixed-fleet test below),
    the worker carries on and ends normally, and the dead letter says `run_too_large` (not `bad_task`), naming
    the size, the limit and the variable."""
    out, prefix, size, stats, took = _run_a_worker_below_the_drivers_run_size_limit(
        redis_server, corpus, tmp_path, monkeypatch, capsys)
    assert (stats.dead, stats.done, stats.failed) == (6, 0, 0), stats
    assert took < 5, "read again or retried through the lease"
    assert all(f"{size} bytes, over the {size - 1} a run record may hold ($SIGMA_MAX_RUN_BYTES" in error
               for error in stats.errors) and len(stats.errors) == 6, stats.errors
    dead = make_queue(redis_server.client(), Keys(prefix), "check").dead_entries()
    assert len(dead) == 6, dead
    for entry in dead:      # was `bad_task`, "bad task {...}": the task is sound, this machine's limit is lower
        error = json.loads(entry.fields["error"])
        assert error["code"] == "run_too_large" and not error["message"].startswith("bad task"), error
        assert f"{size} bytes, over the {size - 1}" in error["message"], error


def test_status_counts_the_shards_a_worker_dead_lettered_without_a_status_as_failed_saying_why(
        redis_server, corpus, tmp_path, monkeypatch, capsys):
    """A worker that cannot read the run's run.json (here its $SIGMA_MAX_RUN_BYTES is below the driver's) dead-letters
    the tasks without writing their status files: `sigma batch status --redis` showed those shards pending for ever,
    and `unqueued` ("the queue lost them") besides, the reason only in `<stream>:dead`. Now they are failed, each
    with its dead letter's reason as a status file a worker writes says it; the dead letters read are bounded
    (`--dead-limit`), and the status says when it read fewer than the stream holds. Without --redis nothing changes."""
    out, prefix, size, stats, _ = _run_a_worker_below_the_drivers_run_size_limit(
        redis_server, corpus, tmp_path, monkeypatch, capsys)
    assert stats.dead == 6 and not list((out / "status").glob("*.json")), stats
    monkeypatch.delenv("SIGMA_MAX_RUN_BYTES")                          # the driver's machine again

    redis_args = ["--redis", redis_server.url, "--key-prefix", prefix]
    assert main(["batch", "status", str(out), *redis_args, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["done"], status["failed"], status["pending"]) == (0, 6, 0), status
    assert len(status["failed_shards"]) == 6, status
    for failed in status["failed_shards"]:
        assert failed["error"].startswith("dead-lettered after 1 deliveries: [run_too_large] "), failed
        assert f"{size} bytes, over the {size - 1}" in failed["error"], failed
    queue = status["queue"]
    assert (queue["dead_lettered"], queue["unqueued"], queue["dead_read"], queue["dead_read_all"]) == (6, 0, 6, True)

    assert main(["batch", "status", str(out), *redis_args]) == 0
    text = capsys.readouterr().out
    assert "0/6 shards done, 6 failed, 0 pending" in text and text.count("[run_too_large]") == 6, text
    assert "6 shard(s) counted failed from their dead letters" in text and "the queue lost them" not in text, text

    # bounded: the newest 2 dead letters only; the status says so, and the rest stay pending
    assert main(["batch", "status", str(out), *redis_args, "--dead-limit", "2", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["failed"], status["pending"]) == (2, 4), status
    assert (status["queue"]["dead_read"], status["queue"]["dead_read_all"]) == (2, False), status["queue"]
    assert main(["batch", "status", str(out), *redis_args, "--dead-limit", "2"]) == 0
    assert "read the newest 2 of 6 dead letters (--dead-limit)" in capsys.readouterr().out

    # submitted again (the cause fixed): the shards have tasks again and are pending, not failed by old letters
    assert main(["batch", "submit", str(corpus), "--out", str(out), "--shard-size", "3", "--annotator", "pixel-diff",
                 "--set", "workers=0", *redis_args]) == 0
    capsys.readouterr()
    assert main(["batch", "status", str(out), *redis_args, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["failed"], status["pending"], status["queue"]["dead_lettered"]) == (0, 6, 0), status

    # without Redis the run folder alone: pending, as before
    assert main(["batch", "status", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["failed"], status["pending"]) == (0, 6) and "queue" not in status, status
    assert main(["batch", "status", str(out), *redis_args, "--dead-limit", "10001"]) == 2
    assert "--dead-limit" in capsys.readouterr().err
    # run_too_large failed the deliveries, not the run: a worker under the driver's limit finishes it
    stats = run_batch_worker(redis_server.url, prefix, "same-limit", block_ms=50, exit_when_idle=True)
    assert (stats.done, stats.dead) == (6, 0), stats
    assert main(["batch", "status", str(out), *redis_args, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["done"], status["failed"], status["queue"]["dead_lettered"]) == (6, 0, 0), status


def start_batch_worker(url: str, prefix: str, name: str, max_run_bytes: int, log: Path) -> subprocess.Popen:
    """A real `sigma worker --batch` process named `name` whose machine's $SIGMA_MAX_RUN_BYTES is `max_run_bytes`,
    with a short lease (a deferred task comes back after it), kept alive well within it while a task is in hand (a
    lease that ran out under a loaded machine while the worker noted its refusal handed the task to the other worker
    meanwhile), and frequent reclaims; its output in `log`."""
    env = {**os.environ, "SIGMA_REDIS_URL": url, "SIGMA__REDIS__KEY_PREFIX": prefix,
           "SIGMA_MAX_RUN_BYTES": str(max_run_bytes)}
    args = [sys.executable, "-m", "sigma", "worker", "--batch", "--consumer", name, "--set", "queue.block_ms=100",
            "--set", "queue.lease_ms=1000", "--set", "queue.heartbeat_interval_ms=100",
            "--set", "queue.reclaim_interval_ms=100",
            "--set", "worker.run_read_retry_s=1"]
    with open(log, "w") as handle:
        return subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)


def stop_batch_workers(procs: list[subprocess.Popen], logs: list[Path]) -> list[str]:
    """SIGTERM each (it finishes the shard in hand), then their outputs; each must have exited 0."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    outputs = [log.read_text() for log in logs]
    assert [proc.returncode for proc in procs] == [0] * len(procs), outputs
    return outputs


def wait_for(check, seconds: float) -> bool:
    """Whether `check` came true within `seconds`, at least 120 (it ends on the check: a passing run pays nothing; 30 s
    for a worker's heartbeat, its imports first, was missed under three busy loops)."""
    deadline = time.monotonic() + max(seconds, 120)
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def planned_run(redis_url: str, corpus: Path, out: Path, capsys) -> int:
    """The run planned (run.json written, its tasks queued under a prefix no worker reads): run.json's size, which
    the workers' limits are set against before they start. Submitted again under the workers' prefix, the plan is
    reused."""
    assert main(["batch", "submit", str(corpus), "--out", str(out), "--shard-size", "3", "--annotator", "pixel-diff",
                 "--set", "workers=0", "--redis", redis_url, "--key-prefix", prefix_name()]) == 0
    capsys.readouterr()
    return (out / "run.json").stat().st_size


def submit_when_live(redis_server, prefix: str, corpus: Path, out: Path, names: list[str], logs: list[Path],
                     capsys) -> None:
    """Once every worker in `names` has its heartbeat, the run's 6 tasks queued: each worker is there to take them."""
    client, keys = redis_server.client(), Keys(prefix)
    assert wait_for(lambda: all(client.exists(keys.batch_worker(n)) for n in names), STARTUP_S), [
        log.read_text() for log in logs]
    assert main(["batch", "submit", str(corpus), "--out", str(out), "--shard-size", "3", "--annotator", "pixel-diff",
                 "--set", "workers=0", "--redis", redis_server.url, "--key-prefix", prefix]) == 0
    assert "queued 6" in capsys.readouterr().out


def test_in_a_mixed_fleet_a_task_over_one_workers_run_size_limit_is_left_to_a_worker_that_can_take_it(
        redis_server, corpus, tmp_path, capsys):
    """Two real worker processes whose $SIGMA_MAX_RUN_BYTES differ, one run whose run.json is over the smaller limit
    only. The worker with the smaller one, started first, dead-lettered every task at its first delivery
    (`run_too_large`) before the other got any: the run failed though a worker could run it. Now it defers each task
    (no delivery spent, its refusal noted with its name), the worker with the larger limit takes them after the
    lease, and every shard is done, nothing dead-lettered, no deferral record left behind."""
    prefix, out = prefix_name(), tmp_path / "fleet"
    size = planned_run(redis_server.url, corpus, out, capsys)
    client, keys = redis_server.client(), Keys(prefix)
    q = make_queue(client, keys, "check")
    logs = [tmp_path / "small.log", tmp_path / "large.log"]
    procs = [start_batch_worker(redis_server.url, prefix, "small", size - 1, logs[0]),
             start_batch_worker(redis_server.url, prefix, "large", size, logs[1])]
    try:
        # both live, then the tasks: the small worker refuses in no time while the large one builds the run's
        # annotator and runs a shard, so it meets most tasks first
        submit_when_live(redis_server, prefix, corpus, out, ["small", "large"], logs, capsys)
        wait_for(lambda: RunDir(out).summary()["done"] == 6 or q.dead_count() > 0, 120)
    finally:
        outputs = stop_batch_workers(procs, logs)
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"], summary["pending"]) == (6, 0, 0), (summary, outputs)
    assert q.dead_count() == 0 and q.depth() == 0, (q.dead_entries(), outputs)
    assert "0 shard(s) done" in outputs[0] and "0 dead-lettered" in outputs[0], outputs[0]
    assert "6 shard(s) done" in outputs[1] and "0 dead-lettered" in outputs[1], outputs[1]
    assert "run_too_large" not in outputs[1], outputs[1]
    assert not list(client.scan_iter(match=keys.batch_task_deferred("*")))


def test_a_task_over_every_live_workers_run_size_limit_is_dead_lettered_once_each_has_refused_it(
        redis_server, corpus, tmp_path, capsys):
    """Two real worker processes, the run's run.json over both limits: each task is deferred until both workers
    have refused it, then dead-lettered `run_too_large`, the letter saying how many workers refused it and which,
    that it was given up once every live worker had, and how to go on; the run's status counts the shards failed.
    Before, the first worker's refusal dead-lettered it and the letter named no bound."""
    prefix, out = prefix_name(), tmp_path / "fleet"
    size = planned_run(redis_server.url, corpus, out, capsys)
    client, keys = redis_server.client(), Keys(prefix)
    q = make_queue(client, keys, "check")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_batch_worker(redis_server.url, prefix, "wa", size - 1, logs[0]),
             start_batch_worker(redis_server.url, prefix, "wb", size - 2, logs[1])]
    try:
        submit_when_live(redis_server, prefix, corpus, out, ["wa", "wb"], logs, capsys)
        start = time.monotonic()
        assert wait_for(lambda: q.dead_count() == 6, 60), [log.read_text() for log in logs]
        took = time.monotonic() - start
    finally:
        outputs = stop_batch_workers(procs, logs)
    assert took < 60, took
    # the one that met a task the other had refused dead-lettered it; neither ran any
    assert sum(int(re.search(r"failed, (\d+) dead-lettered", o).group(1)) for o in outputs) == 6, outputs
    assert all("0 shard(s) done" in o for o in outputs), outputs
    dead = q.dead_entries()
    assert len(dead) == 6 and q.depth() == 0, dead
    for entry in dead:
        error = json.loads(entry.fields["error"])
        assert error["code"] == "run_too_large", error
        message = error["message"]
        assert "refused by 2 worker(s)" in message and "wa" in message and "wb" in message, message
        assert "once every live worker had refused it" in message and "worker.max_defer_s=" in message, message
        assert "bytes, over the" in message and "submit the run again" in message, message
    assert not list(client.scan_iter(match=keys.batch_task_deferred("*")))      # nothing left behind in Redis
    assert main(["batch", "status", str(out), "--redis", redis_server.url, "--key-prefix", prefix, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["done"], status["failed"], status["pending"]) == (0, 6, 0), status
    assert all("[run_too_large]" in f["error"] and "refused by 2 worker(s)" in f["error"]
               for f in status["failed_shards"]), status["failed_shards"]


def test_a_run_status_reads_a_bounded_number_of_dead_letters_however_many_the_stream_holds(
        redis_server, corpus, tmp_path, capsys):
    """The dead-letter stream serves every run and `queue.dead_letter_maxlen` has no upper bound: a status that
    read all of it to find the run's dead-lettered shards took as long as the stream was. 100,000 other dead letters:
    the status reads the newest 2000 (`DEAD_READ`), says so, and answers in well under a second of Redis work."""
    from sigma.batch.layout import DEAD_READ

    prefix = prefix_name()
    out = tmp_path / "fleet"
    assert main(["batch", "submit", str(corpus), "--out", str(out), "--shard-size", "3", "--annotator", "pixel-diff",
                 "--set", "workers=0", "--redis", redis_server.url, "--key-prefix", prefix]) == 0
    capsys.readouterr()
    client = redis_server.client()
    client.xtrim(Keys(prefix).batch_tasks(), maxlen=0)     # the run's tasks gone: its shards looked for in the letters
    dead = Keys(prefix).batch_dead()
    for start in range(0, 100_000, 10_000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + 10_000):
            pipe.xadd(dead, {"run_dir": "/elsewhere", "shard": f"s{i:06d}", "run_hash": "x", "error": "{}"})
        pipe.execute()
    begin = time.monotonic()
    assert main(["batch", "status", str(out), "--redis", redis_server.url, "--key-prefix", prefix, "--json"]) == 0
    took = time.monotonic() - begin
    status = json.loads(capsys.readouterr().out)
    queue = status["queue"]
    assert (queue["dead"], queue["dead_read"], queue["dead_read_all"]) == (100_000, DEAD_READ, False), queue
    assert (status["pending"], queue["dead_lettered"], queue["unqueued"]) == (6, 0, 6), status
    assert took < 5, took
    assert main(["batch", "status", str(out), "--redis", redis_server.url, "--key-prefix", prefix]) == 0
    assert f"read the newest {DEAD_READ} of 100000 dead letters" in capsys.readouterr().out


def _flood_tasks(client, stream: str, count: int) -> None:
    """`count` other runs' tasks on the stream, pipelined (a round trip per 10,000)."""
    for start in range(0, count, 10_000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(count, start + 10_000)):
            pipe.xadd(stream, {"run_dir": f"/elsewhere/{i // 100}", "shard": f"s{i:06d}", "run_hash": "x",
                               "plugins": "[]"})
        pipe.execute()


def test_a_run_status_reads_a_bounded_number_of_tasks_however_many_the_stream_holds(
        redis_server, corpus, tmp_path, capsys):
    """The task stream serves every run and `sigma batch submit` queues past any cap: a status read all of it (every
    entry into memory) on every call to find the run's tasks. 100,000 other tasks: a run whose tasks are the oldest
    is looked for among the newest TASK_READ entries only, and the status says it stopped short, its shards
    `unchecked` (not "lost": `unqueued` 0); a run whose tasks are the newest is found at once, the read stopping
    there. `--task-limit` reads more, and finds them."""
    from sigma.batch.layout import MAX_TASK_READ, TASK_READ

    prefix = prefix_name()
    redis_args = ["--redis", redis_server.url, "--key-prefix", prefix]
    old, new = tmp_path / "old", tmp_path / "new"
    submit = ["--shard-size", "3", "--annotator", "pixel-diff", "--set", "workers=0", *redis_args]
    assert main(["batch", "submit", str(corpus), "--out", str(old), *submit]) == 0
    _flood_tasks(redis_server.client(), Keys(prefix).batch_tasks(), 100_000)
    assert main(["batch", "submit", str(corpus), "--out", str(new), *submit]) == 0
    capsys.readouterr()

    begin = time.monotonic()
    assert main(["batch", "status", str(old), *redis_args, "--json"]) == 0
    took = time.monotonic() - begin
    queue = json.loads(capsys.readouterr().out)["queue"]
    assert (queue["queued"], queue["tasks_read"], queue["tasks_read_all"]) == (100_012, TASK_READ, False), queue
    assert (queue["run_tasks"], queue["unchecked"], queue["unqueued"], queue["dead_lettered"]) == (0, 6, 0, 0), queue
    assert took < 5, took
    assert main(["batch", "status", str(old), *redis_args]) == 0
    text = capsys.readouterr().out
    assert f"read the newest {TASK_READ} of 100012 entries" in text and "6 pending shard(s)" in text, text
    assert "the queue lost them" not in text, text

    assert main(["batch", "status", str(new), *redis_args, "--json"]) == 0
    queue = json.loads(capsys.readouterr().out)["queue"]
    assert queue["tasks_read"] <= 1000 and queue["tasks_read_all"], queue          # one page
    assert (queue["run_tasks"], queue["unchecked"], queue["unqueued"]) == (6, 0, 0), queue
    assert main(["batch", "status", str(new), *redis_args, "--task-limit", "6", "--json"]) == 0
    queue = json.loads(capsys.readouterr().out)["queue"]
    assert (queue["tasks_read"], queue["tasks_read_all"], queue["run_tasks"], queue["unchecked"]) == (6, True, 6, 0)

    assert main(["batch", "status", str(old), *redis_args, "--task-limit", str(MAX_TASK_READ), "--json"]) == 0
    queue = json.loads(capsys.readouterr().out)["queue"]
    assert (queue["tasks_read"], queue["tasks_read_all"], queue["run_tasks"], queue["unchecked"]) == (100_012, True,
                                                                                                      6, 0), queue
    assert main(["batch", "status", str(old), *redis_args, "--task-limit", str(MAX_TASK_READ + 1)]) == 2
    assert "--task-limit" in capsys.readouterr().err


def test_a_run_status_with_redis_parses_run_json_once(redis_server, corpus, tmp_path, monkeypatch, capsys,
                                                     run_json_reads):
    """`sigma batch status --redis` read and checked run.json, then the queue's status read it again (its pending
    shards): two parses of a file of up to $SIGMA_MAX_RUN_BYTES (64 MiB) per status. The checked record is handed on;
    the counts are the same."""
    prefix = prefix_name()
    out = tmp_path / "fleet"
    redis_args = ["--redis", redis_server.url, "--key-prefix", prefix]
    assert main(["batch", "submit", str(corpus), "--out", str(out), "--shard-size", "3", "--annotator", "pixel-diff",
                 "--set", "workers=0", *redis_args]) == 0
    assert run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, max_tasks=2).done == 2
    capsys.readouterr()
    reads = run_json_reads
    reads.clear()                     # what is read from here on
    assert main(["batch", "status", str(out), *redis_args, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert len(reads) == 1, reads
    queue = status["queue"]
    assert (status["done"], status["pending"], queue["run_tasks"], queue["unqueued"]) == (2, 4, 4, 0), status


def test_a_shard_file_damaged_in_place_is_redone_by_a_worker_when_the_run_is_submitted_again(redis_server, corpus,
                                                                                           tmp_path):
    """`submit_run` holds a done shard to its recorded sha256 and queued one damaged in place (same size, other
    bytes), but the worker held it to its size only and skipped it as done: the run could not be repaired through the
    fleet (every submission queued it, every worker skipped it, every export refused it). Now the worker checks the
    checksum too and writes the shard again, as `sigma batch run --resume` does."""
    prefix, out = prefix_name(), tmp_path / "fleet"
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 6
    first = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True)
    assert first.done == 6, first.errors
    before = shard_bytes(out)
    victim = out / "shards" / sorted(before)[2]
    damaged = bytearray(before[victim.name])
    damaged[40:140] = bytes(b ^ 0xFF for b in damaged[40:140])      # same size, other bytes
    victim.write_bytes(bytes(damaged))
    again = submit_run(cfg_for(corpus), out, redis_server.url, prefix)
    assert (again["queued"], again["skipped"]) == (1, 5), again
    redo = run_batch_worker(redis_server.url, prefix, "w2", block_ms=50, exit_when_idle=True)
    assert (redo.done, redo.skipped) == (1, 0), redo
    assert shard_bytes(out) == before
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 0


def _xrevrange_calls(client) -> int:
    """XREVRANGE calls Redis has served so far (INFO commandstats): how many pages of a stream were read."""
    return int(client.info("commandstats").get("cmdstat_xrevrange", {}).get("calls", 0))


def test_a_submission_reads_the_task_stream_no_further_than_its_pending_shards_need(redis_server, corpus, tmp_path):
    """`submit_run` read the whole task stream (every run's tasks, up to api.max_batch_tasks, 1,000,000 by default)
    on every submission to find the run's tasks, even when there was nothing to look for: a finished run submitted
    again, or a client retrying a submission whose tasks are all queued, cost a read of every entry (100 pages of
    1000 here; ~1000 round trips at the API's cap). Now the read stops once every pending shard has its task, and a
    run with no pending shard reads none."""
    client = redis_server.client()
    prefix = prefix_name()
    tasks = Keys(prefix).batch_tasks()
    done_run, queued_run = tmp_path / "done", tmp_path / "queued"
    assert submit_run(cfg_for(corpus), done_run, redis_server.url, prefix)["queued"] == 6
    assert run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, exit_when_idle=True).done == 6
    _flood_tasks(client, tasks, 100_000)                                      # other runs' tasks, waiting
    assert submit_run(cfg_for(corpus), queued_run, redis_server.url, prefix)["queued"] == 6

    before = _xrevrange_calls(client)
    again = submit_run(cfg_for(corpus), queued_run, redis_server.url, prefix)
    assert (again["queued"], again["already_queued"]) == (0, 6), again
    assert _xrevrange_calls(client) - before <= 1, "read past the run's own tasks"

    before = _xrevrange_calls(client)
    finished = submit_run(cfg_for(corpus), done_run, redis_server.url, prefix)
    assert (finished["queued"], finished["skipped"]) == (0, 6), finished
    assert _xrevrange_calls(client) - before == 0, "read the stream for a run with nothing pending"
    assert client.xlen(tasks) == 100_006


def model_run(tmp_path: Path) -> tuple[Path, BatchConfig]:
    """A run of 2 shards of 3 pairs whose annotator loads a saved model folder (options.weights): sigma-lite on
    the tiny-lite `modelsavers.save_tiny` saves."""
    from modelsavers import save_tiny

    model = save_tiny(tmp_path / "model")
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(6, size=40))
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "set"), "shard_size": 3},
                                      "annotator": "sigma-lite", "workers": 0,
                                      "options": {"weights": str(model), "runtime": "torch"}})
    return model, cfg


def deferrals(client, keys: Keys) -> list[int]:
    """How often each of the stream's pending tasks has been deferred so far (0: never)."""
    from sigma.service.deferral import Deferral

    pending = client.xpending_range(keys.batch_tasks(), "sigma-batch", "-", "+", 100)
    records = [Deferral.parse(client.get(keys.batch_task_deferred(row["message_id"].decode()))) for row in pending]
    return [record.count if record is not None else 0 for record in records]


def test_a_shard_whose_model_folder_a_stopped_saver_holds_is_deferred_and_done_once_the_saver_resumes(
        redis_server, tmp_path, monkeypatch):
    """A run's annotator loads options.weights, a saved model folder; a `save_model` into it stopped mid-commit
    (Ctrl-Z, SIGSTOP) holds the folder, and the load fails `weights_busy` after $SIGMA_MODEL_LOCK_WAIT_S — a fault
    that ends when the saver goes on or dies. The fleet worker took it for the shard's failure (`shard_failed`,
    through the lease, a delivery spent each time), dead-lettered the task after queue.max_deliveries and failed the
    shard for good. Now the task is deferred as for a run folder a local run holds (after the lease, no delivery
    spent; each attempt waits the lock's bound first, so it never loops hot), and once the saver resumes the shards
    are annotated."""
    from modelsavers import end_saver, resume_saver, stopped_saver

    from sigma.api.batches import scrub

    monkeypatch.setenv("SIGMA_MODEL_LOCK_WAIT_S", "1")
    model, cfg = model_run(tmp_path)
    prefix, out = prefix_name(), tmp_path / "fleet"
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
    client, keys = redis_server.client(), Keys(prefix)
    saver = stopped_saver(model)
    stop, box = threading.Event(), {}
    worker = threading.Thread(target=lambda: box.update(stats=run_batch_worker(
        redis_server.url, prefix, "w1", stop=stop, block_ms=50, lease_ms=200, reclaim_interval_ms=30,
        max_deliveries=2, exit_when_idle=True)))
    try:
        worker.start()
        deadline = time.monotonic() + 60
        # each task refused more often than max_deliveries (2): without the fix both are dead-lettered by then and
        # the worker, idle, returns
        while worker.is_alive() and time.monotonic() < deadline and min(deferrals(client, keys) or [0]) < 3:
            time.sleep(0.1)
        assert worker.is_alive(), (box.get("stats"), RunDir(out).summary())
        assert min(deferrals(client, keys)) >= 3, deferrals(client, keys)
        status = queue_status(redis_server.url, prefix, run=RunDir(out))
        assert status["deferred"] == 2 and str(model) in status["deferred_reason"], status
        assert f"pid {saver.pid} (saving)" in status["deferred_reason"], status
        shown = scrub(status["deferred_reason"], str(tmp_path))          # as GET /v1/batches/status says it
        assert str(saver.pid) not in shown and "another process (saving)" in shown and "try again later" in shown, shown
        assert "kill -CONT" not in shown and "`fg`" not in shown, shown      # a shell's remedy, not a caller's
        pending = client.xpending_range(keys.batch_tasks(), "sigma-batch", "-", "+", 100)
        assert max(row["times_delivered"] for row in pending) <= 1, pending     # no delivery spent
        resume_saver(saver)
        worker.join(timeout=120)
        assert not worker.is_alive()
    finally:
        stop.set()
        end_saver(saver)
        worker.join(timeout=60)
    stats = box["stats"]
    assert (stats.done, stats.dead, stats.failed) == (2, 0, 0) and stats.deferred >= 6, stats
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"]) == (2, 0), summary
    assert not list(client.scan_iter(match=keys.batch_task_deferred("*")))      # nothing left behind in Redis


def test_a_shard_whose_model_folder_stays_held_is_dead_lettered_weights_busy_after_max_defer_s(
        redis_server, tmp_path, monkeypatch):
    """The deferral of a busy model folder is bounded as a held run folder's is: no shard written in the run folder
    for worker.max_defer_s, the task is dead-lettered `weights_busy`, its shard failed saying which folder, who
    holds it and what to do; once the saver has gone on, submitting the run again finishes it."""
    from modelsavers import end_saver, resume_saver, stopped_saver

    from sigma.api.batches import scrub

    monkeypatch.setenv("SIGMA_MODEL_LOCK_WAIT_S", "1")
    model, cfg = model_run(tmp_path)
    prefix, out = prefix_name(), tmp_path / "fleet"
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
    saver = stopped_saver(model)
    try:
        stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, lease_ms=200, reclaim_interval_ms=30,
                                 max_deliveries=2, exit_when_idle=True, max_defer_s=4.0)
        assert (stats.done, stats.dead) == (0, 2) and stats.deferred >= 2, stats
        for entry in make_queue(redis_server.client(), Keys(prefix), "check").dead_entries():
            error = json.loads(entry.fields["error"])
            assert error["code"] == "weights_busy", error
            assert str(model) in error["message"] and f"pid {saver.pid} (saving)" in error["message"], error
            assert "worker.max_defer_s=4" in error["message"] and "submit the run again" in error["message"], error
            shown = scrub(error["message"], str(tmp_path))                 # as GET /v1/batches/status says it
            assert str(saver.pid) not in shown and str(tmp_path) not in shown and "model:" in shown, shown
            assert "or POST /v1/batches) to queue" in shown, shown          # the API's own route is not a path
        summary = RunDir(out).summary()
        assert summary["failed"] == 2, summary
        assert all("[weights_busy]" in f["error"] for f in summary["failed_shards"]), summary["failed_shards"]
        resume_saver(saver)
    finally:
        end_saver(saver)
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
    stats = run_batch_worker(redis_server.url, prefix, "w2", block_ms=50, exit_when_idle=True)
    assert (stats.done, stats.dead, stats.deferred) == (2, 0, 0), stats
    summary = RunDir(out).summary()
    assert (summary["done"], summary["failed"], summary["pending"]) == (2, 0, 0), summary


def test_a_batch_worker_whose_hang_watchdog_is_not_above_the_model_lock_wait_is_refused_at_start_up(
        redis_server, tmp_path):
    """The hang watchdog (`worker.batch_timeout_s`) counts from a task's start, and building the run's annotator waits
    up to $SIGMA_MODEL_LOCK_WAIT_S for a model folder a stopped saver holds before deferring the task (5c20a4b). With
    the watchdog at or below that wait, a real `sigma worker --batch` (here: watchdog 2 s, lock wait 3 s, a saver
    stopped mid-commit) was killed as hung, `a shard hung`, exit 1, a delivery spent, instead of deferring. Now it
    does not start: one `invalid_config` line naming the settings and their values, exit 2, before Redis; the
    default wait (120 s) is named when the variable is unset. The watch also covers reading the task's run.json again
    (`worker.run_read_retry_s`), so the rule is their sum: a watchdog of 4 s above a lock wait of 3 s, with run.json
    read again for 2 s, was taken and could fire before a deferral; now it is refused."""
    from modelsavers import end_saver, stopped_saver
    from servicekit import Proc, base_env

    model, cfg = model_run(tmp_path)
    prefix = prefix_name()
    assert submit_run(cfg, tmp_path / "fleet", redis_server.url, prefix)["queued"] == 2
    saver = stopped_saver(model)
    try:
        cases = (("4", "3", "2", "worker.run_read_retry_s=2 + $SIGMA_MODEL_LOCK_WAIT_S=3 = 5 s"),   # taken before
                 ("2", "3", "5", "worker.run_read_retry_s=5 + $SIGMA_MODEL_LOCK_WAIT_S=3 = 8 s"),
                 ("3", "3", "0", "worker.run_read_retry_s=0 + $SIGMA_MODEL_LOCK_WAIT_S=3 = 3 s"),
                 ("60", None, "5", "worker.run_read_retry_s=5 + $SIGMA_MODEL_LOCK_WAIT_S=120 = 125 s"))
        for timeout_s, wait, retry_s, said in cases:
            config = tmp_path / f"serve-{timeout_s}.yaml"
            config.write_text(f"redis:\n  key_prefix: {prefix}\nqueue:\n  heartbeat_interval_ms: 150\n  "
                              f"block_ms: 100\nworker:\n  batch_timeout_s: {timeout_s}\n  "
                              f"run_read_retry_s: {retry_s}\n")
            env = base_env(redis_server.url)
            env.pop("SIGMA_MODEL_LOCK_WAIT_S", None)
            if wait is not None:
                env["SIGMA_MODEL_LOCK_WAIT_S"] = wait
            proc = Proc(["worker", "--batch", "--config", str(config), "--consumer", f"w{timeout_s}"], env,
                        tmp_path / f"worker-{timeout_s}.log")
            try:
                proc.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            code, log = proc.stop(), proc.output()
            lines = [line for line in log.splitlines() if line.strip()]
            assert code == 2 and len(lines) == 1, (code, log)
            assert lines[0].startswith("sigma: error [invalid_config]: "), log
            assert f"worker.batch_timeout_s={timeout_s} " in lines[0] and said in lines[0], log
            assert "a shard hung" not in log and "Traceback" not in log, log
        # nothing was taken: both tasks still wait, no delivery spent on them
        assert deferrals(redis_server.client(), Keys(prefix)) == []
        assert RunDir(tmp_path / "fleet").summary()["pending"] == 2
    finally:
        end_saver(saver)


def lapse_handlers(redis_server, prefix: str, lease_ms: int) -> dict:
    """Workers `a` and `b` of one fleet driven by hand (queue, handler, consumer loop), each settling the outcomes
    of the entries it is given as `sigma worker --batch` does: their consumers, by name."""
    from sigma.service.consumer import Consumer
    from sigma.service.fleet import FleetHandler
    from sigma.service.settings import QueueSettings

    client, keys = redis_server.client(), Keys(prefix)
    settings = QueueSettings(lease_ms=lease_ms, block_ms=50, max_deliveries=3)
    workers = {}
    for name in ("a", "b"):
        q = make_queue(client, keys, name, lease_ms=lease_ms, max_deliveries=3)
        handler = FleetHandler(name, client=client, keys=keys, max_defer_s=60.0)
        workers[name] = (q, Consumer(client, q, handler, settings, heartbeat_key=keys.batch_worker(name)))
    return workers


def test_a_deferral_noted_while_a_tasks_lease_lapsed_is_forgotten_when_its_first_worker_finishes_it(
        redis_server, corpus, tmp_path):
    """Worker a reads a task and is slow (its lease lapses: a loaded host, a missed heartbeat); worker b reclaims it,
    finds the run folder held (a local run) and defers it, noting a deferral record; a then finishes the shard and
    acknowledges the task. A record was forgotten only by a worker that had the task through a reclaim, so a's ack
    left b's record in Redis for worker.max_defer_s + a day (2 days by default, up to 31), for a task long gone; a
    failed first delivery (retried) left it too, and the run's status reported that task as deferred, with b's stale
    reason, until the next reclaim. Now a task's record is forgotten whenever it is done, retried or dead-lettered,
    and one noted for a task settled meanwhile by another worker (b's hand-back finds it gone) is dropped too."""
    prefix, out = prefix_name(), tmp_path / "fleet"
    assert submit_run(cfg_for(corpus), out, redis_server.url, prefix)["queued"] == 6
    client, keys = redis_server.client(), Keys(prefix)
    workers = lapse_handlers(redis_server, prefix, lease_ms=100)
    (qa, a), (qb, b) = workers["a"], workers["b"]

    def lapse_and_defer(first) -> None:
        """b takes `first` once its lease has run out under a, and defers it: the run folder is held."""
        time.sleep(0.2)
        live, _ = qb.reclaim(count=1)
        assert [e.id for e in live] == [first.id] and live[0].claimed, live
        with RunDir(out).locked():
            b.process(live)
        assert client.get(keys.batch_task_deferred(first.id)) is not None
        assert 0 < client.ttl(keys.batch_task_deferred(first.id)) <= 60 + 86_400

    done = qa.read(1, None)
    assert done and not done[0].claimed
    lapse_and_defer(done[0])
    a.process(done)                                  # a finishes its first delivery: done, acknowledged
    assert b.handler.stats.deferred == 1 and a.handler.stats.done == 1, (a.handler.stats, b.handler.stats)
    assert client.get(keys.batch_task_deferred(done[0].id)) is None, client.ttl(keys.batch_task_deferred(done[0].id))

    # b notes its deferral after a finished the task: b's hand-back finds it settled and drops the record
    late = qa.read(1, None)
    time.sleep(0.2)
    live, _ = qb.reclaim(count=1)
    assert [e.id for e in live] == [late[0].id]
    a.process(late)
    assert a.handler.stats.done == 2, a.handler.stats
    # b looked at the shard before a wrote it: to b it is still to do (its status file gone, as then)
    (out / "status" / f"{live[0].fields['shard']}.json").unlink()
    with RunDir(out).locked():
        b.process(live)
    assert b.handler.stats.deferred == 2, b.handler.stats
    assert client.get(keys.batch_task_deferred(late[0].id)) is None

    # a first delivery that fails (the corpus briefly gone) goes back through its lease: b's deferral is over too,
    # and the run's status does not call it deferred
    failing = qa.read(1, None)
    lapse_and_defer(failing[0])
    corpus.rename(tmp_path / "moved")
    try:
        a.process(failing)
    finally:
        (tmp_path / "moved").rename(corpus)
    assert a.handler.stats.failed == 1, a.handler.stats
    assert client.get(keys.batch_task_deferred(failing[0].id)) is None
    assert queue_status(redis_server.url, prefix, run=RunDir(out))["deferred"] == 0

    assert not list(client.scan_iter(match=keys.batch_task_deferred("*")))      # nothing left behind in Redis


@pytest.mark.parametrize("url", ["localhost:6379", "redis://127.0.0.1:99999999/0", "redis://\udcffhost:6379/0",
                                 "redis://" + "a" * 70 + ".example:6379/0"])
def test_a_redis_url_the_client_refuses_is_invalid_config_not_a_traceback(corpus, tmp_path, capsys, url):
    """`sigma batch status RUN --redis localhost:6379` (no scheme), a port past 65535, a host IDNA cannot encode:
    redis-py's ValueError / UnicodeError at the first connection was a traceback, exit 1."""
    out = tmp_path / "run"
    run_batch(BatchConfig.model_validate({"input": {"path": str(corpus)}, "annotator": "pixel-diff", "workers": 0}),
              out, progress=False)
    assert main(["batch", "status", str(out), "--redis", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sigma: error [invalid_config]") and "not a Redis URL" in err[0], err


def _big_thread_stacks() -> None:
    """Every thread of the process reserves a 2 GB stack (glibc sizes new threads by the RLIMIT_STACK read at start):
    a RLIMIT_AS set on it later from outside, below VmSize + one stack, refuses every new thread and leaves its heap
    room (as tests/test_service_faults.py's decode pool test)."""
    import resource

    resource.setrlimit(resource.RLIMIT_STACK, (2_000_000 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))


def _vm_size(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))


def _both_shards_done_none_dead(out: Path, log: Path, url: str, prefix: str, timeout: float) -> str:
    """Wait for both shards of a deferred run to be done, no task dead-lettered; the worker's log, for the caller's
    checks of what it said."""
    statuses = out / "status"
    assert wait_for(lambda: len([p for p in statuses.glob("*.json")
                                 if json.loads(p.read_text())["status"] == "done"]) == 2, timeout), log.read_text()
    status = queue_status(url, prefix)
    assert status["dead"] == 0, status
    return log.read_text()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_shards_a_workers_machine_would_start_no_thread_for_are_deferred_and_done_once_the_limit_is_lifted(
        redis_server, tmp_path):
    """A real `sigma worker --batch` whose machine refuses every new thread for a while (a RLIMIT_AS under one thread
    stack, set on the running worker): each task failed `RuntimeError: can't start new thread` as the shard's fault,
    a delivery spent per lease, and a limit that lasted `queue.max_deliveries` leases dead-lettered good shards (the
    run failed) though the worker ran the next task fine once the limit was gone. Now such a task is deferred (no
    delivery spent) and done after the limit is lifted."""
    import resource

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(6, size=32))
    prefix, out = prefix_name(), tmp_path / "fleet"
    env = {**os.environ, "SIGMA_REDIS_URL": redis_server.url, "SIGMA__REDIS__KEY_PREFIX": prefix,
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}
    log = tmp_path / "worker.log"
    with open(log, "w") as handle:
        worker = subprocess.Popen(
            [sys.executable, "-m", "sigma", "worker", "--batch", "--consumer", "w1", "--set", "queue.block_ms=100",
             "--set", "queue.lease_ms=700", "--set", "queue.heartbeat_interval_ms=100",
             "--set", "queue.reclaim_interval_ms=100", "--set", "queue.max_deliveries=2"],
            env=env, stdout=handle, stderr=subprocess.STDOUT, text=True, preexec_fn=_big_thread_stacks)
    try:
        r = redis_server.client()
        assert wait_for(lambda: r.exists(Keys(prefix).batch_worker("w1")), STARTUP_S), log.read_text()
        hard = resource.prlimit(worker.pid, resource.RLIMIT_AS)[1]
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (_vm_size(worker.pid) + 2**30, hard))
        cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "set"), "shard_size": 3},
                                          "annotator": "pixel-diff", "workers": 1})
        assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
        # past max_deliveries (2) leases of 0.7 s with every thread refused
        assert wait_for(lambda: log.read_text().count("can't start new thread") >= 6, 30), log.read_text()
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY, hard))
        said = _both_shards_done_none_dead(out, log, redis_server.url, prefix, 60)
        assert "deferred (delivery 1 not counted" in said and "Traceback" not in said, said
    finally:
        stop_batch_workers([worker], [log])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_shards_whose_model_a_workers_machine_refuses_memory_to_load_are_deferred_and_done_once_it_is_back(
        redis_server, tmp_path):
    """A real `sigma worker --batch` whose RLIMIT_AS is lowered from outside (prlimit) just before it loads a run's
    model (options.weights): the load is `out_of_memory` (`sigma.registry._build_failed`), and it was the shard's
    failure (`shard_failed`, a delivery spent each lease), so a shortage lasting `queue.max_deliveries` leases
    dead-lettered good shards and failed the run, where plain `sigma worker` loads again (`worker.load_retry_s`).
    Now the task is deferred (no delivery spent) and done once the limit is lifted. The window before the load is
    held open with a saver stopped on the model folder (`weights_busy`, deferred): the worker has imported what the
    load needs by then, so the refusal falls on the load itself."""
    import resource

    from modelsavers import end_saver, resume_saver, stopped_saver

    model, cfg = model_run(tmp_path)
    prefix, out = prefix_name(), tmp_path / "fleet"
    env = {**os.environ, "SIGMA_REDIS_URL": redis_server.url, "SIGMA__REDIS__KEY_PREFIX": prefix,
           "SIGMA_MODEL_LOCK_WAIT_S": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MALLOC_ARENA_MAX": "1"}
    log = tmp_path / "worker.log"
    saver = stopped_saver(model)
    with open(log, "w") as handle:
        worker = subprocess.Popen(
            [sys.executable, "-m", "sigma", "worker", "--batch", "--consumer", "w1", "--set", "queue.block_ms=100",
             "--set", "queue.lease_ms=1000", "--set", "queue.heartbeat_interval_ms=100",
             "--set", "queue.reclaim_interval_ms=100", "--set", "queue.max_deliveries=2"],
            env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)
    try:
        r = redis_server.client()
        assert wait_for(lambda: r.exists(Keys(prefix).batch_worker("w1")), STARTUP_S), log.read_text()
        assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
        assert wait_for(lambda: f"pid {saver.pid} (saving)" in log.read_text(), 60), log.read_text()
        hard = resource.prlimit(worker.pid, resource.RLIMIT_AS)[1]
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (_vm_size(worker.pid) + 2**20, hard))
        resume_saver(saver)
        # past max_deliveries (2) leases with every load refused its memory
        refused = re.compile(r"(deferred|failed) \(delivery \d+.*(out_of_memory|loading the run's model|memory)")
        assert wait_for(lambda: len(refused.findall(log.read_text())) >= 5 or worker.poll() is not None, 60), \
            log.read_text()
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY, hard))
        said = _both_shards_done_none_dead(out, log, redis_server.url, prefix, 90)
        assert "loading the run's model" in said and "Traceback" not in said, said
        assert "shard_failed" not in said and "failed (delivery" not in said, said
    finally:
        end_saver(saver)
        stop_batch_workers([worker], [log])


def _short_load_run(tmp_path: Path, refuse: str) -> tuple[BatchConfig, Path]:
    """A run of 2 shards whose annotator's build this machine refuses (`short-load`, tests/service_plugins.py) until
    the file returned exists."""
    import service_plugins  # noqa: F401 - registers short-load here, for the plan

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(6, size=32))
    lifted = tmp_path / "lifted"
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "set"), "shard_size": 3},
                                      "annotator": "short-load", "workers": 0, "plugins": ["service_plugins"],
                                      "options": {"refuse": refuse, "lifted": str(lifted)}})
    return cfg, lifted


def test_shards_whose_model_the_machine_starts_no_thread_to_load_are_deferred_and_done_once_it_can(
        redis_server, tmp_path):
    """A fleet worker whose machine refuses a thread the run's model starts while it loads (pthread_create failing:
    `out_of_threads` from `sigma.registry._build_failed`) defers the task, no delivery spent, past
    `queue.max_deliveries` leases: it was the shard's failure (`shard_failed`), and such a shortage dead-lettered good
    shards. Once threads are there again both shards are done and nothing is dead-lettered."""
    cfg, lifted = _short_load_run(tmp_path, "threads")
    prefix, out = prefix_name(), tmp_path / "fleet"
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
    client = redis_server.client()
    stop = threading.Event()
    results: list = []
    worker = threading.Thread(target=lambda: results.append(run_batch_worker(
        redis_server.url, prefix, "w1", block_ms=50, lease_ms=200, reclaim_interval_ms=30, max_deliveries=2,
        stop=stop, max_defer_s=600.0)))
    worker.start()
    try:
        assert wait_for(lambda: sum(deferrals(client, Keys(prefix))) >= 6, 60), deferrals(client, Keys(prefix))
        lifted.touch()
        assert wait_for(lambda: RunDir(out).summary()["done"] == 2, 60), RunDir(out).summary()
    finally:
        stop.set()
        worker.join(timeout=60)
    stats = results[0]
    assert (stats.done, stats.dead, stats.failed) == (2, 0, 0) and stats.deferred >= 6, stats
    assert queue_status(redis_server.url, prefix)["dead"] == 0


def test_shards_whose_model_the_machine_refuses_memory_to_load_are_dead_lettered_out_of_memory_after_max_defer_s(
        redis_server, tmp_path):
    """A load the machine refuses memory for good (a real MemoryError from the allocator) is deferred, then, with no
    shard written for `worker.max_defer_s`, dead-lettered `out_of_memory` saying what was refused, for how long and
    what to do, and each shard is failed so; once memory is there, submitting the run again finishes it."""
    from sigma.api.batches import scrub

    cfg, lifted = _short_load_run(tmp_path, "memory")
    prefix, out = prefix_name(), tmp_path / "fleet"
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
    stats = run_batch_worker(redis_server.url, prefix, "w1", block_ms=50, lease_ms=200, reclaim_interval_ms=30,
                             max_deliveries=2, exit_when_idle=True, max_defer_s=3.0)
    assert (stats.done, stats.dead, stats.failed) == (0, 2, 0) and stats.deferred >= 2, stats
    for entry in make_queue(redis_server.client(), Keys(prefix), "check").dead_entries():
        error = json.loads(entry.fields["error"])
        assert error["code"] == "out_of_memory", error
        assert "loading the run's model" in error["message"] and "worker.max_defer_s=3" in error["message"], error
        assert "submit the run again" in error["message"], error
        shown = scrub(error["message"], str(tmp_path))
        assert str(tmp_path) not in shown, shown
    summary = RunDir(out).summary()
    assert summary["failed"] == 2, summary
    assert all("[out_of_memory]" in f["error"] for f in summary["failed_shards"]), summary["failed_shards"]
    lifted.touch()
    assert submit_run(cfg, out, redis_server.url, prefix)["queued"] == 2
    stats = run_batch_worker(redis_server.url, prefix, "w2", block_ms=50, exit_when_idle=True)
    assert (stats.done, stats.dead, stats.deferred) == (2, 0, 0), stats
    assert RunDir(out).summary()["done"] == 2
