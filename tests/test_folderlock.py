"""`sigma.folderlock.hold_folder`: one process per output folder, and no trace of a run that wrote nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

from sigma.errors import InputError
from sigma.folderlock import hold_folder


@pytest.mark.parametrize("marker", [True, False])
def test_a_folder_the_hold_made_is_removed_only_when_nothing_was_written(tmp_path, marker):
    empty, used = tmp_path / "empty", tmp_path / "used"
    with hold_folder(empty, marker=marker):
        assert empty.is_dir()
    assert not empty.exists()
    with hold_folder(used, marker=marker):
        (used / "run.json").write_text("{}")
    assert (used / "run.json").is_file()
    before = tmp_path / "before"
    before.mkdir()
    with hold_folder(before, marker=marker):
        pass
    assert before.is_dir()                                   # a folder it did not make stays


@pytest.mark.parametrize("marker", [True, False])
def test_a_refused_hold_never_removes_the_holders_folder(tmp_path, monkeypatch, marker):
    """Two processes that both saw no folder (the holder's mkdir came between the other's check and its
    own): the refused one must not take the holder's fresh, still empty folder away."""
    out = tmp_path / "out"
    with hold_folder(out, marker=marker):
        real_exists = Path.exists
        monkeypatch.setattr(Path, "exists", lambda self: False if self == out else real_exists(self))
        with pytest.raises(InputError) as refused, hold_folder(out, marker=marker):
            pass
        monkeypatch.undo()
        assert refused.value.code == "run_locked"
        assert out.is_dir() and (out / ".lock").exists() == marker
    assert not out.exists()                                 # the holder made it and wrote nothing
