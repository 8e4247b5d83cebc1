"""User-named files are opened only if they are regular files, in the open itself (`sigma.regular.open_regular`).

Each reader checked `is_file()` and then `open()`ed the path: a FIFO swapped in between the two hung the `open()` for
ever. The swap is simulated by making `is_file()` answer True for the FIFO (the check passed, then the path changed);
each test is bounded by a timeout, so the old code fails instead of hanging the suite."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sigma.config.loader import read_yaml
from sigma.errors import ConfigError, ImageError, InputError
from sigma.io.corpora.manifest import ManifestCorpus
from sigma.io.images import read_file_bytes
from sigma.io.pairs_jsonl import read_set
from sigma.regular import NotRegularFile, open_regular

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def raced(monkeypatch):
    """`is_file()` says True for every path, as it did for the file that stood there a moment before the swap."""
    monkeypatch.setattr(Path, "is_file", lambda self: True)


def test_open_regular_reads_a_file_and_refuses_the_rest(tmp_path):
    (tmp_path / "a.txt").write_text("x\ny\n")
    with open_regular(tmp_path / "a.txt", "r", newline="") as handle:
        assert handle.read() == "x\ny\n"
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "fifo", tmp_path, Path("/dev/null")):
        with pytest.raises(NotRegularFile):
            open_regular(path)
    with pytest.raises(ValueError):
        open_regular(tmp_path / "a.txt", "r+")


def test_image_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path, raced):
    os.mkfifo(tmp_path / "a.png")
    with pytest.raises(ImageError) as err:
        read_file_bytes(tmp_path / "a.png", 1000)
    assert err.value.code == "not_a_regular_file" and "not a regular file (a FIFO)" in str(err.value)


def test_config_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path, raced):
    os.mkfifo(tmp_path / "cfg.yaml")
    with pytest.raises(ConfigError, match="cfg.yaml: not a regular file"):
        read_yaml(tmp_path / "cfg.yaml")


def test_pairs_jsonl_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "pairs.jsonl")          # read_set is called on a set find_sets found a moment before
    with pytest.raises(InputError) as err:
        list(read_set(tmp_path))
    assert err.value.code == "not_a_regular_file" and "(a FIFO)" in err.value.message


def test_manifest_shard_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "original": "a.png", "edited": "b.png"}\n')
    corpus = ManifestCorpus(manifest, {}, 10)
    shards = corpus.plan()
    manifest.unlink()
    os.mkfifo(manifest)                           # between the plan and the read of its shard
    with pytest.raises(InputError) as err:
        list(corpus.read(shards[0]))
    assert err.value.code == "not_a_regular_file" and "(a FIFO)" in err.value.message


# --- parquet and tar corpora, image headers, config files: each in a subprocess bounded by a timeout, since a
# blocking open() of a FIFO inside pyarrow or tarfile does not return to Python for pytest's timeout to stop it


def _bounded(script: str, what: str, timeout: float = 60) -> str:
    """`script`'s stdout, run by this Python; an AssertionError naming `what` if it is still running after
    `timeout` seconds (the old code waited on the FIFO for ever)."""
    import subprocess
    import sys
    import textwrap

    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} hung on the FIFO") from None
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _cli(*args: str):
    """`python -m sigma ARGS` run to its end, or an AssertionError if it is still running after a minute."""
    import subprocess
    import sys

    try:
        return subprocess.run([sys.executable, "-m", "sigma", *args], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"sigma {' '.join(args)} hung") from None


# a script's `refusal(call)`: what a call refused with (its code and message), or "no refusal"
_REFUSAL = """
    from sigma.errors import SigmaError

    def refusal(call):
        try:
            call()
        except SigmaError as exc:
            return f"{{exc.code}} {{exc}}"
        return "no refusal"
"""

_SWAP = _REFUSAL + """
    import os
    from pathlib import Path
    from sigma.io.corpora import open_corpus

    def swap(path):
        path.unlink()
        os.mkfifo(path)

    path = Path({path!r})
    corpus = open_corpus(path, format={fmt!r}, preset={preset!r}, shard_size=100)
    shards = corpus.plan()
    swap(path)                                   # between the plan and the read of its shard
    print(refusal(lambda: list(corpus.read(shards[0]))))
    is_file = Path.is_file
    Path.is_file = lambda self: True if self == path else is_file(self)   # the check passed, then the swap
    print(refusal(lambda: open_corpus(path, format={fmt!r}, preset={preset!r}).plan()))
