"""Hostile inputs to the readers: compression bombs in parquet cells, PNGs of endless chunks, old-Mac CSVs,
embedded colour profiles. Real files, real decoders (pyarrow, Pillow), measured where the defect was cost."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from sigma.io.corpora.synthetic import synthetic_pairs, write_parquet


def _hostile_parquet(tmp_path, cell_bytes: int):
    """Six MagicBrush rows in row groups of two; row 3's edited image is `cell_bytes` zeros (zstd: a few KB)."""
    clean = write_parquet(tmp_path / "clean.parquet", synthetic_pairs(6), "magicbrush", row_group_size=2)
    table = pq.read_table(clean)
    rows = table.to_pylist()
    rows[3]["target_img"] = {"bytes": b"\0" * cell_bytes, "path": None}
    path = tmp_path / "bomb.parquet"
    pq.write_table(table.from_pylist(rows, schema=table.schema), path, row_group_size=2, compression="zstd")
    return path


def test_parquet_cell_bomb_is_refused_from_page_headers_without_reading_it(tmp_path):
    """A 20 KB parquet file holding a 200 MB cell of zeros took 1.6 GB to read (the page, then the Python copy)
    before decode_image refused it; now its row group is refused from the page headers, each of its pairs is
    file_too_large, and the other row groups are read."""
    path = _hostile_parquet(tmp_path, 200 << 20)
    assert path.stat().st_size < 1 << 20
    script = textwrap.dedent(f"""
        import json, re
        from sigma.io.corpora import open_corpus
        corpus = open_corpus({str(path)!r}, preset="magicbrush", shard_size=100)
        corpus.max_bytes = 1 << 20
        shards = corpus.plan()
        peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
        before = peak()           # this process's own high-water mark (ru_maxrss is inherited from pytest's)
        items = [i for s in shards for i in corpus.read(s)]
        grown = peak() - before
        print(json.dumps({{"grown": grown, "items": [[i.pair_id, i.error, i.edited is not None] for i in items]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import json
    out = json.loads(done.stdout)
    assert out["grown"] < 50 << 20, f"reading grew the process by {out['grown'] >> 20} MB"
    items = out["items"]
    assert [i[0] for i in items] == ["p000000-1", "p000001-2", "p000002-3", "p000003-1", "p000004-2", "p000005-3"]
    assert [i[1] is None and i[2] for i in items] == [True, True, False, False, True, True]
    for _, (code, message), _ in items[2:4]:
        assert code == "file_too_large"
        assert "row group 1" in message and "target_img.bytes holds a page of 2097" in message
        assert "io.limits.max_bytes=1048576" in message


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_chunks(n_empty: int, idat_piece: int | None = None) -> bytes:
    """An 8x8 grey PNG with `n_empty` empty ancillary chunks before its pixels, or its IDAT cut in
    `idat_piece`-byte chunks."""
    import struct
    import zlib
    w = h = 8
    comp = zlib.compress(b"".join(b"\0" + b"\x80" * (w * 3) for _ in range(h)))
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    step = idat_piece or len(comp)
    idat = b"".join(_chunk(b"IDAT", comp[i:i + step]) for i in range(0, len(comp), step))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"abCd", b"") * n_empty + idat + _chunk(b"IEND", b"")


def test_png_of_a_million_chunks_is_refused_before_pillow_walks_them():
    """1M empty ancillary chunks (12 MB, under io.limits.max_bytes) took Pillow's Image.open 6 s, one Python call
    per chunk; now the chunk count is bounded (MAX_PNG_CHUNKS) before Pillow sees the file."""
    import time

    import pytest

    from sigma.errors import LimitError
    from sigma.io.images import MAX_PNG_CHUNKS, decode_image

    bomb = _png_with_chunks(1_000_000)
    start = time.perf_counter()
    with pytest.raises(LimitError) as err:
        decode_image(bomb, "bomb.png")
    assert time.perf_counter() - start < 1.0
    assert err.value.code == "decompression_bomb" and f"more than {MAX_PNG_CHUNKS} chunks" in err.value.message
    assert err.value.message.startswith("bomb.png:")
    # at the cap (and with one-byte IDATs, each a decoder call) a PNG still decodes as before
    fine = decode_image(_png_with_chunks(MAX_PNG_CHUNKS - 3), "fine.png")
    assert fine.rgb.shape == (8, 8, 3) and (fine.rgb == 0x80).all()
    split = decode_image(_png_with_chunks(0, idat_piece=1), "split.png")
    assert (split.rgb == 0x80).all()


def test_api_probe_refuses_a_chunk_bomb_without_opening_it_twice():
    """The API's header check opened the PNG and then verify()-ed it: two walks of every chunk before the full
    decode; now the probe hands it to the full decode at once, which refuses it with the library's code."""
    import time

    import pytest

    from sigma.api.probe import check_pair
    from sigma.config.schema import IOConfig
    from sigma.errors import LimitError

    bomb = _png_with_chunks(1_000_000)
    start = time.perf_counter()
    with pytest.raises(LimitError) as err:
        check_pair(bomb, _png_with_chunks(0), None, IOConfig())
    assert time.perf_counter() - start < 1.0 and err.value.code == "decompression_bomb"


def _manifest_folder(tmp_path, name: str, text: str):
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (90, 20, 30)).save(tmp_path / "b.png")
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def _read_corpus(path, shard_size: int = 2):
    from sigma.io.corpora import open_corpus

    corpus = open_corpus(path, shard_size=shard_size)
    return [item for shard in corpus.plan() for item in corpus.read(shard)]


