"""Exports (IMDL-BenCo folders + JSON list, COCO JSON with RLE), export-time filters, and the review page
(self-contained HTML, checked in headless Chromium when it is installed)."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from killers import RECORD_SYNCS, at_first_temp_rename
from PIL import Image
from runrecords import rehash_shards

from sigma.batch import BatchConfig, run_batch
from sigma.cli import main
from sigma.export.select import RowFilter, load_rows
from sigma.io.corpora.synthetic import synthetic_pairs, write_folder, write_pairs_jsonl, write_parquet


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Two sets of synthetic pairs with ground truth, one identical pair (empty mask) and one bad pair."""
    root = tmp_path_factory.mktemp("corpus")
    write_pairs_jsonl(root / "alpha", synthetic_pairs(6))
    write_pairs_jsonl(root / "beta", synthetic_pairs(4, seed=3))
    with open(root / "beta" / "pairs.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "same", "original": "p000000_original.png", "edited": "p000000_original.png",
                                 "mask": "p000000_mask.png", "instruction": "nothing"}) + "\n")
        handle.write(json.dumps({"id": "gone", "original": "gone.png", "edited": "p000000_edited.png"}) + "\n")
    out = root.parent / "run"
    cfg = BatchConfig.model_validate({"input": {"path": str(root), "shard_size": 4}, "annotator": "pixel-diff",
                                      "workers": 0})
    summary = run_batch(cfg, out, progress=False)
    assert summary.status["ok"] == 11 and summary.status["errors"] == 1
    return out


def test_imdl_benco_export(run_dir, tmp_path, capsys):
    out = tmp_path / "benco"
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[0])
    assert info["pairs"] == 11 and info["negatives"] == 1 and info["positives"] == 10
    entries = json.loads((out / "imdl_benco.json").read_text())
    assert len(entries) == 11 and all(Path(tp).is_file() for tp, _ in entries)
    negative = [e for e in entries if e[1] == "Negative"]
    assert len(negative) == 1 and negative[0][0].endswith("beta_same.png")
    tp, gt = next(e for e in entries if e[0].endswith("alpha_p000003.png"))
    assert Path(tp).is_absolute() and Path(gt).parent.name == "Gt"
    tp_img, gt_img = np.asarray(Image.open(tp)), np.asarray(Image.open(gt))
    assert tp_img.shape == (64, 64, 3) and gt_img.shape == (64, 64) and set(np.unique(gt_img)) <= {0, 255}
    corpus = Path(json.loads((run_dir / "run.json").read_text())["config"]["input"]["path"])
    src = np.asarray(Image.open(corpus / "alpha" / "p000003_edited.png").convert("RGB"))
    assert np.array_equal(tp_img, src)                      # Tp is the edited image, pixel for pixel
    # Tp/ and Gt/ stay aligned by name for IMDL-BenCo's ManiDataset (negatives get an all-black Gt)
    assert sorted(p.name for p in (out / "Tp").iterdir()) == sorted(p.name for p in (out / "Gt").iterdir())
    # area filter: a max area below every real edit keeps only the empty mask
    small = tmp_path / "small"
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(small), "--max-area", "0.001",
                 "--relative"]) == 0
    assert json.loads((small / "imdl_benco.json").read_text()) == [["Tp/beta_same.png", "Negative"]]


def test_an_imdl_benco_export_never_mixes_with_an_earlier_one_in_its_folder(run_dir, tmp_path, capsys, monkeypatch):
    """A second export into one OUT (a stricter filter, another --mask) rewrote the JSON but left the first
    export's Tp/Gt files beside its own: ManiDataset, which pairs the two folders by name, trained on the pairs
    the filter had dropped. Such an OUT is refused (out_not_empty) unless --overwrite, which replaces Tp/ and
    Gt/ whole; a failed export leaves the earlier one as it was."""
    out = tmp_path / "benco"
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out)]) == 0
    assert len(list((out / "Tp").iterdir())) == 11
    capsys.readouterr()
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--max-area", "0.001"]) == 2
    assert "[out_not_empty]" in capsys.readouterr().err and len(list((out / "Tp").iterdir())) == 11
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--max-area", "0.001", "--relative",
                 "--overwrite"]) == 0
    assert json.loads((out / "imdl_benco.json").read_text()) == [["Tp/beta_same.png", "Negative"]]
    assert [p.name for p in (out / "Tp").iterdir()] == [p.name for p in (out / "Gt").iterdir()] == ["beta_same.png"]
    assert sorted(p.name for p in out.iterdir()) == ["Gt", "Tp", "imdl_benco.json"]      # nothing staged is left
    import sigma.export.imdl_benco as benco

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(benco, "write_png", full_disk)
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--overwrite"]) == 2
    assert [p.name for p in (out / "Tp").iterdir()] == ["beta_same.png"]
    assert sorted(p.name for p in out.iterdir()) == ["Gt", "Tp", "imdl_benco.json"]
    monkeypatch.undo()
    # --overwrite replaces Tp/ and Gt/ whole: a Tp/ holding files no earlier export wrote (a CASIA-style corpus,
    # Tp/ + Au/ + Gt/) is refused even so, and kept
    casia = tmp_path / "casia"
    (casia / "Tp").mkdir(parents=True)
    (casia / "Tp" / "Tp_D_CRN_S_N_0001.jpg").write_bytes(b"corpus image")
    for flags in ([], ["--overwrite"]):
        assert main(["export", "imdl-benco", str(run_dir), "--out", str(casia), *flags]) == 2
        assert "[out_not_empty]" in capsys.readouterr().err
    assert [p.name for p in casia.rglob("*")] == ["Tp", "Tp_D_CRN_S_N_0001.jpg"]


def test_an_overwrite_of_an_export_made_with_another_json_name_says_which_name_to_pass(run_dir, tmp_path, capsys):
    """`--overwrite` into an OUT holding an earlier export made with another `--json-name` was refused as "not a file
    of an earlier export" with no word of why (only the new name's JSON was read). It is still refused, nothing
    touched (a JSON that lists Tp/ and Gt/ may be a corpus's, CASIA-style, and is never taken as the export's own),
    but the message names the JSON that lists the files and the --json-name to pass; that export then replaces it."""
    out = tmp_path / "benco"
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--json-name", "first.json"]) == 0
    before = _tree(out)
    capsys.readouterr()
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--overwrite", "--max-area", "0.001"]) == 2
    err = capsys.readouterr().err
    assert "[out_not_empty]" in err and "listed by first.json, not by imdl_benco.json" in err, err
    assert "pass --json-name first.json with --overwrite" in err, err
    assert _tree(out) == before
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--overwrite", "--max-area", "0.001",
                 "--relative", "--json-name", "first.json"]) == 0
    assert json.loads((out / "first.json").read_text()) == [["Tp/beta_same.png", "Negative"]]
    assert sorted(p.name for p in out.iterdir()) == ["Gt", "Tp", "first.json"]
    # files no JSON in OUT lists: refused as before, no name suggested
    (out / "Tp" / "mine.png").write_bytes(b"the user's")
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is not a file of an earlier export (imdl_benco.json does not list it)" in err and "--json-name" not in err
    assert (out / "Tp" / "mine.png").read_bytes() == b"the user's"


def test_a_second_export_into_a_busy_folder_is_refused_and_the_folder_carries_no_lock_file(run_dir, tmp_path,
                                                                                           capsys):
    """Two exports into one OUT would mix their files (an HF export even deletes the other's temporary shards
    as stale): while one holds the folder, the other exits 2 with run_locked and writes nothing. The lock is
    on the folder itself, so an exported folder holds no extra file to upload."""
    from sigma.folderlock import hold_folder

    for fmt, out in (("imdl-benco", tmp_path / "benco"), ("hf", tmp_path / "hf")):
        with hold_folder(out, other="OUT folder", marker=False):       # another export, mid-way
            assert main(["export", fmt, str(run_dir), "--out", str(out)]) == 2
            assert "[run_locked]" in capsys.readouterr().err
            assert list(out.iterdir()) == []
        assert main(["export", fmt, str(run_dir), "--out", str(out)]) == 0
        assert not any(p.name == ".lock" for p in out.rglob("*"))
    capsys.readouterr()


def test_coco_export_and_filters(run_dir, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "coco.json"
    assert main(["export", "coco", str(run_dir), "--out", str(out), "--images", str(tmp_path / "img"),
                 "--min-area", "0.01"]) == 0
    coco = COCO(str(out))
    assert len(coco.imgs) == 10 and len(coco.anns) == 10      # the empty mask fails --min-area
    ann = coco.anns[1]
    img = coco.imgs[ann["image_id"]]
    assert (tmp_path / "img" / img["file_name"]).is_file()
    assert int(coco.annToMask(ann).sum()) == ann["area"] and ann["iscrowd"] == 0
    # pixel-diff gives no confidence, so a confidence floor drops every pair: nothing to export (every format)
    assert main(["export", "coco", str(run_dir), "--out", str(tmp_path / "c2.json"), "--min-confidence", "0.1"]) == 2
    assert not (tmp_path / "c2.json").exists()
    f = RowFilter(min_confidence=0.5, max_area=0.5)
    base = {"status": "ok", "area_fraction": 0.1}
    assert f.keep({**base, "confidence": 0.7}) and not f.keep({**base, "confidence": 0.3})
    assert not f.keep({**base, "confidence": None}) and not f.keep({**base, "confidence": 0.9, "area_fraction": 0.6})
    assert not f.keep({"status": "error"}) and main(["export", "coco", str(run_dir), "--out", "x.json",
                                                     "--max-area", "3"]) == 2


def test_an_export_that_keeps_no_pair_is_refused_alike_in_every_format(run_dir, tmp_path, capsys):
    """A run with no good pair, or filters that drop every pair: the HF export was refused (no_results, exit 2,
    but an empty data/ folder left behind) while COCO wrote an empty JSON and IMDL-BenCo empty Tp/ Gt/ and
    `[]`, both exit 0. Every format now refuses it with no_results, writes nothing and keeps an earlier export."""
    outs = {"coco": tmp_path / "c.json", "imdl-benco": tmp_path / "benco", "hf": tmp_path / "hf"}
    for fmt, out in outs.items():
        assert main(["export", fmt, str(run_dir), "--out", str(out), "--min-confidence", "0.5"]) == 2, fmt
        err = capsys.readouterr().err
        assert "[no_results]" in err and "nothing to export" in err, (fmt, err)
        assert not out.exists(), fmt
    bad = tmp_path / "bad_corpus" / "s"
    bad.mkdir(parents=True)
    (bad / "pairs.jsonl").write_text(json.dumps({"id": "g", "original": "no.png", "edited": "no2.png"}) + "\n")
    cfg = BatchConfig.model_validate({"input": {"path": str(bad.parent)}, "annotator": "pixel-diff", "workers": 0})
    assert run_batch(cfg, tmp_path / "bad_run", progress=False).status["errors"] == 1
    for fmt, out in outs.items():
        assert main(["export", fmt, str(tmp_path / "bad_run"), "--out", str(out)]) == 2, fmt
        assert "[no_results]" in capsys.readouterr().err and not out.exists(), fmt
    # an earlier export in OUT stays as it was
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(outs["imdl-benco"])]) == 0
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(outs["imdl-benco"]), "--min-confidence", "0.5",
                 "--overwrite"]) == 2
    assert len(json.loads((outs["imdl-benco"] / "imdl_benco.json").read_text())) == 11
    assert len(list((outs["imdl-benco"] / "Tp").iterdir())) == 11
    capsys.readouterr()