"""


@pytest.mark.timeout(150)
def test_a_parquet_file_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path):
    """pyarrow opened the parquet file by its path, after `is_file()` (the plan) or after the plan (the read of a
    shard): a FIFO put there in between held the run for ever. Now one `open_regular`, whose handle pyarrow reads."""
    from sigma.io.corpora.synthetic import synthetic_pairs, write_parquet

    path = write_parquet(tmp_path / "mb.parquet", synthetic_pairs(2, size=32), "magicbrush")
    out = _bounded(_SWAP.format(path=str(path), fmt="parquet", preset="magicbrush"), "the parquet corpus").splitlines()
    assert out == [f"bad_parquet {path}: not a regular file (a FIFO, a device or a folder); a parquet file must "
                   "be a file"] * 2, out


@pytest.mark.timeout(150)
def test_a_tar_shard_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path):
    """tarfile opened the shard by its path, after `is_file()` or after the plan: a FIFO put there in between held
    the run for ever. Now one `open_regular`, whose handle tarfile reads."""
    from sigma.io.corpora.synthetic import synthetic_pairs, write_webdataset

    path = write_webdataset(tmp_path / "wds", synthetic_pairs(2, size=32))[0]
    out = _bounded(_SWAP.format(path=str(path), fmt="wds", preset=None), "the tar corpus").splitlines()
    assert out == [f"bad_tar {path}: not a regular file (a FIFO, a device or a folder); a tar shard must "
                   "be a file"] * 2, out


@pytest.mark.timeout(150)
@pytest.mark.parametrize("fmt,name,code", [("parquet", "x.parquet", "bad_parquet"), ("wds", "x.tar", "bad_tar"),
                                           ("auto", "x.parquet", "not_a_regular_file")])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_corpus_file_that_is_a_fifo_or_a_device_is_named_as_such(tmp_path, fmt, name, code, kind):
    """`sigma batch run F --format parquet|wds` with F a FIFO or a link to /dev/zero said `no_pairs: F: no *.parquet
    files`, and without --format `unknown_format: F: no pairs.jsonl, parquet, ... files here` (it was searched as a
    folder); now the reader's own code, or not_a_regular_file when the format is found from the path (it was
    file_not_found, as if nothing were there), saying what F is."""
    path = tmp_path / name
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")
    done = _cli("batch", "run", str(path), "--format", fmt, "--out", str(tmp_path / "out"), "--no-progress")
    assert done.returncode == 2
    shown = path if kind == "fifo" or fmt == "auto" else "/dev/zero"   # the reader is given the resolved input
    assert done.stderr.startswith(f"sigma: error [{code}]: {shown}: not a regular file"), done.stderr


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_probe_image_file_refuses_a_fifo_or_device_without_opening_it_blocking(tmp_path, kind):
    """`probe_image_file` (training's photo bank) took the size from `stat` and let Pillow open the path: a FIFO
    (given, or swapped in after `list_photos`' `is_file()`) held it for ever. Now `open_regular` and `fstat`."""
    path = tmp_path / "a.png"
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")
    out = _bounded(f"""
        from sigma.errors import ImageError
        from sigma.io.images import probe_image_file
        try:
            probe_image_file({str(path)!r})
        except ImageError as exc:
            print(exc.code, exc)
    """, "probe_image_file")
    kind_said = "a FIFO" if kind == "fifo" else "a character device"
    assert out.strip() == f"not_a_regular_file {path}: not a regular file ({kind_said}); an image must be a file", out


def test_probe_image_file_still_reads_a_header_and_refuses_a_large_file(tmp_path):
    from PIL import Image

    from sigma.config.schema import LimitsConfig
    from sigma.errors import LimitError
    from sigma.io.images import probe_image_file

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    assert probe_image_file(tmp_path / "a.png") == (30, 40)
    with pytest.raises(LimitError) as err:
        probe_image_file(tmp_path / "a.png", LimitsConfig(max_bytes=10))
    assert err.value.code == "file_too_large"
    with pytest.raises(ImageError) as err:
        probe_image_file(tmp_path / "missing.png")
    assert err.value.code == "image_unreadable"


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
def test_a_config_that_is_no_regular_file_says_so_not_not_found(tmp_path, kind):
    """`sigma annotate ... --config F` with F a FIFO, a link to /dev/zero or a folder said `F: config file not found`,
    which it is not; now `not a regular file`, the same invalid_config, exit 2, nothing opened blocking."""
    path = tmp_path / "cfg.yaml"
    {"fifo": os.mkfifo, "dev_zero": lambda p: p.symlink_to("/dev/zero"), "folder": lambda p: p.mkdir()}[kind](path)
    done = _cli("batch", "run", str(tmp_path), "--out", str(tmp_path / "out"), "--config", str(path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"sigma: error [invalid_config]: {path}: not a regular file (a FIFO, a device or "
                                  "a folder); a config must be a YAML file"), done.stderr


def test_a_config_is_capped_by_what_was_opened_not_by_an_earlier_look(tmp_path, monkeypatch):
    """The 4 MiB cap was `path.stat()` before the open, and then the whole file was read: a config that grew (or was
    replaced) after that look was read whole whatever its size. Now the size of the opened file, and no more than
    the cap is read. The earlier look is simulated by a `stat` of the path that says 10 bytes."""
    from sigma.config import loader

    path = tmp_path / "cfg.yaml"
    path.write_text("]" * (loader.MAX_CONFIG_BYTES + 10))      # not YAML from its first byte: refused at once if read
    small = os.stat_result((0o100644, 0, 0, 1, 0, 0, 10, 0, 0, 0))
    monkeypatch.setattr(Path, "stat", lambda self, **kw: small)
    with pytest.raises(ConfigError, match="more than a config file holds"):
        read_yaml(path)


def test_a_config_not_found_or_unreadable_says_so(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "none.yaml")
    (tmp_path / "cfg.yaml").write_text("a: 1\n")
    assert read_yaml(tmp_path / "cfg.yaml") == {"a": 1}


def test_a_tar_shard_gone_since_the_plan_fails_its_shard_not_reads_as_no_pairs(tmp_path):
    """The read of a tar shard took an open that failed (the file deleted since the plan) for the end of the tar: a
    shard of no pairs, its pairs lost without a word. Now that shard's bad_tar."""
    from sigma.io.corpora import open_corpus
    from sigma.io.corpora.synthetic import synthetic_pairs, write_webdataset

    path = write_webdataset(tmp_path / "wds", synthetic_pairs(2, size=32))[0]
    corpus = open_corpus(path, format="wds")
    shards = corpus.plan()
    path.unlink()
    with pytest.raises(InputError) as err:
        list(corpus.read(shards[0]))
    assert err.value.code == "bad_tar" and "not a readable tar" in str(err.value)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("fmt,name", [("jsonl", "m.jsonl"), ("csv", "m.csv")])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_manifest_that_is_a_fifo_or_a_device_is_named_as_such(tmp_path, fmt, name, kind):
    """`sigma batch run F --format jsonl|csv` with F a FIFO or a link to /dev/zero searched F as a folder and said
    `no_pairs: F: no pairs.jsonl here or in its sub-folders`; now the manifest reader's refusal, naming it."""
    path = tmp_path / name
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")
    done = _cli("batch", "run", str(path), "--format", fmt, "--out", str(tmp_path / "out"), "--no-progress")
    assert done.returncode == 2
    shown = path if kind == "fifo" else "/dev/zero"          # the reader is given the resolved input
    kind_said = "a FIFO" if kind == "fifo" else "a character device"
    assert done.stderr == (f"sigma: error [not_a_regular_file]: {shown}: not a regular file ({kind_said}); "
                           "a manifest must be a file\n"), done.stderr


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", ["file", "fifo", "dev_null", "missing"])
def test_a_folder_corpus_that_is_no_folder_is_named_as_such(tmp_path, kind):
    """`sigma batch run F --format folder` with F a file, a FIFO or a device said `os_error: Not a directory: F` (its
    iterdir()), then `no_pairs` ("not a folder (a file, a FIFO or a device)"); now not_a_folder saying which, as every
    reader of a folder says it (`sigma.io.folders`); a missing one stays no_pairs."""
    path = tmp_path / "in"
    if kind == "file":
        path.write_text("x")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_null":
        path.symlink_to("/dev/null")
    done = _cli("batch", "run", str(path), "--format", "folder", "--out", str(tmp_path / "out"), "--no-progress")
    what = {"file": "a file", "fifo": "a FIFO", "dev_null": "a character device"}.get(kind)
    code, why = ("no_pairs", "no such folder") if kind == "missing" else ("not_a_folder", f"not a folder ({what})")
    shown = "/dev/null" if kind == "dev_null" else path          # the reader is given the resolved input
    assert done.returncode == 2 and done.stderr == (
        f"sigma: error [{code}]: {shown}: {why}; a folder corpus is a folder of <id>_original / <id>_edited files or "
        "of original/ + edited/ folders\n"), done.stderr


_SHARD_SWAP = _REFUSAL + """
    import os
    from pathlib import Path
    from sigma.batch import BatchConfig, run_batch
    from sigma.batch.layout import RunDir
    from sigma.cli import main
    from sigma.export.select import checked_run, iter_rows
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    root = Path({root!r})
    write_pairs_jsonl(root / "s", synthetic_pairs(3, size=32))
    cfg = BatchConfig.model_validate({{"input": {{"path": str(root / "s")}}, "annotator": "pixel-diff", "workers": 0}})
    run_batch(cfg, root / "run", progress=False)
    shard = sorted((root / "run" / "shards").glob("*.parquet"))[0]
    original = shard.read_bytes()

    def swap():
        shard.unlink()
        os.mkfifo(shard)

    run = checked_run(root / "run")
    run.outputs()
    swap()                                       # after the export's check, before it reads the rows
    print(refusal(lambda: list(iter_rows(run))))
    is_done = RunDir.is_done
    RunDir.is_done = lambda self, *a, **k: True  # the shard looked done, then the swap
    print(refusal(lambda: checked_run(root / "run").outputs()))
    print(main(["export", "coco", str(root / "run"), "--out", str(root / "c.json")]))
    RunDir.is_done = is_done
    shard.unlink()
    shard.write_bytes(original)                  # the run's own file back: it exports
    print(main(["export", "coco", str(root / "run"), "--out", str(root / "c.json")]))
"""


@pytest.mark.timeout(150)
def test_a_shard_file_swapped_for_a_fifo_is_refused_by_the_export_not_waited_on(tmp_path):
    """The exports opened the run's shard files by their paths (pyarrow), after `RunDir.is_done` looked at them and
    again for the rows: a FIFO put in a shard's place in between held `sigma export` for ever (and one put there
    between the check and the rows was a FileNotFoundError traceback). Now each read is one `open_regular`, whose
    handle pyarrow reads and the checksum is taken from: run_modified, saying what is there."""
    out = _bounded(_SHARD_SWAP.format(root=str(tmp_path)), "the export").splitlines()
    shard = next((tmp_path / "run" / "shards").glob("*.parquet"))
    said = f"run_modified {shard}: not a regular file (a FIFO, a device or a folder in the shard file's place): " \
           "replaced since the run; {}. Put the run's own file back, or delete its status file and run the shard " \
           "again (--resume)"
    assert out[:2] == [said.format("the export stopped"), said.format("nothing written")], out
    assert out[2] == "2" and out[-1] == "0", out             # the CLI refused (exit 2), then exported
    assert (tmp_path / "c.json").is_file()


# --- a batch run's own folder: its shard files, status files and run.json, read by --resume, the fleet and status

_RUN_FILE_RACE = """
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path
    from sigma.batch import BatchConfig, run_batch
    from sigma.batch.layout import RunDir
    from sigma.errors import SigmaError
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    root = Path({root!r})
    write_pairs_jsonl(root / "s", synthetic_pairs(2, size=32))
    cfg = BatchConfig.model_validate({{"input": {{"path": str(root / "s"), "shard_size": 1}},
                                      "annotator": "pixel-diff", "workers": 0}})
    run_batch(cfg, root / "run", progress=False)
    rundir = RunDir(root / "run")
    run_hash = rundir.load()["run_hash"]
    shard = rundir.shards()[0]
    target = {{"shard": rundir.shard_path(shard, run_hash), "status": rundir.status_path(shard),
              "run": rundir.run_file}}[{what!r}]
    keep = target.with_name("keep.bin")
    os.link(target, keep)
    # another process puts a FIFO in the file's place and the file back, over and over (ending with its parent)
    swapper = subprocess.Popen([sys.executable, "-c", '''if True:
        import os, sys
        target, keep, parent = sys.argv[1], sys.argv[2], os.getppid()
        while os.getppid() == parent:
            os.mkfifo(target + ".f")
            os.rename(target + ".f", target)
            os.link(keep, target + ".r")
            os.rename(target + ".r", target)
        ''', str(target), str(keep)])

    def call():
        try:
            if {what!r} == "shard":
                return rundir.is_done(shard, run_hash, verify=True)
            if {what!r} == "status":
                return rundir.status(shard) is not None
            return bool(rundir.load())
        except SigmaError as exc:
            return exc.code

    seen = set()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        seen.add(call())
    swapper.kill()
    swapper.wait()
    print(sorted(map(str, seen)))                # what each call said, as strings
    os.unlink(target)
    os.mkfifo(target)                            # a FIFO there for good
    print(call())
"""


@pytest.mark.timeout(150)
def test_a_shard_file_replaced_after_the_export_checked_it_is_refused_not_exported(tmp_path):
    """`CheckedRun.outputs()` hashed each shard file through one open and `iter_rows` read its rows through a second:
    a regular file put in its place in between (here: the run's rows less one) was exported unchecked. Now the rows
    are read from the handle whose bytes were just held to the recorded sha256."""
    import pyarrow.parquet as pq

    from sigma.batch import BatchConfig, run_batch
    from sigma.export.select import checked_run, iter_rows
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "s", synthetic_pairs(3, size=32))
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "s")}, "annotator": "pixel-diff", "workers": 0})
    run_batch(cfg, tmp_path / "run", progress=False)
    shard = sorted((tmp_path / "run" / "shards").glob("*.parquet"))[0]
    run = checked_run(tmp_path / "run")
    assert sum(len(rows) for _, rows in iter_rows(run)) == 3          # the run's own file: read
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, table.num_rows - 1), tmp_path / "edited.parquet")
    os.replace(tmp_path / "edited.parquet", shard)                    # after outputs() checked it, before the rows
    with pytest.raises(InputError) as err:
        list(iter_rows(run))
    assert err.value.code == "run_modified" and str(err.value).startswith(
        f"{shard}: not the shard file the run wrote (its sha256 differs from the one its status recorded): damaged "
        "or replaced since the run; the export stopped."), str(err.value)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("what,steady", [("shard", ["False", "True"]), ("status", ["False", "True"]),
                                         ("run", ["True", "not_a_run"])])
