"""`sigma` started with a standard stream closed (`>&-`, `2>&-`): the work is done or refused in one line, never
a silent status 1, never words in the wrong stream, never a file of the program's standing in for the stream."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl


def _sigma(*args: str, close: int) -> subprocess.CompletedProcess:
    """The real command with descriptor `close` closed, as the shell's `N>&-` leaves it (closed after the pipes are
    put in place: the other stream is still read)."""
    return subprocess.run([sys.executable, "-m", "sigma", *args], preexec_fn=lambda: os.close(close),
                          capture_output=True, text=True, timeout=180, check=False)


def test_a_closed_stderr_neither_stops_a_command_nor_sends_its_words_to_stdout(tmp_path):
    """`sigma eval ... 2>&-` (and `batch run`, `synth`: every command with a progress bar) ended with status 1 having
    done nothing: `sys.stderr.isatty()` on None, whose traceback had nowhere to go. And a warning printed to a None
    stderr goes to stdout: the table a user kept (`> table.txt`) began with `sigma: warning: ...`."""
    data = tmp_path / "set"
    write_pairs_jsonl(data, synthetic_pairs(3, size=48))
    out = tmp_path / "eval"
    argv = ("eval", "--data", str(data), "--annotator", "pixel-diff", "--perturb", "none", "--out", str(out))
    first = _sigma(*argv, close=2)
    assert first.returncode == 0 and (out / "metrics.json").is_file()
    again = _sigma(*argv, close=2)       # a second eval into the same --out warns that it replaces the first
    assert again.returncode == 0 and "warning" not in again.stdout and "sigma:" not in again.stdout
    assert "== perturbation: none ==" in again.stdout
    run = tmp_path / "run"
    batch = _sigma("batch", "run", str(data), "--out", str(run), "--annotator", "pixel-diff", close=2)
    assert batch.returncode == 0
    assert json.loads(subprocess.run([sys.executable, "-m", "sigma", "batch", "status", str(run), "--json"],
                                     capture_output=True, text=True, timeout=120, check=True).stdout)["done"] == 1


def test_an_output_named_after_a_closed_stdout_is_refused_and_the_name_kept(tmp_path):
    """`sigma parse --out /dev/stdout >&-` (and `export coco`, `report`): fd 1 closed, `/dev/stdout` led to nothing
    or to a file the program had open, so it was no stream; the write went to a temporary file beside the name and
    was renamed over it — as root, the `/dev/stdout` link of the container itself became a regular file. Here a
    link of the user's to `/proc/self/fd/1` stands for `/dev/stdout` (the same path, no system file at stake)."""
    lines = tmp_path / "lines.txt"
    lines.write_text("remove the boat\n")
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    proc = _sigma("parse", "--file", str(lines), "--out", str(link), close=1)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "[out_no_reader]" in proc.stderr and "standard output" in proc.stderr
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.txt", "stdout"]