def test_csv_with_old_mac_and_mixed_line_endings_reads_every_record(tmp_path):
    """Lines ended at LF only: a CR-only CSV was one header line (the run refused with 'new-line character seen
    in unquoted field'), and in a mixed file a record ending in CR swallowed the next (two pairs, one bad_record).
    Now LF, CRLF and a lone CR each end a line, as in Python's text mode; shards seek to the right records."""
    rows = ["original,edited,instruction", "a.png,b.png,edit 0", "a.png,b.png,edit 1", "a.png,b.png,edit 2",
            'a.png,b.png,"two\rlines"', "a.png,b.png,edit 4"]
    cr = _manifest_folder(tmp_path, "cr.csv", "\r".join(rows) + "\r")
    items = _read_corpus(cr)
    assert [(i.instruction, i.error) for i in items] == [("edit 0", None), ("edit 1", None), ("edit 2", None),
                                                        ("two\rlines", None), ("edit 4", None)]
    assert [i.source for i in items] == ["cr.csv:line=2", "cr.csv:line=3", "cr.csv:line=4", "cr.csv:line=5",
                                         "cr.csv:line=7"]
    mixed = _manifest_folder(tmp_path, "mixed.csv", rows[0] + "\r\n" + rows[1] + "\r" + rows[2] + "\n" + rows[3]
                             + "\r\n\r" + rows[5])
    items = _read_corpus(mixed)
    assert [(i.instruction, i.error) for i in items] == [("edit 0", None), ("edit 1", None), ("edit 2", None),
                                                        ("edit 4", None)]


def test_jsonl_with_old_mac_line_endings_reads_every_record(tmp_path):
    """A CR-only pairs.jsonl was one line: the batch reader made one bad_record of all its pairs, `sigma eval`
    stopped at line 1 ('Extra data'). Both now read each record."""
    import json

    from sigma.io.pairs_jsonl import read_set

    records = [json.dumps({"id": f"p{i}", "original": "a.png", "edited": "b.png", "mask": "a.png",
                           "instruction": f"e{i}"}) for i in range(3)]
    path = _manifest_folder(tmp_path, "pairs.jsonl", "\r".join(records) + "\r")
    items = _read_corpus(path)
    assert [(i.pair_id, i.instruction, i.error) for i in items] == [("p0", "e0", None), ("p1", "e1", None),
                                                                   ("p2", "e2", None)]
    assert [r.pair_id for r in read_set(tmp_path)] == ["p0", "p1", "p2"]


def _colourful(h: int = 48, w: int = 64):
    import numpy as np

    y, x = np.mgrid[0:h, 0:w]          # smooth colours (JPEG keeps them), all over the gamut
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], axis=2).astype(np.uint8)


def _in_profile(rgb, icc: bytes):
    """sRGB pixels as another profile's values (what an editor exporting in that space writes)."""
    import io

    from PIL import Image, ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    target = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.profileToProfile(Image.fromarray(rgb), srgb, target,
                                     renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)


def _encoded(image, fmt: str, icc: bytes | None = None, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"icc_profile": icc} if icc else {}), **kw)
    return buf.getvalue()


def test_pair_with_different_colour_profiles_is_compared_in_srgb(tmp_path):
    """An original without a profile (sRGB) and its edit exported in Display P3 (PNG) or Adobe RGB (JPEG): raw
    values differ in every pixel, so pixel-diff marked most of the image. Both are now compared in sRGB: only the
    edited box is marked, and the conversion is recorded."""
    import numpy as np
    from iccprofiles import adobe_rgb, display_p3
    from PIL import Image

    from sigma.io.images import decode_image
    from sigma.io.pairs import pair_from_bytes
    from sigma.registry import create_annotator

    original = _colourful()
    edited = original.copy()
    edited[10:20, 12:30] = (250, 20, 200)
    box = np.zeros(original.shape[:2], bool)
    box[10:20, 12:30] = True
    plain = _encoded(Image.fromarray(original), "PNG")
    # 8 bits in another space and back: a few levels off in dark channels of saturated colours, more in JPEG
    for icc, fmt, tolerance in ((display_p3(), "PNG", 8), (adobe_rgb(), "JPEG", 32)):
        data = _encoded(_in_profile(edited, icc), fmt, icc,
                        **({"quality": 98, "subsampling": 0} if fmt == "JPEG" else {}))
        decoded = decode_image(data, f"edited.{fmt.lower()}")
        assert decoded.notes["icc_profile"].startswith("converted to sRGB from ")
        error = np.abs(decoded.rgb.astype(int) - edited.astype(int)).max(axis=2)
        error[7:23, 9:33] = 0                  # the box and 3 px around it, where JPEG rings at its edge
        assert error.max() <= tolerance and error.mean() < 2, (fmt, error.max(), error.mean())
        pair = pair_from_bytes(plain, data, "make the box magenta")
        mask = create_annotator("pixel-diff").predict([pair])[0].mask
        assert mask[box].mean() > 0.9 and mask[~box].mean() < 0.02, (fmt, mask[box].mean(), mask[~box].mean())


def test_srgb_and_unreadable_profiles_keep_the_values():
    """An sRGB profile is not converted (no rounding added); a profile littleCMS cannot read, or one of the wrong
    colour space, is ignored as browsers ignore it: the image still decodes, the note says why."""
    import numpy as np
    from iccprofiles import display_p3
    from PIL import Image, ImageCms

    from sigma.io.images import decode_image

    rgb = _colourful()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    kept = decode_image(_encoded(Image.fromarray(rgb), "PNG", srgb))
    assert np.array_equal(kept.rgb, rgb) and kept.notes["icc_profile"].startswith("sRGB")
    for bad in (b"not a profile at all" * 10, display_p3()[:200]):
        ignored = decode_image(_encoded(Image.fromarray(rgb), "PNG", bad))
        assert np.array_equal(ignored.rgb, rgb) and ignored.notes["icc_profile"].startswith("ignored")
    cmyk = Image.fromarray(rgb).convert("CMYK")                 # an RGB profile on a CMYK JPEG: not applied
    wrong = decode_image(_encoded(cmyk, "JPEG", display_p3(), quality=95))
    assert wrong.notes["icc_profile"].startswith("ignored") and wrong.rgb.shape == rgb.shape