def test_a_run_file_swapped_for_a_fifo_is_not_waited_on(tmp_path, what, steady):
    """`RunDir.is_done(verify=True)` (--resume, the fleet) checked the shard file with `is_file()` and then hashed it
    by its path, `RunDir.status` read a status file after `is_file()`, and `RunDir.load` opened run.json after
    `exists()`: a FIFO put there in between held `sigma batch run --resume`, `sigma batch status` and fleet workers
    for ever. Now each is one `open_regular`: a FIFO is "not done" (the shard redone, as a damaged one is), "no
    status", or not_a_run."""
    out = _bounded(_RUN_FILE_RACE.format(root=str(tmp_path), what=what), f"the run's {what} file").splitlines()
    assert set(eval(out[0])) <= set(steady), out     # never a hang, never another error
    assert out[1] == {"shard": "False", "status": "False", "run": "not_a_run"}[what], out


def _two_shard_run(root: Path) -> Path:
    from sigma.batch import BatchConfig, run_batch
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(root / "s", synthetic_pairs(2, size=32))
    cfg = BatchConfig.model_validate({"input": {"path": str(root / "s"), "shard_size": 1}, "annotator": "pixel-diff",
                                      "workers": 0})
    run_batch(cfg, root / "run", progress=False)
    return root / "run"