def test_review_page_static(run_dir, tmp_path):
    out = tmp_path / "review.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    html = out.read_text()
    assert html.count('<figure class="item"') == 11
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)   # nothing fetched from anywhere
    assert html.count("data:image/jpeg;base64,") == 22                # original + overlay per pair
    assert 'id="metrics"' in html and ">alpha<" in html and ">overall<" in html
    assert 'id="errors"' in html and "file_not_found" in html
    # lowest confidence first is the default sort; pixel-diff has none, so the order is the manifest's
    assert 'value="confidence:asc"' in html.split('<select id="sort">')[1][:40]


def test_export_names_never_put_two_pairs_on_one_file(tmp_path):
    """Two pairs named alike: the second took "<name>-<shard>-<index>", which a third pair's own id could already
    be, so the IMDL-BenCo JSON listed two entries on one Tp/Gt file (one pair's image under the other's
    entry); ids differing only in case shared a file on a case-insensitive disk."""
    root = tmp_path / "corpus" / "s"
    pairs = list(synthetic_pairs(4))
    write_pairs_jsonl(root, pairs)
    ids = ["x-s__pairs.r0000000-0000003-2", "x", "x", "X"]
    with open(root / "pairs.jsonl", "w") as handle:
        for pair_id, p in zip(ids, pairs):
            handle.write(json.dumps({"id": pair_id, "original": f"{p['id']}_original.png",
                                     "edited": f"{p['id']}_edited.png"}) + "\n")
    run = tmp_path / "run"
    cfg = BatchConfig.model_validate({"input": {"path": str(root.parent)}, "annotator": "pixel-diff", "workers": 0})
    run_batch(cfg, run, progress=False)
    assert [p.name.split(".")[0] for p in (run / "shards").iterdir()] == ["s__pairs"]
    assert main(["export", "imdl-benco", str(run), "--out", str(tmp_path / "benco")]) == 0
    entries = json.loads((tmp_path / "benco" / "imdl_benco.json").read_text())
    names = [Path(tp).name.casefold() for tp, _ in entries]
    assert len(entries) == 4 and len(set(names)) == 4
    assert len({p.read_bytes() for p in (tmp_path / "benco" / "Tp").iterdir()}) == 4


def test_export_names_are_no_option_and_no_windows_device(tmp_path, capsys):
    """Pairs named `-rf`, `--help`, `nul`, `CON.v2`, `Com1` were exported as `Tp/-rf.png` (an option to `ls Tp/*`,
    `cp *`, `xargs`) and as Windows device names, no file on such a disk. Now each gets `_` before it, which no
    other pair's name starts with; names that only look alike (`console`, `com10`) are kept."""
    root = tmp_path / "corpus"
    pairs = list(synthetic_pairs(7))
    write_pairs_jsonl(root, pairs)
    ids = ["-rf", "--help", "nul", "CON.v2", "Com1", "console", "com10"]
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": i, "original": f"{p['id']}_original.png",
                                            "edited": f"{p['id']}_edited.png"}) + "\n" for i, p in zip(ids, pairs)))
    run = tmp_path / "run"
    assert main(["batch", "run", str(manifest), "--out", str(run), "--annotator", "pixel-diff", "--workers", "0",
                 "--no-progress"]) == 0
    assert main(["export", "imdl-benco", str(run), "--out", str(tmp_path / "benco")]) == 0
    assert main(["export", "coco", str(run), "--out", str(tmp_path / "c.json"), "--images", str(tmp_path / "im")]) == 0
    want = ["_-rf.png", "_--help.png", "_nul.png", "_CON.v2.png", "_Com1.png", "console.png", "com10.png"]
    entries = json.loads((tmp_path / "benco" / "imdl_benco.json").read_text())
    assert [Path(tp).name for tp, _ in entries] == want
    coco = json.loads((tmp_path / "c.json").read_text())
    assert [(i["file_name"], i["pair_id"]) for i in coco["images"]] == list(zip(want, ids))
    assert sorted(p.name for p in (tmp_path / "im").iterdir()) == sorted(want)
    capsys.readouterr()


def test_an_image_changed_since_the_run_is_not_exported_with_the_old_mask(tmp_path, capsys):
    """The exports re-read the corpus: an edited image replaced after the run went to IMDL-BenCo's Tp/ (and
    COCO --images) beside the mask of the image it replaced, a wrong training pair, without a word (the HF
    export already checked the sha256 the manifest records)."""
    root = tmp_path / "corpus" / "s"
    write_pairs_jsonl(root, synthetic_pairs(3))
    cfg = BatchConfig.model_validate({"input": {"path": str(root)}, "annotator": "pixel-diff", "workers": 0})
    run_batch(cfg, tmp_path / "run", progress=False)
    (root / "p000001_edited.png").write_bytes((root / "p000002_edited.png").read_bytes())
    assert main(["export", "imdl-benco", str(tmp_path / "run"), "--out", str(tmp_path / "benco")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0])["pairs"] == 2 and "p000001: the corpus changed since the run" in out
    assert sorted(p.name for p in (tmp_path / "benco" / "Tp").iterdir()) == ["s_p000000.png", "s_p000002.png"]
    assert main(["export", "coco", str(tmp_path / "run"), "--out", str(tmp_path / "c.json"), "--images",
                 str(tmp_path / "img")]) == 0
    assert len(json.loads((tmp_path / "c.json").read_text())["images"]) == 2


def test_report_out_given_empty_is_refused_not_taken_for_the_default(run_dir, capsys, monkeypatch, tmp_path):
    """`sigma report RUN --out ''` wrote RUN/report.html (the default), a file nobody asked for; now the empty path
    is refused as every empty path argument is (`empty_path`), and nothing written."""
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["report", str(run_dir), "--out", ""]) == 2
    assert "[empty_path]" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before and list(tmp_path.iterdir()) == []


def test_outputs_over_the_runs_own_files_are_refused_before_any_work(run_dir, tmp_path, capsys):
    """`sigma export coco RUN --out RUN/run.json` (or `sigma report RUN --out RUN/status/x.json`) replaced the run
    record with a COCO JSON and exited 0: the run was gone (`sigma batch status` then crashed with a KeyError)."""
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    shard = next((run_dir / "shards").iterdir())
    status = next((run_dir / "status").iterdir())
    for argv in (["export", "coco", str(run_dir), "--out", str(run_dir / "run.json")],
                 ["export", "coco", str(run_dir), "--out", str(shard)],
                 ["report", str(run_dir), "--out", str(status)],
                 ["report", str(run_dir), "--out", str(run_dir / "config.yaml")]):
        assert main(argv) == 2
        assert "[out_is_run_file]" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    assert main(["batch", "status", str(run_dir)]) == 0
    # a run record that is JSON but not a run (written over by hand or by an older sigma): one line, exit 2
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "run.json").write_text(json.dumps({"info": {}, "images": []}))
    capsys.readouterr()
    for argv in (["batch", "status", str(broken)], ["report", str(broken)],
                 ["export", "coco", str(broken), "--out", str(tmp_path / "c.json")]):
        assert main(argv) == 2
        assert "[bad_run]" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "coco"])
def test_an_output_file_on_a_read_only_file_system_is_refused_before_any_work(run_dir, tmp_path, capsys, command):
    """`sigma report RUN --out RO/r.html` (RO a read-only mount) built the whole page, every thumbnail, then failed
    `os_error` naming `.r.html.PID.RANDOM.tmp`, a file the user never named; `sigma export coco --out RO/c.json`
    said `os_error` after the export. Every output folder says `bad_outdir` before any work: so does a file's now,
    in its folder or in one still to be made under it. A stream (`--out /dev/null`) is no folder to test."""
    import subprocess

    from tmpfs import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "ro", "64k") as ro:
        (ro / "keep").write_text("x")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, capture_output=True)
        for out in (ro / "out.html", ro / "new" / "out.html"):
            argv = (["report", str(run_dir), "--out", str(out)] if command == "report"
                    else ["export", "coco", str(run_dir), "--out", str(out)])
            assert main(argv) == 2
            captured = capsys.readouterr()
            assert captured.err == f"sigma: error [bad_outdir]: {out}: not a usable output file (Read-only file " \
                                   "system)\n", captured.err
            assert captured.out == ""
        assert sorted(p.name for p in ro.iterdir()) == ["keep"]
    argv = ["report", str(run_dir)] if command == "report" else ["export", "coco", str(run_dir)]
    assert main([*argv, "--out", os.devnull]) == 0


