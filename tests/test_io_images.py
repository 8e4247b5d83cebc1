"""Image decoding: every supported format and depth, alpha, EXIF, limits and one-line errors."""
from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from heappeak import heap_peak
from PIL import Image

from sigma.config.schema import LimitsConfig
from sigma.errors import ImageError, LimitError, SigmaError
from sigma.io.images import decode_image, read_image, read_mask

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(12, 17, 3), dtype=np.uint8)


def encode(img: Image.Image | np.ndarray, fmt: str, **kw) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A valid-looking PNG that claims width x height 8-bit RGB and carries a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def jpeg_scan_bomb(size: int, repeats: int, stray: bytes = b"") -> bytes:
    """A flat progressive JPEG whose smallest scan (a dozen bytes) is repeated `repeats` times (`stray` bytes
    between the copies, which libjpeg skips): every scan is a decoder pass over the whole image."""
    data = encode(np.zeros((size, size, 3), np.uint8), "JPEG", progressive=True, quality=50)
    segments, i = [], 2
    while data[i + 1] != 0xD9:
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if data[i + 1] == 0xDA:         # entropy-coded data up to the next marker that is not 0xFF00 or RSTn
            end = next(k for k in range(end, len(data) - 1) if data[k] == 0xFF and data[k + 1] != 0
                       and not 0xD0 <= data[k + 1] <= 0xD7)
        segments.append(data[i:end])
        i = end
    scan = min((seg for seg in segments[1:] if seg[1] == 0xDA), key=len)
    return data[:2] + b"".join(segments) + (stray + scan) * repeats + b"\xff\xd9"


def assert_one_line(exc: SigmaError, name: str) -> None:
    assert "\n" not in exc.message
    assert exc.message.startswith(name), exc.message


# ---------------------------------------------------------------- formats, exact where lossless
@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("BMP", {}),
                                    ("TIFF", {"compression": "tiff_deflate"})])
def test_lossless_formats_roundtrip_exactly(fmt, kw):
    dec = decode_image(encode(RGB, fmt, **kw), f"x.{fmt.lower()}")
    assert dec.rgb.dtype == np.uint8 and dec.rgb.shape == RGB.shape
    np.testing.assert_array_equal(dec.rgb, RGB)
    assert dec.notes["format"] == fmt
    assert "alpha" not in dec.notes and "bit_depth" not in dec.notes


def test_jpeg_decodes_close_to_source():
    smooth = np.dstack([np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (24, 1))] * 3)
    dec = decode_image(encode(smooth, "JPEG", quality=95), "x.jpg")
    assert dec.notes["format"] == "JPEG"
    assert np.abs(dec.rgb.astype(int) - smooth).mean() < 2.0


def test_cmyk_jpeg_and_gray_and_bilevel_become_rgb():
    cmyk = decode_image(encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95), "c.jpg")
    assert cmyk.rgb.shape == RGB.shape and cmyk.notes["mode"] == "CMYK"
    gray = RNG.integers(0, 256, size=(9, 7), dtype=np.uint8)
    dec = decode_image(encode(gray, "PNG"), "g.png")
    np.testing.assert_array_equal(dec.rgb, np.repeat(gray[..., None], 3, axis=2))
    bilevel = Image.fromarray(gray > 127).convert("1")
    dec = decode_image(encode(bilevel, "BMP"), "b.bmp")
    np.testing.assert_array_equal(dec.rgb[..., 0], np.where(gray > 127, 255, 0))


# ---------------------------------------------------------------- 16 bit
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_gray_is_scaled_not_truncated(fmt):
    arr = np.array([[0, 257, 40000, 65535]], np.uint16)
    dec = decode_image(encode(Image.fromarray(arr), fmt), f"g16.{fmt.lower()}")
    np.testing.assert_array_equal(dec.rgb[0, :, 0], [0, 1, 156, 255])   # round(v / 65535 * 255)
    assert dec.notes["bit_depth"] == 16


