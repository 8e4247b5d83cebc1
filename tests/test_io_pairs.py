"""Pairs: size sync, aspect check, instruction check, alignment with a known shift, RLE and bbox."""
from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from sigma.config.schema import IOConfig, LimitsConfig
from sigma.errors import InputError, SigmaError
from sigma.io.geometry import align, check_aspect, estimate_translation, sync_size, undo_translation
from sigma.io.pairs import check_instruction, load_pair, pair_from_bytes
from sigma.rle import decode_rle, encode_rle, mask_bbox
from sigma.types import Annotation, Pair


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture (blurred noise): phase correlation needs structure at several scales."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2.0)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- size sync
def test_sync_size_cubic_when_enlarging_area_when_shrinking():
    img = textured(20, 30)
    same, note = sync_size(img, (20, 30))
    assert same is img and note is None
    up, note = sync_size(img, (40, 60))
    assert up.shape == (40, 60, 3) and "cubic" in note and "30x20 -> 60x40" in note
    np.testing.assert_array_equal(up, cv2.resize(img, (60, 40), interpolation=cv2.INTER_CUBIC))
    down, note = sync_size(img, (10, 15))
    assert down.shape == (10, 15, 3) and "area" in note
    np.testing.assert_array_equal(down, cv2.resize(img, (15, 10), interpolation=cv2.INTER_AREA))


def test_pair_records_the_resize_and_keeps_the_original_size():
    orig = textured(24, 32)
    edited_small = cv2.resize(orig, (16, 12), interpolation=cv2.INTER_AREA)
    pair = pair_from_bytes(png(orig), png(edited_small), "make it pop", pair_id="p")
    assert pair.size == (24, 32) and pair.edited.shape == orig.shape
    assert "cubic" in pair.preprocess["resize"]
    assert pair.preprocess["original"]["format"] == "PNG"
    assert pair.instruction == "make it pop"


def test_aspect_mismatch_is_refused_with_both_sizes():
    with pytest.raises(InputError) as info:
        pair_from_bytes(png(textured(20, 20)), png(textured(20, 40)), names=("o.png", "e.png"))
    exc = info.value
    assert exc.code == "aspect_mismatch" and exc.message.startswith("e.png")
    assert "40x20" in exc.message and "20x20" in exc.message and "\n" not in exc.message
    # within tolerance: resized, not refused
    assert check_aspect((100, 100), (100, 104), 0.05) == pytest.approx(0.04)
    # exactly at the limit is within it: in floats 105x100 changed by 0.05000000000000004 > 0.05 and was refused
    # as "by 5.0% (> 5.0%)"
    assert check_aspect((100, 100), (100, 105), 0.05) == pytest.approx(0.05)
    assert check_aspect((10, 10), (10, 11), 0.1) == pytest.approx(0.1)
    assert check_aspect((10, 10), (10, 1000), float("inf")) == pytest.approx(99.0)
    with pytest.raises(InputError):
        check_aspect((100, 100), (100, 106), 0.05)


def test_extreme_aspect_mismatch_says_how_many_times_not_an_absurd_percentage():
    """40000x1 against 1x40000 was "by 160000000000.0%", the other way round "by 100.0%": now how many times the
    original's width / height (height / width) it is; within a factor of 2 the percentage stays."""
    with pytest.raises(InputError) as wide:
        pair_from_bytes(png(np.zeros((40000, 1, 3), np.uint8)), png(np.zeros((1, 40000, 3), np.uint8)),
                        names=("tall.png", "wide.png"))
    assert "differs from tall.png 1x40000: its width / height is 1,600,000,000 times the original's (>" \
        in wide.value.message
    with pytest.raises(InputError) as tall:
        check_aspect((1, 40000), (40000, 1), 0.05)
    assert "its height / width is 1,600,000,000 times the original's" in tall.value.message
    assert "%" not in tall.value.message.split("(>")[0]
    with pytest.raises(InputError) as near:
        check_aspect((100, 100), (100, 199), 0.05)
    assert "differs from original 100x100 by 99.0% (>" in near.value.message


