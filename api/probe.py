"""A cheap pre-queue check of an uploaded pair: headers, limits, aspect, instruction — no pixel decode.

The worker decodes the images anyway (`sigma.io.pair_from_bytes`); decoding them in the API too
would double the cost of every request. So the API reads only what PIL parses in `Image.open`
(format, size, EXIF orientation) plus PNG chunk CRCs (`verify`), and enforces the limits on that.
Whenever this fast path has any doubt, it runs the full `pair_from_bytes`, so a bad upload still
gets exactly the error code the library gives (the CLI's vocabulary). Damage only a full decode
finds (a JPEG cut short) fails the job in the worker with the same codes (`image_unreadable`).
"""
from __future__ import annotations

import io

from PIL import Image

from sigma.config.schema import IOConfig
from sigma.errors import InputError
from sigma.io.geometry import check_aspect
from sigma.io.images import (
    MAX_JPEG_HEADER_STEPS,
    MAX_JPEG_SCANS,
    MAX_PNG_CHUNKS,
    MAX_TIFF_STRIPS,
    SUPPORTED_FORMATS,
    jpeg_header_steps,
    jpeg_scan_count,
    png_chunk_count,
    stored_size,
    tiff_strip_count,
)
from sigma.io.pairs import check_instruction
from sigma.text import find_control

_SWAPS_AXES = (5, 6, 7, 8)     # EXIF orientations that turn the image by 90 degrees


def _header_hw(data: bytes, io_config: IOConfig) -> tuple[int, int] | None:
    """(height, width) as the decoder will see it (turned by an EXIF orientation read from the header), or None
    when only a full decode can judge."""
    limits = io_config.limits
    if not data or len(data) > limits.max_bytes:
        return None
    if (png_chunk_count(data) > MAX_PNG_CHUNKS or jpeg_header_steps(data) > MAX_JPEG_HEADER_STEPS
            or tiff_strip_count(data) > MAX_TIFF_STRIPS):
        return None             # Image.open (and verify()) would walk them all: the full path refuses it
    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as img:
            width, height = stored_size(img)      # a TIFF's too: Pillow reports it already turned upright
            if width <= 0 or height <= 0 or width * height > limits.max_pixels:
                return None
            if img.format == "PNG":
                # Pillow's getexif() on a PNG decodes the whole image to look for an eXIf chunk after
                # the pixels; only a chunk before them (already in .info) is read here. The worker's
                # decode applies either, and re-checks the aspect after turning the image upright.
                exif = Image.Exif()
                if img.info.get("exif"):
                    exif.load(img.info["exif"])
                orientation = exif.get(0x0112, 1)
            else:
                orientation = img.getexif().get(0x0112, 1)
            if img.format in ("JPEG", "MPO") and jpeg_scan_count(data) > MAX_JPEG_SCANS:
                return None     # a scan bomb: the full path refuses it (before decoding) with the library's code
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            with Image.open(io.BytesIO(data), formats=("PNG",)) as img:
                img.verify()      # every chunk's CRC and the IEND: a truncated or damaged PNG
    except Exception:  # noqa: BLE001 - any doubt goes to the full decode for the canonical error
        return None
    return (width, height) if orientation in _SWAPS_AXES else (height, width)


def refuse_control_characters(instruction: str | None) -> None:
    """A NUL, an escape or another control character that is not a space in a request's instruction is 422
    invalid_instruction, as a lone surrogate is 422 invalid_text: a client that sends one has a bug (a C string's
    terminator, a terminal's colour codes pasted in), and what it meant cannot be known. It was queued and the text
    stored in the job as sent. The library reads such text as it can (the rules parser takes a control character
    for a word break, docs/parsing-grounding.md), so a batch run of a corpus holding one goes on, as it does for
    a lone surrogate."""
    control = None if instruction is None else find_control(instruction)
    if control is not None:
        raise InputError(f"instruction: holds the control character U+{ord(control[1]):04X} at character "
                         f"{control[0] + 1}; an instruction is words (tabs and line breaks count as spaces)",
                         code="invalid_instruction")


def check_pair(original: bytes, edited: bytes, instruction: str | None, io_config: IOConfig,
               full: bool = False) -> None:
    """Raise the SigmaError `pair_from_bytes` would raise for this upload (header-level checks)."""
    from sigma.io import pair_from_bytes

    check_instruction(instruction, io_config.limits.max_instruction_chars)
    refuse_control_characters(instruction)
    head_o = None if full else _header_hw(original, io_config)
    head_e = None if full or head_o is None else _header_hw(edited, io_config)
    if head_o is None or head_e is None:
        pair_from_bytes(original, edited, instruction, io_config)
        return
    try:
        check_aspect(head_o, head_e, io_config.limits.max_aspect_change)
    except InputError:
        # The header's aspect is a guess where only a decode knows the orientation (a PNG's eXIf after its
        # pixels): the full path decides, with its message (naming differing EXIF orientations, same code). The
        # probe's own refusal stood even when that path accepted the pair, which the CLI and batch annotate.
        pair_from_bytes(original, edited, instruction, io_config)
