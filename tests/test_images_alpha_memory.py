"""An image with alpha is composited band by band: the same pixels, no whole-image copies (measured, tracemalloc)."""
from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from sigma.io.images import binarize_mask, decode_image, decode_mask


def _rgba_png(height: int, width: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (height, width, 4), np.uint8)
    rgba[: height // 3, :, 3] = 255                       # opaque rows, transparent ones, every alpha between
    rgba[height // 3: height // 2, :, 3] = 0
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=0)
    return buf.getvalue(), rgba


def _peak(call, *args):
    tracemalloc.start()
    try:
        result = call(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_rgba_image_decodes_to_the_same_pixels_without_whole_image_copies():
    """A 2000x1500 RGBA PNG: 9 MB as RGB. Decoding made RGBA, white, composite and RGB images plus two array copies of
    the whole at once (a 40 Mpx RGBA PNG peaked at ~990 MB over the process's start, ~290 MB now); numpy's share of it
    (what tracemalloc sees) was 30 MB here, now the result and one band."""
    data, rgba = _rgba_png(1500, 2000)
    decoded, peak = _peak(decode_image, data, "big.png")
    white = Image.new("RGBA", (2000, 1500), (255, 255, 255, 255))
    expected = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB"))
    assert np.array_equal(decoded.rgb, expected) and decoded.notes["alpha"] == "composited on white"
    assert peak < 1.5 * decoded.rgb.nbytes, peak


def test_an_rgba_mask_binarises_on_black_as_before_without_whole_image_float_copies():
    """The mask's composite on black went through float32 for the whole image (RGBA, its product, binarize_mask's
    copy: 2 GB at 40 Mpx over the process's start, ~480 MB now); the same mask, band by band."""
    data, rgba = _rgba_png(1500, 2000)
    mask, peak = _peak(decode_mask, data, "mask.png")
    values = rgba.astype(np.float32)
    assert np.array_equal(mask, binarize_mask(values[..., :3] * (values[..., 3:4] / 255.0)))
    assert peak < 6 * 1500 * 2000 * 3, peak      # the decoded RGB (9 MB), two bool masks and bands; it was 144 MB


def test_a_transparent_label_map_mask_keeps_its_0_1_rule_across_bands():
    """The 0/1 label-map rule is decided on the whole mask, not on each band: a mask of 0 and 1 with alpha, taller
    than one band, whose 1s are all in its last rows."""
    rgba = np.zeros((700, 40, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:5, :, 3] = 254                              # not opaque: the alpha path
    rgba[650:, :, :3] = 1
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    mask = decode_mask(buf.getvalue(), "labels.png")
    assert mask[650:].all() and not mask[:650].any()


@pytest.mark.parametrize("shape", [(1, 70_000), (70_000, 1), (1001, 263), (3, 3)])
def test_thin_and_odd_sized_rgba_images_composite_as_the_whole_image_did(shape):
    """Bands are whole rows of about ALPHA_BAND_PIXELS (256 rows each made a 1-pixel-wide image of 4 million rows
    15625 bands of Python calls: 4 s, its mask 11 s); every shape composites to what the whole image gave."""
    rng = np.random.default_rng(shape[0])
    rgba = rng.integers(0, 256, shape + (4,), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    white = Image.new("RGBA", (shape[1], shape[0]), (255, 255, 255, 255))
    want = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB"))
    assert np.array_equal(decode_image(buf.getvalue(), "thin.png").rgb, want)
    values = rgba.astype(np.float32)
    assert np.array_equal(decode_mask(buf.getvalue(), "thin.png"),
                          binarize_mask(values[..., :3] * (values[..., 3:4] / 255.0)))


def _png16(samples: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", samples[..., [2, 1, 0, 3]] if samples.ndim == 3 else samples)
    assert ok
    return encoded.tobytes()


def test_a_16_bit_rgba_mask_binarises_as_before_without_whole_image_float64_copies():
    """A 16-bit RGBA mask went through float64 for the whole image (samples, product, rounding, clip: a 20 Mpx one
    peaked at 1.7 GB over the process's start, 0.45 GB now); the same mask, band by band."""
    rng = np.random.default_rng(11)
    raw = rng.integers(0, 65536, (1200, 1000, 4), np.uint16)
    mask, peak = _peak(decode_mask, _png16(raw), "m16.png")
    values = raw[..., :3].astype(np.float64) * (raw[..., 3:4] / 65535.0)
    want = np.clip(np.round(values / 65535.0 * 255.0), 0, 255).mean(axis=2) > 127.5
    assert np.array_equal(mask, want)
    assert peak < 60_000_000, peak      # 36 MB: the samples (twice, as read), the RGB, masks, bands; it was 100 MB


def test_a_16_bit_label_map_keeps_its_0_1_rule_across_bands():
    raw = np.zeros((1500, 300, 4), np.uint16)
    raw[..., 3] = 65535
    raw[1400:, :, :3] = 1                           # the 1s in the last band only
    mask = decode_mask(_png16(raw), "labels16.png")
    assert mask[1400:].all() and not mask[:1400].any()


def test_a_16_bit_grey_image_decodes_as_before_without_whole_image_float64_copies():
    """16-bit grey went to 8 bits through whole-image float64 arrays: a 40 Mpx one peaked at ~1 GB over the process's
    start (0.3 GB now). The same round(v / 65535 * 255), band by band."""
    raw = np.random.default_rng(12).integers(0, 65536, (1500, 2000), np.uint16)
    buf = io.BytesIO()
    Image.fromarray(raw).save(buf, format="PNG")
    decoded, peak = _peak(decode_image, buf.getvalue(), "g16.png")
    gray = np.clip(np.round(raw.astype(np.float64) / 65535.0 * 255.0), 0, 255).astype(np.uint8)
    assert np.array_equal(decoded.rgb, np.repeat(gray[..., None], 3, axis=2)) and decoded.notes["bit_depth"] == 16
    assert peak < 4 * decoded.rgb.nbytes, peak      # 2 times the RGB (9 MB); it was 8 times


@pytest.mark.parametrize("transparency", [bytes(range(0, 200, 2)), 7])
def test_a_palette_png_with_trns_composites_band_by_band_as_its_whole_rgba_did(transparency):
    """Palette + tRNS is converted to RGBA a band at a time (it was a whole-image RGBA copy first: a 40 Mpx one
    peaked at 410 MB of RSS, 258 MB now; Pillow's memory, which tracemalloc does not see: this test guards the
    pixels, not the peak)."""
    rng = np.random.default_rng(4)
    img = Image.fromarray(rng.integers(0, 256, (900, 700), np.uint8), "P")
    img.putpalette(list(rng.integers(0, 256, 768)))
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=transparency)
    with Image.open(io.BytesIO(buf.getvalue())) as again:
        rgba = again.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    decoded = decode_image(buf.getvalue(), "p.png")
    assert np.array_equal(decoded.rgb, np.asarray(Image.alpha_composite(white, rgba).convert("RGB")))
    assert decoded.notes["mode"] == "P" and decoded.notes["alpha"] == "composited on white"