def test_a_real_adobe_rgb_photo_against_its_srgb_export():
    """scikit-image's rocket.jpg carries an Adobe RGB (1998) profile (a camera's): against the same photo exported
    to sRGB (as any browser or editor shows it) with one box painted, only the box differs once both are sRGB."""
    import io
    import os
    from pathlib import Path

    import numpy as np
    import pytest
    from PIL import Image, ImageCms

    from sigma.io.pairs import pair_from_bytes
    from sigma.registry import create_annotator

    shared = Path(os.environ.get("SIGMA_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
    photo = shared / "data" / "photos" / "skimage" / "rocket.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} not here")
    data = photo.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        icc = img.info["icc_profile"]
        assert "Adobe RGB" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
        srgb = ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile(
            "sRGB"), renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    edited = np.array(srgb)
    edited[100:160, 200:300] = (255, 0, 255)
    pair = pair_from_bytes(data, _encoded(Image.fromarray(edited), "PNG"), "paint a magenta box")
    assert pair.preprocess["original"]["icc_profile"] == "converted to sRGB from Adobe RGB (1998)"
    mask = create_annotator("pixel-diff").predict([pair])[0].mask
    box = np.zeros(mask.shape, bool)
    box[100:160, 200:300] = True
    assert mask[box].mean() > 0.9 and mask[~box].mean() < 0.01, (mask[box].mean(), mask[~box].mean())


def test_corpus_paths_with_nul_bytes_or_too_long_names_are_clear_per_pair_errors(tmp_path):
    """A manifest naming a 6000-character path made the pair `decode_failed` with 'OSError: [Errno 36] File name
    too long' and the whole path in its message; a NUL byte in a path was 'file not found' with the NUL printed.
    Now: file_unreadable / invalid_path, the path shown cut and escaped; the good pairs are annotated."""
    import json

    from sigma.batch.decode import source_bytes
    from sigma.errors import SigmaError
    from sigma.io.images import read_image

    folder = tmp_path / "set"
    folder.mkdir()
    deep = "/".join(["d"] * 3000) + ".png"
    for bad, code in ((str(folder / ("x" * 5000 + ".png")), "file_unreadable"), (str(folder / deep), "file_unreadable"),
                      (str(folder / "a\x00.png"), "invalid_path")):
        for read in (lambda p: source_bytes(None, p, 1 << 20), read_image):
            try:
                read(bad)
            except SigmaError as exc:
                assert exc.code == code and len(exc.message) < 400 and "\x00" not in exc.message, exc.message
            else:
                raise AssertionError(f"{bad[:40]!r} was read")
    # through a real batch run: the row says so, the run goes on
    _manifest_folder(folder, "pairs.jsonl", "\n".join(json.dumps(r) for r in [
        {"id": "ok", "original": "a.png", "edited": "b.png", "mask": "a.png"},
        {"id": "long", "original": "x" * 5000 + ".png", "edited": "b.png", "mask": "a.png"},
        {"id": "nul", "original": "a\x00.png", "edited": "b.png", "mask": "a.png"}]) + "\n")
    from sigma.batch.decode import _decode_one
    from sigma.config.schema import IOConfig
    from sigma.io.corpora import open_corpus

    corpus = open_corpus(folder)
    results = {i.pair_id: _decode_one(i, IOConfig(), False, None) for s in corpus.plan() for i in corpus.read(s)}
    assert results["set/ok"].error is None and results["set/ok"].pair is not None
    assert results["set/long"].error[0] == "file_unreadable" and len(results["set/long"].error[1]) < 400
    assert results["set/nul"].error[0] == "invalid_path"


def _hostile_saved_dataset(tmp_path, cell_bytes: int, compression: str | None):
    """A save_to_disk folder of six InstructPix2Pix rows in batches of two; row 3's edited image is `cell_bytes`
    zeros, the Arrow stream compressed with `compression` (pyarrow writes it; `datasets` never does)."""
    import pyarrow as pa

    from sigma.io.corpora.synthetic import write_saved_dataset

    root = write_saved_dataset(tmp_path / f"ds-{compression}", synthetic_pairs(6), batch_rows=2)
    arrow = root / "data-00000-of-00001.arrow"
    with pa.memory_map(str(arrow)) as source:
        table = pa.ipc.open_stream(source).read_all()
    rows = table.to_pylist()
    rows[3]["edited_image"] = {"bytes": b"\0" * cell_bytes, "path": None}
    table = pa.Table.from_pylist(rows, schema=table.schema)
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=2)
    return root