def test_coco_images_with_a_name_too_long_is_bad_outdir_as_out_is(run_dir, tmp_path, capsys):
    """`sigma export coco RUN --out c.json --images LONG` (a name over the system's limit) said `os_error` naming
    `LONG/run.json`, a file the user never named, where the same path as `--out` says `bad_outdir`. Now the same."""
    long = tmp_path / ("d" * 300)
    assert main(["export", "coco", str(run_dir), "--out", str(tmp_path / "c.json"), "--images", str(long)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [bad_outdir]: ") and "(File name too long)" in err and "run.json" not in err
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


_KILLED_IMAGE_WRITER = at_first_temp_rename() + """from sigma.cli import main
main(sys.argv[1:])
"""


def test_coco_images_sweeps_what_a_killed_export_left_and_nothing_of_a_live_writer(run_dir, tmp_path, capsys):
    """`sigma export coco --images DIR` never swept DIR: an export killed mid-write (SIGKILL, the OOM killer) left
    its hidden temporary PNG there for good, one per kill. DIR stays the user's (their own tools may write there
    at once; one export at a time holds it), so the next export removes only what dead writers left:
    `.NAME.png.PID.RANDOM.tmp` whose pid is no live process here. A live writer's file, a user's `notes.tmp`, a dead
    writer's file of another kind than an image, and a link stay."""
    images = tmp_path / "img"
    killed = subprocess.run([sys.executable, "-c", _KILLED_IMAGE_WRITER, "export", "coco", str(run_dir), "--out",
                             str(tmp_path / "first.json"), "--images", str(images)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    dead = killed.stdout.strip()
    assert dead.endswith(".tmp") and dead.startswith(".") and ".png." in dead and (images / dead).is_file(), dead
    dead_pid = dead.split(".")[-3]
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"not ours")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        kept = [f".beta_p000001.png.{live.pid}.0badf00d.tmp", "notes.tmp", ".notes.tmp",
                f".notes.txt.{dead_pid}.abcdef01.tmp", f".x.png.{dead_pid}.notrandom.tmp"]
        for name in kept:
            (images / name).write_text("x")
        link = images / f".y.png.{dead_pid}.abcdef02.tmp"           # the form, but a link: never removed
        link.symlink_to(outside)
        assert main(["export", "coco", str(run_dir), "--out", str(tmp_path / "c.json"), "--images", str(images)]) == 0
        capsys.readouterr()
        assert not (images / dead).exists()
        assert sorted(p.name for p in images.iterdir() if p.name.endswith(".tmp")) == sorted([*kept, link.name])
        assert link.is_symlink() and outside.read_bytes() == b"not ours"
    finally:
        live.kill()
        live.wait()


def test_coco_out_sweeps_the_temporary_file_a_killed_export_left_beside_it(run_dir, tmp_path, capsys):
    """`sigma export coco --out FILE.json` killed between writing its temporary file and renaming it left
    `.FILE.json.PID.RANDOM.tmp` beside FILE.json for good (up to the size of the whole export, once per kill): no
    one swept that folder. The next export to FILE.json removes it: only that name, only a dead writer's. A live
    writer's file of that name, a dead writer's file of another name, a legacy `FILE.json.tmp` and a user's
    `notes.tmp` stay (the folder is anyone's)."""
    folder = tmp_path / "exports"
    folder.mkdir()
    out = folder / "c.json"
    killed = subprocess.run([sys.executable, "-c", _KILLED_IMAGE_WRITER, "export", "coco", str(run_dir), "--out",
                             str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    dead = killed.stdout.strip()
    assert dead.startswith(".c.json.") and dead.endswith(".tmp") and (folder / dead).is_file(), dead
    assert not out.exists()
    dead_pid = dead.split(".")[-3]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        kept = [f".c.json.{live.pid}.0badf00d.tmp", f".other.json.{dead_pid}.abcdef01.tmp", "c.json.tmp", "notes.tmp"]
        for name in kept:
            (folder / name).write_text("x")
        assert main(["export", "coco", str(run_dir), "--out", str(out)]) == 0
        capsys.readouterr()
        assert not (folder / dead).exists()
        assert json.loads(out.read_text())["images"]
        assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) == sorted(kept)
    finally:
        live.kill()
        live.wait()


def test_imdl_benco_killed_at_a_rename_leaves_nothing_the_next_export_keeps(run_dir, tmp_path, capsys):
    """`sigma export imdl-benco` killed (a real process, SIGKILLed) at the rename of its first image (staged in
    OUT/.Tp.tmp/) or of its JSON list (OUT/.imdl_benco.json.PID.RANDOM.tmp): OUT is held exclusively by the export
    (`hold_folder`, no marker file), so the next export there — done or refused — finds every such file a dead
    writer's and removes it (the staging folders whole, the temporary JSON by `sweep_stale_temps`). A regression
    test for that sweep: no dead writer's file survives the next export of OUT."""
    for containing in (".png.", ".imdl_benco.json."):
        out = tmp_path / containing.strip(".")
        killer = at_first_temp_rename(containing=containing) + "from sigma.cli import main\nmain(sys.argv[1:])\n"
        killed = subprocess.run([sys.executable, "-c", killer, "export", "imdl-benco", str(run_dir), "--out", str(out)],
                                capture_output=True, text=True, timeout=120, check=False)
        assert killed.returncode == -9, killed.stderr
        dead = killed.stdout.strip()
        assert containing in dead and any(p.name == dead for p in out.rglob("*")), dead
        main(["export", "imdl-benco", str(run_dir), "--out", str(out)])
        capsys.readouterr()
        assert not [p for p in out.rglob("*") if p.name.startswith(".")], sorted(out.rglob("*"))



def test_imdl_benco_staged_pngs_are_on_disk_before_the_journal_that_vouches_for_them(run_dir, tmp_path):
    """`sigma export imdl-benco` staged its PNGs without fsync, then wrote (and fsynced) the journal that makes the
    swap recoverable and the JSON that says the export is done: after a power cut, OUT could hold a JSON listing
    Tp/ and Gt/ images empty or cut short. In a real export now, every staged PNG's temporary file is fsynced before
    its rename, and both staging folders and OUT are fsynced after the last PNG's rename and before the journal's."""
    out, log, script = tmp_path / "benco", tmp_path / "events.json", tmp_path / "record.py"
    script.write_text(RECORD_SYNCS)
    proc = subprocess.run([sys.executable, str(script), str(log), "export", "imdl-benco", str(run_dir), "--out",
                           str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    events = json.loads(log.read_text())
    staged = {str(out / f".{folder}.tmp") for folder in ("Tp", "Gt")}
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and str(Path(e[2]).parent) in staged]
    assert len(renames) == 2 * len(json.loads((out / "imdl_benco.json").read_text())) == 22, events
    for at in renames:            # each staged PNG's bytes before its name
        assert ["fsync", events[at][1]] in events[:at], events
    journal = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2].endswith(".imdl_benco.json-journal"))
    for folder in (*staged, str(out)):      # the names (PNGs', staging folders') before the journal
        assert any(e == ["fsync", folder] for e in events[max(renames) + 1:journal]), (folder, events)


def test_coco_images_are_on_disk_before_the_json_that_lists_them(run_dir, tmp_path):
    """`sigma export coco --images DIR` renamed each edited image from the page cache (no fsync) and never synced DIR,
    while the JSON naming them was fsynced: after a power cut the export said done, its JSON could list images empty,
    cut short or missing (DIR itself too, made by the export). In a real export now, every image's temporary file
    is fsynced before it is put in place (a hard link: `sigma.export.placing`), DIR's parent after DIR is made and DIR
    after the last image, all before the JSON's rename, and the JSON's folder after it."""
    images, out = tmp_path / "new" / "img", tmp_path / "coco.json"
    log, script = tmp_path / "events.json", tmp_path / "record.py"
    script.write_text(RECORD_SYNCS)
    proc = subprocess.run([sys.executable, str(script), str(log), "export", "coco", str(run_dir), "--out", str(out),
                           "--images", str(images)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    events = json.loads(log.read_text())
    listed = {str(images / image["file_name"]) for image in json.loads(out.read_text())["images"]}
    renames = [i for i, e in enumerate(events) if e[0] in ("rename", "link") and e[2] in listed]
    assert len(renames) == len(listed) > 0, events
    for at in renames:            # each image's bytes before its name
        assert ["fsync", events[at][1]] in events[:at], events
    commit = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(out))
    assert max(renames) < commit, events
    for folder in (tmp_path / "new", tmp_path, images):     # DIR's entry (and its new parent's), then the names in it
        assert ["fsync", str(folder)] in events[:commit], (folder, events)
    assert ["fsync", str(images)] in events[max(renames) + 1:commit], events
    assert ["fsync", str(tmp_path)] in events[commit + 1:], events      # the JSON's own name


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _benco_killed_at_its_json(run_dir: Path, out: Path, *flags: str, at: str = ".imdl_benco.json.") -> None:
    """A real `sigma export imdl-benco` SIGKILLed at the rename of its JSON list, after Tp/ and Gt/ were swapped in
    (`at=".Gt.tmp"`: at the swap of Gt/, Tp/ swapped in already)."""
    killer = at_first_temp_rename(containing=at) + "from sigma.cli import main\nmain(sys.argv[1:])\n"
    killed = subprocess.run([sys.executable, "-c", killer, "export", "imdl-benco", str(run_dir), "--out", str(out),
                             "--relative", *flags], capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    assert killed.stdout.strip().startswith(at), killed.stdout
    assert (out / "Tp").is_dir() and not (out / ".Tp.tmp").exists()


def test_imdl_benco_killed_at_its_json_rename_is_rolled_back_by_the_next_export(run_dir, tmp_path, capsys):
    """An export killed (SIGKILL) at its JSON's rename left OUT with the new Tp/ and Gt/ and no JSON listing them:
    the next export was refused (`out_not_empty`), with --overwrite too ("not a file of an earlier export"), and the
    user had to delete OUT by hand. Now the export journals its swap (`.imdl_benco.json-journal`) and the next
    export of OUT rolls the killed one back: a plain export then succeeds with the same bytes as an uninterrupted
    one; over an earlier export the earlier one is back whole (a plain export is refused as it always was, and
    --overwrite replaces it). A user's own file beside the export is kept; one dropped into the killed export's Tp/
    since is refused and kept, never deleted."""
    reference = tmp_path / "reference"
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(reference), "--relative"]) == 0
    earlier = tmp_path / "earlier"
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(earlier), "--relative", "--max-area", "0.001"]) == 0
    capsys.readouterr()

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "notes.txt").write_text("the user's")
    _benco_killed_at_its_json(run_dir, fresh)
    assert not (fresh / "imdl_benco.json").exists()
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(fresh), "--relative"]) == 0
    assert _tree(fresh) == {**_tree(reference), "notes.txt": b"the user's"}

    replaced = tmp_path / "replaced"
    shutil.copytree(earlier, replaced)
    _benco_killed_at_its_json(run_dir, replaced, "--overwrite")
    capsys.readouterr()
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(replaced), "--relative"]) == 2
    assert "[out_not_empty]" in capsys.readouterr().err
    assert _tree(replaced) == _tree(earlier)                     # the earlier export, back whole
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(replaced), "--relative", "--overwrite"]) == 0
    assert _tree(replaced) == _tree(reference)

    mid_swap = tmp_path / "mid-swap"                             # killed between the two folders' swaps
    shutil.copytree(earlier, mid_swap)
    _benco_killed_at_its_json(run_dir, mid_swap, "--overwrite", at=".Gt.tmp")
    assert not (mid_swap / "Gt").exists()
    capsys.readouterr()
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(mid_swap), "--relative"]) == 2
    assert "[out_not_empty]" in capsys.readouterr().err and _tree(mid_swap) == _tree(earlier)

    dropped = tmp_path / "dropped"
    _benco_killed_at_its_json(run_dir, dropped)
    (dropped / "Tp" / "mine.jpg").write_bytes(b"the user's")
    capsys.readouterr()
    for flags in ([], ["--overwrite"]):
        assert main(["export", "imdl-benco", str(run_dir), "--out", str(dropped), "--relative", *flags]) == 2
        assert "[out_not_empty]" in capsys.readouterr().err
        assert (dropped / "Tp" / "mine.jpg").read_bytes() == b"the user's"


def test_imdl_benco_rerun_with_another_json_name_rolls_back_the_killed_export(run_dir, tmp_path, capsys):
    """The next export rolled back a killed export's swap only when it ran with the same JSON name
    (`export_imdl_benco(json_name=)`): the journal it looked for was its own `.JSON-journal`. A rerun under another
    name was refused (`out_not_empty`, the killed export's Tp/ and Gt/ listed by no JSON) and left the journal in
    place. Now every export journal in OUT is recovered first: the rerun under the other name succeeds with the
    bytes of an uninterrupted export."""
    from sigma.errors import InputError
    from sigma.export import export_imdl_benco

    reference = tmp_path / "reference"
    export_imdl_benco(run_dir, reference, relative=True, json_name="other.json")
    out = tmp_path / "killed"
    _benco_killed_at_its_json(run_dir, out)          # `sigma export imdl-benco`: imdl_benco.json
    assert (out / ".imdl_benco.json-journal").is_file()
    try:
        export_imdl_benco(run_dir, out, relative=True, json_name="other.json")
    except InputError as exc:
        raise AssertionError(f"the rerun under another name was refused: {exc.message}") from None
    assert _tree(out) == _tree(reference) and not list(out.glob(".*"))


BAD_JSON_NAMES = {
    "sub/x.json": "path separator", "../escape.json": "path separator", "sub/": "path separator",
    "a\\b.json": "path separator", "..json": "starts with a dot", ".x-journal.json": "starts with a dot",
    "a\x00b.json": "control character", "a\nb.json": "control character", "list.txt": "does not end in .json",
    "": "does not end in .json", "x" * 250 + ".json": "bytes long", "\ud800.json": "no file name",
}


