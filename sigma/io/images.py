"""Decode images safely: every format users hand us, explicit limits, one-line errors naming the file."""
from __future__ import annotations

import io
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from sigma.config.schema import LimitsConfig
from sigma.errors import ImageError, InputError, LimitError, OutOfMemoryError, opencv_memory_refused
from sigma.io.apng import hidden_default_first_frame
from sigma.io.bmp_rle import check_bmp_rle
from sigma.io.coded_size import (
    check_coded_size,
    check_jpeg_cut_short,
    check_jpeg_scans_complete,
    check_last_scan_cut,
    jpeg_frame,
    vp8_min_bytes,
)
from sigma.io.confine import refuse_opened_outside, refuse_outside, resolved_under
from sigma.io.lines import read_at_most
from sigma.io.tiff_planes import TIFF_PLANAR_CONFIGURATION, separate_planes
from sigma.regular import BrokenLink, NotRegularFile, broken_link, kind_of, open_regular
from sigma.tempfiles import replace_atomically
from sigma.text import shown_path

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
_PIL_FORMATS = SUPPORTED_FORMATS          # the only PIL plugins ever tried on untrusted bytes

# Our own pixel limit (io.limits.max_pixels, checked on the header) replaces PIL's warning; PIL's hard
# DecompressionBombError (above 2 x Image.MAX_IMAGE_PIXELS, ~179 Mpx) stays as a ceiling behind it.
# Set once at import instead of per call: `warnings.catch_warnings` is not thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Corrupt files make PIL's plugins warn ("Metadata Warning", "Truncated File Read", malformed MPO) before
# they fail or recover; the one-line error (or the recorded result) is what the user needs, not the noise.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


# A progressive JPEG is decoded one scan (SOS segment) at a time, each a pass over every block of the image: a file
# of thousands of 14-byte scans (0.8 MB, 16 Mpx: 20000 scans) takes libjpeg 19 s, one within max_bytes minutes, with
# no pixel limit broken. Real encoders write ~10 scans (libjpeg's progression) and a few dozen at most (mozjpeg);
# libjpeg-turbo advises 500 as the limit for untrusted input (TJPARAM_SCANLIMIT, djpeg -maxscans).
MAX_JPEG_SCANS = 500
_NEXT_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff\x01]")  # not stuffed 0xFF00, fill, RSTn, TEM


def jpeg_scan_count(data: bytes) -> int:
    """The number of scans (SOS segments) in JPEG `data`, an upper bound when small; no pixel is decoded.

    Counting the SOS marker's bytes bounds it from above (in entropy-coded data a 0xFF is always stuffed), so only
    a file with more than MAX_JPEG_SCANS of them is walked segment by segment, resynchronising on the next marker
    after stray bytes as libjpeg does."""
    upper = data.count(b"\xff\xda")
    if upper <= MAX_JPEG_SCANS:
        return upper
    i, scans, end = 2, 0, len(data)
    while i + 4 <= end:
        marker = data[i + 1] if data[i] == 0xFF else 0
        if marker in (0x00, 0xFF) or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            found = _NEXT_JPEG_MARKER.search(data, i + 1)      # stray bytes, fill bytes, standalone markers
            if found is None:
                break
            i = found.start()
            continue
        if marker == 0xD9:                                     # EOI
            break
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:                                     # its entropy-coded data runs to the next marker
            scans += 1
            found = _NEXT_JPEG_MARKER.search(data, i)
            if found is None:
                break
            i = found.start()
    return scans


# Pillow reads a JPEG's header (everything before the first scan) in a Python loop: one step per marker segment
# and per fill (0xFF) or junk byte. 1 million empty APP segments (4 MB) took 1.8 s to open, 4 million fill bytes
# 1.5 s: a file within max_bytes, minutes. A real header is a few dozen segments (EXIF, XMP, an ICC profile in at
# most 255 pieces, tables); 65536 steps is ~50 ms of that loop.
MAX_JPEG_HEADER_STEPS = 65_536
_NOT_FILL = re.compile(rb"[^\xff]")


