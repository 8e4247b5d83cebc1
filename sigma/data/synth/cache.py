"""A one-off cache of the photo bank: each photo resized, plus its TAEF2 roundtrips and latent edits.

Why: on a 2-core CPU one TAEF2 roundtrip of a 384 px photo costs about a second, far more than a training
step's share. The expensive, photo-only work is therefore done once; the online generator
(`engine.py`) only crops, masks, edits and composes. One `.npz` per photo (uint8 arrays, aligned):

- `img`: the photo, long side ≤ `max_side`, sides multiples of 8;
- `rt<scale>`: TAEF2 encode→decode of the photo resized by `scale` (and back): several VAE "strengths";
- `lat<k>` + `latmask<k>`: a *latent edit*: the photo's latent with a region replaced by another photo's
  latent or by structured noise, decoded whole (every pixel regenerated, only the region changed
  semantically); `latmask<k>` is the full-resolution region (0/255).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from sigma.errors import ImageError, InputError
from sigma.folderlock import hold_folder
from sigma.io.folders import require_folder
from sigma.io.images import probe_image_file, read_image

from .masks import random_mask

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
LATENT_MASK_SHAPES = {"blob": 3.0, "ellipse": 2.0, "polygon": 2.0, "brush": 1.5, "rectangle": 0.5}


def list_photos(folder: str | Path) -> list[Path]:
    """Every entry named like a photo that is not a folder: FIFOs, devices, broken links and link loops included,
    so the readers (`readable_photos`, `load_photo`) leave each out and say so. Regular files only were listed:
    those were dropped without a word, and a folder of links to an unmounted drive said "found 0"."""
    folder = Path(folder)
    require_folder(folder, "photos are read from a folder of them", missing="photo folder not found")
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and not p.is_dir())
    if len(photos) < 2:
        raise InputError(f"{folder}: need at least 2 photos (found {len(photos)})", code="no_photos")
    return photos


def readable_photos(photos: list[Path]) -> tuple[list[Path], list[str]]:
    """(photos whose header passes `sigma.io`'s checks, 'path: why' for the others): a photo bank of thousands
    holds the odd 0-byte file, a text file named .png, a format the decoder does not take, a photo above the
    size limits, or a FIFO, a device, a broken link named like a photo; only the header is read, never blocking."""
    good, bad = [], []
    for path in photos:
        try:
            probe_image_file(path)
        except InputError as exc:   # any reason a photo cannot be opened: skipped and said
            bad.append(" ".join(exc.message.split())[:200])
        else:
            good.append(path)
    return good, bad


def load_photo(path: Path, max_side: int) -> np.ndarray:
    """The photo as sRGB RGB, long side ≤ max_side, decoded by the project's one decoder (`sigma.io.read_image`:
    byte and pixel limits, decompression-bomb checks, ICC profiles to sRGB, EXIF orientation); `image_unreadable`
    naming it when it cannot be decoded or breaks a limit, so the caller skips it and says so. Pillow opened
    photos directly here: a bomb within PIL's own ceiling was decoded whole, and a Display P3 photo was trained on
    as if it were sRGB."""
    try:
        rgb = read_image(path).rgb
    except InputError as exc:   # ImageError, LimitError, a path the file system refuses
        raise ImageError(f"{path}: photo cannot be decoded ({' '.join(exc.message.split())[:200]}); remove it "
                         "from the photo folder") from exc
    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    nh, nw = max(8, int(round(h * s / 8)) * 8), max(8, int(round(w * s / 8)) * 8)
    return cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)


def _to_t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(x, copy=True)).permute(2, 0, 1)[None].float().div(255.0)


def _to_u8(t: torch.Tensor) -> np.ndarray:
    """Back on the CPU: a VAE on a GPU (`sigma synth --build-cache --device cuda`) decodes there."""
    return t[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().cpu().numpy()


def roundtrip_key(scale: float) -> str:
    """The cache's name of a photo's roundtrip at `scale` ("rt100", "rt050"); `roundtrip_scale` reads it back,
    for the synth engine's online roundtrip at the scale a cached one was drawn at."""
    return f"rt{int(round(scale * 100)):03d}"


def roundtrip_scale(key: str) -> float:
    return int(key[2:]) / 100.0


def roundtrip_at(vae, img: np.ndarray, scale: float) -> tuple[np.ndarray, torch.Tensor | None]:
    """VAE roundtrip after resizing by `scale` (a smaller scale = a stronger, blurrier perturbation)."""
    h, w = img.shape[:2]
    if abs(scale - 1.0) < 1e-6:
        z = vae.encode(_to_t(img))
        return _to_u8(vae.decode(z)), z
    sh, sw = max(8, int(round(h * scale / 8)) * 8), max(8, int(round(w * scale / 8)) * 8)
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    out = _to_u8(vae.roundtrip(_to_t(small)))
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_CUBIC if scale < 1 else cv2.INTER_AREA), None