def test_imdl_benco_json_names_that_are_no_plain_file_name_are_refused_before_anything_is_written(
        run_dir, tmp_path, capsys):
    """`json_name` was joined to OUT unchecked: `sub/x.json` wrote into a subfolder (its journal `.sub/x.json-journal`
    one no later export looks for), `../escape.json` beside OUT, an absolute name anywhere, and a NUL byte or a name
    past 255 bytes failed only after every PNG was written. Now the real `sigma export imdl-benco --json-name` (and
    `export_imdl_benco(json_name=)`) refuses each one, `bad_arguments` saying why, exit 2, before OUT is made; a
    plain name is the export's JSON, which a rerun under that name (--overwrite) replaces."""
    from sigma.errors import InputError
    from sigma.export import export_imdl_benco

    room = tmp_path / "room"
    room.mkdir()
    out = room / "benco"
    for name, why in {**BAD_JSON_NAMES, str(room / "abs.json"): "path separator"}.items():
        assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--json-name", name]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("sigma: error [bad_arguments]: --json-name ") and why in err, (name, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        with pytest.raises(InputError) as caught:
            export_imdl_benco(run_dir, out, json_name=name)
        assert caught.value.code == "bad_arguments" and why in caught.value.message, name
        assert list(room.iterdir()) == [], name
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--json-name", "train.json",
                 "--relative", "--max-area", "0.001"]) == 0
    assert json.loads((out / "train.json").read_text()) == [["Tp/beta_same.png", "Negative"]]
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--json-name", "train.json", "--relative",
                 "--overwrite"]) == 0
    assert len(json.loads((out / "train.json").read_text())) == 11
    assert sorted(p.name for p in out.iterdir()) == ["Gt", "Tp", "train.json"]


def test_an_imdl_benco_json_that_cannot_be_written_leaves_the_earlier_export_whole(run_dir, tmp_path, capsys,
                                                                                   monkeypatch):
    """A JSON write that failed after the swap (a full disk) took the earlier export's folders with it (`.Tp.old`
    was removed on the way out): OUT held the new Tp/ and Gt/ beside the earlier JSON. Now the swap is rolled back
    from its journal before the error is told."""
    out = tmp_path / "benco"
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--max-area", "0.001"]) == 0
    before = _tree(out)
    import sigma.export.imdl_benco as benco

    def full_disk(path, data, *, stream=True):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(benco, "atomic_write_bytes", full_disk)
    capsys.readouterr()
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(out), "--overwrite"]) != 0
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == ["Gt", "Tp", "imdl_benco.json"]


def test_coco_images_never_land_on_the_runs_or_the_corpus_files(run_dir, tmp_path, capsys):
    """`--images` was never checked: RUN/shards (or RUN/masks/<shard> of a --png-masks run) and the corpus's own
    folders took edited images named like the files there (a folder corpus's `edited/<id>.png` replaced by the
    decoded, size-synced copy: the corpus changed under the run)."""
    corpus = Path(json.loads((run_dir / "run.json").read_text())["corpus"]["path"])
    watched = [run_dir, corpus]
    before = {p: p.read_bytes() for root in watched for p in root.rglob("*") if p.is_file()}
    for images, code in ((run_dir / "shards" / "x", "out_is_run_file"), (run_dir / "masks", "out_is_run_file"),
                         (corpus, "out_not_empty"), (corpus / "alpha", "out_not_empty")):
        assert main(["export", "coco", str(run_dir), "--out", str(tmp_path / "c.json"), "--images", str(images)]) == 2
        assert f"[{code}]" in capsys.readouterr().err
    assert {p: p.read_bytes() for root in watched for p in root.rglob("*") if p.is_file()} == before
    # a new folder of the run (the documented example) and any other folder still take the images
    assert main(["export", "coco", str(run_dir), "--out", str(tmp_path / "c.json"),
                 "--images", str(tmp_path / "imgs")]) == 0
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 11


def test_folder_exports_never_land_in_the_runs_own_folders(run_dir, tmp_path, capsys):
    """`sigma export imdl-benco RUN --out RUN/shards` (or `export hf RUN RUN/status`) wrote Tp/, Gt/, the JSON, data/
    and a card among the run's shards and statuses, exit 0, while `export coco --images RUN/shards` was refused: now
    `out_is_run_file` too, before any work; a new folder of the run (`RUN/benco`) still takes the export."""
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    for out in (run_dir / "shards", run_dir / "status", run_dir / "status" / "x", run_dir / "masks" / "s"):
        for argv in (["export", "imdl-benco", str(run_dir), "--out", str(out)],
                     ["export", "hf", str(run_dir), str(out), "--overwrite"]):
            assert main(argv) == 2
            assert f"[out_is_run_file]: {out}: inside the batch run's own {out.relative_to(run_dir).parts[0]}/" \
                in capsys.readouterr().err
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before
    assert main(["export", "imdl-benco", str(run_dir), "--out", str(run_dir / "benco")]) == 0
    assert main(["export", "hf", str(run_dir), str(run_dir / "hf")]) == 0
    assert (run_dir / "benco" / "imdl_benco.json").is_file() and (run_dir / "hf" / "README.md").is_file()


def test_exports_write_strict_json_when_a_row_holds_nan(run_dir, tmp_path):
    """A plugin's NaN confidence reached the COCO and IMDL-BenCo JSON as the bare token NaN, which strict JSON
    readers (JSON.parse, jq, Go, Rust) refuse: written as null now."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shard = sorted((run / "shards").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    nan = pa.array([float("nan")] * table.num_rows, pa.float64())
    pq.write_table(table.set_column(table.schema.get_field_index("confidence"), "confidence", nan), shard)
    status = next(p for p in (run / "status").iterdir()
                  if json.loads(p.read_text()).get("output") == f"shards/{shard.name}")
    record = json.loads(status.read_text())
    record.update(bytes=shard.stat().st_size, sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
    status.write_text(json.dumps(record))
    assert main(["export", "coco", str(run), "--out", str(tmp_path / "c.json")]) == 0
    assert main(["export", "imdl-benco", str(run), "--out", str(tmp_path / "imdl")]) == 0
    def refuse(token: str):
        raise AssertionError(f"not strict JSON: {token}")

    for path in [tmp_path / "c.json", *(tmp_path / "imdl").glob("*.json")]:
        json.loads(path.read_text(), parse_constant=refuse)


def test_a_shard_file_replaced_by_another_of_the_same_size_is_refused_by_the_exports(run_dir, tmp_path, capsys):
    """The exports held each finished shard file to the size its status recorded (and its run_hash / shard
    columns), not to the sha256 the status records too: a shard whose rows were edited (two pairs' boxes and areas
    swapped) into a file of the same size was exported as the run's masks. Now run_modified naming the file,
    nothing written; the run's own file put back exports again."""
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shard = sorted((run / "shards").glob("*.parquet"))[0]
    original = shard.read_bytes()
    table = pq.read_table(shard)
    columns = ("bbox", "area", "area_fraction", "gt_fraction", "gt_tp", "rle_counts")

    def swapped(names: tuple[str, ...]) -> bytes:
        edited = table
        for name in names:                   # the values of the first two pairs exchanged
            values = edited.column(name).to_pylist()
            values[0], values[1] = values[1], values[0]
            edited = edited.set_column(edited.schema.get_field_index(name), name,
                                       pa.array(values, edited.schema.field(name).type))
        sink = pa.BufferOutputStream()       # written as the run writes its shards
        pq.write_table(edited, sink, compression="zstd", row_group_size=max(table.num_rows, 1))
        return sink.getvalue().to_pybytes()

    same_size = next(data for n in range(len(columns), 0, -1) for names in itertools.combinations(columns, n)
                     if len(data := swapped(names)) == len(original) and data != original)
    shard.write_bytes(same_size)
    capsys.readouterr()
    for fmt, out in (("coco", tmp_path / "c.json"), ("hf", tmp_path / "hf"), ("imdl-benco", tmp_path / "imdl")):
        assert main(["export", fmt, str(run), "--out", str(out)]) == 2, fmt
        err = capsys.readouterr().err
        assert err.startswith("sigma: error [run_modified]: ") and err.count("\n") == 1, (fmt, err)
        assert f"{shard}: not the shard file the run wrote (its sha256 differs" in err, (fmt, err)
        assert not out.exists(), fmt
    shard.write_bytes(original)
    assert main(["export", "coco", str(run), "--out", str(tmp_path / "c.json")]) == 0


def test_coco_images_into_a_run_made_inside_its_folder_corpus(tmp_path, capsys):
    """`cd corpus && sigma batch run . --out run`, then the documented `--images run/images`: 14bec19 refused every
    folder under a folder corpus (out_not_empty, 'images written there would replace them'), though no reader
    takes images from inside a run folder; the corpus's own folders stay refused."""
    corpus = write_folder(tmp_path / "corpus", synthetic_pairs(3, size=32, seed=1))
    run = corpus / "run"
    assert main(["batch", "run", str(corpus), "--out", str(run), "--annotator", "pixel-diff", "--workers", "0"]) == 0
    before = {p: p.read_bytes() for p in corpus.iterdir() if p.is_file()}
    assert main(["export", "coco", str(run), "--out", str(run / "coco.json"), "--images", str(run / "images")]) == 0
    assert len(list((run / "images").glob("*.png"))) == 3
    assert {p: p.read_bytes() for p in corpus.iterdir() if p.is_file()} == before
    for images in (corpus, corpus / "run" / "shards"):
        assert main(["export", "coco", str(run), "--out", str(tmp_path / "c.json"), "--images", str(images)]) == 2
        assert ("[out_not_empty]" if images == corpus else "[out_is_run_file]") in capsys.readouterr().err


