"""Build a `Pair` from files or bytes: decode, check, size-sync, optionally align."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sigma.config.schema import IOConfig
from sigma.errors import InputError
from sigma.io.geometry import align, check_aspect, relative_turn, sync_size
from sigma.io.images import DecodedImage, decode_image, read_image
from sigma.text import has_words, is_blank
from sigma.types import Pair


def check_instruction(instruction: str | None, max_chars: int, name: str = "pair") -> str | None:
    """None means "no instruction" (annotators must cope); an empty string is a mistake, not a None.

    `name` (the pair id or the edited file) starts the message, so a batch error says which pair it was.
    """
    if instruction is None:
        return None
    if not isinstance(instruction, str):
        raise InputError(f"{name}: instruction must be text, got {type(instruction).__name__}",
                         code="invalid_instruction")
    if is_blank(instruction):
        raise InputError(f"{name}: instruction is empty (nothing visible); leave it out to annotate without one",
                         code="empty_instruction")
    if not has_words(instruction):
        raise InputError(f"{name}: instruction has no words (no letter or digit in any script), which every parser "
                         "reads as no edit; write the edit in words, or leave it out to annotate without one",
                         code="empty_instruction")
    if len(instruction) > max_chars:
        raise InputError(f"{name}: instruction has {len(instruction)} characters, more than "
                         f"io.limits.max_instruction_chars={max_chars}", code="instruction_too_long")
    return " ".join(instruction.split())


MAX_SILENT_SCALE = 2.0          # a size sync beyond this factor (either way) is worth a warning
MAX_SILENT_ASPECT_CHANGE = 0.01


def resize_warning(size_hw: tuple[int, int], edited_hw: tuple[int, int]) -> str | None:
    """A size sync that scales by more than 2x, or bends the aspect ratio, can make every pixel differ: the
    mask then says more about the resampling than about the edit. Say so (front ends print it)."""
    h, w = size_hw
    eh, ew = edited_hw
    scale = ((h * w) / max(1, eh * ew)) ** 0.5
    aspect = abs((w / h) / (ew / eh) - 1.0)
    parts = []
    if scale > MAX_SILENT_SCALE or scale < 1 / MAX_SILENT_SCALE:
        parts.append(f"the edited image ({ew}x{eh}) was {'enlarged' if scale > 1 else 'shrunk'} "
                     f"{max(scale, 1 / scale):.1f}x to the original's {w}x{h}")
    if aspect > MAX_SILENT_ASPECT_CHANGE:
        parts.append(f"its aspect ratio changed by {aspect:.1%}")
    if not parts:
        return None
    return "; ".join(parts) + ": resampling alone may mark much of the image (check the pair)"


_TURNS = {1: "none", 2: "mirrored", 3: "180 degrees", 4: "flipped", 5: "transposed", 6: "90 degrees clockwise",
          7: "transversed", 8: "90 degrees counter-clockwise"}


def _orientations(original: DecodedImage, edited: DecodedImage, names: tuple[str, str]) -> str | None:
    """"different EXIF orientations (A: how, B: how)" when the two images' tags differ, else None."""
    o, e = (image.notes.get("exif_orientation", 1) for image in (original, edited))
    if o == e:
        return None
    return f"different EXIF orientations ({names[0]}: {_TURNS.get(o, o)}, {names[1]}: {_TURNS.get(e, e)})"


def orientation_mismatch(original: DecodedImage, edited: DecodedImage, names: tuple[str, str]) -> str | None:
    """Why the aspect ratios may differ when the two images carry different EXIF orientations, else None. Each
    image is turned upright by its own tag; when an editor dropped the tag without turning the pixels (or turned
    them and kept it), the edited image is compared turned and the aspect ratios differ."""
    tags = _orientations(original, edited, names)
    if tags is None:
        return None
    return (f"the two images carry {tags}; each was turned upright by its own, so if one looks turned, its editor "
            "dropped the tag without turning the pixels (or turned them and kept it): re-save it upright without "
            "the tag")