def latent_edit(vae, z: torch.Tensor, donor_z: torch.Tensor, rng: np.random.Generator,
                h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    mask, _ = random_mask(rng, h, w, LATENT_MASK_SHAPES, area_range=(0.01, 0.5), multi_p=0.1)
    lh, lw = z.shape[-2:]
    alpha = cv2.resize(mask.astype(np.float32), (lw, lh), interpolation=cv2.INTER_AREA)
    alpha = torch.from_numpy(alpha)[None, None].to(z.device)
    if rng.random() < 0.7:  # paste another photo's latent (tiled/cropped to this size, random offset)
        dz = donor_z
        reps = (1, 1, -(-lh // dz.shape[-2]) + 1, -(-lw // dz.shape[-1]) + 1)
        dz = dz.repeat(*reps)
        oy, ox = int(rng.integers(0, dz.shape[-2] - lh + 1)), int(rng.integers(0, dz.shape[-1] - lw + 1))
        src = dz[..., oy:oy + lh, ox:ox + lw]
    else:  # structured noise: smooth random field scaled to the latent's own statistics
        g = torch.from_numpy(rng.normal(size=(1, z.shape[1], max(1, lh // 4), max(1, lw // 4))).astype(np.float32))
        g = g.to(z.device)
        noise = torch.nn.functional.interpolate(g, size=(lh, lw), mode="bilinear", align_corners=False)
        src = z + float(rng.uniform(1.0, 2.5)) * z.std() * noise
    edited = vae.decode(z * (1 - alpha) + src * alpha)
    return _to_u8(edited), (mask.astype(np.uint8) * 255)


def build_cache(photo_dir: str | Path, out_dir: str | Path, vae=None, max_side: int = 384,
                scales: tuple[float, ...] = (1.0, 0.5), latent_edits: int = 1, seed: int = 0,
                limit: int | None = None, shuffle: bool = True, log=print,
                progress: Callable[[int, int], None] | None = None) -> Path:
    """Idempotent and interruptible: photos already cached are skipped, and `index.json` (which lists only
    finished photos) is rewritten every few photos, so a killed build leaves a usable cache behind; a second
    build on the same folder while one runs is refused (run_locked).
    `shuffle` processes photos in a seeded random order, so a partial cache still spans every sub-folder.
    `progress(done, total)` is called after every photo (a bar, in `sigma synth --build-cache`); without it `log`
    says a line every 25 photos."""
    photos = list_photos(photo_dir)[: limit or None]
    out = Path(out_dir)
    # one builder per folder: two would write the same <n>.tmp.npz and index.json.tmp at once and could
    # publish a file spliced from both, which training then reads as a corrupt photo
    with hold_folder(out, other="cache folder (or wait for the build that holds this one)"):
        order = np.random.default_rng(seed).permutation(len(photos)) if shuffle else np.arange(len(photos))
        meta = {"photo_dir": str(photo_dir), "max_side": max_side, "scales": list(scales) if vae else [],
                "latent_edits": latent_edits if vae else 0, "seed": seed}

        def write_index() -> int:
            files = [{"file": f"{i:05d}.npz", "photo": str(p)} for i, p in enumerate(photos)
                     if (out / f"{i:05d}.npz").is_file()]
            tmp = out / "index.json.tmp"
            tmp.write_text(json.dumps({**meta, "files": files}, indent=1))
            tmp.replace(out / "index.json")
            return len(files)

        donor_z = None
        t0 = time.time()
        for n_done, i in enumerate(order.tolist()):
            path = photos[i]
            name = f"{i:05d}.npz"
            target = out / name
            if target.is_file():
                if progress:
                    progress(n_done + 1, len(photos))
                continue
            try:
                img = load_photo(path, max_side)
            except ImageError as exc:   # one bad photo costs itself, not the build: it stays out of the index
                if log:
                    log(f"skipped {exc.message}")
                if progress:
                    progress(n_done + 1, len(photos))
                continue
            arrays = {"img": img}
            if vae is not None:
                z = None
                with torch.no_grad():
                    for s in scales:
                        rt, zz = roundtrip_at(vae, img, s)
                        arrays[roundtrip_key(s)] = rt
                        z = zz if zz is not None else z
                    if z is None:
                        z = vae.encode(_to_t(img))
                    rng = np.random.default_rng([seed, i])
                    for k in range(latent_edits):
                        dz = donor_z if donor_z is not None else torch.flip(z, dims=(-1, -2))
                        lat, lmask = latent_edit(vae, z, dz, rng, img.shape[0], img.shape[1])
                        arrays[f"lat{k}"], arrays[f"latmask{k}"] = lat, lmask
                donor_z = z
            tmp = target.with_name(name + ".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(target)
            if n_done % 10 == 0:
                write_index()
            if progress:
                progress(n_done + 1, len(photos))
            elif log and (n_done % 25 == 0):
                log(f"cache {n_done + 1}/{len(photos)} {time.time() - t0:.0f}s")
        cached = write_index()
        if log:   # photos that could not be read are not in the cache: the count says what training will see
            left_out = f", {len(photos) - cached} unreadable left out" if cached < len(photos) else ""
            log(f"cache done: {cached} photos in {out}{left_out} ({time.time() - t0:.0f}s)")
        return out
