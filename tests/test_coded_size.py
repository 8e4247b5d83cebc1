"""A JPEG or lossy WebP whose header claims more pixels than its data can hold: refused before decoding. Real files
written by Pillow (libjpeg-turbo, libwebp), their frame headers patched as an attacker would."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from sigma.errors import ImageError
from sigma.io.images import decode_image


def _small(fmt: str, **save: object) -> bytearray:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, fmt, quality=90, **save)
    return bytearray(buf.getvalue())


def _patched_jpeg(size: int, **save: object) -> bytes:
    data = _small("JPEG", **save)
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    struct.pack_into(">HH", data, sof + 5, size, size)
    return bytes(data)


def _patched_webp(size: int) -> bytes:
    data = _small("WEBP")
    start = data.find(b"\x9d\x01\x2a")
    struct.pack_into("<HH", data, start + 3, size, size)
    return bytes(data)


@pytest.mark.parametrize("make", [lambda: _patched_jpeg(6300), lambda: _patched_jpeg(6300, progressive=True),
                                  lambda: _patched_webp(6300)], ids=["baseline", "progressive", "webp"])
def test_header_patched_larger_than_its_data_is_refused_before_decoding(make):
    """An 8x8 JPEG patched to 6300x6300 (726 bytes, under the 40 Mpx limit) decoded as a 40 Mpx grey picture (libjpeg
    fills what its data does not reach and only warns), and the model was given it; the patched WebP was decoded
    to 40 Mpx (~750 MB) before libwebp found its data short. Now both are `image_unreadable`, saying why."""
    with pytest.raises(ImageError) as caught:
        decode_image(make(), "patched")
    assert caught.value.code == "image_unreadable"
    assert "6300x6300 picture needs at least" in str(caught.value) and "refused before decoding" in str(caught.value)


@pytest.mark.parametrize(("fmt", "save"), [("JPEG", {"quality": 1, "optimize": True}),
                                           ("JPEG", {"quality": 1, "optimize": True, "progressive": True}),
                                           ("JPEG", {"quality": 1, "optimize": True, "progressive": True, "gray": 1}),
                                           ("WEBP", {"quality": 0}), ("WEBP", {"lossless": True})])
def test_the_flattest_real_pictures_still_decode(fmt, save):
    """The least data a real encoder writes for a picture (one flat colour, lowest quality, optimized tables) is
    above the floor: about twice it for JPEG, 3.6 times for lossy WebP; lossless WebP is never checked."""
    mode = "L" if save.pop("gray", 0) else "RGB"
    buf = io.BytesIO()
    Image.new(mode, (1500, 1100), 128).save(buf, fmt, **save)
    assert decode_image(buf.getvalue(), "flat").rgb.shape == (1100, 1500, 3)


def test_a_slightly_damaged_but_complete_jpeg_still_decodes():
    """Bytes changed in the middle of a real photo's data: libjpeg recovers, as it did."""
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=85)
    data = bytearray(buf.getvalue())
    data[len(data) // 2:len(data) // 2 + 40] = b"\x00" * 40
    assert decode_image(bytes(data), "damaged").rgb.shape == (480, 640, 3)
