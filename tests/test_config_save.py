"""`save_resolved` with several writers of one folder's config.yaml at once, and with a write that fails."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from sigma.config import save_resolved
from sigma.config.loader import resolved_yaml

WRITERS = 4
WRITES = 60

# Each writer puts down its own config, large enough (~12 KB) that writes overlap, many times over.
_WRITER = """
import sys
from sigma.config import save_resolved
who, folder, times = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = {"writer": who, "values": {f"key_{i}": f"{who}-{i}" * 4 for i in range(400)}}
for _ in range(times):
    save_resolved(config, folder)
"""


def _config_of(who: str) -> dict:
    return {"writer": who, "values": {f"key_{i}": f"{who}-{i}" * 4 for i in range(400)}}


def test_concurrent_writers_of_one_folder_each_install_a_whole_config(tmp_path):
    """A shared `config.yaml.tmp` let one process truncate another's temp file: a rename installed half a file, or
    found it gone (FileNotFoundError). Every read of config.yaml must be the whole config of one writer."""
    expected = {f"w{n}": _config_of(f"w{n}") for n in range(WRITERS)}
    texts = {resolved_yaml(config): who for who, config in expected.items()}     # the whole file of each writer
    target = tmp_path / "config.yaml"
    done = threading.Event()
    seen: list[str] = []
    bad: list[str] = []

    def read_while_written() -> None:
        while not done.is_set():
            try:
                text = target.read_text()
            except FileNotFoundError:
                continue
            if text in texts:
                seen.append(texts[text])
            else:
                bad.append(text[-80:])

    reader = threading.Thread(target=read_while_written)
    reader.start()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", _WRITER, who, str(tmp_path), str(WRITES)],
                                  stderr=subprocess.PIPE, text=True, env=dict(os.environ))
                 for who in expected]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    finally:
        done.set()
        reader.join()
    assert [rc for rc, _ in results] == [0] * WRITERS, [err[-400:] for _, err in results]
    assert not bad, f"{len(bad)} reads of config.yaml were not one writer's whole config: {bad[:3]}"
    assert seen, "the reader never saw a config"
    assert yaml.safe_load(target.read_text()) in expected.values()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]      # no temp file left behind


def test_concurrent_threads_of_one_process_do_not_share_a_temp_file(tmp_path):
    errors: list[BaseException] = []

    def write(who: str) -> None:
        try:
            for _ in range(WRITES):
                save_resolved(_config_of(who), tmp_path)
        except BaseException as exc:    # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"t{n}",)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) in [_config_of(f"t{n}") for n in range(WRITERS)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_failed_write_leaves_no_temp_file(tmp_path):
    """The rename fails (config.yaml is a folder here): the error is raised, and the temp file goes with it."""
    (tmp_path / "config.yaml").mkdir()
    (tmp_path / "config.yaml" / "inside").write_text("x")
    with pytest.raises(OSError):
        save_resolved({"a": 1}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_an_unwritable_config_leaves_nothing(tmp_path):
    with pytest.raises(yaml.YAMLError):
        save_resolved({"a": object()}, tmp_path)
    assert list(tmp_path.iterdir()) == []
    save_resolved({"a": 1}, tmp_path)
    assert yaml.safe_load(Path(tmp_path / "config.yaml").read_text()) == {"a": 1}
