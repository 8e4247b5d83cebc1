"""Exports of large runs in memory that does not grow with the run (docs/batch.md, "Exports of large runs").

`sigma export coco` held every image and annotation (three RLE masks each) and then the whole JSON as one string:
~8 MB per 1,000 pairs, 8 GB for a million. The next `sigma export imdl-benco` into a folder read the previous
export's JSON whole (its text and every entry) to learn its file names. Memory is measured with tracemalloc (the
Python heap: what those held) on a run built as the batch runner writes it (`runrecords.grown_run`): a peak in a
fresh interpreter (`heappeak.heap_peak`: in this process it depended on what earlier tests had grown), what is held
once an export returned in this process (blocks under 1 MiB).
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from heappeak import heap_peak
from runrecords import assert_skipped_counted, grown_run

from sigma.cli import main

ROWS = 20_000


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> Path:
    return grown_run(tmp_path_factory.mktemp("big"), ROWS, shards=100, side=128)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    return grown_run(tmp_path_factory.mktemp("small"), 40, shards=2, side=128)


def _peak(argv: list[str], warm: list[str]) -> tuple[int, str]:
    """The Python heap's peak (bytes) over one CLI command, which must succeed, and its stdout. Measured in a fresh
    interpreter (`heappeak.heap_peak`) after the command `warm` (the same export of a tiny run, untraced): what the
    libraries it imports take (~40 MB) is not the export's."""
    measured = heap_peak(main, argv, setup=functools.partial(main, warm))
    assert measured.value == 0, measured.stderr[-2000:]
    return measured.peak, measured.stdout


