"""An APNG whose default image (IDAT) is not part of its animation: the animation's first frame is what is read,
as every browser shows it, not the hidden fallback that Pillow reads as frame 0. Real APNGs, written by Pillow."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sigma.cli
from sigma.errors import SigmaError
from sigma.io.images import decode_image, decode_mask


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 7 + seed * 40) % 256, (y * 5 + seed * 90) % 256, (x + y + seed * 13) % 256],
                    axis=2).astype(np.uint8)


def _apng(default: np.ndarray, frames: list[np.ndarray], mode: str = "RGB") -> bytes:
    """An APNG of `frames` whose IDAT holds `default`, outside the animation (Pillow's `default_image=True`)."""
    buf = io.BytesIO()
    Image.fromarray(default, mode).save(buf, format="PNG", save_all=True, default_image=True,
                                        append_images=[Image.fromarray(f, mode) for f in frames])
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_the_first_animation_frame_is_decoded_not_the_hidden_default_image(mode):
    hidden, first, second = (_scene(18, 24, seed) for seed in range(3))
    if mode == "RGBA":
        hidden, first, second = (np.dstack([a, np.full(a.shape[:2], 200, np.uint8)]) for a in (hidden, first, second))
    elif mode == "L":
        hidden, first, second = (a[..., 0] for a in (hidden, first, second))
    data = _apng(hidden, [first, second], mode)
    with Image.open(io.BytesIO(data)) as img:               # Pillow reads the hidden image as frame 0
        assert img.info.get("default_image") and np.array_equal(np.asarray(img), hidden)
    still = io.BytesIO()
    Image.fromarray(first, mode).save(still, format="PNG")
    decoded, want = decode_image(data, "anim.png"), decode_image(still.getvalue(), "first.png")
    assert np.array_equal(decoded.rgb, want.rgb)
    assert decoded.notes["multi_frame"] == "first frame used"
    assert decoded.notes["apng_default_image"].startswith("not part of the animation")
    assert np.array_equal(decode_mask(data, "anim.png"), decode_mask(still.getvalue(), "first.png"))


def test_a_one_frame_animation_behind_a_hidden_default_image_is_that_frame_and_not_multi_frame():
    hidden, only = _scene(10, 12, 0), _scene(10, 12, 1)
    decoded = decode_image(_apng(hidden, [only]), "one.png")
    assert np.array_equal(decoded.rgb, only) and "multi_frame" not in decoded.notes


def test_an_apng_whose_idat_is_its_first_frame_is_read_as_before():
    first, second = _scene(10, 12, 0), _scene(10, 12, 1)
    buf = io.BytesIO()
    Image.fromarray(first).save(buf, format="PNG", save_all=True, append_images=[Image.fromarray(second)])
    decoded = decode_image(buf.getvalue(), "anim.png")
    assert np.array_equal(decoded.rgb, first) and "apng_default_image" not in decoded.notes


def _patch_first_fctl(data: bytes, at: int, value: int) -> bytes:
    out = bytearray(data)
    i = out.index(b"fcTL")
    payload = bytearray(out[i + 4:i + 30])
    payload[at:at + 4] = struct.pack(">I", value)
    out[i + 4:i + 30] = payload
    out[i + 30:i + 34] = struct.pack(">I", zlib.crc32(b"fcTL" + bytes(payload)))
    return bytes(out)


def test_a_hidden_default_image_with_a_first_frame_smaller_than_its_canvas_is_refused_clearly():
    data = _patch_first_fctl(_apng(_scene(16, 20, 0), [_scene(16, 20, 1)]), 4, 10)      # width 20 -> 10
    with pytest.raises(SigmaError) as caught:
        decode_image(data, "partial.png")
    assert caught.value.code == "unsupported_format" and "not its whole canvas" in caught.value.message


def test_a_broken_frame_crc_is_unreadable_not_rewritten_as_sound():
    data = bytearray(_apng(_scene(16, 20, 0), [_scene(16, 20, 1)]))
    i = data.index(b"fdAT")
    data[i + 10] ^= 0xFF                                    # inside the frame's data; its CRC no longer matches
    with pytest.raises(SigmaError) as caught:
        decode_image(bytes(data), "broken.png")
    assert caught.value.code == "image_unreadable"


def test_annotate_a_still_against_its_apng_with_a_hidden_poster_marks_nothing(tmp_path: Path, capsys):
    """`sigma annotate first.png anim.png`: the animation's first frame is the still; the hidden poster differs
    everywhere and was what got annotated (a mask of the whole picture)."""
    first = _scene(40, 50, 1)
    Image.fromarray(first).save(tmp_path / "first.png")
    (tmp_path / "anim.png").write_bytes(_apng(_scene(40, 50, 5), [first, _scene(40, 50, 2)]))
    code = sigma.cli.main(["annotate", str(tmp_path / "first.png"), str(tmp_path / "anim.png"), "--annotator",
                           "pixel-diff", "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert not (np.asarray(Image.open(tmp_path / "out" / "mask.png")) > 127).any()
    assert "only its first frame was annotated" in capsys.readouterr().err


def test_an_actl_after_the_image_data_is_no_animation_the_idat_is_read():
    """acTL must come before IDAT; after it, browsers and Pillow show the IDAT image as a still PNG."""
    hidden, first = _scene(10, 12, 0), _scene(10, 12, 1)
    data = _apng(hidden, [first])
    chunks, i = [], 8
    while i < len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        chunks.append(data[i:i + 12 + length])
        i += 12 + length
    actl = next(c for c in chunks if c[4:8] == b"acTL")
    rest = [c for c in chunks if c is not actl]
    moved = data[:8] + b"".join(rest[:-1]) + actl + rest[-1]         # just before IEND
    with Image.open(io.BytesIO(moved)) as img:
        assert not getattr(img, "is_animated", False)
    decoded = decode_image(moved, "late.png")
    assert np.array_equal(decoded.rgb, hidden) and "apng_default_image" not in decoded.notes
