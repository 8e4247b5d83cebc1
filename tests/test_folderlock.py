"""`sigma.folderlock.hold_folder`: one process per output folder, and no trace of a run that wrote nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
from envwaits import BAD_WAITS, refused_wait
from setwriters import end as _end
from setwriters import set_writer as _set_writer

from sigma.errors import InputError
from sigma.folderlock import hold_folder


@pytest.mark.parametrize("marker", [True, False])
def test_a_folder_the_hold_made_is_removed_only_when_nothing_was_written(tmp_path, marker):
    empty, used = tmp_path / "empty", tmp_path / "used"
    with hold_folder(empty, marker=marker):
        assert empty.is_dir()
    assert not empty.exists()
    with hold_folder(used, marker=marker):
        (used / "run.json").write_text("{}")
    assert (used / "run.json").is_file()
    before = tmp_path / "before"
    before.mkdir()
    with hold_folder(before, marker=marker):
        pass
    assert before.is_dir()                                   # a folder it did not make stays


@pytest.mark.parametrize("marker", [True, False])
def test_a_refused_hold_never_removes_the_holders_folder(tmp_path, monkeypatch, marker):
    """Two processes that both saw no folder (the holder's mkdir came between the other's check and its
    own): the refused one must not take the holder's fresh, still empty folder away."""
    out = tmp_path / "out"
    with hold_folder(out, marker=marker):
        real_exists = Path.exists
        monkeypatch.setattr(Path, "exists", lambda self: False if self == out else real_exists(self))
        with pytest.raises(InputError) as refused, hold_folder(out, marker=marker):
            pass
        monkeypatch.undo()
        assert refused.value.code == "run_locked"
        assert out.is_dir() and (out / ".lock").exists() == marker
    assert not out.exists()                                 # the holder made it and wrote nothing


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, capsys):
    """A held folder's `.lock` that is a symbolic link (a run folder copied from elsewhere) had its target
    truncated and overwritten with the holder's pid: `sigma train --resume RUN` emptied whatever file the link
    named. Now refused (bad_outdir) before anything is written, through the link or into the folder."""
    import os

    from sigma.cli import main

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(precious, run / ".lock")
    with pytest.raises(InputError) as err, hold_folder(run):
        pass
    assert err.value.code == "bad_outdir" and precious.read_text() == "keep me"
    (run / "config.yaml").write_text("name: run\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    assert "[bad_outdir]" in capsys.readouterr().err and precious.read_text() == "keep me"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml"]


def _photos(folder: Path, n: int = 3) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_the_synth_cache_and_synth_pairs_have_one_writer(tmp_path):
    """Two cache builds on one folder would write the same <n>.tmp.npz at once and could publish a file spliced
    from both; two `sigma synth --out` runs would leave a pairs.jsonl naming a mix of both. The second is
    refused (run_locked) and the first completes."""
    import json

    from sigma.cli import main
    from sigma.data.synth.cache import build_cache

    photos = _photos(tmp_path / "photos")
    cache = tmp_path / "cache"
    with hold_folder(cache):
        with pytest.raises(InputError) as err:
            build_cache(photos, cache, vae=None, log=None)
        assert err.value.code == "run_locked"
        assert [p.name for p in cache.iterdir()] == [".lock"]
    build_cache(photos, cache, vae=None, log=None)
    assert len(json.loads((cache / "index.json").read_text())["files"]) == 3

    out = tmp_path / "pairs"
    with hold_folder(out):
        assert main(["synth", "--out", str(out), "-n", "2", "--photos", str(photos), "--no-progress"]) == 2
        assert not (out / "pairs.jsonl").exists()
    assert main(["synth", "--out", str(out), "-n", "2", "--photos", str(photos), "--no-progress"]) == 0
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 2


