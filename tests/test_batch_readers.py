"""Corpus readers on small real files of each kind: parquet with image structs, save_to_disk Arrow streams,
WebDataset tars, folders, JSONL/CSV manifests and the shared evaluation layout."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from heappeak import heap_peak

from sigma.errors import InputError, UnknownNameError
from sigma.io.corpora import detect_format, open_corpus
from sigma.io.corpora.synthetic import (
    synthetic_pairs,
    write_csv,
    write_folder,
    write_pairs_jsonl,
    write_parquet,
    write_saved_dataset,
    write_webdataset,
)

SHARED = Path(os.environ.get("SIGMA_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))


def read_all(corpus):
    shards = corpus.plan()
    return shards, [item for shard in shards for item in corpus.read(shard)]


def read_all_heap_peak(corpus):
    """`read_all(corpus)` in a fresh interpreter (tests/heappeak.py), and the heap's peak over it."""
    measured = heap_peak(read_all, corpus)
    return (*measured.value, measured.peak)


def test_parquet_magicbrush_by_row_group(tmp_path):
    path = write_parquet(tmp_path / "mb.parquet", synthetic_pairs(25), "magicbrush", row_group_size=5)
    assert pq.ParquetFile(path).num_row_groups == 5
    corpus = open_corpus(path, preset="magicbrush", shard_size=10)
    shards, items = read_all(corpus)
    # whole row groups per shard: 5+5, 5+5, 5
    assert [s.ref["row_groups"] for s in shards] == [[0, 2], [2, 4], [4, 5]]
    assert [s.num_items for s in shards] == [10, 10, 5]
    assert len(items) == 25 and all(i.error is None for i in items)
    assert items[0].pair_id == "p000000-1" and items[4].pair_id == "p000004-2"   # img_id-turn_index
    assert items[4].instruction == "remove the object number 4"
    assert items[0].original.startswith(b"\x89PNG") and items[0].mask.startswith(b"\x89PNG")
    # one shard reads only its own rows, with global row numbers in the source reference
    second = list(corpus.read(shards[1]))
    assert [i.index for i in second] == list(range(10)) and second[0].source == "mb.parquet:row=10"


@pytest.mark.parametrize("preset", ["instructpix2pix", "ultraedit", "anyedit", "omniedit"])
def test_parquet_presets(tmp_path, preset):
    path = write_parquet(tmp_path / f"{preset}.parquet", synthetic_pairs(4), preset, row_group_size=2)
    _, items = read_all(open_corpus(path, preset=preset, shard_size=2))
    assert len(items) == 4 and all(i.error is None for i in items)
    assert items[1].instruction == "add the object number 1"   # omniedit: first prompt of the list
    if preset == "anyedit":
        assert items[1].edit_type == "add"
    if preset == "ultraedit":
        assert items[0].mask is not None
    if preset == "omniedit":
        assert items[2].pair_id == "p000002"


def test_wrong_columns_lists_found_and_expected(tmp_path):
    path = write_parquet(tmp_path / "mb.parquet", synthetic_pairs(2), "magicbrush")
    with pytest.raises(InputError) as err:
        open_corpus(path, preset="instructpix2pix").plan()
    msg = err.value.message
    assert err.value.code == "bad_columns"
    assert "source_img" in msg and "target_img" in msg          # found
    assert "original=input_image" in msg and "edit_prompt" in msg  # expected
    # a column mapping fixes it
    corpus = open_corpus(path, preset="instructpix2pix",
                         columns={"original": "source_img", "edited": "target_img", "instruction": "instruction"})
    assert len(read_all(corpus)[1]) == 2
    with pytest.raises(UnknownNameError):
        open_corpus(path, preset="magicbrushh")


def test_saved_dataset_dict_layout(tmp_path):
    root = write_saved_dataset(tmp_path / "ds", synthetic_pairs(12), "instructpix2pix", batch_rows=4, split="train")
    assert detect_format(root) == "hf"
    corpus = open_corpus(root, preset="instructpix2pix", shard_size=5)
    shards, items = read_all(corpus)
    assert [s.num_items for s in shards] == [8, 4]         # whole record batches: 4+4, 4
    assert len(items) == 12 and items[5].subset == "train" and items[5].instruction == "add the object number 5"
    assert items[5].pair_id == "train/data-00000-of-00001.arrow:5"
    plain = write_saved_dataset(tmp_path / "plain", synthetic_pairs(3), "anyedit")
    _, items = read_all(open_corpus(plain, preset="anyedit"))
    assert [i.edit_type for i in items] == ["remove", "add", "replace"]