def _read_in_child(path, max_bytes: int, preset: str | None = None, warm=None) -> dict:
    """Plan and read a corpus in a fresh process: its items and how much its peak RSS grew meanwhile (after
    reading the clean corpus `warm` first, so that imports and codecs are not counted)."""
    import json

    script = textwrap.dedent(f"""
        import json, re
        from sigma.io.corpora import open_corpus
        peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
        if {str(warm) if warm else None!r}:
            clean = open_corpus({str(warm)!r}, preset={preset!r}, shard_size=100)
            assert all(i.error is None for s in clean.plan() for i in clean.read(s))
        corpus = open_corpus({str(path)!r}, preset={preset!r}, shard_size=100)
        corpus.max_bytes = {max_bytes}
        before = peak()
        items = [i for s in corpus.plan() for i in corpus.read(s)]
        print(json.dumps({{"grown": peak() - before,
                          "items": [[i.pair_id, i.error, i.edited is not None] for i in items]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_saved_dataset_cell_bombs_are_refused_without_decompressing_or_copying(tmp_path):
    """An 11 KB zstd-compressed Arrow stream holding a 200 MB cell of zeros took 200 MB to plan (counting rows
    decoded every batch) and 600 MB to read; an uncompressed one had its cell copied to Python before the decoder
    refused it. Now rows are counted from the batch metadata, the compressed batch is refused from its buffer
    sizes (both its pairs file_too_large), the uncompressed cell from its length (only its pair), unread."""
    for compression, bad in (("zstd", [2, 3]), (None, [3])):
        root = _hostile_saved_dataset(tmp_path, 200 << 20, compression)
        clean = _hostile_saved_dataset(tmp_path / "clean", 100, compression)
        out = _read_in_child(root, 1 << 20, "instructpix2pix", warm=clean)
        assert out["grown"] < 50 << 20, f"{compression}: reading grew the process by {out['grown'] >> 20} MB"
        items = out["items"]
        assert len(items) == 6
        assert [n for n, (_, error, _) in enumerate(items) if error is not None] == bad
        assert all(edited for n, (_, error, edited) in enumerate(items) if n not in bad)
        for n in bad:
            code, message = items[n][1]
            assert code == "file_too_large" and "io.limits.max_bytes=1048576" in message, message
        assert ("decompresses a buffer of 2097" in items[3][1][1]) == (compression == "zstd")


def test_saved_dataset_in_the_ipc_file_format_or_broken(tmp_path):
    """The batch metadata walk also reads the IPC *file* format (magic, stream, footer); a file that is not Arrow,
    or is cut short, is bad_dataset at plan time, not a traceback."""
    import pyarrow as pa
    import pytest

    from sigma.errors import InputError
    from sigma.io.corpora import open_corpus

    root = _hostile_saved_dataset(tmp_path, 100, None)
    arrow = root / "data-00000-of-00001.arrow"
    with pa.memory_map(str(arrow)) as source:
        table = pa.ipc.open_stream(source).read_all()
    rewritten = arrow.with_suffix(".new")       # not over the mapped file: the table still reads from it
    with pa.OSFile(str(rewritten), "wb") as sink, pa.ipc.new_file(
            sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(table, max_chunksize=4)
    del table
    rewritten.replace(arrow)
    corpus = open_corpus(root, preset="instructpix2pix", shard_size=100)
    items = [i for s in corpus.plan() for i in corpus.read(s)]
    assert len(items) == 6 and all(i.error is None and i.edited for i in items)
    whole = arrow.read_bytes()
    for broken in (b"not an arrow file at all", whole[:len(whole) // 2]):
        rewritten.write_bytes(broken)
        rewritten.replace(arrow)
        with pytest.raises(InputError) as err:
            open_corpus(root, preset="instructpix2pix", shard_size=100).plan()
        assert err.value.code == "bad_dataset"


def test_exif_orientations_that_differ_between_the_two_images_are_said():
    """A camera JPEG stored landscape with orientation 6, and its edit saved by a tool that dropped the tag without
    turning the pixels: the original was turned upright, the edit not; a square pair then differed in every pixel
    without a word, an oblong one was an aspect_mismatch that did not say why. Both now name the orientations."""
    import numpy as np
    import pytest
    from PIL import Image

    from sigma.errors import InputError
    from sigma.io.pairs import pair_from_bytes

    def jpeg(rgb, orientation=None) -> bytes:
        image = Image.fromarray(rgb)
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation
        return _encoded(image, "JPEG", quality=95, exif=exif.tobytes())

    square = _colourful(48, 48)
    pair = pair_from_bytes(jpeg(square, 6), jpeg(square), "nothing", names=("o.jpg", "e.jpg"))
    warning = " ".join(pair.preprocess.get("warnings", []))
    assert "different EXIF orientations (o.jpg: 90 degrees clockwise, e.jpg: none)" in warning
    assert pair.preprocess["original"]["exif_orientation"] == 6
    oblong = _colourful(48, 64)
    with pytest.raises(InputError) as err:
        pair_from_bytes(jpeg(oblong, 6), jpeg(oblong), "nothing", names=("o.jpg", "e.jpg"))
    assert err.value.code == "aspect_mismatch" and "different EXIF orientations" in err.value.message
    same = pair_from_bytes(jpeg(oblong, 6), jpeg(oblong, 6), "nothing")       # both tagged: no word
    assert not any("EXIF" in w for w in same.preprocess.get("warnings", []))
    assert np.asarray(same.original).shape == (64, 48, 3)


@pytest.mark.parametrize("padding", ["segments", "fill", "junk"])
def test_jpeg_headers_of_endless_segments_or_fill_are_refused_before_pillow_walks_them(padding):
    """Pillow reads a JPEG header one segment, fill byte or junk byte per Python step: 3M empty APP1 segments
    (12 MB) took ~5 s to open, and the API probe opened such a file before its scan check. Now the header is
    measured first (MAX_JPEG_HEADER_STEPS); a normal JPEG with EXIF, ICC and a little padding still decodes."""
    import time

    from PIL import Image

    from sigma.api.probe import check_pair
    from sigma.config.schema import IOConfig
    from sigma.errors import LimitError
    from sigma.io.images import MAX_JPEG_HEADER_STEPS, decode_image

    plain = _encoded(Image.new("RGB", (8, 8), (10, 20, 30)), "JPEG")
    head, rest = plain[:20], plain[20:]                 # SOI + APP0 (JFIF), then the tables and the scan
    filler = {"segments": b"\xff\xe1\x00\x02" * 3_000_000, "fill": b"\xff" * 12_000_000,
              "junk": b"\x00" * 12_000_000}[padding]
    bomb = head + filler + rest
    for check in (lambda: decode_image(bomb, "bomb.jpg"), lambda: check_pair(bomb, plain, None, IOConfig())):
        start = time.perf_counter()
        with pytest.raises(LimitError) as err:
            check()
        assert time.perf_counter() - start < 1.0 and err.value.code == "decompression_bomb"
        assert f"more than {MAX_JPEG_HEADER_STEPS} segments" in err.value.message
    small = {"segments": b"\xff\xe1\x00\x02" * 200, "fill": b"\xff" * 1000, "junk": b"\x00" * 1000}[padding]
    exif = Image.Exif()
    exif[0x010F] = "camera"
    from iccprofiles import display_p3
    real = _encoded(Image.new("RGB", (8, 8), (10, 20, 30)), "JPEG", display_p3(), exif=exif.tobytes())
    assert decode_image(real[:20] + small + real[20:]).rgb.shape == (8, 8, 3)


def test_folder_instruction_files_are_read_within_bounds(tmp_path, monkeypatch):
    """instructions.jsonl was read a text line at a time with no bound (a 600 MB line: gigabytes), and
    instructions.json whole at any size. Now a line over MAX_RECORD_BYTES, or a JSON file over its bound, is the
    corpus's bad_manifest, said before any shard runs; CR-only lines work as in the manifests."""
    import json

    from PIL import Image

    from sigma.errors import InputError
    from sigma.io.corpora import folder, open_corpus

    for name in ("p1", "p2"):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / f"{name}_original.png")
        Image.new("RGB", (8, 8), (9, 2, 3)).save(tmp_path / f"{name}_edited.png")
    lines = [json.dumps({"id": "p1", "instruction": "one"}), json.dumps({"id": "p2", "instruction": "two"})]
    (tmp_path / "instructions.jsonl").write_bytes("\r".join(lines).encode())
    corpus = open_corpus(tmp_path)
    assert [i.instruction for s in corpus.plan() for i in corpus.read(s)] == ["one", "two"]
    (tmp_path / "instructions.jsonl").write_bytes(
        (json.dumps({"id": "p1", "instruction": "x" * (3 << 20)}) + "\n" + lines[1]).encode())
    with pytest.raises(InputError) as err:
        open_corpus(tmp_path).plan()
    assert err.value.code == "bad_manifest" and "longer than 1048576 bytes" in err.value.message
    (tmp_path / "instructions.jsonl").unlink()
    (tmp_path / "instructions.json").write_text(json.dumps({"p1": "one", "p2": "two " * 500}))
    monkeypatch.setattr(folder, "MAX_INSTRUCTIONS_JSON_BYTES", 1000)
    with pytest.raises(InputError) as err:
        open_corpus(tmp_path).plan()
    assert err.value.code == "bad_manifest" and "write instructions.jsonl" in err.value.message


