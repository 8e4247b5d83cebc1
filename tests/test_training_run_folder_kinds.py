"""A run folder holding a folder where the run writes a file (checkpoint.pt, metrics.jsonl, ...) or a file where it
writes a folder (model/, final/, ...): refused before any step, through the real CLI (`loop._refuse_links`)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_synth import make_photos

from sigma.cli import main

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = str(ROOT / "configs/train/tiny-stage1.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("kinds")
    photos = make_photos(base / "photos", n=4, size=(80, 96))
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={base / 'runs'}", "name=r", "steps=2",
                 "eval.val_size=0"]) == 0
    return base / "runs" / "r"


@pytest.mark.parametrize(("name", "kind"), [("checkpoint.pt", "a folder"), ("model", "a file"),
                                             ("best.json", "a folder")])
def test_an_entry_of_the_other_kind_where_the_run_writes_is_refused_before_a_step(trained, tmp_path, capsys,
                                                                                name, kind):
    """checkpoint.pt a folder: passed over as a missing checkpoint, the resume went on from checkpoint.prev.pt,
    trained a step and failed at its save, `os_error: Is a directory: .checkpoint.pt.<pid>.<hex>.tmp` (a name the
    user never made); model a file: the same at model/'s save (`File exists`). Now `bad_outdir` naming it, before
    anything is trained or written."""
    run = tmp_path / "r"
    shutil.copytree(trained, run)
    target = run / name
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    if kind == "a folder":
        target.mkdir()
    else:
        target.write_text("x")
    metrics = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "steps=3"]) == 2
    out, err = capsys.readouterr()
    assert f"[bad_outdir]: {run}: holds entries of the other kind where the run writes ({name}: {kind};" in err, err
    assert "Traceback" not in err and "step 3/3" not in out
    assert (run / "metrics.jsonl").read_bytes() == metrics