def jpeg_header_steps(data: bytes, cap: int = MAX_JPEG_HEADER_STEPS) -> int:
    """Pillow's header loop steps for JPEG `data` (segments, fill and junk bytes before the first scan), counted
    no further than `cap` + 1; runs of fill or junk are measured at C speed. 0 for data that is not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return 0
    i, steps, end = 2, 0, len(data)
    while i < end and steps <= cap:
        if data[i] != 0xFF:                                    # junk before a marker: skipped byte by byte
            j = data.find(b"\xff", i)
            j = end if j < 0 else j
            steps, i = steps + j - i, j
            continue
        found = _NOT_FILL.search(data, i)                      # 0xFF fill bytes before the marker byte
        if found is None:
            break
        steps += found.start() - i
        marker, i = data[found.start()], found.start() + 1
        if marker == 0xDA or marker == 0xD9:                   # the first scan (or the end): the header is over
            break
        if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue                                           # no length follows
        i += int.from_bytes(data[i:i + 2], "big")
    return steps


def check_jpeg_scans(data: bytes, name: str) -> None:
    steps = jpeg_header_steps(data)
    if steps > MAX_JPEG_HEADER_STEPS:
        raise LimitError(f"{name}: a JPEG header of more than {MAX_JPEG_HEADER_STEPS} segments and fill or junk "
                         "bytes, each parsed one by one: refused before decoding as a decompression bomb",
                         code="decompression_bomb")
    scans = jpeg_scan_count(data)
    if scans > MAX_JPEG_SCANS:
        raise LimitError(f"{name}: a JPEG of {scans} scans (more than {MAX_JPEG_SCANS}), each a pass over the whole "
                         "image: refused before decoding as a decompression bomb", code="decompression_bomb")


# A PNG is a list of chunks that Pillow walks one Python call at a time, both in `Image.open` (everything before
# the pixels) and in `load()` (each IDAT): 4 million empty ancillary chunks (45 MB, under max_bytes) took 25 s to
# open, 3 million one-byte IDATs 3 s for 7 MB, with no pixel limit broken. Encoders write IDATs of 8 KiB
# (libpng) to 1 MiB and a handful of other chunks; 65536 chunks would be a 512 MiB file of libpng's.
MAX_PNG_CHUNKS = 65_536
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk_count(data: bytes, cap: int = MAX_PNG_CHUNKS) -> int:
    """The number of chunks in PNG `data` up to IEND or the end of the data, counting no further than `cap` + 1
    (the walk costs at most that many steps); only the 8-byte length and type of each chunk are read. 0 for data
    that is not a PNG."""
    if not data.startswith(PNG_SIGNATURE):
        return 0
    i, count, end = len(PNG_SIGNATURE), 0, len(data)
    while i + 8 <= end and count <= cap:
        length = int.from_bytes(data[i:i + 4], "big")
        count += 1
        if data[i + 4:i + 8] == b"IEND":
            break
        i += 12 + length
    return count


def check_png_chunks(data: bytes, name: str) -> None:
    if png_chunk_count(data) > MAX_PNG_CHUNKS:
        raise LimitError(f"{name}: a PNG of more than {MAX_PNG_CHUNKS} chunks, each parsed one by one: refused "
                         "before decoding as a decompression bomb", code="decompression_bomb")


# Colour profiles. Pixel values mean nothing without their colour space: the same red is (255, 0, 0) in sRGB and
# (234, 51, 35) in Display P3, so a pair whose edited image was saved by a phone or an editor in another space
# than its original differed in every pixel, and every annotator marked the whole image. An image with an embedded
# RGB or CMYK profile that is not sRGB is converted to sRGB (littleCMS, relative colorimetric, as browsers
# show it) on decode, whatever the other image carries: models are trained on sRGB, and an image without a
# profile is taken to be sRGB. An sRGB profile is kept as it is (converting it would only add rounding), and an
# unreadable profile, or one that does not fit the image (a CMYK profile on an RGB image), is ignored, as
# browsers do; `notes["icc_profile"]` says which happened.
_INTENT = ImageCms.Intent.RELATIVE_COLORIMETRIC


@lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _srgb_transform(icc: bytes, mode: str) -> tuple[ImageCms.ImageCmsTransform | None, str]:
    """(the transform from `icc` to sRGB for a `mode` image, None when `icc` is sRGB itself; its description).
    A corpus's images share a few profiles, so each transform is built once; a profile above 1 MiB (a JPEG can
    carry 16 MB in 255 pieces) is not kept as a cache key."""
    return _build_srgb_transform(icc, mode) if len(icc) > 1 << 20 else _cached_srgb_transform(icc, mode)


def _build_srgb_transform(icc: bytes, mode: str) -> tuple[ImageCms.ImageCmsTransform | None, str]:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    name = " ".join((ImageCms.getProfileDescription(profile) or "").split())[:100] or "unnamed profile"
    space = profile.profile.xcolor_space.strip()
    if space == "RGB" and "srgb" in name.lower():
        return None, name
    if (space, mode) not in (("RGB", "RGB"), ("CMYK", "CMYK")):
        raise ValueError(f"a {space} profile on a {mode} image")
    return ImageCms.buildTransform(profile, _srgb_profile(), mode, "RGB", renderingIntent=_INTENT), name


_cached_srgb_transform = lru_cache(maxsize=8)(_build_srgb_transform)


def _to_srgb(image: Image.Image, icc: bytes, notes: dict[str, Any]) -> Image.Image | None:
    """`image` (RGB or CMYK) converted to sRGB, or None to keep it: its profile is sRGB, unreadable or does not
    fit it."""
    try:
        transform, name = _srgb_transform(icc, image.mode)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        notes["icc_profile"] = f"ignored ({_one_line(exc)[:120]})"
        return None
    if transform is None:
        notes["icc_profile"] = f"sRGB ({name})"
        return None
    notes["icc_profile"] = f"converted to sRGB from {name}"
    return ImageCms.applyTransform(image, transform)


# Pillow turns every TIFF strip or tile of the first page into an entry of a Python list when it opens the file:
# an image one pixel wide with one row per strip, 1 million strips in 10 MB, took 2.2 s to open, 5 s and 350 MB
# to decode (later pages are not set up: `is_animated` only reads the next IFD's offset). Writers use strips of
# ~8 KB or tiles of 256 x 256: 65536 of them is a 512 MB image; a scanner's one-row strips fit too. An IFD of more
# than 4096 entries (tags) is refused as well: Pillow reads each in Python, three times over (the header, then the
# EXIF orientation before and after load): 15000 private tags (180 KB) took 1.7 s to decode a 16x16 picture, a
# classic TIFF's most, 65535 (790 KB), ~7 s. A real file has a few dozen tags (a DNG or a GeoTIFF ~100).
MAX_TIFF_STRIPS = 65_536
MAX_TIFF_IFD_ENTRIES = 4_096
_TIFF_HEADERS = {b"II*\x00": ("<", False), b"MM\x00*": (">", False), b"II+\x00": ("<", True), b"MM\x00+": (">", True)}


def tiff_strip_count(data: bytes) -> int:
    """The strips or tiles (StripOffsets / TileOffsets count) of the first page of TIFF `data`, or
    MAX_TIFF_STRIPS + 1 for an IFD of more than MAX_TIFF_IFD_ENTRIES entries; 0 for data that is not a TIFF or
    that ends early (Pillow says what is wrong with it)."""
    kind = _TIFF_HEADERS.get(data[:4])
    if kind is None:
        return 0
    order, big = kind
    entry, count_fmt, size_fmt = (20, "Q", "Q") if big else (12, "I", "H")
    most = 0
    try:
        ifd = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
        entries = struct.unpack_from(order + size_fmt, data, ifd)[0]
        if entries > MAX_TIFF_IFD_ENTRIES:
            return MAX_TIFF_STRIPS + 1
        first = ifd + (8 if big else 2)
        for i in range(entries):
            tag = struct.unpack_from(order + "H", data, first + i * entry)[0]
            if tag in (273, 324):                               # StripOffsets, TileOffsets
                most = max(most, struct.unpack_from(order + count_fmt, data, first + i * entry + 4)[0])
    except struct.error:
        pass
    return most


def check_tiff_strips(data: bytes, name: str) -> None:
    if tiff_strip_count(data) > MAX_TIFF_STRIPS:
        raise LimitError(f"{name}: a TIFF of more than {MAX_TIFF_STRIPS} strips or tiles in a page (or of more than "
                         f"{MAX_TIFF_IFD_ENTRIES} tags), each set up one by one: refused before decoding as a "
                         "decompression bomb", code="decompression_bomb")


def check_tiff_tile_size(img: Image.Image, name: str, limits: LimitsConfig) -> None:
    """`too_many_pixels` for a TIFF whose tiles (TileWidth x TileLength) are larger than the pixel limit: libtiff
    decodes a compressed tile whole into a buffer of its size, whatever the image's. A 64x64 picture in one deflated
    16384x16384 tile of 1 KB took 6.5 s and 860 MB before failing; with the tile's data there (~800 KB of zlib, under
    max_bytes) it decodes it all. Real tiles are 256 or 512 pixels a side; a tile may pass the image's edge, never
    the limit that an image of its size would meet."""
    tags = getattr(img, "tag_v2", {})
    width, height = tags.get(322), tags.get(323)              # TileWidth, TileLength
    if isinstance(width, int) and isinstance(height, int) and width * height > limits.max_pixels:
        raise LimitError(f"{name}: a TIFF of {width}x{height} tiles = {width * height} pixels each exceeds the limit "
                         f"of {limits.max_pixels} (io.limits.max_pixels), decoded a whole tile at a time; refused "
                         "before decoding", code="too_many_pixels")


# Pillow's PNG reader inflates a compressed metadata chunk (iCCP: the colour profile; zTXt, iTXt: text) to at most
# MAX_TEXT_CHUNK (1 MiB) each and MAX_TEXT_MEMORY (64 MiB) in all, and refuses the file past either with a ValueError.
# 1 KiB of zlib inflates to 1 MB: a PNG of sound pixels carrying a 200 KB zTXt that inflates to 200 MB was said to be
# `image_unreadable ... (Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK)`: an unreadable file, where
# it is a limit met, the same as a pixel bomb's (HTTP 413, not 422).
_PNG_METADATA_BOMB = ("Decompressed data too large", "Too much memory used in text chunks")


def check_metadata_bomb(exc: BaseException, name: str) -> None:
    """Raise `decompression_bomb` when `exc` is Pillow refusing a PNG's compressed metadata for its inflated size."""
    if isinstance(exc, ValueError) and str(exc).startswith(_PNG_METADATA_BOMB):
        raise LimitError(f"{name}: a PNG metadata chunk (colour profile or text) that inflates past Pillow's limit "
                         f"({_one_line(exc)}): refused as a decompression bomb", code="decompression_bomb") from exc