def test_one_eval_per_out_folder(tmp_path, capsys):
    """Every eval started in one folder writes to the same default sigma_eval/: a second one while the first
    runs would splice metrics.json.tmp or pair one run's metrics with the other's config.yaml."""
    import json

    from sigma.cli import main
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    data = tmp_path / "set"
    write_pairs_jsonl(data, synthetic_pairs(2))
    out = tmp_path / "eval"
    out.mkdir()
    with hold_folder(out):
        assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(out)]) == 2
        assert "[run_locked]" in capsys.readouterr().err and not (out / "metrics.json").exists()
    assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["annotator"] == "pixel-diff"


def test_a_failed_eval_leaves_no_empty_out_folder_it_made(tmp_path, capsys):
    """`sigma eval` makes --out before the evaluation (to refuse an unusable one early); an eval that then
    fails (no such data) removes the folder it made, and never one that was there before."""
    from sigma.cli import main

    made = tmp_path / "new" / "eval"
    assert main(["eval", "--data", str(tmp_path / "missing"), "--annotator", "pixel-diff", "--out", str(made)]) == 2
    assert "[file_not_found]" in capsys.readouterr().err and not made.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main(["eval", "--data", str(tmp_path / "missing"), "--annotator", "pixel-diff", "--out", str(kept)]) == 2
    assert kept.is_dir() and not (kept / "metrics.json").exists()


