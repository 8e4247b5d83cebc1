"""Synthetic-edit engine: determinism from a seed, mask/label sanity per edit type, `sigma synth` output."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sigma.cli import main
from sigma.data.synth import edits as E
from sigma.data.synth import masks as M
from sigma.data.synth.engine import SynthConfig, SynthEngine


def make_photos(folder: Path, n: int = 3, size: tuple[int, int] = (96, 128)) -> Path:
    """Procedural 'photos' (smooth colour fields + texture + shapes), so tests need no ../shared."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        h, w = size
        base = cv2.resize(rng.uniform(0, 255, (4, 5, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        base += rng.normal(0, 12, (h, w, 3))
        img = np.clip(base, 0, 255).astype(np.uint8)
        cv2.circle(img, (int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20))), 15,
                   tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        cv2.imwrite(str(folder / f"p{i}.png"), img[..., ::-1])
    return folder


@pytest.fixture
def photos(tmp_path):
    return make_photos(tmp_path / "photos")


@pytest.mark.parametrize("shape", sorted(M.SHAPES))
def test_each_mask_shape_is_nonempty_and_near_its_area(shape):
    rng = np.random.default_rng(3)
    for area in (0.01, 0.1, 0.4):
        m = M.SHAPES[shape](rng, 96, 96, area)
        assert m.dtype == bool and m.shape == (96, 96) and m.any()
        if shape != "thin":   # thin structures ignore the area by design
            assert area / 4 < m.mean() < min(1.0, area * 3), (shape, area, m.mean())


def test_random_masks_cover_the_area_range():
    rng = np.random.default_rng(0)
    fr = [M.random_mask(rng, 64, 64, {"blob": 1, "ellipse": 1, "brush": 1})[0].mean() for _ in range(60)]
    assert min(fr) < 0.02 and max(fr) > 0.2 and all(f > 0 for f in fr)


@pytest.mark.parametrize("kind", ["remove", "splice", "attribute"])
def test_local_edits_change_inside_the_mask_only(kind):
    rng = np.random.default_rng(1)
    h, w = 96, 96
    yy, xx = np.mgrid[0:h, 0:w]
    texture = np.random.default_rng(5).normal(0, 20, (h, w, 3))   # flat gradients hide blur/sharpen
    base = np.clip(np.stack([xx * 2, yy * 2, (xx + yy)], 2) + texture + 30, 0, 255).astype(np.uint8)
    donor = base[::-1, ::-1].copy()
    mask = np.zeros((h, w), bool)
    mask[30:60, 20:70] = True
    for _trial in range(5):
        params = E.SAMPLERS[kind](rng, h, w)
        params["feather"] = 0.0
        out = E.APPLIERS[kind](base, donor, mask, params)
        diff = np.abs(out.astype(int) - base.astype(int)).sum(2)
        far = ~cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert diff[far].max() == 0, f"{kind} changed pixels far outside its mask"
        assert diff[mask].mean() > 0.5, f"{kind} changed nothing inside its mask"


def test_engine_is_deterministic_and_labels_follow_the_kind(photos):
    cfg = SynthConfig(photos=str(photos), crop=48)
    a, b = SynthEngine(cfg, seed=7), SynthEngine(cfg, seed=7)
    other = SynthEngine(cfg, seed=8)
    kinds = set()
    for i in range(40):
        s, t = a.sample(i), b.sample(i)
        assert np.array_equal(s.original, t.original) and np.array_equal(s.edited, t.edited)
        assert np.array_equal(s.mask, t.mask) and s.kind == t.kind
        assert s.original.shape == s.edited.shape == (48, 48, 3) and s.mask.shape == (48, 48)
        kinds.add(s.kind)
        if s.kind == "none":
            assert not s.mask.any() and s.edit_type is None
        elif s.kind == "global":
            assert s.mask.all() and s.edit_type == "global"
        else:
            assert s.mask.any() and s.edit_type in ("add", "remove", "replace", "attribute")
            diff = np.abs(s.original.astype(int) - s.edited.astype(int)).mean(2)
            assert diff[s.mask].mean() > 1.0
    assert {"remove", "splice", "attribute"} <= kinds
    assert any(not np.array_equal(a.sample(i).edited, other.sample(i).edited) for i in range(5))


def test_no_edit_pairs_differ_only_by_perturbation(photos):
    cfg = SynthConfig(photos=str(photos), crop=48, mix={"none": 1.0})
    eng = SynthEngine(cfg, seed=0)
    for i in range(10):
        s = eng.sample(i)
        assert not s.mask.any() and s.kind == "none"
        diff = np.abs(s.original.astype(int) - s.edited.astype(int))
        assert diff.mean() < 25   # perturbed, never edited


def test_sigma_synth_writes_the_eval_layout(photos, tmp_path):
    from sigma.cli import main
    from sigma.io.pairs_jsonl import read_set

    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "-n", "5", "--seed", "3", "--photos", str(photos), "crop=48"]) == 0
    recs = list(read_set(out))
    assert len(recs) == 5
    for r in recs:
        assert r.original.is_file() and r.edited.is_file() and r.mask.is_file()
    first = json.loads((out / "pairs.jsonl").read_text().splitlines()[0])
    assert first["synth"]["kind"] in ("none", "remove", "splice", "attribute", "global", "latent")
    again = tmp_path / "again"
    assert main(["synth", "--out", str(again), "-n", "5", "--seed", "3", "--photos", str(photos), "crop=48"]) == 0
    assert (out / recs[2].edited.name).read_bytes() == (again / recs[2].edited.name).read_bytes()


