"""`sigma batch run`: bad pairs recorded and the run goes on, resume/skip rules, deterministic shard outputs
(including a real SIGKILL mid-run followed by --resume), manifest contents."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from killers import RECORD_SYNCS
from PIL import Image

import sigma
from sigma.batch import BatchConfig, RunDir, run_batch
from sigma.batch.layout import RUN_KEYS
from sigma.cli import main
from sigma.errors import ConfigError, InputError
from sigma.io import load_pair
from sigma.io.corpora.synthetic import (
    synthetic_pairs,
    write_folder,
    write_pairs_jsonl,
    write_parquet,
    write_saved_dataset,
    write_webdataset,
)
from sigma.rle import decode_rle


def cfg_for(path, **kw) -> BatchConfig:
    base = {"input": {"path": str(path), **kw.pop("input", {})}, "annotator": "pixel-diff", "workers": 0}
    return BatchConfig.model_validate({**base, **kw})


def read_rows(out: Path) -> list[dict]:
    return [r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def messy_set(tmp_path) -> Path:
    """A pairs.jsonl set with five good pairs and one of each kind of bad input."""
    root = tmp_path / "messy"
    write_pairs_jsonl(root, synthetic_pairs(5))
    good = {"original": "p000000_original.png", "edited": "p000000_edited.png", "mask": "p000000_mask.png"}
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (root / "wide.png").write_bytes(png(np.zeros((32, 64, 3), np.uint8)))
    big = np.asarray(Image.open(root / "p000001_edited.png").resize((128, 128)))
    (root / "big.png").write_bytes(png(big))
    extra = [
        {**good, "id": "missing", "edited": "nope.png", "instruction": "x"},
        {**good, "id": "corrupt", "edited": "corrupt.png", "instruction": "x"},
        {**good, "id": "aspect", "edited": "wide.png", "instruction": "x"},
        {**good, "id": "resized", "original": "p000001_original.png", "edited": "big.png", "mask": "p000001_mask.png",
         "instruction": "resize me"},
        {**good, "id": "empty_instr", "instruction": "   "},
    ]
    with open(root / "pairs.jsonl", "a") as handle:
        handle.writelines(json.dumps(rec) + "\n" for rec in extra)
        handle.write("{broken json\n")
        handle.write('{"id": "huge", "original": "a.png", "edited": "b.png", "n": ' + "9" * 5000 + "}\n")
    return root


def test_bad_pairs_are_recorded_and_good_ones_kept(messy_set, tmp_path):
    out = tmp_path / "run"
    summary = run_batch(cfg_for(messy_set, input={"shard_size": 4}), out, progress=False)
    assert summary.shards == 3 and summary.done_now == 3 and summary.failed_now == 0
    rows = {r["pair_id"]: r for r in read_rows(out)}
    assert len(rows) == 12
    codes = {pid: r["error_code"] for pid, r in rows.items() if r["status"] == "error"}
    assert codes == {"messy/missing": "file_not_found", "messy/corrupt": "image_unreadable",
                     "messy/aspect": "aspect_mismatch", "messy/empty_instr": "empty_instruction",
                     "messy/pairs.jsonl:11": "bad_record", "messy/pairs.jsonl:12": "bad_record"}
    assert "more than 4300 digits" in rows["messy/pairs.jsonl:12"]["error"]
    # the id of an id-less record and its `source` name the same (1-based) line of the manifest
    assert rows["messy/pairs.jsonl:11"]["source"] == "messy/pairs.jsonl:line=11"
    assert "messy/aspect" in rows and "aspect" in rows["messy/aspect"]["error"].lower()
    assert all(rows[pid]["error"] for pid in codes)
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == 6
    resized = rows["messy/resized"]
    assert resized["status"] == "ok" and (resized["height"], resized["edited_height"]) == (64, 128)
    # the manifest's mask is exactly what the annotator says for that pair
    annotator = sigma.create_annotator("pixel-diff")
    pair = load_pair(messy_set / "p000002_original.png", messy_set / "p000002_edited.png")
    expected = annotator.predict([pair])[0]
    row = rows["messy/p000002"]
    assert np.array_equal(decode_rle({"size": [row["height"], row["width"]], "counts": row["rle_counts"]}),
                          expected.mask)
    assert row["bbox"] == expected.bbox() and row["area"] == expected.area
    assert row["config_hash"] == annotator.config_hash and row["annotator"] == "pixel-diff"
    assert row["gt_f1"] > 0.95 and row["gt_iou"] > 0.9 and row["confidence"] is None
    assert len(row["original_sha256"]) == 64 and row["instruction"] == "replace the object number 2"
    status = RunDir(out).summary()
    assert status["ok"] == 6 and status["errors"] == 6 and status["error_codes"]["file_not_found"] == 1


def test_text_that_cannot_be_written_does_not_stop_the_run(tmp_path, capsys):
    """Lone UTF-16 surrogates reach a run two ways: a manifest's JSON escape ("\\ud800") and a file name that
    is not UTF-8 (Python hands it over as \\udcff). Either made the shard writer raise and the run stop; now
    ids keep them escaped (two ids stay two), instructions get U+FFFD, and every pair is annotated."""
    manifest = tmp_path / "manifest"
    write_pairs_jsonl(manifest, synthetic_pairs(1))
    good = {"original": "p000000_original.png", "edited": "p000000_edited.png", "mask": "p000000_mask.png"}
    with open(manifest / "pairs.jsonl", "a") as handle:
        handle.write(json.dumps({**good, "id": "\ud800a", "instruction": "remove the \udc80 boat"}) + "\n")
        handle.write(json.dumps({**good, "id": "\ud801a"}) + "\n")
    summary = run_batch(cfg_for(manifest), tmp_path / "run1", progress=False)
    assert summary.failed_now == 0
    rows = {r["pair_id"]: r for r in read_rows(tmp_path / "run1")}
    assert set(rows) == {"manifest/p000000", "manifest/\\ud800a", "manifest/\\ud801a"}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["manifest/\\ud800a"]["instruction"] == "remove the \ufffd boat"

    folder = tmp_path / "names"
    folder.mkdir()
    pair = next(synthetic_pairs(1))          # PNG bytes per role
    for name in (b"\xff", b"\xfe"):          # two file names that are not UTF-8
        for role in ("original", "edited"):
            with open(os.fsencode(folder) + b"/" + name + f"_{role}.png".encode(), "wb") as handle:
                handle.write(pair[role])
    summary = run_batch(cfg_for(folder), tmp_path / "run2", progress=False)
    assert summary.failed_now == 0
    rows = read_rows(tmp_path / "run2")
    assert sorted(r["pair_id"] for r in rows) == ["\\udcfe", "\\udcff"]
    assert all(r["status"] == "ok" for r in rows)
    # and what reads the corpus again finds those pairs (the exports and the review page matched the raw id
    # against the escaped one: "corpus changed"), and the HF export's file names are writable
    for argv in (["export", "hf", str(tmp_path / "run2"), "--out", str(tmp_path / "hf")],
                 ["export", "imdl-benco", str(tmp_path / "run2"), "--out", str(tmp_path / "benco")],
                 ["report", str(tmp_path / "run2"), "--out", str(tmp_path / "review")]):
        assert main(argv) == 0, argv
    assert '"unreadable": 0' in capsys.readouterr().out          # the review page found both pairs' images
    shard = next((tmp_path / "hf" / "data").glob("*.parquet"))
    assert sorted(r["original"]["path"] for r in pq.read_table(shard).to_pylist()) == [
        "\\udcfe_original.png", "\\udcff_original.png"]
    benco = json.loads((tmp_path / "benco" / "imdl_benco.json").read_text())
    assert len(benco) == 2


def test_rerun_resume_and_conflicts(messy_set, tmp_path):
    out = tmp_path / "run"
    cfg = cfg_for(messy_set, input={"shard_size": 4})
    first = run_batch(cfg, out, progress=False)
    before = {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    again = run_batch(cfg, out, progress=False)          # a finished run: nothing to do
    assert again.skipped == first.shards and again.pairs == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    with pytest.raises(ConfigError, match="holds another run"):
        run_batch(cfg_for(messy_set, input={"shard_size": 4}, threshold=0.2), out, progress=False)
    # lose one shard's status: the run is unfinished, --resume redoes only that shard, byte-identically
    victim = sorted((out / "status").iterdir())[1]
    victim.unlink()
    with pytest.raises(InputError, match="--resume"):
        run_batch(cfg, out, progress=False)
    resumed = run_batch(cfg, out, resume=True, progress=False)
    assert resumed.done_now == 1 and resumed.skipped == 2
    assert {p: p.read_bytes() for p in (out / "shards").iterdir()} == {p: p.read_bytes() for p in before}
    # a non-run, non-empty folder is refused
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        run_batch(cfg, tmp_path / "junk", progress=False)


def test_worker_processes_give_identical_outputs(tmp_path):
    path = write_parquet(tmp_path / "mb.parquet", synthetic_pairs(24), "magicbrush", row_group_size=6)
    a = run_batch(cfg_for(path, input={"preset": "magicbrush", "shard_size": 12}), tmp_path / "a", progress=False)
    b = run_batch(cfg_for(path, input={"preset": "magicbrush", "shard_size": 12}, workers=2, batch_size=5),
                  tmp_path / "b", progress=False)
    assert a.run_hash != b.run_hash        # batch size is part of the config hash...
    c = run_batch(cfg_for(path, input={"preset": "magicbrush", "shard_size": 12}, workers=2), tmp_path / "c",
                  progress=False)
    assert c.run_hash == a.run_hash        # ...the number of decode workers is not
    files_a = sorted((tmp_path / "a" / "shards").iterdir())
    files_c = sorted((tmp_path / "c" / "shards").iterdir())
    assert [f.name for f in files_a] == [f.name for f in files_c] and len(files_a) == 2
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(files_a, files_c))
    assert [r["pair_id"] for r in read_rows(tmp_path / "b")] == [r["pair_id"] for r in read_rows(tmp_path / "a")]


def test_png_masks_and_cli(tmp_path, capsys):
    write_webdataset(tmp_path / "wds", synthetic_pairs(6), per_tar=3)
    out = tmp_path / "run"
    rc = main(["batch", "run", str(tmp_path / "wds"), "--out", str(out), "--annotator", "pixel-diff",
               "--workers", "0", "--png-masks", "--no-progress", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"]["ok"] == 6 and summary["shards"] == 2
    rows = read_rows(out)
    mask = np.asarray(Image.open(out / rows[0]["mask_png"])) > 0
    assert np.array_equal(mask, decode_rle({"size": [64, 64], "counts": rows[0]["rle_counts"]}))
    assert (out / "config.yaml").is_file() and json.loads((out / "run.json").read_text())["format"] == "wds"
    assert main(["batch", "status", str(out)]) == 0
    assert "2/2 shards done" in capsys.readouterr().out
    rc = main(["batch", "run", str(tmp_path / "wds"), "--out", str(tmp_path / "x"), "--preset", "nope"])
    assert rc == 2
    rc = main(["batch", "run", str(tmp_path / "wds"), "--out", str(tmp_path / "y"), "--columns", "garbage"])
    assert rc == 2 and "role=column" in capsys.readouterr().err


def _sigma(*args: str) -> list[str]:
    return [sys.executable, "-m", "sigma", *args]


def test_killed_run_resumes_byte_identical(tmp_path):
    """SIGKILL a real `sigma batch run` after a few shards, resume it, compare with an uninterrupted run."""
    root = tmp_path / "set"
    write_pairs_jsonl(root, synthetic_pairs(240, size=48))
    common = ["--annotator", "pixel-diff", "--shard-size", "4", "--workers", "1", "--no-progress"]
    full = tmp_path / "full"
    assert subprocess.run(_sigma("batch", "run", str(root), "--out", str(full), *common), timeout=120,
                          capture_output=True, check=False).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_sigma("batch", "run", str(root), "--out", str(killed), *common),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = killed / "status"
        if status.is_dir() and len(list(status.glob("*.json"))) >= 3:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)   # the run and its decode worker, mid-shard
    proc.wait(timeout=10)
    done_at_kill = len(list((killed / "status").glob("*.json")))
    assert 3 <= done_at_kill < 60, "the run finished before it could be killed"
    rc = subprocess.run(_sigma("batch", "run", str(root), "--out", str(killed), *common), capture_output=True,
                        timeout=60, text=True, check=False)
    assert rc.returncode == 2 and "--resume" in rc.stderr
    rc = subprocess.run(_sigma("batch", "run", str(root), "--out", str(killed), "--resume", *common),
                        capture_output=True, timeout=120, text=True, check=False)
    assert rc.returncode == 0, rc.stderr
    assert f"{60 - done_at_kill} shard(s) written, {done_at_kill} skipped" in rc.stdout
    full_files = {p.name: p.read_bytes() for p in (full / "shards").glob("*.parquet")}
    killed_files = {p.name: p.read_bytes() for p in (killed / "shards").glob("*.parquet")}
    assert len(full_files) == 60 and full_files == killed_files
    assert not list((killed / "shards").glob(".*.tmp"))


def test_ray_backend_missing_is_a_clear_error(tmp_path, monkeypatch):
    """Where Ray is not installed (simulated: `import ray` fails); tests/test_batch_ray.py runs the real thing."""
    monkeypatch.setitem(sys.modules, "ray", None)
    path = write_parquet(tmp_path / "mb.parquet", synthetic_pairs(2), "magicbrush")
    cfg = cfg_for(path, input={"preset": "magicbrush"}, backend="ray")
    with pytest.raises(ConfigError, match="pip install 'sigma-masks\\[ray\\]'"):
        run_batch(cfg, tmp_path / "out", progress=False)


def test_bad_rows_in_parquet_and_image_paths(tmp_path):
    """Parquet cells: HF structs with bytes, a struct with only a relative path, raw bytes, nulls, corrupt bytes."""
    import pyarrow as pa

    pairs = list(synthetic_pairs(4))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "e3.png").write_bytes(pairs[3]["edited"])
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "input_image": pa.array([{"bytes": p["original"], "path": None} for p in pairs], image),
        "edited_image": pa.array([{"bytes": pairs[0]["edited"], "path": None}, None,
                                  {"bytes": b"\x89PNG garbage", "path": None}, {"bytes": None, "path": "img/e3.png"}],
                                 image),
        "edit_prompt": ["fine", "no edited image", "corrupt", ""],
    })
    pq.write_table(table, tmp_path / "ip2p.parquet", row_group_size=2)
    out = tmp_path / "run"
    summary = run_batch(cfg_for(tmp_path / "ip2p.parquet", input={"preset": "instructpix2pix"}), out, progress=False)
    rows = read_rows(out)
    assert summary.shards == 1 and [r["status"] for r in rows] == ["ok", "error", "error", "error"]
    assert [r["error_code"] for r in rows[1:]] == ["missing_image", "image_unreadable", "empty_instruction"]
    assert rows[1]["source"] == "ip2p.parquet:row=1" and "edited" in rows[1]["error"]
    # the path-only cell was found next to the parquet file: only its empty instruction failed it
    assert rows[3]["edited_sha256"] is not None


def test_an_error_row_names_the_file_that_is_bad(tmp_path):
    """A folder pair whose edited image was empty was recorded as `.../x_original.png: edited: empty file`: the row's
    label (its original's path) read as the bad file. The error names the bad file now; `source` stays the row's."""
    folder = tmp_path / "set"
    folder.mkdir()
    good = png(np.full((16, 16, 3), 90, np.uint8))
    (folder / "x_original.png").write_bytes(good)
    (folder / "x_edited.png").write_bytes(b"")
    (folder / "y_original.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    (folder / "y_edited.png").write_bytes(good)
    (folder / "z_original.png").write_bytes(good)
    (folder / "z_edited.png").write_bytes(png(np.full((16, 40, 3), 90, np.uint8)))
    run_batch(cfg_for(folder), tmp_path / "run", progress=False)
    rows = {r["pair_id"].split("/")[-1]: r for r in read_rows(tmp_path / "run")}      # "set/alpha"
    x, y, z = rows["x"], rows["y"], rows["z"]
    assert (x["error_code"], y["error_code"], z["error_code"]) == ("image_empty", "image_unreadable", "aspect_mismatch")
    assert x["source"] == str(folder / "x_original.png") and y["source"] == str(folder / "y_original.png")
    assert x["error"] == f"{folder / 'x_edited.png'}: empty file (0 bytes)"
    assert y["error"].startswith(f"{folder / 'y_original.png'}: not an image")
    assert "x_original" not in x["error"] and "y_edited" not in y["error"]
    assert z["error"].startswith(f"{folder / 'z_edited.png'}: aspect ratio 40x16 differs from "
                                 f"{folder / 'z_original.png'} ")


def test_status_prints_error_codes_for_people(messy_set, tmp_path, capsys):
    from sigma.cli import main

    run_batch(cfg_for(messy_set, input={"shard_size": 4}), tmp_path / "run", progress=False)
    assert main(["batch", "status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "bad_record x2" in out


def test_one_run_per_output_folder(tmp_path, capsys):
    """Two runs on one --out: the second exits 2 with run_locked and the holder's pid (issue 11 item 12: both
    used to exit 0 with shards of two run hashes mixed, or die on a shared .parquet.tmp name)."""
    from sigma.tempfiles import temp_name

    src = tmp_path / "set"
    write_pairs_jsonl(src, synthetic_pairs(6, size=32))
    out = tmp_path / "run"
    argv = ["batch", "run", str(src), "--out", str(out), "--annotator", "pixel-diff", "--workers", "0",
            "--no-progress"]
    with RunDir(out).locked():
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "[run_locked]" in err and f"pid {os.getpid()}" in err
    # a holder killed with SIGKILL leaves no lock behind
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom sigma.batch.layout import RunDir\n"
                               "with RunDir(sys.argv[1]).locked():\n    print('held', flush=True)\n"
                               "    time.sleep(60)\n", str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert main(argv) == 2 and f"pid {holder.pid}" in capsys.readouterr().err
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert main(argv) == 0
    assert len({temp_name(out / "x.parquet") for _ in range(50)}) == 50
    # a failed start on a folder that did not exist leaves nothing behind; a file as --out is a clean error
    assert main([*argv[:4], str(tmp_path / "new"), *argv[5:], "--format", "parquet"]) == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "afile").write_text("x")
    assert main([*argv[:4], str(tmp_path / "afile"), *argv[5:]]) == 2
    assert "[out_not_a_folder]" in capsys.readouterr().err


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def test_children_die_with_a_sigkilled_run(tmp_path):
    """Issue 11 item 13: SIGKILL of `sigma batch run --workers 1` (the run only, not its process group) used to
    leave the decode worker and multiprocessing's resource tracker alive, blocked on a pipe."""
    root = tmp_path / "set"
    write_pairs_jsonl(root, synthetic_pairs(240, size=48))
    out = tmp_path / "killed"
    proc = subprocess.Popen(_sigma("batch", "run", str(root), "--out", str(out), "--annotator", "pixel-diff",
                                   "--shard-size", "4", "--workers", "1", "--no-progress"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    kids: set[int] = set()
    while time.monotonic() < deadline:
        kids = _descendants(proc.pid)
        status = out / "status"
        if len(kids) >= 2 and status.is_dir() and len(list(status.glob("*.json"))) >= 2:
            break
        time.sleep(0.01)
    assert len(kids) >= 2, "expected a decode worker and the resource tracker"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{k}").exists() for k in kids):
        time.sleep(0.05)
    alive = [k for k in kids if Path(f"/proc/{k}").exists() and "Z" not in Path(f"/proc/{k}/stat").read_text()[:60]]
    for k in alive:           # never leave them behind, whatever the assertion says
        os.kill(k, signal.SIGKILL)
    assert not alive, f"children outlived the run: {alive}"


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from sigma.batch.layout import atomic_write_bytes

    target = tmp_path / "page.html"

    def refuse(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"x" * 1000)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(InputError) as err:
        atomic_write_bytes(tmp_path, b"x")            # a folder: refused, nothing written beside it
    assert err.value.code == "out_is_a_folder" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make", ["zero_blocks", "no_members", "only_folders"])
def test_a_tar_with_no_pairs_is_no_pairs_not_an_empty_done_run(tmp_path, capsys, make):
    """A tar that reads as an archive with nothing in it (a file of zero blocks, an empty archive, folders
    only) reported "1/1 shards done, 0 pairs annotated": a silent success. Now `no_pairs`, no run folder."""
    import tarfile

    tar = tmp_path / "corpus.tar"
    if make == "zero_blocks":
        tar.write_bytes(b"\0" * 1024 + b"junk")
    else:
        with tarfile.open(tar, "w") as tf:
            if make == "only_folders":
                info = tarfile.TarInfo("shard0")
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
    out = tmp_path / "run"
    assert main(["batch", "run", str(tar), "--out", str(out), "--annotator", "pixel-diff", "--no-progress"]) == 2
    assert "[no_pairs]" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("refusal, line", [
    (OSError(28, "No space left on device"), "sigma: error [out_of_space]: No space left on device"),
    # pyarrow under `ulimit -v` (an ArrowMemoryError is a MemoryError): was "RuntimeError: the shard writer failed"
    (MemoryError("malloc of size 256 failed"), "sigma: error [out_of_memory]: the system gave no more memory"),
])
def test_a_full_disk_is_one_out_of_space_line_and_resume_finishes_the_run(tmp_path, capsys, monkeypatch, refusal, line):
    """The shard writer runs in a thread; a full disk there (a mask PNG, a parquet file) surfaced as a
    RuntimeError traceback, and so did memory the system refused. Now the OSError (MemoryError) itself: one
    `out_of_space` (`out_of_memory`) line, exit 2, and once there is room `--resume` finishes the run with every
    pair."""
    import sigma.batch.pipeline as pipeline

    corpus = tmp_path / "set"
    write_pairs_jsonl(corpus, synthetic_pairs(6))
    out = tmp_path / "run"
    real = pipeline.write_png
    calls = {"n": 0}

    def full_after_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise refusal
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "write_png", full_after_two)
    argv = ["batch", "run", str(corpus), "--out", str(out), "--annotator", "pixel-diff", "--png-masks",
            "--shard-size", "2", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert line in err and "Traceback" not in err
    monkeypatch.setattr(pipeline, "write_png", real)
    assert main([*argv, "--resume"]) == 0
    rows = [r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert len(list((out / "masks").rglob("*.png"))) == 6


def test_a_shard_refused_memory_is_said_once_with_the_runs_own_way_to_go_on(tmp_path, capsys):
    """A shard whose model the machine refuses memory (`oom-diff`: a real MemoryError from the allocator) in a local
    run: its line said "rerun with --resume" twice, once from the shard's reason and once from the run's summary.
    Now the reason says what was refused and what it needs, and the run adds "rerun with --resume" once."""
    import service_plugins  # noqa: F401 - registers oom-diff

    pairs = list(synthetic_pairs(4, size=32))
    pairs[1]["instruction"] = "oom here"
    write_pairs_jsonl(tmp_path / "set", pairs)
    argv = ["batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--annotator", "oom-diff",
            "--plugin", "service_plugins", "--shard-size", "2", "--batch-size", "1", "--workers", "0", "--no-progress"]
    assert main(argv) == 1
    [line] = [x for x in capsys.readouterr().err.splitlines() if "failed:" in x]
    assert "the system gave no more memory annotating this shard (MemoryError)" in line, line
    assert line.count("--resume") == 1 and line.endswith("(rerun with --resume)"), line    # without the fix: twice


def test_shards_whose_names_collide_keep_their_own_outputs(tmp_path):
    """Shard keys are file names made safe and cut to 120 characters: a manifest with a long name gave every
    shard one key (the record range was cut off), and "a b.parquet" / "a_b.parquet" gave two files one key.
    One key is one output file: all but the last shard's rows were lost, while the run said every shard was
    done and counted every pair."""
    root = tmp_path / "set"
    write_pairs_jsonl(root, synthetic_pairs(6))
    manifest = root / ("x" * 130 + ".jsonl")
    (root / "pairs.jsonl").rename(manifest)
    out = tmp_path / "long"
    summary = run_batch(cfg_for(manifest, input={"shard_size": 2}), out, progress=False)
    assert summary.shards == 3 and summary.status["done"] == 3
    assert len(list((out / "shards").iterdir())) == 3 and len(list((out / "status").iterdir())) == 3
    assert sorted(r["pair_id"] for r in read_rows(out)) == [f"p{i:06d}" for i in range(6)]

    pairs = list(synthetic_pairs(4))
    write_parquet(tmp_path / "pq" / "a b.parquet", pairs[:2], "magicbrush")
    write_parquet(tmp_path / "pq" / "a_b.parquet", pairs[2:], "magicbrush")
    out = tmp_path / "pq_run"
    summary = run_batch(cfg_for(tmp_path / "pq", input={"preset": "magicbrush"}), out, progress=False)
    keys = [s["key"] for s in json.loads((out / "run.json").read_text())["shards"]]
    assert summary.shards == 2 and len(set(keys)) == 2
    assert len(read_rows(out)) == 4 and len({r["original_sha256"] for r in read_rows(out)}) == 4


def test_an_image_cell_of_the_wrong_type_is_that_pairs_error_not_the_shards(tmp_path):
    """{"bytes": "abc"} or {"path": 5} in a manifest raised a TypeError in the reader: the whole shard failed
    (no pair of it written) and failed again at every --resume."""
    root = tmp_path / "set"
    write_pairs_jsonl(root, synthetic_pairs(2))
    good = {"original": "p000000_original.png", "edited": "p000000_edited.png"}
    with open(root / "pairs.jsonl", "a") as handle:
        for pair_id, cell in [("str", {"bytes": "abc"}), ("int", {"path": 5}), ("list", {"bytes": [300]})]:
            handle.write(json.dumps({**good, "id": pair_id, "original": cell}) + "\n")
        handle.write(json.dumps({**good, "id": "mask", "mask": {"bytes": "abc"}}) + "\n")
    summary = run_batch(cfg_for(root), tmp_path / "run", progress=False)
    assert summary.done_now == 1 and summary.failed_now == 0
    rows = {r["pair_id"].split("/")[-1]: r for r in read_rows(tmp_path / "run")}
    assert [rows[f"p{i:06d}"]["status"] for i in range(2)] == ["ok", "ok"] and rows["mask"]["status"] == "ok"
    assert {rows[k]["error_code"] for k in ("str", "int", "list")} == {"missing_image"}


def test_a_tar_json_field_with_non_text_values_does_not_stop_the_run(tmp_path, capsys):
    """A WebDataset `.json` field with `"edit_type": {"a": 1}` (or a number, or an instruction that is an
    object) reached the shard writer as a dict: "the shard writer failed: Expected bytes, got a 'dict'
    object", a traceback, and the whole run stopped."""
    import tarfile

    pairs = list(synthetic_pairs(3))
    metas = [{"instruction": "remove it", "edit_type": {"a": 1}}, {"instruction": {"x": [1]}, "edit_type": 5},
             {"instruction": "add a cat"}]
    tar = tmp_path / "odd.tar"
    with tarfile.open(tar, "w") as tf:
        for p, meta in zip(pairs, metas):
            for name, data in ((f"{p['id']}.original.png", p["original"]), (f"{p['id']}.edited.png", p["edited"]),
                               (f"{p['id']}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    assert main(["batch", "run", str(tar), "--out", str(tmp_path / "run"), "--annotator", "pixel-diff",
                 "--workers", "0", "--no-progress"]) == 0
    rows = read_rows(tmp_path / "run")
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert [(r["instruction"], r["edit_type"]) for r in rows[:2]] == [("remove it", "{'a': 1}"), ("{'x': [1]}", "5")]


def test_a_confined_run_reads_no_data_file_outside_its_root(tmp_path):
    """input.root (every run from POST /v1/batches) confined images and symlinked manifests, but not the data
    files a save_to_disk folder names (state.json: an absolute path or ../; dataset_dict.json: a split "../x")
    nor a symlinked .tgz / .tar.gz shard: those were read from outside the root, all their pairs annotated."""
    import tarfile

    root, outside = tmp_path / "root", tmp_path / "outside"
    pairs = list(synthetic_pairs(2))
    write_saved_dataset(outside / "ds", pairs)
    arrow = outside / "ds" / "data-00000-of-00001.arrow"
    tars = write_webdataset(outside / "wds", pairs, per_tar=2)
    with tarfile.open(tars[0]) as src, tarfile.open(outside / "shard.tgz", "w:gz") as out:
        for member in src:
            out.addfile(member, src.extractfile(member))
    cases = {}
    for name, filename in (("abs", str(arrow)), ("up", f"../../outside/ds/{arrow.name}")):
        write_saved_dataset(root / name, pairs[:1])
        state = json.loads((root / name / "state.json").read_text())
        state["_data_files"] = [{"filename": filename}]
        (root / name / "state.json").write_text(json.dumps(state))
        cases[name] = root / name
    write_saved_dataset(root / "dict", pairs[:1], split="train")
    (root / "dict" / "dataset_dict.json").write_text(json.dumps({"splits": ["../../outside/ds"]}))
    cases["dict"] = root / "dict"
    for suffix in (".tgz", ".tar.gz"):
        (root / f"wds{suffix}").mkdir(parents=True)
        os.symlink(outside / "shard.tgz", root / f"wds{suffix}" / f"a{suffix}")
        cases[suffix] = root / f"wds{suffix}"
    for name, path in cases.items():
        preset = None if name.startswith(".") else "instructpix2pix"
        cfg = cfg_for(path, input={"root": str(root), "preset": preset})
        with pytest.raises(InputError) as err:
            run_batch(cfg, tmp_path / f"run-{name}", progress=False)
        assert err.value.code == "path_outside_root", (name, err.value)
        assert str(outside) not in err.value.message
        unconfined = run_batch(cfg_for(path, input={"preset": preset}), tmp_path / f"free-{name}",
                               progress=False)    # the CLI's default: any file the user can read
        assert unconfined.status["ok"] == 2, name


def test_a_confined_folder_corpus_cannot_name_folders_or_files_outside_its_root(tmp_path):
    """`columns` (a POST /v1/batches field) names a folder corpus's original/edited folders and its
    instructions file: {"original": "/etc", "edited": "/etc"} listed a folder outside the root (its file names
    became the run's pair ids) and {"instruction": "../../outside/x.csv"} read that file's text into the rows."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_folder(root / "corpus", synthetic_pairs(2), two_folders=True)
    write_folder(outside / "secret", synthetic_pairs(2), two_folders=True)
    (outside / "texts.csv").write_text("id,instruction\np000000,the secret text\n")
    for columns in ({"original": str(outside / "secret" / "original"), "edited": str(outside / "secret" / "edited")},
                    {"original": "../../outside/secret/original", "edited": "../../outside/secret/edited"},
                    {"instruction": "../../outside/texts.csv"}):
        with pytest.raises(InputError) as err:
            run_batch(cfg_for(root / "corpus", input={"root": str(root), "columns": columns, "format": "folder"}),
                      tmp_path / "run", progress=False)
        assert err.value.code == "path_outside_root" and "secret" not in err.value.message, (columns, err.value)
        assert not (tmp_path / "run" / "shards").exists()
    summary = run_batch(cfg_for(root / "corpus", input={"root": str(root)}), tmp_path / "ok", progress=False)
    assert summary.status["ok"] == 2


def test_status_files_that_are_json_but_not_a_status_cost_their_shard_not_every_command(tmp_path, capsys):
    """A status file holding a JSON string, or a "done" one missing its counts (edited by hand, written by
    another tool), made `sigma batch status`, `--resume`, the exports and the review page die with an
    AttributeError / KeyError traceback."""
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(6))
    out = tmp_path / "run"
    run_batch(cfg_for(tmp_path / "set", input={"shard_size": 2}), out, progress=False)
    first, second, _ = sorted((out / "status").iterdir())
    first.write_text('"done"')
    st = json.loads(second.read_text())
    del st["pairs"], st["ok"]
    second.write_text(json.dumps(st))
    assert main(["batch", "status", str(out)]) == 0
    assert "2/3 shards done" in capsys.readouterr().out
    resumed = run_batch(cfg_for(tmp_path / "set", input={"shard_size": 2}), out, resume=True, progress=False)
    assert resumed.done_now == 1 and resumed.status["done"] == 3


def test_a_shard_file_damaged_in_place_is_redone_by_resume(tmp_path):
    """A done shard was checked by its size only, so a file damaged in place (bytes flipped by a bad disk, a copy
    patched up) counted as done for ever: `--resume` said "all done" and every export failed on it."""
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(6))
    out = tmp_path / "run"
    cfg = cfg_for(tmp_path / "set", input={"shard_size": 2})
    run_batch(cfg, out, progress=False)
    before = {p: p.read_bytes() for p in (out / "shards").iterdir()}
    victim = sorted(before)[1]
    damaged = bytearray(before[victim])
    damaged[40:140] = bytes(b ^ 0xFF for b in damaged[40:140])      # same size, other bytes
    victim.write_bytes(bytes(damaged))
    resumed = run_batch(cfg, out, resume=True, progress=False)
    assert resumed.done_now == 1 and resumed.skipped == 2
    assert {p: p.read_bytes() for p in (out / "shards").iterdir()} == before


def test_a_status_file_with_counts_that_are_not_numbers_does_not_end_the_status_in_a_traceback(tmp_path, capsys):
    """A status file written by hand, by another tool or by a hostile run folder (`"pairs": "many"`,
    `"error_codes": ["x"]`) ended `sigma batch status` (and the API's status route: a 500) in a ValueError
    traceback. Its counts are unknown: taken as 0; the shard is still done."""
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(6, size=16))
    out = tmp_path / "run"
    run_batch(cfg_for(tmp_path / "set", input={"shard_size": 3}), out, progress=False)
    first, second = sorted((out / "status").glob("*.json"))
    st = json.loads(first.read_text())
    first.write_text(json.dumps({**st, "pairs": "many", "ok": [1], "errors": "x",
                                 "error_codes": ["x"]}))
    st = json.loads(second.read_text())
    second.write_text(json.dumps({**st, "error_codes": {"bad_record": "two", "image_unreadable": 2}}))
    summary = RunDir(out).summary()
    assert (summary["done"], summary["pairs"], summary["ok"], summary["errors"]) == (2, 3, 3, 0), summary
    assert summary["error_codes"] == {"bad_record": 0, "image_unreadable": 2}
    assert main(["batch", "status", str(out)]) == 0
    assert "2/2 shards done" in capsys.readouterr().out


def test_a_new_run_inside_another_runs_own_folders_is_refused(tmp_path):
    """`--out RUN/status/x` (or `RUN/masks/<shard>`, `RUN/shards`) planned a run inside another's own files: the outer
    run's writes landed in the inner run (a shard keyed `run` put its status over the inner run.json, --png-masks
    wrote into it) and a sweep of RUN/shards took the inner run's files. Refused before anything is written; a run
    in a folder of RUN's that is not its own is fine."""
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(4, size=16))
    outer = tmp_path / "outer"
    run_batch(cfg_for(tmp_path / "set", png_masks=True), outer, progress=False)
    for inside in (outer / "status" / "nested", outer / "masks" / "nested", outer / "shards"):
        with pytest.raises(InputError) as refused:
            run_batch(cfg_for(tmp_path / "set"), inside, progress=False)
        assert refused.value.code == "out_is_run_file", inside
    assert not (outer / "status" / "nested").exists() and not (outer / "masks" / "nested").exists()
    assert not (outer / "shards" / "run.json").exists()
    assert main(["batch", "run", str(tmp_path / "set"), "--out", str(outer / "status" / "n2"), "--annotator",
                 "pixel-diff", "--workers", "0", "--no-progress"]) == 2
    assert run_batch(cfg_for(tmp_path / "set"), outer / "elsewhere", progress=False).done_now == 1


@pytest.mark.parametrize("args", [["--shard-size", "100001"], ["--set", "input.shard_size=1.0e+300"],
                                  ["--shard-size", str(10 ** 40)]])
def test_a_huge_shard_size_is_a_config_error_naming_the_maximum(tmp_path, capsys, args):
    """`input.shard_size: 1e300` (an integral float) or any huge integer was taken: the whole corpus in one shard
    held in memory. Now it is at most MAX_SHARD_SIZE (100000): exit 2, one line saying so (naming the flag, as
    `bad_arguments`, where the flag gave it; the key, as `invalid_config`, where `--set` did), nothing planned."""
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))
    rc = main(["batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--annotator", "pixel-diff",
               "--no-progress", *args])
    err = capsys.readouterr().err
    said = "[bad_arguments]: --shard-size" if args[0] == "--shard-size" else "[invalid_config]"
    assert rc == 2 and said in err and "shard_size" in err.replace("--shard-size", "shard_size"), err
    assert "100000" in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "run.json").exists()