def _review_page_in_headless_chromium(run_dir: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """The review page of `run_dir`'s first 7 pairs, and the command line of a headless Chromium to open it with
    (the test skipped where no Chromium is installed)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    page = tmp_path / "review.html"
    assert main(["report", str(run_dir), "--out", str(page), "--limit", "7"]) == 0
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    return flags, page


@pytest.mark.chromium
def test_review_page_in_chromium(run_dir, tmp_path):
    flags, page = _review_page_in_headless_chromium(run_dir, tmp_path)
    flags.append("--window-size=1200,900")
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--user-data-dir={tmp_path / 'p1'}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=90, check=True)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (900, 1200) and img.std() > 10               # rendered, not blank
    red = (img[..., 0] > 180) & (img[..., 1] < 100) & (img[..., 2] < 100)
    assert red.sum() > 50                                                  # the red mask outline shows
    dom = subprocess.run([*flags, f"--user-data-dir={tmp_path / 'p2'}", "--dump-dom", page.as_uri()],
                         capture_output=True, timeout=90, text=True, check=True).stdout
    assert dom.count('<figure class="item"') == 7
    assert 'data-shown="7"' in dom and "7 of 7 shown" in dom          # the filter script ran
    # the filters work in the browser: by set, and by a confidence floor pixel-diff never meets
    for query, shown in (("set=beta", 1), ("type=remove", 3), ("minconf=0.5", 0), ("q=p000003", 1)):
        dom = subprocess.run([*flags, f"--user-data-dir={tmp_path / 'p3'}", "--dump-dom", f"{page.as_uri()}?{query}"],
                             capture_output=True, timeout=90, text=True, check=True).stdout
        assert f"{shown} of 7 shown" in dom, query


class _ScoredDiff:
    """A real annotator (pixel-diff plus the extras a model annotator reports), registered for this test."""

    name = "test-scored-diff"

    @staticmethod
    def register():
        from typing import Any, ClassVar

        from sigma.annotators.pixel_diff import PixelDiff
        from sigma.registry import ANNOTATORS

        class ScoredDiff(PixelDiff):
            name: ClassVar[str] = _ScoredDiff.name

            def _predict_batch(self, pairs) -> list[tuple[np.ndarray, dict[str, Any]]]:
                out = []
                for pair, (prob, _) in zip(pairs, super()._predict_batch(pairs)):
                    n = int(pair.pair_id.rsplit("p", 1)[-1]) if pair.pair_id[-1].isdigit() else 0
                    out.append((prob, {"confidence": round(0.9 - 0.1 * n, 3),
                                       "parse": {"edit_type": "remove", "source": "object"},
                                       "components": {"split": "by_prior", "intended_area": 10 + n,
                                                      "side_effect_area": n, "count": 2},
                                       "intended_mask": prob > self.threshold}))
                return out

        if _ScoredDiff.name not in ANNOTATORS:
            ANNOTATORS.register(_ScoredDiff.name, "test: pixel-diff with model-style extras")(
                lambda **kw: ScoredDiff(**kw))


def test_model_extras_reach_manifest_exports_and_page(tmp_path):
    import pyarrow.parquet as pq

    from sigma.io.corpora.synthetic import write_webdataset

    _ScoredDiff.register()
    write_webdataset(tmp_path / "wds", synthetic_pairs(5), per_tar=5)
    out = tmp_path / "run"
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "wds")}, "annotator": _ScoredDiff.name,
                                      "workers": 0})
    run_batch(cfg, out, progress=False)
    rows = pq.read_table(next((out / "shards").glob("*.parquet"))).to_pylist()
    assert [r["confidence"] for r in rows] == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert json.loads(rows[1]["parser"]) == {"edit_type": "remove", "source": "object"}
    assert rows[3]["intended_area"] == 13 and rows[3]["side_effect_area"] == 3
    assert rows[0]["intended_rle"] == rows[0]["rle_counts"] and rows[0]["edit_type"] == "remove"  # tar's json wins
    assert main(["export", "coco", str(out), "--out", str(tmp_path / "c.json"), "--min-confidence", "0.65"]) == 0
    coco = json.loads((tmp_path / "c.json").read_text())
    assert [i["pair_id"] for i in coco["images"]] == ["p000000", "p000001", "p000002"]
    assert [a["score"] for a in coco["annotations"]] == [0.9, 0.8, 0.7]
    assert main(["report", str(out), "--limit", "3"]) == 0
    html = (out / "report.html").read_text()
    shown = re.findall(r"<b>(p\d+)</b>", html)
    assert shown == ["p000004", "p000003", "p000002"]      # the three least confident, lowest first


# --- run.json held to its run hash, and the run's shard files to the run, by every export and the review page ---

def _other_corpus(tmp_path: Path) -> Path:
    other = tmp_path / "other"
    write_pairs_jsonl(other / "alpha", synthetic_pairs(6, seed=7))
    return other


RUN_JSON_EDITS = {
    "annotator": lambda r, other: r["config"].update(annotator="sigma-lite"),
    "options": lambda r, other: r["config"].update(options={"threshold": 0.9}),
    "threshold": lambda r, other: r["config"].update(threshold=0.9),
    "input": lambda r, other: r["config"]["input"].update(path=str(other)),
    "corpus": lambda r, other: r["corpus"].update(path=str(other)),
    "weights": lambda r, other: r["model"].update(weights_sha256="0" * 64),
    "shard_file": lambda r, other: r["shards"][0]["ref"].update(file=str(other / "alpha" / "pairs.jsonl")),
    "shard_rows": lambda r, other: r["shards"][0]["ref"].update(count=1),
    "shard_outside": lambda r, other: r["shards"][0]["ref"].update(file="/etc/passwd"),
    "format": lambda r, other: r.update(format="parquet"),
    "planned_pairs": lambda r, other: r.update(planned_pairs=1000),
    "version": lambda r, other: r.update(version=3),
    "deep": lambda r, other: r["config"].update(options=_nested(300)),
}


def _nested(depth: int) -> dict:
    value: dict = {"x": 1}
    for _ in range(depth):
        value = {"x": value}
    return value


def _readers(run: Path, outs: Path) -> dict[str, list[str]]:
    """Every command that reads a finished run, each writing under `outs` (the review page into the run)."""
    return {"hf": ["export", "hf", str(run), str(outs / "hf")],
            "imdl-benco": ["export", "imdl-benco", str(run), "--out", str(outs / "benco")],
            "coco": ["export", "coco", str(run), "--out", str(outs / "c.json")],
            "coco-images": ["export", "coco", str(run), "--out", str(outs / "ci.json"), "--images", str(outs / "im")],
            "report": ["report", str(run)],
            "status": ["batch", "status", str(run)]}


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [run_modified]: ") and err.count("\n") == 1, (argv, err)
    assert len(err) < 3000 and "Traceback" not in err
    return err


@pytest.mark.parametrize("edit", sorted(RUN_JSON_EDITS))
def test_an_export_or_review_page_of_a_run_whose_run_json_was_edited_is_refused_and_writes_nothing(
        run_dir, tmp_path, capsys, edit):
    """`sigma export` (every format), `sigma report` and `sigma batch status` took run.json as written: a run.json
    edited or damaged after the run made the dataset card name the annotator, weights, format and corpus it said,
    the exports read again the pairs its plan or input named (another corpus, /etc/passwd), and status count the
    pairs it claimed; each exit 0. Now each holds it to its run hash first (`sigma.batch.record`, as --resume):
    `run_modified`, one line, exit 2, nothing written (no export folder, no review page)."""
    run, outs = tmp_path / "run", tmp_path / "outs"
    shutil.copytree(run_dir, run)
    outs.mkdir()
    record = json.loads((run / "run.json").read_text())
    RUN_JSON_EDITS[edit](record, _other_corpus(tmp_path))
    (run / "run.json").write_text(json.dumps(record))
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for name, argv in _readers(run, outs).items():
        err = _refused(argv, capsys)
        assert str(run / "run.json") in err, (name, err)
    assert list(outs.iterdir()) == []                                   # no export folder, file or image left
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before   # no report.html


def test_each_reader_of_a_run_reads_and_checks_its_run_json_once_and_the_restored_record_reads_as_before(
        run_dir, tmp_path, capsys, monkeypatch, run_json_reads):
    """An export read run.json four or five times (the rows, the config, the corpus, the counts for the card), each
    time as it then was. Now once per command, checked; the same record put back exports as before."""

    run, outs = tmp_path / "run", tmp_path / "outs"
    shutil.copytree(run_dir, run)
    outs.mkdir()
    reads = run_json_reads
    reads.clear()                     # what is read from here on
    for name, argv in _readers(run, outs).items():
        reads.clear()
        assert main(argv) == 0, (name, capsys.readouterr().err)
        assert reads == [run], (name, reads)
    capsys.readouterr()
    card = (outs / "hf" / "README.md").read_text()
    assert "pixel-diff" in card and json.loads((run / "run.json").read_text())["run_hash"] in card
    assert len(json.loads((outs / "benco" / "imdl_benco.json").read_text())) == 11


def test_an_edited_run_json_is_one_line_and_exit_2_from_the_real_commands(run_dir, tmp_path):
    """The same from real `sigma export hf` and `sigma report` processes: one stderr line, no traceback, no
    folder or page left."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    record = json.loads((run / "run.json").read_text())
    record["model"]["weights_sha256"] = "0" * 64                 # what the dataset card would have published
    (run / "run.json").write_text(json.dumps(record))
    for argv in (["export", "hf", str(run), str(tmp_path / "hf")], ["report", str(run)]):
        rc = subprocess.run([sys.executable, "-m", "sigma", *argv], capture_output=True, text=True, timeout=120,
                            check=False)
        assert rc.returncode == 2 and rc.stdout == "", rc
        assert rc.stderr.startswith("sigma: error [run_modified]: ") and rc.stderr.count("\n") == 1, rc.stderr
        assert "no longer hashes to run" in rc.stderr
    assert not (tmp_path / "hf").exists() and not (run / "report.html").exists()


def _as_version_1(run: Path) -> str:
    """Make a run folder what an older sigma left: record version 1 (its hash without the plan), the input path as
    typed (relative), its shard files named by that hash and their rows holding it. Returns the hash."""
    record = json.loads((run / "run.json").read_text())
    legacy = BatchConfig.model_validate(record["config"]).run_hash(record["corpus"], record["model"])
    record.update(version=1, run_hash=legacy)
    record["config"]["input"]["path"] = os.path.relpath(record["config"]["input"]["path"])
    (run / "run.json").write_text(json.dumps(record))
    rehash_shards(run, legacy)
    return legacy


def test_a_run_planned_before_the_plan_was_hashed_exports_while_its_corpus_plans_the_same_shards(run_dir, tmp_path,
                                                                                                 capsys):
    """A version 1 run (older sigma) is read as `--resume` reads it: its config, corpus and model held to its hash,
    its plan (outside that hash) checked against the corpus planned again by the readers that open the corpus.
    It exports and reviews as before; its plan edited to read another corpus is refused (run_modified)."""
    run, outs = tmp_path / "run", tmp_path / "outs"
    shutil.copytree(run_dir, run)
    outs.mkdir()
    legacy = _as_version_1(run)
    for name, argv in _readers(run, outs).items():
        assert main(argv) == 0, (name, capsys.readouterr().err)
    out = capsys.readouterr().out
    assert f"run {legacy}: 4/4 shards done" in out
    assert len(json.loads((outs / "benco" / "imdl_benco.json").read_text())) == 11
    assert legacy in (outs / "hf" / "README.md").read_text()
    record = json.loads((run / "run.json").read_text())
    record["shards"][0]["ref"]["file"] = str(_other_corpus(tmp_path) / "alpha" / "pairs.jsonl")
    (run / "run.json").write_text(json.dumps(record))
    edited = tmp_path / "edited"
    edited.mkdir()
    for name in ("hf", "imdl-benco", "coco-images", "report"):
        err = _refused(_readers(run, edited)[name], capsys)
        assert "planned by an older sigma" in err, (name, err)
    assert list(edited.iterdir()) == []
    record["config"]["threshold"] = 0.9             # outside the plan: its hash still holds the config
    (run / "run.json").write_text(json.dumps(record))
    for argv in _readers(run, edited).values():
        assert "no longer hashes to run" in _refused(argv, capsys)


def _threshold_run(corpus: Path, out: Path, threshold: str) -> str:
    assert main(["batch", "run", str(corpus), "--out", str(out), "--annotator", "pixel-diff", "--shard-size", "2",
                 "--workers", "0", "--no-progress", "--threshold", threshold]) == 0
    return json.loads((out / "run.json").read_text())["run_hash"]


def test_shard_files_swapped_between_two_runs_are_never_exported_as_this_runs_masks(tmp_path, capsys):
    """Two runs of one corpus (thresholds 0.05 and 0.9: other masks, other hashes). B's shard files put in A's
    folder under A's names, with statuses to match, were exported as A's masks (exit 0, the card naming A's run and
    threshold): the rows hold B's run hash. Now run_modified before anything is written. B's files under their
    own names are no shard of A (never exported), a file damaged in place is run_modified, not a traceback, and a
    run.json that is a link to another run's is refused or names none of this folder's shards."""
    import hashlib

    corpus = tmp_path / "set"
    write_pairs_jsonl(corpus, synthetic_pairs(6))
    a, b = tmp_path / "a", tmp_path / "b"
    hash_a, hash_b = _threshold_run(corpus, a, "0.05"), _threshold_run(corpus, b, "0.9")
    capsys.readouterr()
    outs = tmp_path / "outs"
    outs.mkdir()
    swapped = tmp_path / "swapped"
    shutil.copytree(a, swapped)
    for status in (b / "status").glob("*.json"):
        st = json.loads(status.read_text())
        name = Path(st["output"]).name.replace(hash_b, hash_a)
        shutil.copy(b / st["output"], swapped / "shards" / name)
        (swapped / "status" / status.name).write_text(json.dumps({**st, "run_hash": hash_a,
                                                                   "output": f"shards/{name}"}))
    for name, argv in _readers(swapped, outs).items():
        if name != "status":                    # its counts are the statuses', which say done
            err = _refused(argv, capsys)
            assert f"holds rows of run_hash {hash_b!r}, not this run's {hash_a!r}" in err, (name, err)
    assert list(outs.iterdir()) == [] and not (swapped / "report.html").exists()
    # one shard file moved to another shard's name in the same run: the rows are that other shard's
    moved = tmp_path / "moved"
    shutil.copytree(a, moved)
    first, second = sorted((moved / "status").glob("*.json"))[:2]
    st1, st2 = json.loads(first.read_text()), json.loads(second.read_text())
    shutil.copy(moved / st2["output"], moved / st1["output"])
    first.write_text(json.dumps({**st1, "bytes": st2["bytes"], "sha256": st2["sha256"]}))
    assert "holds rows of shard" in _refused(_readers(moved, outs)["coco"], capsys)
    # B's files under B's names in A's folder: not A's shards
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    for shard in (mixed / "shards").glob("*.parquet"):
        shard.unlink()
    for shard in (b / "shards").glob("*.parquet"):
        shutil.copy(shard, mixed / "shards" / shard.name)
    assert main(_readers(mixed, outs)["coco"]) == 2 and "[no_results]" in capsys.readouterr().err
    # a shard file damaged in place (same size, the status's size): one line, not a pyarrow traceback
    damaged = tmp_path / "damaged"
    shutil.copytree(a, damaged)
    shard = next((damaged / "shards").glob("*.parquet"))
    shard.write_bytes(b"\0" * shard.stat().st_size)
    assert "not a readable shard file" in _refused(_readers(damaged, outs)["hf"], capsys)
    assert list(outs.iterdir()) == []
    # run.json a link to another run's: out of the folder, refused; inside it (a run made in a sub-folder), it
    # names none of this folder's shard files
    linked = tmp_path / "linked"
    shutil.copytree(a, linked)
    (linked / "run.json").unlink()
    (linked / "run.json").symlink_to(b / "run.json")
    for argv in _readers(linked, outs).values():
        assert main(argv) == 2 and "[link_outside_run]" in capsys.readouterr().err
    shutil.copytree(b, linked / "inner")
    (linked / "run.json").unlink()
    (linked / "run.json").symlink_to("inner/run.json")
    assert main(_readers(linked, outs)["hf"]) == 2 and "[no_results]" in capsys.readouterr().err
    assert list(outs.iterdir()) == []
    # A as it was exports its own masks
    assert main(["export", "coco", str(a), "--out", str(outs / "a.json")]) == 0
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in (a / "shards").glob("*.parquet")} != \
        {hashlib.sha256(p.read_bytes()).hexdigest() for p in (b / "shards").glob("*.parquet")}


