"""Run-length-coded BMPs (RLE8, RLE4), written here byte by byte (Pillow writes none): Pillow decodes their runs in
Python, so a small file of many short runs or short rows took seconds to minutes; now such a file is refused before
decoding (`decompression_bomb`), and a real one decodes as it did."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from sigma.errors import LimitError
from sigma.io.images import decode_image


def rle_bmp(width: int, height: int, runs: bytes, rle4: bool = False) -> bytes:
    """A bottom-up BMP of a grey palette (256 or 16 entries) whose pixels are the run-length-coded `runs`."""
    colours = 16 if rle4 else 256
    palette = b"".join(bytes((i * 255 // (colours - 1),) * 3 + (0,)) for i in range(colours))
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 4 if rle4 else 8, 2 if rle4 else 1, len(runs),
                         2835, 2835, colours, 0)
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset) + header + palette + runs


@pytest.mark.parametrize(("make", "what"), [
    (lambda: rle_bmp(2000, 2000, b"\x01\x07\x00\x00" * 2000 + b"\x00\x01"), "rows of one pixel (9 KB: 2.75 s)"),
    (lambda: rle_bmp(1000, 1000, (b"\x01\x07" * 1000 + b"\x00\x00") * 1000 + b"\x00\x01"), "one-pixel runs (2.7 s)"),
    (lambda: rle_bmp(2000, 2000, (b"\xff\x12" * 7 + b"\xd5\x12\x00\x00") * 2000 + b"\x00\x01", rle4=True),
     "4-bit runs (1 s)"),
    (lambda: rle_bmp(6000, 6000, b"\x00\x02\xff\x00" * 200_000 + b"\x00\x01"), "delta codes (0.8 MB: 3 s)"),
])
def test_a_run_length_coded_bmp_of_too_many_steps_is_refused_before_decoding(make, what):
    """Each of these decoded in seconds from a small file, and grows with the picture up to the pixel limit: rows
    of one pixel at 6000x6000 are 24 KB and half a minute of Pillow's Python loop."""
    with pytest.raises(LimitError) as refused:
        decode_image(make(), "runs.bmp")
    assert refused.value.code == "decompression_bomb", what
    assert "runs.bmp: a run-length-coded BMP whose runs take more than" in str(refused.value)


def _real_runs(picture: np.ndarray, rle4: bool) -> bytes:
    """`picture` (palette indices, top row first) coded as an encoder codes it: per row, runs of one value (up to
    255) and literal stretches (up to 255), an end of line after each row, an end of bitmap."""
    out = bytearray()
    for row in picture[::-1]:
        x, width = 0, len(row)
        while x < width:
            same = 1
            while x + same < width and same < 255 and row[x + same] == row[x]:
                same += 1
            if same >= 3 or x + same == width:
                out += bytes((same, int(row[x]) * 17 if rle4 else int(row[x])))
                x += same
                continue
            n = min(255, width - x)
            while n > 3 and len(set(row[x + n - 3:x + n].tolist())) == 1:
                n -= 1
            n = max(n, 3)
            stretch = row[x:x + n].tolist()
            if rle4:
                packed = bytes((a << 4) | b for a, b in zip(stretch[::2], stretch[1::2] + [0] * (n % 2)))
            else:
                packed = bytes(stretch)
            out += bytes((0, n)) + packed + b"\x00" * (len(packed) & 1)
            x += n
        out += b"\x00\x00"
    return bytes(out + b"\x00\x01")


@pytest.mark.parametrize("rle4", [False, True])
def test_a_real_run_length_coded_bmp_still_decodes_as_it_did(rle4):
    """A palette picture of flat areas and noisy ones, coded as an encoder codes it: decoded by Pillow as before."""
    rng = np.random.default_rng(3)
    colours = 16 if rle4 else 256
    picture = np.zeros((300, 700), np.uint8)
    picture[:, :350] = rng.integers(0, colours, (300, 350))
    picture[100:200, 400:600] = colours - 1
    data = rle_bmp(700, 300, _real_runs(picture, rle4), rle4=rle4)
    decoded = decode_image(data, "real.bmp")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(decoded.rgb, expected)
    grey = (picture.astype(np.int32) * 255 // (colours - 1)).astype(np.uint8)
    assert np.array_equal(decoded.rgb[..., 0], grey)