def test_16bit_rgb_png_is_rounded_from_all_16_bits():
    rgb16 = np.zeros((3, 4, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 65535, 40000, 128   # R, G, B
    ok, enc = cv2.imencode(".png", rgb16[..., ::-1])                   # OpenCV writes BGR
    assert ok
    dec = decode_image(enc.tobytes(), "rgb16.png")
    assert dec.notes["bit_depth"] == 16
    np.testing.assert_array_equal(dec.rgb[0, 0], [255, 156, 0])


def test_16bit_rgba_png_is_composited_on_white():
    rgba16 = np.zeros((2, 2, 4), np.uint16)
    rgba16[..., 2] = 65535                     # red in BGRA order
    rgba16[0, 0, 3] = 65535                    # opaque red
    rgba16[0, 1, 3] = 0                        # fully transparent -> white
    _, enc = cv2.imencode(".png", rgba16)
    dec = decode_image(enc.tobytes(), "rgba16.png")
    np.testing.assert_array_equal(dec.rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(dec.rgb[0, 1], [255, 255, 255])
    assert dec.notes["alpha"] == "composited on white" and dec.notes["bit_depth"] == 16


def test_16bit_rgb_tiff_is_read_and_reported():
    rgb16 = np.full((3, 3, 3), 40000, np.uint16)
    _, enc = cv2.imencode(".tiff", rgb16)
    dec = decode_image(enc.tobytes(), "rgb16.tif")
    assert dec.notes["bit_depth"] == 16
    assert np.all(np.abs(dec.rgb.astype(int) - 156) <= 1)


# ---------------------------------------------------------------- palette and alpha
def test_palette_without_transparency_maps_to_rgb():
    pal = Image.fromarray(RGB).quantize(colors=8)
    dec = decode_image(encode(pal, "PNG"), "p.png")
    np.testing.assert_array_equal(dec.rgb, np.asarray(pal.convert("RGB")))
    assert dec.notes["mode"] == "P" and "alpha" not in dec.notes


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
def test_palette_bmp_and_png(fmt):
    pal = Image.fromarray(RGB).quantize(colors=4)
    dec = decode_image(encode(pal, fmt), f"p.{fmt.lower()}")
    np.testing.assert_array_equal(dec.rgb, np.asarray(pal.convert("RGB")))


def test_palette_with_transparency_is_composited_on_white():
    idx = np.array([[0, 1], [1, 0]], np.uint8)
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    dec = decode_image(encode(pal, "PNG", transparency=0), "pt.png")
    np.testing.assert_array_equal(dec.rgb[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(dec.rgb[0, 1], [200, 0, 0])
    assert dec.notes["alpha"] == "composited on white"


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_rgba_is_composited_on_white_and_said(fmt, kw):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 255                                       # red everywhere
    rgba[..., 3] = [[255, 128, 0], [255, 255, 255]]
    dec = decode_image(encode(rgba, fmt, **kw), f"a.{fmt.lower()}")
    np.testing.assert_array_equal(dec.rgb[0, 0], [255, 0, 0])
    np.testing.assert_allclose(dec.rgb[0, 1], [255, 127, 127], atol=1)   # 255 * (1 - 128/255)
    np.testing.assert_array_equal(dec.rgb[0, 2], [255, 255, 255])
    assert dec.notes["alpha"] == "composited on white"


def test_opaque_alpha_is_not_reported_and_gray_alpha_works():
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])
    dec = decode_image(encode(rgba, "PNG"), "opaque.png")
    np.testing.assert_array_equal(dec.rgb, RGB)
    assert "alpha" not in dec.notes
    la = Image.fromarray(np.dstack([np.zeros((2, 2), np.uint8), np.array([[0, 255], [255, 255]], np.uint8)]),
                         mode="LA")
    dec = decode_image(encode(la, "PNG"), "la.png")
    np.testing.assert_array_equal(dec.rgb[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(dec.rgb[0, 1], [0, 0, 0])


# ---------------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("orientation,expect", [
    (1, lambda a: a), (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]), (4, lambda a: a[::-1]), (5, lambda a: a.transpose(1, 0, 2)),
    (7, lambda a: np.rot90(a, 2).transpose(1, 0, 2))])
def test_exif_orientation_is_applied(orientation, expect):
    img = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = orientation
    dec = decode_image(encode(img, "PNG", exif=exif), "exif.png")
    np.testing.assert_array_equal(dec.rgb, expect(RGB))
    assert dec.notes.get("exif_orientation", 1) == orientation
    assert dec.notes["decoded_size"] == [12, 17]   # as stored, before turning upright


def test_exif_orientation_in_a_jpeg_turns_the_shape():
    exif = Image.Exif()
    exif[0x0112] = 6
    dec = decode_image(encode(RGB, "JPEG", exif=exif, quality=95), "phone.jpg")
    assert dec.rgb.shape == (17, 12, 3) and dec.notes["exif_orientation"] == 6


# ---------------------------------------------------------------- limits, bombs
def decode_refused(data: bytes, name: str) -> tuple[str, str, float]:
    """The code and message of the LimitError that decoding `data` raises, and the seconds it took."""
    start = time.perf_counter()
    with pytest.raises(LimitError) as info:
        decode_image(data, name)
    return info.value.code, info.value.message, time.perf_counter() - start


def test_decompression_bomb_header_refused_fast_without_allocating():
    bomb = png_header_only(30000, 30000)            # claims 900 Mpx (2.7 GB of RGB) in ~100 bytes
    assert len(bomb) < 200
    measured = heap_peak(decode_refused, bomb, "bomb.png")      # in a fresh interpreter (tests/heappeak.py)
    (code, message, elapsed), peak = measured.value, measured.peak
    assert code in ("too_many_pixels", "decompression_bomb")
    assert "bomb.png" in message and "30000" in message.replace("900000000", "30000")
    assert elapsed < 0.5 and peak < 5 * 2**20, (elapsed, peak)


@pytest.mark.parametrize("stray", [b"", b"\x00\x13\xff\x00"])
def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding(stray):
    """A progressive JPEG is decoded one scan at a time, each a pass over the whole image: 0.8 MB of 20000 tiny scans
    of a 16 Mpx image took libjpeg 19 s in a worker (one within max_bytes, minutes) with no pixel limit broken."""
    bomb = jpeg_scan_bomb(1000, 3000, stray)
    assert len(bomb) < 100_000
    start = time.perf_counter()
    with pytest.raises(LimitError) as info:
        decode_image(bomb, "scans.jpg")
    assert time.perf_counter() - start < 0.5
    assert info.value.code == "decompression_bomb" and info.value.message.startswith("scans.jpg: a JPEG of 30")
    # a real progressive JPEG, and one whose comment holds the SOS marker's bytes 600 times, are decoded
    assert decode_image(jpeg_scan_bomb(64, 0), "ok.jpg").rgb.shape == (64, 64, 3)
    commented = encode(RGB, "JPEG", progressive=True, comment=b"\xff\xda" * 600)
    assert commented.count(b"\xff\xda") > 600
    assert decode_image(commented, "comment.jpg").rgb.shape == RGB.shape


def test_pixel_limit_checked_on_the_header_before_decoding():
    # 8000 x 8000 = 64 Mpx: above our default 40 Mpx, below PIL's own warning level, so ours decides.
    with pytest.raises(LimitError) as info:
        decode_image(png_header_only(8000, 8000), "big.png")
    assert info.value.code == "too_many_pixels"
    assert "io.limits.max_pixels" in info.value.message and "refused before decoding" in info.value.message
    with pytest.raises(LimitError, match="too_many|exceeds"):
        decode_image(encode(RGB, "PNG"), "small.png", LimitsConfig(max_pixels=100))
    assert decode_image(encode(RGB, "PNG"), "ok.png", LimitsConfig(max_pixels=12 * 17)).rgb.shape == RGB.shape


def test_byte_limit_on_bytes_and_on_files(tmp_path):
    data = encode(RGB, "PNG")
    with pytest.raises(LimitError) as info:
        decode_image(data, "x.png", LimitsConfig(max_bytes=len(data) - 1))
    assert info.value.code == "file_too_large"
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with pytest.raises(LimitError) as info:
        read_image(path, LimitsConfig(max_bytes=10))
    assert info.value.code == "file_too_large" and str(path) in info.value.message
    # a limit far above any file (2**62 bytes): read(limit + 1) asked for that buffer up front, a MemoryError on every
    # read; now the file is read in pieces, whatever the limit
    assert read_image(path, LimitsConfig(max_bytes=2 ** 62)).rgb.shape == RGB.shape


# ---------------------------------------------------------------- bad bytes -> one-line errors with codes
def _truncated_jpeg() -> bytes:
    return encode(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8), "JPEG")[:400]


def _truncated_png() -> bytes:
    return encode(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8), "PNG")[:300]