def check_byte_size(name: str, size: int, max_bytes: int) -> None:
    """file_too_large above `max_bytes`: the one check of bytes in hand, a file's size and a header-only probe."""
    if size > max_bytes:
        raise LimitError(f"{name}: {size} bytes exceeds the limit of {max_bytes} bytes (io.limits.max_bytes)",
                         code="file_too_large")


def check_header_size(name: str, width: int, height: int, limits: LimitsConfig) -> None:
    """image_empty / too_many_pixels from the header's size, before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: zero-size image ({width}x{height})", code="image_empty")
    if width * height > limits.max_pixels:
        raise LimitError(f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
                         f"{limits.max_pixels} (io.limits.max_pixels); refused before decoding",
                         code="too_many_pixels")


@dataclass
class DecodedImage:
    rgb: np.ndarray                       # uint8 [H, W, 3]
    notes: dict[str, Any] = field(default_factory=dict)


def _to_uint8_rgb(img: Image.Image, notes: dict[str, Any]) -> np.ndarray:
    """Bring any PIL mode to 8-bit RGB; alpha is composited on white and that fact recorded."""
    mode = img.mode
    notes["mode"] = mode
    if mode == "P":
        # a palette's tRNS is alpha and composited; a colour key (tRNS on an RGB or gray PNG: one value transparent
        # wherever it is) is ignored, in 8 bits as in 16 (`_raw_16bit_colour`'s caller): photos carry one by
        # accident (12 PNGs of the eval set key pure black), and an edit saved without it would differ at every
        # black pixel
        if "transparency" in img.info:      # each band converted to RGBA: no whole-image RGBA copy (4 bytes a pixel)
            return _composited_on_white(img, notes)
        img = img.convert("RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(img)        # integers: to float64 a band at a time below (whole, 8 bytes a sample, 4 times)
        if mode == "I":
            # 32-bit integer samples: the white point is guessed from the values, by the float TIFFs' robust rule
            # (`_white_point`). It was the image's own maximum: one sample above 255 that an edit brought in read
            # the whole edited image on the 65535 scale, near black, and every pixel of the pair differed.
            # No headroom for integers: 8-bit data has no sample above 255 at all, while 10- or 12-bit data (a dark
            # 16-bit scan) does, over far more than 0.1 % of the image: read at 255 it was clipped to white, its
            # detail gone; at 65535 it is only dark
            peak = _white_point(arr, INT_WHITE_POINTS, headroom=1.0, percentile=99.9)
            notes["white_point"] = int(peak)
            clipped = int(np.count_nonzero((arr > peak) | (arr < 0)))
            if clipped:
                notes["clipped_samples"] = clipped
        else:
            peak = 65535.0
        if peak > 255:
            notes["bit_depth"] = 16
        gray, rows = np.empty(arr.shape, np.uint8), _band_rows(arr.shape[1])
        for top in range(0, arr.shape[0], rows):
            gray[top:top + rows] = np.clip(np.round(arr[top:top + rows] / peak * 255.0), 0, 255)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        return np.repeat(_float_to_uint8(np.asarray(img), notes)[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composited_on_white(img, notes)
    if mode == "RGB":
        return np.array(img)     # one writable copy (convert + asarray + copy made three: 48 MB each at 16 Mpx)
    return np.asarray(img.convert("RGB")).copy()


ALPHA_BAND_PIXELS = 1 << 18     # pixels of an image with alpha converted and composited at a time (whole rows)


def _band_rows(width: int) -> int:
    """Rows of a band of about ALPHA_BAND_PIXELS: a fixed 256 rows made an image 1 pixel wide and 4 million tall
    15625 bands of Python calls (4 s to decode, 11 s as a mask, where one band takes 0.1 s)."""
    return max(1, ALPHA_BAND_PIXELS // max(1, width))


def _composited_on_white(img: Image.Image, notes: dict[str, Any]) -> np.ndarray:
    """An image with alpha (RGBA, LA, PA, RGBa, La) as 8-bit RGB, composited on white where any pixel is not opaque
    (`notes["alpha"]`), a band of `_band_rows` at a time into the one output array: the same per-pixel conversion and
    `Image.alpha_composite` as on the whole image (compositing an opaque pixel leaves it as it is). The whole image
    went through RGBA, a white RGBA image, their composite, RGB and two array copies at once: a 40 Mpx RGBA PNG
    (160 MB once decoded) peaked at ~990 MB over the process's start, where its RGB result is 120 MB."""
    width, height = img.size
    out, rows = np.empty((height, width, 3), np.uint8), _band_rows(width)
    for top in range(0, height, rows):
        band = img.crop((0, top, width, min(height, top + rows))).convert("RGBA")
        if band.getextrema()[3][0] < 255:
            notes["alpha"] = "composited on white"
            band = Image.alpha_composite(Image.new("RGBA", band.size, (255, 255, 255, 255)), band)
        out[top:top + rows] = np.asarray(band.convert("RGB"))
    return out