def test_webdataset_key_grouping_and_fields(tmp_path):
    write_webdataset(tmp_path / "wds", synthetic_pairs(7), per_tar=3)
    corpus = open_corpus(tmp_path / "wds")
    shards, items = read_all(corpus)
    assert corpus.format == "wds" and [s.num_items for s in shards] == [3, 3, 1]
    assert [i.pair_id for i in items] == [f"p{i:06d}" for i in range(7)]
    assert items[2].instruction == "replace the object number 2" and items[2].edit_type == "replace"
    # configurable field names: with edited mapped to a field that does not exist, every pair says why
    odd = open_corpus(tmp_path / "wds", columns={"edited": "tgt.jpg"})
    bad = next(iter(odd.read(odd.plan()[0])))
    assert bad.error[0] == "missing_image" and "tgt.jpg" in bad.error[1]


def test_webdataset_members_above_the_byte_limit_are_not_read(tmp_path):
    """A tar member was read whole into memory whatever its size: an 811 KB .tar.gz holding an 800 MB field
    took the run to 1.9 GB of memory (a larger one: the OOM killer). A field no role reads is skipped, and an
    image above io.limits.max_bytes is that pair's file_too_large, unread."""
    import io
    import tarfile

    from sigma.batch import BatchConfig
    from sigma.batch.runner import corpus_from_config

    pairs = list(synthetic_pairs(2))
    big = 48 << 20
    tar = tmp_path / "bomb.tar.gz"
    with tarfile.open(tar, "w:gz", compresslevel=1) as tf:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        add("a.original.png", pairs[0]["original"])
        add("a.edited.png", bytes(big))                 # above the limit below
        add("a.extra.bin", bytes(big))                  # a field no role reads
        add("b.original.png", pairs[1]["original"])
        add("b.edited.png", pairs[1]["edited"])
    cfg = BatchConfig.model_validate({"input": {"path": str(tar)}, "annotator": "pixel-diff",
                                      "io": {"limits": {"max_bytes": 1 << 20}}})
    _, items, peak = read_all_heap_peak(corpus_from_config(cfg))
    assert [i.pair_id for i in items] == ["a", "b"]
    assert items[0].error[0] == "file_too_large" and "edited.png" in items[0].error[1] and items[0].edited is None
    assert items[1].error is None and items[1].edited == pairs[1]["edited"]
    assert peak < 16 << 20, peak     # ~8.0 MB (gzip skipping the 48 MB members); read whole: 100+ MB


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
@pytest.mark.parametrize("shard_size", [1, 3])
def test_csv_records_are_the_csv_modules_records(tmp_path, suffix, shard_size):
    """Records were split by counting quotes, so an unquoted `5" wider` (text to the csv module) opened a
    "quoted field" that swallowed the following lines: 4 records read as 2, three pairs lost, no error."""
    import csv

    sep = "\t" if suffix == ".tsv" else ","
    texts = ['make the tv 5" wider', "remove the cat", '"two\r\nlines, one ""quoted"""', '"a"b then c',
             'the 12" pizza and 3" cookie', "add a dog"]
    lines = [sep.join(["id", "original", "edited", "instruction"])]
    lines += [sep.join([f"p{i}", "o.png", "e.png", t]) for i, t in enumerate(texts)]
    manifest = tmp_path / f"m{suffix}"
    manifest.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        expected = [row for row in csv.reader(handle, delimiter=sep)][1:]
    assert len(expected) == len(texts)
    shards, items = read_all(open_corpus(manifest, shard_size=shard_size))
    assert sum(s.num_items for s in shards) == len(texts)
    assert [(i.pair_id, i.instruction) for i in items] == [(row[0], row[3]) for row in expected]


