"""The least coded data a JPEG's or lossy WebP's header size needs, checked before a pixel is decoded.

libjpeg fills the part of a picture its data does not reach with flat blocks and only warns (Pillow drops the warning):
an 8x8 JPEG whose frame header was patched to 6300x6300 (726 bytes, under the pixel limit) decoded as a 40 Mpx grey
picture that was annotated as one. libwebp decodes the same patched WebP (174 bytes) to its full 40 Mpx (~750 MB at
its peak) before it finds the data short. Both coders spend a least number of bits on every block whatever the
picture: Huffman-coded JPEG at least one per 8x8 block (the DC difference's code, in baseline and in progressive's
first scan alike; a flat 6300x6300 picture at quality 1, optimized, takes two: 233 KB), lossy WebP (VP8) at least
one per 16x16 macroblock (its key-frame modes are coded with fixed probabilities, ~1.6 bits at best: a flat
6300x6300 picture at quality 0 takes 71 KB). A file shorter than that cannot hold the picture its header claims.
Arithmetic-coded JPEG and lossless WebP (VP8L) have no such floor (one symbol can cost next to nothing: a flat
6000x6000 lossless WebP is 1.4 KB) and are not checked. libwebp refuses a VP8L whose data is short before it returns
a picture. libjpeg's arithmetic decoder reads zeros past the end of its data, as its encoder expects (it drops the
final zero bytes of what it writes), so a 197-byte arithmetic JPEG whose header says 6000x6000 is a real file of a
36 Mpx picture, as a PNG of zeros is: the pixel limit bounds it, and nothing else can tell it from one.

A JPEG cut short and closed again with an end marker (EOI), whose length still passes, is found after decoding
(`check_jpeg_cut_short`): libjpeg fills every block its data does not reach with zero coefficients, flat grey 128,
and only warns, which Pillow drops; half a photo decoded so was annotated as half changed.
"""
from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator

import numpy as np
from PIL import Image

from sigma.errors import ImageError

