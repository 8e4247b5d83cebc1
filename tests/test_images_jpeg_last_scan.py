"""A JPEG of several scans (progressive, or sequential with a scan per component) cut inside its last scan and closed
again with an end marker is refused, as a cut in any earlier scan already was (`jpeg_scans_missing`): it decoded,
without a word, with the last scan's part missing past the cut. Real files written by Pillow (libjpeg), cut as a
transfer cut them, then closed with FF D9."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sigma.cli
from sigma.errors import SigmaError
from sigma.io.coded_size import _jpeg_segments
from sigma.io.images import decode_image


def _photo(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 0.4 + y * 0.1) % 256, (y * 0.5) % 256, (x * y / 900) % 256], -1)
    noise = np.random.default_rng(seed).integers(-25, 25, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, progressive=True, **kw)
    return buf.getvalue()


def _last_scan(data: bytes) -> tuple[int, int]:
    """(the offset of the last scan's SOS marker, of the end marker)."""
    segments = list(_jpeg_segments(data))
    return [i for i, m, _ in segments if m == 0xDA][-1], next(i for i, m, _ in segments if m == 0xD9)


@pytest.mark.parametrize("kw", [{}, {"subsampling": 0}, {"restart_marker_blocks": 3}])
@pytest.mark.parametrize("fraction", [0.2, 0.9, 0.995])
def test_a_progressive_jpeg_cut_inside_its_last_scan_is_refused(kw, fraction):
    data = _jpeg(_photo(), **kw)
    sos, eoi = _last_scan(data)
    cut = data[:sos + int((eoi - sos) * fraction)] + b"\xff\xd9"
    with Image.open(io.BytesIO(cut)) as img:                     # libjpeg decodes it without a word
        assert not np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(data))))
    with pytest.raises(SigmaError) as caught:
        decode_image(cut, "cut.jpg")
    assert caught.value.code == "image_unreadable"
    assert "truncated JPEG: its last scan's coded data ends before the picture does" in caught.value.message


@pytest.mark.parametrize("quality", [1, 50, 95, 100])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_whole_progressive_jpegs_decode_as_libjpeg_decodes_them(quality, mode):
    arr = _photo(97, 131, seed=quality)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG", quality=quality, progressive=True, optimize=True)
    decoded = decode_image(buf.getvalue(), "whole.jpg")
    want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(decoded.rgb, want)


def test_sigma_annotate_refuses_the_cut_one_with_a_one_line_error(tmp_path: Path, capsys):
    photo = _photo()
    data = _jpeg(photo)
    sos, eoi = _last_scan(data)
    (tmp_path / "o.jpg").write_bytes(data)
    (tmp_path / "e.jpg").write_bytes(data[:sos + (eoi - sos) // 2] + b"\xff\xd9")
    code = sigma.cli.main(["annotate", str(tmp_path / "o.jpg"), str(tmp_path / "e.jpg"), "--annotator", "pixel-diff",
                           "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and "error [image_unreadable]" in err and "e.jpg" in err and "Traceback" not in err


def _segments(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(marker, payload, entropy-coded data after it) of a one-scan grey baseline JPEG (no restart markers)."""
    i, out = 2, []
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        coded = data[i + 2 + length:data.index(b"\xff\xd9", i)] if marker == 0xDA else b""
        out.append((marker, data[i + 4:i + 2 + length], coded))
        if marker == 0xDA:
            return out
        i += 2 + length
    return out


def _non_interleaved(ycc: np.ndarray) -> bytes:
    """A sequential JPEG of three 1x1-sampled components, each in a scan of its own (as jpegtran or mozjpeg may write
    one), made of three grey baseline JPEGs of its planes: their tables and coded data are the same."""
    planes = []
    for k in range(3):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(ycc[..., k])).save(buf, format="JPEG", quality=90)
        planes.append(_segments(buf.getvalue()))

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload

    height, width = ycc.shape[:2]
    out = b"\xff\xd8" + b"".join(segment(m, p) for m, p, _ in planes[0] if m in (0xDB, 0xC4))
    out += segment(0xC0, bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big")
                   + bytes([3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]))
    for k in range(3):
        out += segment(0xDA, bytes([1, k + 1, 0x00, 0, 63, 0])) + planes[k][-1][2]
    return out + b"\xff\xd9"


@pytest.mark.parametrize("fraction", [0.3, 0.95])
def test_a_sequential_jpeg_of_a_scan_per_component_cut_in_its_last_scan_is_refused(fraction):
    """Cut in its Cr scan: the rest of the picture decoded with Cr 128, its colours shifted, no corner grey."""
    photo = _photo(120, 160)
    data = _non_interleaved(np.asarray(Image.fromarray(photo).convert("YCbCr")))
    whole = decode_image(data, "whole.jpg")
    assert np.abs(whole.rgb.astype(int) - photo).mean() < 8             # a sound file of the (noisy) picture
    sos, eoi = _last_scan(data)
    cut = data[:sos + int((eoi - sos) * fraction)] + b"\xff\xd9"
    with pytest.raises(SigmaError) as caught:
        decode_image(cut, "cut.jpg")
    assert caught.value.code == "image_unreadable" and "last scan" in caught.value.message