def test_a_run_json_of_tens_of_megabytes_is_refused_without_walking_its_shards(run_dir, tmp_path, capsys):
    """A run.json grown by appended shards (here ~16 MB; a 200 MB one took 55 s and 1.2 GB, then exported and
    counted a million pending shards, exit 0): its plan no longer hashes to the run, refused at the one read."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    record = json.loads((run / "run.json").read_text())
    extra = record["shards"][-1]
    record["shards"] += [{**extra, "key": f"k{i}", "index": len(record["shards"]) + i} for i in range(80_000)]
    (run / "run.json").write_text(json.dumps(record))
    assert (run / "run.json").stat().st_size > 15_000_000
    for argv in _readers(run, tmp_path).values():
        assert "no longer hashes to run" in _refused(argv, capsys)


def _edit_confidence(run: Path, column) -> None:
    """Replace the `confidence` column of every shard file of `run` (`column(table)` gives the new Arrow array,
    None drops it), and the status files' size and sha256 to match, as someone editing the manifests would."""
    import hashlib

    import pyarrow.parquet as pq

    for shard in sorted((run / "shards").glob("*.parquet")):
        table = pq.read_table(shard)
        index = table.schema.get_field_index("confidence")
        new = column(table)
        table = table.remove_column(index) if new is None else table.set_column(index, "confidence", new)
        pq.write_table(table, shard)
        status = next(p for p in (run / "status").iterdir()
                      if json.loads(p.read_text()).get("output") == f"shards/{shard.name}")
        record = json.loads(status.read_text())
        record.update(bytes=shard.stat().st_size, sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
        status.write_text(json.dumps(record))


def test_a_nan_or_infinite_confidence_is_no_confidence_to_the_filters_and_the_order(run_dir, tmp_path, capsys):
    """NaN < 0.5 is False: a row whose confidence was NaN passed `--min-confidence 0.5` and was exported (score
    null) among the confident pairs, an inf one too; and a NaN sort key left `--sort confidence` in no order. Such a
    confidence is none now (sigma.types.confidence_value): it fails every bound and sorts last either way."""
    import pyarrow as pa

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    # the first three rows have none, the others 0.95, 0.9, ... 0.55, 0.5, 0.45, ...: corpus order is descending
    values = iter([float("nan"), float("inf"), float("-inf"), *(0.95 - 0.05 * i for i in range(20))])

    def confidences(table):
        return pa.array([next(values) for _ in range(table.num_rows)], pa.float64())

    _edit_confidence(run, confidences)
    assert main(["export", "coco", str(run), "--out", str(tmp_path / "c.json"), "--min-confidence", "0.5",
                 "--sort", "confidence"]) == 0
    coco = json.loads((tmp_path / "c.json").read_text())
    scores = [a["score"] for a in coco["annotations"]]
    assert scores and None not in scores and all(s >= 0.5 for s in scores) and scores == sorted(scores, reverse=True)
    assert main(["export", "imdl-benco", str(run), "--out", str(tmp_path / "b"), "--sort", "confidence-asc",
                 "--relative"]) == 0
    names = [Path(tp).stem for tp, _ in json.loads((tmp_path / "b" / "imdl_benco.json").read_text())]
    rows = {r["pair_id"].replace("/", "_"): r["confidence"] for r in load_rows(run)}
    finite = [rows[n] for n in names if rows[n] is not None and np.isfinite(rows[n])]
    assert finite == sorted(finite) and len(finite) == len(names) - 3
    assert all(not np.isfinite(rows[n]) for n in names[-3:])      # the three without a confidence, last
    assert main(["report", str(run), "--out", str(tmp_path / "page.html"), "--min-confidence", "0.5",
                 "--sort", "confidence"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["items"] == len(coco["images"])


def test_a_shard_file_without_a_float_confidence_column_is_refused_not_a_traceback(run_dir, tmp_path, capsys):
    """A shard file without `confidence` was a KeyError traceback in every export and the review page, one whose
    `confidence` is text a TypeError at the first bound or sort: both are run_modified (exit 2, nothing written)."""
    import pyarrow as pa

    for name, column in (("missing", lambda table: None),
                         ("text", lambda table: pa.array(["high"] * table.num_rows, pa.string()))):
        run = tmp_path / name
        shutil.copytree(run_dir, run)
        _edit_confidence(run, column)
        for argv in (["export", "coco", str(run), "--out", str(tmp_path / f"{name}.json"), "--min-confidence", "0.5"],
                     ["export", "imdl-benco", str(run), "--out", str(tmp_path / f"{name}-b"), "--sort", "confidence"],
                     ["report", str(run), "--out", str(tmp_path / f"{name}.html"), "--sort", "confidence"]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert "[run_modified]" in err and "confidence" in err and "Traceback" not in err, err
        assert not list(tmp_path.glob(f"{name}.*")) and not (tmp_path / f"{name}-b").exists()


def test_a_lower_bound_above_its_upper_bound_is_refused(run_dir, tmp_path, capsys):
    """`--min-confidence 0.5 --max-confidence 0.1` passes no pair: the review page was written with an empty
    gallery (exit 0), the exports said only 'nothing to export'. Now the flags are refused, naming both."""
    for argv in (["report", str(run_dir), "--out", str(tmp_path / "p.html")],
                 ["export", "coco", str(run_dir), "--out", str(tmp_path / "c.json")]):
        for low, high in (("--min-confidence", "--max-confidence"), ("--min-area", "--max-area")):
            if argv[0] == "report" and low == "--min-area":
                continue
            assert main([*argv, low, "0.5", high, "0.1"]) == 2
            err = capsys.readouterr().err
            assert "[bad_arguments]" in err and f"{low} 0.5 is above {high} 0.1" in err, err
    assert not (tmp_path / "p.html").exists() and not (tmp_path / "c.json").exists()


def test_a_plugins_confidence_that_is_no_finite_number_is_recorded_as_none(tmp_path):
    """A row's confidence is what every reader takes: an annotator's inf was written as inf (kept by every
    --min-confidence, 'score': null in COCO) and its 10**400 made the pair annotator_failed (OverflowError); both
    are None now, as NaN and text were, and the pair is annotated."""
    from typing import Any, ClassVar

    from sigma.annotators.pixel_diff import PixelDiff
    from sigma.registry import ANNOTATORS

    values = [float("inf"), 10 ** 400, "high", 0.7]

    class OddConfidence(PixelDiff):
        name: ClassVar[str] = "test-odd-confidence"

        def _predict_batch(self, pairs) -> list[tuple[np.ndarray, dict[str, Any]]]:
            return [(prob, {"confidence": values[int(pair.pair_id.rsplit("p", 1)[-1])]})
                    for pair, (prob, _) in zip(pairs, super()._predict_batch(pairs))]

    if OddConfidence.name not in ANNOTATORS:
        ANNOTATORS.register(OddConfidence.name, "test: odd confidences")(lambda **kw: OddConfidence(**kw))
    write_pairs_jsonl(tmp_path / "data", synthetic_pairs(len(values)))
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "data")}, "annotator": OddConfidence.name,
                                      "workers": 0})
    run_batch(cfg, tmp_path / "run", progress=False)
    rows = sorted(load_rows(tmp_path / "run", RowFilter(include_errors=True)), key=lambda r: r["index"])
    assert [(r["status"], r["confidence"]) for r in rows] == [("ok", None), ("ok", None), ("ok", None), ("ok", 0.7)]