def planned_run(out: Path, pairs: int) -> RunDir:
    """A run of `pairs` one-pair shards, planned (run.json written as `sigma batch run` writes it) and not run: a
    manifest of `pairs` lines naming two real images."""
    from sigma.batch.runner import prepare_run

    corpus = out.parent / f"{out.name}-corpus"
    write_pairs_jsonl(corpus, synthetic_pairs(1, size=16))
    first = json.loads((corpus / "pairs.jsonl").read_text().splitlines()[0])
    (corpus / "pairs.jsonl").write_text("".join(json.dumps({**first, "id": f"p{i:06d}"}) + "\n"
                                                for i in range(pairs)))
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": 1}, "annotator": "pixel-diff",
                                      "workers": 0})
    rundir, *_ = prepare_run(cfg, out)
    return rundir


def many_failed_run(out: Path, failed: int, pending: int = 5) -> RunDir:
    """A run folder of `failed` shards given up on (each with a 5000-character reason, as a dead letter writes
    them) and `pending` not started."""
    rundir = planned_run(out, failed + pending)
    run_hash = rundir.load()["run_hash"]
    for shard in rundir.shards()[:failed]:
        assert rundir.mark_failed(shard, run_hash, f"dead-lettered: {shard.key} " + "y" * 5000)
    return rundir