def test_saved_dataset_index_files_are_read_within_a_bound(tmp_path):
    """state.json and dataset_dict.json were read whole at any size; above MAX_INDEX_BYTES (16 MiB, for an index of
    a few hundred bytes per data file) they are now bad_dataset, read no further."""
    from sigma.errors import InputError
    from sigma.io.corpora import open_corpus

    MAX_INDEX_BYTES = 16 * 1024 * 1024
    root = _hostile_saved_dataset(tmp_path, 100, None)
    state = root / "state.json"
    assert len(open_corpus(root, preset="instructpix2pix").plan()) == 1
    state.write_bytes(b" " * (MAX_INDEX_BYTES + 1) + state.read_bytes())       # valid JSON, padded
    with pytest.raises(InputError) as err:
        open_corpus(root, preset="instructpix2pix").plan()
    assert err.value.code == "bad_dataset" and f"more than {MAX_INDEX_BYTES} bytes" in err.value.message


def test_csv_quote_never_closed_is_a_bad_record_not_a_giant_instruction(tmp_path):
    """A stray quote opening a field (`"edit 1` with no closing quote) made the csv module take the rest of the
    file as that one field: the pairs after it vanished and the pair got a many-line instruction, status ok. Now
    that record is a bad_record saying the quote is never closed; a quoted field that closes still spans lines."""
    text = ('original,edited,instruction\na.png,b.png,edit 0\na.png,b.png,"two\nlines"\n'
            'a.png,b.png,"edit 2\na.png,b.png,edit 3\na.png,b.png,edit 4\n')
    items = _read_corpus(_manifest_folder(tmp_path, "q.csv", text))
    assert [(i.instruction, i.error and i.error[0]) for i in items] == [
        ("edit 0", None), ("two\nlines", None), (None, "bad_record")]
    assert "line=5" in items[2].source and "never closed" in items[2].error[1]


def test_folder_instructions_csv_with_an_unclosed_quote_is_refused(tmp_path):
    """instructions.csv with `p1,"one` and no closing quote gave p1 the rest of the file as its instruction and p2
    none, silently; now the file is the corpus's bad_manifest."""
    from PIL import Image

    from sigma.errors import InputError
    from sigma.io.corpora import open_corpus

    for name in ("p1", "p2"):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / f"{name}_original.png")
        Image.new("RGB", (8, 8), (9, 2, 3)).save(tmp_path / f"{name}_edited.png")
    (tmp_path / "instructions.csv").write_text('id,instruction\np1,make it 5" wide\np2,"a ""b"" c"\n')
    corpus = open_corpus(tmp_path)
    assert [i.instruction for s in corpus.plan() for i in corpus.read(s)] == ['make it 5" wide', 'a "b" c']
    (tmp_path / "instructions.csv").write_text('id,instruction\np1,"one\np2,two\n')
    with pytest.raises(InputError) as err:
        open_corpus(tmp_path).plan()
    assert err.value.code == "bad_manifest" and "unexpected end of data" in err.value.message