FLOAT_WHITE_POINTS = (1.0, 255.0, 65535.0)
INT_WHITE_POINTS = (255.0, 65535.0)
FLOAT_HEADROOM = 4.0


def _white_point(values: np.ndarray, whites: tuple[float, ...], headroom: float = FLOAT_HEADROOM,
                 percentile: float = 99.0) -> float:
    """The first of `whites` that the `percentile` of the finite `values` stays within `headroom` times of, else the
    last: a percentile, not the maximum, so that a few bright pixels of an edit do not change the scale of one image
    of a pair (float and 32-bit integer TIFFs alike)."""
    finite = np.isfinite(values)
    finite = values if finite.all() else values[finite]
    typical = float(np.percentile(finite, percentile)) if finite.size else 0.0
    return next((w for w in whites if typical <= w * headroom), whites[-1])


def _float_to_uint8(arr: np.ndarray, notes: dict[str, Any]) -> np.ndarray:
    """Floating-point samples (a float TIFF) on a fixed scale. Each image used to be stretched from its own minimum
    to its own maximum: an edit that brought in one pixel brighter or darker than any of the original's rescaled
    every other one, and the pair differed everywhere. Now 1.0 is white (the convention of float images; HDR
    highlights above it are clipped), unless the values are integer data saved as floats: the white point is the
    first of 1, 255, 65535 that the 99th percentile stays within FLOAT_HEADROOM times of (a percentile, so that a
    few bright pixels of an edit do not change the scale). NaN reads as 0, infinities and values past the white
    point are clipped; `notes` say the white point and what was clipped, and `pair_from_decoded` warns when the
    two images of a pair were read on different scales."""
    values = arr.astype(np.float64)
    white = _white_point(values, FLOAT_WHITE_POINTS)
    finite = np.isfinite(values)
    if not finite.all():
        notes["non_finite_samples"] = int(values.size - np.count_nonzero(finite))
        values = np.where(np.isnan(values), 0.0, values)      # infinities are clipped below
    notes["white_point"] = int(white) if white > 1 else 1.0
    clipped = int(np.count_nonzero((values > white) | (values < 0)))
    if clipped:
        notes["clipped_samples"] = clipped
    return np.clip(np.round(values / white * 255.0), 0, 255).astype(np.uint8)


# formats whose 16-bit colour samples are read whole (`_read_16bit_colour`), so that every 16-bit file is scaled to
# 8 bits by one rule, round(v / 65535 * 255), as 16-bit gray already was. A 16-bit RGB TIFF went through Pillow,
# which keeps the high byte (v >> 8): the same picture as a TIFF and as a PNG differed by one level
RAW_16BIT_FORMATS = ("PNG", "TIFF")


