"""torchrun's `$RANK` / `$WORLD_SIZE` / `$LOCAL_RANK` as `sigma train` reads them (`sigma.training.world`)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = str(ROOT / "configs/train/tiny-stage1.yaml")


@pytest.mark.parametrize("name,value", [("RANK", "abc"), ("RANK", "2.5"), ("RANK", "-1"), ("WORLD_SIZE", "0"),
                                        ("WORLD_SIZE", "x"), ("WORLD_SIZE", "9" * 500)])
def test_a_rank_that_is_no_rank_is_one_invalid_config_line(name, value, tmp_path):
    """`RANK=abc sigma train ...` was a ValueError traceback from `int(os.environ[...])`; `RANK=-1` and
    `WORLD_SIZE=0` were taken without a word. Now one line naming the variable, exit 2."""
    photos = tmp_path / "photos"
    photos.mkdir()
    env = {**os.environ, name: value}
    proc = subprocess.run([sys.executable, "-m", "sigma", "train", STAGE1, f"out_dir={tmp_path / 'runs'}",
                           f"data.photos={photos}", "steps=1"], capture_output=True, text=True, timeout=300,
                          env=env, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"sigma: error [invalid_config]: ${name}="), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_blank_rank_is_unset(tmp_path):
    """`RANK=` (a launcher exporting an empty value) is the single-process run, as blank limits are unset."""
    from sigma.training import world

    env = {**os.environ, "RANK": " ", "WORLD_SIZE": ""}
    code = "from sigma.training import world; print(world.rank(), world.world_size())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         timeout=60).stdout.split()
    assert out == ["0", "1"] and world.MOST_RANKS == 2 ** 31 - 1


def test_a_local_rank_that_is_no_rank_is_refused(monkeypatch):
    """`$LOCAL_RANK` picks the CUDA device (read only where CUDA is): the same parser, the same refusal."""
    from sigma.errors import ConfigError
    from sigma.training import world

    monkeypatch.setenv("LOCAL_RANK", "-3")
    with pytest.raises(ConfigError, match=r"\$LOCAL_RANK='-3'"):
        world.local_rank()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world.local_rank() == 1
