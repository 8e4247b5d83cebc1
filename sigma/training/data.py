"""Training batches: synthetic pairs (plus optional pairs.jsonl folders), indexed so the stream is a pure
function of (seed, sample index). A resumed run therefore sees exactly the batches it would have seen."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sigma.data.synth.engine import SynthEngine, SynthSample
from sigma.models.refine import EDIT_TYPES

from . import world
from .config import SourceConfig, TrainConfig, effective_synth


class FolderSource:
    """Random crops from a pairs.jsonl folder (e.g. a user's own editor output, labelled or not)."""

    def __init__(self, cfg: SourceConfig, crop: int):
        from sigma.io.pairs_jsonl import find_sets, read_set

        self.cfg, self.crop = cfg, crop
        self.records = [r for s in find_sets(cfg.path) for r in read_set(s)]

    def sample(self, rng: np.random.Generator) -> SynthSample:
        from sigma.io.images import read_image, read_mask

        rec = self.records[int(rng.integers(len(self.records)))]
        orig = read_image(rec.original, root=rec.root).rgb      # checked again as opened: a link swapped in since
        edit = read_image(rec.edited, root=rec.root).rgb
        if edit.shape != orig.shape:
            edit = cv2.resize(edit, (orig.shape[1], orig.shape[0]), interpolation=cv2.INTER_AREA)
        labelled = self.cfg.labelled and rec.mask is not None and rec.mask.is_file()
        mask = read_mask(rec.mask, root=rec.root) if labelled else np.zeros(orig.shape[:2], bool)
        c = self.crop
        h, w = orig.shape[:2]
        s = max(c / min(h, w), min(1.0, 2 * c / max(h, w)))  # bring the short side near the crop size
        if abs(s - 1) > 1e-3:
            size = (max(c, round(w * s)), max(c, round(h * s)))
            orig, edit = (cv2.resize(orig, size, interpolation=cv2.INTER_AREA),
                          cv2.resize(edit, size, interpolation=cv2.INTER_AREA))
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        h, w = orig.shape[:2]
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        sl = (slice(y, y + c), slice(x, x + c))
        return SynthSample(orig[sl].copy(), edit[sl].copy(), mask[sl].copy(), "folder", rec.edit_type,
                           np.zeros((c, c), np.float32), {"labelled": self.cfg.labelled, "id": rec.pair_id})


class TrainDataset(Dataset):
    def __init__(self, cfg: TrainConfig, seed: int | None = None, withhold_latent: bool | None = None):
        self.cfg = cfg
        self.seed = cfg.seed if seed is None else seed
        self.engine = SynthEngine(effective_synth(cfg), seed=self.seed)
        self.sources = [FolderSource(s, cfg.data.crop) for s in cfg.sources]
        w = np.array([1.0] + [s.weight for s in cfg.sources], np.float64)
        self.source_p = w / w.sum()
        if withhold_latent is None:
            withhold_latent = cfg.ema.enabled and cfg.ema.withhold_latent_labels
        self.withhold_latent = withhold_latent

    def __len__(self) -> int:  # virtual: indices come from the sampler
        return 1 << 40

    def sample(self, index: int) -> tuple[SynthSample, bool]:
        src = 0
        if len(self.sources):
            src = int(np.random.default_rng([self.seed, index, 7]).choice(len(self.source_p), p=self.source_p))
        if src == 0:
            s = self.engine.sample(index)
            labelled = not (self.withhold_latent and s.kind == "latent")
        else:
            s = self.sources[src - 1].sample(np.random.default_rng([self.seed, index, 11]))
            labelled = bool(s.meta["labelled"])
        return s, labelled

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s, labelled = self.sample(int(index))
        et = s.edit_type if s.edit_type in EDIT_TYPES else "none"
        return {
            "original": torch.from_numpy(s.original).permute(2, 0, 1),
            "edited": torch.from_numpy(s.edited).permute(2, 0, 1),
            "mask": torch.from_numpy(s.mask)[None].float(),
            "noise": torch.from_numpy(s.noise)[None],
            "labelled": torch.tensor(labelled),
            "edit_type": torch.tensor(EDIT_TYPES.index(et)),
            "index": torch.tensor(int(index)),
        }


class StepSampler(Sampler[int]):
    """Indices for steps [start, end): step t, rank r takes t*B*W + r*B + [0, B)."""

    def __init__(self, start_step: int, end_step: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.end, self.batch, self.rank, self.world = start_step, end_step, batch, rank, world

    def __iter__(self) -> Iterator[int]:
        for t in range(self.start, self.end):
            base = t * self.batch * self.world + self.rank * self.batch
            yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return (self.end - self.start) * self.batch


def to_float(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    out["original"] = out["original"].float().div_(255.0)
    out["edited"] = out["edited"].float().div_(255.0)
    return out


def fixed_val_set(cfg: TrainConfig, size: int) -> list[SynthSample]:
    """Synthetic validation pairs from their own seed (labels kept, latent edits included)."""
    ds = TrainDataset(cfg.model_copy(update={"sources": []}), seed=cfg.eval.val_seed, withhold_latent=False)
    return [ds.sample(i)[0] for i in range(size)]


def freeze_cache_index(cfg: TrainConfig, run_dir: Path, stop: object = None) -> TrainConfig:
    """Snapshot the cache's index.json into the run folder and point the config at it, so a cache still
    being built (new photos land every few seconds) cannot change the run's stream; a later run picks up
    the grown cache. Rank 0 writes; other ranks wait for the file, until `stop` (the run's noted SIGTERM) is
    truthy: a rank 0 refused before it wrote the file (`run_locked`) left them polling while torchrun's SIGTERM
    was only noted, until its SIGKILL 30 s later."""
    import time

    from sigma.data.synth.engine import cached_files, read_cache_index
    from sigma.errors import InputError, Stopped

    if not cfg.data.cache or cfg.data.cache_index:
        return cfg
    src = Path(cfg.data.cache) / "index.json"
    if not src.is_file():
        return cfg   # the engine raises the clear error
    target = (run_dir / "cache_index.json").absolute()    # read from anywhere, not only from the starting folder
    if world.rank() == 0:
        try:        # the bytes checked are the bytes copied: a FIFO put there after the check held the start
            raw, data = read_cache_index(src)
        except InputError:
            return cfg   # a damaged index (or no regular file): the engine raises the clear error
        cached_files(data, src, src.parent)   # an entry outside the cache: refused now, before the model is built
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(raw)
        tmp.replace(target)
    else:
        deadline = time.time() + 120
        while not target.is_file() and time.time() < deadline:
            if stop:        # 143 and one line, as a SIGTERM before the first step (nothing was run)
                raise Stopped(f"terminated while waiting for rank 0's {target.name}: no step was run", 143)
            time.sleep(0.2)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache_index": str(target)})})


def refuse_foreign_val_dir(folder: Path) -> None:
    """ConfigError unless `folder` is absent or an empty folder: the only places the fixed validation set may be
    written. Its writer renames a finished `.tmp` folder into place, so a folder there with files but no regular
    pairs.jsonl is never one of ours: it was removed whole (`shutil.rmtree`) and replaced — a user's folder named
    by mistake, or a set whose pairs.jsonl is a FIFO, a link to /dev/zero or a folder, lost every file it held."""
    from sigma.errors import ConfigError
    from sigma.io.unfinished import refuse_unfinished

    if folder.is_dir():
        refuse_unfinished(folder)    # a `sigma synth --out` writing it: said so, not as a folder to empty
    manifest = folder / "pairs.jsonl"
    if os.path.lexists(manifest) and not manifest.is_file():
        raise ConfigError(f"eval.val_dir {folder}: its pairs.jsonl is not a regular file (a FIFO, a device, a "
                          "folder or a broken link); a validation set's manifest must be a file")
    if os.path.lexists(folder) and not folder.is_dir():
        raise ConfigError(f"eval.val_dir {folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        what = "a validation set already (its pairs.jsonl)" if manifest.is_file() else "files but no pairs.jsonl"
        raise ConfigError(f"eval.val_dir {folder}: holds {what}; the fixed validation set is written only into a "
                          "new or empty folder (name another eval.val_dir, or empty this one)")


def write_val_dir(cfg: TrainConfig, folder: Path, size: int) -> None:
    """The fixed synthetic validation set, written once as a pairs.jsonl folder (also readable by
    `sigma eval --data`). Drawn from the cached photos only, so it has every family (VAE variants, latent
    edits) whatever the state of the cache build when it is written. Durable before it is named: every file of
    the `.tmp` folder fsynced, the folder itself, then the rename and `folder`'s parent. Before, nothing was
    synced: a power cut after the rename could leave a set whose pairs.jsonl names empty or cut-short PNGs, which
    every later run of that config would score against (the set is written once and then only read)."""
    from sigma.config.loader import resolved_yaml
    from sigma.data.synth.engine import SynthEngine
    from sigma.data.synth.pairs_out import write_synth_pair
    from sigma.tempfiles import sync_folder, write_synced

    refuse_foreign_val_dir(folder)
    data = effective_synth(cfg).model_copy(update={"photos": ""} if cfg.data.cache else {})
    engine = SynthEngine(data, seed=cfg.eval.val_seed)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(size):
        s = engine.sample(i)
        lines.append(write_synth_pair(s, tmp, f"val{cfg.eval.val_seed}_{i:05d}", f"synthetic {s.kind}",
                                      f"sigma synth seed={cfg.eval.val_seed} index={i}", durable=True))
    write_synced(tmp / "pairs.jsonl", ("\n".join(lines) + "\n").encode())
    write_synced(tmp / "synth_config.yaml", resolved_yaml(data).encode("utf-8"))
    sync_folder(tmp)
    refuse_foreign_val_dir(folder)      # again: a file may have landed there while the set was drawn
    tmp.replace(folder)                 # over an empty folder, or none
    sync_folder(folder.parent)


def load_val_dir(folder: Path) -> list[SynthSample]:
    """A pairs.jsonl folder as SynthSamples (kind read back from the synth metadata when present)."""
    from sigma.errors import InputError
    from sigma.io.confine import Confinement
    from sigma.io.images import read_image, read_mask
    from sigma.io.pairs_jsonl import inside_set
    from sigma.io.unfinished import refuse_unfinished
    from sigma.text import loads

    refuse_unfinished(folder)       # a `sigma synth --out` set begun (again) since the run's start
    out = []
    manifest = folder / "pairs.jsonl"
    # its files lie inside it, as every pairs.jsonl reader's (`sigma eval`, `sources`): a record naming `../x`, an
    # absolute path or a link out of the folder was read and scored as validation (path_outside_root now)
    confinement = Confinement(folder)
    for line_no, line in enumerate(manifest.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:   # a damaged set is said at its line before the run starts, not as a JSONDecodeError traceback
            rec = loads(line)
        except ValueError as exc:
            raise InputError(f"{manifest}:{line_no}: not a JSON record ({exc})", code="bad_manifest") from exc
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) and rec[k]
                                                for k in ("id", "original", "edited", "mask")):
            raise InputError(f"{manifest}:{line_no}: a validation record needs text id, original, edited and mask",
                             code="bad_manifest")
        paths = {k: inside_set(folder, confinement, k, rec[k], f"{manifest}:{line_no}")
                 for k in ("original", "edited", "mask")}
        root = confinement.real_root
        orig = read_image(paths["original"], root=root).rgb
        edit = read_image(paths["edited"], root=root).rgb
        mask = read_mask(paths["mask"], root=root)
        meta = rec.get("synth") or {}
        kind = meta.get("kind", "folder") if isinstance(meta, dict) else "folder"
        out.append(SynthSample(orig, edit, mask, kind, rec.get("edit_type"),
                               np.zeros(mask.shape, np.float32), {**(meta if isinstance(meta, dict) else {}),
                                                                  "id": rec["id"]}))
    return out