def test_a_csv_cell_over_the_csv_modules_field_limit_is_that_records_error(tmp_path):
    """A cell over 128 KB raised csv.Error (not a ValueError): the whole shard failed, at every --resume; in
    the header line it was a traceback."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,original,edited,instruction\na,o.png,e.png,ok\nb,o.png,e.png," + "y" * 200_000 +
                        "\nc,o.png,e.png,fine\n")
    _, items = read_all(open_corpus(manifest))
    assert [i.pair_id for i in items] == ["a", "m.csv:3", "c"]
    assert items[0].error is None and items[2].error is None and items[1].error[0] == "bad_record"
    manifest.write_text("id,original,edited," + "z" * 200_000 + "\na,o.png,e.png,ok\n")
    with pytest.raises(InputError) as err:
        open_corpus(manifest).plan()
    assert err.value.code == "bad_manifest"


def test_format_csv_reads_a_csv_manifest_whatever_its_name(tmp_path):
    """`--format csv` on manifest.txt parsed it as JSONL: the run "finished" with every record a bad_record."""
    manifest = write_csv(tmp_path / "c", synthetic_pairs(3))
    renamed = manifest.with_name("manifest.txt")
    manifest.rename(renamed)
    _, items = read_all(open_corpus(renamed, format="csv"))
    assert [(i.pair_id, i.error) for i in items] == [(f"p{i:06d}", None) for i in range(3)]
    assert items[0].original_path.endswith("p000000_original.png")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_record_longer_than_the_limit_is_a_bad_record_never_held(tmp_path, suffix):
    """A 600 MB line in a manifest was read whole (7.3 GB of memory at planning, in the API process for a
    POST /v1/batches) and became a 600 MB pair id in the shard file; now it is that line's bad_record."""
    from sigma.io.corpora.manifest import MAX_RECORD_BYTES

    huge = "x" * (8 * MAX_RECORD_BYTES)
    if suffix == ".jsonl":
        lines = [json.dumps({"id": "a", "original": "o.png", "edited": "e.png"}), json.dumps({"id": huge}),
                 json.dumps({"id": "b", "original": "o.png", "edited": "e.png"})]
    else:
        lines = ["id,original,edited", "a,o.png,e.png", f'{huge},o.png,"e.png', 'still quoted', f'{huge}"',
                 "b,o.png,e.png"]
    manifest = tmp_path / f"m{suffix}"
    manifest.write_text("\n".join(lines) + "\n")
    shards, items, peak = read_all_heap_peak(open_corpus(manifest, shard_size=2))
    assert [s.num_items for s in shards] == [2, 1]
    assert items[0].pair_id == "a" and items[2].pair_id == "b" and items[2].error is None
    assert items[1].error[0] == "bad_record" and "longer than" in items[1].error[1] and len(items[1].pair_id) < 100
    assert peak < 4 * MAX_RECORD_BYTES, peak


@pytest.mark.parametrize("two_folders", [False, True])
def test_a_folder_pair_with_two_files_for_one_image_is_an_error_not_a_coin_toss(tmp_path, two_folders):
    """p_original.png and p_original.jpg side by side: the file the disk listed last was annotated, so the
    same corpus copied to another disk (another listing order) gave another mask without a word."""
    root = write_folder(tmp_path / "f", synthetic_pairs(3), two_folders=two_folders)
    other = (root / ("original/p000000.png" if two_folders else "p000000_original.png")).read_bytes()
    (root / ("original/p000001.jpg" if two_folders else "p000001_original.jpg")).write_bytes(other)
    (root / ("mask/p000002.jpg" if two_folders else "p000002_mask.jpg")).write_bytes(other)
    _, items = read_all(open_corpus(root))
    assert [i.pair_id for i in items] == ["p000000", "p000001", "p000002"]
    assert items[0].error is None and items[0].mask_path is not None
    assert items[1].error[0] == "ambiguous_pair" and "p000001" in items[1].error[1] and ".jpg" in items[1].error[1]
    assert items[2].error is None and items[2].mask_path is None       # which ground truth? none


