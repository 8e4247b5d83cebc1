"""User-named files are opened only if they are regular files, in the open itself (`sigma.regular.open_regular`).

Each reader checked `is_file()` and then `open()`ed the path: a FIFO swapped in between the two hung the `open()` for
ever. The swap is simulated by making `is_file()` answer True for the FIFO (the check passed, then the path changed);
each test is bounded by a timeout, so the old code fails instead of hanging the suite."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sigma.config.loader import read_yaml
from sigma.errors import ConfigError, ImageError, InputError
from sigma.io.corpora.manifest import ManifestCorpus
from sigma.io.images import read_file_bytes
from sigma.io.pairs_jsonl import read_set
from sigma.regular import NotRegularFile, open_regular

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def raced(monkeypatch):
    """`is_file()` says True for every path, as it did for the file that stood there a moment before the swap."""
    monkeypatch.setattr(Path, "is_file", lambda self: True)


def test_open_regular_reads_a_file_and_refuses_the_rest(tmp_path):
    (tmp_path / "a.txt").write_text("x\ny\n")
    with open_regular(tmp_path / "a.txt", "r", newline="") as handle:
        assert handle.read() == "x\ny\n"
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "fifo", tmp_path, Path("/dev/null")):
        with pytest.raises(NotRegularFile):
            open_regular(path)
    with pytest.raises(ValueError):
        open_regular(tmp_path / "a.txt", "r+")


def test_image_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path, raced):
    os.mkfifo(tmp_path / "a.png")
    with pytest.raises(ImageError) as err:
        read_file_bytes(tmp_path / "a.png", 1000)
    assert err.value.code == "file_not_found" and "not a regular file" in str(err.value)


def test_config_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path, raced):
    os.mkfifo(tmp_path / "cfg.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "cfg.yaml")


def test_pairs_jsonl_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "pairs.jsonl")          # read_set is called on a set find_sets found a moment before
    with pytest.raises(InputError) as err:
        list(read_set(tmp_path))
    assert err.value.code == "no_pairs"


def test_manifest_shard_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "original": "a.png", "edited": "b.png"}\n')
    corpus = ManifestCorpus(manifest, {}, 10)
    shards = corpus.plan()
    manifest.unlink()
    os.mkfifo(manifest)                           # between the plan and the read of its shard
    with pytest.raises(InputError) as err:
        list(corpus.read(shards[0]))
    assert err.value.code == "no_pairs"
