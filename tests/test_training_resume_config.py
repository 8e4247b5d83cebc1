"""`sigma train --resume RUN` keeps what shaped the run (model, freeze, optimizer and learning-rate schedule) and
judges one checkpoint: real tiny runs through the CLI (`sigma.training.checkpoint.refuse_changed_shaping`,
`latest_checkpoint`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_synth import make_photos

from sigma.cli import main
from sigma.training import checkpoint

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = str(ROOT / "configs/train/tiny-stage1.yaml")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"), n=4, size=(80, 96))


def _trained(photos: Path, tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=2",
                 "eval.val_size=0"]) == 0
    return runs / "r"


def _train_steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if row["event"] == "train"]


def test_a_resume_that_changes_the_schedule_is_refused_naming_each_key(photos, tmp_path, capsys):
    """`--resume RUN lr=0.1` trained on at lr 0.1 from the checkpoint's step (two schedules mixed, config.yaml
    rewritten with 0.1) and `weight_decay=0.5` was dropped without a word (the optimizer's saved state brings its
    own). Now refused, `invalid_config`, naming each changed key with both values, before config.yaml is written;
    what may change (steps, the log and checkpoint cadence) still resumes."""
    run = _trained(photos, tmp_path)
    config = (run / "config.yaml").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "steps=3", "lr=0.1", "warmup_steps=0", "weight_decay=0.5"]) == 2
    err = capsys.readouterr().err
    assert "[invalid_config]" in err and "Traceback" not in err, err
    assert ": lr 0.002 -> 0.1; weight_decay 0.01 -> 0.5; warmup_steps 2 -> 0. A resume keeps" in err, err
    assert "min_lr_ratio 0.05 ->" not in err and "; steps 2 ->" not in err and " steps 2 -> 3" not in err
    assert (run / "config.yaml").read_bytes() == config and _train_steps(run) == [1, 2]
    assert main(["train", "--resume", str(run), "steps=3", "log_every=2", "ckpt_every=1"]) == 0
    assert _train_steps(run) == [1, 2, 3]


def test_a_config_yaml_edited_to_another_schedule_is_refused_against_the_checkpoint(photos, tmp_path, capsys):
    """The run's config.yaml edited by hand (another lr): it was taken as the run's own, two schedules mixed without
    a word. The checkpoint keeps what shaped the run (`shaping`); neither checkpoint fits the edited config, and the
    refusal names the key in both."""
    run = _trained(photos, tmp_path)
    text = (run / "config.yaml").read_text()
    assert "\nlr: 0.002\n" in text
    (run / "config.yaml").write_text(text.replace("\nlr: 0.002\n", "\nlr: 0.02\n"))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "steps=3"]) == 2
    err = capsys.readouterr().err
    assert "[invalid_config]" in err and "Traceback" not in err, err
    assert ("checkpoint.pt: was trained with other values than the run's config.yaml: lr 0.002 -> 0.02" in err
            and "checkpoint.prev.pt: was trained with other values" in err), err
    assert torch.load(run / checkpoint.CKPT, weights_only=True)["shaping"]["lr"] == 0.002
    assert _train_steps(run) == [1, 2]
    (run / "config.yaml").write_text(text)
    assert main(["train", "--resume", str(run), "steps=3"]) == 0
    assert _train_steps(run) == [1, 2, 3]


def test_a_resume_reads_the_checkpoint_it_judges_once(photos, tmp_path, capsys, monkeypatch):
    """The checks before a resume (the number of ranks, the saved batch_size and seed, the step the warning names)
    each read the latest checkpoint again: three reads of a checkpoint that may be GBs, and a checkpoint written
    between them had them judge different ones. Now one read (memory-mapped) serves them all; the trainer's own
    load of the weights is the only other."""
    run = _trained(photos, tmp_path)
    reads: list[bool] = []
    real = checkpoint._read

    def counted(path: Path, mapped: bool = False):
        reads.append(mapped)
        return real(path, mapped)

    monkeypatch.setattr(checkpoint, "_read", counted)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "steps=3", "batch_size=2"]) == 0
    err = capsys.readouterr().err
    assert "batch_size 4 -> 2" in err and "from step 2 on the run reads from example 4, not 8" in err, err
    assert reads.count(True) == 1 and reads.count(False) == 1, reads


def test_a_resume_to_fewer_steps_than_the_run_has_made_is_refused_with_nothing_changed(photos, tmp_path, capsys):
    """`--resume RUN steps=1` on a run paused at step 2 of 4: it wrote steps: 1 into config.yaml, dropped the run's
    `paused` row and wrote final/ at step 2 ("at step 2 of 1 ... finishing it", exit 0): the run ended for good, by
    a typo. Now `invalid_config` naming the step, the run folder untouched; steps=2 (the step it stands at) still
    ends the run there, as asked."""
    runs = tmp_path / "runs"
    run = runs / "r"
    # max_minutes that the first step outlasts: each stretch pauses after its one step
    common = ["steps=4", "eval.val_size=0", "max_minutes=0.0001"]
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", *common]) == 0
    assert main(["train", "--resume", str(run), "max_minutes=0.0001"]) == 0
    assert torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == 2
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt")}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "steps=1"]) == 2
    err = capsys.readouterr().err
    assert f"[invalid_config]: steps=1 is below the step {run} stands at (2): a resume cannot undo steps" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert {name: (run / name).read_bytes() for name in before} == before and not (run / "final").exists()
    assert main(["train", "--resume", str(run), "steps=2"]) == 0
    assert (run / "final" / "config.json").is_file() and _train_steps(run) == [1, 2]
