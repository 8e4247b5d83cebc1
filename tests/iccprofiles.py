"""Real ICC v2 matrix/TRC display profiles, written byte by byte (littleCMS reads them as any camera's or
monitor's): Display P3 and Adobe RGB (1998), with their D50-adapted primaries, for tests of colour handling."""
from __future__ import annotations

import struct

# D50-adapted colorants (the ICC PCS), as Apple's Display P3 and Adobe's AdobeRGB1998.icc carry them
DISPLAY_P3 = ((0.5151, 0.2412, -0.0011), (0.2919, 0.6922, 0.0419), (0.1572, 0.0666, 0.7841))
ADOBE_RGB = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
D50 = (0.9642, 1.0, 0.8249)


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(v: tuple[float, float, float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in v)


def _srgb_curve(n: int = 1024) -> bytes:
    def to_linear(x: float) -> float:
        return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4
    return b"curv\0\0\0\0" + struct.pack(">I", n) + b"".join(
        struct.pack(">H", round(to_linear(i / (n - 1)) * 65535)) for i in range(n))


def _gamma_curve(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))


def _desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 8 + b"\0\0\0" + b"\0" * 67


def rgb_profile(name: str, colorants=DISPLAY_P3, trc: bytes | None = None) -> bytes:
    """An RGB display profile with the given D50 colorants and tone curve (default: the sRGB curve)."""
    trc = trc or _srgb_curve()
    tags = [(b"desc", _desc(name)), (b"cprt", b"text\0\0\0\0public domain\0"), (b"wtpt", _xyz(D50)),
            (b"rXYZ", _xyz(colorants[0])), (b"gXYZ", _xyz(colorants[1])), (b"bXYZ", _xyz(colorants[2])),
            (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + b"APPL" + b"\0" * 4 + b"\0" * 8 + b"\0" * 8
              + struct.pack(">I", 0) + b"".join(_s15(c) for c in D50) + b"lcms" + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def display_p3() -> bytes:
    return rgb_profile("Display P3 (test)", DISPLAY_P3)


def adobe_rgb() -> bytes:
    return rgb_profile("Adobe RGB (1998) (test)", ADOBE_RGB, _gamma_curve(563 / 256))
