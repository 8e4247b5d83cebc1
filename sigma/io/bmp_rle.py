"""Run-length-coded BMPs (RLE8, RLE4) bounded by the work Pillow's decoder does on them, checked before decoding.

Pillow decodes a BMP's runs in Python (`BmpImagePlugin.BmpRleDecoder`): a loop step per run (~2.7 us), and one per
pixel where it pads a row that an end-of-line code leaves short (~0.7 us) and in every run of a 4-bit file (~0.3 us).
A 9 KB RLE8 file of 2000 rows, each one pixel and an end of line, took 2.75 s to decode; at 6000x6000, under the
pixel limit, 24 KB would take half a minute; 1 million one-pixel runs (2 MB) took 2.7 s, 4 million 13.7 s. Work is
counted in steps of ~0.7 us: a run (or a code) 4, a delta code (skipping up to 255 pixels and rows, each
appended) 16, a padded or 4-bit pixel 1. A real run-length-coded BMP (a palette
picture: rows of runs and literal stretches of up to 255 pixels, each row filled) is a few runs a row: a 6000x6000
8-bit one about 150 000 runs, 600 000 steps.
"""
from __future__ import annotations

from sigma.errors import LimitError

MAX_BMP_RLE_STEPS = 1 << 21       # ~1.5 s of Pillow's decoder
RUN_STEPS, DELTA_STEPS = 4, 16
_RLE8, _RLE4 = 1, 2


def bmp_rle_steps(data: bytes, cap: int = MAX_BMP_RLE_STEPS) -> int:
    """The steps Pillow's decoder takes on the runs of run-length-coded BMP `data`, counted no further than `cap` + 1
    (the walk itself costs at most that many runs); 0 for data that is not such a BMP."""
    if len(data) < 34 or data[:2] != b"BM" or int.from_bytes(data[14:18], "little") < 40:
        return 0                          # not a BMP, or an OS/2 header of 12 bytes (no compression field)
    compression = int.from_bytes(data[30:34], "little")
    if compression not in (_RLE8, _RLE4):
        return 0
    width = max(1, abs(int.from_bytes(data[18:22], "little", signed=True)))
    i, end, steps, x = int.from_bytes(data[10:14], "little"), len(data), 0, 0
    while i + 2 <= end and steps <= cap:
        count, value = data[i], data[i + 1]
        i, steps = i + 2, steps + RUN_STEPS
        if count:                                             # a run of `count` pixels of one value
            count = min(count, max(0, width - x))
            x += count
            steps += count if compression == _RLE4 else 0
        elif value == 0:                                      # end of line: the row padded pixel by pixel
            steps, x = steps + (width - x % width) % width, 0
        elif value == 1:                                      # end of bitmap
            break
        elif value == 2:                                      # delta: skip right and up
            x = (x + (data[i] if i < end else 0)) % width
            i, steps = i + 2, steps + DELTA_STEPS - RUN_STEPS
        else:                                                 # `value` literal pixels, padded to an even byte count
            size = value if compression == _RLE8 else (value + 1) // 2
            i += size + (size & 1)
            x += value
            steps += value if compression == _RLE4 else 0
    return steps


def check_bmp_rle(data: bytes, name: str) -> None:
    if bmp_rle_steps(data) > MAX_BMP_RLE_STEPS:
        raise LimitError(f"{name}: a run-length-coded BMP whose runs take more than {MAX_BMP_RLE_STEPS} steps to "
                         "decode (runs, and pixels padded or of 4 bits, each decoded one by one): refused before "
                         "decoding as a decompression bomb", code="decompression_bomb")