def test_folders_jsonl_and_csv(tmp_path):
    flat = write_folder(tmp_path / "flat", synthetic_pairs(4))
    (flat / "p000009_original.png").write_bytes((flat / "p000000_original.png").read_bytes())  # edited missing
    _, items = read_all(open_corpus(flat))
    assert [i.pair_id for i in items] == ["p000000", "p000001", "p000002", "p000003", "p000009"]
    assert items[1].instruction == "add the object number 1" and items[1].mask_path.endswith("p000001_mask.png")
    assert items[4].error[0] == "file_not_found"
    two = write_folder(tmp_path / "two", synthetic_pairs(3), two_folders=True)
    _, items = read_all(open_corpus(two))
    assert len(items) == 3 and items[2].edited_path.endswith("edited/p000002.png")

    write_pairs_jsonl(tmp_path / "sets" / "a", synthetic_pairs(3))
    write_pairs_jsonl(tmp_path / "sets" / "b", synthetic_pairs(2, seed=1))
    with open(tmp_path / "sets" / "b" / "pairs.jsonl", "a") as handle:
        handle.write("{not json\n")
    corpus = open_corpus(tmp_path / "sets", shard_size=2)
    shards, items = read_all(corpus)
    assert corpus.format == "jsonl" and [s.num_items for s in shards] == [2, 1, 2, 1]
    assert items[0].pair_id == "a/p000000" and items[3].subset == "b"
    assert items[-1].error[0] == "bad_record"

    manifest = write_csv(tmp_path / "csv", synthetic_pairs(3))
    with open(manifest, "a") as handle:
        handle.write('x1,img/p000000_original.png,img/p000000_edited.png,"",\n')
        handle.write('x2,img/p000000_original.png,img/p000000_edited.png,"two\nlines",\n')
    _, items = read_all(open_corpus(manifest, shard_size=2))
    assert [i.pair_id for i in items] == ["p000000", "p000001", "p000002", "x1", "x2"]
    assert items[3].instruction is None and items[4].instruction == "two\nlines"
    assert items[0].original_path == str(tmp_path / "csv" / "img" / "p000000_original.png")


