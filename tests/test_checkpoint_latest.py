"""The step a lost rank's line names (`sigma.training.ranks.rank_lost`) is the one `--resume` continues from.

`ranks` walked checkpoint.pt / checkpoint.prev.pt itself and checked only the step; `load_checkpoint` checks every
field a resume reads. Both now go through `checkpoint._read` (`latest_step` beside `load_checkpoint`), so a damaged
or partial latest checkpoint is judged the same way by both.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sigma.training.checkpoint import CKPT, PREV, latest_step, load_checkpoint
from sigma.training.ranks import rank_lost


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((4,), float(step))},
            "opt": {"state": {}, "param_groups": []}, "teacher": None, "torch_rng": torch.get_rng_state()}


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "whole": lambda p: None,
    "cut short": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "gone": lambda p: p.unlink(),
    "a fifo": _fifo,
    "no optimiser state": lambda p: torch.save({k: v for k, v in _state(6).items() if k != "opt"}, p),
    "no RNG state": lambda p: torch.save({**_state(6), "torch_rng": [1, 2]}, p),
    "no model state": lambda p: torch.save({**_state(6), "model": {"w": 1}}, p),
    "a negative step": lambda p: torch.save({**_state(6), "step": -6}, p),
    "a step that is text": lambda p: torch.save({**_state(6), "step": "6"}, p),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_latest_checkpoint_is_judged_alike_by_resume_and_by_the_rank_lost_line(tmp_path, damage):
    torch.save(_state(3), tmp_path / PREV)
    torch.save(_state(6), tmp_path / CKPT)
    DAMAGES[damage](tmp_path / CKPT)
    resumed = load_checkpoint(tmp_path)["step"]
    assert resumed == (6 if damage == "whole" else 3)
    assert latest_step(tmp_path) == resumed
    line = str(rank_lost(RuntimeError("Connection reset by peer"), tmp_path))
    assert f"the last complete checkpoint (step {resumed}) is kept" in line, line


def test_no_readable_checkpoint_is_no_step(tmp_path):
    assert latest_step(tmp_path / "elsewhere") is None and latest_step(tmp_path) is None
    (tmp_path / CKPT).write_bytes(b"not a checkpoint")
    torch.save({k: v for k, v in _state(3).items() if k != "model"}, tmp_path / PREV)
    assert latest_step(tmp_path) is None


@pytest.mark.parametrize("there", [(CKPT, PREV), (CKPT,), (PREV,)])
def test_unreadable_checkpoints_are_said_unreadable_not_never_written(tmp_path, there):
    """Both checkpoints there and neither readable: the lost rank's line said "no checkpoint was written yet; start
    it over with: sigma train --resume RUN", a resume that answers `checkpoint_unreadable`. Now the line says so."""
    from sigma.errors import InputError

    for name in there:
        (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(InputError) as exc:
        load_checkpoint(tmp_path)
    assert exc.value.code == "checkpoint_unreadable"
    line = str(rank_lost(RuntimeError("Connection reset by peer"), tmp_path))
    assert "no checkpoint was written yet" not in line, line
    assert f"{' and '.join(there)} {'are' if len(there) > 1 else 'is'} unreadable" in line, line
    assert "(checkpoint_unreadable): start the run again from its best/ or model/ with init_from" in line, line


def test_a_run_with_no_checkpoint_yet_is_still_said_so(tmp_path):
    line = str(rank_lost(RuntimeError("Connection reset by peer"), tmp_path))
    assert f"no checkpoint was written yet; start it over with: sigma train --resume {tmp_path}" in line, line


@pytest.mark.parametrize("cut", [0, 1000, "half"])
def test_a_checkpoint_cut_short_is_said_so_with_its_size(tmp_path, cut):
    """checkpoint.pt cut short (a full disk, a copy that stopped): the resume's line gave torch's words, cut by the
    line's bound mid-sentence (`... This is an internal miniz error. If you are seeing this error, there is a
    high`), or as a bare `OSError: [Errno 22] Invalid argument`, which reads as a fault of the system. Now: cut short or
    damaged, its size, torch's first sentence."""
    torch.save(_state(3), tmp_path / PREV)
    torch.save(_state(6), tmp_path / CKPT)
    data = (tmp_path / CKPT).read_bytes()
    kept = data[: len(data) // 2] if cut == "half" else data[:cut]
    (tmp_path / CKPT).write_bytes(kept)
    said: list[str] = []
    assert load_checkpoint(tmp_path, warn=said.append)["step"] == 3
    assert len(said) == 1 and said[0].startswith(f"checkpoint.pt: ValueError: cut short or damaged ({len(kept)} "
                                                 "bytes): torch could not read it ("), said
    assert said[0].endswith(") — resuming from checkpoint.prev.pt (step 3) instead"), said
    assert "miniz" not in said[0] and "EOFError: EOFError" not in said[0], said