def test_page_header_walk_of_garbage_stops_with_an_error(tmp_path):
    """The hand-written Thrift reader meets hostile bytes: random data, a header that never ends, a length that
    points past the file, endless nesting, a list of 2**63 bools. Each is a PageHeaderError (its row group
    refused), never a hang; the list stops at MAX_HEADER_STEPS bytes parsed, not at the 1 MiB header bound
    (~0.5 s a page before, and 100000 pages a chunk were allowed)."""
    import io
    import os
    import random
    import time

    from sigma.io.corpora.parquet_pages import MAX_HEADER_STEPS, PageHeaderError, column_pages

    endless_list = b"\x19\xf1" + b"\xff" * 8 + b"\x7f" + b"\x01" * 2_000_000     # a list of 2**63 bools
    with pytest.raises(PageHeaderError, match=f"more than {MAX_HEADER_STEPS} fields"):
        column_pages(io.BytesIO(endless_list), 0, len(endless_list))
    # containers whose elements read no byte (bytes and doubles are seeked over, a map's bools are in its type
    # byte): 2**63 of them looped for ever (CI hung here on random bytes that happened to spell one)
    huge = b"\xff" * 8 + b"\x7f"
    for endless in (b"\x19\xf3" + huge, b"\x19\xf7" + huge, b"\x1a\xf3" + huge, b"\x1b" + huge + b"\x11",
                    b"\x1b" + huge + b"\x37", b"\x1c\x19\xf3" + huge):
        started = time.monotonic()
        with pytest.raises(PageHeaderError, match=f"more than {MAX_HEADER_STEPS} fields"):
            column_pages(io.BytesIO(endless + b"\x00" * 64), 0, len(endless) + 64)
        assert time.monotonic() - started < 1.0, endless
    rng = random.Random(14)
    cases = [*(os.urandom(4096) for _ in range(200)), *(rng.randbytes(512) for _ in range(3000)), b"\x1c" * 100_000,
             b"\x15\x00\x15\x04\x15\x04\x18\xff\xff\xff\xff\x0f", b"\x19\xf8" * 50_000, b""]
    for data in cases:
        try:
            pages = column_pages(io.BytesIO(data), 0, len(data) or 1)
        except PageHeaderError:
            continue
        assert all(p.compressed >= 0 and p.uncompressed >= 0 for p in pages)


def test_arrow_batch_metadata_of_garbage_stops_with_an_error():
    """The hand-read flatbuffer metadata of a record batch meets hostile bytes: each is a BatchMetadataError (the
    file bad_dataset) or no record batch at all, quickly; never another exception."""
    import os
    import struct
    import time

    from sigma.io.corpora.arrow_batches import BatchMetadataError, batch_info

    # a RecordBatch header whose buffers vector claims 2**32 - 1 entries
    huge = bytearray(64)
    struct.pack_into("<I", huge, 0, 16)                    # root table at 16
    struct.pack_into("<i", huge, 16, 16 - 4)               # its vtable at 4
    struct.pack_into("<HHHHH", huge, 4, 10, 12, 0, 4, 8)   # fields: header_type at +4, header at +8
    huge[20] = 3                                           # RecordBatch
    struct.pack_into("<I", huge, 24, 8)                    # header table at 32
    struct.pack_into("<i", huge, 32, 32 - 40)              # vtable at 40
    struct.pack_into("<HHHHH", huge, 40, 10, 8, 0, 0, 4)   # field 2 (buffers) at +4
    struct.pack_into("<I", huge, 36, 12)                   # vector at 48
    struct.pack_into("<I", huge, 48, 0xFFFFFFFF)
    for meta in [os.urandom(n) for n in range(0, 400, 3)] + [bytes(huge)]:
        start = time.perf_counter()
        try:
            batch_info(meta, None)
        except BatchMetadataError:
            pass
        assert time.perf_counter() - start < 1.0


def test_saved_dataset_oversized_cell_keeps_its_pair_id(tmp_path):
    """The pair refused for an oversized cell is named by its id columns (MagicBrush: img_id-turn_index), as
    every other pair of the corpus is, not by its row number."""
    import pyarrow as pa

    from sigma.io.corpora import open_corpus
    from sigma.io.corpora.synthetic import write_saved_dataset

    root = write_saved_dataset(tmp_path / "mb", synthetic_pairs(4), preset="magicbrush", batch_rows=2)
    arrow = root / "data-00000-of-00001.arrow"
    with pa.memory_map(str(arrow)) as source:
        table = pa.ipc.open_stream(source).read_all()
    schema, rows = table.schema, table.to_pylist()
    del table                                   # nothing reads the mapped file while it is rewritten
    rows[3]["target_img"] = {"bytes": b"\0" * (3 << 20), "path": None}
    table = pa.Table.from_pylist(rows, schema=schema)
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table, max_chunksize=2)
    corpus = open_corpus(root, preset="magicbrush")
    corpus.max_bytes = 1 << 20
    items = [i for s in corpus.plan() for i in corpus.read(s)]
    assert [i.pair_id for i in items] == ["p000000-1", "p000001-2", "p000002-3", "p000003-1"]
    assert [i.error and i.error[0] for i in items] == [None, None, None, "file_too_large"]
    assert "column target_img.bytes holds 3145728 bytes" in items[3].error[1]


def test_a_huge_embedded_profile_is_used_but_not_kept():
    """A JPEG can carry a 16 MB profile in 255 pieces; the transform cache kept each profile's bytes as its key (8
    of them: 128 MB held by a worker for good). A profile above 1 MiB is converted with but not cached."""
    import struct

    from iccprofiles import rgb_profile
    from PIL import Image

    from sigma.io import images

    def padded(name: str, extra: int) -> bytes:
        profile = rgb_profile(name)                 # bytes after the last tag: still a valid profile
        return struct.pack(">I", len(profile) + extra) + profile[4:] + b"\0" * extra

    cache = getattr(images, "_cached_srgb_transform", images._srgb_transform)     # (before: the one cache)
    cache.cache_clear()
    rgb = _colourful()
    big = _encoded(Image.fromarray(rgb), "JPEG", padded("Big P3", 3 << 20), quality=95)
    small = _encoded(Image.fromarray(rgb), "JPEG", padded("Small P3", 1000), quality=95)
    assert images.decode_image(big).notes["icc_profile"] == "converted to sRGB from Big P3"
    assert cache.cache_info().currsize == 0
    assert images.decode_image(small).notes["icc_profile"] == "converted to sRGB from Small P3"
    assert cache.cache_info().currsize == 1