def _zero_width_png() -> bytes:
    return png_header_only(0, 10)


BAD = {
    "empty": (b"", "image_empty"),
    "text": (b"hello, I am not an image\n" * 10, "image_unreadable"),
    "random": (bytes(RNG.integers(0, 256, 2000, dtype=np.uint8)), "image_unreadable"),
    "truncated_jpeg": (_truncated_jpeg(), "image_unreadable"),
    "truncated_png": (_truncated_png(), "image_unreadable"),
    "zero_width_png": (_zero_width_png(), "image_empty"),
    "gif": (encode(RGB, "GIF"), "unsupported_format"),
    "pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "unsupported_format"),
    "png_signature_only": (b"\x89PNG\r\n\x1a\n", "image_unreadable"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_bytes_give_one_line_errors_with_stable_codes(case):
    data, code = BAD[case]
    with pytest.raises(ImageError) as info:
        decode_image(data, f"{case}.bin")
    assert_one_line(info.value, f"{case}.bin")
    if code:
        assert info.value.code == code
    else:
        assert info.value.code in ("image_empty", "image_unreadable")


def test_file_errors(tmp_path):
    with pytest.raises(ImageError) as info:
        read_image(tmp_path / "missing.png")
    assert info.value.code == "file_not_found" and "missing.png" in info.value.message
    with pytest.raises(ImageError) as info:
        read_image(tmp_path)
    assert info.value.code == "not_a_regular_file" and "not a regular file (a folder)" in info.value.message
    with pytest.raises(ImageError) as info:         # a FIFO, /dev/zero: said as what they are, not as missing
        read_image("/dev/zero")
    assert info.value.code == "not_a_regular_file" and "(a character device)" in info.value.message
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError) as info:
        read_image(empty)
    assert info.value.code == "image_empty"
    assert_one_line(info.value, str(empty))


def test_camera_jpeg_with_preview_opens_as_jpeg():
    # Phones write MPO (a JPEG with an embedded second image); PIL reports it as "MPO".
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format="MPO", save_all=True, append_images=[Image.fromarray(RGB[::-1])])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    dec = decode_image(buf.getvalue(), "camera.jpg")
    assert dec.notes["format"] == "JPEG" and dec.rgb.shape == RGB.shape