def test_sigma_synth_into_a_set_it_did_not_write_is_refused_and_the_set_is_kept(photos, tmp_path, capsys):
    """`sigma synth --out SET` where SET is a set of the user's (a pairs.jsonl of its own, no synth_config.yaml)
    removed its pairs.jsonl and wrote the synthetic pairs' in its place: the set's manifest gone, its images listed by
    nothing. Now out_not_empty, nothing written (no .lock either); a set synth wrote is rewritten as before."""
    from test_eval import make_pair_set

    from sigma.cli import main

    real = make_pair_set(tmp_path, "real", 2)
    before = {p.name: p.read_bytes() for p in real.iterdir()}
    assert main(["synth", "--out", str(real), "-n", "1", "--photos", str(photos), "--no-progress", "crop=48"]) == 2
    err = capsys.readouterr().err
    assert "[out_not_empty]" in err and "holds a pairs.jsonl that sigma synth did not write" in err, err
    assert {p.name: p.read_bytes() for p in real.iterdir()} == before
    out = tmp_path / "synth"
    for n in (2, 1):
        assert main(["synth", "--out", str(out), "-n", str(n), "--photos", str(photos), "--no-progress",
                     "crop=48"]) == 0
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 1


def test_sigma_synth_pngs_are_on_disk_before_the_pairs_jsonl_that_names_them(photos, tmp_path):
    """`sigma synth` renamed its PNGs from the page cache (no fsync), then pairs.jsonl, and synced nothing: a power cut
    after "N pairs in OUT/pairs.jsonl" could leave a pairs.jsonl naming PNGs empty, cut short or missing, or lose
    OUT itself. In a real run now, OUT's parent is synced once OUT is made, every PNG's temporary file is fsynced
    before its rename, OUT after the last PNG and before pairs.jsonl's rename (its own bytes fsynced), and OUT after
    it, and synth_config.yaml the same way."""
    import subprocess
    import sys

    from killers import RECORD_SYNCS

    out, log, script = tmp_path / "synth", tmp_path / "events.json", tmp_path / "record.py"
    script.write_text(RECORD_SYNCS)
    proc = subprocess.run([sys.executable, str(script), str(log), "synth", "--out", str(out), "-n", "3", "--seed", "3",
                           "--photos", str(photos), "--no-progress", "crop=48"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    events = json.loads(log.read_text())
    records = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    listed = {str(out / r[key]) for r in records for key in ("original", "edited", "mask")}
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] in listed]
    assert len(renames) == len(listed) == 9, events
    for at in renames:            # each PNG's bytes before its name
        assert ["fsync", events[at][1]] in events[:at], events
    commit = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(out / "pairs.jsonl"))
    assert max(renames) < commit and ["fsync", events[commit][1]] in events[:commit], events
    assert ["fsync", str(tmp_path)] in events[:min(renames)], events        # OUT's own entry, once made
    assert ["fsync", str(out)] in events[max(renames) + 1:commit], events   # the PNGs' names before the listing
    assert ["fsync", str(out)] in events[commit + 1:], events               # pairs.jsonl's own name
    config = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(out / "synth_config.yaml"))
    assert ["fsync", events[config][1]] in events[:config], events            # its bytes before its name
    assert ["fsync", str(out)] in events[config + 1:], events                 # and its name


