"""Hostile photo and evaluation folders: what a user's folder may hold in place of a photo, an image or the folder.

A FIFO named like a photo, a link to /dev/zero, a link loop or a broken link were dropped from the photo bank without
a word (a folder of links to an unmounted drive said "found 0"); a FIFO, a file or /dev/zero given as the photo
folder or as `sigma eval --data` was "folder not found". The CLI runs in a subprocess with a timeout, so a hang (a
reader waiting on a FIFO) fails the test instead of the suite."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from test_eval import make_pair_set
from test_synth import make_photos

from sigma.data.synth.cache import list_photos, readable_photos
from sigma.errors import ImageError, InputError
from sigma.io.images import read_image

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = str(ROOT / "configs/train/tiny-stage1.yaml")
NON_UTF8 = os.fsdecode(b"caf\xe9")          # a Latin-1 name, not UTF-8

pytestmark = pytest.mark.timeout(240)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m sigma ARGS` run to its end, or an AssertionError if it is still running after `timeout`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, "-m", "sigma", *args], capture_output=True, text=True,
                              timeout=timeout, env=env, errors="replace")
    except subprocess.TimeoutExpired:
        raise AssertionError(f"sigma {' '.join(args)} hung") from None


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring width x height with one tiny IDAT: a decompression bomb as far as its header says."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _hostile_photo_folder(folder: Path) -> dict[str, str]:
    """Three real photos (one under a non-UTF-8 name) beside everything that is no photo; {name: why it is left out}."""
    make_photos(folder, n=2)
    (folder / f"{NON_UTF8}.png").write_bytes((folder / "p0.png").read_bytes())
    os.mkfifo(folder / "x.jpg")
    (folder / "z.png").symlink_to("/dev/zero")
    (folder / "loop1.jpg").symlink_to(folder / "loop2.jpg")
    (folder / "loop2.jpg").symlink_to(folder / "loop1.jpg")
    (folder / "gone.jpg").symlink_to(folder / "no-such-photo.jpg")
    (folder / f"{NON_UTF8}-empty.jpg").write_bytes(b"")
    (folder / "cut.jpg").write_bytes((folder / "p1.png").read_bytes()[:40])
    (folder / "bomb.png").write_bytes(_png_declaring(30000, 30000))
    (folder / "dir.jpg").mkdir()          # a folder named like a photo: walked into, never read as one
    (folder / "sub").symlink_to(folder)   # a folder link loop: not followed
    return {"x.jpg": "not a regular file", "z.png": "not a regular file", "loop1.jpg": "symbolic links",
            "loop2.jpg": "symbolic links", "gone.jpg": f"a broken link to {folder / 'no-such-photo.jpg'}",
            "caf\\udce9-empty.jpg": "not an image",        # a name that is no text is shown escaped
            "cut.jpg": "", "bomb.png": ""}


def test_a_photo_folder_of_fifos_devices_and_broken_links_trains_on_its_photos_saying_what_it_left_out(tmp_path):
    """FIFOs, links to /dev/zero, link loops and broken links named like photos were left out of the photo bank
    silently (only regular files were listed); now each is left out and counted in the one warning, like a 0-byte
    or truncated photo or a decompression bomb. The run never waits on the FIFO and trains on the real photos."""
    folder = tmp_path / "photos"
    expected = _hostile_photo_folder(folder)
    good, bad = readable_photos(list_photos(folder))
    assert sorted(p.name for p in good) == sorted([f"{NON_UTF8}.png", "p0.png", "p1.png"])
    said = {Path(line.split(": ", 1)[0]).name: line for line in bad}
    assert sorted(said) == sorted(expected), bad
    for name, why in expected.items():
        assert why in said[name], said[name]

    done = _cli("train", STAGE1, f"data.photos={folder}", f"out_dir={tmp_path / 'runs'}", "name=r", "steps=2",
                "batch_size=2", "num_workers=0", "eval.val_size=0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("sigma: warning:")]
    assert len(warnings) == 1 and f"{len(expected)} file(s) in the photo folder" in warnings[0], done.stderr[-3000:]
    assert (tmp_path / "runs" / "r" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("kind", ["fifo", "file", "dev_zero"])
def test_a_photo_folder_or_eval_folder_that_is_no_folder_says_so_not_not_found(tmp_path, kind):
    """`data.photos=` or `sigma eval --data` naming a FIFO, a file or /dev/zero said "folder not found" (it is
    there); then "not a folder" with file_not_found for a file (`ls` showed it) and not_a_regular_file for a FIFO
    (which a file would not have cured); now not_a_folder, at once, exit 2, saying what is there."""
    path = {"fifo": tmp_path / "photos.jpg", "file": tmp_path / "photos.txt", "dev_zero": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "file":
        path.write_text("not a folder")
    code, what = "not_a_folder", {"fifo": "a FIFO", "file": "a file", "dev_zero": "a character device"}[kind]
    train = _cli("train", STAGE1, f"data.photos={path}", f"out_dir={tmp_path / 'runs'}", "steps=1")
    assert train.returncode == 2 and train.stderr.startswith(
        f"sigma: error [{code}]: {path}: not a folder ({what})"), train.stderr[-2000:]
    ev = _cli("eval", "--data", str(path), "--annotator", "pixel-diff", "--out", str(tmp_path / "o"))
    assert ev.returncode == 2 and ev.stderr.startswith(
        f"sigma: error [{code}]: {path}: not a folder ({what})"), ev.stderr[-2000:]
    missing = _cli("eval", "--data", str(tmp_path / "nowhere"), "--annotator", "pixel-diff")
    assert missing.returncode == 2 and "evaluation folder not found" in missing.stderr


def test_eval_given_a_pairs_jsonl_that_is_a_fifo_says_not_a_regular_file(tmp_path):
    """The manifest itself may be given as --data; a FIFO by that name was "evaluation folder not found"."""
    os.mkfifo(tmp_path / "pairs.jsonl")
    done = _cli("eval", "--data", str(tmp_path / "pairs.jsonl"), "--annotator", "pixel-diff")
    assert done.returncode == 2 and done.stderr.startswith(
        f"sigma: error [not_a_regular_file]: {tmp_path / 'pairs.jsonl'}: not a regular file (a FIFO)"), \
        done.stderr[-2000:]


def test_an_eval_set_with_fifos_and_devices_for_images_and_masks_skips_those_pairs_without_waiting(tmp_path):
    """A guard: a FIFO in place of an edited image or a mask, a folder in place of an original is that pair's
    'not a regular file', the other pairs are scored, and nothing waits on a FIFO. A link to /dev/zero lies outside
    the set's folder: the set is refused (path_outside_root), nothing opened."""
    root = tmp_path / "eval"
    s = make_pair_set(root, "edits", 4)
    for name in ("edits_1_edited.png", "edits_2_mask.png"):
        (s / name).unlink()
        os.mkfifo(s / name)
    (s / "edits_0_original.png").unlink()
    (s / "edits_0_original.png").symlink_to("/dev/zero")
    done = _cli("eval", "--data", str(root), "--annotator", "pixel-diff", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "[path_outside_root]" in done.stderr, done.stderr[-2000:]
    (s / "edits_0_original.png").unlink()
    (s / "edits_0_original.png").mkdir()
    done = _cli("eval", "--data", str(root), "--annotator", "pixel-diff", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr[-2000:]
    skipped = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 3 and all("not a regular file" in line for line in skipped), skipped
    assert sum("[not_a_regular_file]" in line or "not_a_regular_file" in line for line in skipped) >= 2, skipped
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["tables"]["none"]["overall"]["pairs"] == 1, metrics["tables"]["none"]["overall"]


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_cached_photo_swapped_for_a_fifo_is_said_and_skipped_not_waited_on(tmp_path, kind):
    """The photo bank lists a cached .npz when `is_file()` says so; a FIFO put there after that check was opened by
    `np.load(path)`, which waited for a writer for ever (a link to /dev/zero was read as an endless file). Now the
    read refuses it at once as a cached photo that cannot be read, and the bank uses the next photo."""
    path = tmp_path / "00000.npz"
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")
    script = (f"from sigma.errors import ImageError\nfrom sigma.data.synth.engine import _load_entry\n"
              f"try:\n    _load_entry({str(path)!r}, True, 96)\nexcept ImageError as exc:\n    print(exc.message)\n")
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("reading a cached photo that is a FIFO hung") from None
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"{path}: cached photo cannot be read (NotRegularFile"), done.stdout


def _cache_with_an_entry_out(tmp_path: Path, how: str) -> Path:
    """A real cache of two photos whose index.json also names a real cached photo outside it: `../` up and out, an
    absolute path, or a link in the cache to the file outside (what a hand-edited or downloaded cache can hold)."""
    from sigma.data.synth.cache import build_cache

    cache = build_cache(make_photos(tmp_path / "photos", n=2), tmp_path / "cache", vae=None, log=None)
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret.npz"
    secret.write_bytes((cache / "00000.npz").read_bytes())
    name = {"dotdot": "../outside/secret.npz", "absolute": str(secret), "link": "link.npz"}[how]
    if how == "link":
        (cache / "link.npz").symlink_to(secret)
    index = json.loads((cache / "index.json").read_text())
    index["files"].append({"file": name, "photo": "secret.png"})
    (cache / "index.json").write_text(json.dumps(index))
    return cache


@pytest.mark.parametrize("how", ["dotdot", "absolute", "link"])
def test_a_cache_index_naming_a_file_outside_the_cache_is_refused_before_anything_is_read(tmp_path, how):
    """A cache's index.json entry `../outside/secret.npz`, an absolute path or a link in the cache to elsewhere was
    opened and trained on (`../../etc/passwd` was opened too, then skipped as a damaged photo). Now the whole index is
    refused, path_outside_root, by `sigma synth --cache` before a pair is written, by training's start (the index
    snapshot) before the model is built, and by the bank reading a run's snapshot of it (a --resume)."""
    from sigma.data.synth.engine import PhotoBank
    from sigma.training.config import TrainConfig
    from sigma.training.data import freeze_cache_index

    cache = _cache_with_an_entry_out(tmp_path, how)
    done = _cli("synth", "--cache", str(cache), "--out", str(tmp_path / "o"), "-n", "2", "--no-progress")
    assert done.returncode == 2 and done.stderr.startswith(
        f"sigma: error [path_outside_root]: {cache / 'index.json'}: the entry "), done.stderr[-2000:]
    assert "outside the cache folder" in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert not (tmp_path / "o" / "pairs.jsonl").exists()
    cfg = TrainConfig.model_validate({"data": {"cache": str(cache)}})
    with pytest.raises(InputError) as err:
        freeze_cache_index(cfg, tmp_path / "run")
    assert err.value.code == "path_outside_root", err.value
    frozen = tmp_path / "cache_index.json"
    frozen.write_bytes((cache / "index.json").read_bytes())
    with pytest.raises(InputError) as err:
        PhotoBank(cache, index=frozen)
    assert err.value.code == "path_outside_root" and str(frozen) in err.value.message, err.value
    if how == "link":   # the CLI's training run too, with nothing trained
        train = _cli("train", STAGE1, f"data.cache={cache}", f"out_dir={tmp_path / 'runs'}", "name=r", "steps=1")
        assert train.returncode == 2 and train.stderr.startswith("sigma: error [path_outside_root]: "), train.stderr
        assert not (tmp_path / "runs" / "r" / "checkpoint.pt").exists()
        # what is checked is where an entry resolves: a link in the cache to a file in the cache is no way out
        (cache / "link.npz").unlink()
        (cache / "link.npz").symlink_to(cache / "00001.npz")
        assert PhotoBank(cache).n_cached() == 3


def test_a_broken_link_among_the_photos_is_said_to_be_one_naming_where_it_points(tmp_path):
    """A link to a photo on a drive not mounted was "unreadable image ([Errno 2] No such file or directory: ...)" in
    the photo bank's warning (`sigma synth`, training) and "file not found" in `sigma synth --build-cache`, of a name
    `ls` lists. Now both say it is a broken link and where it points, code file_not_found as a missing file's."""
    folder = make_photos(tmp_path / "photos", n=2)
    (folder / "holiday.jpg").symlink_to("/mnt/not-mounted/holiday.jpg")
    said = f"{folder / 'holiday.jpg'}: a broken link to /mnt/not-mounted/holiday.jpg (nothing is there)"
    _, bad = readable_photos(list_photos(folder))
    assert bad == [said], bad
    done = _cli("synth", "--photos", str(folder), "--out", str(tmp_path / "o"), "-n", "1", "--no-progress")
    assert done.returncode == 0 and f"left out: {said}\n" in done.stderr, done.stderr[-2000:]
    built = _cli("synth", "--build-cache", str(tmp_path / "cache"), "--photos", str(folder), "--no-vae",
                 "--no-progress")
    assert built.returncode == 0, built.stderr[-2000:]
    assert f"photo cannot be decoded ({said})" in built.stdout + built.stderr, built.stdout + built.stderr
    with pytest.raises(ImageError) as err:
        read_image(folder / "holiday.jpg")
    assert err.value.code == "file_not_found" and err.value.message == said