def test_decode_rejects_non_bytes():
    with pytest.raises(ImageError):
        decode_image("x.png", "str-not-bytes")  # type: ignore[arg-type]


def test_read_mask_binarises_at_half(tmp_path):
    gray = np.array([[0, 127, 128, 255]], np.uint8)
    path = tmp_path / "m.png"
    path.write_bytes(encode(gray, "PNG"))
    np.testing.assert_array_equal(read_mask(path)[0], [False, False, True, True])


def test_read_mask_reads_a_zero_one_label_map_as_one(tmp_path):
    """Masks stored as 0/1 (common in datasets) were all empty at 127.5: their pairs scored as untouched."""
    labels = np.array([[0, 1, 1, 0]], np.uint8)
    path = tmp_path / "m01.png"
    path.write_bytes(encode(labels, "PNG"))
    np.testing.assert_array_equal(read_mask(path)[0], [False, True, True, False])
    # not a label map: a 2 anywhere keeps the 127.5 rule (a dark, noisy "empty" mask stays empty)
    path.write_bytes(encode(np.array([[0, 1, 2, 0]], np.uint8), "PNG"))
    assert not read_mask(path).any()


def test_read_mask_reads_a_16_bit_zero_one_label_map_as_its_8_bit_twin(tmp_path):
    """A 0/1 label map saved as a 16-bit PNG: its 1s were scaled to 8 bits first (1 / 65535 * 255 rounds to 0), and
    every such mask read as empty — its pairs scored as untouched — while the same map in 8 bits is read right. A
    16-bit mask of 0 and 65535 stays as it was."""
    path = tmp_path / "m16.png"
    Image.fromarray(np.array([[0, 1, 1, 0]], np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    np.testing.assert_array_equal(read_mask(path)[0], [False, True, True, False])
    Image.fromarray(np.array([[0, 65535, 65535, 0]], np.uint16)).save(path)
    np.testing.assert_array_equal(read_mask(path)[0], [False, True, True, False])
    Image.fromarray(np.array([[0, 1, 2, 0]], np.uint16)).save(path)       # no label map: the 127.5 rule
    assert not read_mask(path).any()


def test_read_mask_reads_a_16_bit_mask_on_its_own_samples(tmp_path):
    """16-bit masks against the documented rules (0/1 label map on the file's values, else round(v / 65535 * 255) and
    mean > 127.5, transparency on black), checked by hand. Were: a gray 0/300 mask (300 is 1 in 8 bits) read as a 0/1
    label map, marked; a 16-bit RGBA pixel of grey 40000 at alpha 53574 (127.2 of 255 on black) composited from
    Pillow's truncated 8-bit samples (156 x 209 / 255 = 127.9), marked; a 16-bit RGB 0/1 label map read as empty."""
    import cv2

    path = tmp_path / "m16.png"
    Image.fromarray(np.array([[0, 300, 300, 0]], np.uint16)).save(path)
    assert not read_mask(path).any()                                      # 0.5 % grey: no mask, no label map
    rgba = np.zeros((1, 3, 4), np.uint16)
    rgba[0, 0] = [40000, 40000, 40000, 53574]                             # 127.24 of 255 on black: not marked
    rgba[0, 1] = [40000, 40000, 40000, 53800]                             # 127.77: marked
    cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3]])
    np.testing.assert_array_equal(read_mask(path)[0], [False, True, False])
    labels = np.zeros((1, 4, 3), np.uint16)
    labels[0, 1:3] = 1
    cv2.imwrite(str(path), labels)
    np.testing.assert_array_equal(read_mask(path)[0], [False, True, True, False])