def test_csv_wrong_header_and_unknown_input(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("src,dst\na.png,b.png\n")
    with pytest.raises(InputError) as err:
        open_corpus(bad).plan()
    assert err.value.code == "bad_columns" and "src, dst" in err.value.message
    with pytest.raises(InputError) as err:
        open_corpus(tmp_path / "nope")
    assert err.value.code == "file_not_found"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        open_corpus(tmp_path / "empty")
    assert err.value.code == "unknown_format"


def test_shared_eval_layout():
    data = SHARED / "data" / "eval"
    if not (data / "inpaint_anything" / "pairs.jsonl").is_file():
        pytest.skip("../shared/data/eval not present")
    corpus = open_corpus(data, shard_size=1000)
    shards, items = read_all(corpus)
    n = sum(sum(1 for line in p.read_text().splitlines() if line.strip()) for p in data.glob("*/pairs.jsonl"))
    assert len(items) == n and len(shards) == len(list(data.glob("*/pairs.jsonl")))
    assert all(i.error is None and Path(i.original_path).is_file() and Path(i.mask_path).is_file() for i in items)
    rec = json.loads((data / "inpaint_anything" / "pairs.jsonl").read_text().splitlines()[0])
    assert any(i.pair_id == f"inpaint_anything/{rec['id']}" for i in items)


CAFE_NFC, CAFE_NFD = "caf\u00e9", "cafe\u0301"      # one name, two spellings: macOS file names are NFD


@pytest.mark.parametrize("two_folders", [False, True])
def test_a_folder_pair_named_in_nfd_meets_its_nfc_instruction_and_other_half(tmp_path, two_folders):
    """A corpus made on macOS keeps `café` in its file names decomposed (NFD) while the instructions file a script
    wrote holds it composed (NFC); the same happens when only one of original/ and edited/ was copied through such a
    disk. The folder reader matched the spellings byte for byte: the pair was annotated without its instruction, no
    word said (sigma-lite then has no prior), and a pair whose two images were spelled differently became two
    pairs, each "no edited / no original image found". Now ids are matched as Unicode NFC; the id keeps the file's
    own spelling (the original's), and two different names stay two pairs."""
    from sigma.batch import BatchConfig, run_batch

    root = tmp_path / "f"
    root.mkdir()
    pairs = list(synthetic_pairs(2))
    for pair, (stem_o, stem_e) in zip(pairs, [(CAFE_NFD, CAFE_NFC if two_folders else CAFE_NFD), ("cafe", "cafe")]):
        for role, stem in (("original", stem_o), ("edited", stem_e)):
            path = root / role / f"{stem}.png" if two_folders else root / f"{stem}_{role}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(pair[role])
    (root / "instructions.jsonl").write_text(
        json.dumps({"id": CAFE_NFC, "instruction": "remove the cup"}) + "\n"
        + json.dumps({"id": "cafe", "instruction": "add a cup"}) + "\n")
    out = tmp_path / "run"
    cfg = BatchConfig.model_validate({"input": {"path": str(root)}, "annotator": "pixel-diff", "workers": 0})
    run_batch(cfg, out, progress=False)
    rows = [r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert [(r["pair_id"], r["status"], r["instruction"]) for r in rows] == [
        ("cafe", "ok", "add a cup"), (CAFE_NFD, "ok", "remove the cup")]


def test_a_folder_with_both_spellings_of_one_name_keeps_two_pairs(tmp_path):
    """Both spellings of `café` on a disk that keeps them apart are two pairs, as before the NFC matching: each
    has its own original and edited file, and its own instruction."""
    pairs = list(synthetic_pairs(2))
    for pair, stem in zip(pairs, (CAFE_NFC, CAFE_NFD)):
        for role in ("original", "edited"):
            (tmp_path / f"{stem}_{role}.png").write_bytes(pair[role])
    (tmp_path / "instructions.jsonl").write_text(
        json.dumps({"id": CAFE_NFC, "instruction": "one"}) + "\n" + json.dumps({"id": CAFE_NFD, "instruction": "two"}))
    _, items = read_all(open_corpus(tmp_path))
    assert sorted((i.pair_id, i.instruction, i.error) for i in items) == [
        (CAFE_NFD, "two", None), (CAFE_NFC, "one", None)]
    assert {Path(i.edited_path).name for i in items} == {f"{CAFE_NFC}_edited.png", f"{CAFE_NFD}_edited.png"}


@pytest.mark.parametrize("two_folders", [False, True])
def test_a_folder_pair_in_a_format_sigma_does_not_read_is_a_row_that_says_so(tmp_path, two_folders):
    """A GIF or HEIC image in a folder corpus was skipped by the listing: a pair with one such half was reported
    `file_not_found` ("no edited image found") beside the very file, and a pair with both halves in it had no row
    at all, its absence unsaid. Now it is a row with `unsupported_format` naming the file; a readable file of the
    same image still wins over it, and files that are not images (README.txt) are still no pairs."""
    from sigma.batch import BatchConfig, run_batch

    root = tmp_path / "f"
    root.mkdir()
    pairs = list(synthetic_pairs(3))

    def put(stem: str, role: str, ext: str, data: bytes) -> None:
        path = root / role / f"{stem}{ext}" if two_folders else root / f"{stem}_{role}{ext}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)

    put("a", "original", ".png", pairs[0]["original"])
    put("a", "edited", ".gif", b"GIF89a" + bytes(20))         # one half unread
    put("b", "original", ".heic", bytes(30))                   # both halves unread
    put("b", "edited", ".heic", bytes(30))
    put("c", "original", ".png", pairs[2]["original"])          # readable wins over a stray GIF of one image
    put("c", "edited", ".png", pairs[2]["edited"])
    put("c", "edited", ".gif", b"GIF89a" + bytes(20))
    put("d", "original", ".txt", b"notes")                      # not an image: no pair
    out = tmp_path / "run"
    cfg = BatchConfig.model_validate({"input": {"path": str(root)}, "annotator": "pixel-diff", "workers": 0})
    run_batch(cfg, out, progress=False)
    rows = {r["pair_id"]: r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    assert sorted(rows) == ["a", "b", "c"]
    assert rows["c"]["status"] == "ok"
    for pair_id, names in (("a", ["a_edited.gif", "a.gif"]), ("b", ["b_original.heic", "b.heic"])):
        assert rows[pair_id]["status"] == "error"
        assert rows[pair_id]["error_code"] == "unsupported_format", rows[pair_id]
        assert any(n in rows[pair_id]["error"] for n in names), rows[pair_id]["error"]


def test_a_folder_pair_whose_name_holds_a_line_break_is_a_pair(tmp_path):
    """`new\\nline_original.png` (a name Linux allows): the id pattern's `.` stopped at the newline, so the pair was
    no pair — its row missing from the run, unsaid, and a folder of only such pairs was no corpus at all — while
    `$` matched before a trailing newline, so `x_original\\n.png` was taken for x's original (x then ambiguous)."""
    pairs = list(synthetic_pairs(2))
    for stem, pair in zip(("new\nline", "x"), pairs):
        for role in ("original", "edited"):
            (tmp_path / f"{stem}_{role}.png").write_bytes(pair[role])
        if stem != "x":
            assert detect_format(tmp_path) == "folder"
    (tmp_path / "x_original\n.png").write_bytes(pairs[1]["original"])
    _, items = read_all(open_corpus(tmp_path))
    assert [(i.pair_id, i.error) for i in items] == [("new\nline", None), ("x", None)]
    assert Path(items[0].original_path).name == "new\nline_original.png"