def test_a_coco_export_streams_its_json_whatever_the_order(big_run, small_run, tmp_path):
    """Peak heap under half the JSON's size, in corpus order and sorted by confidence (which needs every row: only
    its sort key is held). Before: ~7x the JSON's size (every object, then the one string); now ~0.3x, most of it the
    file names taken (`UniqueNames`, which no two pairs may share)."""
    for sort in ("corpus", "confidence"):
        out = tmp_path / f"{sort}.json"
        peak, stdout = _peak(["export", "coco", str(big_run), "--out", str(out), "--sort", sort],
                             ["export", "coco", str(small_run), "--out", str(tmp_path / f"warm-{sort}.json"), "--sort",
                              sort])
        size = out.stat().st_size
        assert size > 20 * 2 ** 20
        assert peak < size / 2, f"{sort}: peak heap {peak / 2 ** 20:.1f} MB for a {size / 2 ** 20:.1f} MB JSON"
        coco = json.loads(out.read_text())
        images, annotations = coco["images"], coco["annotations"]
        assert [i["id"] for i in images] == list(range(1, ROWS + 1))
        assert [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
        assert len(annotations) == ROWS - ROWS // 16             # every 16th mask is empty: no annotation
        by_id = {i["id"]: i for i in images}
        assert all(by_id[a["image_id"]]["pair_id"] for a in annotations)
        assert [a["image_id"] for a in annotations] == sorted(a["image_id"] for a in annotations)
        if sort == "confidence":
            scores = [a["score"] for a in annotations]
            assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
        else:
            assert [i["pair_id"] for i in images] == [f"q{k:08d}" for k in range(ROWS)]
        info = json.loads(stdout.splitlines()[0])
        assert (info["images"], info["annotations"]) == (ROWS, len(annotations))


def test_a_coco_export_keeps_its_filters(big_run, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["export", "coco", str(big_run), "--out", str(out), "--min-confidence", "0.99", "--sort",
                 "confidence-asc", "--min-area", "0.0001"]) == 0
    coco = json.loads(out.read_text())
    scores = [a["score"] for a in coco["annotations"]]
    assert len(coco["images"]) == len(scores) and 0 < len(scores) < ROWS // 50
    assert min(scores) >= 0.99 and scores == sorted(scores)


_CAPPED = r"""
import resource, signal, sys
from sigma.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)           # a write past the limit fails (EFBIG) instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""


def test_a_coco_export_that_fails_mid_write_leaves_no_part_of_its_json(big_run, tmp_path):
    """The JSON is written as it is read now: a write that fails part way (here: the file size limit, one byte
    short of the whole JSON, as a full disk would) must leave the earlier JSON whole and no temporary file."""
    out = tmp_path / "c.json"
    assert main(["export", "coco", str(big_run), "--out", str(out), "--max-confidence", "0.5"]) == 0
    earlier = out.read_bytes()
    whole = tmp_path / "whole.json"
    assert main(["export", "coco", str(big_run), "--out", str(whole)]) == 0
    size = whole.stat().st_size
    for at in (size - 1, size // 2):     # while writing the JSON; while spooling its objects
        proc = subprocess.run([sys.executable, "-c", _CAPPED, str(at), "export", "coco", str(big_run), "--out",
                               str(out)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "sigma: error [os_error]" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert out.read_bytes() == earlier, at
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "whole.json"]


def test_the_next_imdl_benco_export_reads_the_earlier_json_for_its_names_alone(tmp_path):
    """The earlier export's JSON (here 64 MB: long paths, short names) was read whole to learn the Tp/ names it
    lists before an --overwrite; now only the names are held."""
    from sigma.batch import BatchConfig, run_batch
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "corpus", synthetic_pairs(2))
    run = tmp_path / "run"
    run_batch(BatchConfig.model_validate({"input": {"path": str(tmp_path / "corpus")}, "annotator": "pixel-diff",
                                          "workers": 0}), run, progress=False)
    out = tmp_path / "benco"
    (out / "Tp").mkdir(parents=True)
    (out / "Tp" / "x000001.png").write_bytes(b"an earlier export's image")
    deep = "/data/" + "d" * 4000
    with open(out / "imdl_benco.json", "w") as handle:
        handle.write("[\n")
        handle.write(",\n".join(json.dumps([f"{deep}/Tp/x{i:06d}.png", f"{deep}/Gt/x{i:06d}.png"])
                                for i in range(8000)))
        handle.write("\n]")
    assert (out / "imdl_benco.json").stat().st_size > 64 * 10 ** 6
    peak, _ = _peak(["export", "imdl-benco", str(run), "--out", str(out), "--overwrite"],
                    ["export", "imdl-benco", str(run), "--out", str(tmp_path / "warm")])
    assert peak < 16 * 2 ** 20, f"peak heap {peak / 2 ** 20:.1f} MB"
    assert len(json.loads((out / "imdl_benco.json").read_text())) == 2
    assert not (out / "Tp" / "x000001.png").exists()


_INTERNED: list[str] = []


def _grow_interned() -> None:
    """Run untraced before an export measured against another: the table of interned strings made large first.
    pathlib interns each path part (every PNG's name), and the table's reallocation (MBs at once) fell in one export's
    peak and not in another's, hiding what is measured. Also silences pycocotools' warning, once a pair."""
    import sys
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    _INTERNED.extend(sys.intern(f"interned-{k}") for k in range(400_000))


@pytest.mark.timeout(600)
def test_an_imdl_benco_export_holds_a_few_dozen_bytes_per_pair_not_its_list(tmp_path):
    """The export held a dict per kept pair (two absolute paths, its confidence) until its end, then the whole list
    as one string and the sorted names for its journal beside it: ~1 KB a pair at its peak (1 GB for a million). Now
    each pair's file name, its negative flag and its sort key (~40 bytes), plus the names taken (`UniqueNames`, ~110
    bytes), and the list is written from them piece by piece, byte for byte as before. Measured as the heap's growth
    per pair between the exports of two runs of 1,000 and 3,000 pairs in shards of 100 (what one shard's read holds
    is the same in both), `--sort confidence`, which needs every pair before the first is written. Each export runs
    in a fresh interpreter (`heappeak.heap_peak`), the table of interned strings grown first (`_grow_interned`)."""
    from sigma.text import dumps_finite

    peaks, kept = {}, {}
    for rows in (1000, 3000):
        run = grown_run(tmp_path / f"r{rows}", rows, shards=rows // 100, side=128, images=True)
        out = tmp_path / f"out{rows}"
        measured = heap_peak(main, ["export", "imdl-benco", str(run), "--out", str(out), "--sort", "confidence"],
                             setup=_grow_interned)
        assert measured.value == 0, measured.stderr[-2000:]
        peaks[rows] = measured.peak
        kept[rows] = json.loads(measured.stdout.splitlines()[0])["pairs"]
        listing = (out / "imdl_benco.json").read_bytes()
        entries = json.loads(listing)
        assert listing == dumps_finite(entries, indent=1).encode()      # laid out as the whole list was
        assert len(entries) == kept[rows] == rows == len(list((out / "Tp").iterdir()))
        assert all(tp == f"{out}/Tp/{Path(tp).name}" and gt in ("Negative", f"{out}/Gt/{Path(tp).name}")
                   for tp, gt in entries)
        assert any(gt == "Negative" for _, gt in entries)            # every 16th mask is empty
    per_pair = (peaks[3000] - peaks[1000]) / 2000
    assert per_pair < 300, f"{per_pair:.0f} bytes of heap per kept pair"


def test_a_listing_is_read_as_json_reads_it(tmp_path):
    """The streamed read of a listing (`_array_items`) gives what json.loads gives, or refuses what it refuses,
    whatever the chunk boundaries cut (a number's digits, an escape, white space)."""
    from sigma.export.imdl_benco import _array_items

    texts = ['[]', ' [ ] ', '[1]', '[12345, 678]', '[[ "a/b.png", "Negative" ], ["c", "d"]]\n', '[1.5e3,-2.25E-1,0]',
             json.dumps([["x" * 50, "y"]] * 20, indent=1), '["\\u00e9\\"", "\\ud83d\\ude00"]', '[true, null, -1.5e3]',
             '[1,]', '[,1]', '[1 2]', '[1] x', '{"a": 1}', '', '[', '[1', '["abc', '"x"', '[[1]]]', '[1,,2]', '[1x]']
    path = tmp_path / "x.json"
    for text in texts:
        path.write_text(text)
        try:
            want = json.loads(text)
            want = want if isinstance(want, list) else "refused"
        except ValueError:
            want = "refused"
        for chunk in (1, 2, 3, 7, 1 << 20):
            try:
                got = list(_array_items(path, chunk))
            except ValueError:
                got = "refused"
            assert got == want, (text, chunk)


def test_a_footprint_export_of_mostly_plain_pairs_counts_its_skipped_pairs(tmp_path, capsys):
    """`--mask footprint` skips every pair that is not a composite. The export held one dict per skipped pair until
    its end (~250 bytes each: ~250 MB at a million) to print 20 of them; now a count per reason and the first
    `Skipped.EXAMPLES`. What the CLI prints is as before: `skipped` is how many, then the first 20 by name."""
    from sigma.export.coco import export_coco

    rows = 20_000
    run = grown_run(tmp_path / "mostly_plain", rows, shards=100, side=16, composite_every=100)
    capsys.readouterr()
    out = tmp_path / "c.json"
    tracemalloc.start()
    try:
        info = export_coco(run, out, mask="footprint")
        # blocks under 1 MiB: the interpreter's interned-strings table, grown now and then (7.5 MB once it is
        # large), is no state the export keeps (test_export_coco_images._small_blocks)
        held = sum(trace.size for trace in tracemalloc.take_snapshot().traces if trace.size < 1 << 20)
    finally:
        tracemalloc.stop()
    assert held < 1 << 20, f"{held / 2 ** 20:.1f} MB held once the export returned"
    reason = "no footprint mask (not a composite)"
    assert info["images"] == rows // 100 == len(json.loads(out.read_text())["images"])
    assert main(["export", "coco", str(run), "--out", str(out), "--mask", "footprint"]) == 0
    assert_skipped_counted(info, capsys.readouterr(), rows - rows // 100, reason, "q00000001", "q")


def test_skipped_counts_every_reason_up_to_a_bound():
    from sigma.export.select import Skipped, nothing_to_export

    skipped = Skipped()
    assert "skipped" not in nothing_to_export(skipped).message
    for k in range(Skipped.REASONS + 50):
        skipped.add(f"p{k}", f"reason {k}")
        skipped.add(f"p{k}b", f"reason {k}")
    assert len(skipped) == skipped.total == 2 * (Skipped.REASONS + 50)
    assert len(skipped.by_reason) == Skipped.REASONS + 1 and skipped.by_reason[Skipped.OTHER] == 100
    assert sum(skipped.by_reason.values()) == len(skipped) and len(skipped.examples) == Skipped.EXAMPLES
    assert "300 pair(s) passed the filters but were skipped (e.g. p0: reason 0)" in nothing_to_export(skipped).message


def test_a_review_page_reads_the_run_a_shard_at_a_time(big_run, small_run, tmp_path):
    """`sigma report` held every row of the run (its mask's RLE, its texts) to sort them and score the sets: ~4 KB a
    row, a 774 MB heap for 200k rows. Now the rows stream shard by shard: the gallery's `--limit` rows are kept
    (a heap), the bad pairs counted (the first 500 kept), and each row's set metrics held as 8 numbers. Measured at
    20k rows: 80 MB before, ~11 MB now; the bound is 1 KB a row, and the page is the same."""
    out = tmp_path / "report.html"
    peak, stdout = _peak(["report", str(big_run), "--out", str(out)],
                         ["report", str(small_run), "--out", str(tmp_path / "warm.html")])
    assert peak < ROWS * 1024, f"peak heap {peak / 2 ** 20:.1f} MB for {ROWS} rows"
    info = json.loads(stdout.splitlines()[-1])
    assert info["pairs_ok"] == ROWS and info["items"] == 300 and info["metric_sets"] >= 1
