"""The synthetic-edit engine: a pair (original, edited, mask) from (seed, index), deterministically.

Recipe (METHOD §6 Stage I, §9 for what worked): a random crop of a real photo; an edit of one kind inside
a random object-like mask (remove / splice (add, replace, copy-move) / attribute / global / latent edit /
no edit); then a chain of whole-image perturbations of the edited image that are never labelled (VAE
roundtrip at several scales, JPEG, resampling chains, colour drift, noise, blur, shift).

Labelling policy: the mask is the region the edit was confined to; no-edit pairs are labelled empty
(whatever perturbation they carry); `global` edits are labelled by `global_label` ("full" = the whole image
changed semantically, the default; "empty" = treat a global restyle as a perturbation).
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from sigma.config.schema import MAX_WORKING_SIZE, Strict
from sigma.errors import ImageError, InputError
from sigma.io.corpora.base import resolved_under
from sigma.regular import NotRegularFile, open_regular
from sigma.text import printable

from . import edits as E
from . import masks as M
from . import perturb as P
from .cache import list_photos, load_photo, readable_photos, roundtrip_at, roundtrip_scale

KINDS = ("none", "remove", "splice", "attribute", "global", "latent", "copymove", "inpaint")
OBJECT_SHAPES = {"blob": 3.0, "ellipse": 1.5, "polygon": 1.5, "rectangle": 0.6, "superpixels": 1.0}
REGION_SHAPES = {"rectangle": 1.5, "blob": 2.0, "ellipse": 1.0, "brush": 1.5, "polygon": 1.0}
BUILDING_SHAPES = {"rectangle": 3.0, "polygon": 2.0, "blob": 0.5}
LANDCOVER_SHAPES = {"blob": 2.0, "superpixels": 2.0, "polygon": 1.0, "brush": 1.0}


def _check_range(name: str, value: tuple[float, float], top: float) -> None:
    """A (low, high) range the sampler draws from: 0 < low <= high <= top, said at load, not as a NaN
    (log of a negative area) or an empty crop steps into a training run."""
    lo, hi = value
    if not (0 < lo <= hi <= top):
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high <= {top:g}, got ({lo:g}, {hi:g})")


class AerialConfig(Strict):
    """Aerial tiles (bi-temporal change): structural edits (buildings appearing / vanishing / re-roofed)
    under an unlabelled illumination or season change."""

    pattern: str = Field("rsscn7", description="a photo whose path contains this is an aerial tile")
    struct_p: float = Field(0.0, ge=0, le=1, description="probability of a building-like edit on an aerial tile")
    donor_p: float = Field(0.8, ge=0, le=1, description="probability the donor is another aerial tile")
    roof_p: float = Field(0.0, ge=0, le=1, description="probability a building splice is a drawn roof (a "
                          "gabled footprint in a roof colour, its shadow cast beside it, unlabelled) instead of "
                          "another tile's texture. 0 keeps the stream of earlier files")
    landcover_p: float = Field(0.0, ge=0, le=1, description="probability of an unlabelled land-cover change on "
                               "an aerial tile: large irregular regions re-textured from another tile, around "
                               "(never over) the labelled edit. 0 keeps the stream of earlier files")
    landcover_area: tuple[float, float] = Field((0.15, 0.8), description="fraction of the crop re-textured")

    @model_validator(mode="after")
    def _ranges(self) -> AerialConfig:
        _check_range("aerial.landcover_area", self.landcover_area, 1.0)
        return self


class SynthConfig(Strict):
    """Everything that shapes the generated distribution; saved with every run."""

    photos: str = Field("", description="photo folder (with a cache: photos not yet cached are used "
                        "without VAE variants)")
    cache: str = Field("", description="folder built by build_cache (index.json + .npz per photo)")
    cache_index: str = Field("", description="a frozen copy of the cache's index.json (a run snapshots "
                             "it at start, so a cache still being built cannot change its stream)")
    crop: int = Field(192, ge=32, le=MAX_WORKING_SIZE)
    scale_range: tuple[float, float] = (0.75, 1.33)
    mix: dict[str, float] = Field(default_factory=lambda: {
        "none": 0.06, "remove": 0.16, "splice": 0.25, "attribute": 0.15, "global": 0.02, "latent": 0.36})
    shapes: dict[str, float] = Field(default_factory=lambda: {
        "blob": 3.0, "ellipse": 1.5, "polygon": 1.5, "brush": 1.5, "rectangle": 0.7, "superpixels": 1.0,
        "thin": 0.3})
    area_range: tuple[float, float] = (0.005, 0.6)
    small_p: float = Field(0.0, ge=0, le=1, description="probability of a tiny edit (area from small_range)")
    small_range: tuple[float, float] = (0.0005, 0.02)
    multi_p: float = Field(0.15, ge=0, le=1)
    multi_max: int = Field(3, ge=2, le=64, description="several regions: 2..multi_max of them (a bound: 10^9 drew "
                           "a mask of 10^9 regions, and the data worker never returned)")
    irregular_p: float = Field(0.0, ge=0, le=1, description="probability of a roughened mask boundary")
    latent_whole_p: float = Field(0.5, ge=0, le=1, description="latent edit decoded whole vs composited back")
    inpaint_composite_p: float = Field(0.5, ge=0, le=1, description="inpainting pairs left as composites (no "
                                       "whole-image change after: the label is the whole re-made region)")
    inpaint_margin_p: float = Field(0.0, ge=0, le=1, description="inpainting pairs whose region is the object "
                                    "dilated by a thin margin (1-4 % of the crop), as object-removal tools build "
                                    "it (Inpaint-Anything dilates the SAM mask by 15 px by default); the label is "
                                    "that region even under a regenerator: the band follows the object, so it "
                                    "is predictable from the object alone. 0 keeps the stream of earlier files")
    inpaint_margin_box_p: float = Field(0.0, ge=0, le=1, description="of those margin regions, the share that is "
                                        "the object's bounding box grown by the margin: a rectangle drawn around "
                                        "the object, or a rectangular patch copied over it (hand-made copy-move "
                                        "cover-ups), labelled whole like the dilated ones. 0 keeps the stream")
    inpaint_margin_fill_p: float = Field(0.0, ge=0, le=1, description="of the margin regions whose object is "
                                         "removed, the share filled whole from the surroundings, as LaMa / MI-GAN "
                                         "fill the mask they are handed (the band re-made too, not re-rendered "
                                         "from the photo itself). 0 keeps the stream")
    global_label: Literal["full", "empty"] = "full"
    min_change: float = Field(4.0, ge=0, description="mean |Δ| (0–255) an edit must make inside its mask")
    perturb: P.PerturbConfig = Field(default_factory=P.PerturbConfig)
    aerial: AerialConfig = Field(default_factory=AerialConfig)
    noise_blur: float = Field(4.0, ge=0, le=64, allow_inf_nan=False, description="σ (px) of the low-pass on the "
                              "noise-regression target (σ 10^9 blurred with a kernel of billions: no first step)")

    @model_validator(mode="after")
    def _ranges(self) -> SynthConfig:
        _check_range("area_range", self.area_range, 1.0)
        _check_range("small_range", self.small_range, 1.0)
        _check_range("scale_range", self.scale_range, 8.0)
        for name, weights, known in (("mix", self.mix, KINDS), ("shapes", self.shapes, tuple(M.SHAPES))):
            unknown = sorted(set(weights) - set(known))
            if unknown:
                raise ValueError(f"{name} has unknown keys {unknown}; choose from {list(known)}")
            total = sum(weights.values())
            # the sum too: two weights of 1e308 add up to inf, and inf / inf made NaN probabilities (a traceback)
            if not all(math.isfinite(v) and v >= 0 for v in weights.values()) or not 0 < total < math.inf:
                raise ValueError(f"{name} weights must be finite, >= 0, not all 0, with a finite sum, got {weights}")
        return self


@dataclass
class SynthSample:
    original: np.ndarray        # uint8 [H,W,3]
    edited: np.ndarray          # uint8 [H,W,3]
    mask: np.ndarray            # bool [H,W]
    kind: str                   # one of KINDS
    edit_type: str | None       # pairs.jsonl vocabulary: add|remove|replace|attribute|global|None
    noise: np.ndarray           # float32 [H,W]: low-passed |perturbed base − original| / 255
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def noise_only(self) -> bool:
        return not self.mask.any()


MAX_CACHE_INDEX_BYTES = 64 * 1024 * 1024   # a few hundred bytes a photo: room for 100,000+ photos


def read_cache_index(idx: Path) -> tuple[bytes, dict[str, Any]]:
    """The bytes and contents of a synth cache's `index.json`, or InputError(file_not_found) saying to rebuild it.

    Read at most `MAX_CACHE_INDEX_BYTES` through `open_regular` (a FIFO put there after the check held training for
    ever), and checked for the shape `build_cache` writes: a damaged index (not JSON, no `files` list, an entry with
    no `file` name) ended `sigma synth` and `sigma train` with a traceback (JSONDecodeError, KeyError, TypeError)."""
    def refuse(why: str) -> InputError:
        return InputError(f"{idx}: not a synth cache index ({why}); build it with `sigma synth --build-cache`",
                          code="file_not_found")

    if not idx.is_file():
        raise refuse("no index.json")
    try:
        with open_regular(idx, "rb") as handle:
            raw = handle.read(MAX_CACHE_INDEX_BYTES + 1)
    except NotRegularFile:
        raise refuse("not a regular file") from None
    except OSError as exc:
        raise refuse(f"cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CACHE_INDEX_BYTES:
        raise refuse(f"over {MAX_CACHE_INDEX_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise refuse("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise refuse('not a JSON object with a "files" list')
    side = data.get("max_side", 1)
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise refuse(f"max_side {side!r} is not a positive whole number")
    for f in data["files"]:
        if not (isinstance(f, dict) and isinstance(f.get("file"), str) and f["file"]
                and isinstance(f.get("photo", ""), str)):
            raise refuse(f'an entry of "files" is not {{"file": NAME, "photo": PATH}}: {json.dumps(f)[:80]}')
    return raw, data


def cached_files(data: dict[str, Any], idx: Path, cache: Path) -> list[str]:
    """Each entry's cached file, resolved, refused whole (path_outside_root) unless every one lies inside `cache`:
    an index is a file anyone can edit or download with a cache, and an entry `../../etc/passwd`, an absolute path
    or a link in the cache to elsewhere was opened and fed to training as a photo. Checked before anything is read."""
    root = os.path.realpath(cache)
    files = []
    for f in data["files"]:
        real = resolved_under(str(cache / f["file"]), root)
        if real is None:
            raise InputError(f"{idx}: the entry {f['file']!r} resolves outside the cache folder {cache} (a path "
                             "or a link out of it); refused, nothing read (an index names the files inside its cache: "
                             "rebuild it with `sigma synth --build-cache`)", code="path_outside_root")
        files.append(real)
    return files


class PhotoBank:
    """Aligned per-photo arrays: `img`, `rt<scale>` (VAE roundtrips), `lat<k>`/`latmask<k>` (latent edits).

    With both a cache and a photo folder, photos the cache does not hold (yet) are served from the folder
    (`img` only): the whole photo pool is used while a cache is still being built."""

    def __init__(self, cache: str | Path | None = None, photos: str | Path | None = None, max_side: int = 384,
                 index: str | Path | None = None):
        self.cache = Path(cache) if cache else None
        self.max_side = max_side
        entries: list[tuple[str, bool, str]] = []       # (file, cached, photo path)
        if self.cache is not None:
            idx = Path(index) if index else self.cache / "index.json"
            data = read_cache_index(idx)[1]
            max_side = data.get("max_side", max_side)
            self.max_side = max_side
            listed = len(data["files"])
            for f, real in zip(data["files"], cached_files(data, idx, self.cache), strict=True):
                if os.path.isfile(real):
                    entries.append((real, True, str(f.get("photo", f["file"]))))
            if listed and not entries and not photos:
                # said as such: "cache: fewer than 2 photos" sent people looking for a cache that was too small
                raise InputError(f"{idx} lists {listed} cached photos but none of their files is in "
                                 f"{self.cache.absolute()} (a relative data.cache is read from the current folder, "
                                 "or for sigma train from the folder the run started in)", code="no_photos")
        if photos:
            # os.path.realpath: Path.resolve() raises RuntimeError on a link loop named like a photo
            have = {os.path.realpath(e[2]) for e in entries}
            # photos that are not images are left out here, said once: one of them killed `sigma synth` and
            # a training run (os_error) whenever it was drawn — at the same step again after every --resume
            good, bad = readable_photos([ph for ph in list_photos(photos) if os.path.realpath(ph) not in have])
            if bad:
                print(printable(f"sigma: warning: {len(bad)} file(s) in the photo folder are not readable images and "
                                f"are left out: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"), file=sys.stderr)
            entries.extend((str(ph), False, str(ph)) for ph in good)
        if not entries and self.cache is None and not photos:
            raise InputError("no photos: give a photo folder or a synth cache", code="no_photos")
        if len(entries) < 2:
            raise InputError(f"{self.cache or photos}: fewer than 2 photos", code="no_photos")
        entries.sort(key=lambda e: (not e[1], e[2]))
        self.entries = entries
        self.files = [Path(e[0]) for e in entries]
        self.unreadable: set[str] = set()     # entries found unreadable when first decoded (see `get`)

    def __len__(self) -> int:
        return len(self.entries)

    def n_cached(self) -> int:
        return sum(1 for e in self.entries if e[1])

    def photo(self, i: int) -> str:
        return self.entries[i][2]

    def get(self, i: int) -> dict[str, np.ndarray]:
        """Photo `i`; one whose data turns out unreadable (a JPEG cut short passes the header check) is said once
        and replaced by the next readable one, the same in every process and after every --resume: it ended the
        run at the step that drew it, and again at that step after each resume."""
        for k in range(len(self.entries)):
            f, cached, _ = self.entries[(i + k) % len(self.entries)]
            if f in self.unreadable:
                continue
            try:
                return _load_entry(f, cached, self.max_side)
            except ImageError as exc:
                self.unreadable.add(f)
                print(printable(f"sigma: warning: {exc.message}; the next photo is used in its place"), file=sys.stderr)
        raise InputError(f"{self.cache or 'the photo folder'}: no photo can be decoded", code="no_photos")


@lru_cache(maxsize=64)
def _load_entry(path: str, cached: bool, max_side: int) -> dict[str, np.ndarray]:
    if cached:
        try:   # open_regular: a FIFO put in place of a cached .npz after the bank's is_file() blocked np.load for ever
            with open_regular(path, "rb") as handle, np.load(handle) as data:
                return {k: data[k] for k in data.files}
        except Exception as exc:   # cut short or damaged on disk (BadZipFile, ValueError, OSError), not a regular file
            raise ImageError(f"{path}: cached photo cannot be read ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:120]}); rebuild the cache to replace it") from exc
    return {"img": load_photo(Path(path), max_side)}


def _window(rng: np.random.Generator, h: int, w: int, crop: int, scale_range: tuple[float, float]):
    size = int(round(crop * rng.uniform(*scale_range)))
    size = max(8, min(size, h, w))
    return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size


def _crop(arr: np.ndarray, win, crop: int, is_mask: bool = False) -> np.ndarray:
    y, x, s = win
    a = arr[y:y + s, x:x + s]
    if s == crop:
        return np.ascontiguousarray(a)
    interp = cv2.INTER_AREA if s > crop else cv2.INTER_LINEAR
    return cv2.resize(a, (crop, crop), interpolation=cv2.INTER_LINEAR if is_mask else interp)


def _edit_type(kind: str, params: dict[str, Any], rng: np.random.Generator) -> str:
    if kind in ("remove", "attribute"):
        return kind
    if kind == "copymove" or params.get("copy_move"):
        return "add"
    return "add" if rng.random() < 0.5 else "replace"


@dataclass
class _Draw:
    """What one sample is made from, drawn before the edit: the photo and donor crops, the cached
    roundtrip / latent edits available, and the unlabelled regeneration that will follow the edit."""

    kind: str
    ent: dict[str, np.ndarray]
    win: tuple[int, int, int]
    orig: np.ndarray
    base: np.ndarray              # the crop the edit starts from (the VAE roundtrip when one is drawn)
    donor: np.ndarray
    lats: list[str]
    building: bool
    rt_key: str | None
    chain: list[tuple[str, dict[str, Any]]]
    regenerated: bool
    meta: dict[str, Any]
    online_vae: bool = False      # the roundtrip runs on the edited crop (base is the photo, not its roundtrip)


class SynthEngine:
    def __init__(self, cfg: SynthConfig, seed: int = 0, bank: PhotoBank | None = None):
        self.cfg = cfg
        self.seed = int(seed)
        self.bank = bank or PhotoBank(cfg.cache or None, cfg.photos or None, index=cfg.cache_index or None)
        self.kinds = [k for k in KINDS if cfg.mix.get(k, 0) > 0]
        p = np.array([cfg.mix[k] for k in self.kinds], np.float64)
        self.kind_p = p / p.sum()
        pat = cfg.aerial.pattern.lower()
        self.aerial = np.array([bool(pat) and pat in self.bank.photo(i).lower() for i in range(len(self.bank))])
        self.aerial_idx = np.nonzero(self.aerial)[0]
        self.cached_idx = np.array([i for i in range(len(self.bank)) if self.bank.entries[i][1]], np.int64)
        self._vae = None

    def _roundtrip(self, img: np.ndarray, scale: float) -> np.ndarray:
        """TAEF2 roundtrip of one crop at `scale`; the VAE is loaded once per process (each data worker)."""
        if self._vae is None:
            from sigma.models.vae import load_default_vae
            self._vae = load_default_vae()
        return roundtrip_at(self._vae, img, scale)[0]

    def _mask(self, rng: np.random.Generator, c: int, shapes: dict[str, float], image: np.ndarray,
              area: float | None = None, count: int | None = None) -> tuple[np.ndarray, str]:
        cfg = self.cfg
        if area is None:
            area = M.sample_area_mix(rng, tuple(cfg.area_range), cfg.small_p, tuple(cfg.small_range))
        if count is None:
            count = int(rng.integers(2, cfg.multi_max + 1)) if rng.random() < cfg.multi_p else 1
        mask, shape = M.shaped_mask(rng, c, c, shapes, area, count, image=image)
        if cfg.irregular_p > 0 and rng.random() < cfg.irregular_p:
            mask = M.irregular(rng, mask, float(rng.uniform(0.1, 0.4)))
            shape += "+irregular"
        return mask, shape

    def sample(self, index: int) -> SynthSample:
        """Sample `index` of this engine's stream: a pure function of (seed, index), so a resumed run and
        every data worker see the same pairs. Three steps share one generator, in this order: draw the
        photos and what will regenerate the result, make the edit, regenerate and package."""
        rng = np.random.default_rng([self.seed, int(index)])
        draw = self._draw(rng)
        kind, edited, mask, edit_type, shape = self._edit(rng, draw)
        draw.meta["kind"], draw.meta["shape"] = kind, shape
        return self._finish(rng, draw, kind, edited, mask, edit_type)

    def _draw(self, rng: np.random.Generator) -> _Draw:
        cfg = self.cfg
        n = len(self.bank)
        # what needs the cache (a VAE roundtrip, a latent edit) is decided first and drawn from the cached
        # photos: while a cache is being built the rates stay what the config says, and the photos not yet
        # cached serve every other kind
        want_vae = rng.random() < cfg.perturb.vae
        kind = str(self.kinds[int(rng.choice(len(self.kinds), p=self.kind_p))])
        pool = self.cached_idx if (want_vae or kind == "latent") and len(self.cached_idx) >= 2 else None
        pi = int(pool[int(rng.integers(len(pool)))]) if pool is not None else int(rng.integers(n))
        qi = (pi + 1 + int(rng.integers(n - 1))) % n
        aerial = bool(self.aerial[pi])
        if aerial and len(self.aerial_idx) > 1 and rng.random() < cfg.aerial.donor_p:
            qi = int(rng.choice(self.aerial_idx[self.aerial_idx != pi]))
        ent, dent = self.bank.get(pi), self.bank.get(qi)
        h, w = ent["img"].shape[:2]
        win = _window(rng, h, w, cfg.crop, cfg.scale_range)
        dh, dw = dent["img"].shape[:2]
        dwin = _window(rng, dh, dw, win[2] if win[2] <= min(dh, dw) else min(dh, dw), (1.0, 1.0))
        c = cfg.crop
        orig = _crop(ent["img"], win, c)
        rts = sorted(k for k in ent if k.startswith("rt"))
        lats = sorted(k for k in ent if k.startswith("lat") and not k.startswith("latmask"))
        building = aerial and rng.random() < cfg.aerial.struct_p
        # with land-cover change on, an aerial "none" stays one (new ground, nothing labelled: the purest
        # lesson of the family); without it the earlier streams are kept
        if building and kind == "none" and cfg.aerial.landcover_p > 0:
            building = False
        if building:
            kind = str(rng.choice(["splice", "remove", "attribute"], p=[0.65, 0.2, 0.15]))
        if kind == "latent" and not lats:
            kind = "splice"
        use_vae = bool(rts) and want_vae
        rt_key = str(rng.choice(rts)) if use_vae else None
        # the unlabelled whole-image changes are drawn before the edit: an inpainting label depends on them
        illum_p = cfg.perturb.illum.aerial_p if aerial else cfg.perturb.illum.p
        chain = P.sample_illum(rng, cfg.perturb.illum, illum_p, None) + P.sample(rng, cfg.perturb)
        if kind == "inpaint" and rng.random() < cfg.inpaint_composite_p:
            # pasted back into the untouched photo, as inpainting pipelines do
            use_vae, rt_key, chain = False, None, []
        # drawn only when asked for, so a config without it keeps its stream (and its validation set)
        online = (use_vae and kind != "latent" and cfg.perturb.vae_online > 0
                  and rng.random() < cfg.perturb.vae_online)
        base = _crop(ent[rt_key], win, c) if rt_key and not online else orig
        donor_full = dent[rt_key] if rt_key and rt_key in dent and not online else dent["img"]
        donor = _crop(donor_full, (dwin[0], dwin[1], dwin[2]), c)
        meta = {"photo": pi, "donor": qi, "vae": rt_key, "aerial": aerial}
        if online:
            meta["vae_online"] = True
        return _Draw(kind=kind, ent=ent, win=win, orig=orig, base=base, donor=donor, lats=lats, building=building,
                     rt_key=rt_key, chain=chain, regenerated=use_vae or bool(chain), meta=meta, online_vae=online)

    def _edit(self, rng: np.random.Generator, d: _Draw
              ) -> tuple[str, np.ndarray, np.ndarray, str | None, str]:
        """Up to four tries at a visible edit; a kind that cannot make one here falls back to a splice.
        Returns (kind, edited, mask, edit_type, shape)."""
        cfg, c, kind = self.cfg, self.cfg.crop, d.kind
        edit_type: str | None = None
        shape = ""
        for attempt in range(4):
            if kind == "none":
                return kind, d.base, np.zeros((c, c), bool), None, shape
            if kind == "global":
                params = E.sample_global(rng, c, c)
                edited = E.apply_global(d.base, d.donor, np.ones((c, c), bool), params)
                d.meta["params"] = params
                return kind, edited, np.full((c, c), cfg.global_label == "full"), "global", "full"
            if kind == "latent":
                edited, mask, visible = self._latent(rng, d)
                edit_type, shape = "replace", "latent"
                if visible:
                    return kind, edited, mask, edit_type, shape
                kind = "splice"  # latent region fell outside the crop or changed nothing: use a splice
                continue
            if kind == "inpaint":
                edited, mask, edit_type, shape, info = self._inpaint(rng, d.ent, d.win, d.base, d.donor, d.rt_key,
                                                                     d.orig, d.regenerated)
                d.meta["inpaint"] = info
                if mask.any() and _change(d.base, edited, mask) >= cfg.min_change * 0.75:
                    return kind, edited, mask, edit_type, shape
                kind = "splice"
                continue
            edited, mask, edit_type, shape = self._region_edit(rng, d, kind)
            if _change(d.base, edited, mask) >= cfg.min_change:
                return kind, edited, mask, edit_type, shape
            if attempt == 2:
                kind = "splice"
        return kind, edited, mask, edit_type, shape

    def _latent(self, rng: np.random.Generator, d: _Draw) -> tuple[np.ndarray, np.ndarray, bool]:
        """A cached latent-space edit, whole (the decoder re-made every pixel) or blended back into the crop;
        False when its region left the crop or it changed nothing visible."""
        cfg, c = self.cfg, self.cfg.crop
        k = str(rng.choice(d.lats))
        lat = _crop(d.ent[k], d.win, c)
        mask = _crop(d.ent["latmask" + k[3:]], d.win, c, is_mask=True) > 127
        whole = rng.random() < cfg.latent_whole_p
        edited = lat if whole else E.blend(d.base, lat, E.feather(mask, float(rng.uniform(0.5, 3))))
        d.meta["latent"] = {"key": k, "whole": bool(whole)}
        reference = _crop(d.ent["rt100"], d.win, c) if whole and "rt100" in d.ent else d.base
        return edited, mask, bool(mask.sum() >= 16 and _change(reference, edited, mask) >= cfg.min_change)

    def _region_edit(self, rng: np.random.Generator, d: _Draw, kind: str
                     ) -> tuple[np.ndarray, np.ndarray, str | None, str]:
        """remove / splice / attribute / copy-move on a drawn region (building-like ones on aerial tiles)."""
        cfg, c = self.cfg, self.cfg.crop
        if d.building:
            area = float(np.exp(rng.uniform(np.log(0.003), np.log(0.12))))
            mask, shape = self._mask(rng, c, BUILDING_SHAPES, d.orig, area=area, count=int(rng.integers(1, 6)))
        elif kind == "copymove":
            small = rng.random() < 0.6
            area = M.sample_area(rng, *((cfg.small_range) if small else (0.005, 0.08)))
            mask, shape = self._mask(rng, c, OBJECT_SHAPES, d.orig, area=area)
        else:
            mask, shape = self._mask(rng, c, cfg.shapes, d.orig)
        params = E.SAMPLERS[kind](rng, c, c)
        if d.building and kind == "splice":
            params["copy_move"], params["feather"] = False, float(rng.uniform(0, 0.8))
        if d.building and kind == "splice" and cfg.aerial.roof_p > 0 and rng.random() < cfg.aerial.roof_p:
            params = E.sample_roof(rng, c, c)
            edited = E.apply_roof(d.base, mask, params)
            d.meta["params"] = params
            return edited, mask, "add", shape
        edited = E.APPLIERS[kind](d.base, d.donor, mask, params)
        d.meta["params"] = params
        return edited, mask, _edit_type(kind, params, rng), shape

    def _finish(self, rng: np.random.Generator, d: _Draw, kind: str, edited: np.ndarray, mask: np.ndarray,
                edit_type: str | None) -> SynthSample:
        """Regenerate the edited image (unlabelled), measure the noise target, flip half the samples."""
        cfg, c = self.cfg, self.cfg.crop
        chain = [(n, P.with_donor(p, d.donor) if n == "transfer" else p) for n, p in d.chain]
        d.meta["perturb"] = [name for name, _ in chain] + ([f"vae:{d.rt_key}"] if d.rt_key else [])
        clean_base = _crop(d.ent["rt100"], d.win, c) if (kind == "latent" and d.meta["latent"]["whole"]
                                                        and "rt100" in d.ent) else d.base
        landcover = None
        if (d.meta["aerial"] and cfg.aerial.landcover_p > 0 and kind not in ("global", "inpaint")
                and rng.random() < cfg.aerial.landcover_p):
            landcover = self._landcover(rng, d, mask)
            edited, clean_base = E.blend(edited, *landcover), E.blend(clean_base, *landcover)
        if d.online_vae and d.rt_key:
            # what a regenerator does: the edited crop, edit included, through the VAE; the photo's cached
            # roundtrip stands for the untouched crop's (the noise target)
            edited = self._roundtrip(edited, roundtrip_scale(d.rt_key))
            clean_base = _crop(d.ent[d.rt_key], d.win, c)
            clean_base = E.blend(clean_base, *landcover) if landcover is not None else clean_base
        edited = P.apply(edited, chain)
        pert_base = P.apply(clean_base, chain) if chain else clean_base
        orig = d.orig
        noise = np.abs(pert_base.astype(np.float32) - orig.astype(np.float32)).mean(2) / 255.0
        if cfg.noise_blur > 0:
            noise = cv2.GaussianBlur(noise, (0, 0), cfg.noise_blur)
        if rng.random() < 0.5:
            orig, edited, mask, noise = orig[:, ::-1], edited[:, ::-1], mask[:, ::-1], noise[:, ::-1]
            d.meta["flipped"] = True
        return SynthSample(np.ascontiguousarray(orig), np.ascontiguousarray(edited), np.ascontiguousarray(mask),
                           kind, edit_type, np.ascontiguousarray(noise, dtype=np.float32), d.meta)

    def _landcover(self, rng: np.random.Generator, d: _Draw, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Land-cover change between two dates (a field ploughed, a lot cleared, a road laid, trees in
        leaf): large irregular regions of the crop take the texture of another aerial tile. Bi-temporal
        change labels (LEVIR-CD, DSIFN-CD) mark the buildings and leave such change out, and a model shown
        only smooth relighting as unlabelled marked whole real tiles as changed. The label's own pixels
        (and a 2 px ring) keep the edit: the new ground goes around a building, never over it."""
        c = self.cfg.crop
        pool = self.aerial_idx[self.aerial_idx != d.meta["photo"]]
        li = int(rng.choice(pool)) if len(pool) else int(d.meta["photo"])
        ent = self.bank.get(li)
        h, w = ent["img"].shape[:2]
        texture = np.ascontiguousarray(np.rot90(_crop(ent["img"], _window(rng, h, w, c, self.cfg.scale_range), c),
                                                int(rng.integers(4))))
        area = float(rng.uniform(*self.cfg.aerial.landcover_area))
        region, _ = M.shaped_mask(rng, c, c, LANDCOVER_SHAPES, area, int(rng.integers(1, 4)), image=d.orig)
        keep = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        alpha = E.feather(region & ~keep, float(rng.uniform(0.5, 4.0)))
        alpha[keep] = 0.0
        d.meta["landcover"] = {"photo": li, "area": round(float((alpha > 0.5).mean()), 4)}
        return texture, alpha

    def _inpaint(self, rng, ent, win, base, donor, rt_key, orig, regenerated: bool):
        """Generative inpainting: the editor is handed a region R, draws / removes / changes an object O
        inside it and re-synthesises the rest of R with faint changes.

        The label follows METHOD §10: on a composite (nothing else touches the image) every re-made pixel
        is recoverable, and the label is R, as in the reference labels of inpainting benchmarks; when a
        whole-image change follows (VAE roundtrip, a regenerator, relighting), R's faint changes sink
        under it and only the semantic core is recoverable: the label is O. (Labelling R there taught the
        model to dilate every edit under regeneration: 2-4x the true area on real removals.)"""
        c = self.cfg.crop
        margin = self.cfg.inpaint_margin_p > 0 and rng.random() < self.cfg.inpaint_margin_p
        if margin:
            region, obj, shape = self._margin_region(rng, c, orig)
        else:
            region, obj, shape = self._object_in_region(rng, c, orig)
        others = [k for k in ent if k.startswith("rt") and k != rt_key]
        rendered = _crop(ent[str(rng.choice(others))], win, c) if others else None
        rp = E.sample_regen(rng)
        regen = E.regenerate(base, rendered, rp)
        sub = str(rng.choice(["remove", "splice", "attribute"], p=[0.4, 0.4, 0.2]))
        params = E.SAMPLERS[sub](rng, c, c)
        if margin and sub == "remove" and self.cfg.inpaint_margin_fill_p > 0 \
                and rng.random() < self.cfg.inpaint_margin_fill_p:
            painted, shape = E.APPLIERS[sub](base, donor, region, params), shape + "+fill"
        else:
            painted = E.APPLIERS[sub](regen, donor, obj, params)
        edited = E.blend(base, painted, E.feather(region, rp["feather"]))
        label = obj if regenerated and not margin else region
        return edited, label, _edit_type(sub, params, rng), shape, {
            "object": sub, "render": rp["render"], "offset": rp["offset"], "margin": margin,
            "label": "object" if regenerated and not margin else "region"}

    def _object_in_region(self, rng, c: int, orig: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """A region brushed by hand (1-50 % of the crop) and the object, 10-60 % of it, inside."""
        area = float(np.exp(rng.uniform(np.log(0.01), np.log(0.5))))
        region, shape = self._mask(rng, c, REGION_SHAPES, orig, area=area, count=1)
        inner = cv2.erode(region.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        inner = inner if inner.sum() >= 16 else region
        obj_area = float(region.mean() * rng.uniform(0.1, 0.6))
        obj = np.zeros_like(region)
        for _ in range(4):
            cand, _ = M.shaped_mask(rng, c, c, OBJECT_SHAPES, obj_area, 1, image=orig)
            ys, xs = np.nonzero(inner)
            cy, cx = ys.mean(), xs.mean()
            oy, ox = np.nonzero(cand)
            if len(oy):
                cand = np.roll(cand, (int(cy - oy.mean()), int(cx - ox.mean())), axis=(0, 1))
            obj = cand & inner
            if obj.sum() >= 8:
                break
        if obj.sum() < 8:
            obj = inner
        return region, obj, shape

    def _margin_region(self, rng, c: int, orig: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """An object (any size the mix draws, tiny ones included) and the region an object-removal tool
        hands the editor: the object dilated by a margin of 1-4 % of the crop, or (`inpaint_margin_box_p`) its
        bounding box grown by that margin."""
        obj, shape = self._mask(rng, c, OBJECT_SHAPES, orig)
        m = max(1, round(c * float(rng.uniform(0.01, 0.04))))
        if self.cfg.inpaint_margin_box_p > 0 and rng.random() < self.cfg.inpaint_margin_box_p and obj.any():
            return _grown_boxes(obj, m), obj, shape + "+box"
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * m + 1, 2 * m + 1))
        region = cv2.dilate(obj.astype(np.uint8), disk).astype(bool)
        return region, obj, shape + "+margin"


def _grown_boxes(obj: np.ndarray, m: int) -> np.ndarray:
    """Each connected part of `obj` in its bounding box grown by `m` px (clipped to the crop): the rectangle a
    person draws around an object, or the patch they paste over it."""
    h, w = obj.shape
    n, _, stats, _ = cv2.connectedComponentsWithStats(obj.astype(np.uint8), connectivity=8)
    region = np.zeros_like(obj, dtype=bool)
    for x, y, bw, bh, _ in stats[1:n]:
        region[max(0, y - m):min(h, y + bh + m), max(0, x - m):min(w, x + bw + m)] = True
    return region


def _change(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if not mask.any():
        return 0.0
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(2)[mask].mean())