# ---------------------------------------------------------------- instruction
@pytest.mark.parametrize("text,code", [("", "empty_instruction"), ("   \n\t", "empty_instruction"),
                                       # zero-width space / joiner, BOM, a direction mark: str.strip() keeps them,
                                       # so they were words to annotate with, parsed into nothing
                                       ("\u200b", "empty_instruction"), (" \u200d\ufeff\u200f ", "empty_instruction"),
                                       # no letter or digit: every parser reads it as no edit (edit_type null)
                                       ("\U0001F436\U0001F431", "empty_instruction"), ("?!", "empty_instruction"),
                                       ("\u2192 \u2728", "empty_instruction"),
                                       ("x" * 1001, "instruction_too_long"), (42, "invalid_instruction")])
def test_bad_instructions(text, code):
    with pytest.raises(InputError) as info:
        check_instruction(text, 1000, "pair-7")
    assert info.value.code == code and info.value.message.startswith("pair-7: ")


def test_instruction_is_normalised_and_none_allowed():
    assert check_instruction("  remove\n the   boat ", 100) == "remove the boat"
    assert check_instruction("\u200bremove the boat", 100) == "\u200bremove the boat"   # visible words: kept
    assert check_instruction(None, 100) is None
    assert check_instruction("\U0001F436 2", 100) == "\U0001F436 2"                 # a digit is a word
    assert check_instruction("\u72ac\U0001F436", 100) == "\u72ac\U0001F436"        # so is a letter of any script


def test_empty_instruction_in_a_pair_names_the_pair(tmp_path):
    (tmp_path / "a.png").write_bytes(png(textured(8, 8)))
    with pytest.raises(InputError) as info:
        load_pair(tmp_path / "a.png", tmp_path / "a.png", "", pair_id="a")
    assert info.value.code == "empty_instruction" and info.value.message.startswith("a:")


def test_load_pair_errors_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(png(textured(8, 8)))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SigmaError) as info:
        load_pair(good, bad)
    assert str(bad) in info.value.message and info.value.code == "image_unreadable"
    with pytest.raises(SigmaError) as info:
        load_pair(good, tmp_path / "nope.png")
    assert info.value.code == "file_not_found"
    tiny_limits = IOConfig(limits=LimitsConfig(max_pixels=10))
    with pytest.raises(SigmaError) as info:
        load_pair(good, good, io_config=tiny_limits)
    assert info.value.code == "too_many_pixels" and str(good) in info.value.message


def test_pair_type_guards():
    with pytest.raises(ValueError):
        Pair(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError):
        Pair(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 3), np.float32))


# ---------------------------------------------------------------- alignment
@pytest.mark.parametrize("dx,dy", [(5, -3), (-7, 2), (0, 4)])
def test_phase_correlation_recovers_a_known_integer_shift(dx, dy):
    big = textured(160, 200, seed=3)
    orig = big[20:148, 30:158]                                   # 128 x 128 window
    edited = big[20 + dy:148 + dy, 30 + dx:158 + dx]            # edited(x, y) = original(x + dx, y + dy)
    est_dx, est_dy, response = estimate_translation(orig, edited)
    # The estimate (ex, ey) satisfies edited(x + ex, y + ey) = original(x, y), so (ex, ey) = (-dx, -dy).
    assert est_dx == pytest.approx(-dx, abs=0.25) and est_dy == pytest.approx(-dy, abs=0.25)
    assert response > 0.3


def test_align_undoes_the_shift_so_pixel_difference_vanishes():
    big = textured(160, 200, seed=4)
    orig = big[16:144, 16:144].copy()
    edited = big[16 - 3:144 - 3, 16 + 6:144 + 6].copy()        # content moved by (-6, +3)
    edited[40:60, 40:60] = 255                                   # and a real edit
    raw_diff = np.abs(orig.astype(int) - edited).mean()
    fixed, info = align(orig, edited, max_shift_px=16)
    assert info["applied"] is True
    assert info["dx"] == pytest.approx(-6, abs=0.25) and info["dy"] == pytest.approx(3, abs=0.25)
    inner = (slice(10, -10), slice(10, -10))
    diff = np.abs(orig.astype(int) - fixed)[inner].mean(axis=2)
    edit_zone = np.zeros(orig.shape[:2], bool)
    edit_zone[34:66, 34:66] = True
    assert diff[~edit_zone[inner]].mean() < 2.0 < raw_diff            # background matches again
    assert diff[edit_zone[inner]].mean() > 40                          # the edit is still there


