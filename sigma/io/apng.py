"""An APNG whose default image is not part of its animation, read as its animation's first frame.

An APNG (a PNG with an `acTL` chunk) may keep its `IDAT` image out of the animation: no `fcTL` comes before it. That
default image is a fallback for viewers that do not animate; every browser shows the animation, whose first frame
is the `fdAT` data after the first `fcTL`. Pillow reads the default image as frame 0, so the hidden fallback (a
"please upgrade your viewer" card, a poster) was what got annotated, said as "first frame used". Here such a file
is rewritten, before anything decodes it, into the still PNG of its first animation frame: the same header and
colour chunks, that frame's data as `IDAT`. Every reader of the bytes (Pillow, OpenCV's 16-bit path, the mask's
alpha) then sees that frame. A first frame that covers only part of the canvas (the rest is transparent black in a
browser) is refused as `unsupported_format`: it would have to be placed on the canvas, which nothing here does.
"""
from __future__ import annotations

import struct
import zlib

from sigma.errors import ImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ANIMATION = frozenset((b"acTL", b"fcTL", b"fdAT"))


def _chunks(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(type, payload, the chunk's bytes as stored) of each chunk of PNG `data` up to IEND or the end of the data (a
    short last chunk is cut where the data ends: its decoder says the file is truncated). Callers have already
    bounded the chunk count."""
    out, i, end = [], len(PNG_SIGNATURE), len(data)
    while i + 8 <= end:
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        out.append((kind, data[i + 8:i + 8 + length], data[i:i + 12 + length]))
        if kind == b"IEND":
            break
        i += 12 + length
    return out


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def hidden_default_first_frame(data: bytes, name: str) -> tuple[bytes, int] | None:
    """(the still PNG of the first animation frame, the animation's frame count) for an APNG whose default image is
    not part of its animation; None for any other data (a still PNG, an APNG whose IDAT is its first frame, not a
    PNG). `unsupported_format` when that first frame does not cover the whole canvas."""
    if not data.startswith(PNG_SIGNATURE) or b"acTL" not in data:
        return None
    chunks = _chunks(data)
    kinds = [kind for kind, _, _ in chunks]
    if b"acTL" not in kinds or b"IDAT" not in kinds or len(chunks[0][1]) < 8 or chunks[0][0] != b"IHDR":
        return None
    first_idat = kinds.index(b"IDAT")
    if b"acTL" not in kinds[:first_idat]:
        return None                              # an acTL after the image data: a still PNG, to browsers as to Pillow
    if b"fcTL" in kinds[:first_idat]:
        return None                              # the default image is the first frame: Pillow reads it as such
    actl = chunks[kinds.index(b"acTL")][1]
    frames = int.from_bytes(actl[:4], "big") if len(actl) >= 4 else 0
    try:
        first_fctl = kinds.index(b"fcTL", first_idat)
    except ValueError:
        return None                              # no frame after it: Pillow reads the default image alone
    fctl = chunks[first_fctl][1]
    if len(fctl) < 20:
        return None                              # Pillow says what is wrong with it
    width, height, x, y = struct.unpack(">IIII", fctl[4:20])
    if (width, height, x, y) != (*struct.unpack(">II", chunks[0][1][:8]), 0, 0):
        raise ImageError(f"{name}: an APNG whose default image is not part of its animation and whose first frame "
                         f"is {width}x{height} at ({x}, {y}), not its whole canvas: not supported (save its first "
                         "frame as a PNG)", code="unsupported_format")
    frame_data = []
    for kind, payload, stored in chunks[first_fctl + 1:]:
        if kind != b"fdAT":
            break
        if stored[-4:] != struct.pack(">I", zlib.crc32(kind + payload)):     # its CRC is written anew as IDAT's
            raise ImageError(f"{name}: unreadable or truncated image (broken data stream or CRC error in an APNG "
                             "frame's fdAT chunk)", code="image_unreadable")
        frame_data.append(payload[4:])           # after the sequence number: IDAT's payload
    if not frame_data:
        return None
    before = [stored for kind, _, stored in chunks[:first_idat] if kind not in _ANIMATION]   # CRCs as they were
    after = [stored for kind, _, stored in chunks[first_idat:]
             if kind not in _ANIMATION and kind not in (b"IDAT", b"IEND")]
    still = b"".join((PNG_SIGNATURE, *before, *(_chunk(b"IDAT", part) for part in frame_data), *after,
                      _chunk(b"IEND", b"")))
    return still, frames