def test_a_run_with_thousands_of_failed_shards_lists_the_first_few_and_counts_them_all(tmp_path, capsys):
    """`sigma batch status` (and GET /v1/batches/status, summary.json) listed every failed shard with its whole
    message: a run whose 1200 shards were all dead-lettered answered with 1200 entries of 5 KB. Now the first 100
    (`--failed-limit N`), each message cut to 2000 characters; `failed` still counts all and
    `failed_shards_omitted` says how many were left out."""
    rundir = many_failed_run(tmp_path / "run", 1200)
    summary = rundir.summary()
    assert (summary["failed"], summary["pending"], summary["done"]) == (1200, 5, 0), summary["failed"]
    assert [f["shard"] for f in summary["failed_shards"]] == [s.key for s in rundir.shards()[:100]]
    assert summary["failed_shards_omitted"] == 1100
    assert all(len(f["error"]) < 2100 and f["error"].startswith("dead-lettered: run-corpus__pairs.r")
               for f in summary["failed_shards"])
    everything = rundir.summary(failed_limit=None)
    assert len(everything["failed_shards"]) == 1200 and everything["failed_shards_omitted"] == 0

    assert main(["batch", "status", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("  failed: ") == 100 and "and 1100 more failed shard(s)" in printed
    assert len(printed) < 250_000
    assert main(["batch", "status", str(tmp_path / "run"), "--json", "--failed-limit", "3"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["failed_shards"]) == 3 and (answer["failed"], answer["failed_shards_omitted"]) == (1200, 1197)
    assert main(["batch", "status", str(tmp_path / "run"), "--failed-limit", "-1"]) == 2
    assert "argument --failed-limit: -1: must be in 0 .. 10000" in capsys.readouterr().err


def test_batch_status_of_a_run_of_10000_shards_checks_its_whole_plan_on_every_poll(tmp_path, capsys):
    """`sigma batch status` counted whatever run.json said (an edited plan, planned_pairs, a config that is not
    the run's). It now holds the record to its run hash on every poll, as exports and --resume do: the plan of
    10,000 shards is hashed in ~0.05 s, beside ~1.3 s for the walk over the status files (docs/batch.md). A
    shard edited at the plan's end is run_modified, one line, exit 2."""
    rundir = planned_run(tmp_path / "run", 10_000)
    assert main(["batch", "status", str(rundir.root), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["shards"], answer["pending"], answer["planned_pairs"]) == (10_000, 10_000, 10_000)
    record = json.loads(rundir.run_file.read_text())
    record["shards"][-1]["ref"]["count"] = 2
    rundir.run_file.write_text(json.dumps(record))
    assert main(["batch", "status", str(rundir.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [run_modified]: ") and err.count("\n") == 1 and "shard plan" in err, err
    assert "no status shown" in err


def test_a_local_run_with_many_failed_shards_lists_the_first_100_and_says_where_the_rest_are(tmp_path, capsys):
    """`sigma batch run` printed a line on stderr for every failed shard and wrote every one, with its whole
    reason, to summary.json (`failed`): 129 failed shards were 129 lines of 2 KB each. Now the first 100 (as
    `sigma batch status` and the API list them; `--failed-limit N`), reasons cut to 2000 characters,
    `failed_shards_omitted` counts the rest and the exit code is still 1; every shard's whole reason stays in
    OUT/status/<shard>.json, which `sigma batch status --failed-limit N` lists."""
    deep = tmp_path.joinpath(*["d" * 200] * 11)        # a long path: the reason that names it is > 2000 characters
    deep.mkdir(parents=True)
    manifest = deep / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"x{i}", "original": "a.png", "edited": "b.png"}) + "\n"
                                for i in range(130)))
    out = tmp_path / "run"
    run_batch(cfg_for(manifest, input={"shard_size": 1}), out, progress=False, max_shards=0)   # planned, not run
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")   # 129 shards now end early: corpus_changed
    args = ["batch", "run", str(manifest), "--out", str(out), "--annotator", "pixel-diff", "--shard-size", "1",
            "--workers", "0", "--no-progress", "--resume"]

    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("sigma: error: shard ") == 100 and "and 29 more failed shard(s)" in err, err[-2000:]
    assert f"sigma batch status {out} --failed-limit N" in err and len(err) < 250_000
    # each line cuts the path in its reason, saying its length before the colon that followed it (a cut of the whole
    # reason to 2000 characters printed the path's first 1000 whole)
    whole = len(str(manifest))
    shard_lines = [line for line in err.splitlines() if line.startswith("sigma: error: shard ")]
    assert all(len(line) < 500 and f"/manifest.jsonl ({whole} characters): changed since" in line
               for line in shard_lines), shard_lines[0]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["failed_now"], summary["done_now"], summary["failed_shards_omitted"]) == (129, 1, 29)
    assert [f["shard"] for f in summary["failed"]] == [f"manifest.r{i:07d}-{i:07d}" for i in range(1, 101)]
    assert all(len(f["error"]) < 500 and f"({whole} characters)" in f["error"] and "ends early)" in f["error"]
               for f in summary["failed"])
    assert (summary["status"]["failed"], summary["status"]["failed_shards_omitted"]) == (129, 29)
    kept = [json.loads(p.read_text()) for p in sorted((out / "status").glob("*.json"))]
    assert sum(st["status"] == "failed" and len(st["error"]) > 2200 for st in kept) == 129

    assert main(["batch", "status", str(out), "--json", "--failed-limit", "1000"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed["failed_shards"]) == 129 and listed["failed_shards_omitted"] == 0
    assert main(["batch", "status", str(out)]) == 0
    failed_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  failed: ")]
    assert len(failed_lines) == 100 and all(len(line) < 500 and f"({whole} characters):" in line
                                            for line in failed_lines), failed_lines[0]

    assert main([*args, "--failed-limit", "0", "--json"]) == 1        # none listed: still a failed run
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert (again["failed"], again["failed_now"], again["failed_shards_omitted"]) == ([], 129, 129)
    assert "sigma: error: shard " not in captured.err and "and 129 more failed shard(s)" in captured.err
    assert main([*args, "--failed-limit", "-1"]) == 2
    assert "argument --failed-limit: -1: must be in 0 .. 10000" in capsys.readouterr().err


def test_a_writer_that_fails_behind_a_full_queue_ends_the_run_never_hangs(tmp_path):
    """The shard writer is a thread behind a 64-message queue; with PNG masks it is slower than pixel-diff, so the
    queue is full. When it failed (here: a file where the second shard's mask folder must go) it stopped reading the
    queue, and the main thread waited for ever to hand it the next message (or close()'s end marker): the run hung.
    Now the run ends: one `os_error` line naming the path, exit 2, the first shard published; once the file is
    gone `--resume` finishes the run."""
    root = tmp_path / "set"
    write_pairs_jsonl(root, synthetic_pairs(400, size=64))
    out = tmp_path / "run"
    args = ["batch", "run", str(root), "--out", str(out), "--annotator", "pixel-diff", "--png-masks",
            "--shard-size", "200", "--workers", "0", "--no-progress"]
    proc = subprocess.Popen(_sigma(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    blocker = out / "masks" / "set__pairs.r0000200-0000399"
    try:
        deadline = time.monotonic() + 60
        while not (out / "masks").is_dir() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.001)
        blocker.write_text("in the way")                  # before the writer reaches the second shard
        assert not list((out / "masks" / "set__pairs.r0000000-0000199").glob("*.png"))[150:], "too late to plant"
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the run hung after its shard writer failed")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 2, err
    assert ("sigma: error [os_error]: Not a folder (a FIFO, a device or a file where the run keeps a folder of its "
            f"own; remove it): {blocker}") in err and "Traceback" not in err, err
    assert json.loads((out / "status" / "set__pairs.r0000000-0000199.json").read_text())["status"] == "done"
    assert not (out / "status" / "set__pairs.r0000200-0000399.json").exists()
    blocker.unlink()
    rc = subprocess.run(_sigma(*args, "--resume"), capture_output=True, text=True, timeout=120, check=False)
    assert rc.returncode == 0, rc.stderr
    rows = read_rows(out)
    assert len(rows) == 400 and all(r["status"] == "ok" for r in rows)
    assert len(list((out / "masks").rglob("*.png"))) == 400


def _partial_run(corpus: Path, out: Path) -> list[str]:
    """A run of three shards whose last two were never written (as a kill leaves it); the argv that made it."""
    argv = ["batch", "run", str(corpus), "--out", str(out), "--annotator", "pixel-diff", "--shard-size", "2",
            "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    for status in sorted((out / "status").iterdir())[1:]:
        status.unlink()
        for shard in (out / "shards").glob(f"{status.stem}.*.parquet"):
            shard.unlink()
    return argv


def _run_files(out: Path) -> dict[str, bytes]:
    """What a run folder holds, but its lock files (a refused resume takes the folder's lock, writes nothing)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".lock" and ".locks" not in p.parts}


def _nested(depth: int) -> dict:
    value: dict = {"x": 1}
    for _ in range(depth):
        value = {"x": value}
    return value


RUN_JSON_EDITS = {
    "options": lambda r, other: r["config"].update(options={"threshold": 0.9}),
    "threshold": lambda r, other: r["config"].update(threshold=0.9),
    "input": lambda r, other: r["config"]["input"].update(path=str(other)),
    "shard_file": lambda r, other: r["shards"][-1]["ref"].update(file=str(other / "pairs.jsonl")),
    "shard_rows": lambda r, other: r["shards"][-1]["ref"].update(count=1),
    "shard_outside": lambda r, other: r["shards"][-1]["ref"].update(file="/etc/passwd"),
    "nul_input": lambda r, other: r["config"]["input"].update(path=r["config"]["input"]["path"] + "\x00x"),
    "nul_shard": lambda r, other: r["shards"][-1]["ref"].update(file=r["shards"][-1]["ref"]["file"] + "\x00x"),
    "huge": lambda r, other: r["config"].update(options={"x": "y" * 5_000_000}),
    "deep": lambda r, other: r["config"].update(options=_nested(300)),
    "model": lambda r, other: r["model"].update(sigma_version="0.0.1"),
    "corpus": lambda r, other: r["corpus"].update(path=str(other)),
    "version": lambda r, other: r.update(version=3),
    "unknown_key": lambda r, other: r.update(retention_days=3),           # a newer sigma's, outside the hash
}


@pytest.mark.parametrize("edit", sorted(RUN_JSON_EDITS))
def test_a_run_json_edited_between_a_partial_run_and_its_resume_is_refused_and_nothing_is_written(tmp_path, capsys,
                                                                                                   edit):
    """`--resume` took the shard plan (and the run record) from run.json, which the run hash did not cover: a
    run.json edited between a first, partial run and its resume (a shard's file pointed at another corpus, its
    rows cut, its options changed, a NUL, a 5 MB value) had the rest of the run annotate other pairs under the
    same hash, in the same folder, exit 0: two kinds of masks in one dataset. Now `run_modified`, one line, exit 2,
    nothing written; the run.json put back resumes the run, byte for byte as an uninterrupted run."""
    corpus, other = tmp_path / "set", tmp_path / "other"
    write_pairs_jsonl(corpus, synthetic_pairs(6))
    write_pairs_jsonl(other, synthetic_pairs(6, seed=7))
    reference, out = tmp_path / "reference", tmp_path / "run"
    argv = _partial_run(corpus, out)
    assert main(["batch", "run", str(corpus), "--out", str(reference), *argv[5:]]) == 0
    planned = (out / "run.json").read_bytes()
    record = json.loads(planned)
    RUN_JSON_EDITS[edit](record, other)
    (out / "run.json").write_text(json.dumps(record))
    before = _run_files(out)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [run_modified]: ") and err.count("\n") == 1, err
    assert len(err) < 3000 and "Traceback" not in err
    assert _run_files(out) == before                            # nothing read, nothing written
    (out / "run.json").write_bytes(planned)
    assert main([*argv, "--resume"]) == 0
    assert "2 shard(s) written, 1 skipped" in capsys.readouterr().out
    shards = {p.name: p.read_bytes() for p in (out / "shards").glob("*.parquet")}
    assert len(shards) == 3 and shards == {p.name: p.read_bytes() for p in (reference / "shards").glob("*.parquet")}


def test_a_run_json_with_a_key_this_sigma_does_not_know_is_refused_by_every_reader_naming_it(tmp_path, capsys):
    """A run.json with a top-level key no sigma wrote (a newer version's, or a hand edit's typo: `planed_pairs`) was
    read as if the key were not there: half understood. Every reader (`--resume`, `sigma batch status`, the exports)
    now refuses it, run_modified naming the key, nothing written. What this sigma writes holds every key it
    knows and no other, and a version 1 record (an older sigma's) still reads."""
    corpus, out = tmp_path / "set", tmp_path / "run"
    write_pairs_jsonl(corpus, synthetic_pairs(4))
    argv = _partial_run(corpus, out)
    planned = (out / "run.json").read_bytes()
    record = RunDir(out).load()                                  # the writer's own output reads back
    assert set(record) == RUN_KEYS, sorted(record)
    legacy = {**record, "version": 1}
    legacy.pop("model")                                          # version 1 records before the model was recorded
    (out / "run.json").write_text(json.dumps(legacy))
    assert RunDir(out).load()["version"] == 1
    (out / "run.json").write_text(json.dumps({**record, "planed_pairs": 4}))
    before = _run_files(out)
    capsys.readouterr()
    for args in ([*argv, "--resume"], ["batch", "status", str(out)],
                 ["export", "coco", str(out), "--out", str(tmp_path / "coco.json")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("sigma: error [run_modified]: ") and err.count("\n") == 1, (args, err)
        assert "does not know: 'planed_pairs'" in err and "newer version of sigma, or edited" in err, (args, err)
    assert _run_files(out) == before and not (tmp_path / "coco.json").exists()
    (out / "run.json").write_bytes(planned)
    assert main(["batch", "status", str(out)]) == 0


def test_a_run_json_edited_is_one_line_and_exit_2_from_the_real_command(tmp_path):
    """The same from a real `sigma batch run --resume` process: one stderr line with the code, no traceback."""
    corpus, other = tmp_path / "set", tmp_path / "other"
    write_pairs_jsonl(corpus, synthetic_pairs(6))
    write_pairs_jsonl(other, synthetic_pairs(6, seed=7))
    argv = _partial_run(corpus, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    record["shards"][-1]["ref"]["file"] = str(other / "pairs.jsonl")
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    rc = subprocess.run(_sigma(*argv, "--resume"), capture_output=True, text=True, timeout=120, check=False)
    assert rc.returncode == 2 and rc.stdout == "", rc
    assert rc.stderr.startswith("sigma: error [run_modified]: ") and rc.stderr.count("\n") == 1, rc.stderr
    assert "shard plan" in rc.stderr
    assert len(list((tmp_path / "run" / "shards").glob("*.parquet"))) == 1


def test_a_run_planned_before_the_plan_was_hashed_resumes_and_its_plan_is_checked_against_the_corpus(tmp_path,
                                                                                                     capsys):
    """A run.json of version 1 (its run hash without the shard plan, the input path as typed) stays resumable: its
    plan, which its hash cannot vouch for, is checked against the corpus planned again. A version 1 plan edited to
    read another corpus is refused (run_modified, saying why an older run is checked so), nothing written."""
    corpus, other = tmp_path / "set", tmp_path / "other"
    write_pairs_jsonl(corpus, synthetic_pairs(6))
    write_pairs_jsonl(other, synthetic_pairs(6, seed=7))
    out = tmp_path / "run"
    argv = _partial_run(corpus, out)
    record = json.loads((out / "run.json").read_text())
    legacy_hash = BatchConfig.model_validate(record["config"]).run_hash(record["corpus"], record["model"])
    planned_hash = record["run_hash"]
    record.update(version=1, run_hash=legacy_hash)
    record["config"]["input"]["path"] = os.path.relpath(corpus)           # as typed, relative to where it ran
    for shard in (out / "shards").glob("*.parquet"):                     # the finished shard, as version 1 named it
        shard.rename(shard.with_name(f"{shard.name.rsplit('.', 2)[0]}.{legacy_hash}.parquet"))
    for status in (out / "status").glob("*.json"):
        status.write_text(json.dumps({**json.loads(status.read_text()), "run_hash": legacy_hash}))
    legacy = json.dumps(record)
    record["shards"][-1]["ref"]["file"] = str(other / "pairs.jsonl")
    (out / "run.json").write_text(json.dumps(record))
    before = _run_files(out)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [run_modified]: ") and "planned by an older sigma" in err, err
    assert _run_files(out) == before
    (out / "run.json").write_text(legacy)
    assert main([*argv, "--resume"]) == 0
    assert "2 shard(s) written, 1 skipped" in capsys.readouterr().out
    assert sorted(p.name.split(".")[-2] for p in (out / "shards").glob("*.parquet")) == [legacy_hash] * 3
    assert [r["pair_id"] for r in read_rows(out)] == [f"set/p{i:06d}" for i in range(6)]
    assert legacy_hash != planned_hash                  # version 2 hashes the plan too


def test_a_run_json_over_the_size_limit_is_refused_by_its_size_by_every_reader_and_nothing_is_written(
        tmp_path, capsys, monkeypatch):
    """Nothing bounded run.json: a shard plan of 200 MB was parsed whole by every reader (~21 s and 1.6 GB each:
    --resume, submit, each fleet worker, status, the exports, the review page, the API). Now one over
    $SIGMA_MAX_RUN_BYTES is refused by its size before it is parsed: `run_too_large`, one line naming the limit,
    exit 2, nothing written. The same bytes at the limit read as before (here valid JSON padded with spaces: only
    its size is over)."""
    from sigma.batch.layout import DEFAULT_MAX_RUN_BYTES
    from sigma.text import dumps_finite

    corpus, out = tmp_path / "set", tmp_path / "run"
    write_pairs_jsonl(corpus, synthetic_pairs(6))
    argv = _partial_run(corpus, out)
    planned = (out / "run.json").read_bytes()
    (out / "run.json").write_bytes(planned + b" " * 4096)
    monkeypatch.setenv("SIGMA_MAX_RUN_BYTES", str(len(planned) + 4095))
    before = _run_files(out)
    capsys.readouterr()
    for args in ([*argv, "--resume"], ["batch", "status", str(out)],
                 ["export", "imdl-benco", str(out), "--out", str(tmp_path / "export")],
                 ["report", str(out), "--out", str(tmp_path / "page.html")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("sigma: error [run_too_large]: ") and err.count("\n") == 1, (args, err)
        assert f"{len(planned) + 4096} bytes, over the {len(planned) + 4095}" in err and "SIGMA_MAX_RUN_BYTES" in err
    assert _run_files(out) == before
    assert not (tmp_path / "export").exists() and not (tmp_path / "page.html").exists()
    monkeypatch.setenv("SIGMA_MAX_RUN_BYTES", str(len(planned) + 4096))                # at the limit: read
    assert main([*argv, "--resume"]) == 0
    assert "2 shard(s) written, 1 skipped" in capsys.readouterr().out
    monkeypatch.delenv("SIGMA_MAX_RUN_BYTES")
    # the default is far above what a large run records: this record with 50,000 shards, as the writer writes it,
    # each naming a manifest by a path of 81 characters (not pytest's temporary folder, whose length grows with its
    # run number on a machine that keeps it: at pytest-1000 the record passed the 4x margin this asked, by 0.1 %)
    record = json.loads(planned)
    shard = {**record["shards"][0], "ref": {**record["shards"][0]["ref"], "file": "/data/" + "c" * 63 + "/pairs.jsonl"}}
    large = len(dumps_finite({**record, "shards": [shard] * 50_000}, indent=2, sort_keys=True))
    assert 3 * large < DEFAULT_MAX_RUN_BYTES, large


def test_a_plan_over_the_size_limit_is_refused_before_run_json_is_written(tmp_path, capsys, monkeypatch):
    """The writer wrote any plan, so a corpus planned into more than the readers take made a run.json that none of
    them would read. Now `sigma batch run` (and submit, POST /v1/batches) refuses such a plan before writing it:
    `plan_too_large`, saying to split the corpus, no run folder left; the same corpus in fewer shards runs. A limit
    that is no number is invalid_config."""
    corpus = tmp_path / "set"
    write_pairs_jsonl(corpus, synthetic_pairs(30, size=16))
    monkeypatch.setenv("SIGMA_MAX_RUN_BYTES", "6000")
    base = ["batch", "run", str(corpus), "--annotator", "pixel-diff", "--workers", "0", "--no-progress"]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "many"), "--shard-size", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [plan_too_large]: ") and err.count("\n") == 1, err
    assert "of 30 shards" in err and "over the 6000" in err and "split it into several runs" in err, err
    assert not (tmp_path / "many").exists()
    assert main([*base, "--out", str(tmp_path / "one"), "--shard-size", "30"]) == 0
    assert (tmp_path / "one" / "run.json").stat().st_size <= 6000
    monkeypatch.setenv("SIGMA_MAX_RUN_BYTES", "lots")
    assert main(["batch", "status", str(tmp_path / "one")]) == 2
    assert capsys.readouterr().err.startswith("sigma: error [invalid_config]: $SIGMA_MAX_RUN_BYTES='lots'")
    # a limit past a 64-bit count was taken as "no limit" and then read run.json with `read(limit + 1)`: an
    # OverflowError traceback in every reader; now refused in one line, and the largest one taken is read
    from sigma.text import ENV_INT_MOST

    for huge in ("9" * 500, str(ENV_INT_MOST + 1)):
        monkeypatch.setenv("SIGMA_MAX_RUN_BYTES", huge)
        assert main(["batch", "status", str(tmp_path / "one")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sigma: error [invalid_config]: $SIGMA_MAX_RUN_BYTES=") and err.count("\n") == 1, err
        assert f"at most {ENV_INT_MOST}" in err, err
    monkeypatch.setenv("SIGMA_MAX_RUN_BYTES", str(ENV_INT_MOST))
    assert main(["batch", "status", str(tmp_path / "one")]) == 0
    # a fraction was cut by int() without a word (1000.7 bytes: a limit of 1000); now refused, saying a whole number
    # is needed; a float that is a whole number (`1e8`) is taken
    monkeypatch.setenv("SIGMA_MAX_RUN_BYTES", "1000.7")
    assert main(["batch", "status", str(tmp_path / "one")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [invalid_config]: $SIGMA_MAX_RUN_BYTES='1000.7': ") and err.count("\n") == 1
    assert "(1000.7 is not a whole number)" in err, err
    monkeypatch.setenv("SIGMA_MAX_RUN_BYTES", "1e8")
    assert main(["batch", "status", str(tmp_path / "one")]) == 0


_KILLED_WRITER = """import os, signal, sys
from pathlib import Path
from sigma.tempfiles import temp_name
tmp = temp_name(Path(sys.argv[1]))
tmp.write_bytes(b"half a file")
print(tmp.name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_mid_write(target: Path) -> str:
    """A real writer SIGKILLed between writing its temporary file for `target` and renaming it: the name it left."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    name = proc.stdout.strip()
    assert (target.parent / name).is_file()
    return name


def test_a_resumed_run_sweeps_what_killed_writers_left_in_status_and_masks(tmp_path):
    """A run swept only its folder itself when it took it: the status files and PNG masks that writers killed
    mid-write left in `status/` and `masks/<shard>/` (`.NAME.PID.RANDOM.tmp`) stayed for good, and a corpus-scale
    run folder resumed after crashes and OOM kills gathered hidden junk. The run that resumes the folder now
    removes them there too: only that form, only with a pid that is no live process here, never through a link.
    A live writer's file, a user's `notes.tmp` / `.notes.tmp` and a link stay; a fleet submission of a planned run
    (which shares the folder with fleet workers) sweeps nothing."""
    from sigma.batch.runner import prepare_run

    root = tmp_path / "set"
    write_pairs_jsonl(root, synthetic_pairs(8, size=32))
    common = ["--annotator", "pixel-diff", "--shard-size", "4", "--workers", "0", "--png-masks", "--no-progress"]
    out = tmp_path / "run"
    assert subprocess.run(_sigma("batch", "run", str(root), "--out", str(out), *common), timeout=120,
                          capture_output=True, check=False).returncode == 0
    record = json.loads((out / "run.json").read_text())
    key = record["shards"][0]["key"]
    (out / "status" / f"{key}.json").unlink()          # the shard a killed run was writing: pending again
    masks, status = out / "masks" / key, out / "status"
    some_mask = next(masks.glob("*.png"))
    dead = [_killed_mid_write(some_mask), _killed_mid_write(status / f"{key}.json")]
    outside = tmp_path / "elsewhere.tmp"
    outside.write_text("not ours")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        kept_masks = [f".{some_mask.name}.{live.pid}.0badf00d.tmp", "notes.tmp", ".notes.tmp",
                      f".x.png.{live.pid}.notrandom.tmp"]
        kept_status = [f".{key}.json.{live.pid}.12345678.tmp", "notes.tmp"]
        for name in kept_masks:
            (masks / name).write_text("x")
        for name in kept_status:
            (status / name).write_text("x")
        dead_pid = dead[0].split(".")[-3]
        link = status / f".{key}.json.{dead_pid}.abcdef01.tmp"        # the form, but a link: never removed
        link.symlink_to(outside)

        # a fleet submission sharing the folder with fleet workers: nothing swept
        prepare_run(cfg_for(root, input={"shard_size": 4}, png_masks=True), out, resume=True, sweep=False)
        assert (masks / dead[0]).exists() and (status / dead[1]).exists()

        rc = subprocess.run(_sigma("batch", "run", str(root), "--out", str(out), "--resume", *common),
                            capture_output=True, timeout=120, text=True, check=False)
        assert rc.returncode == 0, rc.stderr
        assert "1 shard(s) written" in rc.stdout, rc.stdout
        assert not (masks / dead[0]).exists() and not (status / dead[1]).exists()
        assert sorted(p.name for p in masks.iterdir() if p.name.endswith(".tmp")) == sorted(kept_masks)
        assert sorted(p.name for p in status.iterdir() if p.name.endswith(".tmp")) == sorted(
            [*kept_status, link.name])
        assert link.is_symlink() and outside.read_text() == "not ours"
    finally:
        live.kill()
        live.wait()


def _recorded_batch_run(tmp_path: Path) -> tuple[Path, list]:
    """A real `sigma batch run` (8 pairs, 2 shards of 4, pixel-diff) under `killers.RECORD_SYNCS`: its run folder
    and its fsyncs and renames in order."""
    root = tmp_path / "set"
    write_pairs_jsonl(root, synthetic_pairs(8, size=32))
    out, log, script = tmp_path / "run", tmp_path / "events.json", tmp_path / "record.py"
    script.write_text(RECORD_SYNCS)
    proc = subprocess.run([sys.executable, str(script), str(log), "batch", "run", str(root), "--out", str(out),
                           "--annotator", "pixel-diff", "--shard-size", "4", "--workers", "0", "--no-progress"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(log.read_text())


def test_a_shard_is_on_disk_before_the_status_that_says_it_is_done(tmp_path):
    """A shard's parquet was renamed with its bytes only flushed (never fsynced) while the status saying "done"
    that followed was fsynced: after a power cut the status could stand beside a shard cut short or missing. In a
    real run now, for every shard: its temporary file is fsynced, then renamed into place, then `shards/` is
    fsynced, and only then is the status file written (its own temporary file fsynced and renamed)."""
    out, events = _recorded_batch_run(tmp_path)
    record = json.loads((out / "run.json").read_text())
    assert len(record["shards"]) == 2
    for shard in record["shards"]:
        target = str(out / "shards" / f"{shard['key']}.{record['run_hash']}.parquet")
        status = str(out / "status" / f"{shard['key']}.json")
        renamed = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == target)
        tmp = events[renamed][1]
        synced = [i for i, e in enumerate(events) if e == ["fsync", tmp]]
        folder = [i for i, e in enumerate(events) if e == ["fsync", str(out / "shards")] and i > renamed]
        status_at = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == status)
        assert synced and synced[0] < renamed, events            # the bytes before the name
        assert folder and folder[0] < status_at, events          # the name before the status that vouches for it
        assert ["fsync", events[status_at][1]] in events[:status_at]   # and the status itself durable


def test_the_run_folders_own_entries_for_shards_and_status_are_on_disk_before_a_status(tmp_path):
    """`shards/` and `status/` were made with a plain mkdir: every parquet and status in them was synced, the
    folders' own names in the run folder never were, so a power cut could take `shards/` whole from under a "done"
    status (the shards written again, but for nothing). In a real run now, the run folder is fsynced after each is
    made (once: a folder already there is not synced again) and before the first status's rename."""
    out, events = _recorded_batch_run(tmp_path)
    first_shard = next(i for i, e in enumerate(events) if e[0] == "rename" and Path(e[2]).parent == out / "shards")
    first_status = next(i for i, e in enumerate(events) if e[0] == "rename" and Path(e[2]).parent == out / "status")
    synced = [i for i, e in enumerate(events) if e == ["fsync", str(out)]]
    assert [i for i in synced if i < first_shard], events          # shards/'s own name, made before its first file
    assert [i for i in synced if i < first_status], events         # status/'s, before the first status
    assert len(synced) <= 4, events      # once per folder made (shards/, status/, .locks/), not once per shard


def test_png_masks_are_on_disk_before_the_status_that_says_their_shard_is_done(tmp_path):
    """`--png-masks` wrote each mask atomically but never fsynced it, nor `masks/<shard>/`, while the status saying
    "done" that followed was fsynced: after a power cut a done shard could have masks empty, cut short or missing,
    and `--resume` never wrote them again. In a real run now, for every shard: each PNG's temporary file is fsynced
    before its rename, `masks/<shard>/` is fsynced after the last PNG's rename and before the status's, and
    `status/` is fsynced after the status's rename (that rename on disk too)."""
    root = tmp_path / "set"
    write_pairs_jsonl(root, synthetic_pairs(8, size=32))
    out, log, script = tmp_path / "run", tmp_path / "events.json", tmp_path / "record.py"
    script.write_text(RECORD_SYNCS)
    proc = subprocess.run([sys.executable, str(script), str(log), "batch", "run", str(root), "--out", str(out),
                           "--annotator", "pixel-diff", "--shard-size", "4", "--workers", "0", "--png-masks",
                           "--no-progress"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    events = json.loads(log.read_text())
    record = json.loads((out / "run.json").read_text())
    assert len(record["shards"]) == 2
    for shard in record["shards"]:
        masks = out / "masks" / shard["key"]
        pngs = sorted(str(p) for p in masks.glob("*.png"))
        assert len(pngs) == 4, pngs
        renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] in pngs]
        assert len(renames) == 4, events
        for at in renames:        # each PNG's bytes before its name
            assert ["fsync", events[at][1]] in events[:at], events
        status = str(out / "status" / f"{shard['key']}.json")
        status_at = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == status)
        folder = [i for i, e in enumerate(events) if e == ["fsync", str(masks)] and max(renames) < i < status_at]
        assert folder, events     # the PNGs' names before the status that vouches for them
        assert ["fsync", str(out / "status")] in events[status_at:], events     # and the status's own name


_KILL_BEFORE_STATUS = r'''import os, signal, sys
def hook(event, args):
    if event == "os.rename" and os.path.basename(os.path.dirname(os.fspath(args[1]))) == "status":
        os.kill(os.getpid(), signal.SIGKILL)     # the shard's parquet is in place, its status not yet
sys.addaudithook(hook)
from sigma.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_a_run_killed_between_a_shard_and_its_status_resumes_it(tmp_path):
    """SIGKILL of a real run at the instant its first shard's parquet is in place (durably) and its status is not
    (the status's temporary file written, its rename not done): the shard is pending, and `--resume` writes it
    again and the rest, byte-identical to an uninterrupted run, with the status's temporary file swept."""
    root = tmp_path / "set"
    write_pairs_jsonl(root, synthetic_pairs(12, size=32))
    common = ["--annotator", "pixel-diff", "--shard-size", "4", "--workers", "0", "--no-progress"]
    full, killed, script = tmp_path / "full", tmp_path / "killed", tmp_path / "kill.py"
    assert subprocess.run(_sigma("batch", "run", str(root), "--out", str(full), *common), timeout=120,
                          capture_output=True, check=False).returncode == 0
    script.write_text(_KILL_BEFORE_STATUS)
    proc = subprocess.run([sys.executable, str(script), "batch", "run", str(root), "--out", str(killed), *common],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list((killed / "shards").glob("*.parquet"))) == 1 and not list((killed / "status").glob("*.json"))
    assert [p for p in (killed / "status").iterdir() if p.name.endswith(".tmp")]     # the status it was renaming
    rc = subprocess.run(_sigma("batch", "run", str(root), "--out", str(killed), "--resume", *common),
                        capture_output=True, timeout=120, text=True, check=False)
    assert rc.returncode == 0, rc.stderr
    assert "3 shard(s) written, 0 skipped" in rc.stdout, rc.stdout
    full_files = {p.name: p.read_bytes() for p in (full / "shards").glob("*.parquet")}
    assert full_files == {p.name: p.read_bytes() for p in (killed / "shards").glob("*.parquet")}
    assert len(full_files) == 3
    assert not [p for p in (killed / "status").iterdir() if p.name.endswith(".tmp")]
    assert subprocess.run(_sigma("batch", "status", str(killed)), capture_output=True, timeout=60,
                          check=False).returncode == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["status", "summary.json"])
def test_a_run_file_that_is_a_fifo_is_replaced_on_resume_not_written_into(tmp_path, name):
    """A batch run's own files are never streams: a status file (or summary.json) that is a FIFO was taken for
    `--out /dev/stdout`-like output and written into, so `sigma batch run --resume` hung for ever in its open (now
    that such writes wait for a reader, a traceback after 10 s). The FIFO is replaced like any file: the shard
    runs again, its status is written. A real process under `timeout=`: a regression fails the test, not hangs."""
    write_pairs_jsonl(tmp_path / "corpus", synthetic_pairs(2, size=32))
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "sigma", "batch", "run", str(tmp_path / "corpus"), "--out", str(out),
            "--annotator", "pixel-diff", "--no-progress"]
    assert subprocess.run(argv, capture_output=True, timeout=90).returncode == 0
    target = next((out / "status").iterdir()) if name == "status" else out / name
    target.unlink()
    os.mkfifo(target)
    try:
        done = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"sigma batch run --resume hung on its {name} FIFO") from None
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert target.is_file() and json.loads(target.read_text())


def test_a_batch_runs_ground_truth_reads_each_mask_as_sigma_eval_does(tmp_path, capsys):
    """The batch decoder binarised the mask's RGB composited on white: a transparent mask (white everywhere, opaque on
    the edit) read as marked everywhere — gt_fraction 1.0 and F1 0.4 where `sigma eval` said 0.25 and 1.0 — and a
    16-bit 0/1 label map read as empty. Both read the mask through one decoder now: the same scores."""
    folder = tmp_path / "set"
    folder.mkdir()
    original = np.zeros((4, 4, 3), np.uint8)
    edited = original.copy()
    edited[0] = 255
    Image.fromarray(original).save(folder / "o.png")
    Image.fromarray(edited).save(folder / "e.png")
    rgba = np.full((4, 4, 4), 255, np.uint8)
    rgba[..., 3] = 0
    rgba[0, :, 3] = 255                                     # white everywhere; only the edited row opaque
    Image.fromarray(rgba).save(folder / "alpha.png")
    labels = np.zeros((4, 4), np.uint16)
    labels[0] = 1
    Image.fromarray(labels).save(folder / "labels16.png")
    records = [{"id": name, "original": "o.png", "edited": "e.png", "mask": f"{name}.png", "instruction": None}
               for name in ("alpha", "labels16")]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["eval", "--data", str(folder), "--annotator", "pixel-diff", "--out", str(tmp_path / "ev")]) == 0
    evaluated = {p["id"]: p for p in json.loads((tmp_path / "ev" / "metrics.json").read_text())["per_pair"]["none"]}
    assert main(["batch", "run", str(folder), "--out", str(tmp_path / "run"), "--annotator", "pixel-diff",
                 "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    rows = {r["pair_id"].split("/")[-1]: r for r in read_rows(tmp_path / "run")}      # "set/alpha"
    for name in ("alpha", "labels16"):
        assert evaluated[name]["gt_fraction"] == 0.25 and evaluated[name]["f1"] == 1.0
        assert (rows[name]["gt_fraction"], rows[name]["gt_f1"], rows[name]["gt_note"]) == (0.25, 1.0, None), name


def test_shard_keys_never_start_with_a_dash_and_a_run_planned_with_one_still_resumes(tmp_path, capsys):
    """A manifest named `-rf.jsonl` planned the shard key `-rf.r0000000-0000001`: `shards/-rf....parquet`,
    `status/-rf....json`, `masks/-rf.../`, which `ls *` / `cp * dest` / `xargs` in those folders take for options.
    Now a new plan's key gets `_` before a leading `-`. A run planned before keeps its keys: a version 1 record (its
    plan checked by planning the corpus again) with `-` keys still resumes, under those keys."""
    corpus = tmp_path / "set"
    write_pairs_jsonl(corpus, synthetic_pairs(6))
    manifest = (corpus / "pairs.jsonl").rename(corpus / "-rf.jsonl")
    out = tmp_path / "run"
    argv = ["batch", "run", str(manifest), "--out", str(out), "--annotator", "pixel-diff", "--shard-size", "2",
            "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert [s["key"] for s in record["shards"]] == [f"_-rf.r{i:07d}-{i + 1:07d}" for i in (0, 2, 4)]
    names = [p.name for folder in ("shards", "status") for p in (out / folder).iterdir()]
    assert len(names) == 6 and not any(name.startswith("-") for name in names), names

    for shard in record["shards"]:                     # the same run as an older sigma planned and recorded it
        shard["key"] = shard["key"][1:]
    record.update(version=1, run_hash=BatchConfig.model_validate(record["config"]).run_hash(record["corpus"],
                                                                                              record["model"]))
    shutil.rmtree(out / "shards")
    shutil.rmtree(out / "status")
    (out / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0, capsys.readouterr().err
    assert "3 shard(s) written" in capsys.readouterr().out
    assert sorted(p.name.split(".")[0] for p in (out / "status").iterdir()) == ["-rf"] * 3
    assert [r["pair_id"] for r in read_rows(out)] == [f"p{i:06d}" for i in range(6)]
