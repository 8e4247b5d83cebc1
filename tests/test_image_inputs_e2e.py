"""Image files as users hand them to the front ends (`sigma annotate`, the API's upload check), written here as
real files: each ends in a mask that lies on the picture the user sees, or in a clear error."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import sigma.cli
from sigma.io.images import decode_image

_TURN = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90,
         2: Image.Transpose.FLIP_LEFT_RIGHT, 5: Image.Transpose.TRANSPOSE}


def _scene(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * 3 + y * 5) % 256], axis=2).astype(np.uint8)


def _tagged(rgb: np.ndarray, path: Path, orientation: int, **kw) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, exif=exif.tobytes(), **kw)
    return path


@pytest.mark.parametrize("compression", [None, "tiff_deflate"])      # Pillow's own decoder, and libtiff's
@pytest.mark.parametrize("orientation", [2, 3, 5, 6, 8])
def test_a_tagged_tiff_is_turned_upright_once(orientation, compression, tmp_path):
    """Pillow (11.1 on) turns a TIFF upright in load() by its Orientation tag; decode_image turned it again: a
    TIFF tagged 3 (180 degrees) or 2 (mirrored) came out as stored, one tagged 6 upside down on its side."""
    stored = _scene(12, 17)
    path = _tagged(stored, tmp_path / "photo.tif", orientation, **({"compression": compression} if compression
                                                                    else {}))
    decoded = decode_image(path.read_bytes(), "photo.tif")
    want = np.asarray(Image.fromarray(stored).transpose(_TURN[orientation]))
    assert decoded.rgb.shape == want.shape
    np.testing.assert_array_equal(decoded.rgb, want)
    assert decoded.notes["exif_orientation"] == orientation
    assert decoded.notes["decoded_size"] == [12, 17]             # as stored, before turning upright, as for a PNG


def test_a_multi_page_tagged_tiff_is_turned_upright_once(tmp_path):
    stored = _scene(12, 17)
    path = tmp_path / "pages.tif"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, exif=exif.tobytes(), save_all=True, append_images=[Image.fromarray(stored)])
    decoded = decode_image(path.read_bytes(), "pages.tif")
    np.testing.assert_array_equal(decoded.rgb, np.asarray(Image.fromarray(stored).transpose(_TURN[6])))


def _mask_box(mask_png: Path) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    mask = np.asarray(Image.open(mask_png)) > 127
    ys, xs = np.nonzero(mask)
    return mask.shape, (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max()))


def test_annotate_a_phone_tiff_against_its_upright_export_marks_the_edit_where_it_is_seen(tmp_path, capsys):
    """A TIFF stored landscape with Orientation 6 (shown portrait), and its edit exported upright without the tag,
    as editors do: the mask has the shown picture's size and covers the edit. Before, the TIFF was turned twice,
    so the pair was refused as aspect_mismatch; and two TIFFs tagged 3 (180 degrees) gave a mask upside down."""
    stored = _scene(60, 90)                                       # H x W as stored
    original = _tagged(stored, tmp_path / "o.tif", 6)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(original))).copy()
    assert upright.shape == (90, 60, 3)
    upright[10:30, 5:25] = (250, 10, 10)                         # the edit, where the user sees it
    Image.fromarray(upright).save(tmp_path / "e.png")
    code = sigma.cli.main(["annotate", str(original), str(tmp_path / "e.png"), "--annotator", "pixel-diff",
                           "-o", str(tmp_path / "out6")])
    assert code == 0, capsys.readouterr().err
    assert _mask_box(tmp_path / "out6" / "mask.png") == ((90, 60), (10, 29, 5, 24))

    edited = stored.copy()
    edited[:15, :20] = (250, 10, 10)                             # top left as stored: bottom right as shown
    _tagged(stored, tmp_path / "o3.tif", 3)
    _tagged(edited, tmp_path / "e3.tif", 3)
    code = sigma.cli.main(["annotate", str(tmp_path / "o3.tif"), str(tmp_path / "e3.tif"), "--annotator",
                           "pixel-diff", "-o", str(tmp_path / "out3")])
    assert code == 0, capsys.readouterr().err
    assert _mask_box(tmp_path / "out3" / "mask.png") == ((60, 90), (45, 59, 70, 89))


def test_api_upload_check_takes_a_tagged_tiff_at_its_shown_size():
    """The API's header check turned a TIFF's size twice as well, and refused the pair above with aspect_mismatch
    even when the library accepted it."""
    from sigma.api.probe import check_pair
    from sigma.config.schema import IOConfig

    stored = _scene(60, 90)
    exif = Image.Exif()
    exif[0x0112] = 6
    tiff, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(stored).save(tiff, format="TIFF", exif=exif.tobytes())
    Image.fromarray(np.asarray(Image.fromarray(stored).transpose(_TURN[6]))).save(png, format="PNG")
    check_pair(tiff.getvalue(), png.getvalue(), None, IOConfig())


def _exif_after_pixels(rgb: np.ndarray, orientation: int) -> bytes:
    """A PNG whose eXIf chunk (orientation) comes after its IDAT, as some taggers append it."""
    import struct

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", exif=exif.tobytes())
    data, i, chunks = buf.getvalue(), 8, []
    while i < len(data):
        n = struct.unpack(">I", data[i:i + 4])[0]
        chunks.append(data[i:i + 12 + n])
        i += 12 + n
    late = [c for c in chunks if c[4:8] == b"eXIf"]
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    assert len(late) == 1 and rest[-1][4:8] == b"IEND"
    return data[:8] + b"".join(rest[:-1]) + late[0] + rest[-1]


def test_api_upload_check_defers_to_the_decoder_on_an_aspect_it_cannot_see(tmp_path):
    """The header check cannot see an eXIf chunk after the pixels (the decoder applies it): it refused such a pair
    as aspect_mismatch, even though `pair_from_bytes` (and so `sigma annotate`) accepts it. A pair that really
    differs is still refused with the library's message."""
    from sigma.api.probe import check_pair
    from sigma.config.schema import IOConfig
    from sigma.errors import InputError

    stored = _scene(60, 90)
    original = _exif_after_pixels(stored, 6)
    upright = io.BytesIO()
    Image.fromarray(np.asarray(Image.fromarray(stored).transpose(_TURN[6]))).save(upright, format="PNG")
    assert decode_image(original).rgb.shape == (90, 60, 3)
    check_pair(original, upright.getvalue(), None, IOConfig())
    wide = io.BytesIO()
    Image.fromarray(_scene(20, 90)).save(wide, format="PNG")
    with pytest.raises(InputError) as err:
        check_pair(original, wide.getvalue(), None, IOConfig())
    assert err.value.code == "aspect_mismatch" and "different EXIF orientations" in err.value.message