def test_a_fifo_or_folder_named_like_a_parquet_file_is_not_opened(tmp_path):
    """A FIFO named b.parquet beside a real one hung the plan for ever (pyarrow waited for a writer); a folder
    named c.parquet failed the corpus as bad_parquet. Only regular files are parquet files now."""
    import os

    write_parquet(tmp_path / "a.parquet", synthetic_pairs(2), "magicbrush")
    os.mkfifo(tmp_path / "b.parquet")
    (tmp_path / "c.parquet").mkdir()
    script = textwrap.dedent(f"""
        from sigma.io.corpora import open_corpus
        corpus = open_corpus({str(tmp_path)!r}, preset="magicbrush")
        print(len([i for s in corpus.plan() for i in corpus.read(s) if i.error is None]))
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("planning the corpus hung on the FIFO") from None
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["instructions.jsonl", "instructions.json", "instructions.csv"])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder", "broken_link"])
def test_a_folder_corpus_instructions_file_that_is_no_regular_file_is_refused(tmp_path, name, kind):
    """A folder corpus's instructions file that is a FIFO, a link to /dev/zero, a folder or a broken link was passed
    over in silence (`is_file()` false): the run went on and every pair was annotated without its instruction. Now
    the corpus's `bad_manifest` before any shard runs, and nothing is opened (a FIFO's open would block)."""
    import os

    from sigma.io.corpora.synthetic import write_folder

    corpus = tmp_path / "corpus"
    write_folder(corpus, synthetic_pairs(2, size=32))
    for existing in corpus.glob("instructions.*"):
        existing.unlink()
    made = {"fifo": os.mkfifo, "dev_zero": lambda p: p.symlink_to("/dev/zero"), "folder": lambda p: p.mkdir(),
            "broken_link": lambda p: p.symlink_to(tmp_path / "gone.jsonl")}
    made[kind](corpus / name)
    script = textwrap.dedent(f"""
        from sigma.errors import SigmaError
        from sigma.io.corpora import open_corpus
        try:
            open_corpus({str(corpus)!r}, format="folder").plan()
        except SigmaError as exc:
            print(exc.code, exc)
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("planning the corpus hung on its instructions file") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"bad_manifest {corpus / name}: not a regular file"), done.stdout


def test_a_tar_of_many_members_is_read_without_keeping_their_headers(tmp_path):
    """TarFile keeps every member header it has read: planning and reading a WebDataset shard of 400000 empty
    members held 200 MB. Now each header is dropped once read."""
    import io
    import tarfile

    path = tmp_path / "many.tar"
    with tarfile.open(path, "w") as tf:
        for i in range(150_000):
            info = tarfile.TarInfo(f"k{i:07d}.{'edited' if i % 2 else 'original'}.png")
            tf.addfile(info, io.BytesIO(b""))
    script = textwrap.dedent(f"""
        import re
        from sigma.io.corpora import open_corpus
        peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
        corpus = open_corpus({str(path)!r})
        before = peak()
        shards = corpus.plan()
        pairs = sum(1 for s in shards for _ in corpus.read(s))
        print(pairs, shards[0].num_items, peak() - before)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pairs, planned, grown = map(int, done.stdout.split())
    assert pairs == planned == 150_000
    assert grown < 40 << 20, f"planning and reading grew the process by {grown >> 20} MB"


def test_api_probe_says_why_the_aspect_differs_when_exif_orientations_do():
    """The API's header check refused an oblong pair whose EXIF orientations differ as a bare aspect_mismatch; it
    now gives the library's message, which names both orientations."""
    from PIL import Image

    from sigma.api.probe import check_pair
    from sigma.config.schema import IOConfig
    from sigma.errors import InputError

    exif = Image.Exif()
    exif[0x0112] = 6
    oblong = Image.fromarray(_colourful(48, 64))
    tagged = _encoded(oblong, "JPEG", quality=95, exif=exif.tobytes())
    with pytest.raises(InputError) as err:
        check_pair(tagged, _encoded(oblong, "JPEG", quality=95), None, IOConfig())
    assert err.value.code == "aspect_mismatch" and "different EXIF orientations" in err.value.message


def _strip_tiff(rows: int, second_page: bool = False) -> bytes:
    """An RGB TIFF one pixel wide with one row per strip (`rows` strips); with `second_page`, that page comes
    second, after an ordinary 8x8 one."""
    import struct

    def page(width: int, height: int, at: int, strips: int, next_ifd: int = 0) -> tuple[bytes, int]:
        pixels = b"\x80" * (width * height * 3)
        per = height // strips
        offsets_at = at + len(pixels)
        offsets = struct.pack(f"<{strips}I", *range(at, at + len(pixels), width * per * 3))
        counts_at = offsets_at + len(offsets)
        counts = struct.pack(f"<{strips}I", *([width * per * 3] * strips))
        bps_at = counts_at + len(counts)
        ifd_at = bps_at + 6
        tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bps_at), (259, 3, 1, 1), (262, 3, 1, 2),
                (273, 4, strips, offsets_at if strips > 1 else at), (277, 3, 1, 3), (278, 4, 1, per),
                (279, 4, strips, counts_at if strips > 1 else width * per * 3)]
        ifd = struct.pack("<H", len(tags)) + b"".join(
            struct.pack("<HHII", t, ty, c, v) if ty == 4 or t == 258 else struct.pack("<HHIHH", t, ty, c, v, 0)
            for t, ty, c, v in tags)
        body = pixels + offsets + counts + struct.pack("<3H", 8, 8, 8) + ifd
        return body + struct.pack("<I", next_ifd), ifd_at

    if not second_page:
        body, ifd_at = page(1, rows, 8, rows)
        return b"II*\x00" + struct.pack("<I", ifd_at) + body
    first, first_ifd = page(8, 8, 8, 1)
    second, second_ifd = page(1, rows, 8 + len(first), rows)
    first = first[:-4] + struct.pack("<I", second_ifd)
    return b"II*\x00" + struct.pack("<I", first_ifd) + first + second


