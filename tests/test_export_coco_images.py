"""`sigma export coco --images DIR` into a folder that holds another export's images.

DIR is no folder of the export's own: an earlier export of another run, or of this run with other filters (the names
follow the pairs kept), or a second export running at the same time, may have written there. Before, each image was
renamed over whatever held its name, and the earlier export's JSON paired its masks with the new images, silently.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from killers import at_first_temp_rename
from tmpfs import mounted_tmpfs

from sigma.batch import BatchConfig, run_batch
from sigma.cli import main
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl


def _run(corpus: Path, out: Path) -> Path:
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus)}, "annotator": "pixel-diff", "workers": 0})
    run_batch(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs of two corpora whose pairs have the same ids (`s_p000000.png`, ...) and other images."""
    root = tmp_path_factory.mktemp("coco_images")
    made = {}
    for name, seed in (("one", 0), ("two", 7)):
        write_pairs_jsonl(root / name / "s", synthetic_pairs(3, seed=seed))
        made[name] = _run(root / name / "s", root / f"run_{name}")
    # the first pair's name (`s_aaa.png`) is none of run two's, the others are run two's names with other images
    pairs = list(synthetic_pairs(3, seed=3))
    pairs[0]["id"] = "aaa"
    write_pairs_jsonl(root / "three" / "s", pairs)
    made["three"] = _run(root / "three" / "s", root / "run_three")
    return made


def _files(folder: Path) -> dict[str, bytes]:
    """Every entry of `folder` (hidden temporary files too) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _listed(coco_json: Path, images: Path) -> dict[str, bytes]:
    return {i["file_name"]: (images / i["file_name"]).read_bytes() for i in json.loads(coco_json.read_text())["images"]}


def _export(run: Path, out: Path, images: Path, *flags: str) -> int:
    return main(["export", "coco", str(run), "--out", str(out), "--images", str(images), *flags])


def test_a_second_run_into_one_images_folder_is_refused_and_the_first_export_stays_whole(runs, tmp_path, capsys):
    images = tmp_path / "img"
    assert _export(runs["one"], tmp_path / "a.json", images) == 0
    first = _files(images)
    assert sorted(first) == ["s_p000000.png", "s_p000001.png", "s_p000002.png"]
    capsys.readouterr()
    assert _export(runs["two"], tmp_path / "b.json", images) == 2
    err = capsys.readouterr().err
    assert "[out_not_empty]" in err and "s_p000000.png" in err and "--overwrite" in err, err
    assert _files(images) == first                     # not one image replaced, no temporary file left
    assert not (tmp_path / "b.json").exists()
    assert _listed(tmp_path / "a.json", images) == first
    # --overwrite: the second export's images, as a fresh export of it writes them
    assert _export(runs["two"], tmp_path / "b.json", images, "--overwrite") == 0
    assert _export(runs["two"], tmp_path / "fresh.json", tmp_path / "fresh") == 0
    assert _files(images) == _files(tmp_path / "fresh") != first
    assert _listed(tmp_path / "b.json", images) == _files(tmp_path / "fresh")


def test_one_run_exported_again_with_other_filters_never_moves_a_pair_onto_anothers_image(tmp_path, capsys):
    """Two pairs with one id: the second is `s_x-<shard>-<index>.png` while the first is kept, `s_x.png` once a filter
    drops the first — the name the first export gave the other pair's image."""
    root = tmp_path / "corpus" / "s"
    pairs = list(synthetic_pairs(2))
    write_pairs_jsonl(root, pairs)
    with open(root / "pairs.jsonl", "w") as handle:          # the first "x" is unedited: its mask is empty
        for edited, p in ((f"{pairs[0]['id']}_original.png", pairs[0]), (f"{pairs[1]['id']}_edited.png", pairs[1])):
            handle.write(json.dumps({"id": "x", "original": f"{p['id']}_original.png", "edited": edited}) + "\n")
    run = _run(root, tmp_path / "run")
    images = tmp_path / "img"
    assert _export(run, tmp_path / "all.json", images) == 0
    every = _files(images)
    assert len(every) == 2 and "s_x.png" in every
    capsys.readouterr()
    assert _export(run, tmp_path / "edited.json", images, "--min-area", "0.01") == 2
    assert "s_x.png already holds a different file" in capsys.readouterr().err
    assert _files(images) == every == _listed(tmp_path / "all.json", images)