def test_a_float_tiff_pair_is_read_on_one_scale_so_a_bright_edit_marks_only_itself(tmp_path, capsys):
    """Float TIFFs were each stretched from their own minimum to their own maximum: an edit that added one pixel
    brighter than any of the original's darkened every other pixel of the edited image, and pixel-diff marked 92%
    of it. 1.0 is white now (for both), NaN reads as 0, and integer data saved as floats keeps its scale."""
    photo = _scene(60, 90)[..., 0].astype(np.float32) / 255 * 0.8 + 0.1         # 0.1 .. 0.9, as a render leaves
    edited = photo.copy()
    edited[10:20, 10:30] = 1.0                                                   # a highlight brighter than all
    edited[0, 0] = np.nan
    Image.fromarray(photo).save(tmp_path / "o.tif")
    Image.fromarray(edited).save(tmp_path / "e.tif")
    code = sigma.cli.main(["annotate", str(tmp_path / "o.tif"), str(tmp_path / "e.tif"), "--annotator",
                           "pixel-diff", "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    mask = np.asarray(Image.open(tmp_path / "out" / "mask.png")) > 127
    assert mask.shape == (60, 90) and mask[10:20, 10:30].all()
    assert mask.sum() <= 10 * 20 + 9                                             # the edit and the NaN pixel
    decoded = decode_image((tmp_path / "o.tif").read_bytes())
    np.testing.assert_array_equal(decoded.rgb[..., 0], np.round(photo.astype(np.float64) * 255).astype(np.uint8))
    assert decoded.notes["white_point"] == 1.0
    as_bytes = _scene(60, 90)[..., 0].astype(np.float32)                         # 0..255 integer data as floats
    Image.fromarray(as_bytes).save(tmp_path / "bytes.tif")
    decoded = decode_image((tmp_path / "bytes.tif").read_bytes())
    np.testing.assert_array_equal(decoded.rgb[..., 0], _scene(60, 90)[..., 0])
    from sigma.io.pairs import load_pair
    pair = load_pair(tmp_path / "o.tif", tmp_path / "bytes.tif")
    assert any("different scales" in w for w in pair.preprocess["warnings"])


def _photo(h: int, w: int) -> np.ndarray:
    """Smooth colours (a JPEG keeps them, as it keeps a photo's) that no turn or mirror maps onto themselves."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], axis=2).astype(np.uint8)


def _annotate(tmp_path: Path, original: Path, edited: Path, capsys) -> tuple[np.ndarray, dict, str]:
    """`sigma annotate` with pixel-diff: (the mask, result.json, what it said on stderr)."""
    import json

    out = tmp_path / "out"
    code = sigma.cli.main(["annotate", str(original), str(edited), "--annotator", "pixel-diff", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    return np.asarray(Image.open(out / "mask.png")) > 127, json.loads((out / "result.json").read_text()), err


@pytest.mark.parametrize("orientation,size", [(6, (60, 90)), (8, (72, 72)), (3, (60, 90)), (5, (64, 64))])
def test_a_tagged_photo_and_its_upright_export_are_not_warned_about(orientation, size, tmp_path, capsys):
    """A phone photo (pixels stored sideways, an EXIF orientation tag) and the upright, untagged export every
    editor writes: each is turned upright by its own tag, so the two agree and the mask is right. The pair was
    still warned about "different EXIF orientations", on every such pair: a warning that teaches users to ignore
    warnings. Now it is only a note in the result's preprocess."""
    stored = _photo(*size)
    original = _tagged(stored, tmp_path / "photo.jpg", orientation, quality=95)
    upright = np.asarray(Image.fromarray(stored).transpose(_TURN[orientation])).copy()
    upright[10:20, 12:30] = (255, 0, 255)                                       # the edit
    Image.fromarray(upright).save(tmp_path / "export.png")
    mask, result, err = _annotate(tmp_path, original, tmp_path / "export.png", capsys)
    assert "warning" not in err and "EXIF" not in err
    assert not any("EXIF" in w for w in result["preprocess"].get("warnings", []))
    assert result["preprocess"]["orientation"].endswith("neither looks turned or mirrored against the other")
    outside = mask.copy()
    outside[6:24, 8:34] = False                                                 # the edit and a margin
    assert mask.shape == upright.shape[:2] and mask[10:20, 12:30].all() and outside.mean() < 0.05


@pytest.mark.parametrize("orientation", [3, 6, 2])
def test_an_export_that_dropped_the_tag_without_turning_the_pixels_is_still_warned_about(orientation, tmp_path,
                                                                                         capsys):
    """The case the warning is for: the editor dropped the tag but kept the pixels as stored, so the edited image
    as shown is turned (or mirrored) against the original: every pixel differs. Said, naming the turn."""
    stored = _photo(64, 64)
    original = _tagged(stored, tmp_path / "photo.jpg", orientation, quality=95)
    Image.fromarray(stored).save(tmp_path / "export.png")
    mask, result, err = _annotate(tmp_path, original, tmp_path / "export.png", capsys)
    assert "different EXIF orientations" in err and "as shown" in err
    assert any("different EXIF orientations" in w for w in result["preprocess"]["warnings"])
    assert "orientation" not in result["preprocess"]


def test_an_int32_tiff_pair_is_read_on_one_scale_when_the_edit_brings_in_one_bright_pixel(tmp_path, capsys):
    """32-bit integer TIFFs took their white point (255 or 65535) from their own maximum: an edit that brought in
    one sample above 255 read the whole edited image on the 65535 scale (near black), and pixel-diff marked all of
    it. The white point is chosen by the 99th percentile now, as for float TIFFs; 16-bit data in 32 bits keeps
    65535."""
    photo = _scene(60, 90)[..., 0].astype(np.int32)
    edited = photo.copy()
    edited[10:20, 10:30] = 255 - photo[10:20, 10:30]
    edited[15, 15] = 300                                                         # one sample past 8 bits
    Image.fromarray(photo).save(tmp_path / "o.tif")
    Image.fromarray(edited).save(tmp_path / "e.tif")
    assert Image.open(tmp_path / "e.tif").mode == "I"
    mask, result, err = _annotate(tmp_path, tmp_path / "o.tif", tmp_path / "e.tif", capsys)
    assert "different scales" not in err
    assert result["preprocess"]["edited"]["white_point"] == result["preprocess"]["original"]["white_point"] == 255
    assert mask[10:20, 10:30].mean() > 0.9 and mask.sum() <= 10 * 20
    wide = (_scene(60, 90)[..., 0].astype(np.int32) * 257)                       # 16-bit data in 32 bits
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    decoded = decode_image((tmp_path / "wide.tif").read_bytes())
    assert decoded.notes["white_point"] == 65535
    np.testing.assert_array_equal(decoded.rgb[..., 0], _scene(60, 90)[..., 0])
    # a dark 10-bit scan in 32 bits (99th percentile ~ 800 < 4 x 255): the percentile-with-headroom rule read it at
    # 255, clipping a third of it to white; its samples above 255 are far more than a bright pixel, so it keeps 65535
    dark = (_scene(60, 90)[..., 0].astype(np.int32) * 4)
    assert np.count_nonzero(dark > 255) > 0.01 * dark.size
    Image.fromarray(dark).save(tmp_path / "dark.tif")
    decoded = decode_image((tmp_path / "dark.tif").read_bytes())
    assert decoded.notes["white_point"] == 65535 and "clipped_samples" not in decoded.notes


def test_a_16_bit_tiff_with_a_private_tag_is_annotated_without_libtiffs_warnings_in_the_output(tmp_path):
    """A 16-bit RGB TIFF carrying a tag libtiff does not know (an editor's private tag; here SampleFormat renumbered
    65000): its samples are read by OpenCV, whose libtiff printed `[ WARN:0@0.9] global grfmt_tiff.cpp:123 TIFF_Warning
    TIFFReadDirectory: Unknown field with tag 65000 (0xfde8) encountered` into `sigma annotate`'s output, once per
    read. Now OpenCV logs errors only (unless OPENCV_LOG_LEVEL is set): the pair is annotated, stderr is empty."""
    import os
    import struct
    import subprocess
    import sys

    import cv2

    ramp = (np.indices((32, 48)).sum(0) * 1000 % 65535).astype(np.uint16)
    for name in ("o.tif", "e.tif"):
        picture = np.stack([ramp, ramp, ramp], 2)
        if name == "e.tif":
            picture[4:12, 4:12] = 65535
        ok, buf = cv2.imencode(".tif", picture)
        data = bytearray(buf.tobytes())
        ifd = struct.unpack_from("<I", data, 4)[0]
        tags = [ifd + 2 + 12 * i for i in range(struct.unpack_from("<H", data, ifd)[0])]
        last = tags[-1]
        assert ok and struct.unpack_from("<H", data, last)[0] == 339     # SampleFormat, the last tag, unsigned
        struct.pack_into("<H", data, last, 65000)
        (tmp_path / name).write_bytes(bytes(data))
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "sigma", "annotate", str(tmp_path / "o.tif"), str(tmp_path / "e.tif"),
                           "--annotator", "pixel-diff", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    assert "pixel-diff" in proc.stdout and (tmp_path / "out" / "mask.png").exists()