def test_sigma_synth_writes_the_copymove_and_inpaint_kinds(photos, tmp_path):
    from sigma.cli import main

    out = tmp_path / "kinds"
    assert main(["synth", "--out", str(out), "-n", "6", "--seed", "1", "--photos", str(photos), "crop=48",
                 "mix={copymove: 1.0, inpaint: 1.0}"]) == 0
    recs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    kinds = {r["synth"]["kind"] for r in recs}
    assert kinds & {"copymove", "inpaint"}, kinds
    assert all(r["editor"].startswith("synthetic") for r in recs if r["synth"]["kind"] in ("copymove", "inpaint"))


def test_synth_bad_input_is_a_clear_error(tmp_path, capsys):
    from sigma.cli import main

    assert main(["synth", "--out", str(tmp_path / "o"), "--photos", str(tmp_path / "missing")]) == 2
    assert "photo folder not found" in capsys.readouterr().err


def _old_load(path: Path, max_side: int) -> np.ndarray:
    """What the photo cache did before it used sigma.io: Pillow directly (the shipped model was trained on this)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    nh, nw = max(8, int(round(h * s / 8)) * 8), max(8, int(round(w * s / 8)) * 8)
    return cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)


def test_training_photos_go_through_the_one_decoder(photos, tmp_path, capsys):
    """The photo cache opened photos with Pillow itself: none of sigma.io's limits (a 64 Mpx PNG of a few KB was
    decoded whole), no ICC conversion (a Display P3 photo trained as if sRGB). Now sigma.io decodes them; an
    ordinary sRGB photo gives the very pixels it gave before, a photo past the limits is skipped and said."""
    from iccprofiles import display_p3
    from PIL import Image

    from sigma.data.synth.cache import load_photo, readable_photos
    from sigma.errors import ImageError

    bank = tmp_path / "bank"
    shutil.copytree(photos, bank)
    src = Image.open(sorted(photos.iterdir())[0]).convert("RGB")
    src.save(bank / "plain.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    src.save(bank / "rotated.jpg", quality=90, exif=exif)
    for path in sorted(bank.iterdir()):                # PNG, JPEG, EXIF-rotated JPEG: not one pixel changes
        for side in (48, 384):
            np.testing.assert_array_equal(load_photo(path, side), _old_load(path, side), err_msg=path.name)
    assert load_photo(bank / "rotated.jpg", 384).shape[:2] == (128, 96)
    src.save(bank / "p3.png", icc_profile=display_p3())
    assert not np.array_equal(load_photo(bank / "p3.png", 384), _old_load(bank / "p3.png", 384))

    Image.new("L", (8000, 8000)).save(bank / "bomb.png")          # 64 Mpx > io.limits.max_pixels, ~60 KB
    good, bad = readable_photos(sorted(bank.iterdir()))
    assert bank / "bomb.png" not in good and len(good) == 6
    assert len(bad) == 1 and "bomb.png" in bad[0] and "io.limits.max_pixels" in bad[0]
    with pytest.raises(ImageError, match="bomb.png: photo cannot be decoded.*max_pixels"):
        load_photo(bank / "bomb.png", 384)
    capsys.readouterr()
    assert main(["synth", "--out", str(tmp_path / "pairs"), "-n", "4", "--photos", str(bank), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "1 file(s) in the photo folder are not readable images" in err and "bomb.png" in err


@pytest.mark.parametrize("at", ["_edited.png", "_mask.png", "synth_config.yaml"])
def test_a_rewrite_killed_part_way_never_lists_a_pair_it_did_not_write_whole(photos, tmp_path, at):
    """`sigma synth --out OUT` again over a finished set (same seed, another crop) replaced the PNGs pair by pair
    under the earlier pairs.jsonl: SIGKILLed between a pair's original and its edited image, OUT listed that pair
    with the new original beside the earlier edited image and mask (and records that no longer described the
    images), silently. Killed after the new pairs.jsonl, before synth_config.yaml, OUT described the new pairs with
    the earlier config. Now the earlier listing and config go before the first PNG is replaced, and pairs.jsonl is
    written last: a killed rewrite lists nothing (and is no set for `sigma eval`), and its rerun finishes it."""
    import subprocess
    import sys

    from killers import at_first_temp_rename

    def args(crop: int) -> list[str]:
        return ["synth", "--out", str(out), "-n", "2", "--seed", "0", "--photos", str(photos), "--no-progress",
                f"crop={crop}"]

    out, clean = tmp_path / "set", tmp_path / "clean"
    assert main(args(48)) == 0
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    killer = at_first_temp_rename(containing=at) + "from sigma.cli import main\nmain(sys.argv[1:])\n"
    proc = subprocess.run([sys.executable, "-c", killer, *args(64)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    if (out / "pairs.jsonl").exists():              # whatever it lists is one command's, record and files
        listing = (out / "pairs.jsonl").read_bytes()
        assert listing == earlier["pairs.jsonl"], "a listing the killed rewrite never finished"
        for record in map(json.loads, listing.decode().splitlines()):
            for key in ("original", "edited", "mask"):
                assert (out / record[key]).read_bytes() == earlier[record[key]], (record["id"], key)
        assert (out / "synth_config.yaml").read_bytes() == earlier["synth_config.yaml"]
    assert main(args(64)) == 0                      # the rerun finishes the rewrite: exactly a fresh set's files
    out, final = clean, out
    assert main(args(64)) == 0
    fresh = {p.name: p.read_bytes() for p in clean.iterdir() if p.name != ".lock"}
    assert {p.name: p.read_bytes() for p in final.iterdir() if p.name != ".lock"} == fresh


def test_a_killed_rewrite_is_refused_by_every_reader_until_its_rerun(photos, tmp_path, capsys):
    """A `sigma synth` rewrite SIGKILLed after its first new original left OUT without pairs.jsonl (withdrawn first)
    and `sigma batch run OUT` read it as a plain folder corpus: pair 0 the new 64-px original beside the earlier
    48-px edited image and mask, annotated and scored, exit 0, without a word. Now the run puts
    synth_unfinished.json down before it touches a file and removes it only after pairs.jsonl: every reader of the
    folder (batch run, auto or --format folder / jsonl; sigma eval, the set or a folder of sets) exits 2
    `unfinished_synth_set`, naming the way to finish it, and the same command run again does."""
    import subprocess
    import sys

    from killers import at_first_temp_rename

    def args(crop: int) -> list[str]:
        return ["synth", "--out", str(out), "-n", "2", "--seed", "0", "--photos", str(photos), "--no-progress",
                f"crop={crop}"]

    out = tmp_path / "sets" / "a"
    assert main(args(48)) == 0
    killer = at_first_temp_rename(containing="_edited.png") + "from sigma.cli import main\nmain(sys.argv[1:])\n"
    proc = subprocess.run([sys.executable, "-c", killer, *args(64)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    mark = json.loads((out / "synth_unfinished.json").read_text())
    assert mark["command"].startswith(f"sigma synth --out {out} -n 2 --seed 0") and mark["command"].endswith("crop=64")
    capsys.readouterr()
    readers = [["batch", "run", str(out), "--out", str(tmp_path / "run"), "--annotator", "pixel-diff", "--no-progress"],
               ["batch", "run", str(out), "--format", "folder", "--out", str(tmp_path / "run"), "--no-progress"],
               ["batch", "run", str(out), "--format", "jsonl", "--out", str(tmp_path / "run"), "--no-progress"],
               ["eval", "--data", str(out), "--annotator", "pixel-diff"],
               ["eval", "--data", str(out.parent), "--annotator", "pixel-diff"]]
    for argv in readers:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("sigma: error [unfinished_synth_set]") and "run the same `sigma synth --out`" in err, err
        assert "\n" not in err and not (tmp_path / "run" / "shards").exists()
    assert main(args(64)) == 0 and not (out / "synth_unfinished.json").exists()
    assert main(readers[0]) == 0


def test_a_rewrite_removes_the_earlier_sets_pngs_it_does_not_write_and_nothing_else(photos, tmp_path):
    """`sigma synth --out OUT -n 2` over a set of 4 left pairs 2 and 3 in OUT, listed by nothing: `sigma batch run OUT
    --format folder` annotated 4 pairs. Now a rewrite removes the earlier set's PNGs it does not write — only files
    named as synth names them that the earlier pairs.jsonl lists, or that a rewrite killed since may have written
    (its mark) — and OUT ends as a fresh run's OUT, the user's own files kept."""
    import subprocess
    import sys

    from killers import at_first_temp_rename

    def args(n: int, seed: int = 0) -> list[str]:
        return ["synth", "--out", str(out), "-n", str(n), "--seed", str(seed), "--photos", str(photos),
                "--no-progress", "crop=48"]

    def files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".lock"}

    out = tmp_path / "clean"
    fresh = {}
    for n, seed in ((2, 0), (1, 0), (1, 1)):
        out = tmp_path / f"fresh{n}{seed}"
        assert main(args(n, seed)) == 0
        fresh[n, seed] = files(out)
    out = tmp_path / "set"
    assert main(args(4)) == 0
    mine = {"holiday_original.png": b"a", "holiday_edited.png": b"b", "synth0_3_mask.png": b"c",
            "synth0_00007_original.png": b"d", "notes.txt": b"e"}     # none listed, or not synth's naming
    for name, data in mine.items():
        (out / name).write_bytes(data)
    assert main(args(2)) == 0
    assert files(out) == {**fresh[2, 0], **mine}
    # a rewrite of 3 pairs killed in its last pair, then the same folder rewritten with 1: its pairs 1 and 2 were
    # never listed, the mark says they may be there
    killer = at_first_temp_rename(containing="synth0_00002_edited") + "from sigma.cli import main\nmain(sys.argv[1:])\n"
    proc = subprocess.run([sys.executable, "-c", killer, *args(3)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9 and (out / "synth0_00002_original.png").exists(), proc.stderr
    assert main(args(1)) == 0
    assert {k: v for k, v in files(out).items() if not k.startswith(".")} == {**fresh[1, 0], **mine}
    assert main(args(1, seed=1)) == 0                    # another seed: the earlier set's names all go
    assert files(out) == {**fresh[1, 1], **mine}


# A `python -c` prelude: SIGKILL at the removal of the unfinished mark, the last step of a `sigma synth` (pairs.jsonl
# and synth_config.yaml are on disk by then): the one instant a set with both a listing and the mark is left.
KILL_AT_MARK_REMOVAL = """import os, signal, sys
def _hook(event, args):
    if event == "os.remove" and str(args[0]).endswith("synth_unfinished.json"):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(_hook)
