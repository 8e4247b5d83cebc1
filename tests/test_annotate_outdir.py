"""`sigma annotate -o OUT` against what else may be at OUT: another annotate writing it at the same moment, a path
that cannot be a folder. Real subprocesses, a real second run stopped (SIGSTOP) to force the interleaving."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sigma.assets import example_pair
from sigma.folderlock import hold_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def sigma(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["timeout", "120", sys.executable, "-m", "sigma", *args], input=stdin, text=True,
                          capture_output=True, env=ENV, timeout=150)


def pairs_json(n: int) -> str:
    example = example_pair()
    return json.dumps([{"id": f"p{i:02d}", "original": str(example["original"]), "edited": str(example["edited"])}
                       for i in range(n)])


def thresholds(out: Path) -> dict[str, tuple[float, float]]:
    """Each pair folder's threshold as its result.json and its config.yaml say it."""
    import yaml

    return {d.name: (json.loads((d / "result.json").read_text())["config"]["threshold"],
                     yaml.safe_load((d / "config.yaml").read_text())["threshold"])
            for d in sorted(out.iterdir()) if d.is_dir()}


def test_a_second_annotate_into_the_same_out_is_refused_and_writes_nothing(tmp_path):
    """Two `cat pairs.json | sigma annotate - -o OUT` at once (another --threshold): each pair's set was written
    whole, but OUT ended with one run's pairs beside the other's, and both said every pair was written — the
    second run's masks lost without a word. The second is refused at once (run_locked), as `sigma eval --out` is."""
    out, stdin = tmp_path / "out", pairs_json(60)
    first = subprocess.Popen(["timeout", "120", sys.executable, "-m", "sigma", "annotate", "-", "-o", str(out),
                              "--annotator", "pixel-diff", "--threshold", "0.05"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                             start_new_session=True)
    assert first.stdin is not None
    first.stdin.write(stdin)
    first.stdin.close()
    deadline = time.monotonic() + 90
    while not (out / "p00" / "result.json").exists():     # the first run is writing its pairs: stop it there
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
        time.sleep(0.005)
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        assert not (out / "p59").exists()          # stopped mid-run, its last pairs still to come
        second = sigma("annotate", "-", "-o", str(out), "--annotator", "pixel-diff", "--threshold", "0.3",
                       stdin=stdin)
        written = thresholds(out)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    first.wait(timeout=120)
    err = first.stderr.read() if first.stderr else ""
    assert first.returncode == 0, err
    assert second.returncode == 2 and "[run_locked]" in second.stderr and "-o OUTDIR" in second.stderr
    assert " (pid " in second.stderr                  # the holder named
    assert second.stdout == "" and all(value == (0.05, 0.05) for value in written.values())
    final = thresholds(out)
    assert len(final) == 60 and set(final.values()) == {(0.05, 0.05)}


def test_example_into_a_folder_another_run_holds_is_refused(tmp_path):
    """`sigma annotate --example -o OUT` while another process holds OUT (an annotate, an eval): refused, OUT as
    it was — the single pair's mask.png and result.json were written over the other run's."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with hold_folder(out, other="-o OUTDIR"):
        proc = sigma("annotate", "--example", "--annotator", "pixel-diff", "-o", str(out))
    assert proc.returncode == 2 and "sigma: error [run_locked]" in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock", "mine.txt"]


@pytest.mark.parametrize("kind", ["fifo", "devnull", "file", "under_file", "under_fifo"])
def test_out_that_cannot_be_a_folder_is_refused_before_the_work(tmp_path, kind):
    """A FIFO, /dev/null or a file as OUT: `out_not_a_folder`. A path through a file was annotated first and then
    said `output_unwritable` (Not a directory) per pair; now `bad_outdir` before any pair is read, as eval says."""
    target = tmp_path / "thing"
    if kind in ("fifo", "under_fifo"):
        os.mkfifo(target)
    elif kind in ("file", "under_file"):
        target.write_text("x")
    out = {"devnull": Path(os.devnull)}.get(kind, target / "sub" if kind.startswith("under") else target)
    proc = sigma("annotate", "--example", "--annotator", "pixel-diff", "-o", str(out))
    code = "bad_outdir" if kind.startswith("under") else "out_not_a_folder"
    assert proc.returncode == 2 and proc.stderr.startswith(f"sigma: error [{code}]: {out}"), proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