def _read_16bit_colour(data: bytes) -> np.ndarray | None:
    """A 16-bit colour PNG's or TIFF's samples as stored (never turned by an EXIF orientation), uint16 [H, W, 3 or 4]
    in RGB(A) order (PIL drops them to 8 bits on its own, by truncation; OpenCV keeps every bit). None when OpenCV
    does not read it as that."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a core dependency
        return None
    _opencv_warnings_off(cv2)
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:     # memory refused is the machine's (out_of_memory); anything else: Pillow's 8 bits
        if opencv_memory_refused(exc):
            raise MemoryError(_one_line(exc)) from exc
        return None
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    return arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., ::-1]


@lru_cache(maxsize=1)
def _opencv_warnings_off(cv2: Any) -> None:
    """OpenCV's log to errors only, unless the user set `OPENCV_LOG_LEVEL`: its libtiff printed each warning about a
    file into the command's output, `[ WARN:0@0.9] global grfmt_tiff.cpp:123 TIFF_Warning TIFFReadDirectory: Unknown
    field with tag 65000 (0xfde8) encountered` twice above `sigma annotate`'s line for a 16-bit TIFF with a private
    tag (an editor's), and into the API's and workers' logs, unasked. What is wrong with a file is said by its error."""
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _raw_16bit_colour(data: bytes, img: Image.Image, fmt: str, orientation: int,
                      pending: int, name: str = "image") -> tuple[np.ndarray, int] | None:
    """(a 16-bit colour PNG's or TIFF's samples, uint16 [H, W, 3 or 4], the EXIF turn still to apply to them), or
    None: OpenCV does not read the file as that (the caller keeps Pillow's 8 bits). `img` is the file opened and
    loaded by Pillow, `pending` the turn Pillow's load() left to do.

    A TIFF with an Orientation tag: OpenCV 5.1 turns a TIFF by its tag whatever its flags say (a PNG never), other
    versions may not; so which of its samples as given or turned by the tag is the picture is decided against
    Pillow's own 8 bits of the same file (the high byte, v >> 8), upright. Such a TIFF was left to Pillow, and its
    samples floored where every other 16-bit file is rounded: the same picture, tagged, read one level darker."""
    if fmt == "TIFF" and getattr(img, "tag_v2", {}).get(TIFF_PLANAR_CONFIGURATION) == 2:
        planes = separate_planes(data, img, name)     # OpenCV's samples are not the picture
        if planes is None:
            return None     # compressed and tiled: Pillow's 8 bits
        return planes, (orientation if orientation in _ORIENTATION_TRANSPOSE else 1)
    raw = _read_16bit_colour(data)
    if raw is None:
        return None
    if fmt != "TIFF" or orientation not in _ORIENTATION_TRANSPOSE:
        return raw, (orientation if orientation in _ORIENTATION_TRANSPOSE else 1)
    shown = turn_array(np.asarray(img), pending)
    for candidate in (raw, turn_array(raw, orientation)):
        if candidate.shape == shown.shape and np.array_equal(candidate >> 8, shown):
            return candidate, 1
    return None


def turn_array(arr: np.ndarray, orientation: int) -> np.ndarray:
    """`arr` [H, W, ...] of any dtype turned upright by EXIF `orientation` (as `ImageOps.exif_transpose`; values
    other than 2..8 leave it as it is). Numpy, so 16-bit colour samples, which PIL cannot hold, are turned too."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return np.rot90(arr, 2).swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


COMPOSITE_ROWS = 256      # rows of a 16-bit RGBA image composited at a time, in float64


def _16bit_colour_to_rgb(arr: np.ndarray) -> np.ndarray:
    """16-bit RGB(A) samples to 8 bits, round(v / 65535 * 255) (alpha composited on white).

    In integers, (v + 128) // 257, which is that rounding exactly (v / 257 is never a half), and in float64 only a
    band of COMPOSITE_ROWS rows at a time for alpha. The whole image went through float64 at once, four arrays of
    8 bytes a sample alive together: a 9-megapixel 16-bit pair, 27 MB an image once decoded, was refused
    `out_of_memory` by `sigma annotate` under `prlimit --as` 900 MB, where the same pair in 8 bits is annotated at
    800 MB (as it now is), and a 2000x2000 PNG's decode peaked at 300 MB of heap (now 80)."""
    if arr.shape[2] == 3:
        wide = arr.astype(np.uint32)
        wide += 128
        wide //= 257
        return wide.astype(np.uint8)
    out = np.empty(arr.shape[:2] + (3,), np.uint8)
    for top in range(0, arr.shape[0], COMPOSITE_ROWS):
        band = arr[top:top + COMPOSITE_ROWS]
        rgb = band[..., :3].astype(np.float64) / 65535.0
        alpha = band[..., 3:4].astype(np.float64) / 65535.0
        out[top:top + COMPOSITE_ROWS] = np.clip(np.round((rgb * alpha + (1.0 - alpha)) * 255.0), 0, 255)
    return out


# EXIF orientation tag value -> the PIL transpose that shows the picture upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

def stored_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as its file stores the pixels, before its EXIF orientation turns them.
    Pillow (11.1 on) reports a TIFF's size already turned upright by its Orientation tag (and turns its pixels in
    `load()`); every other format, and a TIFF in older Pillow, reports the stored size. The header checks (the API's
    probe) turn it upright once, by the tag, whatever Pillow did."""
    if img.format == "TIFF":
        tags = getattr(img, "tag_v2", {})
        width, height = tags.get(256), tags.get(257)        # ImageWidth, ImageLength
        if isinstance(width, int) and isinstance(height, int):
            return width, height
    return img.size


# Magic bytes of formats people try that we refuse, so the error can say what the file is.
_KNOWN_MAGIC = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"%PDF", "PDF"), (b"%!PS", "PostScript"),
                (b"8BPS", "PSD"), (b"\x00\x00\x01\x00", "ICO"), (b"\xff\x0a", "JPEG XL"),
                (b"\x00\x00\x00\x0cJXL ", "JPEG XL"), (b"<svg", "SVG"), (b"<?xml", "XML/SVG"),
                (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
                (b"qoif", "QOI"), (b"DDS ", "DDS"), (b"icns", "ICNS"), (b"v/1\x01", "OpenEXR"),
                (b"#?RADIANCE", "Radiance HDR"), (b"#?RGBE", "Radiance HDR"), (b"SIMPLE  =", "FITS"))


def _sniff_format(data: bytes) -> str | None:
    """The name of a format people try that is not read here, from its magic bytes (a TGA's from its footer); they
    were `image_unreadable` (`not an image`), as if the file were damaged."""
    for magic, fmt in _KNOWN_MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:1] == b"P" and data[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6", b"7") and data[2:3] in (b" \t\r\n"):
        return "Netpbm (PPM/PGM/PBM)"
    if data[-18:] == b"TRUEVISION-XFILE.\x00":
        return "TGA"
    if len(data) > 128 and data[0] == 0x0A and data[1] in (0, 2, 3, 4, 5) and data[2] == 1 and data[3] in (1, 2, 4, 8):
        return "PCX"
    if data[4:8] == b"ftyp":
        brand = data[8:12].decode("ascii", "replace").strip()
        return "AVIF" if brand.startswith("avi") else "HEIF" if brand.startswith(("hei", "mif", "hev")) else None
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _bit_depth(img: Image.Image, data: bytes, fmt: str) -> int:
    if fmt == "PNG":
        return 16 if _png_is_16bit(data) else 8
    if fmt == "TIFF":
        bits = getattr(img, "tag_v2", {}).get(258)
        bits = bits if isinstance(bits, tuple) else (bits,)
        return 16 if any(b == 16 for b in bits if isinstance(b, int)) else 8
    return 16 if img.mode.startswith("I;16") else 8


def decode_image(data: bytes, name: str = "<bytes>", limits: LimitsConfig | None = None) -> DecodedImage:
    """Decode encoded bytes, enforcing `limits` before any pixel is allocated.

    The order matters: size in bytes, then the header's width x height (PIL parses only the header in
    `Image.open`), and only then `load()`. A 30000x30000 PNG of a few hundred bytes is refused without a
    pixel buffer ever being made. Only the five supported formats are even tried, so no exotic decoder
    ever parses untrusted bytes.
    """
    limits = limits or LimitsConfig()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"{name}: expected encoded image bytes, got {type(data).__name__}",
                         code="image_unreadable")
    data = bytes(data)
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)", code="image_empty")
    check_byte_size(name, len(data), limits.max_bytes)
    check_png_chunks(data, name)
    first_frame = hidden_default_first_frame(data, name)     # an APNG's default image outside its animation
    if first_frame is not None:
        data = first_frame[0]
    check_tiff_strips(data, name)
    check_bmp_rle(data, name)
    if data.startswith(b"\xff\xd8"):
        check_jpeg_scans(data, name)         # before Image.open, which walks the header
    try:
        img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
        fmt = "JPEG" if img.format == "MPO" else img.format   # camera JPEGs with a preview open as MPO
        width, height = stored_size(img)
        check_header_size(name, width, height, limits)
        if fmt == "TIFF":
            check_tiff_tile_size(img, name, limits)
        if fmt not in SUPPORTED_FORMATS:  # pragma: no cover - formats= already restricts the plugins
            raise ImageError(f"{name}: format {fmt} is not supported (use one of "
                             f"{', '.join(SUPPORTED_FORMATS)})", code="unsupported_format")
        check_coded_size(data, fmt, name)      # a header patched larger than its data: before the decoder allocates
        if fmt == "JPEG":
            check_jpeg_scans_complete(data, name)     # scans end before the picture is whole, then an end marker
        notes: dict[str, Any] = {"format": fmt, "decoded_size": [height, width]}
        orientation = img.getexif().get(0x0112, 1)
        if getattr(img, "is_animated", False):   # APNG, animated WebP, multi-page TIFF: frame 1 is decoded
            notes["multi_frame"] = "first frame used"   # (is_animated, not n_frames: that walks every frame)
        if first_frame is not None:
            notes["apng_default_image"] = "not part of the animation: ignored (the first animation frame used)"
            if first_frame[1] > 1:
                notes["multi_frame"] = "first frame used"
        img.load()
        if fmt == "JPEG":
            check_jpeg_cut_short(data, img, name)      # closed again with an end marker: the rest decoded flat grey
            check_last_scan_cut(data, img, name)       # cut inside its last of several scans: that scan left out
        # Pillow (11.1 on) turns a TIFF upright in load() and drops its Orientation tag; every other format, and
        # a TIFF in older Pillow, still carries the tag and is ours to turn (turning it again showed a TIFF upside
        # down or lying on its side: a mask 90 degrees off the picture the user sees)
        pending = img.getexif().get(0x0112, 1) if orientation in _ORIENTATION_TRANSPOSE else 1
        icc = img.info.get("icc_profile")
        icc = bytes(icc) if isinstance(icc, (bytes, bytearray)) and icc else None
        if icc is not None and img.mode == "CMYK":     # through its profile, not PIL's naive CMYK formula
            converted = _to_srgb(img, icc, notes)
            img = img if converted is None else converted
            icc = None
        elif icc is not None and img.mode == "LAB":    # CIE Lab is absolute: Pillow reads it to sRGB by definition
            notes["icc_profile"] = "not needed (CIE Lab samples, read to sRGB by their definition)"
            icc = None
        depth = _bit_depth(img, data, fmt)
        rgb = None
        raw = None
        if fmt in RAW_16BIT_FORMATS and img.mode in ("RGB", "RGBA") and depth == 16:
            raw = _raw_16bit_colour(data, img, fmt, orientation, pending, name)
        if raw is not None:
            samples = raw[0] if img.mode == "RGBA" else raw[0][..., :3]    # a tRNS colour key is not alpha
            rgb, pending = _16bit_colour_to_rgb(samples), raw[1]
            del raw, samples
            if img.mode == "RGBA":
                notes["alpha"] = "composited on white"
        if rgb is None:
            rgb = _to_uint8_rgb(img, notes)
        else:
            notes["mode"] = img.mode
        if depth == 16:
            notes["bit_depth"] = 16
        if icc is not None:          # on the 8-bit RGB (the 16-bit path and alpha on white included)
            converted = _to_srgb(Image.fromarray(rgb), icc, notes)
            rgb = rgb if converted is None else np.array(converted)
        if pending in _ORIENTATION_TRANSPOSE:
            # Applied to the decoded array so the 16-bit path is turned upright too.
            rgb = np.asarray(Image.fromarray(rgb).transpose(_ORIENTATION_TRANSPOSE[pending]))
        if orientation in _ORIENTATION_TRANSPOSE:
            notes["exif_orientation"] = int(orientation)
    except (LimitError, ImageError):
        raise
    except Image.DecompressionBombError as exc:
        raise LimitError(f"{name}: refused before decoding as a decompression bomb ({_one_line(exc)})",
                         code="decompression_bomb") from exc
    except UnidentifiedImageError as exc:
        empty = _zero_size_header(data)
        if empty:
            raise ImageError(f"{name}: zero-size image ({empty} header says width or height 0)",
                             code="image_empty") from exc
        known = _sniff_format(data)
        if known:
            raise ImageError(f"{name}: {known} is not supported (use one of {', '.join(SUPPORTED_FORMATS)})",
                             code="unsupported_format") from exc
        raise ImageError(f"{name}: not an image, or not one of {', '.join(SUPPORTED_FORMATS)}",
                         code="image_unreadable") from exc
    except MemoryError as exc:       # the machine's shortage, not the image's fault: `out_of_memory`, never unreadable
        raise OutOfMemoryError.decoding(name, exc) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as exc:
        check_metadata_bomb(exc, name)
        empty = _zero_size_header(data)     # a lossy WebP so: Pillow's "could not create decoder object"
        if empty:
            raise ImageError(f"{name}: zero-size image ({empty} header says width or height 0)",
                             code="image_empty") from exc
        raise ImageError(f"{name}: unreadable or truncated image ({_one_line(exc)})",
                         code="image_unreadable") from exc
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"{name}: zero-size image", code="image_empty")
    return DecodedImage(np.ascontiguousarray(rgb), notes)


def _zero_size_header(data: bytes) -> str | None:
    """The format whose header in `data` says width or height 0 (Pillow does not open it), else None. A BMP, JPEG
    or TIFF so was `image_unreadable`, "not an image", where a PNG was already `image_empty`; a lossy WebP, "unreadable
    or truncated image (could not create decoder object)"."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and (
            data[16:20] == b"\0\0\0\0" or data[20:24] == b"\0\0\0\0"):
        return "PNG"
    if data[:2] == b"BM" and len(data) >= 26:
        header = int.from_bytes(data[14:18], "little")
        sizes = (data[18:20], data[20:22]) if header == 12 else (data[18:22], data[22:26])
        return "BMP" if any(not any(size) for size in sizes) else None
    lossy = vp8_min_bytes(data)
    if lossy is not None:
        return "WEBP" if lossy[0] == 0 or lossy[1] == 0 else None
    frame = jpeg_frame(data) if data[:2] == b"\xff\xd8" else None
    if frame is not None and len(frame[1]) >= 5:
        return "JPEG" if frame[1][1:3] == b"\0\0" or frame[1][3:5] == b"\0\0" else None
    kind = _TIFF_HEADERS.get(data[:4])
    if kind is None or kind[1]:
        return None
    try:
        order = kind[0]
        ifd = struct.unpack_from(order + "I", data, 4)[0]
        for i in range(min(struct.unpack_from(order + "H", data, ifd)[0], MAX_TIFF_IFD_ENTRIES)):
            tag, kind_, count = struct.unpack_from(order + "HHI", data, ifd + 2 + 12 * i)
            if tag in (256, 257) and count == 1:
                value = struct.unpack_from(order + ("H" if kind_ == 3 else "I"), data, ifd + 10 + 12 * i)[0]
                if value == 0:
                    return "TIFF"
    except struct.error:
        pass
    return None


def _png_is_16bit(data: bytes) -> bool:
    # IHDR: 8-byte signature, 4 length, 4 type, 4 width, 4 height, then bit depth.
    return len(data) > 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 16


def not_an_image_file(where: str, kind: str) -> ImageError:
    """The error of an image path that names `kind` (a FIFO, a folder, /dev/zero's character device), not a file:
    `not_a_regular_file`, saying what is there. It was `file_not_found`, which sent people looking for a missing
    file; that code stays for a path where nothing is (or a link to nothing)."""
    return ImageError(f"{where}: not a regular file ({kind}); an image must be a file", code="not_a_regular_file")


def _slash_hint(path: Path, root: str | None) -> str:
    """A hint for a missing file whose path holds a backslash when the same path with `/` is there: a manifest written
    on Windows (`sub\\a.png`) names, here, one file called `sub\\a.png`; its file_not_found said nothing of why.
    Inside `root` only (a confined run must not learn what exists outside it)."""
    text = str(path)
    if "\\" not in text:
        return ""
    slashed = text.replace("\\", "/")
    if (root is not None and resolved_under(slashed, root) is None) or not os.path.isfile(slashed):
        return ""
    return (f" (its path holds a backslash, which is part of a name here, not a separator: {shown_path(slashed)} "
            "is there; write the path with /)")


def read_file_bytes(path: str | Path, max_bytes: int, root: str | None = None) -> bytes:
    """A regular file's bytes, at most `max_bytes` (else file_too_large), with one-line errors: file_not_found,
    not_a_regular_file (a FIFO, a folder, a device), file_unreadable (permissions, a name too long for the file
    system), invalid_path (a NUL byte). `root` (resolved): the file must lie inside it, checked before the file is
    looked at and again on what was opened (`refuse_opened_outside`), else `path_outside_root`: the set a record
    came from (eval, training) or a batch's root, whose paths were checked when the manifest was read."""
    where = shown_path(path)
    if "\x00" in str(path):
        raise InputError(f"{where}: a path with a NUL byte; refused", code="invalid_path")
    if root is not None:
        refuse_outside(str(path), root, where)
    path = Path(path)
    try:
        if not path.exists():
            gone = broken_link(path)      # a link to nothing is said as one, with where it points
            why = shown_path(gone.strerror) if gone else f"file not found{_slash_hint(path, root)}"
            raise ImageError(f"{where}: {why}", code="file_not_found")
        if not path.is_file():
            raise not_an_image_file(where, kind_of(path))
        check_byte_size(where, path.stat().st_size, max_bytes)
        # open_regular: a FIFO swapped in after is_file() is refused, not waited on for ever
        with open_regular(path, "rb") as handle:   # at most one byte past the limit (it may grow, /proc says 0)
            if root is not None:
                refuse_opened_outside(handle.fileno(), str(path), root, where)
            data = read_at_most(handle, max_bytes + 1)
    except NotRegularFile as exc:
        raise not_an_image_file(where, exc.kind) from None
    except OSError as exc:
        raise ImageError(f"{where}: cannot read ({exc.strerror or _one_line(exc)})", code="file_unreadable") from exc
    if len(data) > max_bytes:
        raise LimitError(f"{where}: more than the limit of {max_bytes} bytes (io.limits.max_bytes)",
                         code="file_too_large")
    return data


def probe_image_file(path: str | Path, limits: LimitsConfig | None = None) -> tuple[int, int]:
    """(height, width) of an image file from its header alone, with the limits `read_image` enforces that a header
    shows: the byte size, a supported format, the pixel count. For scanning a folder of thousands of photos
    (training's photo bank) without decoding them; the full checks run when one is read."""
    limits = limits or LimitsConfig()
    where = shown_path(path)
    try:
        # open_regular and the size of what was opened: Pillow opening the path blocked for ever on a FIFO (given,
        # or put there after the caller's is_file()), and /dev/zero was read as an image's header
        with open_regular(path, "rb") as handle:
            check_byte_size(where, os.fstat(handle.fileno()).st_size, limits.max_bytes)
            with Image.open(handle, formats=_PIL_FORMATS) as img:
                width, height = img.size
                if img.format == "TIFF":
                    check_tiff_tile_size(img, where, limits)
    except (LimitError, ImageError):
        raise
    except NotRegularFile as exc:
        raise not_an_image_file(where, exc.kind) from None
    except BrokenLink as exc:    # "unreadable image ([Errno 2] No such file ...)" of a name `ls` lists
        raise ImageError(f"{where}: {shown_path(exc.strerror)}", code="file_not_found") from None
    except UnidentifiedImageError as exc:
        raise ImageError(f"{where}: not an image, or not one of {', '.join(SUPPORTED_FORMATS)}",
                         code="image_unreadable") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        check_metadata_bomb(exc, where)
        raise ImageError(f"{where}: unreadable image ({_one_line(exc)})", code="image_unreadable") from exc
    check_header_size(where, width, height, limits)
    return height, width


def read_image(path: str | Path, limits: LimitsConfig | None = None, root: str | None = None) -> DecodedImage:
    """`path` decoded; `root`: the resolved folder it must lie in (`read_file_bytes`)."""
    limits = limits or LimitsConfig()
    return decode_image(read_file_bytes(path, limits.max_bytes, root), shown_path(path), limits)


def binarize_mask(rgb: np.ndarray) -> np.ndarray:
    """The one ground-truth binarisation: mean RGB > 127.5 (the IMDL-BenCo convention), except for a 0/1 label
    map — every value 0 or 1 and some 1 — whose 1s are the mask. Many datasets store masks that way, and at
    127.5 every such mask read as empty: its pairs were silently scored as not manipulated."""
    values = rgb.astype(np.float32)
    if values.max(initial=0.0) == 1.0 and bool(np.isin(values, (0.0, 1.0)).all()):
        return values.mean(axis=2) > 0.5
    return values.mean(axis=2) > 127.5


def read_mask(path: str | Path, limits: LimitsConfig | None = None, root: str | None = None) -> np.ndarray:
    """Ground-truth masks from a file: its bytes, read once, through `decode_mask`; `root` as `read_file_bytes`."""
    limits = limits or LimitsConfig()
    return decode_mask(read_file_bytes(path, limits.max_bytes, root), shown_path(path), limits)


def decode_mask(data: bytes, name: str = "<bytes>", limits: LimitsConfig | None = None) -> np.ndarray:
    """Ground-truth masks, binarised by `binarize_mask` (a 16-bit mask on its own samples: `_decode_16bit_mask`): the
    one reader of a mask's bytes, so `sigma eval` (a file) and a batch run's ground truth (a corpus's bytes) read a mask
    alike. The batch path binarised `decode_image`'s RGB, composited on white: a transparent mask was marked
    everywhere it was transparent, and its scores differed from eval's for the same pair.

    A mask with transparency is composited on black, not white: in a mask, "transparent" means
    "nothing here", and on white every transparent pixel would count as manipulated.

    The native values or the alpha come from the same bytes as the decoded image. Pillow opened the path a second
    time, so a file replaced between the two reads (by another mask, a FIFO: waited on for ever, or a file over the
    limits: never checked) was what the mask was made of.
    """
    limits = limits or LimitsConfig()
    decoded = decode_image(data, name, limits)
    if "apng_default_image" in decoded.notes:      # the bytes read again below are those of the frame decoded
        data = hidden_default_first_frame(data, name)[0]  # type: ignore[index]
    if decoded.notes.get("bit_depth") == 16:
        mask = _decode_16bit_mask(data, decoded)
        if mask is not None:
            return mask
    rgb = decoded.rgb
    if "alpha" in decoded.notes:
        with Image.open(io.BytesIO(data)) as img:
            upright = ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) in _ORIENTATION_TRANSPOSE else img
            if upright.size == (rgb.shape[1], rgb.shape[0]):
                return _binarize_on_black(upright)
    return binarize_mask(rgb)


def _binarize_on_black(img: Image.Image) -> np.ndarray:
    """`binarize_mask` of `img` (with alpha) composited on black, a band of `_band_rows` at a time: the same float32
    values band by band, the 0/1 label-map rule decided on the whole. The whole mask went through float32 at once (RGBA,
    its product, binarize_mask's copy): a 40 Mpx RGBA mask peaked at ~2 GB over the process's start, 18 s."""
    width, height = img.size
    marked, label_marked = np.empty((height, width), bool), np.empty((height, width), bool)
    peak, only_01, rows = 0.0, True, _band_rows(width)
    for top in range(0, height, rows):
        rgba = np.asarray(img.crop((0, top, width, min(height, top + rows))).convert("RGBA"), dtype=np.float32)
        values = rgba[..., :3] * (rgba[..., 3:4] / 255.0)
        peak = max(peak, float(values.max(initial=0.0)))
        only_01 = only_01 and bool(np.isin(values, (0.0, 1.0)).all())
        mean = values.mean(axis=2)
        marked[top:top + rows] = mean > 127.5
        label_marked[top:top + rows] = mean > 0.5
    return label_marked if peak == 1.0 and only_01 else marked


def _decode_16bit_mask(data: bytes, decoded: DecodedImage) -> np.ndarray | None:
    """A 16-bit mask on its own samples: the 0/1 label-map rule on them (a 16-bit gray map's 1s scale to 0 in 8 bits
    and the mask read as empty), else mean > 127.5 on them scaled as images are, round(v / 65535 * 255), alpha
    composited on black at full precision. None: not a 16-bit gray or colour file read here (the 8-bit path).

    Two readings this replaces: the 0/1 rule was also tried on the 8-bit values, so a 16-bit mask of 0 and 300
    (0.5 % grey: 1 in 8 bits) read as marked, where 128 or 400 read as empty; and a 16-bit RGBA mask was composited
    from Pillow's 8-bit samples, which truncate (v >> 8), so a pixel of grey 40000 at alpha 53574 (127.2 of 255)
    read as marked (156 x 209 / 255 = 127.9)."""
    mode = str(decoded.notes.get("mode", ""))
    with Image.open(io.BytesIO(data)) as img:          # turned upright as decode_image turns the picture
        orientation = img.getexif().get(0x0112, 1)
        img.load()
        pending = img.getexif().get(0x0112, 1) if orientation in _ORIENTATION_TRANSPOSE else 1
        if mode.startswith("I"):
            samples, alpha = np.asarray(img)[..., None], False
        elif mode in ("RGB", "RGBA") and decoded.notes.get("format") in RAW_16BIT_FORMATS:
            found = _raw_16bit_colour(data, img, str(decoded.notes["format"]), orientation, pending)
            if found is None:
                return None
            samples, pending = found
            alpha = samples.shape[2] == 4 and mode == "RGBA"     # alpha; a tRNS colour key is not (decode_image)
        else:
            return None
    mask = _binarize_16bit(samples, alpha)
    del samples
    if pending in _ORIENTATION_TRANSPOSE:
        mask = np.asarray(Image.fromarray(mask).transpose(_ORIENTATION_TRANSPOSE[pending]))
    return mask if mask.shape == decoded.rgb.shape[:2] else None


def _binarize_16bit(samples: np.ndarray, alpha: bool) -> np.ndarray:
    """`_decode_16bit_mask`'s rule on `samples` [H, W, 1, 3 or 4] (`alpha`: the 4th is alpha, composited on black), a
    band of `_band_rows` at a time in float64, the 0/1 label-map rule decided on the whole. The whole mask went through
    float64 at once (the samples, their product, the rounding, the clip: 8 bytes a sample each): a 20 Mpx 16-bit RGBA
    mask peaked at 1.7 GB over the process's start, a 40 Mpx 16-bit grey one at 1 GB."""
    height, width = samples.shape[:2]
    marked, label_marked = np.empty((height, width), bool), np.empty((height, width), bool)
    peak, only_01, rows = 0.0, True, _band_rows(width)
    for top in range(0, height, rows):
        band = samples[top:top + rows]
        values = band[..., :3].astype(np.float64)
        if alpha:
            values *= band[..., 3:4] / 65535.0
        peak = max(peak, float(values.max(initial=0.0)))
        only_01 = only_01 and bool(np.isin(values, (0.0, 1.0)).all())
        label_marked[top:top + rows] = values.mean(axis=2) > 0.5
        marked[top:top + rows] = np.clip(np.round(values / 65535.0 * 255.0), 0, 255).mean(axis=2) > 127.5
    return label_marked if peak == 1.0 and only_01 else marked


def encode_png(array: np.ndarray) -> bytes:
    """uint8 gray [H, W] or RGB [H, W, 3] → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_png(array: np.ndarray, path: str | Path, durable: bool = False) -> Path:
    """Atomic PNG write: a killed process never leaves a half-written mask behind. `durable`: its bytes fsynced
    before the rename (`replace_atomically`), for a PNG that a later record vouches for (a batch shard's status, an
    export's journal) — the caller syncs the folder before writing that record."""
    return replace_atomically(Path(path), encode_png(array), durable=durable)