def test_read_mask_with_transparency_counts_transparent_as_background(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = [[255, 0, 0], [255, 255, 0]]         # opaque white = marked, transparent = not
    path = tmp_path / "m.png"
    path.write_bytes(encode(rgba, "PNG"))
    np.testing.assert_array_equal(read_mask(path), [[True, False, False], [True, True, False]])


@pytest.mark.parametrize("kind", ["16-bit", "alpha"])
def test_read_mask_reads_its_file_once_so_a_swap_after_the_decode_changes_nothing(tmp_path, monkeypatch, kind):
    """A 16-bit or transparent mask was decoded, then opened again by its path for its native values or its alpha:
    a mask replaced in between (here by another mask of that size, made right after the first decode) was read half
    from one file and half from the other. Now the second look reads the same bytes as the first."""
    from sigma.io import images

    path = tmp_path / "m.png"
    if kind == "16-bit":
        first, other = (Image.fromarray(np.array([row], np.uint16)) for row in ([0, 1, 1, 0], [1, 0, 0, 1]))
    else:
        rgba = np.full((1, 4, 4), 255, np.uint8)             # opaque white = marked, transparent = not
        rgba[0, :, 3] = [0, 255, 255, 0]
        first = Image.fromarray(rgba.copy())                # fromarray may share the array's memory
        rgba[0, :, 3] = [255, 0, 0, 255]
        other = Image.fromarray(rgba)
    first.save(path)
    decode = images.decode_image

    def decode_then_swap(*args, **kwargs):
        decoded = decode(*args, **kwargs)
        other.save(path)                                    # the file replaced once it was decoded
        return decoded

    monkeypatch.setattr(images, "decode_image", decode_then_swap)
    np.testing.assert_array_equal(read_mask(path)[0], [False, True, True, False])


def test_fuzzed_files_only_ever_raise_sigma_errors():
    """Bit flips and truncations of valid files of every format: decoded, or a SigmaError; nothing else."""
    rng = np.random.default_rng(1234)
    seeds = [encode(RGB, "PNG"), encode(RGB, "JPEG"), encode(RGB, "WEBP"), encode(RGB, "TIFF"), encode(RGB, "BMP"),
             encode(np.dstack([RGB, RGB[..., :1]]), "PNG"), encode(Image.fromarray(RGB).quantize(8), "PNG")]
    outcomes = {"decoded": 0, "refused": 0}
    for data in seeds:
        for _ in range(40):
            arr = bytearray(data)
            if rng.random() < 0.3:
                arr = arr[:int(rng.integers(1, len(arr)))]
            else:
                for pos in rng.integers(0, len(arr), size=int(rng.integers(1, 6))):
                    arr[pos] = int(rng.integers(0, 256))
            try:
                dec = decode_image(bytes(arr), "fuzz.bin")
            except SigmaError as exc:
                assert "\n" not in exc.message and exc.code
                outcomes["refused"] += 1
            else:
                assert dec.rgb.dtype == np.uint8 and dec.rgb.ndim == 3 and dec.rgb.shape[2] == 3
                outcomes["decoded"] += 1
    assert outcomes["refused"] > 20 and outcomes["decoded"] > 20


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True})])
def test_an_animated_or_multi_page_image_decodes_its_first_frame_and_says_so(fmt, kw, tmp_path):
    """APNG, animated WebP and multi-page TIFF: the first frame is what is annotated, recorded in the notes
    and said as a pair warning (it was silent: a user passing an animation got a mask of frame 1 only)."""
    from sigma.config.schema import IOConfig
    from sigma.io.pairs import load_pair

    rng = np.random.default_rng(3)
    first, second = (rng.integers(0, 255, (24, 32, 3), np.uint8) for _ in range(2))
    path = tmp_path / f"anim.{fmt.lower()}"
    Image.fromarray(first).save(path, format=fmt, save_all=True, append_images=[Image.fromarray(second)], **kw)
    decoded = read_image(path)
    assert decoded.notes["multi_frame"] == "first frame used"
    assert np.array_equal(decoded.rgb, first)
    Image.fromarray(first).save(tmp_path / "still.png")
    assert "multi_frame" not in read_image(tmp_path / "still.png").notes
    pair = load_pair(str(tmp_path / "still.png"), str(path), None, IOConfig(), "p")
    assert pair.preprocess["warnings"] == [f"{path} is animated or multi-page: only its first frame was "
                                           "annotated"]


