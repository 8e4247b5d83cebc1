"""Non-finite training through the real CLI: weights an optimizer step made inf are never saved, and a run whose
every step was skipped does not end 0 (`sigma.training.loop.Trainer`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_synth import make_photos

from sigma.cli import main

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = str(ROOT / "configs/train/tiny-stage1.yaml")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"), n=4, size=(80, 96))


def _events(run: Path) -> list[str]:
    return [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_weights_an_optimizer_step_made_infinite_are_not_saved(photos, tmp_path, capsys, monkeypatch):
    """An optimizer step that makes weights inf from a finite loss and gradient got past the NaN guard, which looks at
    the loss: the run wrote inf weights into checkpoint.pt, model/ and final/ and ended 0. Now `training_diverged` at
    the first checkpoint, nothing saved. The config once let a user cause it (`weight_decay=1e300`); lr x weight_decay
    >= 1 is refused now (`test_training -k wreck`), so the overflow is made here by the optimizer's own step: the
    real AdamW step, then its first tensor overflowed, as a future optimizer, precision or fault could."""
    import torch

    real_step = torch.optim.AdamW.step

    def overflowing_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=3", "ckpt_every=1",
                 "eval.val_size=0"]) == 2
    err = capsys.readouterr().err
    assert "[training_diverged]" in err and "Traceback" not in err, err
    assert "the weights hold non-finite values at step 1" in err and "no checkpoint was written" in err, err
    run = runs / "r"
    assert not [p.name for p in run.iterdir() if p.name in ("checkpoint.pt", "model", "final")]


def test_a_run_whose_every_step_was_skipped_does_not_end_as_trained(photos, tmp_path, capsys):
    """`disentangle.noise_scale=1e300`: every step's loss is NaN and skipped, fewer than `max_bad_steps` (20) in a
    short run, so the guard never fired: the run ended 0 with a final/ that no step had trained. Now
    `training_diverged` after the checkpoint; no final/."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=3",
                 "eval.val_size=0", "disentangle.noise_scale=1e300"]) == 2
    err = capsys.readouterr().err
    assert "[training_diverged]" in err and "Traceback" not in err, err
    assert "every step of this run (3, to step 3) had a non-finite loss or gradient" in err, err
    run = runs / "r"
    assert (run / "checkpoint.pt").is_file() and not (run / "final").exists()
    assert _events(run).count("skipped_step") == 3