def test_tiff_of_a_million_strips_is_refused_before_pillow_lists_them():
    """Pillow makes a Python list entry per strip of page 1 when it opens a TIFF: 1M one-row strips (10 MB, 1 Mpx)
    took 2.2 s to open and 5 s and 350 MB to decode. The first IFD's count is now read first (MAX_TIFF_STRIPS);
    ordinary and multi-page TIFFs still decode."""
    import io
    import time

    from PIL import Image

    from sigma.api.probe import check_pair
    from sigma.config.schema import IOConfig
    from sigma.errors import LimitError
    from sigma.io.images import MAX_TIFF_STRIPS, decode_image

    plain = _encoded(Image.new("RGB", (8, 8), (1, 2, 3)), "TIFF")
    bomb = _strip_tiff(1_000_000)
    for check in (lambda: decode_image(bomb, "bomb.tif"), lambda: check_pair(bomb, plain, None, IOConfig())):
        start = time.perf_counter()
        with pytest.raises(LimitError) as err:
            check()
        assert time.perf_counter() - start < 1.5 and err.value.code == "decompression_bomb"
        assert f"more than {MAX_TIFF_STRIPS} strips" in err.value.message
    assert decode_image(_strip_tiff(2000)).rgb.shape == (2000, 1, 3)            # one-row strips, a scanner's
    for rows in (1000, 1_000_000):          # a later page is never set up, whatever its strips
        two = decode_image(_strip_tiff(rows, second_page=True))
        assert two.rgb.shape == (8, 8, 3) and two.notes["multi_frame"] == "first frame used"
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (5, 6, 7)).save(buf, "TIFF", compression="tiff_deflate")
    assert decode_image(buf.getvalue()).rgb.shape == (48, 64, 3)


def _png_with_metadata(kind: bytes, inflated: int) -> bytes:
    """An 8x8 grey PNG whose `kind` chunk (iCCP, zTXt or iTXt) holds `inflated` zero bytes, zlib-compressed."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buf, "PNG")
    png = buf.getvalue()
    head = {b"iCCP": b"profile\0\0", b"zTXt": b"Comment\0\0", b"iTXt": b"Comment\0\1\0\0\0"}[kind]
    body = head + zlib.compress(b"\0" * inflated, 9)
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


@pytest.mark.parametrize("kind", [b"iCCP", b"zTXt", b"iTXt"])
def test_a_png_whose_metadata_inflates_past_pillows_limit_is_a_decompression_bomb(kind, tmp_path):
    """A PNG of sound pixels with a 200 KB metadata chunk that inflates to 200 MB: Pillow refuses it (a ValueError
    past its 1 MiB per chunk), which was said `image_unreadable` (HTTP 422, "unreadable or truncated image"); it is
    a limit met, `decompression_bomb` (413), by the file reader, the header probe and the API's check alike. The same
    chunk inflating to 100 KB is read."""
    from sigma.api.probe import check_pair
    from sigma.config.schema import IOConfig
    from sigma.errors import LimitError
    from sigma.io.images import decode_image, probe_image_file, read_image

    path = tmp_path / "meta.png"
    path.write_bytes(_png_with_metadata(kind, 200 << 20))
    assert path.stat().st_size < 1 << 20
    for read in (read_image, probe_image_file):
        with pytest.raises(LimitError) as err:
            read(path)
        assert err.value.code == "decompression_bomb" and "PNG metadata chunk" in err.value.message
    with pytest.raises(LimitError) as err:
        check_pair(path.read_bytes(), _png_with_metadata(kind, 10), None, IOConfig())
    assert err.value.code == "decompression_bomb"
    fine = decode_image(_png_with_metadata(kind, 100_000), "fine.png")
    assert fine.rgb.shape == (8, 8, 3) and (fine.rgb == 128).all()


def _tiff_with_private_tags(count: int) -> bytes:
    """A 16x16 grey TIFF (uncompressed, one strip) whose IFD also holds `count` private tags (50000 on, one byte)."""
    import struct

    base = [(256, 3, 1, 16), (257, 3, 1, 16), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, None),
            (277, 3, 1, 1), (278, 3, 1, 16), (279, 4, 1, 256)]
    tags = base + [(50000 + i, 7, 1, 0x41) for i in range(count)]
    pixels = 8 + 2 + 12 * len(tags) + 4
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(tags)))
    for tag, kind, n, value in tags:
        value = pixels if value is None else value
        out += struct.pack("<HHIHH", tag, kind, n, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, n, value)
    return bytes(out + struct.pack("<I", 0) + b"\x80" * 256)


def test_a_tiff_of_thousands_of_tags_is_refused_before_pillow_reads_them():
    """Pillow reads every tag of a TIFF's IFD in Python, three times over: 15000 private tags (180 KB) took 1.7 s to
    decode a 16x16 picture, a classic TIFF's most (65535, 790 KB) about 7 s, each request. More than 4096 tags is
    now `decompression_bomb` before Pillow opens the file; a file of 4000 (real ones have a few dozen) is read."""
    from sigma.errors import LimitError
    from sigma.io.images import MAX_TIFF_IFD_ENTRIES, decode_image

    with pytest.raises(LimitError) as caught:
        decode_image(_tiff_with_private_tags(15_000), "tags.tif")
    assert caught.value.code == "decompression_bomb"
    assert f"more than {MAX_TIFF_IFD_ENTRIES} tags" in caught.value.message
    fine = decode_image(_tiff_with_private_tags(MAX_TIFF_IFD_ENTRIES - 9), "fine.tif")
    assert fine.rgb.shape == (16, 16, 3) and (fine.rgb == 0x80).all()
