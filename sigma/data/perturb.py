"""Image perturbation primitives shared by evaluation (`sigma.eval.perturb`) and the synthetic-edit engine
(`sigma.data.synth.perturb`): one implementation of each operation, so the conditions the model is scored
under and the families it is trained on cannot drift apart.

Every function is pure: uint8 RGB [H, W, 3] in, uint8 RGB of the same size out; all randomness comes in
through arguments (a seed where an operation needs noise), so a caller can draw parameters once and apply
them to several images (an edited image and its unedited base).

Two families live here:

- *regenerators*: what a generative pipeline does to every pixel besides the edit (re-encoding,
  resampling, re-rendering of texture, chroma subsampling, sensor-like noise);
- *illumination / season changes*: what a second photograph of the same scene looks like (global colour
  transfer, smooth relighting, soft cast shadows, haze) — bi-temporal change that is not an edit.
"""
from __future__ import annotations

import io

import cv2
import numpy as np

INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_LANCZOS4, cv2.INTER_NEAREST)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ codecs
def jpeg(image: np.ndarray, quality: int, subsampling: int | None = None) -> np.ndarray:
    """JPEG re-encoding with PIL (libjpeg); `subsampling` 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0 (PIL's default)."""
    from PIL import Image

    buf = io.BytesIO()
    kw = {} if subsampling is None else {"subsampling": int(subsampling)}
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality), **kw)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy()


