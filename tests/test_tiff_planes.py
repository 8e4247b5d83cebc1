"""16-bit colour TIFFs stored as separate colour planes (PlanarConfiguration=2), written here byte by byte (no TIFF
writer installed writes them): OpenCV 5.1 read the red plane and then noise as if interleaved, and that picture of
stripes was annotated (`sigma annotate X X --annotator pixel-diff` of one such file against itself: 53 % marked).
Now an uncompressed one (which Pillow misreads too) is read from its strips (it was refused `unsupported_format`), a
compressed one plane by plane by Pillow's libtiff as 16-bit grey (it was Pillow's 8 bits): both rounded alike."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from sigma.errors import ImageError
from sigma.io.images import decode_image


def planar_tiff(rgb: np.ndarray, deflate: bool, rows: int | None = None) -> bytes:
    """A little-endian TIFF of uint16 [H, W, 3] samples, each colour plane in strips of `rows` rows (default: one
    strip a plane), PlanarConfiguration=2."""
    h, w, _ = rgb.shape
    rows = rows or h
    strips = [np.ascontiguousarray(rgb[top:top + rows, :, c]).astype("<u2").tobytes()
              for c in range(3) for top in range(0, h, rows)]
    strips = [zlib.compress(p) for p in strips] if deflate else strips
    n = len(strips)
    count = 11
    extra_at = 8 + 2 + count * 12 + 4
    bits_at, offsets_at = extra_at, extra_at + 6
    counts_at = offsets_at + 4 * n
    data_at = counts_at + 4 * n
    offsets = [data_at + sum(len(p) for p in strips[:i]) for i in range(n)]

    def entry(tag: int, kind: int, n: int, value: int) -> bytes:    # kind 3: SHORT, 4: LONG
        return struct.pack("<HHI", tag, kind, n) + (struct.pack("<HH", value, 0) if kind == 3 and n == 1
                                                   else struct.pack("<I", value))
    entries = [entry(256, 3, 1, w), entry(257, 3, 1, h), entry(258, 3, 3, bits_at),
               entry(259, 3, 1, 8 if deflate else 1), entry(262, 3, 1, 2),
               entry(273, 4, n, offsets_at) if n > 1 else entry(273, 4, 1, offsets[0]),
               entry(277, 3, 1, 3), entry(278, 3, 1, rows),
               entry(279, 4, n, counts_at) if n > 1 else entry(279, 4, 1, len(strips[0])), entry(284, 3, 1, 2),
               entry(339, 3, 1, 1)]
    return (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", count) + b"".join(entries) + struct.pack("<I", 0)
            + struct.pack("<3H", 16, 16, 16) + struct.pack(f"<{n}I", *offsets)
            + struct.pack(f"<{n}I", *(len(p) for p in strips)) + b"".join(strips))


def _picture() -> np.ndarray:
    ramp = (np.indices((48, 64)).sum(0) * 700 % 65536).astype(np.uint16)
    return np.stack([ramp, ramp[::-1], 65535 - ramp], 2)


@pytest.mark.parametrize("rows", [None, 5, 16])
def test_a_compressed_16_bit_tiff_of_separate_planes_is_rounded_as_the_uncompressed_one(rows):
    """A compressed one was Pillow's libtiff read, in 8 bits: the high byte (v >> 8), where the same picture
    uncompressed is rounded, so the two differed by one level in about half their samples. Now each plane is
    decoded by libtiff as a 16-bit grey image and rounded as every 16-bit image is."""
    picture = _picture()
    decoded = decode_image(planar_tiff(picture, deflate=True, rows=rows), "planes.tif")
    assert decoded.rgb.shape == (48, 64, 3) and decoded.notes["bit_depth"] == 16
    assert np.array_equal(decoded.rgb, ((picture.astype(np.uint32) + 128) // 257).astype(np.uint8))
    assert np.array_equal(decoded.rgb, decode_image(planar_tiff(picture, deflate=False, rows=rows), "raw.tif").rgb)


def test_a_compressed_tiff_of_separate_planes_with_a_damaged_strip_is_unreadable():
    data = bytearray(planar_tiff(_picture(), deflate=True, rows=16))
    data[-30:] = b"\xff" * 30                       # the last (blue) strip's deflate stream
    with pytest.raises(ImageError) as refused:
        decode_image(bytes(data), "planes.tif")
    assert refused.value.code == "image_unreadable"


@pytest.mark.parametrize("rows", [None, 5, 16])
def test_an_uncompressed_16_bit_tiff_of_separate_planes_is_read_from_its_strips(rows):
    """It was refused `unsupported_format` (Pillow's own reader takes 8 bits of each sample, noise): now its samples
    are read from its strips, one plane after another, and rounded to 8 bits as every 16-bit image is: the same as
    the same picture saved as a 16-bit PNG."""
    import cv2

    picture = _picture()
    decoded = decode_image(planar_tiff(picture, deflate=False, rows=rows), "planes.tif")
    assert np.array_equal(decoded.rgb, ((picture.astype(np.uint32) + 128) // 257).astype(np.uint8))
    ok, png = cv2.imencode(".png", np.ascontiguousarray(picture[..., ::-1]))
    assert ok and np.array_equal(decoded.rgb, decode_image(png.tobytes(), "planes.png").rgb)


def test_an_uncompressed_tiff_of_separate_planes_cut_short_is_unreadable_not_read_past_its_end():
    data = planar_tiff(_picture(), deflate=False, rows=16)
    with pytest.raises(ImageError) as refused:
        decode_image(data[:-100], "planes.tif")
    assert refused.value.code == "image_unreadable"
    assert refused.value.message.startswith("planes.tif: truncated: strip 8 of its colour planes needs bytes"), \
        refused.value.message


def planar_tiled_tiff(rgb: np.ndarray, deflate: bool, tile: tuple[int, int]) -> bytes:
    """A little-endian TIFF of uint16 [H, W, 3] samples, each colour plane in tiles of `tile` (width, height), stored
    whole past the image's edges (zeros there), PlanarConfiguration=2."""
    h, w, _ = rgb.shape
    tw, th = tile
    padded = np.zeros((-(-h // th) * th, -(-w // tw) * tw, 3), np.uint16)
    padded[:h, :w] = rgb
    tiles = [np.ascontiguousarray(padded[top:top + th, left:left + tw, c]).astype("<u2").tobytes()
             for c in range(3) for top in range(0, h, th) for left in range(0, w, tw)]
    tiles = [zlib.compress(t) for t in tiles] if deflate else tiles
    n = len(tiles)
    count = 12
    bits_at = 8 + 2 + count * 12 + 4
    offsets_at = bits_at + 6
    counts_at = offsets_at + 4 * n
    data_at = counts_at + 4 * n
    offsets = [data_at + sum(len(t) for t in tiles[:i]) for i in range(n)]

    def entry(tag: int, kind: int, n: int, value: int) -> bytes:    # kind 3: SHORT, 4: LONG
        return struct.pack("<HHI", tag, kind, n) + (struct.pack("<HH", value, 0) if kind == 3 and n == 1
                                                   else struct.pack("<I", value))
    entries = [entry(256, 3, 1, w), entry(257, 3, 1, h), entry(258, 3, 3, bits_at),
               entry(259, 3, 1, 8 if deflate else 1), entry(262, 3, 1, 2), entry(277, 3, 1, 3),
               entry(284, 3, 1, 2), entry(322, 3, 1, tw), entry(323, 3, 1, th), entry(324, 4, n, offsets_at),
               entry(325, 4, n, counts_at), entry(339, 3, 1, 1)]
    return (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", count) + b"".join(entries) + struct.pack("<I", 0)
            + struct.pack("<3H", 16, 16, 16) + struct.pack(f"<{n}I", *offsets)
            + struct.pack(f"<{n}I", *(len(t) for t in tiles)) + b"".join(tiles))


@pytest.mark.parametrize("deflate", [True, False])
@pytest.mark.parametrize("tile", [(16, 16), (32, 16), (64, 48)])
def test_a_tiled_16_bit_tiff_of_separate_planes_is_rounded_as_the_same_picture_in_strips(deflate, tile):
    """Tiled, compressed, it was left to Pillow's libtiff in 8 bits, the high byte (v >> 8): one level below the same
    picture in strips in about half its samples; tiled, uncompressed, it was refused `unsupported_format`. Now each
    plane's tiles are read as its strips are, and rounded as every 16-bit image is."""
    picture = _picture()
    decoded = decode_image(planar_tiled_tiff(picture, deflate=deflate, tile=tile), "tiles.tif")
    assert decoded.rgb.shape == (48, 64, 3) and decoded.notes["bit_depth"] == 16
    assert np.array_equal(decoded.rgb, ((picture.astype(np.uint32) + 128) // 257).astype(np.uint8))
    assert np.array_equal(decoded.rgb, decode_image(planar_tiff(picture, deflate=deflate, rows=5), "strips.tif").rgb)


def test_an_uncompressed_tiled_tiff_of_separate_planes_cut_short_is_unreadable_not_read_past_its_end():
    data = planar_tiled_tiff(_picture(), deflate=False, tile=(16, 16))
    with pytest.raises(ImageError) as refused:
        decode_image(data[:-100], "tiles.tif")
    assert refused.value.code == "image_unreadable"
    assert refused.value.message.startswith("tiles.tif: truncated: tile 35 of its colour planes needs bytes"), \
        refused.value.message


def tiled_rgb_tiff(width: int, height: int, tile: int, picture: np.ndarray | None = None) -> bytes:
    """A little-endian 8-bit RGB TIFF of one deflated `tile` x `tile` tile (the picture in its top left corner, zeros
    past the image's edge), as libtiff writes a tile: whole."""
    whole = np.zeros((tile, tile, 3), np.uint8)
    if picture is not None:
        whole[:height, :width] = picture
    coded = zlib.compress(whole.tobytes())
    count = 10
    bits_at = 8 + 2 + count * 12 + 4
    data_at = bits_at + 6

    def entry(tag: int, kind: int, n: int, value: int) -> bytes:
        return struct.pack("<HHI", tag, kind, n) + (struct.pack("<HH", value, 0) if kind == 3 and n == 1
                                                   else struct.pack("<I", value))
    entries = [entry(256, 4, 1, width), entry(257, 4, 1, height), entry(258, 3, 3, bits_at), entry(259, 3, 1, 8),
               entry(262, 3, 1, 2), entry(277, 3, 1, 3), entry(322, 4, 1, tile), entry(323, 4, 1, tile),
               entry(324, 4, 1, data_at), entry(325, 4, 1, len(coded))]
    return (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", count) + b"".join(entries) + struct.pack("<I", 0)
            + struct.pack("<3H", 8, 8, 8) + coded)


def test_a_tiff_whose_tiles_are_larger_than_the_pixel_limit_is_refused_before_decoding(tmp_path):
    """libtiff decodes a compressed tile whole, whatever the image's size: a 64x64 picture in one 16384x16384 tile
    (1 KB of deflate) took 6.5 s and 860 MB; with its data there (800 KB) it is decoded in full. The pixel limit
    now bounds a tile as it bounds an image, in the decode and in the header probe."""
    from sigma.config.schema import LimitsConfig
    from sigma.errors import LimitError
    from sigma.io.images import probe_image_file

    limits = LimitsConfig(max_pixels=1_000_000)
    data = tiled_rgb_tiff(64, 64, 2048)                       # 4 Mpx a tile, 12 MB of samples in 12 KB
    with pytest.raises(LimitError) as refused:
        decode_image(data, "tiles.tif", limits)
    assert refused.value.code == "too_many_pixels"
    assert "tiles.tif: a TIFF of 2048x2048 tiles = 4194304 pixels each exceeds the limit of 1000000" in \
        str(refused.value)
    (tmp_path / "tiles.tif").write_bytes(data)
    with pytest.raises(LimitError) as probed:
        probe_image_file(tmp_path / "tiles.tif", limits)
    assert probed.value.code == "too_many_pixels"


def test_a_small_picture_in_a_real_tile_larger_than_itself_still_decodes():
    picture = np.random.default_rng(4).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    decoded = decode_image(tiled_rgb_tiff(50, 40, 256, picture), "small.tif")
    assert np.array_equal(decoded.rgb, picture)
