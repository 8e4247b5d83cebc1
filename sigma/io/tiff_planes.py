"""The 16-bit samples of a colour TIFF stored as separate planes (PlanarConfiguration=2), compressed or not.

OpenCV (5.1) reads such a file's red plane and then noise as if the samples were interleaved, a picture of stripes
that was annotated as it was (such a TIFF against itself marked over half of the image changed). Pillow reads a
compressed one right but in 8 bits, the high byte (v >> 8), and an uncompressed one as noise. So the samples are
read here, uint16 [H, W, 3 or 4] as stored, and the caller scales them as every 16-bit image is, round(v / 65535 *
255): uncompressed, from the file's strips or tiles; compressed, by Pillow's libtiff, one plane at a time read as a
16-bit grey image (an IFD written after the file's bytes that names that plane's strips or tiles). A compressed
one was Pillow's high byte while an uncompressed one was rounded: the same picture both ways differed by one level
in half its samples (compressed tiles stayed so, and uncompressed tiles were refused, until both were read here). A
layout this does not take (BigTIFF, not RGB, signed or associated-alpha samples) is refused by name, never
annotated as noise; compressed, it is left to Pillow's 8 bits (None).
"""
from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
from PIL import Image

from sigma.errors import ImageError

TIFF_PLANAR_CONFIGURATION = 284      # 1: samples interleaved (RGBRGB...), 2: one plane per colour (RRR...GGG...BBB...)
TIFF_COMPRESSION = 259               # 1: none
TIFF_STRIP_OFFSETS, TIFF_ROWS_PER_STRIP, TIFF_STRIP_BYTE_COUNTS = 273, 278, 279
TIFF_TILE_WIDTH, TIFF_TILE_LENGTH, TIFF_TILE_OFFSETS, TIFF_TILE_BYTE_COUNTS = 322, 323, 324, 325
TIFF_PREDICTOR, TIFF_EXTRA_SAMPLES, TIFF_SAMPLE_FORMAT = 317, 338, 339


def separate_planes(data: bytes, img: Image.Image, name: str) -> np.ndarray | None:
    """uint16 [H, W, 3 or 4] samples as stored of the planar 16-bit colour TIFF `data` (`img`: it opened by Pillow),
    in strips or tiles; None for a compressed one whose layout is not taken here (Pillow's 8 bits are used)."""
    tags = getattr(img, "tag_v2", {})
    compressed = tags.get(TIFF_COMPRESSION, 1) != 1
    layout = _block_layout(tags) if data[:4] in (b"II*\x00", b"MM\x00*") else None
    if layout is None:
        if compressed:
            return None
        raise ImageError(f"{name}: an uncompressed 16-bit TIFF with separate colour planes (PlanarConfiguration=2) "
                         "laid out as this reader does not take (BigTIFF, or samples not unsigned RGB(A)); save it "
                         "with interleaved samples or compressed (e.g. `tiffcp -p contig IN OUT`)",
                         code="unsupported_format")
    return _decoded_planes(data, tags, layout, name) if compressed else _raw_planes(data, layout, name)