def test_two_writers_of_one_file_never_trip_over_each_other(tmp_path):
    """Two fleet workers on one shard write its masks side by side: with one shared `<path>.tmp` one writer's rename
    found the file gone (FileNotFoundError, the shard failed) in most of 400 concurrent writes here."""
    import threading

    from sigma.io.images import replace_atomically

    target = tmp_path / "masks" / "m.png"
    data = bytes(range(256)) * 4096
    failures: list[BaseException] = []

    def write() -> None:
        for _ in range(200):
            try:
                replace_atomically(target, data)
            except Exception as exc:  # noqa: BLE001 - counted
                failures.append(exc)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == ["m.png"]          # no temporary file left


def _tiff_16bit_rgb(samples, orientation: int = 1) -> bytes:
    """A 16-bit RGB TIFF as a camera or scanner writes one (uncompressed, one strip, its Orientation tag), built from
    the TIFF 6.0 layout with numpy and struct: Pillow writes no 16-bit RGB TIFF."""
    import struct

    import numpy as np

    h, w, _ = samples.shape
    pixels = np.ascontiguousarray(samples, dtype="<u2").tobytes()
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, None),
            (274, 3, 1, orientation), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    ifd_size = 2 + 12 * len(tags) + 4
    bits_at = 8 + ifd_size
    strip_at = bits_at + 6
    out = b"II*\0" + struct.pack("<IH", 8, len(tags))
    for tag, kind, count, value in tags:
        value = bits_at if tag == 258 else strip_at if tag == 273 else value
        out += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                        else struct.pack("<I", value))
    return out + struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16) + pixels


# EXIF orientation -> how the stored pixels look upright, written out by hand (not sigma's turn_array)
_UPRIGHT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
            7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_16bit_rgb_tiff_is_scaled_as_the_same_png_is_by_one_rounding_rule(orientation):
    """A 16-bit RGB TIFF was read by Pillow, which keeps each sample's high byte (v >> 8), while the same picture as
    a 16-bit PNG was rounded, round(v / 65535 * 255): the two differed by one level (32896 read 128 from the TIFF,
    128 from the PNG; 65280 read 255 and 254...). Now both are read whole and rounded, turned upright by their
    Orientation tag alike: a tagged TIFF was still left to Pillow and floored (orientations 2-8 read one level off)."""
    samples = np.random.default_rng(3).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    samples[0, 0] = (65280, 32767, 383)                 # high bytes 255, 127, 1; rounded 254, 127, 1
    samples[4, 6] = (128, 65407, 33023)                 # high bytes 0, 255, 128; rounded 0, 254, 128
    expected = np.round(samples / 65535 * 255).astype(np.uint8)
    assert (expected != samples >> 8).any()             # the two rules differ on this picture
    tiff = decode_image(_tiff_16bit_rgb(samples, orientation), "scan.tif")
    assert tiff.notes["bit_depth"] == 16 and tiff.notes.get("exif_orientation", 1) == orientation
    assert tiff.rgb.shape == _UPRIGHT[orientation](expected).shape
    assert (tiff.rgb == _UPRIGHT[orientation](expected)).all()
    assert tuple(tiff.rgb[0, 0]) == tuple(_UPRIGHT[orientation](expected)[0, 0])
    ok, png = cv2.imencode(".png", samples[..., ::-1])
    assert ok and (decode_image(png.tobytes(), "scan.png").rgb == expected).all()


