"""Bring the edited image onto the original's pixel grid before anything compares them."""
from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np

from sigma.errors import InputError, opencv_memory_refused


def check_aspect(original_hw: tuple[int, int], edited_hw: tuple[int, int], max_change: float,
                 names: tuple[str, str] = ("original", "edited")) -> float:
    """Relative aspect-ratio change; a change beyond `max_change` is a different picture, not a resize."""
    (ho, wo), (he, we) = original_hw, edited_hw
    # |ar_e - ar_o| / ar_o = |we*ho - he*wo| / (he*wo), compared exactly: in floats 105x100 against 100x100
    # changed by 0.05000000000000004 and was refused at max_aspect_change=0.05 ("by 5.0% (> 5.0%)")
    exact = Fraction(abs(we * ho - he * wo), he * wo)
    change = float(exact)
    if math.isfinite(max_change) and exact > Fraction(max_change):
        raise InputError(
            f"{names[1]}: aspect ratio {edited_hw[1]}x{edited_hw[0]} differs from {names[0]} "
            f"{original_hw[1]}x{original_hw[0]}{_how_far(Fraction(we * ho, he * wo), change)} (> "
            f"io.limits.max_aspect_change {max_change:.1%}); crop or pad it to the original's framing",
            code="aspect_mismatch")
    return change


def _how_far(ratio: Fraction, change: float) -> str:
    """The change of aspect (`ratio`: the edited image's width / height over the original's) for people: a percentage
    while it is within a factor of 2 either way, else how many times the original's width / height (or height /
    width) it is. The percentage of an extreme pair said nothing one could use, and said it lopsidedly: 40000x1
    against 1x40000 was "by 160000000000.0%", the other way round "by 100.0%"."""
    if Fraction(1, 2) <= ratio <= 2:
        return f" by {change:.1%}"
    factor = float(max(ratio, 1 / ratio))
    times = f"{factor:,.0f}" if factor >= 100 else f"{factor:.3g}"
    return f": its {'width / height' if ratio > 1 else 'height / width'} is {times} times the original's"


def sync_size(edited: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """Resize `edited` to `size_hw`: cubic when enlarging, area when shrinking (as PIXAR does)."""
    h, w = size_hw
    eh, ew = edited.shape[:2]
    if (eh, ew) == (h, w):
        return edited, None
    enlarging = h * w > eh * ew
    interp = cv2.INTER_CUBIC if enlarging else cv2.INTER_AREA
    try:
        out = cv2.resize(edited, (w, h), interpolation=interp)
    except cv2.error as exc:     # the machine's shortage: a MemoryError, said `out_of_memory` as any other
        if opencv_memory_refused(exc):
            raise MemoryError(" ".join(str(exc).split())) from exc
        raise
    return out, f"edited resized {ew}x{eh} -> {w}x{h} ({'cubic' if enlarging else 'area'})"


def estimate_translation(original: np.ndarray, edited: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, response) such that edited(x + dx, y + dy) ≈ original(x, y), by phase correlation."""
    a = cv2.cvtColor(original, cv2.COLOR_RGB2GRAY).astype(np.float64)
    b = cv2.cvtColor(edited, cv2.COLOR_RGB2GRAY).astype(np.float64)
    window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_64F)
    (dx, dy), response = cv2.phaseCorrelate(a, b, window)
    return float(dx), float(dy), float(response)


def undo_translation(edited: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Shift `edited` back by (dx, dy); borders are replicated so they do not light up as change."""
    matrix = np.float32([[1, 0, -dx], [0, 1, -dy]])
    return cv2.warpAffine(edited, matrix, (edited.shape[1], edited.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def align(original: np.ndarray, edited: np.ndarray, max_shift_px: int,
          min_response: float = 0.1) -> tuple[np.ndarray, dict]:
    """Undo a small global translation of `edited`, or leave it alone and say why.

    A weak correlation peak (`response` < `min_response`) means the two pictures do not share enough
    content for the estimate to mean anything (unrelated images score ~0.03, a shifted copy ~0.9,
    a shifted copy with a large local edit ~0.5): warping on it would manufacture change.
    """
    h, w = original.shape[:2]
    if min(h, w) < 2:      # OpenCV's window needs 2 px each way: a 1xN image was a cv2.error traceback
        return edited, {"applied": False, "reason": f"a {w}x{h} image is too small to estimate a shift"}
    dx, dy, response = estimate_translation(original, edited)
    info = {"dx": round(dx, 3), "dy": round(dy, 3), "response": round(response, 4)}
    if response < min_response:
        info["applied"] = False
        info["reason"] = f"correlation peak {response:.3f} below io.align_min_response={min_response}"
        return edited, info
    if max(abs(dx), abs(dy)) < 0.25:
        info["applied"] = False
        info["reason"] = "shift below 0.25 px"
        return edited, info
    if max(abs(dx), abs(dy)) > max_shift_px:
        info["applied"] = False
        info["reason"] = f"shift beyond io.max_shift_px={max_shift_px}; not treated as misalignment"
        return edited, info
    info["applied"] = True
    return undo_translation(edited, dx, dy), info


# How one picture can lie against another when an EXIF orientation was mishandled: the seven turns and mirrors of
# the dihedral group, as they act on the original (the edited image looks like the original `name`).
_TURNS_AND_MIRRORS = {
    "turned 90 degrees counter-clockwise": lambda a: np.rot90(a, 1),
    "turned 180 degrees": lambda a: np.rot90(a, 2),
    "turned 90 degrees clockwise": lambda a: np.rot90(a, 3),
    "mirrored left to right": lambda a: a[:, ::-1],
    "flipped upside down": lambda a: a[::-1],
    "transposed": lambda a: np.swapaxes(a, 0, 1),
    "transversed": lambda a: np.swapaxes(np.rot90(a, 2), 0, 1),
}
TURN_THUMB_PX = 32
TURN_EVIDENCE = 0.5        # a turn must halve the difference of the images as they are
TURN_MIN_DIFFERENCE = 0.05  # below this (in standard deviations) the images match as they are


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A TURN_THUMB_PX square thumbnail, each channel to zero mean and unit spread: a colour or brightness drift
    between the two images (an editor's re-encode) changes no comparison."""
    small = cv2.resize(rgb, (TURN_THUMB_PX, TURN_THUMB_PX), interpolation=cv2.INTER_AREA).astype(np.float32)
    return (small - small.mean(axis=(0, 1))) / (small.std(axis=(0, 1)) + 1.0)


def relative_turn(original: np.ndarray, edited: np.ndarray) -> str | None:
    """How `edited` lies against `original` as both are shown, when it is clearly turned or mirrored: the turn
    whose thumbnail difference is under TURN_EVIDENCE times that of the images as they are. None when they match as
    they are, or when no turn matches clearly better (a flat or symmetric picture, a heavy edit, unrelated images:
    no evidence, no word). Cheap (two 32x32 thumbnails); for pairs whose EXIF orientations differ, where an editor
    that dropped the tag without turning the pixels leaves the edited image turned, while one that wrote the
    upright picture untagged (every editor's export of a phone photo) leaves the two in agreement."""
    a, b = _thumbnail(original), _thumbnail(edited)
    straight = float(np.abs(a - b).mean())
    if straight < TURN_MIN_DIFFERENCE:
        return None
    name, best = min(((name, float(np.abs(turn(a) - b).mean())) for name, turn in _TURNS_AND_MIRRORS.items()),
                     key=lambda item: item[1])
    return name if best < TURN_EVIDENCE * straight else None
