"""Paths read from inside data sets: a pairs.jsonl set names files inside its own folder (`sigma eval`, training's
`eval.data` and `sources`), and a folder-taking input given something else says so with its own code."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_eval import make_pair_set
from test_synth import make_photos

from sigma.cli import main

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = str(ROOT / "configs/train/tiny-stage1.yaml")


def _point_first_mask_at(set_dir: Path, value: str) -> None:
    lines = (set_dir / "pairs.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["mask"] = value
    lines[0] = json.dumps(rec)
    (set_dir / "pairs.jsonl").write_text("\n".join(lines) + "\n")


def _outside_sets(tmp_path: Path) -> dict[str, Path]:
    """Sets, each of whose first record names a real mask outside the set: by `..`, by an absolute path, and by a
    link inside the folder to elsewhere."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret_mask.png"
    sets = {}
    for how in ("dotdot", "absolute", "link"):
        d = make_pair_set(tmp_path / how, "s", 2)
        if not secret.exists():
            (d / "s_0_mask.png").rename(secret)
        else:
            (d / "s_0_mask.png").unlink()
        if how == "dotdot":
            _point_first_mask_at(d, "../../outside/secret_mask.png")
        elif how == "absolute":
            _point_first_mask_at(d, str(secret))
        else:
            (d / "s_0_mask.png").symlink_to(secret)
        sets[how] = d
    return sets


def test_an_eval_set_naming_files_outside_its_folder_is_refused_and_one_inside_is_scored(tmp_path, capsys):
    """`sigma eval` opened and scored `../x`, `/abs/x` and a link to elsewhere: a downloaded set could make it read
    any file the user can. Now path_outside_root naming the record, nothing written; a link inside the set's folder
    to a file inside it, and a set folder that is itself a link, are read as before."""
    for how, d in _outside_sets(tmp_path).items():
        out = tmp_path / f"out_{how}"
        assert main(["eval", "--data", str(d), "--annotator", "pixel-diff", "--out", str(out)]) == 2, how
        err = capsys.readouterr().err
        assert "[path_outside_root]" in err and "pairs.jsonl:1: mask" in err, (how, err)
        assert not (out / "metrics.json").exists()
    inside = make_pair_set(tmp_path / "fine", "s", 2)
    (inside / "sub").mkdir()
    (inside / "s_0_mask.png").rename(inside / "sub" / "m.png")
    (inside / "s_0_mask.png").symlink_to(inside / "sub" / "m.png")
    _point_first_mask_at(inside, "sub/../s_0_mask.png")
    (tmp_path / "linked").symlink_to(inside)
    assert main(["eval", "--data", str(tmp_path / "linked"), "--annotator", "pixel-diff",
                 "--out", str(tmp_path / "out_fine")]) == 0, capsys.readouterr().err
    scored = json.loads((tmp_path / "out_fine" / "metrics.json").read_text())["per_pair"]["none"]
    assert [row["id"] for row in scored] == ["s_0", "s_1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"), n=4, size=(80, 96))


@pytest.mark.parametrize("key", ["eval.data", "sources"])
def test_a_training_set_naming_files_outside_its_folder_is_refused_before_the_first_step(photos, tmp_path, capsys,
                                                                                      key):
    """`eval.data` and a `sources` set read the same pairs.jsonl: a record naming `../x` was trained on or scored.
    Now the run is refused at its start, path_outside_root, no run folder made."""
    d = _outside_sets(tmp_path)["dotdot"]
    runs = tmp_path / "runs"
    value = f"eval.data={d}" if key == "eval.data" else f"sources=[{{path: {d}, weight: 1.0}}]"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=1",
                 "eval.val_size=0", value]) == 2
    err = capsys.readouterr().err
    assert "[path_outside_root]" in err and "Traceback" not in err, err
    assert not (runs / "r" / "checkpoint.pt").exists() and not os.path.exists(runs / "r" / "final")


