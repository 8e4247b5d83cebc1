"""`sigma export hf`: a batch run as a Hugging Face dataset, loaded back with the real `datasets` library
(`load_dataset("parquet", data_dir=OUT)` and `load_dataset(OUT)` through the card), masks decoded and compared
with the run's manifests, filters, sharding, and the refusal to mix two exports.

With SIGMA_CI=1 (set by .ci/run) a missing `datasets` fails this module instead of skipping it."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from killers import RECORD_SYNCS, at_first_temp_rename

try:
    import datasets
except ImportError:
    if os.environ.get("SIGMA_CI") == "1":
        raise
    pytest.skip("the `datasets` package is in the dev extra", allow_module_level=True)

from sigma.batch import BatchConfig, run_batch
from sigma.cli import main
from sigma.export import RowFilter, export_hf
from sigma.export.hf import COLUMNS
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl
from sigma.rle import decode_rle

WEIGHTS = Path(__file__).resolve().parents[1] / "sigma" / "weights" / "sigma-lite.safetensors"


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_torch_thread) -> Path:
    """sigma-lite over 8 pairs (+ one that cannot be read) in 3 shards: masks with confidences and parses."""
    root = tmp_path_factory.mktemp("hf")
    write_pairs_jsonl(root / "set", synthetic_pairs(8, size=64))
    with open(root / "set" / "pairs.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "gone", "original": "nope.png", "edited": "nope.png", "instruction": "x"})
                     + "\n")
    cfg = BatchConfig.model_validate({"input": {"path": str(root / "set"), "shard_size": 3},
                                      "annotator": "sigma-lite", "workers": 0, "procs": 1})
    summary = run_batch(cfg, root / "run", progress=False)
    assert summary.done_now == 3 and summary.errors == 1
    return root / "run"


def manifest_rows(run: Path) -> dict[str, dict]:
    return {r["pair_id"]: r for f in sorted((run / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()
            if r["status"] == "ok"}


def load(out: Path, tmp_path: Path, **kw):
    """Local files only: the packaged parquet builder never asks the Hub."""
    return datasets.load_dataset("parquet", data_dir=str(out), cache_dir=str(tmp_path / "cache"), **kw)["train"]


def test_loads_with_image_features_and_the_masks_of_the_run(run, tmp_path):
    from pycocotools import mask as mask_utils

    out = tmp_path / "ds"
    info = export_hf(run, out)
    assert info["rows"] == 8 and info["files"] == ["data/train-00000-of-00001.parquet"]
    assert info["weights_sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    ds = load(out, tmp_path)
    assert len(ds) == 8 and list(ds.features) == [name for name, _, _, _ in COLUMNS]
    for column in ("original", "edited", "mask"):
        assert isinstance(ds.features[column], datasets.Image)
    rows = manifest_rows(run)
    for item in ds:
        row = rows[item["pair_id"]]
        expected = decode_rle({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})
        mask = np.asarray(item["mask"])
        assert item["mask"].mode == "L" and mask.shape == expected.shape
        assert np.array_equal(mask > 127, expected) and set(np.unique(mask)) <= {0, 255}
        coco = mask_utils.decode({"size": item["mask_rle"]["size"], "counts": item["mask_rle"]["counts"].encode()})
        assert np.array_equal(coco.astype(bool), expected)
        assert item["original"].size == (row["width"], row["height"])
        assert (item["confidence"], item["bbox"], item["area"]) == (row["confidence"], row["bbox"], row["area"])
        assert item["annotator"] == "sigma-lite" and item["weights_sha256"] == info["weights_sha256"]
        assert json.loads(item["parse"])["edit_type"] and item["run_hash"] == row["run_hash"]
    # the images are the corpus's bytes, unchanged
    raw = datasets.load_dataset("parquet", data_dir=str(out), cache_dir=str(tmp_path / "cache2"))["train"]
    raw = raw.cast_column("original", datasets.Image(decode=False))
    first = raw[0]
    assert hashlib.sha256(first["original"]["bytes"]).hexdigest() == rows[first["pair_id"]]["original_sha256"]
    assert first["original"]["path"].endswith("_original.png")


def test_the_card_describes_the_same_dataset(run, tmp_path):
    out = tmp_path / "ds"
    export_hf(run, out, name="synthetic edits")
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert [f["name"] for f in front["dataset_info"]["features"]] == [name for name, _, _, _ in COLUMNS]
    assert front["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*"}
    assert "# synthetic edits" in text and "sigma-lite" in text and "1 bad pairs" in text
    by_card = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))["train"]   # the way the Hub reads it
    assert len(by_card) == 8 and isinstance(by_card.features["mask"], datasets.Image)


def test_filters_and_shards(run, tmp_path):
    rows = manifest_rows(run)
    confidences = sorted(r["confidence"] for r in rows.values())
    cut = confidences[len(confidences) // 2]
    info = export_hf(run, tmp_path / "conf", RowFilter(min_confidence=cut))
    kept = load(tmp_path / "conf", tmp_path)
    assert info["rows"] == len(kept) == sum(c >= cut for c in confidences) < 8
    assert all(c >= cut for c in kept["confidence"])
    assert f"min_confidence = {cut}" in (tmp_path / "conf" / "README.md").read_text()
    composite = any(r["is_composite"] for r in rows.values())     # a value that keeps pairs
    export_hf(run, tmp_path / "low", RowFilter(max_confidence=1.0, composite=composite))
    card = (tmp_path / "low" / "README.md").read_text()    # said "Export filters: none"
    assert "max_confidence = 1.0" in card and f"composite = {'only' if composite else 'exclude'}" in card
    fractions = sorted(r["area_fraction"] for r in rows.values())
    info = export_hf(run, tmp_path / "area", RowFilter(max_area=fractions[2]))
    assert info["rows"] == sum(f <= fractions[2] for f in fractions)
    # ~2 KB per file: one parquet file per row, all of them loaded, in the run's order
    info = export_hf(run, tmp_path / "small", max_shard_mb=0.002)
    assert len(info["files"]) == 8 and info["files"][-1] == "data/train-00007-of-00008.parquet"
    export_hf(run, tmp_path / "all")
    assert load(tmp_path / "small", tmp_path)["pair_id"] == load(tmp_path / "all", tmp_path)["pair_id"]


def test_rereads_honour_the_runs_batch_root(tmp_path):
    """A run confined to a batch root (as the API submits it) is re-read under the same root: a corpus file
    swapped for a symlink to the same bytes outside the root is skipped, not read."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_pairs_jsonl(root / "set", synthetic_pairs(3, size=48))
    cfg = BatchConfig.model_validate({"input": {"path": str(root / "set"), "root": str(root)},
                                      "annotator": "pixel-diff", "workers": 0, "procs": 1})
    assert run_batch(cfg, root / "run", progress=False).errors == 0
    record = json.loads((root / "set" / "pairs.jsonl").read_text().splitlines()[0])
    target = root / "set" / record["original"]
    outside.mkdir()
    (outside / target.name).write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside / target.name)
    info = export_hf(root / "run", tmp_path / "out")
    assert info["rows"] == 2
    [skip] = info["skipped"]
    assert skip["pair_id"].endswith(record["id"]) and "outside the batch root" in skip["reason"], skip