def _tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _block_layout(tags: Any) -> tuple[int, int, int, int, int, tuple, tuple, bool] | None:
    """(width, height, samples per pixel, block width, block height, block offsets, block byte counts, tiled) of an
    RGB(A) TIFF of unsigned 16-bit samples in separate planes, stored in strips (a block as wide as the image) or
    tiles; None for any other layout."""
    width, height, spp = tags.get(256, 0), tags.get(257, 0), tags.get(277, 1)
    bits, fmt = _tuple(tags.get(258, ())), _tuple(tags.get(TIFF_SAMPLE_FORMAT, (1,)))
    extra = _tuple(tags.get(TIFF_EXTRA_SAMPLES, ()))
    if (tags.get(262) != 2 or spp not in (3, 4) or set(bits) != {16} or set(fmt) != {1} or not width or not height
            or (spp == 4 and tuple(extra) != (2,))):
        return None           # not RGB, not 16-bit unsigned, or alpha not straight
    if TIFF_TILE_OFFSETS in tags:
        block_w, block_h = int(tags.get(TIFF_TILE_WIDTH, 0)), int(tags.get(TIFF_TILE_LENGTH, 0))
        offsets, counts = tags.get(TIFF_TILE_OFFSETS), tags.get(TIFF_TILE_BYTE_COUNTS)
        if block_w <= 0 or block_h <= 0:
            return None
    else:
        block_w, block_h = width, min(int(tags.get(TIFF_ROWS_PER_STRIP, height)) or height, height)
        offsets, counts = tags.get(TIFF_STRIP_OFFSETS), tags.get(TIFF_STRIP_BYTE_COUNTS)
    if offsets is None or counts is None:
        return None
    offsets, counts = _tuple(offsets), _tuple(counts)
    if len(offsets) != spp * -(-width // block_w) * -(-height // block_h) or len(counts) != len(offsets):
        return None
    return width, height, spp, block_w, block_h, offsets, counts, TIFF_TILE_OFFSETS in tags


def _raw_planes(data: bytes, layout: tuple, name: str) -> np.ndarray:
    """The samples of an uncompressed file, read from its strips or tiles (plane after plane, each in rows of
    blocks) in the file's byte order; a tile is stored whole, past the image's edge too. A block the file is too
    short for is `image_unreadable` (truncated), never read past the end."""
    width, height, spp, block_w, block_h, offsets, counts, tiled = layout
    across = -(-width // block_w)
    per_plane = across * -(-height // block_h)
    blocks = []                     # every block checked against the file before the image is allocated
    for index, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
        plane, at = divmod(index, per_plane)
        top, left = at // across * block_h, at % across * block_w
        n_rows, n_cols = min(block_h, height - top), min(block_w, width - left)
        need = ((n_rows - 1) * block_w + n_cols) * 2
        if count < need or offset + need > len(data):
            raise ImageError(f"{name}: truncated: {'tile' if tiled else 'strip'} {index} of its colour planes needs "
                             f"bytes {offset}-{offset + need} of a file of {len(data)}", code="image_unreadable")
        blocks.append((plane, top, left, n_rows, n_cols, offset))
    dtype = np.dtype("<u2" if data[:2] == b"II" else ">u2")
    out = np.empty((height, width, spp), np.uint16)
    for plane, top, left, n_rows, n_cols, offset in blocks:
        out[top:top + n_rows, left:left + n_cols, plane] = np.ndarray((n_rows, n_cols), dtype, data, offset,
                                                                      (block_w * 2, 2))
    return out


def _decoded_planes(data: bytes, tags: Any, layout: tuple, name: str) -> np.ndarray:
    """The samples of a compressed file, each plane decoded by Pillow's libtiff as a 16-bit grey image: the file's
    bytes with one IFD appended that names the plane's strips or tiles (its compression and predictor kept)."""
    width, height, spp, block_w, block_h, offsets, counts, tiled = layout
    per_plane = len(offsets) // spp
    order = "<" if data[:2] == b"II" else ">"
    out = np.empty((height, width, spp), np.uint16)
    for plane in range(spp):
        blocks = slice(plane * per_plane, (plane + 1) * per_plane)
        grey = _grey_tiff(data, order, (width, height, block_w, block_h, tiled), tags, offsets[blocks],
                          counts[blocks])
        with Image.open(io.BytesIO(grey), formats=["TIFF"]) as image:
            image.load()
            samples = np.asarray(image)
        if image.mode not in ("I;16", "I;16B", "I;16L") or samples.shape != (height, width):
            raise ImageError(f"{name}: colour plane {plane} of its separate planes decodes as {image.mode} "
                             f"{samples.shape[1::-1]}, not 16-bit {width}x{height}", code="image_unreadable")
        out[..., plane] = samples
    return out


def _grey_tiff(data: bytes, order: str, size: tuple[int, int, int, int, bool], tags: Any, offsets: tuple,
               counts: tuple) -> bytes:
    """`data` with its header pointing at a new IFD, after its bytes: a 16-bit grey image of `offsets`' strips or
    tiles; `size`: (width, height, block width, block height, tiled)."""
    width, height, block_w, block_h, tiled = size
    n = len(offsets)
    ifd_at = len(data) + (len(data) & 1)
    shorts = {258: 16, TIFF_COMPRESSION: int(tags.get(TIFF_COMPRESSION, 1)), 262: 1, 277: 1,
              TIFF_PLANAR_CONFIGURATION: 1, TIFF_SAMPLE_FORMAT: 1}
    if TIFF_PREDICTOR in tags:
        shorts[TIFF_PREDICTOR] = int(tags[TIFF_PREDICTOR])
    longs = {256: width, 257: height}
    longs.update({TIFF_TILE_WIDTH: block_w, TIFF_TILE_LENGTH: block_h} if tiled else {TIFF_ROWS_PER_STRIP: block_h})
    arrays = ({TIFF_TILE_OFFSETS: offsets, TIFF_TILE_BYTE_COUNTS: counts} if tiled
              else {TIFF_STRIP_OFFSETS: offsets, TIFF_STRIP_BYTE_COUNTS: counts})
    count = len(shorts) + len(longs) + len(arrays)
    array_at = ifd_at + 2 + 12 * count + 4
    entries = []
    for tag in sorted({**shorts, **longs, **arrays}):
        if tag in shorts:
            entries.append(struct.pack(order + "HHIHH", tag, 3, 1, shorts[tag], 0))
        elif tag in longs:
            entries.append(struct.pack(order + "HHII", tag, 4, 1, longs[tag]))
        elif n == 1:
            entries.append(struct.pack(order + "HHII", tag, 4, 1, int(arrays[tag][0])))
        else:
            entries.append(struct.pack(order + "HHII", tag, 4, n, array_at))
            array_at += 4 * n
    blocks = [struct.pack(order + f"{n}I", *map(int, arrays[t])) for t in sorted(arrays)] if n > 1 else []
    head = data[:4] + struct.pack(order + "I", ifd_at)
    return b"".join([head, data[8:], b"\0" * (ifd_at - len(data)), struct.pack(order + "H", count), *entries,
                     struct.pack(order + "I", 0), *blocks])