_RESUME = ("batch", "run", "--shard-size", "1", "--annotator", "pixel-diff", "--no-progress", "--resume")


@pytest.mark.timeout(150)
def test_resume_redoes_a_shard_whose_file_or_status_is_a_fifo(tmp_path):
    """A shard file or status file that is a FIFO is a shard not done: `--resume` writes it again (its files renamed
    over the FIFOs), as for a damaged shard, and the run ends whole."""
    run = _two_shard_run(tmp_path)
    shard_file = sorted((run / "shards").glob("*.parquet"))[0]
    status_file = sorted((run / "status").glob("*.json"))[1]
    for path in (shard_file, status_file):
        path.unlink()
        os.mkfifo(path)
    done = _cli(*_RESUME[:2], str(tmp_path / "s"), *_RESUME[2:], "--out", str(run))
    assert done.returncode == 0, done.stderr
    assert "2 shard(s) written, 0 skipped" in done.stderr + done.stdout, done.stderr + done.stdout
    assert shard_file.is_file() and status_file.is_file()


@pytest.mark.timeout(150)
def test_a_run_json_that_is_a_fifo_is_named_as_such(tmp_path):
    """`sigma batch status RUN` with RUN/run.json a FIFO said "no run.json"; now that it is not a regular file."""
    run = _two_shard_run(tmp_path)
    (run / "run.json").unlink()
    os.mkfifo(run / "run.json")
    done = _cli("batch", "status", str(run))
    assert done.returncode == 2
    assert done.stderr == (f"sigma: error [not_a_run]: {run}: not a batch run folder (its run.json is not a regular "
                           "file: a FIFO, a device or a folder); start one with sigma batch run\n"), done.stderr