def orientation_check(original: DecodedImage, edited: DecodedImage,
                      names: tuple[str, str]) -> tuple[str | None, str | None]:
    """(a warning, a note) for a pair whose EXIF orientations differ; (None, None) when they are the same.

    Differing tags are the normal case of an edit: a phone photo is stored sideways with a tag, and every editor
    exports the upright picture without one. Each image is turned upright by its own tag, so those two agree and
    only a note is kept (a warning on every such pair taught users to ignore warnings). The warning is for an
    edited image that, as shown, looks turned or mirrored against the original (`relative_turn`): its editor
    dropped the tag without turning the pixels, or turned them and kept it, and every pixel differs."""
    tags = _orientations(original, edited, names)
    if tags is None:
        return None, None
    turn = relative_turn(original.rgb, edited.rgb)
    if turn is None:
        return None, f"{tags}; each turned upright by its own tag, neither looks turned or mirrored against the other"
    return (f"the two images carry {tags} and, as shown (each turned upright by its own tag), {names[1]} looks "
            f"{turn} against {names[0]}: its editor dropped the tag without turning the pixels (or turned them and "
            "kept it); re-save it upright without the tag"), None


def scale_mismatch(original: DecodedImage, edited: DecodedImage, names: tuple[str, str]) -> str | None:
    """What to tell the user when two float (or 32-bit integer) images were read with different white points
    (`sigma.io.images._float_to_uint8`), else None: one is then brighter or darker than the other everywhere."""
    o, e = (image.notes.get("white_point") for image in (original, edited))
    if o is None or e is None or o == e:
        return None
    return (f"the two images' samples were read on different scales ({names[0]}: white at {o:g}, {names[1]}: white "
            f"at {e:g}), so one is brighter than the other everywhere: save both as 8- or 16-bit images")


def pair_from_decoded(original: DecodedImage, edited: DecodedImage, instruction: str | None,
                      io_config: IOConfig, pair_id: str = "pair",
                      names: tuple[str, str] = ("original", "edited")) -> Pair:
    instruction = check_instruction(instruction, io_config.limits.max_instruction_chars, pair_id)
    size_hw = original.rgb.shape[:2]
    turned = orientation_mismatch(original, edited, names)
    try:
        check_aspect(size_hw, edited.rgb.shape[:2], io_config.limits.max_aspect_change, names)
    except InputError as exc:
        if turned is None:
            raise
        raise InputError(f"{exc.message}. {turned}", code=exc.code) from exc
    edited_rgb, resize_note = sync_size(edited.rgb, size_hw)
    preprocess: dict = {"original": original.notes, "edited": edited.notes}
    warnings = [f"{name} is animated or multi-page: only its first frame was annotated"
                for name, image in zip(names, (original, edited), strict=True) if image.notes.get("multi_frame")]
    turned_warning, orientation_note = orientation_check(original, edited, names)
    if turned_warning is not None:
        warnings.append(turned_warning)
    if orientation_note is not None:
        preprocess["orientation"] = orientation_note
    scale = scale_mismatch(original, edited, names)
    if scale is not None:
        warnings.append(scale)
    if resize_note:
        preprocess["resize"] = resize_note
        warning = resize_warning(size_hw, edited.rgb.shape[:2])
        if warning:
            warnings.append(warning)
    if warnings:
        preprocess["warnings"] = warnings
    if io_config.align:
        edited_rgb, info = align(original.rgb, edited_rgb, io_config.max_shift_px,
                                 io_config.align_min_response)
        preprocess["alignment"] = info
    return Pair(original=original.rgb, edited=np.ascontiguousarray(edited_rgb), instruction=instruction,
                pair_id=pair_id, preprocess=preprocess)


def load_pair(original: str | Path, edited: str | Path, instruction: str | None = None,
              io_config: IOConfig | None = None, pair_id: str | None = None, root: str | None = None) -> Pair:
    """A pair from two files; `root`: the resolved folder both must lie in (a set's, `EvalRecord.root`)."""
    io_config = io_config or IOConfig()
    decoded_o = read_image(original, io_config.limits, root)
    decoded_e = read_image(edited, io_config.limits, root)
    return pair_from_decoded(decoded_o, decoded_e, instruction, io_config,
                             pair_id or Path(original).stem, (str(original), str(edited)))


def pair_from_bytes(original: bytes, edited: bytes, instruction: str | None = None,
                    io_config: IOConfig | None = None, pair_id: str = "pair",
                    names: tuple[str, str] = ("original", "edited")) -> Pair:
    """Same checks as `load_pair`, for bytes from HTTP uploads or corpora; `names` label the errors."""
    io_config = io_config or IOConfig()
    decoded_o = decode_image(original, names[0], io_config.limits)
    decoded_e = decode_image(edited, names[1], io_config.limits)
    return pair_from_decoded(decoded_o, decoded_e, instruction, io_config, pair_id, names)