from sigma.cli import main
main(sys.argv[1:])
"""


def test_a_set_killed_before_its_mark_went_is_refused_named_by_its_manifest_too(photos, tmp_path, capsys):
    """A `sigma synth` killed after pairs.jsonl but before it removed its mark: `sigma batch run OUT` was refused,
    but `sigma batch run OUT/pairs.jsonl` (the manifest named itself) skipped the check and annotated the set, exit
    0. Now both exit 2 `unfinished_synth_set`, and the same command run again finishes the set. The message said the
    run "stopped before it listed its pairs" beside the pairs.jsonl it did write: now it says what may be going on
    (still writing, stopped after its listing, a copy made mid-write) and how to finish the set."""
    import subprocess
    import sys

    out = tmp_path / "set"
    argv = ["synth", "--out", str(out), "-n", "2", "--photos", str(photos), "--no-progress", "crop=48"]
    proc = subprocess.run([sys.executable, "-c", KILL_AT_MARK_REMOVAL, *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert (out / "pairs.jsonl").is_file() and (out / "synth_unfinished.json").is_file()
    capsys.readouterr()
    for corpus in (out, out / "pairs.jsonl"):
        run = tmp_path / f"run-{corpus.name}"
        assert main(["batch", "run", str(corpus), "--out", str(run), "--annotator", "pixel-diff",
                     "--no-progress"]) == 2, corpus
        err = capsys.readouterr().err.strip()
        assert err.startswith("sigma: error [unfinished_synth_set]") and "\n" not in err, err
        assert "run the same `sigma synth --out` command again" in err, err
        assert "before it listed its pairs" not in err and "stopped after its pairs.jsonl" in err, err
        assert not (run / "shards").exists()
    assert main(argv) == 0 and not (out / "synth_unfinished.json").exists()      # the rerun finishes it
    assert main(["batch", "run", str(out / "pairs.jsonl"), "--out", str(tmp_path / "run"), "--annotator",
                 "pixel-diff", "--no-progress"]) == 0


def test_a_folder_where_the_mark_goes_is_cleared_when_empty_and_named_when_not(photos, tmp_path, capsys):
    """`OUT/synth_unfinished.json` a folder: every reader said "run the same `sigma synth` command again", and that
    run failed with `os_error: Is a directory`. An empty one is removed by the run; one holding a file is the user's:
    kept, one `bad_outdir` line naming it."""
    from sigma.io.unfinished import UNFINISHED

    out = tmp_path / "synth"
    (out / UNFINISHED).mkdir(parents=True)
    args = ["synth", "--out", str(out), "-n", "2", "--seed", "1", "--photos", str(photos), "--no-progress", "crop=48"]
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "pairs.jsonl").is_file() and not os.path.lexists(out / UNFINISHED)
    (out / UNFINISHED).mkdir()
    (out / UNFINISHED / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [bad_outdir]: ") and err.count("\n") == 1 and "move it out" in err, err
    assert (out / UNFINISHED / "keep.txt").read_text() == "mine"