@pytest.mark.timeout(150)
@pytest.mark.parametrize("folder", ["status", "shards"])
def test_a_run_sub_folder_that_is_a_fifo_is_said_to_be_no_folder(tmp_path, folder):
    """A run folder whose status/ or shards/ is a FIFO: `--resume` said `os_error: File exists: RUN/status`."""
    run = _two_shard_run(tmp_path)
    for path in (run / folder).iterdir():
        path.unlink()
    (run / folder).rmdir()
    os.mkfifo(run / folder)
    done = _cli(*_RESUME[:2], str(tmp_path / "s"), *_RESUME[2:], "--out", str(run))
    assert done.returncode == 2
    assert done.stderr == ("sigma: error [os_error]: Not a folder (a FIFO, a device or a file where the run keeps a "
                           f"folder of its own; remove it): {run / folder}\n"), done.stderr


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", ["fifo", "dev_null", "file"])
def test_out_that_is_no_folder_is_refused(tmp_path, kind):
    """`--out` a FIFO, a device or a regular file: out_not_a_folder, at once."""
    out = tmp_path / "out"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "dev_null":
        out.symlink_to("/dev/null")
    else:
        out.write_text("x")
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "s", synthetic_pairs(1, size=32))
    done = _cli("batch", "run", str(tmp_path / "s"), "--annotator", "pixel-diff", "--no-progress", "--out", str(out))
    assert done.returncode == 2
    assert done.stderr == f"sigma: error [out_not_a_folder]: {out}: exists and is not a folder; choose another --out\n"


