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


def _photo_jpeg(mode: str, **save: object) -> bytes:
    """A smooth picture with detail (a photo's kind of data), 480x640, as a JPEG."""
    y, x = np.mgrid[0:480, 0:640].astype(np.float64)
    rgb = np.stack([x / 640 * 255, y / 480 * 255, (np.sin(x / 9) * np.cos(y / 13) + 1) * 127], axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).convert(mode).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def _cut(data: bytes, kept: float) -> bytes:
    """`data` cut after `kept` of its bytes (a progressive file: of its first scan) and closed with an end marker."""
    first, second = data.find(b"\xff\xda"), data.find(b"\xff\xda", data.find(b"\xff\xda") + 2)
    cut = first + int((second - first) * kept) if second > 0 else int(len(data) * kept)
    return data[:cut] + b"\xff\xd9"


_SEQUENTIAL = [("RGB", {}), ("L", {}), ("CMYK", {}), ("RGB", {"subsampling": 0}), ("RGB", {"restart_marker_blocks": 4}),
               ("L", {"restart_marker_blocks": 1})]


@pytest.mark.parametrize(("mode", "save", "kept"), [(*kind, kept) for kind in _SEQUENTIAL for kept in (0.15, 0.5, 0.99)]
                         + [("RGB", {"progressive": True}, kept) for kept in (0.15, 0.5)])
def test_a_jpeg_cut_short_and_closed_again_with_an_end_marker_is_refused(mode, save, kept):
    """Half a photo's bytes and an end marker (FF D9): libjpeg filled the other half flat grey and only warned, which
    Pillow drops, so the pair was annotated as half changed (pixel-diff: 51.8 % of a real photo marked). Now it is
    `image_unreadable`, naming the truncation, as a file cut without the marker already was (a progressive file cut
    in its first scan: by the scans it lacks, `test_a_progressive_jpeg_cut_at_any_scan_and_closed_again_is_refused`)."""
    with pytest.raises(ImageError) as caught:
        decode_image(_cut(_photo_jpeg(mode, **save), kept), "cut")
    assert caught.value.code == "image_unreadable"
    said = "its scans end before the picture is complete" if save.get("progressive") else \
        "its coded data ends before the picture does"
    assert f"cut: truncated JPEG: {said}" in str(caught.value)


def _scan_starts(data: bytes) -> list[int]:
    return [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_a_progressive_jpeg_cut_at_any_scan_and_closed_again_is_refused(mode):
    """Cut after its first (DC) scan and closed with an end marker, a progressive photo decoded as its 8x8-block blur
    (every block its colour, no corner grey) and passed as a whole picture, annotated against a sharp edit as changed
    everywhere; cut after a later scan, without its chroma detail or its last bits. Its scans say what they code:
    a file whose scans leave coefficients uncoded, or not to their last bit, is `image_unreadable`, before decoding."""
    data = _photo_jpeg(mode, progressive=True)
    starts = _scan_starts(data)
    assert len(starts) >= 6
    for start in starts[1:]:
        with pytest.raises(ImageError) as caught:
            decode_image(data[:start] + b"\xff\xd9", "cut")
        assert caught.value.code == "image_unreadable"
        assert "cut: truncated JPEG: its scans end before the picture is complete" in str(caught.value)
    complete = decode_image(data, "whole").rgb       # the file as written still reads, as Pillow reads it
    assert np.array_equal(complete, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_a_sequential_jpeg_whose_scans_leave_out_a_component_is_refused():
    """A sequential JPEG may send its components in separate scans; cut after the luma scan and closed again it decoded
    as a grey picture of a colour photo. Made here by dropping the colour of an interleaved file's one scan: its frame
    names three components, its scan one."""
    data = bytearray(_photo_jpeg("RGB"))
    sos = data.find(b"\xff\xda")
    count = data[sos + 4]
    assert count == 3
    header = bytes((1,)) + bytes(data[sos + 5:sos + 7]) + bytes(data[sos + 5 + 2 * count:sos + 8 + 2 * count])
    patched = bytes(data[:sos + 2]) + (2 + len(header)).to_bytes(2, "big") + header + bytes(data[sos + 8 + 2 * count:])
    with pytest.raises(ImageError) as caught:
        decode_image(patched, "grey")
    assert caught.value.code == "image_unreadable" and "component 2 is in no scan" in str(caught.value)


@pytest.mark.parametrize("save", [{}, {"restart_marker_blocks": 1}, {"progressive": True}])
def test_a_complete_jpeg_whose_lower_part_is_grey_128_still_decodes_as_it_is(save):
    """Grey 128 in the bottom right corner is what a cut file shows, so such a complete file is looked at twice
    (its data with bytes put in before the end marker decodes the same): it is read as it always was."""
    rgb = np.full((300, 400, 3), 128, np.uint8)
    rgb[:150] = np.random.default_rng(2).integers(0, 255, (150, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90, **save)
    decoded = decode_image(buf.getvalue(), "half grey")
    assert np.array_equal(decoded.rgb, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    assert (decoded.rgb[-8:, -8:] == 128).all()


def _arithmetic_jpeg(size: int, coded: bytes) -> bytes:
    """A JPEG made arithmetic-coded by hand (Pillow writes none): an 8x8 one's segments without its Huffman tables,
    its frame header SOF9 of `size` x `size`, and `coded` as its scan's data."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", quality=90)
    data, i, out = buf.getvalue(), 2, b"\xff\xd8"
    while True:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        segment, i = bytearray(data[i:i + 2 + length]), i + 2 + length
        if marker == 0xC0:
            segment[1] = 0xC9
            struct.pack_into(">HH", segment, 5, size, size)
        out += b"" if marker == 0xC4 else bytes(segment)
        if marker == 0xDA:
            return out + coded + b"\xff\xd9"


def test_an_arithmetic_jpeg_that_ends_on_the_zeros_its_decoder_reads_is_read_as_it_is():
    """libjpeg's arithmetic encoder drops the zero bytes that would end its data (the decoder reads zeros past it):
    a flat grey picture is a scan of no bytes at all. It is grey 128 in the corner, as a cut file is, but it is
    complete, and read as it is (putting bytes before its end marker would tell nothing about it)."""
    decoded = decode_image(_arithmetic_jpeg(8, b""), "arithmetic")
    assert decoded.rgb.shape == (8, 8, 3) and (decoded.rgb == 128).all()
