"""16-bit colour TIFFs stored as separate colour planes (PlanarConfiguration=2), written here byte by byte (no TIFF
writer installed writes them): OpenCV 5.1 read the red plane and then noise as if interleaved, and that picture of
stripes was annotated (`sigma annotate X X --annotator pixel-diff` of one such file against itself: 53 % marked).
Now a compressed one is Pillow's libtiff read (8 bits, right), an uncompressed one (which Pillow misreads too) is
refused `unsupported_format`, naming the file."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from sigma.errors import ImageError
from sigma.io.images import decode_image


def planar_tiff(rgb: np.ndarray, deflate: bool) -> bytes:
    """A little-endian TIFF of uint16 [H, W, 3] samples, one strip per colour plane (PlanarConfiguration=2)."""
    h, w, _ = rgb.shape
    planes = [np.ascontiguousarray(rgb[..., c]).astype("<u2").tobytes() for c in range(3)]
    planes = [zlib.compress(p) for p in planes] if deflate else planes
    count = 11
    extra_at = 8 + 2 + count * 12 + 4
    bits_at, offsets_at, counts_at, data_at = extra_at, extra_at + 6, extra_at + 18, extra_at + 30
    offsets = [data_at + sum(len(p) for p in planes[:i]) for i in range(3)]

    def entry(tag: int, kind: int, n: int, value: int) -> bytes:    # kind 3: SHORT, 4: LONG
        return struct.pack("<HHI", tag, kind, n) + (struct.pack("<HH", value, 0) if kind == 3 and n == 1
                                                   else struct.pack("<I", value))
    entries = [entry(256, 3, 1, w), entry(257, 3, 1, h), entry(258, 3, 3, bits_at),
               entry(259, 3, 1, 8 if deflate else 1), entry(262, 3, 1, 2), entry(273, 4, 3, offsets_at),
               entry(277, 3, 1, 3), entry(278, 3, 1, h), entry(279, 4, 3, counts_at), entry(284, 3, 1, 2),
               entry(339, 3, 1, 1)]
    return (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", count) + b"".join(entries) + struct.pack("<I", 0)
            + struct.pack("<3H", 16, 16, 16) + struct.pack("<3I", *offsets)
            + struct.pack("<3I", *(len(p) for p in planes)) + b"".join(planes))


def _picture() -> np.ndarray:
    ramp = (np.indices((48, 64)).sum(0) * 700 % 65536).astype(np.uint16)
    return np.stack([ramp, ramp[::-1], 65535 - ramp], 2)


def test_a_compressed_16_bit_tiff_of_separate_planes_is_read_as_its_picture():
    picture = _picture()
    decoded = decode_image(planar_tiff(picture, deflate=True), "planes.tif")
    assert decoded.rgb.shape == (48, 64, 3)
    assert np.array_equal(decoded.rgb, (picture >> 8).astype(np.uint8))   # Pillow's libtiff: the high byte


def test_an_uncompressed_16_bit_tiff_of_separate_planes_is_refused_by_name_not_read_as_noise():
    with pytest.raises(ImageError) as refused:
        decode_image(planar_tiff(_picture(), deflate=False), "planes.tif")
    assert refused.value.code == "unsupported_format"
    assert refused.value.message.startswith("planes.tif: an uncompressed 16-bit TIFF with separate colour planes")