_SWEEP = """
    import os
    import time
    from pathlib import Path
    from sigma.batch import BatchConfig, run_batch
    from sigma.batch.layout import RunDir
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    root = Path({root!r})
    write_pairs_jsonl(root / "s", synthetic_pairs(1, size=32))
    cfg = BatchConfig.model_validate({{"input": {{"path": str(root / "s")}}, "annotator": "pixel-diff", "workers": 0}})
    run_batch(cfg, root / "run", progress=False)
    rundir = RunDir(root / "run")
    run_hash = rundir.load()["run_hash"]
    shard = rundir.shards()[0]
    fifo = rundir.shard_path(shard, run_hash).with_name(f".{{rundir.shard_path(shard, run_hash).name}}.1.tmp")
    os.mkfifo(fifo)
    os.utime(fifo, (time.time() - 60, time.time() - 60))     # old enough to be swept
    print(rundir.sweep_temps(shard, run_hash), fifo.exists())
"""


@pytest.mark.timeout(150)
def test_the_fleet_sweep_of_temporary_shard_files_passes_a_fifo_by(tmp_path):
    """`RunDir.sweep_temps` (a fleet worker, before each shard) opened each old `.SHARD.*.tmp` to try its writer's
    lock: a FIFO of that name held the worker for ever. Not a writer's file: left alone."""
    assert _bounded(_SWEEP.format(root=str(tmp_path)), "the sweep").split() == ["0", "True"]


# --- weights, the photo cache's index, status files, export output folders (open_regular where a path was read)