def test_a_held_folder_names_its_holders_pid_and_host_and_reads_an_older_pid_only_lock_file(tmp_path, capsys):
    """The lock file held only the holder's pid, and the refusal said "pid N": on shared storage (NFS) the holder
    may be another machine's process, and the user looked for that pid on their own. The holder now writes its pid
    and host, and `run_locked` names both (here from a real `sigma batch run` on the held --out). A lock file written
    by an older sigma (pid only) is still read: its pid, no host claimed; one that holds anything else is quoted with
    its control characters escaped, not echoed to the terminal as it is."""
    import fcntl
    import os
    import socket

    from sigma.cli import main
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    host = socket.gethostname()
    out = tmp_path / "out"
    out.mkdir()                                             # kept after the hold, with its lock file
    with hold_folder(out):
        assert (out / ".lock").read_text() == f"{os.getpid()} {host}\n"
        with pytest.raises(InputError) as refused, hold_folder(out):
            pass
        assert refused.value.code == "run_locked"
        assert f"(pid {os.getpid()} on host {host})" in refused.value.message, refused.value.message
        write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))
        capsys.readouterr()
        assert main(["batch", "run", str(tmp_path / "set"), "--out", str(out), "--annotator", "pixel-diff",
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "[run_locked]" in err and f"pid {os.getpid()} on host {host}" in err, err
    assert (out / ".lock").read_text() == ""               # left empty: a holder no longer there names nobody

    for written, said in [("4321\n", "(pid 4321)"), ("\x1b[2J 12 ab\n", r"(the lock file says '\x1b[2J 12 ab')")]:
        older = tmp_path / f"older-{len(written)}"
        older.mkdir()
        (older / ".lock").write_text(written)
        with open(older / ".lock") as held:             # another open file: its flock excludes ours, as a process's
            fcntl.flock(held, fcntl.LOCK_EX)
            with pytest.raises(InputError) as refused, hold_folder(older):
                pass
        assert refused.value.code == "run_locked" and said in refused.value.message, refused.value.message
        assert "\x1b" not in refused.value.message


def test_a_refused_hold_leaves_the_holders_line_for_the_next_one(tmp_path):
    """A refused exclusive hold emptied the lock file on its way out (as the holder does when it ends): a second
    `sigma batch run` on a held --out was told the holder's pid, a third "fleet workers (sigma worker --batch)"."""
    import os

    out = tmp_path / "out"
    with hold_folder(out):
        line = (out / ".lock").read_text()
        for _ in range(2):
            with pytest.raises(InputError) as refused, hold_folder(out):
                pass
            assert f"pid {os.getpid()}" in refused.value.message, refused.value.message
        assert (out / ".lock").read_text() == line


def _flocked(lock: Path, *flags: str):
    """A real `flock(1)` of util-linux holding `lock` (another tool's hold: no holder line written), once it holds;
    in a session of its own, for `_ended` to end it with its command (which inherits the lock)."""
    import subprocess
    import time

    from sigma.tempfiles import lock_holders

    proc = subprocess.Popen(["flock", *flags, str(lock), "sleep", "60"], start_new_session=True)
    deadline = time.monotonic() + 10
    with open(lock) as handle:
        while proc.pid not in [pid for pid, _ in lock_holders(handle.fileno())]:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
    return proc


def _ended(procs) -> None:
    import os
    import signal

    for proc in procs:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_folder_held_by_another_tools_flock_names_its_pid_not_fleet_workers(tmp_path):
    """`flock RUN/.lock CMD` (another tool, no holder line in the file) while `sigma train --resume RUN` starts: the
    refusal said the folder was held by "fleet workers (sigma worker --batch)", which never touch a training run.
    Now what is known: the holding pid as /proc/locks names it (shared holds said as shared)."""
    import re

    from sigma.folderlock import anonymised

    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").touch()
    procs = [_flocked(run / ".lock")]
    try:
        with pytest.raises(InputError) as refused, hold_folder(run, other="name="):
            pass
    finally:
        _ended(procs)
    message = refused.value.message
    assert refused.value.code == "run_locked"
    assert message == f"{run}: another process holds this folder (pid {procs[0].pid}); wait for it to finish or " \
                      "choose another name=", message
    assert anonymised(message) == f"{run}: another process holds this folder (another process); wait for it to " \
                                  "finish or choose another name="
    procs = [_flocked(run / ".lock", "-s"), _flocked(run / ".lock", "-s")]
    try:
        with pytest.raises(InputError) as refused, hold_folder(run):
            pass
    finally:
        _ended(procs)
    pids = re.search(r"other processes share this folder \(pid (\d+), pid (\d+)\); wait", refused.value.message)
    assert pids and {int(pid) for pid in pids.groups()} == {proc.pid for proc in procs}, refused.value.message
    assert "fleet" not in refused.value.message


def test_a_refused_hold_says_how_long_the_holder_has_held_it_and_anonymised_drops_who_it_is(tmp_path):
    """The API answered `run_locked` (and a fleet deferral's reason, a dead letter's run_locked_too_long) with the
    holder's pid and host name, the server's internals. `anonymised` says each holder `described_holder` names as
    `another process` (a host, an older lock file's pid, a lock file's own text, one cut short) and keeps how long
    it has held the folder, which the message now says (from when the holder wrote its line)."""
    import fcntl
    import os
    import re
    import socket
    import time

    from sigma.folderlock import anonymised

    out = tmp_path / "out"
    with hold_folder(out):
        os.utime(out / ".lock", (time.time() - 120,) * 2)      # the holder took it two minutes ago
        with pytest.raises(InputError) as refused, hold_folder(out):
            pass
    message = refused.value.message
    assert re.search(r"another run has held this folder for 12[01] s \(pid \d+ on host ", message), message
    assert anonymised(message) == message.replace(f"pid {os.getpid()} on host {socket.gethostname()}",
                                                  "another process")
    for written in ("4321\n", "\x1b[2J 12 ab'\"\n", "x" * 300):
        older = tmp_path / f"older-{len(written)}"
        older.mkdir()
        (older / ".lock").write_text(written)
        with open(older / ".lock") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            with pytest.raises(InputError) as refused, hold_folder(older):
                pass
        said = anonymised(refused.value.message)
        assert re.search(r"has held this folder for \d+ s \(another process\); wait", said), said
        assert "4321" not in said and "12 ab" not in said and "xxx" not in said, said
    assert anonymised("held (the lock file says 'name.example.org an") == "held (another process"   # cut short
    shared = "another process shares this folder (pid 123); wait"
    assert anonymised(shared) == "another process shares this folder (another process); wait"


def test_the_subfolder_sweep_follows_no_link_and_walks_nothing_unnamed(tmp_path):
    """`sweep_stale_below` removes a dead writer's temporary file in the named subfolders only: a named folder that
    is a symbolic link (at any level) to a folder elsewhere is not swept through, a folder not named (or below a
    named one) is not read, and `..` names nothing."""
    import subprocess
    import sys

    from sigma.tempfiles import sweep_stale_below

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    junk = f".m.png.{proc.pid}.0badf00d.tmp"
    root, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    for folder in (root / "masks" / "a", root / "masks" / "a" / "deeper", root / "other", elsewhere / "b"):
        folder.mkdir(parents=True)
        (folder / junk).write_text("x")
    (root / "masks" / "b").symlink_to(elsewhere / "b")
    (root / "linked").symlink_to(elsewhere)
    removed = sweep_stale_below(root, ["masks/a", "masks/b", "linked/b", "../elsewhere/b", "missing"])
    assert removed == [root / "masks" / "a" / junk]
    for kept in (root / "masks" / "a" / "deeper", root / "other", elsewhere / "b"):
        assert (kept / junk).is_file()


def test_a_set_with_files_below_its_folder_is_journalled_there_and_never_followed_out(tmp_path):
    """`replace_together` took one folder's files only, so `sigma export hf` committed `data/*.parquet` as a set and
    renamed `README.md` after it (a kill between: new shards beside the earlier card). A set now lies in its last
    file's folder or below it: the journal there names the others by relative path (`data/NAME`) and is finished
    from there; a path out of the folder is refused, and a journal naming one (`../x`, or through a subfolder that is
    a symbolic link) is never followed."""
    import json
    import os

    from sigma.tempfiles import finish_replacements, replace_together

    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    replace_together([(out / "data" / "a.bin", b"old a"), (out / "README.md", b"old card")])
    replace_together([(out / "data" / "b.bin", b"new b"), (out / "README.md", b"new card")],
                     remove=[out / "data" / "a.bin"])
    assert sorted(os.listdir(out / "data")) == ["b.bin"] and (out / "README.md").read_bytes() == b"new card"
    assert sorted(os.listdir(out)) == ["README.md", "data"]
    for outside in (tmp_path / "x.bin", out / "data" / ".." / ".." / "x.bin"):
        with pytest.raises(ValueError):
            replace_together([(outside, b"x"), (out / "README.md", b"card")])
    assert not (tmp_path / "x.bin").exists()
    # a journal as a killed writer would leave it (pid 2**22 + 1: no process), naming files out of its folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "victim").write_bytes(b"kept")
    (out / "linked").symlink_to(elsewhere)
    (out / ".s.tmp").write_bytes(b"staged")
    for target in ("../elsewhere/victim", "linked/victim"):
        journal = out / ".README.md.4194305.0000abcd.pending"
        journal.write_text(json.dumps({"files": [[".s.tmp", target], [".s.tmp", "README.md"]], "remove": []}))
        assert finish_replacements(out) == [] and journal.exists()
        journal.unlink()
    assert (elsewhere / "victim").read_bytes() == b"kept" and (out / "README.md").read_bytes() == b"new card"


def _sigma_eval(data: Path, out: Path, wait_s: str):
    """`sigma eval` (pixel-diff) in a process of its own, its folder waits bounded to `wait_s` seconds."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SIGMA_FOLDER_LOCK_WAIT_S": wait_s}
    return subprocess.Popen([sys.executable, "-m", "sigma", "eval", "--data", str(data), "--annotator", "pixel-diff",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _busy_line(err: str, folder: Path, holder: int, action: str) -> None:
    """The one line a `folder_busy` failure says: the folder, the wait, the holder's pid, what to do."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"sigma: error [folder_busy]: {folder}: cannot {action} this folder"), err
    assert f"pid {holder} (writing)" in err and "for all of 2 s" in err, err
    assert f"kill -CONT {holder}" in err and "SIGMA_FOLDER_LOCK_WAIT_S" in err, err


def _busy_until_resumed(start, writer, out: Path, action: str, result: str) -> None:
    """`start()`'s command, `writer` stopped mid-commit in `out`: refused `folder_busy` in one line (`_busy_line`,
    every wait timed: without the bound this fails, it does not hang), its results staged whole, `result` not in
    place; then the writer resumed and done. Both ended whatever happens."""
    import os
    import signal

    command = None
    try:
        command = start()
        _, err = command.communicate(timeout=60)                      # without the bound: TimeoutExpired
        assert command.returncode == 2, err
        _busy_line(err, out, writer.pid, action)
        assert "staged whole" in err and not (out / result).exists()
        os.kill(writer.pid, signal.SIGCONT)
        assert writer.wait(timeout=60) == 0, writer.stderr.read()
    finally:
        _end(writer)
        _end(command)


@pytest.mark.timeout(300)
def test_an_eval_whose_out_a_stopped_writer_holds_fails_folder_busy_within_the_bound(tmp_path):
    """A writer of a set in `--out` stopped mid-commit (Ctrl-Z, SIGSTOP, a hung network write) keeps its flock on the
    folder — the kernel drops it when the holder dies, not when it stops — and `sigma eval`, its whole evaluation
    done, waited for ever at its own commit without a word. Now it waits `$SIGMA_FOLDER_LOCK_WAIT_S` (2 s here) and
    exits 2 with one `folder_busy` line naming the folder, the wait, the holder's pid and what to do. Its results are
    not lost: staged whole with their journal, put in place once the writer goes on and the folder is finished.
    Every wait has a timeout: without the bound this test fails, it does not hang."""
    import json

    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl
    from sigma.tempfiles import finish_replacements

    data = tmp_path / "set"
    write_pairs_jsonl(data, synthetic_pairs(2))
    out = tmp_path / "eval"
    out.mkdir()
    _busy_until_resumed(lambda: _sigma_eval(data, out, "2"), _set_writer(out, "SIGSTOP", "other"), out,
                        "write the metrics into", "metrics.json")
    assert json.loads((out / "metrics.json").read_text()) == {"writer": "other"}
    assert len(finish_replacements(out)) == 1                         # the eval's set, staged whole, not lost
    assert json.loads((out / "metrics.json").read_text())["config"]["annotator"] == "pixel-diff"
    assert (out / "config.yaml").read_text().startswith("annotator:")


@pytest.mark.timeout(300)
def test_taking_a_folder_whose_sweep_a_stopped_finisher_holds_fails_folder_busy_within_the_bound(tmp_path):
    """`hold_folder` (an eval's `--out`, a run or export folder) finishes the sets killed writers staged there before
    it starts (`sweep_stale_temps`), under the folder's commit lock. A reader finishing that set stopped mid-finish
    (Ctrl-Z, SIGSTOP) holds the lock, and the command waited for ever before it did anything. Now `folder_busy`
    after `$SIGMA_FOLDER_LOCK_WAIT_S` (2 s here), one line; once the finisher goes on the next eval runs whole."""
    import json
    import os
    import signal

    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    data = tmp_path / "set"
    write_pairs_jsonl(data, synthetic_pairs(2))
    out = tmp_path / "eval"
    out.mkdir()
    _set_writer(out, "SIGKILL", "killed")                          # its journal left, its pid dead
    assert len(list(out.glob(".metrics.json.*.pending"))) == 1
    finisher = _set_writer(out, "SIGSTOP", "finish")
    ev = None
    try:
        ev = _sigma_eval(data, out, "2")
        _, err = ev.communicate(timeout=60)                          # without the bound: TimeoutExpired
        assert ev.returncode == 2, err
        _busy_line(err, out, finisher.pid, "take")
        os.kill(finisher.pid, signal.SIGCONT)
        assert finisher.wait(timeout=60) == 0, finisher.stderr.read()
    finally:
        _end(finisher)
        _end(ev)
    assert json.loads((out / "metrics.json").read_text()) == {"writer": "killed"}   # the killed writer's set, finished
    ev = _sigma_eval(data, out, "2")
    try:
        _, err = ev.communicate(timeout=60)
    finally:
        _end(ev)
    assert ev.returncode == 0, err
    assert json.loads((out / "metrics.json").read_text())["config"]["annotator"] == "pixel-diff"
    assert not list(out.glob("*.pending")) and not list(out.glob(".*.tmp"))


@pytest.mark.timeout(300)
def test_an_annotate_whose_out_a_stopped_writer_holds_fails_folder_busy_within_the_bound(tmp_path):
    """`sigma annotate -o DIR` writes its masks, config.yaml and result.json as one set under the folder's commit
    lock; a writer of that folder stopped mid-commit (SIGSTOP) kept it waiting for ever. Now `folder_busy` after
    `$SIGMA_FOLDER_LOCK_WAIT_S` (2 s here): one line, exit 2, the new set staged whole for the next write."""
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    orig = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    edited = orig.copy()
    edited[10:30, 20:44] = 255
    Image.fromarray(orig).save(tmp_path / "o.png")
    Image.fromarray(edited).save(tmp_path / "e.png")
    out = tmp_path / "ann"
    out.mkdir()
    env = {**os.environ, "SIGMA_FOLDER_LOCK_WAIT_S": "2"}
    _busy_until_resumed(lambda: subprocess.Popen([sys.executable, "-m", "sigma", "annotate", str(tmp_path / "o.png"),
                                                  str(tmp_path / "e.png"), "--annotator", "pixel-diff", "-o", str(out)],
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
                        _set_writer(out, "SIGSTOP", "other"), out, "write the result into", "result.json")
    from sigma.tempfiles import finish_replacements

    assert len(finish_replacements(out)) == 1                         # annotate's set, staged whole, not lost
    assert (out / "result.json").is_file() and (out / "mask.png").is_file() and (out / "metrics.json").is_file()


@pytest.mark.timeout(120)
def test_taking_an_export_folder_finishes_a_killed_writers_set_without_waiting_on_itself(tmp_path, monkeypatch):
    """An export folder is held through the folder itself (`marker=False`): that flock is the folder's commit lock,
    and the sweep that finishes a killed writer's staged set took it again through another descriptor — a wait on
    the process's own hold, for ever (with the bound, `folder_busy` naming its own pid). Now the holder finishes the
    set under the hold it has."""
    import json

    from sigma.errors import FolderBusyError

    out = tmp_path / "export"
    out.mkdir()
    _set_writer(out, "SIGKILL", "killed")                          # its journal left, its pid dead
    monkeypatch.setenv("SIGMA_FOLDER_LOCK_WAIT_S", "1")
    try:
        with hold_folder(out, marker=False):
            assert json.loads((out / "metrics.json").read_text()) == {"writer": "killed"}
    except FolderBusyError as exc:
        pytest.fail(f"waited on its own hold: {exc}")
    assert not list(out.glob("*.pending")) and not list(out.glob(".*.tmp"))


@pytest.mark.timeout(300)
def test_a_folder_lock_wait_in_the_environment_past_30_days_or_no_number_is_refused_in_one_line(tmp_path):
    """`$SIGMA_FOLDER_LOCK_WAIT_S` had no upper bound: `1e300` was a wait for ever, a 500-digit integer an
    OverflowError traceback at the first commit-lock wait (`sigma eval --out` taking its folder). Every other
    time SIGMA takes is at most 30 days (MAX_DURATION_S). Now such a value, and NaN, infinity, 0, a negative or no
    number, is `invalid_config` naming the variable and the bound, exit 2, before the folder is made; 30 days is
    taken. `2.5` was cut to a wait of 2 s without a word: now refused the same way, saying a whole number is needed;
    `1e1`, a float that is a whole number, is taken."""
    import os
    import subprocess
    import sys

    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    data = tmp_path / "set"
    write_pairs_jsonl(data, synthetic_pairs(2))
    out = tmp_path / "eval"

    def sigma_eval(value: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sigma", "eval", "--data", str(data), "--annotator", "pixel-diff",
                               "--out", str(out)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "SIGMA_FOLDER_LOCK_WAIT_S": value})

    for value in BAD_WAITS:
        refused_wait(sigma_eval(value), "SIGMA_FOLDER_LOCK_WAIT_S", value)
        assert not out.exists(), value[:40]
    done = sigma_eval("2592000")
    assert done.returncode == 0 and (out / "metrics.json").is_file(), done.stderr[-2000:]
    again = sigma_eval("1e1")                                      # a float that is a whole number: taken
    assert again.returncode == 0, again.stderr[-2000:]


def test_a_limit_in_the_environment_past_its_bound_says_the_bound_unless_its_rule_says_it(monkeypatch):
    """`positive_int_env` said `, at most MOST` unless `str(MOST) in what`: a rule whose digits merely held the bound's
    (`up to 10000 files`, bound 100) never said it. Now the caller says whether its rule gives the bound
    (`says_most`, the waits' WAIT_RULE): said once either way."""
    from sigma.errors import ConfigError
    from sigma.folderlock import WAIT_RULE
    from sigma.text import MAX_DURATION_S, positive_int_env

    monkeypatch.setenv("SIGMA_TEST_LIMIT", "101")
    with pytest.raises(ConfigError) as refused:
        positive_int_env("SIGMA_TEST_LIMIT", 1, "a count of files (a shard holds up to 10000)", most=100)
    assert str(refused.value).endswith("(a shard holds up to 10000), at most 100"), refused.value
    monkeypatch.setenv("SIGMA_TEST_LIMIT", str(MAX_DURATION_S + 1))
    with pytest.raises(ConfigError) as refused:
        positive_int_env("SIGMA_TEST_LIMIT", 1, f"a wait: {WAIT_RULE}", most=MAX_DURATION_S, says_most=True)
    assert str(refused.value).endswith(WAIT_RULE) and str(refused.value).count(str(MAX_DURATION_S)) == 1


@pytest.mark.parametrize(("wait_s", "waited_s", "held", "now"), [
    (0.5, 0.5, "for all of 0.5 s", "now 0.5 s"),
    (0.25, 0.25, "for all of 0.25 s", "now 0.25 s"),            # was `for all of 0.3 s`
    (0.25, 0.2499, "for all of 0.25 s", "now 0.25 s"),          # was `for the last 0.2 s of the 0.25 s wait`
    (1.5, 1.5, "for all of 1.5 s", "now 1.5 s"),
    (0.04, 0.04, "for all of 0.04 s", "now 0.04 s"),            # was `for the last 0.0 s of the 0.04 s wait`
    (4, 0.04, "for the last 0.04 s of the 4 s wait", "now 4 s"),  # was `for the last 0.0 s`
    (2, 1.99994, "for all of 2 s", "now 2 s"),
    (2, 1.96, "for all of 2 s", "now 2 s"),                     # never `for the last 2 s of the 2 s wait`
    (2, 1.9, "for the last 1.9 s of the 2 s wait", "now 2 s"),
    (2592000, 2592000, "for all of 2592000 s", "now 2592000 s"),  # was `2.592e+06 s`
])
def test_a_busy_message_says_a_wait_under_a_second_as_set_and_never_rounds_a_time_held_to_zero(wait_s, waited_s,
                                                                                               held, now):
    """`api.lock_wait_s` may be under a second (0.25, 0.5): the busy message rounded the time held to a tenth, `for all
    of 0.3 s` of a 0.25 s wait and `for the last 0.0 s` of one of 0.04 s, and `:g` said 30 days `2.592e+06 s`. Now
    the wait as set and the time held to two digits under a second. The API's answer keeps the time held and says
    `try again later` for the remedy; its 409's Retry-After is a whole number of seconds, at least 1 (HTTP)."""
    from sigma.api.errors import retry_after
    from sigma.folderlock import REMOTE_REMEDY, anonymised, busy_message
    from sigma.tempfiles import FolderBusy

    message = busy_message(FolderBusy(Path("/srv/out"), waited_s, [(4321, "WRITE")]), "write",
                           "SIGMA_FOLDER_LOCK_WAIT_S", wait_s, setting="api.lock_wait_s")
    assert f"held it {held} — " in message and f"(api.lock_wait_s sets the wait, {now})" in message, message
    answered = anonymised(message)
    assert f"held it {held} — " in answered and answered.endswith(REMOTE_REMEDY) and "4321" not in answered, answered
    assert int(retry_after("folder_busy")["Retry-After"]) >= 1
