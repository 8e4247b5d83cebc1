"""Whole-image perturbations applied to the edited image only; the ground truth never changes.

Each is deterministic from (name, pair id) so two runs of `sigma eval` score the same inputs. The
operations themselves live in `sigma.data.perturb`, shared with the synthetic-edit engine's regenerator
family (`sigma.data.synth.perturb`): what the model is scored under and what it is trained on are one code.
"""
from __future__ import annotations

import hashlib

import cv2
import numpy as np

from sigma.data import perturb as K
from sigma.errors import ConfigError

PERTURBATIONS = ("none", "vae", "jpeg75", "jpeg90", "resize", "color", "regen")


def _rng(name: str, pair_id: str) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{name}:{pair_id}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    return K.jpeg(image, quality)


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Down by `factor` (area) and back up (cubic): the softening an editor's resize leaves."""
    return K.resample(image, factor, interp_down=2, interp_up=1)


def color_drift(image: np.ndarray, gamma: float, gains: np.ndarray) -> np.ndarray:
    return K.color_drift(image, gamma, gains)


_VAE_CACHE: dict[str, object] = {}


def _default_vae():
    try:
        from sigma.models.vae import load_default_vae  # lazy: torch + weights only when asked for
    except ImportError as exc:
        raise ConfigError(f"perturbation 'vae' needs sigma.models.vae, which cannot be imported ({exc})",
                          code="perturbation_unavailable") from exc
    vae = _VAE_CACHE.get("default")
    if vae is None:
        vae = _VAE_CACHE["default"] = load_default_vae()   # WeightsNotFoundError says where it looked
    return vae


def vae_roundtrip(image: np.ndarray) -> np.ndarray:
    return _default_vae().roundtrip_uint8(image)


def regeneration_chain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What an editor that re-makes the whole image through a latent model and then saves it does: down by
    0.6-0.85 (area), TAEF2 roundtrip at that size, up again (cubic), JPEG 80-95, a gamma of 0.92-1.08. Five
    artefacts at once, none of them at the strength of a single-step perturbation: the "regeneration chain"
    condition of issue 14's table, so users can measure it on their own sets."""
    h, w = image.shape[:2]
    factor = float(rng.uniform(0.6, 0.85))
    small = cv2.resize(image, (max(8, round(w * factor)), max(8, round(h * factor))), interpolation=cv2.INTER_AREA)
    up = cv2.resize(vae_roundtrip(small), (w, h), interpolation=cv2.INTER_CUBIC)
    saved = K.jpeg(up, int(rng.integers(80, 96)))
    return K.color_drift(saved, float(rng.uniform(0.92, 1.08)), np.ones(3, np.float32))


def prepare(names: list[str]) -> None:
    """Load what a perturbation needs once, up front, so a missing VAE is one error and not one per pair."""
    if "vae" in names or "regen" in names:
        _default_vae()


def apply(name: str, image: np.ndarray, pair_id: str) -> np.ndarray:
    rng = _rng(name, pair_id)
    if name == "none":
        return image
    if name == "jpeg75":
        return jpeg(image, 75)
    if name == "jpeg90":
        return jpeg(image, 90)
    if name == "resize":
        return resample(image, float(rng.uniform(0.5, 0.8)))
    if name == "color":
        return color_drift(image, float(rng.uniform(0.9, 1.1)), rng.uniform(0.96, 1.04, size=3).astype(np.float32))
    if name == "vae":
        return vae_roundtrip(image)
    if name == "regen":
        return regeneration_chain(image, rng)
    raise ConfigError(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)} or 'all'")


def expand(names: list[str] | str) -> list[str]:
    """'all' → every perturbation, 'none' first; keeps the user's order otherwise. Names are comma-separated, spaces
    around a name ignored (`none, jpeg75`); an empty one is refused, naming the item: `--perturb none,` (a name left
    off after the comma, or a shell variable left empty in `none,$P`) and `none,,vae` ran `none` and `none,vae`
    without a word, while `--perturb ,` was refused."""
    if isinstance(names, str):
        names = [names]
    split = [(item, [n.strip() for n in item.split(",")]) for item in map(str, names)]
    parts = [n for _, item_parts in split for n in item_parts]
    if not any(parts):
        raise ConfigError(f"no perturbation given; choose from {', '.join(PERTURBATIONS)} or 'all'")
    for item, item_parts in split:
        if not all(item_parts):
            raise ConfigError(f"an empty perturbation name in {item[:200]!r} (comma-separated names, none empty: "
                              f"drop the extra comma); choose from {', '.join(PERTURBATIONS)} or 'all'")
    out: list[str] = []
    for name in parts:
        for item in (PERTURBATIONS if name == "all" else (name,)):
            if item not in PERTURBATIONS:
                raise ConfigError(f"unknown perturbation {item!r}; choose from {', '.join(PERTURBATIONS)} or 'all'")
            if item not in out:
                out.append(item)
    return out