@pytest.mark.timeout(150)
def test_weights_given_as_a_fifo_are_refused_not_waited_on(tmp_path):
    """A FIFO named x.safetensors: a fleet submission's check of backbone_weights (`check_weights_reference`) opened
    it with `open()`, and `load_safetensors` (`init_from` of a grown model reads model.safetensors with no check
    before) gave it to safetensors' own open: each waited for a writer for ever. Now weights_unreadable."""
    os.mkfifo(tmp_path / "x.safetensors")
    out = _bounded(f"""
        from sigma.models.weights import WeightsNotFoundError, check_weights_reference, load_safetensors
        for call in (lambda: check_weights_reference({str(tmp_path / "x.safetensors")!r}, "options.backbone_weights",
                                                     files=(".safetensors",)),
                     lambda: load_safetensors({str(tmp_path / "x.safetensors")!r})):
            try:
                call()
            except WeightsNotFoundError as exc:
                print(exc.code, "not a regular file" in str(exc))
        """, "the weights check and load").splitlines()
    assert out == ["weights_unreadable True"] * 2, out


def test_a_checkpoint_or_saved_config_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path, raced):
    """`load_checkpoint` (`sigma train --resume`) and `read_config` (a saved model's config.json) read by path after
    `is_file()`: a FIFO put there in between held the resume or the load for ever."""
    from sigma.errors import WeightsNotFoundError
    from sigma.models.factory import read_config
    from sigma.training.checkpoint import load_checkpoint

    os.mkfifo(tmp_path / "checkpoint.pt")
    with pytest.raises(InputError) as err:
        load_checkpoint(tmp_path)
    assert err.value.code == "checkpoint_unreadable" and "not a regular file" in str(err.value)
    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(WeightsNotFoundError, match="config.json: not a regular file"):
        read_config(tmp_path)


def test_taef2_weights_that_are_a_fifo_are_refused_not_waited_on(tmp_path):
    """`TAEF2.from_dir` gave each .pth path to torch.load with no check of its own: a FIFO held it for ever."""
    from sigma.models.vae.taef2 import TAEF2
    from sigma.models.weights import WeightsUnreadableError

    os.mkfifo(tmp_path / "taef2_encoder.pth")
    with pytest.raises(WeightsUnreadableError, match="not a regular file"):
        TAEF2.from_dir(tmp_path)


def test_a_photo_cache_index_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path, raced):
    """`PhotoBank` and `freeze_cache_index` (training's start) read index.json after `is_file()`: a FIFO put there in
    between held training for ever. Now the bank says file_not_found and the freeze leaves the config as it is."""
    from sigma.data.synth.engine import PhotoBank
    from sigma.training.config import TrainConfig
    from sigma.training.data import freeze_cache_index

    os.mkfifo(tmp_path / "index.json")
    with pytest.raises(InputError) as err:
        PhotoBank(cache=tmp_path)
    assert err.value.code == "file_not_found" and "not a regular file" in str(err.value)
    cfg = TrainConfig.model_validate({"data": {"cache": str(tmp_path)}})
    assert freeze_cache_index(cfg, tmp_path / "run") is cfg
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


_DAMAGED_INDEXES = {"not JSON": b"not json", "a list": b"[1, 2]", "no files": b'{"max_side": 384}',
                    "files a number": b'{"files": 3}', "an entry a number": b'{"files": [1]}',
                    "an entry with no file": b'{"files": [{"photo": "a.jpg"}]}',
                    "a file name a number": b'{"files": [{"file": 5}]}', "max_side a word": b'{"max_side": "big", '
                    b'"files": []}', "not UTF-8": b'{"files": ["\xff"]}'}


@pytest.mark.timeout(150)
def test_a_damaged_or_huge_photo_cache_index_is_a_clear_error(tmp_path):
    """A damaged index.json (not JSON, no "files" list, an entry that is no {"file": NAME}) ended `sigma synth --cache`
    with a traceback (JSONDecodeError, KeyError, TypeError) and `sigma train` at its start; a huge one was read whole.
    Now file_not_found: rebuild it, from the bank and from the CLI; the run's snapshot leaves it to the bank."""
    from sigma.data.synth.engine import MAX_CACHE_INDEX_BYTES, PhotoBank
    from sigma.training.config import TrainConfig
    from sigma.training.data import freeze_cache_index

    for why, raw in _DAMAGED_INDEXES.items():
        (tmp_path / "index.json").write_bytes(raw)
        with pytest.raises(InputError) as err:
            PhotoBank(cache=tmp_path)
        assert err.value.code == "file_not_found" and "not a synth cache index" in str(err.value), why
        cfg = TrainConfig.model_validate({"data": {"cache": str(tmp_path)}})
        assert freeze_cache_index(cfg, tmp_path / "run") is cfg, why
    with open(tmp_path / "index.json", "wb") as handle:     # sparse: no disk used
        handle.truncate(MAX_CACHE_INDEX_BYTES + 1)
    with pytest.raises(InputError, match="over 67108864 bytes"):
        PhotoBank(cache=tmp_path)
    (tmp_path / "index.json").write_bytes(_DAMAGED_INDEXES["no files"])
    done = _cli("synth", "--cache", str(tmp_path), "--out", str(tmp_path / "o"), "-n", "1", "--no-progress")
    assert done.returncode == 2 and done.stderr == (
        f"sigma: error [file_not_found]: {tmp_path / 'index.json'}: not a synth cache index (not a JSON object with a "
        '"files" list); build it with `sigma synth --build-cache`\n'), done.stderr