def test_align_leaves_images_alone_when_it_should():
    img = textured(96, 96, seed=5)
    out, info = align(img, img.copy(), 16)
    assert info["applied"] is False and "below 0.25" in info["reason"]
    big = textured(200, 200, seed=6)
    far = big[40:136, 40:136], big[40:136, 70:166]               # 30 px > max_shift_px
    out, info = align(far[0], far[1], 16)
    assert info["applied"] is False and "max_shift_px" in info["reason"] and out is far[1]
    unrelated = textured(96, 96, seed=7)
    out, info = align(img, unrelated, 16)
    assert info["applied"] is False and "align_min_response" in info["reason"]


@pytest.mark.parametrize("hw", [(1, 50), (50, 1), (1, 1)])
def test_align_on_a_one_pixel_wide_or_tall_image_is_skipped_not_a_traceback(hw):
    """`io.align=true` with a 1xN or Nx1 image was a cv2.error traceback (createHanningWindow needs 2 px each
    way) in sigma annotate / eval / batch and the service's worker; the pair is left as it is and says why."""
    img = textured(*hw, seed=9)
    pair = pair_from_bytes(png(img), png(255 - img), io_config=IOConfig(align=True))
    assert pair.preprocess["alignment"]["applied"] is False and "too small" in pair.preprocess["alignment"]["reason"]
    assert np.array_equal(pair.edited, 255 - img)


def test_undo_translation_direction():
    img = np.zeros((20, 20, 3), np.uint8)
    img[5, 5] = 255
    moved = undo_translation(img, 2.0, 3.0)                     # content at (x+2, y+3) comes to (x, y)
    assert moved[2, 3, 0] == 255


def test_load_pair_with_align_reports_the_alignment(tmp_path):
    big = textured(160, 200, seed=8)
    (tmp_path / "o.png").write_bytes(png(big[16:144, 16:144]))
    (tmp_path / "e.png").write_bytes(png(big[16:144, 20:148]))
    pair = load_pair(tmp_path / "o.png", tmp_path / "e.png", io_config=IOConfig(align=True))
    assert pair.preprocess["alignment"]["applied"] is True
    assert pair.preprocess["alignment"]["dx"] == pytest.approx(-4, abs=0.25)
    assert "alignment" not in load_pair(tmp_path / "o.png", tmp_path / "e.png").preprocess


# ---------------------------------------------------------------- RLE / bbox / Annotation record
def test_rle_roundtrip_bbox_and_sa1b_fields():
    rng = np.random.default_rng(1)
    mask = rng.random((13, 21)) > 0.7
    rle = encode_rle(mask)
    assert rle["size"] == [13, 21] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    box = np.zeros((10, 12), bool)
    box[2:5, 3:9] = True
    assert mask_bbox(box) == [3, 2, 6, 3]
    assert mask_bbox(np.zeros((4, 4), bool)) == [0, 0, 0, 0]
    ann = Annotation("p", prob=box.astype(np.float32), mask=box, threshold=0.5, annotator="t", config_hash="h")
    rec = ann.to_dict()
    assert rec["area"] == 18 and rec["bbox"] == [3, 2, 6, 3] and rec["size"] == [10, 12]
    assert rec["area_fraction"] == pytest.approx(18 / 120, abs=1e-6)
    np.testing.assert_array_equal(decode_rle(rec["segmentation"]), box)


def _spec_counts(text: str) -> list[int]:
    """COCO's compressed counts, from the format (maskApi.c rleFrString), not through pycocotools: 5-bit chunks, low
    first, 0x20 = more follows, 0x10 in the last = negative; from the third count on, a delta to the one two back."""
    counts, i = [], 0
    while i < len(text):
        value, shift, more = 0, 0, True
        while more:
            chunk = ord(text[i]) - 48
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            i, shift = i + 1, shift + 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
    return counts


def _spec_decode(rle: dict) -> np.ndarray:
    """Runs alternate 0s then 1s over the pixels in column-major order; they cover the image exactly."""
    h, w = rle["size"]
    counts = _spec_counts(rle["counts"])
    assert min(counts) >= 0 and sum(counts) == h * w
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape(w, h).T