def test_cli_refuses_to_mix_two_exports(run, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["export", "hf", str(run), str(out)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["rows"] == 8
    assert main(["export", "hf", str(run), str(out), "--min-confidence", "0.99"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "hf", str(run), "--out", str(out), "--min-confidence", "2", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "[bad_arguments]" in err and "argument --min-confidence: a confidence in [0, 1]" in err
    assert main(["export", "hf", str(run), "--out", str(out), "--min-confidence", "0.99", "--max-confidence", "0.01",
                 "--overwrite"]) == 2
    assert "[bad_arguments]: --min-confidence 0.99 is above --max-confidence 0.01" in capsys.readouterr().err
    assert len(load(out, tmp_path)) == 8              # a refused export leaves the previous one as it was
    assert main(["export", "hf", str(run), "--out", str(out), "--max-area", "0.05", "--overwrite"]) == 0
    kept = json.loads(capsys.readouterr().out.splitlines()[0])["rows"]
    assert 0 < kept < 8 and len(load(out, tmp_path / "again")) == kept
    assert not list((out / "data").glob(".*"))


def test_a_readme_of_the_users_in_out_is_never_replaced_by_the_card_unasked(run, tmp_path, capsys):
    """OUT/README.md is the card: a folder holding the user's own README.md and no earlier export (a project, a
    clone of a new Hub dataset repo) had it replaced, silently. Refused unless --overwrite; nothing written."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my own notes")
    assert main(["export", "hf", str(run), str(out)]) == 2
    err = capsys.readouterr().err
    assert "[out_not_empty]" in err and "README.md" in err and "--overwrite" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["README.md"] and (out / "README.md").read_text() == "my own notes"
    assert main(["export", "hf", str(run), str(out), "--overwrite"]) == 0
    assert (out / "README.md").read_text().startswith("---") and len(load(out, tmp_path)) == 8


def test_an_export_into_a_folder_whose_data_is_a_link_is_refused_before_writing(run, tmp_path, capsys):
    """The set (shards and card) is committed from OUT's journal, which never follows a link out of OUT: a linked
    data/ was refused by that commit with a ValueError traceback, after every shard had been written through the
    link. It is refused up front now, the linked folder untouched."""
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "ds"
    elsewhere.mkdir()
    out.mkdir()
    (out / "data").symlink_to(elsewhere)
    assert main(["export", "hf", str(run), str(out)]) == 2
    err = capsys.readouterr().err
    assert "[bad_outdir]" in err and "symbolic link" in err and "Traceback" not in err
    assert os.listdir(elsewhere) == [] and sorted(os.listdir(out)) == ["data"]
    (out / "data").unlink()
    (out / "data").write_text("a file")
    assert main(["export", "hf", str(run), str(out)]) == 2
    assert "[bad_outdir]" in capsys.readouterr().err and (out / "data").read_text() == "a file"


def test_an_export_that_fails_on_a_full_disk_takes_its_temporary_shards_with_it(run, tmp_path, monkeypatch):
    """A full disk mid-export left `.train-00000.parquet.tmp` holding the space until the next export; now
    the failure is raised as it was and no temporary shard stays (the previous export, if any, is kept)."""
    import pyarrow.parquet

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pyarrow.parquet.ParquetWriter, "write_table", full_disk)
    out = tmp_path / "hf"
    with pytest.raises(OSError):
        export_hf(run, out)
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_atomic_png_and_json_writes_leave_no_tmp_when_the_rename_fails(tmp_path, monkeypatch):
    from sigma.io.images import write_png
    from sigma.io.outputs import write_json

    def refuse(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        write_png(np.zeros((4, 4), np.uint8), tmp_path / "m.png")
    with pytest.raises(OSError):
        write_json({"a": 1}, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_an_export_never_replaces_the_corpus_it_was_made_from(tmp_path, capsys):
    """A Hugging Face download is data/train-*.parquet, the very names an export writes: `sigma export hf RUN
    CORPUS --overwrite` deleted the run's own corpus and put the export in its place."""
    from sigma.io.corpora.synthetic import write_parquet

    corpus = tmp_path / "hub_download"
    source = write_parquet(corpus / "data" / "train-00000-of-00001.parquet", synthetic_pairs(3), "magicbrush")
    before = source.read_bytes()
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "preset": "magicbrush"},
                                      "annotator": "pixel-diff", "workers": 0})
    run_batch(cfg, tmp_path / "run", progress=False)
    assert main(["export", "hf", str(tmp_path / "run"), str(corpus), "--overwrite"]) == 2
    assert "[out_not_empty]" in capsys.readouterr().err and source.read_bytes() == before
    assert sorted(p.name for p in (corpus / "data").iterdir()) == [source.name]
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "elsewhere")]) == 0


