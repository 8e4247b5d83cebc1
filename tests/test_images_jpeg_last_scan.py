"""A progressive JPEG cut inside its last scan and closed again with an end marker is refused, as a cut in any earlier
scan already was (`jpeg_scans_missing`): it decoded, without a word, with the last scan's detail missing past the
cut. Real files written by Pillow (libjpeg), cut as a transfer cut them, then closed with FF D9."""
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