@pytest.mark.parametrize("orientation", [1, 3, 6, 7])
def test_a_16bit_rgb_tiff_mask_with_an_orientation_tag_is_read_on_its_own_samples(orientation, tmp_path):
    """A 16-bit mask is thresholded on its samples rounded to 8 bits (mean > 127.5), as images are scaled; a TIFF
    with an Orientation tag was floored (v >> 8) instead, so a pixel on the threshold read the other way. Two such
    pixels, each on its own side, hand-computed: (51200, 0, 46948) rounds to 199 + 0 + 183 = 382 (not marked) and
    floors to 200 + 0 + 183 = 383 (marked); (129, 65535, 32511) rounds to 1 + 255 + 127 = 383 (marked) and floors
    to 0 + 255 + 126 = 381 (not)."""
    values = np.zeros((4, 6, 3), np.uint16)
    values[0, 1] = (51200, 0, 46948)
    values[2, 5] = (129, 65535, 32511)
    values[3, 0] = (65535, 65535, 65535)
    rounded = np.round(values / 65535 * 255)
    assert rounded[0, 1].sum() == 382 and (values[0, 1] >> 8).sum() == 383
    assert rounded[2, 5].sum() == 383 and (values[2, 5] >> 8).sum() == 381
    path = tmp_path / "mask.tif"
    path.write_bytes(_tiff_16bit_rgb(values, orientation))
    expected = _UPRIGHT[orientation](rounded.mean(axis=2) > 127.5)
    mask = read_mask(path)
    assert mask.shape == expected.shape and (mask == expected).all()


def _decode_peak_input(size: int, alpha: bool) -> bytes:
    """A 16-bit RGB(A) PNG of `size` x `size` (a ramp, alpha half-transparent), encoded by OpenCV."""
    ramp = (np.indices((size, size)).sum(0) * 37 % 65536).astype(np.uint16)
    planes = [ramp, ramp[::-1], ramp.T] + ([np.full_like(ramp, 30000)] if alpha else [])
    ok, png = cv2.imencode(".png", np.stack(planes, 2), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    return png.tobytes()


def _decode_16bit(data: bytes) -> tuple[int, int]:
    """decode_image's output shape, checksummed (the call heap_peak measures)."""
    rgb = decode_image(data, "wide.png").rgb
    return rgb.shape[0], int(rgb.sum(dtype=np.int64))


@pytest.mark.parametrize("alpha", [False, True])
def test_a_16bit_colour_png_is_scaled_without_float64_copies_of_the_whole_image(alpha):
    """16-bit RGB(A) samples were scaled in float64 over the whole image at once: 8-byte copies of every sample
    alive together, a heap peak of 300 MB (RGB) and 370 MB (RGBA) for a 2000x2000 PNG whose result is 12 MB (a 9-Mpx
    16-bit pair needed more than 900 MB of address space to annotate). Now in integers, (v + 128) // 257, the same
    rounding exactly, and RGBA is composited in float64 a band of rows at a time: 80-85 MB. The values are those of
    the float rule."""
    data = _decode_peak_input(2000, alpha)
    measured = heap_peak(_decode_16bit, data)
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., [2, 1, 0, 3] if alpha else [2, 1, 0]]
    rgb = raw[..., :3] / 65535.0
    if alpha:
        rgb = rgb * (raw[..., 3:] / 65535.0) + (1.0 - raw[..., 3:] / 65535.0)
    expected = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    assert measured.value == (2000, int(expected.sum(dtype=np.int64)))
    assert (decode_image(data, "wide.png").rgb == expected).all()
    assert measured.peak < 100 * 2**20, measured.peak / 2**20      # raw 24 (32) MB, uint32 48 MB, result 12 MB


def _png_with_colour_key(depth: int, pixels: list[tuple[int, int, int]], key: tuple[int, int, int]) -> bytes:
    """A one-row RGB PNG of `depth` bits (8 or 16) with a tRNS chunk marking `key` transparent, written by hand
    (PNG spec: colour type 2, filter 0); OpenCV and Pillow write no colour key."""
    fmt = ">%dH" if depth == 16 else ">%dB"

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" + struct.pack(fmt % (3 * len(pixels)), *[v for p in pixels for v in p])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", len(pixels), 1, depth, 2, 0, 0, 0))
            + chunk(b"tRNS", struct.pack(">3H", *key)) + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b""))


def test_a_png_colour_key_is_ignored_in_16_bits_as_in_8():
    """A tRNS colour key on an RGB PNG (one colour transparent wherever it is) was ignored in 8 bits (Pillow) but
    applied in 16 (OpenCV makes it an alpha channel): the same picture read red in 8 bits and white in 16, and a
    16-bit mask keyed on white, composited on black, read empty where its 8-bit twin was marked. Photos carry a
    key by accident (12 PNGs of the eval set key pure black), so it is ignored in both, as it was in 8 bits."""
    from sigma.io.images import decode_mask

    picture = [(255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)]
    expected = np.array([picture], np.uint8)
    for key in ((255, 0, 0), (255, 255, 255)):
        eight = decode_image(_png_with_colour_key(8, picture, key), "key8.png")
        sixteen = decode_image(_png_with_colour_key(16, [tuple(v * 257 for v in p) for p in picture],
                                                    tuple(v * 257 for v in key)), "key16.png")
        assert (eight.rgb == expected).all() and (sixteen.rgb == expected).all(), (key, sixteen.rgb.tolist())
        assert "alpha" not in eight.notes and "alpha" not in sixteen.notes
    mask_picture = [(65535, 65535, 65535), (0, 0, 0)]
    mask16 = decode_mask(_png_with_colour_key(16, mask_picture, (65535, 65535, 65535)), "mask16.png")
    mask8 = decode_mask(_png_with_colour_key(8, [(255, 255, 255), (0, 0, 0)], (255, 255, 255)), "mask8.png")
    assert mask16.tolist() == mask8.tolist() == [[True, False]]