def webp(image: np.ndarray, quality: int) -> np.ndarray:
    """Lossy WebP (VP8: 4:2:0 chroma, 4x4 transforms, in-loop filtering: a different artefact from JPEG)."""
    ok, buf = cv2.imencode(".webp", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_WEBP_QUALITY, int(quality)])
    if not ok:  # an OpenCV built without WebP: fall back to JPEG at the same quality
        return jpeg(image, quality)
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def chroma_subsample(image: np.ndarray, factor: int, interp_down: int = 2, interp_up: int = 0) -> np.ndarray:
    """Keep luma, resample chroma (YCrCb) down by `factor` and back (video codecs, 4:2:0 pipelines)."""
    h, w = image.shape[:2]
    ycc = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
    cc = ycc[..., 1:]
    small = cv2.resize(cc, (max(1, w // factor), max(1, h // factor)), interpolation=INTERPOLATIONS[interp_down])
    ycc[..., 1:] = cv2.resize(small, (w, h), interpolation=INTERPOLATIONS[interp_up])
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


# ------------------------------------------------------------------------------------------ resampling
def resample(image: np.ndarray, factor: float, interp_down: int = 2, interp_up: int = 1) -> np.ndarray:
    """Down by `factor` and back up; interpolations index `INTERPOLATIONS` (area is replaced by linear
    when enlarging, where OpenCV's area is nearest-like)."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))),
                       interpolation=INTERPOLATIONS[interp_down])
    up = INTERPOLATIONS[interp_up]
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR if up == cv2.INTER_AREA else up)


def shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Sub-pixel translation (editors and bi-temporal registration are rarely pixel-exact)."""
    h, w = image.shape[:2]
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# ------------------------------------------------------------------------------------------ tone / noise
def color_drift(image: np.ndarray, gamma: float, gains, offset: float = 0.0) -> np.ndarray:
    x = np.power(image.astype(np.float32) / 255.0, gamma) * np.asarray(gains, np.float32)[None, None, :]
    return _u8(x * 255.0 + offset)


def gaussian_noise(image: np.ndarray, std: float, seed: int) -> np.ndarray:
    n = np.random.default_rng(seed).normal(0, std, image.shape).astype(np.float32)
    return _u8(image.astype(np.float32) + n)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


# ------------------------------------------------------------------------------------------ texture re-rendering
def denoise_sharpen(image: np.ndarray, strength: float, amount: float, radius: float) -> np.ndarray:
    """An edge-preserving smoother (bilateral) followed by unsharp masking: fine texture is replaced by
    flat patches with crisp edges, the look of a restoration or diffusion decoder, with no VAE at all."""
    d = 5 if strength < 40 else 7
    smooth = cv2.bilateralFilter(image, d, float(strength), float(strength) / 8 + 2)
    soft = cv2.GaussianBlur(smooth, (0, 0), radius).astype(np.float32)
    return _u8(smooth.astype(np.float32) + amount * (smooth.astype(np.float32) - soft))


def posterize_dither(image: np.ndarray, levels: int, seed: int, ordered: bool) -> np.ndarray:
    """Quantise each channel to `levels` levels with dithering (ordered Bayer or random), then a light
    blur so the result reads as re-rendered texture rather than as posterisation."""
    x = image.astype(np.float32) / 255.0
    h, w = image.shape[:2]
    if ordered:
        bayer = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]], np.float32) / 16.0 - 0.47
        t = np.tile(bayer, (h // 4 + 1, w // 4 + 1))[:h, :w, None]
    else:
        t = np.random.default_rng(seed).uniform(-0.5, 0.5, (h, w, 1)).astype(np.float32)
    q = np.floor(x * (levels - 1) + 0.5 + t) / (levels - 1)
    q = cv2.GaussianBlur(np.clip(q, 0, 1), (0, 0), 0.6)
    return _u8(q * 255.0)


def median_rerender(image: np.ndarray, k: int, noise_std: float, seed: int) -> np.ndarray:
    """Sensor-like noise, then a median filter: grain replaced by blotchy texture (another family)."""
    noisy = gaussian_noise(image, noise_std, seed) if noise_std > 0 else image
    return cv2.medianBlur(noisy, int(k) | 1)


# ------------------------------------------------------------------------------------------ illumination / season
def smooth_field(h: int, w: int, seed: int, cells: int) -> np.ndarray:
    """A smooth random field in [-1, 1] (cubic upsampling of a coarse Gaussian grid)."""
    g = np.random.default_rng(seed).normal(size=(cells, cells)).astype(np.float32)
    f = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return f / max(float(np.abs(f).max()), 1e-6)


def lab_stats(image: np.ndarray) -> tuple[list[float], list[float]]:
    """Lab mean and std of an image: the whole 'look' a colour transfer moves towards."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return lab.mean(0).tolist(), (lab.std(0) + 1e-3).tolist()


def color_transfer(image: np.ndarray, mean, std, strength: float) -> np.ndarray:
    """Reinhard's Lab mean/std transfer towards another photo's statistics, by `strength` (0–1): the
    global colour of another season / time of day / camera."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    m, s = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-3
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    ratio = 1 + strength * (np.clip(std / s, 0.5, 2.0) - 1)
    out = (lab - m) * ratio + m + strength * (mean - m)
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def relight(image: np.ndarray, amplitude: float, seed: int, cells: int = 3) -> np.ndarray:
    """Smooth multiplicative relighting gradient (sun position, vignetting, exposure falloff)."""
    h, w = image.shape[:2]
    gain = 1.0 + amplitude * smooth_field(h, w, seed, cells)
    return _u8(image.astype(np.float32) * gain[..., None])


def soft_shadow(image: np.ndarray, darkness: float, seed: int, blur_frac: float = 0.08) -> np.ndarray:
    """Cast-shadow-like soft darkening over a random smooth region (a cloud, a building's shadow)."""
    h, w = image.shape[:2]
    f = smooth_field(h, w, seed, 4)
    thr = np.quantile(f, float(np.random.default_rng(seed + 1).uniform(0.4, 0.85)))
    m = (f > thr).astype(np.float32)
    m = cv2.GaussianBlur(m, (0, 0), max(1.0, blur_frac * max(h, w)))
    shade = 1.0 - darkness * m
    tint = np.array([0.97, 0.99, 1.04], np.float32)  # shadows are lit by the (blue) sky
    return _u8(image.astype(np.float32) * (shade[..., None] * (1 - m[..., None] * (1 - tint))))


def haze(image: np.ndarray, amount: float, airlight, seed: int) -> np.ndarray:
    """Atmospheric haze: blend towards an airlight colour with a smooth, spatially varying transmission."""
    h, w = image.shape[:2]
    t = 1.0 - amount * (0.6 + 0.4 * (smooth_field(h, w, seed, 2) * 0.5 + 0.5))
    a = np.asarray(airlight, np.float32)[None, None, :]
    return _u8(image.astype(np.float32) * t[..., None] + a * (1 - t[..., None]))


def season_shift(image: np.ndarray, hue_shift: float, sat_gain: float, seed: int) -> np.ndarray:
    """Vegetation changing with the season: green-ish pixels move in hue (towards yellow/brown, or back)
    and saturation, by a smooth, spatially varying amount; other colours are left alone."""
    h, w = image.shape[:2]
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hue = hsv[..., 0] * 360.0 / 256.0
    green = np.clip(1.0 - np.abs(hue - 100.0) / 60.0, 0, 1) * np.clip(hsv[..., 1] / 60.0, 0, 1)
    k = green * (0.6 + 0.4 * (smooth_field(h, w, seed, 3) * 0.5 + 0.5))
    hsv[..., 0] = (hsv[..., 0] + k * hue_shift * 256.0 / 360.0) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * (1 + k * (sat_gain - 1)), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL)