MIN_JPEG_BITS_PER_BLOCK = 1
MIN_VP8_BITS_PER_MACROBLOCK = 1
_HUFFMAN_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7))
_ARITHMETIC_SOF = frozenset((0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
MAX_WEBP_CHUNKS = 64          # a still WebP has at most VP8X, ICCP, ALPH, VP8, EXIF, XMP (and unknown chunks)


def jpeg_min_bytes(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, the least bytes of coded data) of a Huffman-coded JPEG, from its frame header (SOFn) alone;
    None for data that is not such a JPEG or whose frame header is not found before the first scan.
    Callers have already bounded the header walk (`images.check_jpeg_scans`)."""
    found = jpeg_frame(data)
    return _frame_min_bytes(found[1]) if found is not None and found[0] in _HUFFMAN_SOF else None


def jpeg_frame(data: bytes) -> tuple[int, bytes] | None:
    """(the SOFn marker, its segment's bytes) of JPEG `data`; None when not found before the first scan."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, end = 2, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None                     # junk where a marker belongs: Pillow says what is wrong
        marker = data[i + 1]
        if marker == 0xFF:                  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _HUFFMAN_SOF or marker in _ARITHMETIC_SOF:
            return marker, data[i + 4:i + 2 + length]
        i += 2 + length
    return None


def _frame_min_bytes(frame: bytes) -> tuple[int, int, int] | None:
    if len(frame) < 6:
        return None
    height, width, count = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5]
    sampling = [(b >> 4, b & 15) for b in frame[7:6 + 3 * count:3]]
    if not sampling or len(sampling) != count or width == 0 or height == 0:
        return None
    h_max, v_max = max(h for h, _ in sampling) or 1, max(v for _, v in sampling) or 1
    blocks = sum(_ceil(_ceil(width * h, h_max), 8) * _ceil(_ceil(height * v, v_max), 8) for h, v in sampling)
    return width, height, _ceil(blocks * MIN_JPEG_BITS_PER_BLOCK, 8)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def vp8_min_bytes(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, the least bytes of its lossy (VP8) frame, the bytes of that frame the file holds) of a still
    lossy WebP; None for an animated or lossless one, or data that is not a WebP."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    i = 12
    for _ in range(MAX_WEBP_CHUNKS):
        if i + 8 > len(data):
            return None
        fourcc, size = data[i:i + 4], int.from_bytes(data[i + 4:i + 8], "little")
        if fourcc in (b"ANIM", b"ANMF", b"VP8L"):
            return None
        if fourcc == b"VP8 ":
            frame = data[i + 8:i + 8 + size]
            if len(frame) < 10 or frame[3:6] != b"\x9d\x01\x2a":
                return None
            width = int.from_bytes(frame[6:8], "little") & 0x3FFF
            height = int.from_bytes(frame[8:10], "little") & 0x3FFF
            macroblocks = _ceil(width, 16) * _ceil(height, 16)
            return width, height, _ceil(macroblocks * MIN_VP8_BITS_PER_MACROBLOCK, 8), len(frame)
        i += 8 + size + (size & 1)
    return None


def check_coded_size(data: bytes, fmt: str, name: str) -> None:
    """`image_unreadable` (truncated) for a JPEG or lossy WebP whose data is shorter than the least its header's
    width x height needs: refused before the decoder allocates or fills a picture it cannot have."""
    if fmt == "JPEG":
        found = jpeg_min_bytes(data)
        if found is None or len(data) >= found[2]:
            return
        (width, height, need), have = found, len(data)
    elif fmt == "WEBP":
        lossy = vp8_min_bytes(data)
        if lossy is None or lossy[3] >= lossy[2]:
            return
        width, height, need, have = lossy
    else:
        return
    raise ImageError(f"{name}: truncated or damaged {fmt}: a {width}x{height} picture needs at least {need} bytes "
                     f"of coded data and the file has {have}; refused before decoding", code="image_unreadable")


# A JPEG cut short and closed again with EOI. Every block past the cut decodes to 128 flat (Y = Cb = Cr = 128 is
# grey 128 in RGB; 127 in an Adobe CMYK file, stored inverted), the last one, bottom right, included: that corner
# flat at 128 is the sign to look further, which few real pictures show. Then the question is whether the coded data
# ends before the picture does: bytes put in just before the end marker are skipped by libjpeg after a complete
# picture, and decoded as the missing blocks of a cut one, which then differ (a file of restart intervals cut at the end
# of one resumes at the next restart marker: they are put in, RST0 to RST7, and libjpeg resyncs to the one it
# expects, as it skips them after a complete picture). Both are decoded at 1/8 scale (libjpeg's
# DCT scaling: the coded data is read whole, and the blocks' DC is what differs), only when the corner is grey.
_CUT_CORNER = 4
_CUT_GREYS = (127, 128)
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff\x01]")    # not stuffed 0xFF00, fill, RSTn, TEM


def _fill(seed: int) -> bytes:
    """512 bytes of mixed bits, never 0xFF (a marker): zero bits decode to a DC difference of 0, flat grey again."""
    return bytes((i * 73 + seed * 151 + 41) % 255 for i in range(512))


# with each restart marker between: a file of restart intervals cut at one's end goes on only at the next RSTn
_FILLER = b"".join(_fill(n) + bytes((0xFF, 0xD0 + n)) for n in range(8)) + _fill(8)


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(offset, marker, length) of each marker segment of the first picture in JPEG `data`, skipping each scan's coded
    data, up to and with its end marker (EOI, length 0); it stops early, without the EOI, where the data ends. One walk
    for `jpeg_end_marker` and `jpeg_scans`, which must agree on where a picture ends."""
    i, end = 2, len(data)
    while i + 2 <= end:
        if data[i] != 0xFF or data[i + 1] in (0x00, 0xFF, 0x01) or 0xD0 <= data[i + 1] <= 0xD7:
            found = _NEXT_MARKER.search(data, i + 1)
            if found is None:
                return
            i = found.start()
            continue
        marker = data[i + 1]
        if marker == 0xD9:
            yield i, marker, 0
            return
        if i + 4 > end:
            return
        length = int.from_bytes(data[i + 2:i + 4], "big")
        yield i, marker, length
        i += 2 + length
        if marker == 0xDA:
            found = _NEXT_MARKER.search(data, i)
            if found is None:
                return
            i = found.start()


def jpeg_end_marker(data: bytes) -> int | None:
    """The offset of the end marker (EOI) of the first picture in JPEG `data` (a camera's MPO holds more after it),
    walking its segments and skipping each scan's coded data; None when there is none."""
    return next((i for i, marker, _ in _jpeg_segments(data) if marker == 0xD9), None)


def _corner_is_grey(img: Image.Image) -> bool:
    width, height = img.size
    corner = np.asarray(img.crop((max(0, width - _CUT_CORNER), max(0, height - _CUT_CORNER), width, height)))
    return corner.size > 0 and int(corner.min()) == int(corner.max()) and int(corner.min()) in _CUT_GREYS


def _draft_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data), formats=["JPEG", "MPO"]) as img:
        width, height = img.size
        img.draft(img.mode, (-(-width // 8), -(-height // 8)))
        img.load()
        return np.asarray(img)


def check_jpeg_cut_short(data: bytes, img: Image.Image, name: str) -> None:
    """`image_unreadable` (truncated) for a JPEG whose coded data ends before its picture does, closed again with an
    end marker: `img` is it decoded by Pillow (libjpeg filled the rest flat grey without a word)."""
    if not _corner_is_grey(img):
        return
    frame = jpeg_frame(data)
    if frame is None or frame[0] not in _HUFFMAN_SOF:
        return       # arithmetic-coded: a complete file may end early, on the zeros its decoder reads past its data
    eoi = jpeg_end_marker(data)
    if eoi is None:
        return
    try:
        as_given, filled = _draft_pixels(data), _draft_pixels(data[:eoi] + _FILLER + data[eoi:])
    except (OSError, ValueError, SyntaxError):
        return       # it decoded once as given; a second reading that fails tells nothing
    if as_given.shape == filled.shape and np.array_equal(as_given, filled):
        return
    raise ImageError(f"{name}: truncated JPEG: its coded data ends before the picture does (cut short and closed "
                     "again with an end marker; the decoder fills the rest flat grey); refused",
                     code="image_unreadable")


# A JPEG of several scans (progressive; or sequential with a scan per component, as jpegtran and mozjpeg can write)
# cut inside its last scan and closed again with an end marker: every scan header is there, so `jpeg_scans_missing`
# finds nothing to miss, and the blocks past the cut keep that scan's part uncoded (libjpeg reads zeros where the data
# ends, and only warns): a photo cut at 90 % of its last refinement scan decoded with 10 % of its pixels off by a level
# or more, one cut in its Cr scan with the colours of the rest shifted; no corner grey, annotated as whole. The same
# data with bytes put in before the end marker decodes differently when the scan was cut (they are decoded as its
# missing blocks) and alike when it was whole (libjpeg skips them after the last block), as in
# `check_jpeg_cut_short`, at full scale: a refinement scan's AC bits are left out of a scaled decode. One more decode
# of each such JPEG; a single-scan one (most sequential files) is `check_jpeg_cut_short`'s, whose corner goes grey.
_LAST_SCAN_SOF = frozenset((0xC0, 0xC1, 0xC2))         # Huffman-coded, sequential or progressive (not lossless)
COMPARE_ROWS = 256


def check_last_scan_cut(data: bytes, img: Image.Image, name: str) -> None:
    """`image_unreadable` (truncated) for a Huffman JPEG of more than one scan whose last scan's coded data ends
    before the picture does, closed again with an end marker: `img` is it decoded by Pillow. Compared COMPARE_ROWS
    rows at a time, so no whole-image copy is made beside the second decode."""
    frame = jpeg_frame(data)
    if frame is None or frame[0] not in _LAST_SCAN_SOF:
        return       # arithmetic-coded: may end early on the zeros its decoder reads past its data
    scans = jpeg_scans(data)
    eoi = jpeg_end_marker(data)
    if scans is None or len(scans) < 2 or eoi is None:
        return
    try:
        with Image.open(io.BytesIO(data[:eoi] + _FILLER + data[eoi:]), formats=["JPEG", "MPO"]) as filled:
            filled.load()
            if filled.size != img.size or filled.mode != img.mode:
                return
            width, height = img.size
            whole = all(img.crop((0, top, width, min(height, top + COMPARE_ROWS))).tobytes()
                        == filled.crop((0, top, width, min(height, top + COMPARE_ROWS))).tobytes()
                        for top in range(0, height, COMPARE_ROWS))
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError):
        return       # it decoded once as given; a second reading that fails (an MPO's index, shifted) tells nothing
    if not whole:
        raise ImageError(f"{name}: truncated JPEG: its last scan's coded data ends before the picture does (cut "
                         "short and closed again with an end marker; the decoder leaves the rest of that scan out); "
                         "refused", code="image_unreadable")


# A JPEG whose scans stop before its picture is complete, closed with an end marker. A progressive file is sent in
# scans that each code some coefficients (Ss..Se) of some components to some precision (Al): libjpeg decodes the ones
# present and leaves the rest zero, without a word. Cut after its first (DC) scan and closed again, a photo decoded as
# its 8x8-block blur, one colour a block, and was annotated as a whole picture (the edit of a sharp original read as
# changed everywhere); cut in a later scan, it decoded without its chroma detail or its last bits. Every encoder sends
# every coefficient of every component down to Al = 0, and a sequential file every component in some scan: libjpeg's
# own encoder refuses a scan script that does not (`validate_script`, JERR_MISSING_DATA "Scan script does not transmit
# all data"), mozjpeg's and jpegtran's with it; a file whose scans, up to its end marker, do not is refused.
_PROGRESSIVE_SOF = frozenset((0xC2, 0xCA))
_SEQUENTIAL_SOF = frozenset((0xC0, 0xC1, 0xC3, 0xC9, 0xCB))     # baseline, extended, lossless (each coding)


def jpeg_scans(data: bytes) -> list[tuple[tuple[int, ...], int, int, int]] | None:
    """(component ids, Ss, Se, Al) of each scan (SOS header) of the first picture of JPEG `data` up to its end marker
    (EOI); None when there is no end marker (a file cut without one is refused by its decoder) or a scan header is
    short. Callers have already bounded the number of scans (`images.check_jpeg_scans`)."""
    scans: list[tuple[tuple[int, ...], int, int, int]] = []
    for i, marker, length in _jpeg_segments(data):
        if marker == 0xD9:
            return scans
        if marker == 0xDA:
            header = data[i + 4:i + 2 + length]
            count = header[0] if header else 0
            if length < 6 + 2 * count or len(header) < 4 + 2 * count:
                return None
            ss, se, al = header[1 + 2 * count], header[2 + 2 * count], header[3 + 2 * count] & 15
            scans.append((tuple(header[1:1 + 2 * count:2]), ss, se, al))
    return None


def jpeg_scans_missing(data: bytes) -> str | None:
    """What the scans of JPEG `data` leave uncoded (a component never sent, coefficients never sent or not to their
    last bit), or None: they code the whole picture, or the file is not one this can tell (no end marker, hierarchical
    coding, a frame or scan header it cannot read: its decoder says what is wrong)."""
    frame = jpeg_frame(data)
    if frame is None or (frame[0] not in _PROGRESSIVE_SOF and frame[0] not in _SEQUENTIAL_SOF) or len(frame[1]) < 6:
        return None
    components = tuple(frame[1][6:6 + 3 * frame[1][5]:3])
    scans = jpeg_scans(data)
    if scans is None or not components:
        return None
    if frame[0] in _SEQUENTIAL_SOF:
        sent = {c for ids, *_ in scans for c in ids}
        lost = [c for c in components if c not in sent]
        return f"component {lost[0]} is in no scan" if lost else None
    precision = {c: [16] * 64 for c in components}             # the least Al each coefficient was coded to (16: never)
    for ids, ss, se, al in scans:
        for c in ids:
            coded = precision.get(c)
            if coded is not None:
                for k in range(ss, min(se, 63) + 1):
                    coded[k] = min(coded[k], al)
    for c in components:
        never = [k for k, al in enumerate(precision[c]) if al == 16]
        if never:
            return f"component {c}'s coefficients {never[0]}-{never[-1]} are in no scan" if len(never) > 1 \
                else f"component {c}'s coefficient {never[0]} is in no scan"
        short = [k for k, al in enumerate(precision[c]) if al > 0]
        if short:
            return f"component {c}'s coefficients are not coded to their last bit"
    return None


def check_jpeg_scans_complete(data: bytes, name: str) -> None:
    """`image_unreadable` (truncated) for a JPEG whose scans, up to its end marker, leave part of the picture uncoded
    (`jpeg_scans_missing`): checked on the header walk alone, before decoding."""
    missing = jpeg_scans_missing(data)
    if missing is not None:
        raise ImageError(f"{name}: truncated JPEG: its scans end before the picture is complete ({missing}: cut short "
                         "and closed again with an end marker; the decoder leaves the rest blurred or grey); refused",
                         code="image_unreadable")