@pytest.mark.parametrize("key", ["eval.data", "sources"])
def test_a_training_set_that_is_a_file_says_not_a_folder(photos, tmp_path, capsys, key):
    """`eval.data=` naming a file said `invalid_config: ... no such folder` (it is there), a `sources` file
    `file_not_found`; now not_a_folder saying what is there, as `sigma eval --data` and `data.photos` say it."""
    path = tmp_path / "set.txt"
    path.write_text("not a folder")
    value = f"eval.data={path}" if key == "eval.data" else f"sources=[{{path: {path}, weight: 1.0}}]"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=r", "steps=1",
                 "eval.val_size=0", value]) == 2
    err = capsys.readouterr().err
    assert f"sigma: error [not_a_folder]: {path}: not a folder (a file)" in err and "Traceback" not in err, err


def test_a_link_loop_is_said_as_a_loop_not_as_a_broken_link(tmp_path, capsys):
    """`ln -s x x` (or a -> b -> a) as `--data`, or as a set's mask, was "a broken link to x (nothing is there)";
    `ls -l` shows the target right there. Now "a link loop", with the same code as before (file_not_found)."""
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert main(["eval", "--data", str(tmp_path / "a"), "--annotator", "pixel-diff"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sigma: error [file_not_found]: {tmp_path / 'a'}: a link loop (its link to b "), err
    d = make_pair_set(tmp_path / "eval", "s", 2)
    (d / "s_0_mask.png").unlink()
    (d / "s_0_mask.png").symlink_to("s_0_mask.png")
    assert main(["eval", "--data", str(d), "--annotator", "pixel-diff", "--out", str(tmp_path / "o")]) == 0
    skipped = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "[file_not_found]" in skipped[0] and "s_0_mask.png: a link loop" in skipped[0], \
        skipped


@pytest.mark.parametrize("kind", ["fifo", "loop", "broken", "folder"])
def test_a_sets_pairs_jsonl_that_is_no_file_is_said_not_passed_over(tmp_path, capsys, kind):
    """A set whose pairs.jsonl is a FIFO, a link loop, a broken link or a folder was "no pairs.jsonl here or in its
    sub-folders" (no_pairs) on its own, and beside other sets was passed over without a word by `sigma eval` and
    `sigma batch run` (its pairs in no table). Now the set's manifest is named, saying what stands there, and
    nothing is opened (a FIFO's open would block)."""
    root = tmp_path / "eval"
    make_pair_set(root, "good", 2)
    bad = make_pair_set(root, "bad", 2) / "pairs.jsonl"
    bad.unlink()
    {"fifo": os.mkfifo, "loop": lambda p: p.symlink_to("pairs.jsonl"),
     "broken": lambda p: p.symlink_to("gone.jsonl"), "folder": lambda p: p.mkdir()}[kind](bad)
    code, said = {"fifo": ("not_a_regular_file", "not a regular file (a FIFO)"),
                  "loop": ("file_not_found", "a link loop"), "broken": ("file_not_found", "a broken link to gone"),
                  "folder": ("not_a_regular_file", "not a regular file (a folder)")}[kind]
    for data in (root / "bad", root):
        assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sigma: error [{code}]: {bad}: {said}"), err
        assert not (tmp_path / "o" / "metrics.json").exists()
    if kind == "fifo":
        assert main(["batch", "run", str(root), "--out", str(tmp_path / "run"), "--annotator", "pixel-diff",
                     "--no-progress"]) == 2
        assert f"[not_a_regular_file]: {bad}: not a regular file (a FIFO)" in capsys.readouterr().err


def test_the_folder_by_folder_confinement_answers_as_resolving_each_path_whole(tmp_path):
    """`Confinement` (each folder resolved once, a file only checked for being a link) gives `resolved_under`'s
    answer on every path a hostile manifest can name: `..` in and out, absolute paths, links to a folder inside and
    outside, a link loop, a link named `..`'s way up."""
    from sigma.io.confine import Confinement, resolved_under

    root = tmp_path / "set"
    (root / "sub").mkdir(parents=True)
    for name, target in (("out", "/etc"), ("in", "sub"), ("self", "self"), ("up", ".."), ("file", "sub/a.png")):
        (root / name).symlink_to(target)
    names = ["a.png", "sub/a.png", "../x", "/etc/passwd", "out/passwd", "out", "in/a.png", "in/../a", "self", "up",
             "up/set/a.png", "sub/../a", "sub/../../x", ".", "..", "sub/.", "in/../../x", "x/../../set/a", "file",
             f"{tmp_path}/set/a.png", f"/{tmp_path}/set/in/../../set/a"]
    confinement = Confinement(root)
    real_root = os.path.realpath(root)
    answers = {name: (resolved_under(str(root / name), real_root), confinement.resolved(str(root / name)))
               for name in names}
    assert all(whole == by_folder for whole, by_folder in answers.values()), answers
    assert answers["a.png"][1] and answers["in/a.png"][1] and not answers["out/passwd"][1] and not answers["up"][1]


def _swap_for_link_outside(set_dir: Path, name: str, outside: Path) -> None:
    """`set_dir / name` replaced by a link to `outside`, as a hostile process could between a reader's check of the
    manifest and its open of the file."""
    (set_dir / name).unlink()
    (set_dir / name).symlink_to(outside)


def test_a_file_swapped_for_a_link_outside_after_the_manifest_was_read_is_not_read_by_eval(tmp_path):
    """Eval checked each path when it read the manifest and opened the file later: a mask swapped for a link to a
    file outside the set in between was read and scored. Now the open itself is checked: that pair is refused,
    path_outside_root, and the others are scored."""
    from sigma.annotators.pixel_diff import PixelDiff
    from sigma.eval.runner import eval_records, evaluate

    d = make_pair_set(tmp_path, "s", 3)
    secret = tmp_path / "secret_mask.png"
    (d / "s_2_mask.png").rename(secret)
    records = eval_records(d)[:2]
    _swap_for_link_outside(d, "s_0_mask.png", secret)
    result = evaluate(PixelDiff(), d, ["none"], records=records)
    assert [(e["id"], e["code"]) for e in result.errors] == [("s_0", "path_outside_root")], result.errors
    assert str(d / "s_0_mask.png") in result.errors[0]["message"]
    assert [rec.pair_id for rec, _ in result.scores["none"]] == ["s_1"]


def test_a_folder_swapped_for_a_link_outside_after_the_manifest_was_read_is_not_trained_on(tmp_path):
    """Training's `sources` read the manifest at start and the images at each sample: a sub-folder of the set
    swapped for a link to a folder outside was trained on. Now path_outside_root at the sample."""
    from sigma.errors import InputError
    from sigma.training.config import SourceConfig
    from sigma.training.data import FolderSource

    d = make_pair_set(tmp_path, "s", 1)
    (d / "sub").mkdir()
    for kind in ("original", "edited", "mask"):
        (d / f"s_0_{kind}.png").rename(d / "sub" / f"s_0_{kind}.png")
    lines = (d / "pairs.jsonl").read_text().replace('"s_0_', '"sub/s_0_')
    (d / "pairs.jsonl").write_text(lines)
    source = FolderSource(SourceConfig(path=str(d)), crop=16)
    assert source.sample(np.random.default_rng(0)).original.shape == (16, 16, 3)
    (d / "sub").rename(tmp_path / "elsewhere")
    (d / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError) as caught:
        source.sample(np.random.default_rng(0))
    assert caught.value.code == "path_outside_root" and str(d / "sub" / "s_0_original.png") in caught.value.message


def test_the_check_on_an_opened_file_asks_the_kernel_what_was_opened(tmp_path):
    """`refuse_opened_outside` judges the file the descriptor is open on, not the name: a file opened through a link
    out of the root is refused even though the name lies inside it, and one inside (a link that stays in) is not."""
    from sigma.errors import InputError
    from sigma.io.confine import refuse_opened_outside

    root = tmp_path / "set"
    root.mkdir()
    (tmp_path / "secret").write_bytes(b"x")
    (root / "inside").write_bytes(b"y")
    (root / "out").symlink_to(tmp_path / "secret")
    (root / "in").symlink_to(root / "inside")
    real_root = os.path.realpath(root)
    with open(root / "in", "rb") as handle:
        refuse_opened_outside(handle.fileno(), str(root / "in"), real_root, "in")
    with open(root / "out", "rb") as handle, pytest.raises(InputError) as caught:
        refuse_opened_outside(handle.fileno(), str(root / "out"), real_root, "out")
    assert caught.value.code == "path_outside_root"


@pytest.mark.parametrize("command", ["eval", "batch"])
def test_a_set_folder_or_manifest_the_user_may_not_read_is_said_naming_it(tmp_path, command):
    """Run as a user (`chmod` binds): a set's folder of mode 000 beside a readable set was passed over without a word
    (eval scored the other set; `batch run` annotated it), alone it was `no_pairs`, and an unreadable pairs.jsonl was
    `os_error`. Now `permission_denied` naming the folder or the file, exit 2, nothing scored."""
    import subprocess
    import sys

    from test_eval import _as_one_refused_writes

    data = tmp_path / "sets"
    make_pair_set(data, "a", 1)
    locked = make_pair_set(data, "b", 1)
    unreadable = make_pair_set(tmp_path / "one", "c", 1) / "pairs.jsonl"
    base = [sys.executable, "-m", "sigma", *(["eval", "--data"] if command == "eval" else ["batch", "run"])]
    quiet = ["--no-progress"] if command == "batch" else []
    unlisted = make_pair_set(tmp_path / "unlisted", "d", 1).parent
    cases = [(data, f"{locked}: permission denied (the folder cannot be looked into)"),
             (locked, f"{locked}: permission denied (the folder cannot be looked into)"),
             (unreadable.parent, f"{unreadable}: permission denied; a set's pairs.jsonl must be readable"),
             (unlisted, f"{unlisted}: permission denied (the folder cannot be listed)")]
    locked.chmod(0)
    unreadable.chmod(0)
    unlisted.chmod(0o311)               # a folder of sets must be listed; a set of mode 311 need not be (below)
    set311 = make_pair_set(tmp_path / "m", "e", 1)
    set311.chmod(0o311)
    try:
        for n, (given, said) in enumerate(cases):
            out = tmp_path / f"out{n}"
            done = subprocess.run(_as_one_refused_writes([*base, str(given), "--annotator", "pixel-diff", "--out",
                                                          str(out), *quiet]),
                                  capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 2 and done.stderr.startswith(f"sigma: error [permission_denied]: {said}"), done
            assert not (out / "metrics.json").exists() and not (out / "run.json").exists()
        done = subprocess.run(_as_one_refused_writes([*base, str(set311), "--annotator", "pixel-diff",
                                                      "--out", str(tmp_path / "out311"), *quiet]),
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done
    finally:
        for folder in (locked, unlisted, set311):
            folder.chmod(0o755)


@pytest.mark.parametrize("command", ["eval", "batch"])
def test_a_folder_of_sets_on_a_disks_root_passes_over_its_lost_and_found(tmp_path, command):
    """A folder of sets that is a disk's mount point holds the file system's `lost+found` (root's, mode 700). Run as
    a user, `sigma eval --data /mnt/sets` and `sigma batch run /mnt/sets` (a folder of sets, or a folder of pairs)
    failed `permission_denied` on it, however good the sets beside it. Now it is passed over; another folder of
    the same mode is still said (above)."""
    import subprocess
    import sys

    from test_eval import _as_one_refused_writes

    if os.geteuid() != 0:
        pytest.skip("a lost+found the user may not read is made by chown, which needs root")
    sets = tmp_path / "sets"
    make_pair_set(sets, "a", 1)
    make_pair_set(sets, "b", 1)
    pairs = make_pair_set(tmp_path, "pairs", 1)
    (pairs / "pairs.jsonl").unlink()
    base = [sys.executable, "-m", "sigma", *(["eval", "--data"] if command == "eval" else ["batch", "run"])]
    quiet = ["--no-progress"] if command == "batch" else []
    for n, data in enumerate([sets, pairs] if command == "batch" else [sets]):
        lost = data / "lost+found"
        lost.mkdir()
        os.chown(lost, 65534, 65534)        # not the runner's: the mode binds it as root's binds a user
        lost.chmod(0o700)
        out = tmp_path / f"out{n}"
        done = subprocess.run(_as_one_refused_writes([*base, str(data), "--annotator", "pixel-diff", "--out", str(out),
                                                      *quiet]), capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, done
        if command == "eval":
            assert sorted(json.loads((out / "metrics.json").read_text())["tables"]["none"]) == ["a", "b", "overall"]
        else:
            assert "0 failed" in done.stdout and "0 bad pairs" in done.stdout, done


def _lone_surrogates(value: object) -> list[str]:
    """Every string (keys too) of parsed JSON that holds a lone surrogate: what a strict JSON reader refuses."""
    if isinstance(value, str):
        return [value] if any(0xD800 <= ord(c) <= 0xDFFF for c in value) else []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _lone_surrogates(k) + _lone_surrogates(v)]
    if isinstance(value, list):
        return [s for v in value for s in _lone_surrogates(v)]
    return []


def test_a_set_and_a_data_folder_named_in_non_utf8_bytes_are_written_escaped_to_metrics_and_reports(tmp_path,
                                                                                                 capsys):
    """A set folder `s\\xff` (and `--data` under a folder of such bytes) was written to metrics.json as the JSON
    escape of a lone surrogate, "\\udcff", which strict readers (serde_json) refuse; and `sigma report` of a batch
    run over it failed `invalid_text` quoting the page's first 200 characters. Now both write the name as the text
    `\\udcff` (a backslash, then udcff), which every reader takes, and two such names stay two."""
    data = Path(os.fsdecode(bytes(tmp_path) + b"/data\xff"))
    for name in ("s\udcff", "s\udcfe"):      # ids of plain text: a record's text holds no lone surrogate
        make_pair_set(data, "plain", 1).rename(data / name)
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert _lone_surrogates(metrics) == []
    assert sorted(metrics["tables"]["none"]) == ["overall", "s\\udcfe", "s\\udcff"]
    assert metrics["config"]["data"].endswith("data\\udcff")
    plain = tmp_path / "data\\udcff"        # named so in plain text: recorded apart from the byte (`escape_name`)
    make_pair_set(plain, "s", 1)
    assert main(["eval", "--data", str(plain), "--annotator", "pixel-diff", "--out", str(tmp_path / "e2")]) == 0
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["config"]["data"].endswith("data\\\\udcff")
    run = tmp_path / "run"
    assert main(["batch", "run", str(data), "--out", str(run), "--annotator", "pixel-diff", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0, capsys.readouterr().err
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "data\\udcff" in page and "s\\udcfe" in page


def test_a_manifest_path_with_windows_separators_says_why_it_is_not_found(tmp_path, capsys):
    """A pairs.jsonl written on Windows names `sub\\\\a.png`: here that is one file name with a backslash in it, and
    eval said only `file_not_found`. Now the message adds that `sub/a.png` is there and to write the path with /;
    a path with a backslash whose slash form is not there, or lies outside the set, gets no hint."""
    d = make_pair_set(tmp_path, "s", 2)
    (d / "sub").mkdir()
    (d / "s_0_original.png").rename(d / "sub" / "s_0_original.png")
    (tmp_path / "outside.png").write_bytes((d / "s_1_original.png").read_bytes())
    lines = (d / "pairs.jsonl").read_text().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    first["original"], second["original"] = "sub\\s_0_original.png", "..\\outside.png"
    (d / "pairs.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    assert main(["eval", "--data", str(d), "--annotator", "pixel-diff", "--out", str(tmp_path / "o")]) == 2
    said = capsys.readouterr()
    err = said.out + said.err                 # the skipped pairs' lines, then the error
    hint = (f"{d}/sub\\s_0_original.png: file not found (its path holds a backslash, which is part of a name here, "
            f"not a separator: {d}/sub/s_0_original.png is there; write the path with /)")
    assert hint in err, err
    assert f"{d}/..\\outside.png: file not found\n" in err, err


@pytest.mark.parametrize("how", ["dotdot", "absolute", "link"])
def test_a_validation_folder_naming_files_outside_it_is_refused(tmp_path, how):
    """`eval.val_dir`'s own reader (`load_val_dir`, not the pairs.jsonl one eval and `sources` share) opened
    whatever its records named: `../x`, an absolute path, a link out of the folder, scored as validation. Now
    path_outside_root naming the line, as every other pairs.jsonl reader."""
    from sigma.errors import InputError
    from sigma.training.data import load_val_dir

    d = make_pair_set(tmp_path, "val", 2)
    secret = tmp_path / "secret.png"
    (d / "val_0_mask.png").rename(secret)
    if how == "link":
        (d / "val_0_mask.png").symlink_to(secret)
    else:
        _point_first_mask_at(d, "../secret.png" if how == "dotdot" else str(secret))
    with pytest.raises(InputError) as caught:
        load_val_dir(d)
    assert caught.value.code == "path_outside_root" and "pairs.jsonl:1: mask" in caught.value.message
    (d / "val_0_mask.png").unlink(missing_ok=True)
    secret.rename(d / "val_0_mask.png")
    _point_first_mask_at(d, "val_0_mask.png")
    assert len(load_val_dir(d)) == 2


def test_a_set_named_in_plain_text_as_an_escaped_byte_stays_apart_from_the_byte(tmp_path, capsys):
    """Two set folders, `s\\xff` (non-UTF-8: U+DCFF in Python) and one named in plain text `s\\udcff` (a backslash,
    then udcff), holding records of the same ids: both became the name `s\\udcff`, so `sigma eval` scored them as
    one table row and a batch run gave both one subset and the same pair ids. Now the plain one is `s\\\\udcff`
    (`escape_name`); the export, which reads the corpus again and matches it to the rows, finds every pair."""
    import pyarrow.parquet as pq

    from sigma.text import escape_name

    data = tmp_path / "sets"
    for name in ("s\udcff", "s\\udcff"):
        make_pair_set(data, "same", 1).rename(data / name)
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(out)]) == 0
    tables = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["tables"]["none"]
    assert sorted(tables) == ["overall", "s\\\\udcff", "s\\udcff"] and tables["overall"]["pairs"] == 2
    run = tmp_path / "run"
    assert main(["batch", "run", str(data), "--out", str(run), "--annotator", "pixel-diff", "--no-progress"]) == 0
    rows = [r for f in sorted((run / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(r["subset"] for r in rows) == ["s\\\\udcff", "s\\udcff"]
    assert len({r["pair_id"] for r in rows}) == 2
    capsys.readouterr()
    assert main(["export", "hf", str(run), "--out", str(tmp_path / "hf")]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["rows"] == 2 and said["skipped"] == 0, said
    names = ["s\udcff", "s\\udcff", "s\\\udcff", "s\\\\udcff", "\\u", "\\\\u", "a\\b", "\\", "u\udcfe", "plain"]
    assert len({escape_name(n) for n in names}) == len(names)
    assert escape_name("a\\b") == "a\\b" and escape_name("plain") == "plain"


def test_a_file_and_a_run_named_in_plain_text_as_an_escaped_byte_stay_apart_in_the_export_and_the_report(tmp_path,
                                                                                                        capsys):
    """`sigma export hf` named a pair's images by `escape_surrogates` of their file names, the review page its run and
    corpus folders: the file `a\\xff_original.png` and one named in plain text `a\\udcff_original.png` were one name
    in the dataset, the folders `d\\xff` and `d\\udcff` one on the page; and the export of a run over `d\\xff` failed
    `invalid_text` writing its card (the folder's name in it). Now `escape_name`, as the pair ids are."""
    import html

    import pyarrow.parquet as pq

    from sigma.text import escape_name

    pairs = {}
    for n, raw in enumerate((b"d\xff", b"d\\udcff")):
        made = make_pair_set(tmp_path / f"made{n}", "s", 1)
        data = Path(os.fsdecode(bytes(tmp_path) + b"/" + raw))
        data.mkdir()
        stem = os.fsdecode(b"a" + raw[1:])
        for part in ("original", "edited"):
            (made / f"s_0_{part}.png").rename(data / f"{stem}_{part}.png")
        pairs[data] = stem
    shown = set()
    for data, stem in pairs.items():
        run = Path(f"{data}_run")          # made under a plain name: its summary line is printed (pytest's stdout)
        assert main(["batch", "run", str(data), "--out", str(tmp_path / "run"), "--annotator", "pixel-diff",
                     "--no-progress"]) == 0
        (tmp_path / "run").rename(run)
        hf = tmp_path / f"hf{len(shown)}"
        assert main(["export", "hf", str(run), "--out", str(hf)]) == 0
        row = pq.read_table(next((hf / "data").glob("*.parquet"))).to_pylist()[0]
        assert row["original"]["path"] == escape_name(f"{stem}_original.png"), row["original"]["path"]
        page = tmp_path / f"r{len(shown)}.html"
        assert main(["report", str(run), "--out", str(page)]) == 0
        text = page.read_text(encoding="utf-8")
        assert f"<title>SIGMA review: {html.escape(escape_name(run.name))}</title>" in text, text[:300]
        shown.add(row["original"]["path"])
    capsys.readouterr()
    assert len(shown) == 2


def test_config_and_run_records_keep_a_non_utf8_path_as_plain_json_and_yaml_read_it_back(tmp_path, capsys):
    """`--data $'d\\xff'`: config.yaml (eval's, a batch run's) and run.json hold the path as YAML's / JSON's
    surrogate escape, which plain `yaml.safe_load` / `json.loads` read back to the same folder and `--resume` reopens;
    config.yaml held it without a word (other tools show U+FFFD): its first line now says what `\\uDCXX` is."""
    import yaml

    from sigma.config.loader import NOT_UTF8_NOTE

    data = Path(os.fsdecode(bytes(tmp_path) + b"/d\xff"))
    make_pair_set(data, "s", 1)
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(out)]) == 0
    text = (out / "config.yaml").read_text(encoding="utf-8")
    assert text.startswith(NOT_UTF8_NOTE) and os.fsencode(yaml.safe_load(text)["data"]) == os.fsencode(data)
    run = tmp_path / "run"
    argv = ["batch", "run", str(data), "--out", str(run), "--annotator", "pixel-diff", "--no-progress"]
    assert main(argv) == 0
    text = (run / "config.yaml").read_text(encoding="utf-8")
    assert text.startswith(NOT_UTF8_NOTE) and os.fsencode(yaml.safe_load(text)["input"]["path"]) == os.fsencode(data)
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert os.fsencode(record["config"]["input"]["path"]) == os.fsencode(data)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0 and "already done" in capsys.readouterr().out
    plain = tmp_path / "plain"
    make_pair_set(plain, "s", 1)
    assert main(["eval", "--data", str(plain), "--annotator", "pixel-diff", "--out", str(tmp_path / "e2")]) == 0
    assert not (tmp_path / "e2" / "config.yaml").read_text(encoding="utf-8").startswith("#")


def test_sets_named_with_a_control_character_and_as_its_escape_in_plain_text_print_as_two_rows(tmp_path, capsys):
    """A set folder holding a line break (a tab, an RTL override) and one named in plain text `nl\\nx` (a backslash,
    then n) printed in the eval table as one name, `nl\\nx`, in two rows: which was which could not be told. The
    table now doubles a name's backslashes, as metrics.json's text does, before escaping what a terminal must not
    get; metrics.json keeps each name apart as before."""
    data = tmp_path / "sets"
    names = {"nl\nx": "nl\\nx", "nl\\nx": "nl\\\\nx", "t\tx": "t\\tx", "t\\tx": "t\\\\tx",
             "r\u202ex": "r\\u202ex", "r\\u202ex": "r\\\\\\\\u202ex", "plain": "plain"}
    for n, name in enumerate(names):
        make_pair_set(data, f"s{n}", 1).rename(data / name)
    assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(tmp_path / "o")]) == 0
    rows = {line.split(" ")[0] for line in capsys.readouterr().out.splitlines() if line[:1] in ("n", "t", "r", "p")}
    assert rows >= set(names.values()) and len(set(names.values())) == len(names), rows
    tables = json.loads((tmp_path / "o" / "metrics.json").read_text())["tables"]["none"]
    assert len(tables) == len(names) + 1


def test_two_long_set_names_alike_but_for_their_end_print_as_two(tmp_path, capsys):
    """The eval table's set column cut a name at 46 characters: sets `<60 x>-v1` and `<60 x>-v2` printed two rows of
    one name. Now a long name is cut in the middle (`…`), its end kept; metrics.json keeps every name whole."""
    data = tmp_path / "sets"
    names = ["x" * 60 + "-v1", "x" * 60 + "-v2"]
    for n, name in enumerate(names):
        make_pair_set(data, f"s{n}", 1).rename(data / name)
    assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(tmp_path / "o")]) == 0
    rows = [line.split(" ")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("xxx")]
    assert len(rows) == 2 and rows[0] != rows[1] and rows[0].endswith("-v1") and "…" in rows[0], rows
    assert len(rows[0]) == 46
    tables = json.loads((tmp_path / "o" / "metrics.json").read_text())["tables"]["none"]
    assert set(names) < set(tables)