def test_an_export_under_the_corpus_folder_can_be_replaced(tmp_path, capsys):
    """An export into a folder under a parquet corpus (`sigma export hf RUN CORPUS/hf`) could be made once and then
    never replaced: b105bcc took every parquet file under the corpus folder for the corpus ('holds the corpus this
    run was made from') though the run's shards read only the corpus's own files; the corpus's files stay refused."""
    from sigma.io.corpora.synthetic import write_parquet

    corpus = tmp_path / "corpus"
    source = write_parquet(corpus / "mb.parquet", synthetic_pairs(3), "magicbrush")
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "preset": "magicbrush"},
                                      "annotator": "pixel-diff", "workers": 0})
    run_batch(cfg, tmp_path / "run", progress=False)
    assert main(["export", "hf", str(tmp_path / "run"), str(corpus / "hf")]) == 0
    capsys.readouterr()
    assert main(["export", "hf", str(tmp_path / "run"), str(corpus / "hf"), "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 3
    assert source.is_file()


MAPPED_READER = r'''
import hashlib, mmap, os, sys
import pyarrow as pa
import pyarrow.parquet as pq

path = sys.argv[1]
source = pa.memory_map(path)                    # as the corpus readers map a save_to_disk file
rows = pq.ParquetFile(source).metadata.num_rows
with open(path, "rb") as handle:
    view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    print(os.fstat(handle.fileno()).st_ino, flush=True)
sys.stdin.readline()                            # the parent writes the file again meanwhile
digest = hashlib.sha256(view).hexdigest()       # every page of the old mapping: SIGBUS past a truncated end
# no pyarrow pool (as sigma's readers, `handle_reader`): a pool thread still tearing a read down as the process exits
# can abort it (status -6), which this test would read as the mapping's SIGBUS
print(digest, pq.ParquetFile(source, pre_buffer=False).read(use_threads=False).num_rows, rows, flush=True)
'''


def read_mapped_through(path: Path, rewrite) -> tuple[int, int]:
    """Map `path` in another process, `rewrite()` it here, then read every page of the old mapping there (a SIGBUS
    kills that process, not pytest): the mapping must still hold the old file, whole, and `path` must name a new
    file (a write in place into a mapped file is what SIGBUSes a reader). (rows read again, rows at mapping)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", MAPPED_READER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        inode = int(child.stdout.readline() or -1)
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        rewrite()
        out, err = child.communicate("go\n", timeout=120)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, f"the reader of the old mapping died ({child.returncode}; -7 = SIGBUS): {err}"
    digest, rows_after, rows_before = out.split()
    assert digest == before
    assert path.stat().st_ino != inode, "written in place: the mapped file itself was rewritten"
    return int(rows_after), int(rows_before)


def test_a_file_mapped_by_a_reader_is_replaced_never_rewritten_in_place(tmp_path):
    """Readers memory-map arrow/parquet files (a save_to_disk folder, `pa.memory_map`); a file truncated and rewritten
    in place under such a mapping kills its reader with SIGBUS. Every arrow/parquet file SIGMA writes — an export's
    data/*.parquet (`sigma export hf --overwrite`) and a run's shard files (rerun by --resume) — is written to a
    temporary file beside it and renamed over the name: the mapped file is left whole for its reader."""
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(8, size=48))
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "set"), "shard_size": 4},
                                      "annotator": "pixel-diff", "workers": 0, "procs": 1})
    run = tmp_path / "run"
    assert run_batch(cfg, run, progress=False).done_now == 2
    out = tmp_path / "ds"
    export_hf(run, out)
    exported = out / "data" / "train-00000-of-00001.parquet"
    areas = sorted(r["area_fraction"] for r in manifest_rows(run).values())
    smaller = RowFilter(min_area=areas[len(areas) // 2])     # the new export is a smaller file: fewer rows
    assert read_mapped_through(exported, lambda: export_hf(run, out, smaller, overwrite=True)) == (8, 8)
    assert pq.read_metadata(exported).num_rows < 8

    shard = sorted((run / "shards").glob("*.parquet"))[0]
    status = run / "status" / f"{shard.name.rsplit('.', 2)[0]}.json"      # <key>.<run hash>.parquet

    def rerun_shard():
        status.unlink()                                       # its status lost: --resume writes the shard again
        assert run_batch(cfg, run, resume=True, progress=False).done_now == 1

    assert read_mapped_through(shard, rerun_shard) == (4, 4)


# a shard's temporary name as `sigma.tempfiles.temp_name` writes it (`.NAME.PID.RANDOM.tmp`): one the sweeps know
_SHARD_TEMP = re.compile(r"\.train-\d{5}(-of-\d{5})?\.parquet\.\d+\.[0-9a-f]{8}\.tmp")


def test_hf_shards_are_on_disk_before_the_card_that_describes_them(run, tmp_path):
    """`sigma export hf` renamed each parquet shard from the page cache (no fsync), never synced `data/` (made by the
    export, its own name unsynced too) nor OUT after the card's rename, while the card was fsynced: after a power cut
    the export said done, and its card could describe shards empty, cut short or missing. In a real export now every
    shard is written under `temp_name` and fsynced before its rename, `data/`'s name (in OUT) and then the shards'
    names (in `data/`) are synced before the card's rename, and OUT after it."""
    out, log, script = tmp_path / "new" / "hf", tmp_path / "events.json", tmp_path / "record.py"
    script.write_text(RECORD_SYNCS)
    proc = subprocess.run([sys.executable, str(script), str(log), "export", "hf", str(run), str(out),
                           "--max-shard-mb", "0.002"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    events = json.loads(log.read_text())
    data = out / "data"
    shards = {str(data / name) for name in os.listdir(data)}
    assert len(shards) == 8 and not [s for s in shards if Path(s).name.startswith(".")], shards
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] in shards]
    assert len(renames) == len(shards), events
    for at in renames:             # each shard under a name the sweeps know, its bytes on disk before its name
        assert _SHARD_TEMP.fullmatch(Path(events[at][1]).name), events[at]
        assert ["fsync", events[at][1]] in events[:at], events
    card = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(out / "README.md"))
    assert ["fsync", events[card][1]] in events[:card], events
    assert max(renames) < card, events
    assert ["fsync", str(out)] in events[:min(renames)], events             # data/'s own name in OUT
    assert ["fsync", str(data)] in events[max(renames) + 1:card], events    # the shards' names before the card
    assert ["fsync", str(out)] in events[card + 1:], events                 # the card's own name


def _hf_killed_at(run: Path, out: Path, containing: str, *flags: str, into: str = "") -> str:
    """A real `sigma export hf --overwrite` SIGKILLed at its first rename of a temporary file whose name holds
    `containing` (`into`: onto a file of that name); returns that file's name."""
    killer = (at_first_temp_rename(containing=containing, into=into)
              + "from sigma.cli import main\nmain(sys.argv[1:])\n")
    killed = subprocess.run([sys.executable, "-c", killer, "export", "hf", str(run), str(out), "--overwrite", *flags],
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, (killed.stdout, killed.stderr)
    return killed.stdout.strip()


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def test_hf_killed_while_staging_its_shards_leaves_the_previous_export_whole(run, tmp_path, capsys):
    """`sigma export hf --overwrite` deleted the previous export's shards, then renamed its own into place one by one:
    killed (SIGKILL, the OOM killer) between, OUT held some new shards or none, beside the old card. Now the new
    shards are staged under `temp_name`s and committed together (`replace_together`): killed while staging, the
    previous export stands byte for byte, only names the sweeps know are left, and the next export removes them."""
    out = tmp_path / "hf"
    assert main(["export", "hf", str(run), str(out)]) == 0
    before = _shards(out)
    left = _hf_killed_at(run, out, ".train-", "--max-shard-mb", "0.002")
    assert _SHARD_TEMP.fullmatch(left), left
    assert _shards(out) == before
    hidden = [p.name for p in (out / "data").iterdir() if p.name.startswith(".")]
    assert hidden and all(_SHARD_TEMP.fullmatch(name) for name in hidden), hidden
    capsys.readouterr()
    assert main(["export", "hf", str(run), str(out), "--overwrite"]) == 0
    assert _shards(out) == before and not list((out / "data").glob(".*"))


def _card(out: Path) -> bytes:
    return (out / "README.md").read_bytes()


def _card_name(card: bytes) -> str:
    return yaml.safe_load(card.decode().split("---")[1])["pretty_name"]


def _journal_names_the_card(out: Path) -> None:
    """The killed export's set is committed in OUT, its card the last file: its journal (`.README.md.PID.RANDOM
    .pending`) names the staged card and the shards in `data/`, and no journal is left in `data/`."""
    journals = list(out.glob(".README.md.*.pending"))
    assert len(journals) == 1 and not list((out / "data").glob(".*.pending")), sorted(os.listdir(out))
    plan = json.loads(journals[0].read_bytes())
    assert plan["files"][-1][1] == "README.md" and (out / plan["files"][-1][0]).is_file(), plan
    assert _card_name((out / plan["files"][-1][0]).read_bytes()) == "NEW", plan
    assert [target for _, target in plan["files"][:-1]] == [f"data/train-{i:05d}-of-00008.parquet" for i in range(8)]


def test_hf_killed_after_its_journal_is_finished_by_the_next_export(run, tmp_path, capsys):
    """Killed after its shards and card were committed (the journal written) while they were moved into place, an
    export leaves a set the next export of OUT finishes before it counts the shards there: OUT then holds the killed
    export whole — its shards and its card — so a plain export is refused (`out_not_empty`) and `--overwrite`
    replaces all of it. Counted before the set was finished, OUT looked empty (the previous shard removed, the new
    ones staged): the plain export ran, and its sweep removed the staged shards of a committed set from under its
    journal. And the card was no part of the set: written after it, the killed export's new shards were finished
    beside the earlier export's card (its name, its row count)."""
    out = tmp_path / "hf"
    assert main(["export", "hf", str(run), str(out), "--name", "OLD"]) == 0
    left = _hf_killed_at(run, out, "-00000-of-", "--max-shard-mb", "0.002", "--name", "NEW")
    assert re.fullmatch(r"\.train-00000-of-00008\.parquet\.\d+\.[0-9a-f]{8}\.tmp", left), left
    _journal_names_the_card(out)
    capsys.readouterr()
    assert main(["export", "hf", str(run), str(out)]) == 2 and "[out_not_empty]" in capsys.readouterr().err
    assert list(_shards(out)) == [f"train-{i:05d}-of-00008.parquet" for i in range(8)]
    assert _card_name(_card(out)) == "NEW"
    assert not list((out / "data").glob(".*")) and not list(out.glob(".*"))
    assert main(["export", "hf", str(run), str(out), "--overwrite"]) == 0
    assert list(_shards(out)) == ["train-00000-of-00001.parquet"] and not list((out / "data").glob(".*"))
    assert len(load(out, tmp_path)) == 8


def test_hf_killed_between_its_shards_and_its_card_is_finished_with_its_card(run, tmp_path, capsys):
    """The card was renamed after the shards' own set was in place: an export killed between (SIGKILL, the OOM
    killer) left the new shards beside the earlier export's card, which stated the earlier export's name, row count
    and filters — for good: the next export found a complete-looking dataset and finished nothing. Now the card is
    the last file of the shards' set: killed at its rename, OUT holds no card of another export (the earlier card
    went first, as the set's last file does), and `finish_replacements(OUT)` — what the next export's hold of OUT
    runs — puts the new card beside the new shards."""
    from sigma.tempfiles import finish_replacements

    out = tmp_path / "hf"
    assert main(["export", "hf", str(run), str(out), "--name", "OLD"]) == 0
    left = _hf_killed_at(run, out, "", "--max-shard-mb", "0.002", "--name", "NEW", into="README.md")
    assert re.fullmatch(r"\.README\.md\.\d+\.[0-9a-f]{8}\.tmp", left), left
    assert list(_shards(out)) == [f"train-{i:05d}-of-00008.parquet" for i in range(8)]
    assert not (out / "README.md").exists()       # the earlier card went first: never beside the new shards
    _journal_names_the_card(out)
    assert len(finish_replacements(out)) == 1
    assert _card_name(_card(out)) == "NEW" and not list(out.glob(".*")) and not list((out / "data").glob(".*"))
    card = yaml.safe_load(_card(out).decode().split("---")[1])
    assert card["dataset_info"]["splits"] == [{"name": "train", "num_examples": 8}]
    assert len(load(out, tmp_path)) == 8


def test_hf_killed_at_its_journal_leaves_the_previous_card_and_shards(run, tmp_path, capsys):
    """Killed at its commit point (the journal's rename; every shard and the new card staged and synced), an export
    leaves the earlier export byte for byte, its card too, and only hidden names the sweeps know, which the next
    export of OUT removes."""
    out = tmp_path / "hf"
    assert main(["export", "hf", str(run), str(out), "--name", "OLD"]) == 0
    before, card = _shards(out), _card(out)
    left = _hf_killed_at(run, out, ".README.md.", "--max-shard-mb", "0.002", "--name", "NEW")
    assert re.fullmatch(r"\.\.README\.md\.\d+\.[0-9a-f]{8}\.pending\.\d+\.[0-9a-f]{8}\.tmp", left), left
    assert _shards(out) == before and _card(out) == card
    assert not list(out.glob("*.pending")) and list(out.glob(".README.md.*.tmp"))
    capsys.readouterr()
    assert main(["export", "hf", str(run), str(out), "--name", "OLD", "--overwrite"]) == 0
    assert _shards(out) == before and _card(out) == card
    assert not list(out.glob(".*")) and not list((out / "data").glob(".*"))


def test_hf_card_is_committed_in_the_shards_set(run, tmp_path):
    """The recorded order of a real export: the card is staged (fsynced) and `data/` synced (the staged shards'
    names) before the journal `OUT/.README.md.PID.RANDOM.pending` is renamed into place (the commit point); every
    shard's move and then the card's follow it, `data/` synced before the card's rename, OUT after it. Before, the
    set's journal was in `data/` and named the shards alone, and the card was written after the set was in place."""
    out, log, script = tmp_path / "hf", tmp_path / "events.json", tmp_path / "record.py"
    script.write_text(RECORD_SYNCS)
    proc = subprocess.run([sys.executable, str(script), str(log), "export", "hf", str(run), str(out),
                           "--max-shard-mb", "0.002"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    events = json.loads(log.read_text())
    renames = [(i, Path(e[1]), Path(e[2])) for i, e in enumerate(events) if e[0] == "rename"]
    journal = [i for i, _, dst in renames if dst.parent == out and re.fullmatch(r"\.README\.md\..+\.pending", dst.name)]
    assert len(journal) == 1 and [i for i, _, dst in renames if dst.suffix == ".pending"] == journal, events
    at = journal[0]
    card = next(i for i, _, dst in renames if dst == out / "README.md")
    moves = [i for i, _, dst in renames if dst.parent == out / "data" and not dst.name.startswith(".")]
    assert len(moves) == 8 and at < min(moves) and max(moves) < card, events
    assert ["fsync", events[card][1]] in events[:at], events                  # the card staged before the commit
    assert ["fsync", str(out / "data")] in events[max(i for i, _, dst in renames if dst.name.startswith(".train"))
                                                  + 1:at], events          # the staged shards' names
    assert ["fsync", str(out / "data")] in events[max(moves) + 1:card], events
    assert ["fsync", str(out)] in events[card + 1:], events


def test_an_export_of_mostly_skipped_pairs_counts_them_like_the_other_exports(tmp_path, capsys):
    """`--mask footprint` of a run of mostly plain pairs: the HF export kept one dict per skipped pair (~250 bytes
    each) to its end, as COCO and IMDL-BenCo did before `Skipped`. Now the same report as theirs: `skipped` the first
    `Skipped.EXAMPLES`, `skipped_total` and `skipped_by_reason`; the CLI prints how many, the first 20, the counts."""
    from runrecords import assert_skipped_counted, grown_run

    rows = 300
    run = grown_run(tmp_path / "mostly_plain", rows, shards=3, side=16, images=True, composite_every=100)
    reason = "no footprint mask (not a composite)"
    info = export_hf(run, tmp_path / "hf", mask="footprint")
    assert info["rows"] == rows // 100
    capsys.readouterr()
    assert main(["export", "hf", str(run), str(tmp_path / "hf"), "--mask", "footprint", "--overwrite"]) == 0
    assert_skipped_counted(info, capsys.readouterr(), rows - rows // 100, reason, "corpus/q00000001", "corpus/q")