@pytest.mark.timeout(150)
def test_a_huge_status_file_is_a_damaged_status(tmp_path):
    """A status file is a few hundred bytes; one of megabytes was read whole by every status poll. Over
    MAX_STATUS_BYTES it is treated as a damaged (unparseable) one: no status, the shard not done."""
    from sigma.batch.layout import MAX_STATUS_BYTES, RunDir, Shard

    run = _two_shard_run(tmp_path)
    rundir = RunDir(run)
    shard = Shard.from_dict(rundir.load()["shards"][0])
    record = rundir.status(shard)
    assert record and record["status"] == "done"
    path = rundir.status_path(shard)
    text = path.read_text()
    path.write_text(text[:-1] + " " * MAX_STATUS_BYTES + text[-1])        # the same record, padded past the cap
    assert rundir.status(shard) is None


@pytest.mark.timeout(150)
def test_a_new_run_into_a_folder_whose_run_json_is_a_fifo_says_so(tmp_path):
    """`sigma batch run --out RUN` with RUN/run.json a FIFO said out_not_empty "not empty and not a batch run"
    (`RunDir.exists` was `is_file()`); now not_a_run, naming run.json as no regular file, as `batch status` does."""
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "s", synthetic_pairs(2, size=32))
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / "run.json")
    done = _cli("batch", "run", str(tmp_path / "s"), "--annotator", "pixel-diff", "--out", str(tmp_path / "run"),
                "--no-progress")
    assert done.returncode == 2
    assert done.stderr.startswith(f"sigma: error [not_a_run]: {tmp_path / 'run'}: not a batch run folder (its "
                                  "run.json is not a regular file"), done.stderr


def test_export_output_files_swapped_for_a_fifo_are_not_waited_on(tmp_path, monkeypatch):
    """An export reads files in its output folder by path: `_same_file_bytes` (is a name there already these bytes?)
    after an lstat, the IMDL-BenCo listing and journal after `is_file()`. A FIFO put there in between held the
    export for ever; now it is a file that differs, no listing, no journal."""
    from sigma.export import imdl_benco, placing

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    regular = tmp_path / "regular"
    regular.write_bytes(b"x")
    steady = os.stat(regular)
    monkeypatch.setattr(Path, "is_file", lambda self: True)
    assert imdl_benco._listed(fifo) == set()
    os.mkfifo(imdl_benco._journal(tmp_path, "x.json"))
    imdl_benco._recover(tmp_path, "x.json")                         # no journal of ours: left as it is
    monkeypatch.setattr(placing.os, "lstat", lambda path: steady)   # the lstat saw a regular file of 1 byte
    assert placing._same_file_bytes(fifo, b"x") is False
    assert placing._same_file_bytes(fifo, regular) is False


def test_the_hf_export_passes_a_fifo_among_the_weights_by(tmp_path):
    """`sigma export hf` hashes options.weights for its card: a FIFO x.safetensors in that folder (no check before
    its read_bytes) held the export for ever; now the digest is unknown (None), as for weights that are not there."""
    from sigma.export.hf import _sha256_path

    (tmp_path / "a.safetensors").write_bytes(b"abc")
    import hashlib
    assert _sha256_path(tmp_path) == hashlib.sha256(hashlib.sha256(b"abc").digest()).hexdigest()
    assert _sha256_path(tmp_path / "a.safetensors") == hashlib.sha256(b"abc").hexdigest()
    os.mkfifo(tmp_path / "b.safetensors")
    assert _sha256_path(tmp_path) is None
