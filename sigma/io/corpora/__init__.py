"""Streaming readers for editing corpora: folders, JSONL/CSV manifests, parquet, `save_to_disk`, WebDataset.

`open_corpus(path, format="auto")` picks the reader; every reader plans shards (`plan()`) and streams a
shard's items (`read(shard)`) as encoded bytes or paths, never decoded pixels.
"""
from __future__ import annotations

from pathlib import Path

from sigma.errors import InputError
from sigma.io.corpora.base import Corpus, Shard, SourceItem
from sigma.io.corpora.folder import FolderCorpus, looks_like_pair_folder
from sigma.io.corpora.hf_disk import SavedDatasetCorpus, is_saved_dataset
from sigma.io.corpora.manifest import ManifestCorpus, find_sets
from sigma.io.corpora.parquet import ParquetCorpus
from sigma.io.corpora.presets import PRESETS, get_preset
from sigma.io.corpora.webdataset import TAR_SUFFIXES, WebDatasetCorpus
from sigma.io.folders import refuse_unreadable_folder
from sigma.registry import Registry
from sigma.regular import kind_of

# Corpus readers by format name: `InputConfig.format` validates against this registry, so a reader a plugin
# registers (`CORPUS_READERS.register("myformat", "...")(MyCorpus)`) is usable with `--format myformat`.
CORPUS_READERS = Registry("corpus format")
for _name, _cls, _what in [
    ("folder", FolderCorpus, "a folder of <id>_original/<id>_edited files, or original/ + edited/ folders"),
    ("jsonl", ManifestCorpus, "pairs.jsonl manifests (one set, or a folder of sets)"),
    ("csv", ManifestCorpus, "a CSV manifest with original/edited columns"),
    ("parquet", ParquetCorpus, "parquet files (Hugging Face datasets' layout; presets name the columns)"),
    ("hf", SavedDatasetCorpus, "a datasets.save_to_disk folder (read with pyarrow)"),
    ("wds", WebDatasetCorpus, "WebDataset tar shards"),
]:
    CORPUS_READERS.register(_name, _what)(_cls)


def formats() -> tuple[str, ...]:
    return ("auto", *CORPUS_READERS.names())


def detect_format(path: Path) -> str:
    if not path.exists():
        raise InputError(f"{path}: input not found", code="file_not_found")
    if not path.is_file() and not path.is_dir():    # was searched as a folder: "no pairs.jsonl ... here"
        raise InputError(f"{path}: not a regular file or a folder ({kind_of(path)}); a corpus is a "
                         "file or a folder", code="not_a_regular_file")
    name = path.name.lower()
    if path.is_file():
        if name.endswith(".parquet"):
            return "parquet"
        if name.endswith((".jsonl", ".json", ".ndjson")):
            return "jsonl"
        if name.endswith((".csv", ".tsv")):
            return "csv"
        if name.endswith(TAR_SUFFIXES):
            return "wds"
        raise InputError(f"{path}: cannot tell the format from the name; pass --format", code="unknown_format")
    refuse_unreadable_folder(path, listed=False)     # mode 000: was os_error naming its state.json, or no_pairs
    if is_saved_dataset(path):
        return "hf"
    if find_sets(path):
        return "jsonl"
    if looks_like_pair_folder(path):
        return "folder"
    if next(path.rglob("*.parquet"), None) is not None:
        return "parquet"
    if any(p.name.endswith(TAR_SUFFIXES) for p in path.rglob("*")):
        return "wds"
    raise InputError(f"{path}: no pairs.jsonl, parquet, tar, save_to_disk or *_original/*_edited files here; "
                     "pass --format", code="unknown_format")


def open_corpus(path: str | Path, format: str = "auto", preset: str | None = None,
                columns: dict[str, str] | None = None, shard_size: int = 1000) -> Corpus:
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in CORPUS_READERS:
        raise InputError(f"unknown format {format!r}; use one of {', '.join(formats())}", code="unknown_format")
    if preset is not None:
        get_preset(preset)   # an unknown preset fails here, with the known names
    corpus = CORPUS_READERS.get(fmt).factory(path, dict(columns or {}), shard_size, preset)
    corpus.format = fmt
    return corpus


__all__ = ["CORPUS_READERS", "PRESETS", "Corpus", "Shard", "SourceItem", "detect_format", "formats", "get_preset",
           "open_corpus"]