def test_the_same_export_again_is_idempotent_and_leaves_other_files_alone(runs, tmp_path, capsys):
    images = tmp_path / "img"
    images.mkdir()
    (images / "notes.png").write_bytes(b"the user's own")
    assert _export(runs["one"], tmp_path / "a.json", images) == 0
    before = _files(images)
    stamps = {name: (os.stat(images / name).st_ino, os.stat(images / name).st_mtime_ns) for name in before}
    assert _export(runs["one"], tmp_path / "a.json", images) == 0            # a rerun: nothing rewritten
    assert _export(runs["one"], tmp_path / "sub.json", images, "--sort", "confidence") == 0
    assert _files(images) == before
    assert {n: (os.stat(images / n).st_ino, os.stat(images / n).st_mtime_ns) for n in before} == stamps
    assert (images / "notes.png").read_bytes() == b"the user's own"


def _export_process(run: Path, out: Path, images: Path, prelude: str = "") -> subprocess.Popen:
    program = prelude + "from sigma.cli import main\nsys.exit(main(sys.argv[1:]))\n" if prelude else None
    head = [sys.executable, "-c", program] if program else [sys.executable, "-m", "sigma"]
    return subprocess.Popen([*head, "export", "coco", str(run), "--out", str(out), "--images", str(images)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_exports_at_once_into_one_images_folder_leave_only_the_images_a_json_lists(runs, tmp_path):
    """The first export is held (SIGSTOP) at the moment it puts its first image, `s_aaa.png`, in place (every image
    staged and DIR checked); a second export of another run into the same DIR is started meanwhile. Before: the
    second wrote its whole export; the first, resumed, placed `s_aaa.png` (a name the second does not use), then found
    `s_p000001.png` taken by other bytes and was refused, leaving `s_aaa.png` in DIR, listed by no JSON. Now the
    first holds DIR from its start (a flock on the folder): the second is refused at once (`run_locked`), writing
    nothing, and the first completes."""
    images = tmp_path / "img"
    first = _export_process(runs["three"], tmp_path / "a.json", images,
                            at_first_temp_rename("signal.SIGSTOP", containing=".png."))
    try:
        assert first.stdout.readline().strip().startswith(".s_aaa.png."), first.stderr
        second = _export_process(runs["two"], tmp_path / "b.json", images)
        _, second_err = second.communicate(timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
        _, first_err = first.communicate(timeout=120)
    listed: dict[str, bytes] = {}
    for code, coco in ((first.returncode, tmp_path / "a.json"), (second.returncode, tmp_path / "b.json")):
        assert (code == 0) == coco.exists(), (first_err, second_err)
        if code == 0:
            listed.update(_listed(coco, images))
    assert listed and _files(images) == listed, (first_err, second_err)     # no temporary file left either
    assert second.returncode == 2 and "[run_locked]" in second_err and str(images) in second_err, second_err
    assert first.returncode == 0, first_err


def test_an_export_killed_while_it_holds_the_images_folder_leaves_it_free(runs, tmp_path):
    """The hold is the kernel's (flock): an export killed (SIGKILL) while placing its images never blocks the next,
    which also removes the killed one's staged images."""
    images = tmp_path / "img"
    killed = _export_process(runs["one"], tmp_path / "a.json", images, at_first_temp_rename(containing=".png."))
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert any(name.endswith(".tmp") for name in _files(images))
    after = _export_process(runs["two"], tmp_path / "b.json", images)
    _, err = after.communicate(timeout=120)
    assert after.returncode == 0, err
    assert _files(images) == _listed(tmp_path / "b.json", images)


def test_a_file_system_without_hard_links_takes_an_exclusive_copy(runs, tmp_path, capsys, monkeypatch):
    """exFAT, some network and FUSE mounts refuse link(): the images are then copied to names created with O_EXCL,
    which never replace a file either."""
    def no_links(*_args, **_kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    images = tmp_path / "img"
    assert _export(runs["one"], tmp_path / "a.json", images) == 0
    first = _files(images)
    assert len(first) == 3 and _listed(tmp_path / "a.json", images) == first
    assert _export(runs["one"], tmp_path / "a.json", images) == 0
    capsys.readouterr()
    assert _export(runs["two"], tmp_path / "b.json", images) == 2
    assert "[out_not_empty]" in capsys.readouterr().err and _files(images) == first


def _small_blocks(snapshot) -> int:
    """Bytes held in blocks under 1 MiB allocated under this test's own calls (a frame of this file in the block's
    traceback: `tracemalloc.start(STAGE_FRAMES)`). Left out: what other threads of the process allocate meanwhile,
    and the one block of a table the interpreter grows once in a while, not state kept
    per image: pathlib interns each path part, and the interned-strings table, grown by every test run before in
    the same process, was now and then reallocated (7.5 MB) during the 2000 stages — this test failed after
    test_folderlock, test_export_hf and test_regular (3867 bytes "per staged image"), never alone."""
    import tracemalloc

    own = snapshot.filter_traces([tracemalloc.Filter(True, __file__, all_frames=True)])
    return sum(trace.size for trace in own.traces if trace.size < 1 << 20)


STAGE_FRAMES = 32       # deep enough to reach this file's frame from any allocation under `PlacedFiles.stage`


def test_staged_images_hold_their_names_alone_and_every_one_is_removed_however_placing_ends(tmp_path):
    """`PlacedFiles` held a (temporary Path, target Path) pair per staged image until the end (~600 bytes each:
    ~0.6 GB at a million images); now the name alone (~20 bytes). A name taken by other bytes while the export ran
    refuses it there: the files placed before stay, the staged ones after it and its own are removed by `discard`."""
    import tracemalloc

    from sigma.errors import InputError
    from sigma.export.placing import PlacedFiles

    folder = tmp_path / "img"
    placed = PlacedFiles(folder)
    placed.stage("warm.png", b"x")            # the folder made, imports done: not counted
    rounds = []     # two of 1000 stages each, the lesser counted: a table the interpreter grows doubles, in one at most
    tracemalloc.start(STAGE_FRAMES)
    try:
        for first in (0, 1000):
            before = _small_blocks(tracemalloc.take_snapshot())
            for k in range(first, first + 1000):
                placed.stage(f"corpus_q{k:08d}.png", b"image %d" % k)
            rounds.append(_small_blocks(tracemalloc.take_snapshot()) - before)
    finally:
        tracemalloc.stop()
    assert min(rounds) < 1000 * 64, f"{min(rounds) / 1000:.0f} bytes per staged image (rounds: {rounds})"
    assert len(list(placed.staged())) == 2001 and len(os.listdir(folder)) == 2001          # temporary files only
    (folder / "corpus_q00001000.png").write_bytes(b"another export's image")
    with pytest.raises(InputError) as refused:
        placed.place()
    assert refused.value.code == "out_not_empty" and "corpus_q00001000.png" in refused.value.message
    placed.discard()
    left = sorted(os.listdir(folder))
    assert left == [f"corpus_q{k:08d}.png" for k in range(1001)] + ["warm.png"], left[-3:]
    assert [(folder / name).read_bytes() for name in left[:2]] == [b"image 0", b"image 1"]
    assert (folder / "corpus_q00001000.png").read_bytes() == b"another export's image"
    assert list(placed.staged()) == []



def test_images_folder_given_as_the_json_path_too_is_refused_before_anything_is_written(runs, tmp_path, capsys):
    """`--out X --images X`, X not there yet: the images were placed in X, then the JSON's rename onto X failed
    (os_error: Is a directory), leaving a folder of images under the JSON's name. Now bad_arguments, X not made. (An
    X that is already a folder was and is out_is_a_folder.)"""
    target = tmp_path / "export"
    assert _export(runs["one"], target, target) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [bad_arguments]: --images ") and "is the --out file itself" in err, err
    assert not target.exists()


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a tmpfs remounted read-only (EROFS even for root, whom permissions do not stop); root only."""
    with mounted_tmpfs(tmp_path / "ro", "4m") as folder:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder


def test_an_out_in_a_read_only_folder_is_said_of_that_path_not_of_a_spool_file(runs, read_only_folder, capsys):
    """`--out RO/coco.json` in a read-only folder said `[os_error]: Read-only file system: RO/tmpvub7ugc6`: the
    export's unnamed spool, a name the user never gave and that is nowhere. Now the path given, with the reason,
    before any work (`check_outfile` probes the folder: `bad_outdir`, as for an output folder)."""
    out = read_only_folder / "coco.json"
    assert main(["export", "coco", str(runs["one"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sigma: error [bad_outdir]: {out}: not a usable output file (Read-only file system)", err