def test_output_printed_to_a_closed_stdout_is_an_error_not_a_silent_success():
    """`sigma models >&-` (and `batch status RUN --json`, `parse TEXT`, `report RUN`): Python drops what is printed
    to a closed stdout and ends 0, so the command looked like a success whose result nobody got. As coreutils and
    git do (`ls >&-`: "write error", status 2), it is one `out_no_reader` line and exit 2, the work kept."""
    for argv in (("models",), ("parse", "remove the boat")):
        proc = _sigma(*argv, close=1)
        assert proc.returncode == 2, (argv, proc.returncode, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "[out_no_reader]" in proc.stderr, proc.stderr
        assert "standard output was closed" in proc.stderr
    assert _sigma("models", close=0).returncode == 0          # stdin closed: nothing lost


def test_a_command_whose_result_is_files_finishes_with_0_under_a_closed_stdout(tmp_path):
    """`sigma batch run SET --out RUN >&-` (and `annotate`, `eval`, `synth`, `train`, `export`): the result is the
    files written, the lines printed only report on them, so a finished run stays 0. It ended 2 (`out_no_reader`),
    which a script reads as the run failed; `sigma models >&-`, whose result is what it prints, stays an error."""
    data = tmp_path / "set"
    write_pairs_jsonl(data, synthetic_pairs(2, size=48))
    run = tmp_path / "run"
    batch = _sigma("batch", "run", str(data), "--out", str(run), "--annotator", "pixel-diff", close=1)
    assert batch.returncode == 0 and "out_no_reader" not in batch.stderr, batch.stderr
    assert json.loads(subprocess.run([sys.executable, "-m", "sigma", "batch", "status", str(run), "--json"],
                                     capture_output=True, text=True, timeout=120, check=True).stdout)["done"] == 1
    out = tmp_path / "one"
    pair = json.loads((data / "pairs.jsonl").read_text().splitlines()[0])
    annotate = _sigma("annotate", str(data / pair["original"]), str(data / pair["edited"]), "--annotator",
                      "pixel-diff", "-o", str(out), close=1)
    assert annotate.returncode == 0 and "out_no_reader" not in annotate.stderr, annotate.stderr
    assert any(out.rglob("result.json"))
    evaluated = _sigma("eval", "--data", str(data), "--annotator", "pixel-diff", "--perturb", "none", "--out",
                       str(tmp_path / "eval"), close=1)
    assert evaluated.returncode == 0 and (tmp_path / "eval" / "metrics.json").is_file(), evaluated.stderr
    assert _sigma("models", close=1).returncode == 2


NOTE = "sigma: note: standard output was closed (`>&-`): this command's log goes to standard error"


def test_the_log_of_a_command_run_with_stdout_closed_goes_to_stderr(tmp_path):
    """`sigma train --resume RUN >&-` and `sigma batch run ... >&-` finished 0 with their log dropped: the resume's
    line saying checkpoint.pt was damaged and it went back to checkpoint.prev.pt (a checkpoint interval redone,
    written in no file), the batch run's summary of shards written. Now the log goes to stderr, after one line
    saying so, and the run still ends 0."""
    from test_synth import make_photos

    data = tmp_path / "set"
    write_pairs_jsonl(data, synthetic_pairs(2, size=48))
    batch = _sigma("batch", "run", str(data), "--out", str(tmp_path / "run"), "--annotator", "pixel-diff", close=1)
    assert batch.returncode == 0, batch.stderr
    assert batch.stderr.startswith(NOTE + "\n") and re.search(r"run: 1 shard\(s\) written, 0 skipped, 0 failed; 2 "
                                                               r"pairs", batch.stderr), batch.stderr
    photos = make_photos(tmp_path / "photos", n=4, size=(80, 96))
    run = tmp_path / "runs" / "t"
    train = [str(Path(__file__).resolve().parents[1] / "configs/train/tiny-stage1.yaml"), f"data.photos={photos}",
             f"out_dir={tmp_path / 'runs'}", "name=t", "eval.at_start=false", "eval.val_size=0"]
    first = subprocess.run([sys.executable, "-m", "sigma", "train", *train, "steps=2", "ckpt_every=1"],
                           capture_output=True, text=True, timeout=180, check=False)
    assert first.returncode == 0, first.stderr
    with open(run / "checkpoint.pt", "r+b") as ckpt:          # cut short, as by a full disk
        ckpt.truncate(1000)
    resumed = _sigma("train", "--resume", str(run), "steps=4", close=1)
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stderr.splitlines()
    went_back = re.fullmatch(r"checkpoint\.pt: .* — resuming from checkpoint\.prev\.pt \(step (\d)\) instead", lines[1])
    assert lines[0] == NOTE and went_back, resumed.stderr
    assert f"resumed {run} at step {went_back.group(1)}" in lines and "step 4/4" in resumed.stderr
    assert lines[-1] == f"run folder: {run}", resumed.stderr


def test_a_reader_that_leaves_the_pipe_stops_the_command_quietly_with_141():
    """`sigma models | true` (the reader gone before the output): status 1, which `set -o pipefail` scripts read as
    sigma's failure. Now 141 (128 + SIGPIPE), what the shell reports for coreutils and git there, with nothing said."""
    proc = subprocess.Popen([sys.executable, "-m", "sigma", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()                          # the reader leaves before sigma (importing for ~1 s) prints
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == b""


def test_a_service_started_with_stdout_closed_stops_on_sigterm_with_0(redis_server):
    """`sigma serve api --access-log >&- 2>&-` (as a daemon is started): uvicorn's access log goes to stdout, so the
    closed-stdout check made the clean SIGTERM stop of a service that answered a request exit 2 `out_no_reader`,
    read by its supervisor as a failure. A service's stdout is a log, not a result: the stop stays 0."""
    import signal
    import time
    import urllib.request

    from conftest import free_port

    port = free_port()
    env = {**os.environ, "SIGMA_REDIS_URL": redis_server.url, "SIGMA_API_KEYS": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "sigma", "serve", "api", "--port", str(port), "--access-log"],
                            env=env, preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                    assert reply.status == 200
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "out_no_reader" not in err


def test_json_asked_of_a_command_whose_stdout_is_its_log_is_refused_when_stdout_is_closed(tmp_path):
    """`sigma batch run SET --out RUN --json >&-`: the log goes to stderr when stdout is closed, and the JSON the
    caller asked for went with it, mixed into the log where no reader of the JSON looks, exit 0. `--json` makes
    stdout the result: one `out_no_reader` line before any work, exit 2 (the same run without --json finishes, 0)."""
    data = tmp_path / "set"
    write_pairs_jsonl(data, synthetic_pairs(2, size=48))
    run = tmp_path / "run"
    proc = _sigma("batch", "run", str(data), "--out", str(run), "--annotator", "pixel-diff", "--json", close=1)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "[out_no_reader]" in proc.stderr and "--json" in proc.stderr
    assert "{" not in proc.stderr and not run.exists()