@pytest.mark.timeout(120)
def test_an_output_fifo_no_process_reads_is_an_error_within_seconds_not_a_hang(run_dir, tmp_path):
    """`sigma export coco --out P`, `sigma report --out P` and `sigma parse --file F --out P` with P a FIFO no process
    reads: the plain open of its write end waits for a reader, so each hung for ever after all of its work, without
    a word. Now `out_no_reader` after a bounded wait (`STREAM_READER_WAIT_S`), exit 2, the FIFO left as it is. Real
    processes, each bounded by `timeout=`: a regression fails the test instead of hanging it."""
    from sigma.batch.layout import STREAM_READER_WAIT_S

    fifo = tmp_path / "out.pipe"
    os.mkfifo(fifo)
    lines = tmp_path / "lines.jsonl"
    lines.write_text(json.dumps({"instruction": "remove the dog"}) + "\n")
    commands = (["export", "coco", str(run_dir), "--out", str(fifo)], ["report", str(run_dir), "--out", str(fifo)],
                ["parse", "--file", str(lines), "--out", str(fifo)])
    procs = [subprocess.Popen([sys.executable, "-m", "sigma", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for argv in commands]
    try:
        for argv, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=STREAM_READER_WAIT_S + 60)
            assert proc.returncode == 2 and "Traceback" not in err, (argv, err)
            assert err.startswith(f"sigma: error [out_no_reader]: {fifo}: a FIFO that no process reads"), (argv, err)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


_THREADS_STARTED_BY_READS = """
import os, sys
import pyarrow.parquet
from sigma.export.select import load_rows
from sigma.io.corpora import open_corpus

def threads():
    return set(os.listdir("/proc/self/task"))

before = threads()
load_rows(sys.argv[1])                                  # a run's shards: checked (outputs), then read (iter_rows)
corpus = open_corpus(sys.argv[2], preset="magicbrush", shard_size=2)
for shard in corpus.plan():
    list(corpus.read(shard))
print(len(threads() - before))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="threads counted through /proc (Linux)")
def test_reading_a_runs_shards_or_a_parquet_corpus_starts_no_pyarrow_thread(run_dir, tmp_path):
    """pyarrow read the handles SIGMA gives it on its own pools too (`pq.read_table`: the dataset scan; a
    `ParquetFile` pre-buffering on its IO pool, decoding on its CPU pool), whose threads still released buffers of
    the handle's bytes after the read had returned: one that came while the interpreter exited ended `sigma export
    coco` and `sigma export hf` now and then (3 in 300 here, one CI run) with `terminate called without an active
    exception` under their last line, status -6. Every read is on the caller's thread now: a fresh process (the
    pools are per process, and live once started) has the threads after reading both kinds of parquet that it had
    before, pyarrow imported."""
    corpus = write_parquet(tmp_path / "mb.parquet", synthetic_pairs(4), "magicbrush", row_group_size=2)
    proc = subprocess.run([sys.executable, "-c", _THREADS_STARTED_BY_READS, str(run_dir), str(corpus)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0"], (proc.stdout, proc.stderr)


_NOT_A_FOLDER = "[out_not_a_folder]"


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("argv", "code", "named"), [
    (["coco", "RUN", "--out", "OUT/c.json", "--images", "/dev/null"], _NOT_A_FOLDER, "/dev/null"),
    (["coco", "RUN", "--out", "OUT/c.json", "--images", "FIFO"], _NOT_A_FOLDER, "FIFO"),
    (["imdl-benco", "RUN", "--out", "/dev/stdout"], _NOT_A_FOLDER, "/dev/stdout"),
    (["imdl-benco", "RUN", "--out", "/dev/zero"], _NOT_A_FOLDER, "/dev/zero"),
    (["imdl-benco", "RUN", "--out", "FIFO"], _NOT_A_FOLDER, "FIFO"),
    (["hf", "RUN", "/dev/null"], _NOT_A_FOLDER, "/dev/null"),
    (["hf", "RUN", "FIFO"], _NOT_A_FOLDER, "FIFO"),
    (["coco", "RUN", "--out", "OUT"], "[out_is_a_folder]", "OUT"),
    (["coco", "RUN", "--out", "/dev/null"], None, None),
], ids=["coco-images-devnull", "coco-images-fifo", "imdl-stdout-pipe", "imdl-devzero", "imdl-fifo", "hf-devnull",
        "hf-fifo", "coco-out-folder", "coco-out-devnull"])
def test_a_device_fifo_or_folder_given_as_an_exports_output_is_named_in_one_line(run_dir, tmp_path, argv, code,
                                                                                   named):
    """Where an export writes a folder (imdl-benco and hf OUT, coco --images), a device or a FIFO is
    `out_not_a_folder` naming what was given, before any work; where it writes one file (coco --out) a folder is
    `out_is_a_folder`, and a device is written to as a stream (`/dev/null`: the user's explicit choice, as a shell's
    `> /dev/null`). Before, `--images /dev/null` or a FIFO was `os_error` "File exists" after the run and its corpus
    were read, and imdl-benco `--out /dev/stdout` with stdout a pipe was `bad_outdir` naming `/proc/PID/fd/pipe:[N]`
    (the path resolved through the link), not what the user typed. Real processes, each bounded by `timeout=`; stdout
    is a pipe, stdin /dev/null."""
    fifo = tmp_path / "out.pipe"
    os.mkfifo(fifo)
    (tmp_path / "out").mkdir()
    swap = {"RUN": str(run_dir), "FIFO": str(fifo), "OUT": str(tmp_path / "out")}
    args = [swap.get(a, a.replace("OUT/", f"{tmp_path / 'out'}/")) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "sigma", "export", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    if code is None:
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.splitlines()[0])["images"] == 11
    else:
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert proc.stderr.startswith(f"sigma: error {code}: {swap.get(named, named)}: "), proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(os.listdir(tmp_path / "out")) == []


@pytest.mark.timeout(60)
def test_an_output_fifo_whose_reader_comes_late_gets_the_whole_export(run_dir, tmp_path, capsys):
    """A reader started just after the export (`sigma export coco RUN --out p & gzip < p > x.gz`) is waited for, and
    the export is written through the write end that found it."""
    fifo = tmp_path / "out.pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def read_late() -> None:
        time.sleep(1.0)
        with open(fifo, "rb") as handle:
            got.append(handle.read())

    reader = threading.Thread(target=read_late, daemon=True)
    reader.start()
    assert main(["export", "coco", str(run_dir), "--out", str(fifo)]) == 0
    reader.join(timeout=30)
    assert len(json.loads(got[0])["images"]) == 11


@pytest.mark.timeout(60)
def test_coco_to_a_fifo_no_process_reads_writes_no_image_before_it_is_refused(run_dir, tmp_path, capsys,
                                                                                monkeypatch):
    """`sigma export coco RUN --out FIFO --images DIR` with no reader on FIFO: the images were placed into DIR (made
    for them) first, and only the JSON's write was then `out_no_reader`: DIR held the images of an export that said it
    failed. Now the FIFO's reader is found before anything is written (`output_file`): no reader, no DIR. With a
    reader the export goes on, through the write end that found it."""
    import sigma.batch.layout as layout

    monkeypatch.setattr(layout, "STREAM_READER_WAIT_S", 0.3)     # the wait is the same code at any length
    fifo, images = tmp_path / "out.pipe", tmp_path / "images"
    os.mkfifo(fifo)
    argv = ["export", "coco", str(run_dir), "--out", str(fifo), "--images", str(images)]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"sigma: error [out_no_reader]: {fifo}: ")
    assert not images.exists() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as handle:
            got.append(handle.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert main(argv) == 0
    reader.join(timeout=30)
    assert sorted(i["file_name"] for i in json.loads(got[0])["images"]) == sorted(os.listdir(images))
    assert len(os.listdir(images)) == 11


@pytest.mark.timeout(120)
def test_imdl_benco_overwrite_replaces_a_fifo_in_its_json_place_with_the_file(run_dir, tmp_path):
    """`sigma export imdl-benco RUN --out OUT --overwrite` with OUT/imdl_benco.json a FIFO some process reads: the
    list was streamed into the FIFO, the export said done and OUT held no JSON (IMDL-BenCo reads the file). The JSON
    is a file of OUT's, which the export holds: a FIFO there is replaced by the file, atomically, as export hf
    replaces a FIFO README.md (without --overwrite both are `out_not_empty`). Real processes; the reader is a read
    end held open (non-blocking), so a write into the FIFO would have found it."""
    out = tmp_path / "benco"
    out.mkdir()
    listing = out / "imdl_benco.json"
    os.mkfifo(listing)
    reader = os.open(listing, os.O_RDONLY | os.O_NONBLOCK)
    try:
        def export(*flags: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "sigma", "export", "imdl-benco", str(run_dir), "--out",
                                   str(out), *flags], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=90, check=False)

        refused = export()
        assert refused.returncode == 2 and "[out_not_empty]" in refused.stderr, refused.stderr
        assert stat.S_ISFIFO(os.lstat(listing).st_mode)
        done = export("--overwrite")
        assert done.returncode == 0, done.stderr
        try:
            streamed = os.read(reader, 1 << 16)
        except BlockingIOError:
            streamed = b""
    finally:
        os.close(reader)
    assert streamed == b""
    assert stat.S_ISREG(os.lstat(listing).st_mode)
    entries = json.loads(listing.read_text())
    assert len(entries) == 11 and all(Path(tp).is_file() for tp, _ in entries)


def _hostile_named_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run of a corpus whose folder is named `<!--<script>`, as the page's data block says it (`input`)."""
    corpus = write_folder(tmp_path / "<!--<script>", synthetic_pairs(2, size=32))
    run = tmp_path / "run"
    assert main(["batch", "run", str(corpus), "--out", str(run), "--annotator", "pixel-diff", "--workers", "0",
                 "--no-progress"]) == 0
    assert main(["report", str(run)]) == 0
    return corpus, run / "report.html"


def test_review_page_data_block_holds_no_markup_from_a_path(tmp_path, capsys):
    """Only `</` was escaped in the page's JSON data block: a corpus path (or set name) holding `<!--<script>`
    put the script element into HTML's double-escaped state, where the page's own `</script>` did not end it and
    the filter script after it was swallowed as data. Now every `<`, `>` and `&` in the block is a JSON escape."""
    corpus, page = _hostile_named_run(tmp_path)
    html = page.read_text()
    block = html.split('<script type="application/json" id="data">', 1)[1].split("</script>", 1)[0]
    assert not set("<>&") & set(block)
    assert json.loads(block)["run"]["input"] == str(corpus)
    capsys.readouterr()


@pytest.mark.chromium
def test_review_page_filters_run_in_chromium_whatever_the_corpus_path(tmp_path, capsys):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    _, page = _hostile_named_run(tmp_path)
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'p'}", "--dump-dom", page.as_uri()],
                         capture_output=True, timeout=90, text=True, check=True).stdout
    assert "2 of 2 shown" in dom                # the filter script ran
    capsys.readouterr()


def test_an_export_of_an_unfinished_run_says_so_and_the_card_tells_the_dataset_is_partial(run_dir, tmp_path, capsys):
    """An export of a run whose shards are not all done (a `sigma batch run` still running beside it, or killed and
    never resumed) wrote the finished shards alone, exit 0, without a word, and the dataset card counted the pairs
    annotated as if they were the corpus: a dataset of half the corpus passed for the whole. Now every export (and
    the review page) says on stderr how many shards are missing, and the card says the run was not finished; an
    export of a finished run says nothing of it."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    statuses = sorted((run / "status").glob("*.json"))
    assert len(statuses) == 4
    for fmt, args in (("coco", ["--out", str(tmp_path / "whole.json")]), ("hf", [str(tmp_path / "whole_hf")])):
        assert main(["export", fmt, str(run), *args]) == 0
        assert "not done" not in capsys.readouterr().err
    assert "not finished" not in (tmp_path / "whole_hf" / "README.md").read_text()
    statuses[1].unlink()                          # that shard's status gone: pending, as a kill before it leaves it
    for fmt, args in (("coco", ["--out", str(tmp_path / "part.json")]),
                      ("imdl-benco", ["--out", str(tmp_path / "benco")]), ("hf", [str(tmp_path / "part_hf")])):
        assert main(["export", fmt, str(run), *args]) == 0, fmt
        err = capsys.readouterr().err
        assert f"{run}: 1 of the run's 4 shards are not done" in err and "3 finished ones only" in err, (fmt, err)
        assert "--resume" in err
    card = (tmp_path / "part_hf" / "README.md").read_text()
    assert "The run was not finished when this was exported**: 1 of its 4 shards (of 12 planned pairs in all)" in card
    assert len(json.loads((tmp_path / "part.json").read_text())["images"]) < len(
        json.loads((tmp_path / "whole.json").read_text())["images"])


def test_every_exports_summary_counts_the_unfinished_shards_for_scripts(run_dir, tmp_path, capsys):
    """An export of an unfinished run said so on stderr only: the summary it prints (one JSON line on stdout, what a
    script reads) had no field for it, so a pipeline could not tell a partial dataset from a whole one. Now each
    format's summary holds `unfinished_shards`: 0 for a finished run, the count of shards not done otherwise; and so
    does the review page's (`sigma report`), which had no such field after the exports got theirs."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)

    def summaries(tag: str) -> dict[str, int]:
        counts = {}
        for fmt, args in (("coco", ["--out", str(tmp_path / f"{tag}.json")]),
                          ("imdl-benco", ["--out", str(tmp_path / f"{tag}_benco")]),
                          ("hf", [str(tmp_path / f"{tag}_hf")])):
            assert main(["export", fmt, str(run), *args]) == 0, fmt
            counts[fmt] = json.loads(capsys.readouterr().out.splitlines()[0])["unfinished_shards"]
        assert main(["report", str(run), "--out", str(tmp_path / f"{tag}.html")]) == 0
        counts["report"] = json.loads(capsys.readouterr().out.splitlines()[0])["unfinished_shards"]
        return counts

    assert summaries("whole") == {"coco": 0, "imdl-benco": 0, "hf": 0, "report": 0}
    sorted((run / "status").glob("*.json"))[1].unlink()      # that shard pending, as a kill before its status leaves it
    assert summaries("part") == {"coco": 1, "imdl-benco": 1, "hf": 1, "report": 1}


def test_the_review_pages_rho_reads_the_runs_confidences(run_dir, tmp_path, capsys):
    """The page's per-set `conf_rho` (Spearman's rho between confidence and F1, as `sigma eval` reports it) was null
    for every run: the scores it was computed from carried no confidence. It is the rho of the rows now, and still
    null ("undefined") where every confidence is the same."""
    import pyarrow as pa

    from sigma.eval.metrics import spearman

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    rows = load_rows(run, RowFilter(include_errors=True))
    # a confidence that ranks the masks (their F1) but not exactly: rho is neither 0, 1 nor undefined
    by_key = {(r["shard"], r["index"]): (r["gt_f1"] or 0.0) + 0.2 * ((r["index"] * 7) % 3) for r in rows}

    def ranked(table):
        keys = zip(table.column("shard").to_pylist(), table.column("index").to_pylist())
        return pa.array([by_key[k] for k in keys], pa.float64())

    _edit_confidence(run, ranked)
    rows = load_rows(run, RowFilter(include_errors=True))
    page = tmp_path / "page.html"

    def page_rho() -> dict:
        assert main(["report", str(run), "--out", str(page)]) == 0
        block = page.read_text().split('<script type="application/json" id="data">', 1)[1].split("</script>", 1)[0]
        return {s: m["conf_rho"] for s, m in json.loads(block)["metrics"].items()}

    scored = [r for r in rows if r["status"] == "ok" and r["gt_fraction"]]
    want = {s: spearman([r["confidence"] for r in scored if s in ("overall", r["subset"])],
                        [r["gt_f1"] for r in scored if s in ("overall", r["subset"])])
            for s in ("alpha", "beta", "overall")}
    got = page_rho()
    assert set(got) == set(want) and all(np.isfinite(v) for v in want.values())
    assert got == pytest.approx(want)
    _edit_confidence(run, lambda table: pa.array([0.5] * table.num_rows, pa.float64()))
    assert page_rho() == {"alpha": None, "beta": None, "overall": None}
    capsys.readouterr()


def _edit_column(run: Path, name: str, value) -> None:
    """Every row of every shard file of `run` given `value` in column `name` (its type kept), and the status files'
    size and sha256 to match, as someone editing the manifests would."""
    import pyarrow as pa

    def column(table):
        return pa.array([value] * table.num_rows, table.schema.field(name).type)

    if name == "confidence":
        _edit_confidence(run, column)
        return
    import hashlib

    import pyarrow.parquet as pq

    for shard in sorted((run / "shards").glob("*.parquet")):
        table = pq.read_table(shard)
        pq.write_table(table.set_column(table.schema.get_field_index(name), name, column(table)), shard)
        status = next(p for p in (run / "status").iterdir()
                      if json.loads(p.read_text()).get("output") == f"shards/{shard.name}")
        record = json.loads(status.read_text())
        record.update(bytes=shard.stat().st_size, sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
        status.write_text(json.dumps(record))


@pytest.mark.parametrize("name, value, says", [
    ("height", 2 ** 31 - 1, "a mask of 2147483647 x 64 pixels"),       # a segmentation fault in the mask's decode
    ("width", -5, "a mask of 64 x -5 pixels"),                           # OverflowError
    ("gt_tp", None, "its ground-truth scores"),                          # TypeError in the page's metrics
    ("bbox", None, "its mask (rle_counts, bbox, area, area_fraction)"),  # TypeError in the COCO export
])
def test_a_row_no_run_writes_is_run_modified_in_every_reader(run_dir, tmp_path, name, value, says):
    """A shard edited with its status's sha256 made to match passed the column check with values no run writes: the
    review page and the IMDL-BenCo export died of a segmentation fault on a height of 2**31-1, a negative width was
    an OverflowError traceback, a null gt_tp a TypeError in the page's metrics, a null bbox one in the COCO
    export. Each is now one run_modified line naming the shard and the pair, exit 2, in every reader."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    _edit_column(run, name, value)
    readers = {"report": ["report", str(run), "--out", str(tmp_path / "page.html")],
               "coco": ["export", "coco", str(run), "--out", str(tmp_path / "c.json")],
               "imdl-benco": ["export", "imdl-benco", str(run), "--out", str(tmp_path / "b")]}
    for reader, argv in readers.items():
        done = subprocess.run([sys.executable, "-m", "sigma", *argv], capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 2, (reader, done.returncode, done.stderr[-2000:])
        assert done.stderr.startswith("sigma: error [run_modified]: ") and done.stderr.count("\n") == 1, done.stderr
        assert says in done.stderr and "not a shard file as the run wrote it" in done.stderr, done.stderr
    assert not (tmp_path / "page.html").exists() and not (tmp_path / "c.json").exists()


@pytest.mark.chromium
def test_a_review_link_with_a_value_the_page_lacks_keeps_that_controls_default(run_dir, tmp_path):
    """`report.html?sort=bogus` (a typo, `area` without its direction, `f1:asc` from a run with ground truth) set
    the select to a value it has no option for: an empty dropdown, and the sort compared undefined keys. Now the
    control keeps its default, shown selected; known values still apply. The page's body says the view it applied."""
    flags, page = _review_page_in_headless_chromium(run_dir, tmp_path)

    def body(query: str) -> str:
        dom = subprocess.run([*flags, f"--user-data-dir={tmp_path / 'p'}", "--dump-dom", f"{page.as_uri()}?{query}"],
                             capture_output=True, timeout=90, text=True, check=True).stdout
        return re.search(r"<body[^>]*>", dom).group(0)

    for query, says in (("sort=bogus", ['data-sort="confidence:asc"']),
                        ("sort=area&type=remove", ['data-sort="confidence:asc"', 'data-type="remove"']),
                        ("sort=area%3Adesc", ['data-sort="area:desc"']),
                        ("type=nosuch&set=nosuch&minconf=abc",
                         ['data-type=""', 'data-set=""', 'data-minconf="0"', 'data-shown="7"'])):
        tag = body(query)
        for said in says:
            assert said in tag, (query, tag)


def test_a_confidence_bound_on_a_run_without_confidence_says_why_nothing_is_kept(run_dir, tmp_path, capsys):
    """pixel-diff gives no confidence, so `--min-confidence 0.5` keeps no pair: every export said only 'no pair of
    the run passes the export filters', and `sigma report` wrote an empty gallery with exit 0, its summary saying
    `pairs_ok: 0` of a run of 11 good pairs. Now each says that no pair has a confidence; the page counts the
    run's good pairs and those within the bounds apart."""
    for argv in (["export", "imdl-benco", str(run_dir), "--out", str(tmp_path / "b"), "--min-confidence", "0.5"],
                 ["export", "coco", str(run_dir), "--out", str(tmp_path / "c.json"), "--max-confidence", "0.9"],
                 ["export", "hf", str(run_dir), str(tmp_path / "h"), "--min-confidence", "0.5"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "[no_results]" in err and "none of the run's 11 pairs has a confidence" in err, err
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r.html"), "--min-confidence", "0.5"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["pairs_ok"] == 11 and summary["pairs_in_bounds"] == 0 and summary["items"] == 0, summary
    assert "gallery is empty: none of the run's 11 pairs has a confidence" in err, err
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r2.html")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["pairs_in_bounds"] == 11 and "warning" not in err


def test_a_killed_reports_temporary_page_is_swept_by_the_next_report(run_dir, tmp_path, capsys):
    """`sigma report` killed between writing its page's temporary file and renaming it left `.report.html.PID.
    RANDOM.tmp` (a whole page, thumbnails inlined: megabytes) beside the page for good, one per kill; the next
    report did not remove it. Now a report sweeps its page's temporary files whose writer is dead (that name only,
    never a live writer's: the folder is anyone's), as `export coco` does for its JSON."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = proc.pid
    folder = tmp_path / "pages"
    folder.mkdir()
    left = folder / f".page.html.{dead}.0123abcd.tmp"
    live = folder / f".page.html.{os.getpid()}.0123abcd.tmp"
    other = folder / f".other.html.{dead}.0123abcd.tmp"
    for path in (left, live, other):
        path.write_text("<html>cut short")
    assert main(["report", str(run_dir), "--out", str(folder / "page.html")]) == 0
    capsys.readouterr()
    assert not left.exists() and live.exists() and other.exists()
    assert (folder / "page.html").stat().st_size > 1000


@pytest.mark.parametrize("argv, example", [
    (["report", "RUN", "--out", "OUT/zz/"], "OUT/zz/report.html"),
    (["report", "RUN", "--out", "OUT/zz/."], "OUT/zz/./report.html"),
    (["export", "coco", "RUN", "--out", "OUT/zz/"], "OUT/zz/coco.json"),
    (["parse", "--file", "TXT", "--out", "OUT/zz/"], "OUT/zz/parses.jsonl"),
], ids=["report", "report-dot", "coco", "parse"])
def test_an_output_file_named_with_a_trailing_slash_is_refused_as_a_folder(run_dir, tmp_path, capsys, argv, example):
    """`sigma report RUN --out run/zz/` wrote a file named `zz` (`Path` drops the trailing slash), as did `export coco
    --out` and `parse --out`: the slash says a folder. Now `out_is_a_folder` before any work, suggesting a file in
    it, and nothing is written."""
    out = tmp_path / "out"
    out.mkdir()
    txt = tmp_path / "i.txt"
    txt.write_text("add a cat to the sofa\n")
    swap = {"RUN": str(run_dir), "TXT": str(txt)}
    args = [swap.get(a, a.replace("OUT/", f"{out}/")) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sigma: error [out_is_a_folder]: {out}/zz/"), err
    assert err.rstrip().endswith(f"e.g. {example.replace('OUT/', f'{out}/')}"), err
    assert sorted(os.listdir(out)) == []
