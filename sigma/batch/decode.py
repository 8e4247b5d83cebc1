"""Runs in the decode worker processes: encoded bytes (or paths) → a checked `Pair`, hashes and sizes.

Kept free of torch and of the annotator so a spawned worker starts in well under a second.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sigma.config.schema import IOConfig
from sigma.errors import ImageError, InputError, SigmaError, memory_refused
from sigma.io.corpora.base import SourceItem, resolved_under, text_value
from sigma.io.images import decode_mask, read_file_bytes
from sigma.io.pairs import pair_from_bytes
from sigma.text import escape_name, escape_surrogates, find_surrogate, replace_surrogates, shown_path
from sigma.types import Pair


@dataclass
class Decoded:
    item: SourceItem                       # bytes dropped: only the description travels back
    pair: Pair | None = None
    gt: np.ndarray | None = None           # bool ground truth at the original's size
    meta: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str] | None = None


def confined(path: str, root: str | None) -> str:
    """`path` resolved must lie under `root` (a run submitted through the API: the corpus is untrusted, and a
    manifest line or a symlink naming /etc/passwd must not be read). Checked before anything touches the
    file — not even a stat, so neither its existence nor a FIFO's blocking open can leak out."""
    if root is None:
        return path
    real = resolved_under(path, os.path.realpath(root))
    if real is None:
        raise InputError("the corpus names a file outside the batch root; refused, nothing was read",
                         code="path_outside_root")
    return real


def _read(path: str, max_bytes: int, root: str | None = None) -> bytes:
    """A 6000-character path (ENAMETOOLONG) was a `decode_failed` OSError quoting all of it, and a file that
    grew after its stat, or a /proc file of size 0, was read whole. A confined run checks again what was opened
    (`read_file_bytes(root=...)`): a folder above the file swapped for a link after `confined` resolved it."""
    return read_file_bytes(confined(path, root), max_bytes, None if root is None else os.path.realpath(root))


def source_bytes(data: bytes | None, path: str | None, max_bytes: int, root: str | None = None) -> bytes:
    """An item's bytes as the corpus holds them, or its file read under the batch root and the size limit:
    the one way anything re-reads a corpus file (the batch, the exports)."""
    if data is not None:
        return data
    if not path:
        raise ImageError("the corpus gave neither bytes nor a path", code="file_not_found")
    return _read(path, max_bytes, root)


def writable(item: SourceItem) -> SourceItem:
    """The item with text that a row can hold. A lone surrogate (a JSON `"\\ud800"` in a manifest, a file
    name that is not UTF-8) cannot be encoded: it made the shard writer fail and the whole run stop. Names
    (id, source, subset, error message) get it escaped, so two ids stay two; the instruction and edit type
    get U+FFFD, the text a parser can read. Names are escaped by `escape_name` (a name written `\\udcff` in plain
    text stays apart from the byte 0xFF), which is no idempotent step: an item is made writable once."""
    changes: dict[str, Any] = {}
    for name in ("pair_id", "source", "subset"):
        value = getattr(item, name)
        if isinstance(value, str) and (escaped := escape_name(value)) != value:
            changes[name] = escaped
    for name in ("instruction", "edit_type"):
        value = getattr(item, name)
        if value is not None and not isinstance(value, str):    # a reader (a plugin's) that gave a dict or a number
            value = changes[name] = text_value(value)
        if isinstance(value, str) and find_surrogate(value):
            changes[name] = replace_surrogates(value)
    if item.error and find_surrogate(item.error[1]):
        changes["error"] = (item.error[0], escape_surrogates(item.error[1]))
    return replace(item, **changes) if changes else item


