"""Decode images safely: every format users hand us, explicit limits, one-line errors naming the file."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sigma.config.schema import LimitsConfig
from sigma.errors import ImageError, LimitError

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")


@dataclass
class DecodedImage:
    rgb: np.ndarray                       # uint8 [H, W, 3]
    notes: dict[str, Any] = field(default_factory=dict)


def _to_uint8_rgb(img: Image.Image, notes: dict[str, Any]) -> np.ndarray:
    """Bring any PIL mode to 8-bit RGB; alpha is composited on white and that fact recorded."""
    mode = img.mode
    notes["mode"] = mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        notes["bit_depth"] = 16
        gray = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        gray = np.clip((arr - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            notes["alpha"] = "composited on white"
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgba = Image.alpha_composite(white, rgba)
        return np.asarray(rgba.convert("RGB")).copy()
    if mode in ("RGB;16", "BGR;16") or getattr(img, "bits", 8) == 16:
        notes["bit_depth"] = 16
    return np.asarray(img.convert("RGB")).copy()


def _read_16bit_png_rgb(data: bytes) -> np.ndarray | None:
    """PIL drops 16-bit RGB to 8 bits on its own; OpenCV keeps the extra bits, so round properly."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a core dependency
        return None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        return None
    if arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float64) / 65535.0
        rgb = arr[..., 2::-1].astype(np.float64) / 65535.0
        rgb = rgb * alpha + (1.0 - alpha)
    else:
        rgb = arr[..., 2::-1].astype(np.float64) / 65535.0
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def decode_image(data: bytes, name: str = "<bytes>", limits: LimitsConfig | None = None) -> DecodedImage:
    """Decode encoded bytes, enforcing `limits` before any pixel is allocated."""
    limits = limits or LimitsConfig()
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)", code="image_empty")
    if len(data) > limits.max_bytes:
        raise LimitError(f"{name}: {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes "
                         "(io.limits.max_bytes)", code="file_too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageError(f"{name}: zero-size image ({width}x{height})", code="image_empty")
            if width * height > limits.max_pixels:
                raise LimitError(f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
                                 f"{limits.max_pixels} (io.limits.max_pixels)", code="too_many_pixels")
            if fmt not in SUPPORTED_FORMATS:
                raise ImageError(f"{name}: format {fmt} is not supported (use one of "
                                 f"{', '.join(SUPPORTED_FORMATS)})", code="unsupported_format")
            notes: dict[str, Any] = {"format": fmt, "decoded_size": [height, width]}
            orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
            img.load()
            if orientation and orientation != 1:
                img = ImageOps.exif_transpose(img)
                notes["exif_orientation"] = int(orientation)
            rgb = None
            if fmt == "PNG" and img.mode in ("RGB", "RGBA") and _png_is_16bit(data):
                rgb = _read_16bit_png_rgb(data)
                if rgb is not None:
                    notes["bit_depth"] = 16
                    if img.mode == "RGBA":
                        notes["alpha"] = "composited on white"
            if rgb is None:
                rgb = _to_uint8_rgb(img, notes)
    except (LimitError, ImageError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise LimitError(f"{name}: refused as a decompression bomb ({exc})", code="decompression_bomb") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image or an unsupported format", code="image_unreadable") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: unreadable or truncated image ({exc})", code="image_unreadable") from exc
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"{name}: zero-size image", code="image_empty")
    return DecodedImage(np.ascontiguousarray(rgb), notes)


def _png_is_16bit(data: bytes) -> bool:
    # IHDR: 8-byte signature, 4 length, 4 type, 4 width, 4 height, then bit depth.
    return len(data) > 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 16


def read_image(path: str | Path, limits: LimitsConfig | None = None) -> DecodedImage:
    path = Path(path)
    limits = limits or LimitsConfig()
    if not path.exists():
        raise ImageError(f"{path}: file not found", code="file_not_found")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file", code="file_not_found")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise LimitError(f"{path}: {size} bytes exceeds the limit of {limits.max_bytes} bytes "
                         "(io.limits.max_bytes)", code="file_too_large")
    return decode_image(path.read_bytes(), str(path), limits)


def read_mask(path: str | Path, limits: LimitsConfig | None = None) -> np.ndarray:
    """Ground-truth masks: binarised at mean RGB > 127.5 (the IMDL-BenCo convention)."""
    rgb = read_image(path, limits).rgb
    return rgb.astype(np.float32).mean(axis=2) > 127.5


def encode_png(array: np.ndarray) -> bytes:
    """uint8 gray [H, W] or RGB [H, W, 3] → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_png(array: np.ndarray, path: str | Path) -> Path:
    """Atomic PNG write: a killed process never leaves a half-written mask behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode_png(array))
    tmp.replace(path)
    return path