@pytest.mark.parametrize(("fmt", "said"), [("PPM", "Netpbm (PPM/PGM/PBM)"), ("TGA", "TGA"), ("PCX", "PCX"),
                                           ("QOI", "QOI"), ("DDS", "DDS"), ("JPEG2000", "JPEG 2000"),
                                           ("ICNS", "ICNS")])
def test_a_format_people_try_is_named_as_unsupported_not_as_damaged(fmt, said):
    """Files Pillow writes in formats not read here were `image_unreadable` ("not an image, or not one of ..."), as if
    they were damaged; now `unsupported_format`, naming the format."""
    data = encode(RGB, fmt) if fmt != "ICNS" else encode(np.zeros((64, 64, 3), np.uint8), fmt)
    with pytest.raises(ImageError) as info:
        decode_image(data, f"x.{fmt.lower()}")
    assert info.value.code == "unsupported_format"
    assert info.value.message.startswith(f"x.{fmt.lower()}: {said} is not supported"), info.value.message


def _zero_sized(fmt: str, field: str) -> bytes:
    """An 8x8 file written by Pillow, its header's width or height set to 0 as a broken writer leaves it."""
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8), fmt))
    if fmt == "BMP":
        struct.pack_into("<i", data, 18 if field == "width" else 22, 0)
    elif fmt == "JPEG":
        struct.pack_into(">H", data, data.find(b"\xff\xc0") + (7 if field == "width" else 5), 0)
    elif fmt == "WEBP":                      # lossy (VP8): 14 bits each after the start code; lossless cannot say 0
        struct.pack_into("<H", data, data.find(b"\x9d\x01\x2a") + (3 if field == "width" else 5), 0)
    else:
        ifd = struct.unpack_from("<I", data, 4)[0]
        for i in range(struct.unpack_from("<H", data, ifd)[0]):
            tag, kind = struct.unpack_from("<HH", data, ifd + 2 + 12 * i)
            if tag == (256 if field == "width" else 257):
                struct.pack_into("<I" if kind == 4 else "<H", data, ifd + 10 + 12 * i, 0)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["BMP", "JPEG", "TIFF", "WEBP"])
@pytest.mark.parametrize("field", ["width", "height"])
def test_a_header_of_zero_width_or_height_is_image_empty_in_every_format(fmt, field):
    """Such a BMP, JPEG or TIFF was `image_unreadable`, "not an image, or not one of PNG, JPEG, ...": it is one, of
    no pixels, as a PNG so was already said to be; a lossy WebP was `image_unreadable`, "unreadable or truncated image
    (could not create decoder object)"."""
    with pytest.raises(ImageError) as info:
        decode_image(_zero_sized(fmt, field), f"zero.{fmt.lower()}")
    assert info.value.code == "image_empty"
    assert info.value.message == f"zero.{fmt.lower()}: zero-size image ({fmt} header says width or height 0)"


def test_a_lab_tiff_with_its_lab_profile_is_not_said_to_carry_a_wrong_profile():
    """A CIE Lab TIFF (Pillow writes its Lab profile into it) was read right, but its notes said `icc_profile: ignored
    (a Lab profile on a RGB image)`, as if the file carried a profile of the wrong colour space; Lab samples are
    absolute and need none. The picture reads as before."""
    lab = Image.fromarray(RGB).convert("LAB")
    buf = io.BytesIO()
    lab.save(buf, "TIFF")
    assert Image.open(io.BytesIO(buf.getvalue())).info.get("icc_profile")       # the profile is in the file
    decoded = decode_image(buf.getvalue(), "lab.tif")
    assert decoded.notes["mode"] == "LAB" and decoded.notes["icc_profile"].startswith("not needed (CIE Lab")
    assert np.array_equal(decoded.rgb, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