def decode_one(item: SourceItem, io_config: IOConfig, ground_truth: bool = True, root: str | None = None,
               made_writable: bool = False) -> Decoded:
    """`item` (`made_writable`: already passed through `writable`, whose names must not be escaped twice) decoded."""
    decoded = _decode_one(item if made_writable else writable(item), io_config, ground_truth, root)
    if decoded.error and find_surrogate(decoded.error[1]):      # a path with a surrogate, quoted by an error
        decoded.error = (decoded.error[0], escape_surrogates(decoded.error[1]))
    if find_surrogate(decoded.meta):
        decoded.meta = {k: escape_surrogates(v) if isinstance(v, str) else v for k, v in decoded.meta.items()}
    return decoded


def image_names(item: SourceItem) -> tuple[str, str]:
    """What the messages of a pair call its two images: the file each was read from, else its role. A folder
    pair's `source` is its original's path, so `source: edited: empty file` read as if the original were bad."""
    return tuple(shown_path(path) if data is None and path else role   # type: ignore[return-value]
                 for role, data, path in (("original", item.original, item.original_path),
                                          ("edited", item.edited, item.edited_path)))


def _located(message: str, item: SourceItem) -> str:
    """`message` as a row's error: prefixed with the row's `source` unless it already names that or one of the
    pair's files (the bad one: `image_names`), so the name at its start is always the file or row at fault."""
    named = [item.source, *(name for name in image_names(item) if name not in ("original", "edited"))]
    return message if any(name and name in message for name in named) else f"{item.source}: {message}"


def _decode_one(item: SourceItem, io_config: IOConfig, ground_truth: bool, root: str | None) -> Decoded:
    """A pair's own faults become its error row; memory the system refused does not (a MemoryError; the image
    reader says its own as `OutOfMemoryError`, one too): it is raised, so the shard fails unpublished and
    `--resume` with more memory decodes the pair. It was the pair's `image_unreadable` row (`decode_failed` for the
    pair's own MemoryError, a `gt_note` for its mask): a transient shortage made a good pair bad for good, since
    `--resume` never redoes a published shard."""
    light = replace(item, original=None, edited=None, mask=None)
    if item.error:
        return Decoded(light, error=item.error)
    meta: dict[str, Any] = {}
    try:
        limit = io_config.limits.max_bytes
        original = source_bytes(item.original, item.original_path, limit, root)
        edited = source_bytes(item.edited, item.edited_path, limit, root)
        meta["original_sha256"] = hashlib.sha256(original).hexdigest()
        meta["edited_sha256"] = hashlib.sha256(edited).hexdigest()
        pair = pair_from_bytes(original, edited, item.instruction, io_config, pair_id=item.pair_id,
                               names=image_names(item))
    except Exception as exc:     # a decoder bug must cost one pair, not the run
        if memory_refused(exc):   # the machine's shortage (OutOfMemoryError, OpenCV's): the shard fails unpublished
            raise
        if isinstance(exc, SigmaError):
            return Decoded(light, meta=meta, error=(exc.code, _located(exc.message, item)))
        return Decoded(light, meta=meta, error=("decode_failed", f"{item.source}: {type(exc).__name__}: {exc}"))
    gt = None
    if ground_truth and (item.mask is not None or item.mask_path):
        try:
            data = source_bytes(item.mask, item.mask_path, io_config.limits.max_bytes, root)
            mask = decode_mask(data, "mask", io_config.limits)     # as `sigma eval` reads it (alpha on black)
            if mask.shape == pair.size:
                gt = mask
            else:
                meta["gt_note"] = f"ground truth {mask.shape} differs from the pair's {pair.size}: not scored"
        except MemoryError:
            raise
        except SigmaError as exc:
            meta["gt_note"] = f"ground truth unreadable: [{exc.code}] {exc.message}"
        except Exception as exc:  # noqa: BLE001 - as above: costs the ground truth, not the run
            meta["gt_note"] = f"ground truth unreadable: {type(exc).__name__}: {exc}"
    return Decoded(light, pair=pair, gt=gt, meta=meta)


def decode_items(items: list[SourceItem], io_config: dict[str, Any], ground_truth: bool = True,
                 root: str | None = None) -> list[Decoded]:
    cfg = IOConfig.model_validate(io_config)
    return [decode_one(item, cfg, ground_truth, root) for item in items]