def test_rle_is_coco_rle_by_the_format_itself_on_odd_shapes():
    """`encode_rle` against a decoder written from the COCO format, not pycocotools (which it calls, so a round trip
    through `decode_rle` cannot see a transposed or C-ordered mask): 1x1, 1xN, Nx1, empty, full, one pixel in each
    corner, runs past 2**23, random masks; bbox and area from the pixels."""
    assert encode_rle(np.array([[False, True], [True, True]]))["counts"] == "13"       # column-major: 0 | 1 1 1
    rng = np.random.default_rng(5)
    masks = []
    for h, w in [(1, 1), (1, 29), (31, 1), (7, 5)]:
        masks += [np.zeros((h, w), bool), np.ones((h, w), bool)]
        for y, x in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]:
            one = np.zeros((h, w), bool)
            one[y, x] = True
            masks.append(one)
    last, first_off = np.zeros((2900, 2900), bool), np.ones((2900, 2900), bool)
    last[-1, -1], first_off[0, 0] = True, False                  # runs of 2900**2 - 1 > 2**23
    masks += [last, first_off]
    masks += [rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random() for _ in range(200)]
    for mask in masks:
        rle = encode_rle(mask)
        assert rle["size"] == list(mask.shape)
        np.testing.assert_array_equal(_spec_decode(rle), mask)
        ys, xs = np.nonzero(mask)
        expected = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1] if xs.size else [0] * 4
        assert mask_bbox(mask) == expected


def test_mask_bbox_reads_rows_and_columns_not_a_list_of_every_pixel():
    """`np.nonzero` listed every pixel of the mask (16 bytes each: 64 MB for a full 2000x2000 mask, 3 ms a pair at
    1.5 Mpx) to take four extremes; rows and columns give the same box. 0/255 and 0/1 masks as bool ones."""
    import tracemalloc

    full = np.ones((2000, 2000), bool)
    tracemalloc.start()
    box = mask_bbox(full)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert box == [0, 0, 2000, 2000] and peak < 1_000_000
    rng = np.random.default_rng(9)
    for _ in range(100):
        mask = rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 50)))) < rng.random() * 0.05
        ys, xs = np.nonzero(mask)
        expected = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1] if xs.size else [0] * 4
        assert mask_bbox(mask) == mask_bbox(mask.astype(np.uint8) * 255) == mask_bbox(mask.astype(np.uint8)) == expected


def test_a_large_size_sync_is_warned_about_on_stderr(tmp_path):
    """An edited image 8x smaller than the original used to be upscaled in silence (76 % of the image marked)."""
    import subprocess
    import sys

    from PIL import Image

    from sigma.io.pairs import resize_warning

    assert resize_warning((400, 400), (50, 50)) is not None
    assert resize_warning((400, 400), (300, 300)) is None            # 1.33x: ordinary
    assert "aspect" in resize_warning((400, 400), (380, 300))          # squashed
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "o.png")
    Image.fromarray(img[::8, ::8]).save(tmp_path / "e.png")
    proc = subprocess.run([sys.executable, "-m", "sigma", "annotate", str(tmp_path / "o.png"), str(tmp_path / "e.png"),
                           "-o", str(tmp_path / "out"), "--annotator", "pixel-diff"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert "sigma: warning:" in proc.stderr and "enlarged 8.0x" in proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["preprocess"]["warnings"]


def test_the_pair_size_error_names_a_function_that_exists():
    """Pair(a, b) of two sizes says 'use sigma.io.load_pair or sigma.io.sync_size first'; sigma.io had no
    sync_size (it lived in sigma.io.geometry only), so following the message was an AttributeError."""
    import re

    import sigma.io
    from sigma.types import Pair

    original, edited = np.zeros((20, 30, 3), np.uint8), np.full((10, 15, 3), 7, np.uint8)
    with pytest.raises(ValueError) as err:
        Pair(original, edited)
    for name in re.findall(r"sigma\.io\.(\w+)", str(err.value)):
        assert callable(getattr(sigma.io, name))
    synced, note = sigma.io.sync_size(edited, original.shape[:2])
    assert Pair(original, synced).size == (20, 30) and "resized" in note
