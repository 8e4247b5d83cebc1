"""Real (tiny) training runs through the CLI: Stage I, Stage II, kill-and-resume, config errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from killers import at_first_temp_rename, record_syncs
from test_synth import make_photos
from tmpfs import mounted_tmpfs

from sigma.cli import main
from sigma.training.config import TrainConfig
from sigma.training.loop import lr_factor
from sigma.training.losses import bce_dice

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = str(ROOT / "configs/train/tiny-stage1.yaml")
STAGE2 = str(ROOT / "configs/train/tiny-stage2.yaml")


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "train"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"), n=4, size=(80, 96))


def test_stage1_then_stage2_through_the_cli(photos, tmp_path):
    pairs = tmp_path / "pairs"
    assert main(["synth", "--out", str(pairs), "-n", "4", "--photos", str(photos), "crop=64"]) == 0
    s1 = tmp_path / "runs" / "s1"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=s1",
                 f"eval.data={pairs}"]) == 0
    assert steps_logged(s1) == [1, 2, 3, 4]
    recs = [json.loads(line) for line in (s1 / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in recs if r["event"] == "val"][-1]
    assert 0 <= final["synthetic"]["f1"] <= 1 and "none/overall" in final["real"]
    assert (s1 / "final" / "model.safetensors").is_file() and (s1 / "config.yaml").is_file()
    first = [r for r in recs if r["event"] == "train"][0]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recs if r["event"] == "train")

    unl = tmp_path / "unlabelled"
    assert main(["synth", "--out", str(unl), "-n", "3", "--seed", "9", "--photos", str(photos), "crop=64"]) == 0
    s2 = tmp_path / "runs" / "s2"
    assert main(["train", STAGE2, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=s2",
                 f"init_from={s1}", f"sources=[{{path: {unl}, weight: 0.5, labelled: false}}]"]) == 0
    rows = [json.loads(line) for line in (s2 / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["event"] == "train"]
    assert len(train_rows) == 4
    # every Stage II term ran: pseudo-labels (unlabelled folder), disentanglement terms
    assert any("ema" in r for r in train_rows)
    assert all({"dis_zero", "dis_decor", "dis_noise"} <= set(r) for r in train_rows)
    assert first["loss"] > 0


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


def test_kill_and_resume_continues_with_the_same_steps(photos, tmp_path):
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=14", "batch_size=2", "ckpt_every=3",
              "eval.val_size=0", "warmup_steps=2"]
    assert main(["train", STAGE1, *common, "name=ref"]) == 0

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sigma", "train", STAGE1, *common, "name=cut"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    cut = runs / "cut"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (cut / "checkpoint.pt").is_file():
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    ckpt = torch.load(cut / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert 0 < ckpt["step"] < 14 and ckpt["step"] % 3 == 0
    assert not (cut / "final").exists()

    assert main(["train", "--resume", str(cut)]) == 0
    steps = steps_logged(cut)
    assert steps[-1] == 14 and steps.count(ckpt["step"] + 1) >= 1
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["step"] == 14
    ref, got = _weights(runs / "ref"), _weights(cut)
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)


def test_steps_rerun_after_a_kill_are_logged_once(photos, tmp_path, capsys):
    """Killed after its last checkpoint, a run had already logged the steps since; the resume ran and logged them
    again, so metrics.jsonl held those steps twice. The rows past the checkpoint are dropped at the resume."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=k", "steps=5", "batch_size=2",
                 "ckpt_every=3", "eval.val_size=0", "log_every=1"]) == 0
    run = runs / "k"
    # what a SIGKILL at step 5, before its checkpoint, leaves: the checkpoint of step 3, rows up to step 5
    shutil.copyfile(run / "checkpoint.prev.pt", run / "checkpoint.pt")
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 3
    shutil.rmtree(run / "final")
    before = (run / "metrics.jsonl").read_text().splitlines()
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "2 rows after the checkpoint of step 3" in capsys.readouterr().out   # steps 4 and 5 (val_size=0: no val)
    assert steps_logged(run) == [1, 2, 3, 4, 5]
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert after[:3] == before[:3] and not (run / "metrics.jsonl.tmp").exists()


def test_a_run_stopped_after_its_last_checkpoint_is_finished_by_resume(photos, tmp_path, capsys):
    """Killed in the final validation (after the checkpoint of the last step, before final/: with eval.data
    that is minutes of scoring), a run was left with no final/, and `--resume` said "already at step N of N"
    and exited 0 without writing it, however often it was run. Now the resume does the end: the final
    validation, best/, and a final/ equal to the uninterrupted run's."""
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=4", "batch_size=2", "eval.val_size=8",
              "eval.at_start=false"]
    assert main(["train", STAGE1, *common, "name=ref"]) == 0
    assert main(["train", STAGE1, *common, "name=cut"]) == 0
    cut = runs / "cut"
    # the state a SIGKILL in the final validation leaves: the step-4 checkpoint and model/, nothing after them
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "best")
    (cut / "best.json").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(cut)]) == 0
    assert "finishing it" in capsys.readouterr().out
    assert (cut / "final" / "model.safetensors").read_bytes() == (runs / "ref" / "final" / "model.safetensors"
                                                                  ).read_bytes()
    assert (cut / "best" / "model.safetensors").is_file() and json.loads((cut / "best.json").read_text())["step"] == 4
    assert json.loads((cut / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "val"
    assert main(["train", "--resume", str(cut)]) == 0                 # finished: nothing more to do
    assert "already at step 4 of 4" in capsys.readouterr().out


def _row_keys(run: Path) -> list[tuple[int, str]]:
    return [(r["step"], r["event"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_a_final_validation_run_again_by_resume_is_logged_once(photos, tmp_path, capsys):
    """Killed after the final validation's row was written and before `final/`, a run resumed with the rows up to
    its checkpoint's step kept — that row among them — and the resume validated again: two val rows at the last
    step. The rows of the checkpoint's step that the resume writes again are dropped with those past it."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=k", "steps=3", "batch_size=2",
                 "eval.val_size=4", "eval.at_start=false", "log_every=1"]) == 0
    run = runs / "k"
    shutil.rmtree(run / "final")                     # the kill: after the val row of step 3, before final/
    assert _row_keys(run) == [(1, "train"), (2, "train"), (3, "train"), (3, "val")]
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "finishing it" in capsys.readouterr().out
    assert _row_keys(run) == [(1, "train"), (2, "train"), (3, "train"), (3, "val")]
    assert (run / "final" / "config.json").is_file()
    assert main(["train", "--resume", str(run)]) == 0     # finished: its rows stay as they are
    assert _row_keys(run) == [(1, "train"), (2, "train"), (3, "train"), (3, "val")]


def test_tensorboard_events_of_steps_rerun_after_a_kill_are_there_once(photos, tmp_path):
    """The steps between the last checkpoint and the kill were in tb/ twice after the resume (TensorBoard drew
    them twice, the line doubling back). The resume's writer purges from the checkpoint's step on; the rows of
    that step that are not run again are written anew."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=k", "steps=5", "batch_size=2",
                 "ckpt_every=3", "eval.val_size=4", "eval.every=3", "eval.at_start=false", "log_every=1",
                 "tensorboard=true"]) == 0
    run = runs / "k"
    # a SIGKILL at step 5, before its checkpoint: the checkpoint of step 3, rows and events up to step 5
    shutil.copyfile(run / "checkpoint.prev.pt", run / "checkpoint.pt")
    shutil.rmtree(run / "final")
    time.sleep(1.1)                                   # event files are named by the second they were opened in
    assert main(["train", "--resume", str(run)]) == 0

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5]
    assert [e.step for e in events.Scalars("synthetic/f1")] == [3, 5]     # the periodic one at 3, the final one
    assert sorted(set(_row_keys(run))) == sorted(_row_keys(run))


GROW_SCRIPT = """
import errno, json, resource, signal, sys
from pathlib import Path
from sigma.config import load_config
from sigma.training.config import TrainConfig
from sigma.training.loop import Trainer

stage1, photos, small, model, run, limit = sys.argv[1:]
cfg = load_config(TrainConfig, stage1, [f"data.photos={photos}", f"init_from={small}", f"model={model}",
                                        "steps=1", "eval.val_size=0", "eval.at_start=false"])
if int(limit):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # a write past the limit is EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
try:
    Trainer(cfg, Path(run), log=lambda *a: None).run()
except OSError as exc:
    sys.exit(3 if exc.errno == errno.EFBIG else 4)
"""


def test_grow_json_is_whole_or_absent_when_its_write_fails(photos, tmp_path):
    """grow.json (what a run grown from a smaller model loaded and made new) was written in place: a kill or a full
    disk in the middle of the write left a torn file. It is written beside and renamed into place; the run,
    started again, writes it whole. The write fails here on a real file size limit (EFBIG, what a full disk is)."""
    from sigma.models import build_model, save_model
    from sigma.models.presets import PRESETS

    small = tmp_path / "small"
    save_model(build_model("tiny-lite"), small)
    grown = json.loads(json.dumps(PRESETS["tiny-lite"]))
    grown["backbone"]["depths"] = [0, 1, 1, 2, 2]
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-c", GROW_SCRIPT, STAGE1, str(photos), str(small), json.dumps(grown), str(run)]
    done = subprocess.run([*args, "60"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]            # stopped by the limit, at the grow.json write
    assert not (run / "grow.json").exists() and not list(run.glob("grow.json*"))
    done = subprocess.run([*args, "0"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grow = json.loads((run / "grow.json").read_text())
    assert grow["init_from"] == str(small) and grow["identity_initialised"] and grow["loaded"] > 0


def test_a_fresh_run_without_init_from_keeps_its_own_best(photos, tmp_path):
    """docs/training.md: `best/` + `best.json` hold the highest validation F1 so far. The at-start validation
    of a run with no init_from scores random weights; kept as the one to beat, a run that never beat it (here
    a tie) ended with no best/ and a best.json naming step 0, weights that exist nowhere."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=fresh", "eval.val_size=8"]) == 0
    run = runs / "fresh"
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "val"]
    assert vals[0]["step"] == 0                                   # the at-start validation still runs and is logged
    best = json.loads((run / "best.json").read_text())
    assert best["step"] > 0 and best["saved"] and (run / "best" / "model.safetensors").is_file()


def test_a_run_on_a_cache_resumes_from_another_folder_and_after_being_moved(photos, tmp_path, monkeypatch, capsys):
    """A run on data.cache freezes the cache's index into its folder and config.yaml names that copy by the path
    it had then (relative to the working folder of the first `sigma train`): a resume from another folder, or of
    the run folder copied back from a device slot, was file_not_found. The resume uses the run's own copy; the
    run ends with the uninterrupted run's weights."""
    cache = tmp_path / "cache"
    assert main(["synth", "--build-cache", str(cache), "--photos", str(photos), "--no-vae", "--max-side", "96"]) == 0
    common = [f"data.cache={cache}", "steps=3", "batch_size=2", "eval.val_size=0", "out_dir=runs"]
    (tmp_path / "first").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    assert main(["train", STAGE1, *common, "name=ref"]) == 0
    assert main(["train", STAGE1, *common, "name=cut", "max_minutes=0.00001"]) == 0   # paused at step 1
    assert "runs/cut/cache_index.json" in (tmp_path / "first" / "runs" / "cut" / "config.yaml").read_text()
    shutil.move(tmp_path / "first" / "runs" / "cut", tmp_path / "moved")
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(tmp_path / "moved"), "max_minutes=null"]) == 0, capsys.readouterr().err
    assert (tmp_path / "moved" / "final" / "model.safetensors").read_bytes() == (
        tmp_path / "first" / "runs" / "ref" / "final" / "model.safetensors").read_bytes()


def test_a_run_with_relative_input_paths_resumes_from_another_folder(photos, tmp_path, monkeypatch, capsys):
    """`data.cache: cache` and `data.photos: photos`, relative to the folder `sigma train` was started in: a
    `--resume` from another folder looked for them in its own folder and said `no_photos` ("cache: fewer than 2
    photos"). config.yaml records that folder (workdir) and the relative paths are read from it; a path given at
    the resume is relative to where the resume runs; a path that is nowhere is said with the folder it was
    looked for in."""
    start = tmp_path / "start"
    start.mkdir()
    shutil.copytree(photos, start / "photos")
    monkeypatch.chdir(start)
    assert main(["synth", "--build-cache", "cache", "--photos", "photos", "--no-vae", "--max-side", "96"]) == 0
    common = ["steps=3", "batch_size=2", "eval.val_size=2", "eval.val_dir=val", "out_dir=runs"]
    for name, data in {"c": "data.cache=cache", "p": "data.photos=photos"}.items():
        workdir = ["workdir=."] if name == "p" else []          # a relative workdir is recorded absolute
        assert main(["train", STAGE1, data, *common, *workdir, f"name={name}", "max_minutes=0.00001"]) == 0
        saved = yaml.safe_load((start / "runs" / name / "config.yaml").read_text())
        assert saved["workdir"] == str(start) and saved["eval"]["val_dir"] == "val"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    for name in ("c", "p"):
        assert main(["train", "--resume", str(start / "runs" / name), "max_minutes=null"]) == 0, capsys.readouterr().err
        assert steps_logged(start / "runs" / name)[-1] == 3 and (start / "runs" / name / "final").is_dir()
    assert not (elsewhere / "val").exists()        # the validation set of the first stretch was read again
    # a relative path given at the resume is the resume's own folder's
    shutil.copytree(start / "runs" / "p", elsewhere / "copy")
    shutil.rmtree(elsewhere / "copy" / "final")
    (elsewhere / "copy" / "metrics.jsonl").write_text("")
    shutil.copytree(photos, elsewhere / "mine")
    capsys.readouterr()
    assert main(["synth", "--out", "pairs", "-n", "2", "--photos", "mine", "crop=64"]) == 0
    assert main(["train", "--resume", "copy", "data.photos=mine", "steps=4",
                 "sources=[{path: pairs, weight: 0.5}]"]) == 0, capsys.readouterr().err
    saved = yaml.safe_load((elsewhere / "copy" / "config.yaml").read_text())
    assert (saved["data"]["photos"] == str(elsewhere / "mine")
            and saved["sources"][0]["path"] == str(elsewhere / "pairs"))
    # a path that is nowhere: the error names where it was looked for
    shutil.rmtree(start / "photos")
    shutil.rmtree(start / "runs" / "p" / "final")
    capsys.readouterr()
    assert main(["train", "--resume", str(start / "runs" / "p"), "steps=5"]) == 2
    err = capsys.readouterr().err
    assert str(start / "photos") in err and "[file_not_found]" in err
    shutil.rmtree(start / "cache")           # the run's frozen index is there, the cached files are not
    shutil.rmtree(start / "runs" / "c" / "final")
    assert main(["train", "--resume", str(start / "runs" / "c"), "steps=5"]) == 2
    err = capsys.readouterr().err
    assert f"none of their files is in {start / 'cache'}" in err and "[no_photos]" in err


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_metrics_of_a_validation_with_nothing_to_score_are_strict_json(photos, tmp_path):
    """A validation set with no edited pair (every synthetic pair noise-only) has an undefined F1 and AUC (NaN):
    metrics.jsonl got `NaN` in its val row, which JSON.parse and jq refuse (the run's whole log unreadable to
    them). Every JSON file the run writes goes through the one finite writer (`sigma.text.dumps_finite`): null."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=none", "steps=2",
                 "batch_size=2", "eval.val_size=2", "data.mix={none: 1.0}"]) == 0
    rows = [_strict_json(line) for line in (runs / "none" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["event"] == "val"]
    assert val and all(r["synthetic"]["f1"] is None and r["synthetic"]["auc"] is None for r in val)
    from sigma.text import dumps_finite

    assert _strict_json(dumps_finite({"a": [float("inf"), np.float32("nan"), (1.5,)]})) == {"a": [None, None, [1.5]]}
    assert dumps_finite({"p": Path("x")}, default=lambda v: float("nan")) == '{"p": null}'


def test_a_metrics_line_cut_short_by_a_kill_is_removed_before_the_resume_appends(photos, tmp_path, capsys):
    """A run killed while writing metrics.jsonl (or on a full disk) left half a line; the resume appended its first
    record to it, gluing two records into one line that every JSON-lines reader refused from then on."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=torn", "steps=3", "batch_size=2",
                 "eval.val_size=0", "max_minutes=0.00001"]) == 0
    metrics = runs / "torn" / "metrics.jsonl"
    whole = metrics.read_bytes()
    metrics.write_bytes(whole + b'{"step": 2, "time": 17')
    capsys.readouterr()
    assert main(["train", "--resume", str(runs / "torn"), "max_minutes=null"]) == 0
    assert "last line was cut short (22 bytes" in capsys.readouterr().out
    text = metrics.read_text()
    assert text.startswith(whole.decode()) and text.endswith("\n")
    rows = [_strict_json(line) for line in text.splitlines()]
    assert [r["step"] for r in rows if r["event"] == "train"] == [1, 2, 3]
    # a torn line longer than the block read backwards, a file that is one torn line, a whole file
    from sigma.training.loop import cut_torn_tail

    whole_line = b'{"a": 1}\n'
    for body, kept in [(whole_line + b"x" * 200_000, whole_line), (b"y" * 70_000, b""), (whole_line, whole_line)]:
        metrics.write_bytes(body)
        assert cut_torn_tail(metrics) == len(body) - len(kept) and metrics.read_bytes() == kept


@pytest.mark.parametrize("damage", [b"{\"step\": 1, \"f1", b"[]", b"{\"step\": 1, \"f1\": null}", b"\xff\xfe",
                                    b"{\"step\": 1, \"f1\": true}"])
def test_a_damaged_best_json_is_replaced_not_a_traceback_at_the_first_validation(photos, tmp_path, capsys, damage):
    """best.json cut short, not an object, holding no f1 or not UTF-8: the resume's first validation raised
    (JSONDecodeError, TypeError, UnicodeDecodeError) after the work of an evaluation interval. An f1 of `true` (a bool
    passes `isinstance(x, int)`) was read as 1.0, a best no validation beat. Said, and the next
    best written in its place."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=b", "steps=2", "batch_size=2",
                 "eval.val_size=2", "max_minutes=0.00001"]) == 0
    (runs / "b" / "best.json").write_bytes(damage)
    (runs / "b" / "best" / "best.json").unlink()     # a run folder from before best/ held its own record
    capsys.readouterr()
    assert main(["train", "--resume", str(runs / "b"), "max_minutes=null"]) == 0
    assert "best.json: cannot be read" in capsys.readouterr().out
    best = _strict_json((runs / "b" / "best.json").read_text())
    assert best["step"] == 2 and 0 <= best["f1"] <= 1


def test_best_and_best_json_agree_whatever_point_a_kill_stopped_their_write(photos, tmp_path, capsys):
    """best/ and best.json were written one after the other: a kill between them left best.json naming a step
    whose weights were not in best/ (and, its score unbeaten, for good). The record now lives in best/ beside
    the weights and best.json is rewritten from it; a kill inside the folder swap is completed at the resume."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=b", "steps=2", "batch_size=2",
                 "eval.val_size=2", "max_minutes=0.00001"]) == 0
    run = runs / "b"
    record = json.loads((run / "best.json").read_text())
    assert record["step"] >= 1
    weights = (run / "best" / "model.safetensors").read_bytes()
    # killed after best/ was replaced, before best.json: best.json still names an earlier step (here unbeatable)
    (run / "best.json").write_text(json.dumps({"step": 7, "f1": 1.0, "iou": 1.0, "saved": True, "val": "seed 0"}))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "max_minutes=null", "steps=3"]) == 0
    assert "best.json did not name the weights in best/" in capsys.readouterr().out
    best = json.loads((run / "best.json").read_text())
    assert record["step"] <= best["step"] <= 3 and best["f1"] < 1.0      # not the step-7 record: none was saved
    assert best == json.loads((run / "best" / "best.json").read_text())
    from sigma.training.loop import settle_best

    # killed between the two renames: best/ moved aside, the finished best.new/ not yet in place
    os.replace(run / "best", run / "best.new")
    shutil.copytree(run / "best.new", run / "best.old")
    (run / "best.json").write_text("{}")
    assert "moved" in settle_best(run)
    assert json.loads((run / "best.json").read_text()) == best
    assert not (run / "best.new").exists() and not (run / "best.old").exists()
    # killed while best.new/ was written (no record yet): removed, the old pair stays
    shutil.copytree(run / "best", run / "best.new")
    (run / "best.new" / "best.json").unlink()
    (run / "best.new" / "model.safetensors").write_bytes(b"cut")
    assert "unfinished" in settle_best(run) and not (run / "best.new").exists()
    assert json.loads((run / "best.json").read_text()) == best
    if best["step"] == record["step"]:
        assert (run / "best" / "model.safetensors").read_bytes() == weights


def test_a_resume_does_not_need_the_init_from_model_any_more(photos, tmp_path, capsys):
    """Every weight of a resumed run comes from its checkpoint, but the resume loaded `init_from` again first:
    with the source deleted (or the run folder copied to another machine) the run could not be resumed at all
    (invalid_config: no saved model). Now it resumes and ends with the uninterrupted run's weights."""
    runs = tmp_path / "runs"
    shared = [f"data.photos={photos}", f"out_dir={runs}", "batch_size=2", "eval.val_size=0"]
    common = [*shared, "steps=3"]
    assert main(["train", STAGE1, *shared, "name=src", "steps=1"]) == 0
    shutil.copytree(runs / "src", tmp_path / "init")
    init = [f"init_from={tmp_path / 'init'}"]
    assert main(["train", STAGE1, *common, *init, "name=ref"]) == 0
    assert main(["train", STAGE1, *common, *init, "name=cut", "max_minutes=0.00001"]) == 0   # paused at step 1
    assert torch.load(runs / "cut" / "checkpoint.pt", weights_only=False)["step"] == 1
    shutil.rmtree(tmp_path / "init")
    capsys.readouterr()
    assert main(["train", "--resume", str(runs / "cut"), "max_minutes=null"]) == 0, capsys.readouterr().err
    assert (runs / "cut" / "final" / "model.safetensors").read_bytes() == (
        runs / "ref" / "final" / "model.safetensors").read_bytes()


def test_a_second_run_on_a_busy_run_folder_is_refused_and_the_folder_is_free_once_its_holder_dies(
        photos, tmp_path, capsys):
    """Two `sigma train` on one folder would interleave checkpoints, metrics and best/: while one runs, the same
    name= and a --resume of it are refused (run_locked, the holder's pid), touching nothing; killed, it leaves
    the folder free (the kernel drops the lock) and --resume continues it."""
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=400", "batch_size=2", "ckpt_every=1",
              "eval.val_size=0", "warmup_steps=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sigma", "train", STAGE1, *common, "name=busy"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    busy = runs / "busy"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (busy / "checkpoint.pt").is_file():
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        config = (busy / "config.yaml").read_bytes()
        assert main(["train", STAGE1, *common, "name=busy", "seed=99"]) == 2
        assert main(["train", "--resume", str(busy), "steps=401"]) == 2
        err = capsys.readouterr().err
        assert err.count("run_locked") == 2 and f"pid {proc.pid}" in err, err
        assert (busy / "config.yaml").read_bytes() == config            # the refused runs changed nothing
        assert proc.poll() is None
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert main(["train", "--resume", str(busy), "steps=" + str(
        torch.load(busy / "checkpoint.pt", weights_only=False)["step"] + 1)]) == 0
    assert (busy / "final" / "model.safetensors").is_file()


def test_runs_started_together_on_one_val_dir_write_it_once_and_score_the_same_pairs(photos, tmp_path):
    """configs/train/sigma-lite-ii.yaml names one eval.val_dir for every run: three runs of it started together
    (a seed sweep) all wrote the set into one .tmp folder; the first to finish renamed it away, and the others
    died writing into it (os_error) or removed the set another was reading. Now one writes, the others wait for
    it and read the same pairs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    val = tmp_path / "val" / "synth"
    common = [f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "steps=1", "batch_size=2",
              f"eval.val_dir={val}", "eval.val_size=64", "eval.at_start=false"]
    procs = [subprocess.Popen([sys.executable, "-m", "sigma", "train", STAGE1, *common, f"name=r{i}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-400:] for _, err in outs]
    assert sum("wrote the fixed synthetic validation set" in out for out, _ in outs) == 1
    assert len((val / "pairs.jsonl").read_text().splitlines()) == 64 and not (tmp_path / "val" / "synth.tmp").exists()
    scores = [[json.loads(line)["synthetic"] for line in (tmp_path / "runs" / f"r{i}" / "metrics.jsonl").read_text()
               .splitlines() if json.loads(line)["event"] == "val"][-1] for i in range(3)]
    assert all(s["pairs"] == 64 for s in scores) and scores[0] == scores[1] == scores[2]


_WRITE_VAL = record_syncs("""from pathlib import Path
from sigma.config import load_config
from sigma.training.config import TrainConfig
from sigma.training.data import write_val_dir
cfg = load_config(TrainConfig, sys.argv[2], [f"data.photos={sys.argv[3]}", "eval.val_seed=5"])
write_val_dir(cfg, Path(sys.argv[4]), 3)""")


def test_the_validation_set_is_on_disk_before_its_name(photos, tmp_path):
    """The fixed validation set is written once and then only read by every later run of its config, and nothing
    of it was synced: a power cut after its rename could leave a set whose pairs.jsonl names empty PNGs. In a real
    write now, every file of the .tmp folder is fsynced, then the folder, before its rename; its parent after."""
    val, log, script = tmp_path / "val" / "synth", tmp_path / "events.json", tmp_path / "record.py"
    val.parent.mkdir()
    script.write_text(_WRITE_VAL)
    proc = subprocess.run([sys.executable, str(script), str(log), STAGE1, str(photos), str(val)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    events = json.loads(log.read_text())
    tmp = str(val.parent / "synth.tmp")
    commit = events.index(["rename", tmp, str(val)])
    files = sorted(os.listdir(val))
    assert len(files) == 3 * 3 + 2 and "pairs.jsonl" in files and "synth_config.yaml" in files
    synced = {e[1] for e in events[:commit] if e[0] == "fsync"}
    assert {f"{tmp}/{name}" for name in files if not name.endswith(".png")} <= synced, events
    for name in (n for n in files if n.endswith(".png")):     # each PNG's bytes before its own rename
        at = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == f"{tmp}/{name}")
        assert ["fsync", events[at][1]] in events[:at], name
    last_png = max(i for i, e in enumerate(events) if e[0] == "rename" and e[2].endswith(".png"))
    assert ["fsync", tmp] in events[last_png + 1:commit], events        # the names in the folder, before its rename
    assert ["fsync", str(val.parent)] in events[commit + 1:], events     # the set's own name


def test_a_killed_data_worker_is_replaced_and_the_run_ends_with_the_uninterrupted_weights(photos, tmp_path):
    """SIGKILL to the DataLoader's worker process mid-run (what the OOM killer does): the run restarts its
    loader at the step in hand by itself, logs a `loader_restart` row, exits 0, and — batches being a pure
    function of (seed, step) — ends with the weights of a run nobody disturbed."""
    import psutil

    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=120", "batch_size=2", "ckpt_every=1000",
              "eval.val_size=0", "warmup_steps=2", "log_every=1"]
    assert main(["train", STAGE1, *common, "name=ref"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sigma", "train", STAGE1, *common, "name=hit", "num_workers=1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    hit = runs / "hit"
    try:
        def logged() -> int:
            path = hit / "metrics.jsonl"
            return len(steps_logged(hit)) if path.is_file() else 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and logged() < 3:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.01)
        workers = [c for c in psutil.Process(proc.pid).children()
                   if "resource_tracker" not in " ".join(c.cmdline())]
        assert len(workers) == 1, [c.cmdline() for c in workers]
        workers[0].kill()
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out.decode()[-3000:]
    assert "a data worker died" in out.decode()
    recs = [json.loads(line) for line in (hit / "metrics.jsonl").read_text().splitlines()]
    restarts = [r for r in recs if r["event"] == "loader_restart"]
    assert len(restarts) == 1 and 3 <= restarts[0]["step"] < 120, restarts
    assert steps_logged(hit) == list(range(1, 121))                    # every step once, none skipped
    ref, got = _weights(runs / "ref"), _weights(hit)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)


def test_max_minutes_pauses_a_stretch_and_resume_finishes_the_same_run(photos, tmp_path):
    """A stretch of work with a wall-clock budget: past `max_minutes` the run checkpoints, validates and
    exits 0 without `final/`; `--resume` (budget lifted) ends with the weights of an uninterrupted run.
    The budget is checked after every step: it was checked at log steps only, so a run overshot it by up to a
    whole logging interval (here 4 steps); the steps since the last log row are logged at the stop, and the
    checkpoint written there is the whole state at that step (model/ holds its weights)."""
    from safetensors.torch import load_file

    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=6", "batch_size=2", "log_every=4",
              "ckpt_every=4", "eval.val_size=4", "eval.every=0", "eval.at_start=false", "warmup_steps=1"]
    assert main(["train", STAGE1, *common, "name=ref"]) == 0
    assert main(["train", STAGE1, *common, "name=cut", "max_minutes=1e-6"]) == 0
    cut = runs / "cut"
    recs = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    paused = [r for r in recs if r["event"] == "paused"]
    assert len(paused) == 1 and paused[0]["step"] == 1 and paused[0]["reason"] == "max_minutes"
    assert [r["step"] for r in recs if r["event"] == "val"] == [1]         # this stretch's progress is scored
    assert steps_logged(cut) == [1] and recs[0]["loss"] > 0
    ckpt = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["opt"]["state"] and ckpt["torch_rng"] is not None
    on_disk = load_file(str(cut / "model" / "model.safetensors"))
    assert all(torch.equal(on_disk[k], v.contiguous()) for k, v in ckpt["model"].items())
    assert not (cut / "final").exists()

    assert main(["train", "--resume", str(cut), "max_minutes=null"]) == 0
    assert steps_logged(cut) == [1, 4, 6]
    ref, got = _weights(runs / "ref"), _weights(cut)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)


def test_existing_run_and_bad_config_are_clear_errors(photos, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=x", "steps=1",
                 "eval.val_size=0"]) == 0
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=x"]) == 2
    assert "--resume" in capsys.readouterr().err
    # only the checkpoint before the latest left: still a run, not a fresh start that silently resumes it
    (runs / "x" / "checkpoint.pt").replace(runs / "x" / "checkpoint.prev.pt")
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=x"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", STAGE1, "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2


@pytest.mark.parametrize("override", ["seed=-1", "seed=1000000000000000000000000000000", "eval.val_seed=-5",
                                      "lr=inf", "lr=1e308", "loss.bce=nan", "ema.hi=.nan",
                                      "disentangle.noise_scale=inf", "max_minutes=inf", "eval.val_size=100000000",
                                      "data.multi_max=1000000000", "data.noise_blur=1000000000", "eval.limit=-1",
                                      "loss.dice=-1", "ema.hi=5"])
def test_numbers_a_run_cannot_use_are_config_errors(photos, tmp_path, capsys, override):
    """A negative seed (numpy: ValueError traceback) or one of 10^30 (torch: OverflowError traceback) ended the run
    after its folder was made; lr=inf trained NaN weights into final/ with exit 0 and loss.bce=nan skipped every
    step of a short run without a word; eval.val_size=10^8 generated validation pairs until memory ran out and
    data.multi_max=10^9 drew a mask of 10^9 regions (both: no step in a minute). Each is one invalid_config line
    naming the key, and no run folder."""
    rc = main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path}", "name=r", "steps=2", override])
    err = capsys.readouterr().err
    assert rc == 2 and "[invalid_config]" in err and override.split("=")[0] in err, err[-400:]
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize(("overrides", "said"), [
    (["lr=1", "weight_decay=1"], "weight_decay: Value error, lr x weight_decay is 1 (lr 1, weight_decay 1)"),
    (["lr=0.5", "weight_decay=3"], "weight_decay: Value error, lr x weight_decay is 1.5 (lr 0.5, weight_decay 3)"),
    (["weight_decay=1000"], "lr x weight_decay is 2 (lr 0.002, weight_decay 1000)"),
    (["ema.hi=0.3", "ema.lo=0.7"], "ema.lo: Value error, ema.lo 0.7 is above ema.hi 0.3"),
])
def test_optimiser_values_that_wreck_the_weights_are_config_errors(photos, tmp_path, capsys, overrides, said):
    """lr x weight_decay >= 1: AdamW's decoupled decay multiplies each weight by (1 - lr x weight_decay) a step, so
    `lr=1 weight_decay=1` zeroed every weight and trained to exit 0 with a final/ of zeros (above 1: signs flipped
    each step). ema.lo above ema.hi labelled the teacher's unsure pixels as edits. Each is one invalid_config line
    naming the values, before any run folder; a product just below 1 is taken."""
    rc = main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path}", "name=r", "steps=1", *overrides])
    err = capsys.readouterr().err
    assert rc == 2 and "[invalid_config]" in err and said in err, err[-600:]
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    from sigma.config.loader import load_config

    assert load_config(TrainConfig, STAGE1, ["lr=0.5", "weight_decay=1.99", "ema.hi=0.5", "ema.lo=0.5"]).lr == 0.5


def test_one_pair_a_step_on_a_crop_the_backbone_shrinks_to_one_cell_is_refused_before_the_run(photos, tmp_path,
                                                                                             capsys):
    """batch_size=1 at data.crop=32: the compact backbone's 5 stride-2 stages leave a 1x1 grid, one value per
    channel, and BatchNorm's training forward raised "Expected more than 1 value per channel when training" (a
    traceback at the first step, after the run folder and the first validation). Now one invalid_config line and no
    run folder; crop 33 (a 2x2 grid) still trains."""
    common = [f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "steps=1", "batch_size=1", "eval.val_size=1"]
    assert main(["train", STAGE1, *common, "name=one", "data.crop=32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [invalid_config]: batch_size=1 at data.crop=32: the backbone's last stage "
                          "sees a 1x1 grid"), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs" / "one").exists()
    assert main(["train", STAGE1, *common, "name=two", "data.crop=33"]) == 0


def test_a_crop_a_vit_backbone_cannot_see_is_refused_before_the_run(photos, tmp_path, capsys):
    """A DINOv2 model sees whole 14-px patches: data.crop=64 was a ValueError traceback at the first training step,
    after the run folder, the backbone load and the first validation."""
    from sigma.models.presets import PRESETS, TINY_DINOV2

    transformers = pytest.importorskip("transformers")
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY_DINOV2)).save_pretrained(tmp_path / "dino")
    model = {**PRESETS["tiny-dinov2"], "backbone": {"kind": "dinov2", "weights": str(tmp_path / "dino"),
                                                     "taps": [1, 2, 4]}}
    common = [f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "steps=1", "batch_size=2", "eval.val_size=2",
              f"model={json.dumps(model)}"]
    assert main(["train", STAGE1, *common, "name=bad", "data.crop=64"]) == 2
    err = capsys.readouterr().err
    assert "[invalid_config]: data.crop 64 is not a multiple of the DINOv2 patch size 14" in err and "56 or 70" in err
    assert not (tmp_path / "runs" / "bad").exists()
    assert main(["train", STAGE1, *common, "name=good", "data.crop=56"]) == 0


def test_a_run_name_that_is_no_visible_line_or_too_long_is_refused(photos, tmp_path, capsys):
    """`name=$'run\\n'` (a tab, ESC, a bidi override) trained into a folder no `ls` shows as typed, every line naming
    it escaped; a part of the name over 255 bytes was `os_error` only once the data had been read. Each is one
    `invalid_config` line before anything is made; a NUL was refused already."""
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=1", "eval.val_size=0"]
    for name, needle in (("run\n", "name 'run\\n' holds a control character"),
                         ("a\tb", "name 'a\\tb' holds a control character"),
                         ("a\u202eb", "'a\\u202eb' holds"), ("ok/\x1b[2J", "holds a control character"),
                         ("a\x00b", "name"), ("x" * 256, "a folder name of 256 bytes"),
                         ("g/" + "é" * 128, "a folder name of 256 bytes")):
        assert main(["train", STAGE1, *common, f"name={name}"]) == 2, name
        err = capsys.readouterr().err
        assert "[invalid_config]" in err and needle in err and err.count("\n") == 1, err
    assert not runs.exists()


def test_a_run_folder_outside_out_dir_is_refused(photos, tmp_path, capsys):
    """The run folder is <out_dir>/<name>: `name=/` trained into `/` (config.yaml, checkpoints, model/, final/
    at the file system's root), `name=../x` beside out_dir, an absolute name anywhere."""
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=1", "eval.val_size=0"]
    for name in ("../escaped", str(tmp_path / "absolute"), ".", "a/../../up"):
        assert main(["train", STAGE1, *common, f"name={name}"]) == 2, name
        err = capsys.readouterr().err
        assert "[invalid_config]" in err and "name must be a relative folder name inside out_dir" in err, err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "absolute").exists()
    assert not (tmp_path / "up").exists() and not runs.exists()
    assert main(["train", STAGE1, *common, "name=group/one"]) == 0      # a sub-folder of out_dir is fine
    assert (runs / "group" / "one" / "final").is_dir()
    # one run inside another: `a` then `a/b`, or `c/d` then `c`: refused before either folder is touched
    assert main(["train", STAGE1, *common, "name=group/one/inner"]) == 2
    err = capsys.readouterr().err
    assert "[invalid_config]" in err and "a run cannot be made inside another run" in err, err
    assert main(["train", STAGE1, *common, "name=group"]) == 2
    err = capsys.readouterr().err
    assert "[invalid_config]" in err and "holds the run folder" in err, err
    assert not (runs / "group" / "one" / "inner").exists() and not (runs / "group" / "config.yaml").exists()


def test_a_new_run_into_another_commands_output_folder_is_refused_and_touches_nothing(photos, tmp_path, capsys):
    """`out_dir=RUNS name=batch1` where RUNS/batch1 is a batch run (or an eval's --out, or any folder whose
    config.yaml is no training config) trained into it: its config.yaml was replaced by the training config, a
    checkpoint and model/ put beside run.json. Now invalid_config naming what it holds, nothing written; a folder
    holding a training run's own config.yaml (a run stopped before its first checkpoint) is started as before."""
    from test_eval import make_pair_set

    runs = tmp_path / "runs"
    data = make_pair_set(tmp_path / "data", "s", 1)
    assert main(["batch", "run", str(data), "--out", str(runs / "batch1"), "--annotator", "pixel-diff",
                 "--no-progress"]) == 0
    assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(runs / "eval1")]) == 0
    (runs / "mine").mkdir()
    (runs / "mine" / "config.yaml").write_text("notes: my own\n")
    capsys.readouterr()
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=1", "eval.val_size=0"]
    for name, said in (("batch1", "holds run.json"), ("eval1", "holds metrics.json"),
                       ("mine", "holds config.yaml: not a training run's")):
        before = {p: p.read_bytes() for p in (runs / name).rglob("*") if p.is_file()}
        assert main(["train", STAGE1, *common, f"name={name}"]) == 2, name
        err = capsys.readouterr().err
        assert "[invalid_config]" in err and said in err, err
        assert {p: p.read_bytes() for p in (runs / name).rglob("*") if p.is_file()} == before
    stopped = runs / "stopped"
    stopped.mkdir()
    own = TrainConfig(**yaml.safe_load(Path(STAGE1).read_text())).model_dump(mode="json")
    (stopped / "config.yaml").write_text(yaml.safe_dump(own))
    assert main(["train", STAGE1, *common, "name=stopped"]) == 0
    assert (stopped / "checkpoint.pt").is_file()


def test_eval_and_annotate_into_a_run_folder_are_refused_and_the_run_resumes(photos, tmp_path, capsys):
    """`sigma eval --out RUN` (or `sigma annotate -o RUN`) on a training run's folder wrote the eval's config.yaml over
    the run's, and `sigma train --resume RUN` then failed invalid_config (the eval's keys): the run could not be
    continued. A batch run's config.yaml was replaced the same way. Now out_is_run_file, nothing written; a new
    folder inside the run is fine."""
    from test_eval import make_pair_set

    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=1",
                 "eval.val_size=0"]) == 0
    data = make_pair_set(tmp_path / "data", "s", 1)
    batch = tmp_path / "batch"
    assert main(["batch", "run", str(data), "--out", str(batch), "--annotator", "pixel-diff", "--no-progress"]) == 0
    pair = [str(data / "s_0_original.png"), str(data / "s_0_edited.png")]
    capsys.readouterr()
    for run, what in ((runs / "r", "training run (it holds checkpoint.pt)"), (batch, "batch run (it holds run.json)")):
        config = (run / "config.yaml").read_bytes()
        for argv in (["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(run)],
                     ["annotate", *pair, "--annotator", "pixel-diff", "-o", str(run)]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert "[out_is_run_file]" in err and f"the folder of a {what}" in err, err
        assert (run / "config.yaml").read_bytes() == config
        assert not (run / "metrics.json").exists() and not (run / "result.json").exists()
    assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(runs / "r" / "eval")]) == 0
    assert main(["train", "--resume", str(runs / "r"), "steps=2"]) == 0


def test_report_export_and_synth_over_a_runs_own_files_are_refused_and_the_run_resumes(photos, tmp_path, capsys):
    """`sigma report BATCH --out TRAIN/config.yaml` wrote the review page over a training run's config and `sigma
    export coco BATCH --out TRAIN/metrics.jsonl` the JSON over its metrics, exit 0 (`sigma train --resume` then
    failed); `export imdl-benco --out RUN --json-name run.json --overwrite` replaced a batch run's record, and
    `sigma synth --out RUN` put its pairs among either run's files. Now out_is_run_file, nothing written; a file
    of another name beside them, or a new folder inside, is fine, and the run resumes."""
    from test_eval import make_pair_set

    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=1",
                 "eval.val_size=0"]) == 0
    train = runs / "r"
    data = make_pair_set(tmp_path / "data", "s", 1)
    batch = tmp_path / "batch"
    assert main(["batch", "run", str(data), "--out", str(batch), "--annotator", "pixel-diff", "--no-progress"]) == 0
    capsys.readouterr()
    files = {run: {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} for run in (train, batch)}
    link = tmp_path / "link.yaml"
    link.symlink_to(train / "config.yaml")
    for argv, said in ((["report", str(batch), "--out", str(train / "config.yaml")], "training run's own config.yaml"),
                       (["report", str(batch), "--out", str(link)], "training run's own config.yaml"),
                       (["export", "coco", str(batch), "--out", str(train / "metrics.jsonl")],
                        "training run's own metrics.jsonl"),
                       (["export", "coco", str(batch), "--out", str(train / "model" / "config.json")],
                        "training run's own model"),
                       (["export", "imdl-benco", str(batch), "--out", str(train), "--json-name", "best.json"],
                        "training run's own best.json"),
                       (["export", "imdl-benco", str(batch), "--out", str(batch), "--json-name", "run.json",
                         "--overwrite"], "batch run's own run.json"),
                       (["synth", "--out", str(train), "-n", "1", "--photos", str(photos), "--no-progress"],
                        "the folder of a training run (it holds checkpoint.pt)"),
                       (["synth", "--out", str(batch), "-n", "1", "--photos", str(photos), "--no-progress"],
                        "the folder of a batch run (it holds run.json)")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "[out_is_run_file]" in err and said in err, (argv, err)
    assert {run: {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} for run in (train, batch)} == files
    assert main(["report", str(batch), "--out", str(train / "report.html")]) == 0
    assert main(["synth", "--out", str(train / "pairs"), "-n", "1", "--photos", str(photos), "--no-progress"]) == 0
    assert main(["train", "--resume", str(train), "steps=2"]) == 0


def test_a_config_path_with_a_nul_byte_is_one_config_error(photos, tmp_path, capsys):
    """A NUL byte in a config path (a YAML string can hold one) was a ValueError traceback from the first mkdir."""
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=1", "eval.val_size=0"]
    for key, tree in (("out_dir", {"out_dir": f"{tmp_path}/a\0b"}), ("init_from", {"init_from": "run\0"}),
                      ("sources[0].path", {"sources": [{"path": "pairs\0"}]})):
        cfg = tmp_path / "nul.yaml"
        cfg.write_text(yaml.safe_dump({**yaml.safe_load(Path(STAGE1).read_text()), **tree}))
        assert main(["train", str(cfg), *[c for c in common if not c.startswith(key)], "name=nul"]) == 2
        err = capsys.readouterr().err
        line = next(n for n, text in enumerate(cfg.read_text().splitlines(), 1) if "\\0" in text)
        assert f"[invalid_config]: {cfg}, line {line}: {key}: holds a NUL byte" in err, err
    assert not (runs / "nul").exists()


def test_a_config_text_with_a_lone_surrogate_is_one_config_error(photos, tmp_path, capsys):
    """`name: "r\\ud800"` (a YAML escape) made a run name no file system takes: a UnicodeEncodeError traceback at
    the mkdir of the run folder; `eval.val_dir` the same at the first validation. Refused with the key. A name of
    bytes that are not UTF-8 (`name=$'r\\xff'`: argv's surrogate escape `\\udcff`) trained into a folder no UTF-8
    terminal shows, its `run folder:` line writing the raw byte back: now one `invalid_config` line showing the bytes
    as `\\xff` (also a part of a `group/run` name), before anything is made."""
    runs = tmp_path / "runs"
    shared = [f"data.photos={photos}", f"out_dir={runs}", "steps=1", "batch_size=2"]
    common = [*shared, "eval.val_size=2"]
    base = yaml.safe_load(Path(STAGE1).read_text())
    for key, tree in (("name", {"name": "r\ud800"}),
                      ("eval.val_dir", {"eval": {**base["eval"], "val_dir": "v\ud800"}})):
        (tmp_path / "s.yaml").write_text(yaml.safe_dump({**base, **tree}))     # written as the escape "\uD800"
        assert main(["train", str(tmp_path / "s.yaml"), *common]) == 2
        err = capsys.readouterr().err
        line = next(n for n, text in enumerate((tmp_path / "s.yaml").read_text().splitlines(), 1) if "\\uD800" in text)
        assert f"[invalid_config]: {tmp_path / 's.yaml'}, line {line}: {key}: holds a lone UTF-16 surrogate" in err, err
    assert not runs.exists()
    # the bytes as they come from a shell (`name=$'r\xff'`), said where stderr is strict UTF-8
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8:strict"}
    for name, said in ((b"r\xff", b"'r\\xff'"), (b"g/a\xffb", b"'g/a\\xffb'")):
        proc = subprocess.run([sys.executable, "-m", "sigma", "train", STAGE1, *shared, b"name=" + name,
                               "eval.val_size=0"], env=env, capture_output=True, timeout=300, check=False)
        assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr[-2000:]
        assert b"[invalid_config]" in proc.stderr and b"name " + said + b" holds bytes that are not UTF-8" \
            in proc.stderr, proc.stderr
    assert not runs.exists()


def test_source_weights_that_make_no_probabilities_are_refused_at_load(photos, tmp_path, capsys):
    """A sources weight of inf (or two of 1e308, summing to inf) passed `ge=0` and made the sampling
    probabilities NaN: a ValueError traceback from the data loader once the run had started."""
    pairs = tmp_path / "pairs"
    assert main(["synth", "--out", str(pairs), "-n", "2", "--photos", str(photos), "crop=64"]) == 0
    runs = tmp_path / "runs"
    for weights in ([".inf"], ["1e308", "1e308"]):
        sources = ", ".join(f"{{path: {pairs}, weight: {w}}}" for w in weights)
        capsys.readouterr()
        assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "steps=2", "batch_size=2",
                     "eval.val_size=0", f"sources=[{sources}]"]) == 2
        err = capsys.readouterr().err
        assert "[invalid_config]" in err and "sources" in err and "Traceback" not in err
    assert not runs.exists()


def test_real_set_options_are_checked_when_the_config_is_read(photos, tmp_path, capsys):
    """The real set (eval.data) is scored at the end of the run: an unknown eval.perturb or an eval.image_size the
    annotator refuses was an invalid_config after every training step, with no final/. Now said at load."""
    pairs = tmp_path / "pairs"
    assert main(["synth", "--out", str(pairs), "-n", "2", "--photos", str(photos), "crop=64"]) == 0
    runs = tmp_path / "runs"
    for override, needle in (("eval.perturb=[jpeg50]", "unknown perturbation 'jpeg50'"),
                             ("eval.image_size=100000", "eval.image_size"), ("eval.image_size=10", "at least 28")):
        capsys.readouterr()
        assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "steps=2", "batch_size=2",
                     "eval.val_size=0", f"eval.data={pairs}", override]) == 2
        err = capsys.readouterr().err
        assert "[invalid_config]" in err and needle in err, err
        assert not runs.exists()


def test_a_real_set_perturbation_without_its_vae_is_said_before_the_first_step(photos, tmp_path, capsys,
                                                                                   monkeypatch):
    """eval.perturb=[vae] (or regen) with no TAEF2 weights ended the run at its last step, with no final/."""
    from sigma.eval import perturb

    pairs = tmp_path / "pairs"
    assert main(["synth", "--out", str(pairs), "-n", "2", "--photos", str(photos), "crop=64"]) == 0
    monkeypatch.setenv("SIGMA_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.delenv("SIGMA_TAEF2", raising=False)
    monkeypatch.chdir(tmp_path)                     # ../shared beside the working folder is looked at too
    monkeypatch.setattr(perturb, "_VAE_CACHE", {})
    import sigma.models.vae as vae_module

    monkeypatch.setattr(vae_module, "_DEFAULT", {})    # loaded once per process: an earlier test's copy
    runs = tmp_path / "runs"
    capsys.readouterr()
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "steps=2", "batch_size=2",
                 "eval.val_size=0", f"eval.data={pairs}", "eval.perturb=[none,regen]"]) == 2
    err = capsys.readouterr().err
    assert "[weights_not_found]" in err and "taef2" in err.lower() and "Traceback" not in err
    assert not runs.exists()


def test_a_photo_bank_with_files_that_are_not_photos_trains(photos, tmp_path, capsys):
    """A photo folder of thousands holds the odd broken file: a 0-byte or text file named .jpg/.png, a JPEG cut
    short. Any of them ended `sigma synth --build-cache` (partial cache), `sigma synth` and a training run
    (os_error) when drawn — at the same step again after every --resume. Now: the cache build skips them,
    files with no image header are left out with one warning, a photo whose data is cut short is said once
    and the next photo used in its place (the same in every process: a resumed run ends with the same bytes);
    a damaged cached .npz is treated the same."""
    from PIL import Image

    bank = tmp_path / "bank"
    shutil.copytree(photos, bank)
    (bank / "notes.png").write_text("not a photo")
    (bank / "empty.jpg").write_bytes(b"")
    Image.open(next(iter(sorted(photos.iterdir())))).save(bank / "full.jpg", quality=90)
    data = (bank / "full.jpg").read_bytes()
    (bank / "cut.jpg").write_bytes(data[: len(data) // 3])
    cache = tmp_path / "cache"
    assert main(["synth", "--build-cache", str(cache), "--photos", str(bank), "--no-vae", "--max-side", "96"]) == 0
    files = json.loads((cache / "index.json").read_text())["files"]
    cached = [f["photo"] for f in files]
    assert len(cached) == 5 and not any(n in " ".join(cached) for n in ("notes", "empty", "cut"))
    assert main(["synth", "--out", str(tmp_path / "pairs"), "-n", "6", "--photos", str(bank), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "2 file(s) in the photo folder are not readable images" in err and "cut.jpg" in err
    runs = tmp_path / "runs"
    common = [f"data.photos={bank}", f"out_dir={runs}", "steps=6", "batch_size=2", "eval.val_size=0"]
    assert main(["train", STAGE1, *common, "name=ref"]) == 0
    assert main(["train", STAGE1, *common, "name=cut", "max_minutes=0.00001"]) == 0
    assert main(["train", "--resume", str(runs / "cut"), "max_minutes=null"]) == 0
    assert (runs / "cut" / "final" / "model.safetensors").read_bytes() == (
        runs / "ref" / "final" / "model.safetensors").read_bytes()
    damaged = cache / files[0]["file"]
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert main(["train", STAGE1, f"data.cache={cache}", f"out_dir={runs}", "steps=4", "batch_size=2",
                 "eval.val_size=0", "name=cache"]) == 0
    assert f"{damaged.name}: cached photo cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("link", ["metrics.jsonl", "checkpoint.pt.tmp", "model/config.json"])
def test_a_run_folder_with_symbolic_links_where_it_writes_is_refused(photos, tmp_path, capsys, link):
    """A run folder from elsewhere holding a symbolic link where the run writes sent the write to the file it
    named: metrics.jsonl appended its rows to it, checkpoint.pt.tmp and model/config.json overwrote it. Refused
    (bad_outdir) before anything is written; the linked file is untouched."""
    import os

    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=2", "batch_size=2",
                 "eval.val_size=0"]) == 0
    run = runs / "r"
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (run / link).unlink(missing_ok=True)
    os.symlink(precious, run / link)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "steps=3"]) == 2
    err = capsys.readouterr().err
    assert "[bad_outdir]" in err and link in err, err
    assert precious.read_text() == "keep me"


def test_schedule_and_losses():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(99, cfg) == pytest.approx(0.1, abs=0.01)
    logits = torch.full((2, 1, 8, 8), -12.0)
    empty = torch.zeros(2, 1, 8, 8)
    full = torch.ones(2, 1, 8, 8)
    w = torch.ones(2)
    assert bce_dice(logits, empty, w) < 0.05 < bce_dice(logits, full, w)
    assert bce_dice(logits, full, torch.zeros(2)) == 0


def test_a_damaged_checkpoint_resumes_from_the_one_before_and_two_are_one_clear_error(photos, tmp_path, capsys):
    """A checkpoint that is there but cannot be read (a disk fault; a file cut short by a full disk) costs one
    checkpoint interval: the resume says so, continues from checkpoint.prev.pt and ends with the weights of
    an uninterrupted run. With both damaged: `checkpoint_unreadable`, naming both, not a traceback."""
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=8", "batch_size=2", "ckpt_every=3",
              "eval.val_size=0", "warmup_steps=2"]
    assert main(["train", STAGE1, *common, "name=ref"]) == 0
    cut = runs / "cut"
    shutil.copytree(runs / "ref", cut)                 # checkpoints at steps 3, 6 and the last at 8
    assert torch.load(cut / "checkpoint.prev.pt", map_location="cpu", weights_only=False)["step"] == 6
    (cut / "final").rename(cut / "final.ref")
    data = (cut / "checkpoint.pt").read_bytes()
    (cut / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert main(["train", "--resume", str(cut)]) == 0
    said = "".join(capsys.readouterr())
    assert "checkpoint.pt: " in said and "resuming from checkpoint.prev.pt (step 6) instead" in said
    assert steps_logged(cut)[-2:] == [7, 8]
    ref, got = _weights(runs / "ref"), _weights(cut)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)

    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (cut / name).write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(cut)]) == 2
    err = capsys.readouterr().err
    assert "[checkpoint_unreadable]" in err and "checkpoint.prev.pt" in err and "Traceback" not in err

    # checkpoints that load but cannot be resumed from (a foreign or hand-made file): a negative step asked the data
    # stream for sample -6 (ValueError traceback), an RNG state of another kind was a TypeError traceback
    good = torch.load(runs / "ref" / "checkpoint.prev.pt", weights_only=True)
    for change, said in [({"step": -3}, "step '-3'"), ({"step": "6"}, "step '6'"), ({"torch_rng": [1, 2]}, "RNG"),
                         ({"opt": {}}, "optimiser"), ({"model": {"w": 1}}, "model state")]:
        torch.save({**good, **change}, cut / "checkpoint.pt")
        torch.save({**good, **change}, cut / "checkpoint.prev.pt")
        assert main(["train", "--resume", str(cut)]) == 2
        err = capsys.readouterr().err
        assert "[checkpoint_unreadable]" in err and said in err, (change, err)


def test_an_empty_or_missing_checkpoint_resumes_from_the_one_before_saying_so(photos, tmp_path, capsys):
    """checkpoint.pt of zero bytes (a full disk): torch.load raises an EOFError with no message, and naming the
    problem was an IndexError traceback — the resume ended instead of going on from checkpoint.prev.pt. One that is
    gone resumed from checkpoint.prev.pt without a word (a checkpoint interval lost unsaid)."""
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=8", "batch_size=2", "ckpt_every=3",
              "eval.val_size=0", "warmup_steps=2"]
    assert main(["train", STAGE1, *common, "name=ref"]) == 0
    for damage, says in [(lambda p: p.write_bytes(b""), "checkpoint.pt: ValueError: cut short or damaged (0 bytes): "
                                                        "torch could not read it (EOFError)"),
                         (lambda p: p.unlink(), "checkpoint.pt: missing")]:
        cut = runs / "cut"
        shutil.rmtree(cut, ignore_errors=True)
        shutil.copytree(runs / "ref", cut)
        shutil.rmtree(cut / "final")
        damage(cut / "checkpoint.pt")
        capsys.readouterr()
        assert main(["train", "--resume", str(cut)]) == 0
        out, err = capsys.readouterr()
        assert "Traceback" not in err and says in out and "resuming from checkpoint.prev.pt (step 6) instead" in out
        assert (cut / "final" / "model.safetensors").read_bytes() == (runs / "ref" / "final" / "model.safetensors"
                                                                      ).read_bytes()


def test_a_checkpoint_of_another_model_resumes_from_the_one_before_and_two_are_one_clear_error(photos, tmp_path,
                                                                                              capsys):
    """checkpoint.pt of another architecture (copied in from another run, a run folder reused): the resume stopped
    with `invalid_config` without trying checkpoint.prev.pt, which fits — a damaged one falls back to it. Now the
    same: a warning line, the resume goes on from the one before. With neither fitting: `invalid_config`, naming
    both, not a traceback."""
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "batch_size=2", "eval.val_size=0", "warmup_steps=2"]
    assert main(["train", STAGE1, *common, "steps=8", "ckpt_every=3", "name=ref"]) == 0
    assert main(["train", STAGE1, *common, "steps=1", "model={dim: 16}", "name=other"]) == 0
    cut = runs / "cut"
    shutil.copytree(runs / "ref", cut)
    shutil.rmtree(cut / "final")
    shutil.copyfile(runs / "other" / "checkpoint.pt", cut / "checkpoint.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(cut)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    # what shaped a run is kept in its checkpoint and compared first (`Trainer.restore`): named, key by key
    assert ("checkpoint.pt: was trained with other values than the run's config.yaml: "
            'model {"dim": 16} -> tiny-lite') in out
    assert "resuming from checkpoint.prev.pt (step 6) instead" in out
    assert steps_logged(cut)[-2:] == [7, 8]
    ref, got = _weights(runs / "ref"), _weights(cut)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)

    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        shutil.copyfile(runs / "other" / "checkpoint.pt", cut / name)
    assert main(["train", "--resume", str(cut)]) == 2
    err = capsys.readouterr().err
    assert "[invalid_config]" in err and "checkpoint.pt" in err and "checkpoint.prev.pt" in err
    assert "Traceback" not in err


def test_a_run_with_saved_weights_but_no_checkpoint_is_not_started_over(photos, tmp_path, capsys):
    """Both checkpoints gone (deleted to save space — they are three times the model's size —, or lost) from a run
    that had saved weights: `--resume` started the run over from random weights without a word, dropped every row of
    metrics.jsonl and then replaced model/ and final/ — the run's work lost. Refused now (`checkpoint_missing`),
    naming what is there and how to go on; nothing in the folder changes."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=4",
                 "eval.val_size=0"]) == 0
    run = runs / "r"
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / name).unlink()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "steps=6"]) == 2
    err = capsys.readouterr().err
    assert "[checkpoint_missing]" in err and "init_from" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    shutil.rmtree(run / "final")          # model/ alone (a run stopped mid-way) is refused the same
    assert main(["train", "--resume", str(run)]) == 2
    assert "[checkpoint_missing]" in capsys.readouterr().err


class _RunsCode:
    """A pickle that calls a function when it is loaded: what a checkpoint.pt from elsewhere may hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_not_unpickled(photos, tmp_path, capsys):
    """`--resume` unpickled checkpoint.pt with the full unpickler (weights_only=False): a run folder from
    elsewhere ran whatever its checkpoint said (here: create a file; os.system works the same). Only tensors,
    numbers and text are read now: such a file counts as damaged (the resume says so and continues from the
    checkpoint before it), and nothing in it runs."""
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "steps=8", "batch_size=2", "ckpt_every=3",
              "eval.val_size=0", "warmup_steps=2"]
    assert main(["train", STAGE1, *common, "name=ref"]) == 0
    cut = runs / "cut"
    shutil.copytree(runs / "ref", cut)
    shutil.rmtree(cut / "final")
    state = torch.load(cut / "checkpoint.pt", map_location="cpu", weights_only=True)
    marker = tmp_path / "code_ran"
    torch.save({**state, "config_hash": _RunsCode(marker)}, cut / "checkpoint.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(cut)]) == 0
    said = "".join(capsys.readouterr())
    assert not marker.exists()
    assert "unpickling them would run code" in said and "resuming from checkpoint.prev.pt (step 6)" in said
    assert (cut / "final" / "model.safetensors").read_bytes() == (runs / "ref" / "final" / "model.safetensors"
                                                                  ).read_bytes()


def test_damaged_weights_files_are_one_clear_error(photos, tmp_path, capsys):
    """A saved model whose safetensors file is cut short or is not one: `weights_unreadable` with the path,
    for `sigma eval` and for a training run's init_from (it was a Rust SafetensorError traceback)."""
    from sigma.models import build_model, preset_config, save_model

    folder = tmp_path / "m"
    save_model(build_model(preset_config("sigma-lite"), pretrained=False), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    pairs = tmp_path / "pairs"
    assert main(["synth", "--out", str(pairs), "-n", "2", "--photos", str(photos), "crop=64"]) == 0
    capsys.readouterr()
    assert main(["eval", "--data", str(pairs), "--set", f"options.weights={folder}", "--out",
                 str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "[weights_unreadable]" in err and str(weights) in err and "Traceback" not in err
    weights.write_bytes(b"\x00" * 64)
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=x",
                 f"init_from={folder}"]) == 2
    assert "[weights_unreadable]" in capsys.readouterr().err


def test_resume_refuses_a_model_override_and_leaves_the_run_resumable(photos, tmp_path, capsys):
    """`--resume RUN model.dim=16` was a size-mismatch traceback — after config.yaml had been rewritten with
    the override, so every later plain --resume failed too. Now refused first; the run resumes as it was."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=4",
                 "eval.val_size=0"]) == 0
    run = runs / "r"
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "steps=6", "model={dim: 16}"]) == 2
    err = capsys.readouterr().err
    assert "[invalid_config]" in err and "model" in err and "Traceback" not in err
    assert (run / "config.yaml").read_text() == before
    assert main(["train", "--resume", str(run), "steps=6"]) == 0
    assert steps_logged(run)[-1] == 6


def test_ema_switched_on_at_resume_starts_its_teacher_from_the_weights_the_run_reached(photos, tmp_path):
    """`--resume RUN ema.enabled=true` of a run without EMA: the teacher was copied from the model before the
    checkpoint replaced its weights, so it started from the freshly built network, not the trained one."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=4",
                 "eval.val_size=0"]) == 0
    run = runs / "r"
    reached = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert main(["train", "--resume", str(run), "steps=5", "ema.enabled=true", "ema.momentum=0.5"]) == 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    teacher, model = ckpt["teacher"], ckpt["model"]
    moved = 0
    for key, t in teacher.items():
        if not t.is_floating_point():
            continue
        mean = 0.5 * (reached[key] + model[key])        # one EMA step from the reached weights (buffers: copied)
        assert torch.allclose(t, mean, atol=1e-6) or torch.equal(t, model[key]), key
        moved += not torch.equal(reached[key], model[key]) and torch.allclose(t, mean, atol=1e-6)
    assert moved > 0


@pytest.mark.parametrize("bad_line", ['{"id": ', "[1, 2]", '{"id": "x", "original": 3, "edited": "e", "mask": "m"}'])
def test_a_damaged_validation_set_is_one_error_at_its_line(photos, tmp_path, capsys, bad_line):
    """eval.val_dir is read with the run's first validation: a damaged line was a JSONDecodeError /
    TypeError traceback; now `bad_manifest` naming file:line."""
    val = tmp_path / "val"
    assert main(["synth", "--out", str(val), "-n", "2", "--photos", str(photos), "crop=64", "--no-progress"]) == 0
    with open(val / "pairs.jsonl", "a") as handle:
        handle.write(bad_line + "\n")
    capsys.readouterr()
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=v",
                 f"eval.val_dir={val}"]) == 2
    err = capsys.readouterr().err
    assert "[bad_manifest]" in err and "pairs.jsonl:3" in err and "Traceback" not in err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("manifest", ["fifo", "dev_zero", "folder", "none"])
def test_a_val_dir_that_is_not_ours_is_refused_and_kept_whole(photos, tmp_path, capsys, manifest):
    """eval.val_dir is written only when it holds no regular pairs.jsonl; a folder there "without pairs.jsonl" was
    taken for an earlier unfinished write and removed whole (`shutil.rmtree`) before the new set was renamed in: a
    set whose pairs.jsonl is a FIFO, a link to /dev/zero or a folder, or a user's folder named by mistake, lost
    every file it held. Now `invalid_config` naming the folder, before anything is drawn, and its files stay."""
    val = tmp_path / "val"
    val.mkdir()
    (val / "keep.txt").write_text("precious")
    made = {"fifo": lambda p: os.mkfifo(p), "dev_zero": lambda p: p.symlink_to("/dev/zero"),
            "folder": lambda p: p.mkdir(), "none": lambda p: None}
    made[manifest](val / "pairs.jsonl")
    capsys.readouterr()
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=v", "steps=1",
                 f"eval.val_dir={val}", "eval.val_size=2"]) == 2
    err = capsys.readouterr().err
    assert "[invalid_config]" in err and str(val) in err and "Traceback" not in err
    assert (val / "keep.txt").read_text() == "precious"
    assert os.path.lexists(val / "pairs.jsonl") == (manifest != "none")
    assert not (val.parent / "val.tmp").exists()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["metrics.jsonl", "checkpoint.pt"])
def test_a_run_folder_file_that_is_a_fifo_is_refused_on_resume_not_waited_on(photos, tmp_path, name):
    """`sigma train --resume RUN` whose metrics.jsonl (or checkpoint.pt) is a FIFO hung for ever in its open — and
    SIGTERM did not end it: the handler only notes the signal and the open is resumed. Now `bad_outdir` naming the
    file, exit 2, before anything is read or written. A real process under `timeout=`: a regression fails, not hangs."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=2",
                 "eval.val_size=0"]) == 0
    (runs / "r" / name).unlink()
    os.mkfifo(runs / "r" / name)
    try:
        done = subprocess.run([sys.executable, "-m", "sigma", "train", "--resume", str(runs / "r"), "steps=3"],
                              capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"sigma train --resume hung on the FIFO {name}") from None
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "[bad_outdir]" in done.stderr and f"({name}: a FIFO" in done.stderr, done.stderr


def test_an_eval_data_folder_that_is_not_there_is_said_before_the_run(photos, tmp_path, capsys):
    """A typo in eval.data was noticed in the last line of the run ("real": "skipped: ... not found"), after
    all of its training; now a config error before any step (`shared`, which may be absent, still skips)."""
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=e",
                 f"eval.data={tmp_path / 'no-such-set'}"]) == 2
    assert "[invalid_config]" in capsys.readouterr().err and not (tmp_path / "runs" / "e").exists()


def test_a_checkpoint_that_cannot_be_written_is_an_os_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """On a full disk torch's zip writer raises RuntimeError("unexpected pos ...") and left a partial
    checkpoint.pt.tmp holding the space: a traceback, and less room for the next try. Now an OSError that says
    so (the CLI's one os_error line), no temporary file, the previous checkpoint intact."""
    import errno
    from collections import namedtuple

    import sigma.training.checkpoint as C

    # what a checkpoint holds (load_checkpoint checks the fields a resume reads)
    state = {"model": {"w": torch.zeros(1)}, "opt": {"state": {}, "param_groups": []},
             "torch_rng": torch.get_rng_state()}
    C.save_checkpoint(tmp_path, {**state, "step": 3})
    real_save = torch.save

    def full_disk(state, path):
        Path(path).write_bytes(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 291712 vs 291600")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(C.shutil, "disk_usage", lambda _p: namedtuple("u", "total used free")(10, 10, 0))
    with pytest.raises(OSError) as err:
        C.save_checkpoint(tmp_path, {**state, "step": 6})
    assert err.value.errno == errno.ENOSPC and "no space left" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    assert C.load_checkpoint(tmp_path)["step"] == 3


def test_a_full_disk_is_one_out_of_space_line_keeping_the_last_checkpoint(photos, tmp_path, capsys):
    """A run on a disk that fills up (a real 2 MiB tmpfs: one checkpoint of the tiny model fits, the next does not)
    ended `os_error`, the code of any refused file operation, so a script could not tell "free some space and
    --resume" from a bad path. Now one `out_of_space` line; the checkpoint before is whole, and once there is room
    `--resume` goes on from it."""
    with mounted_tmpfs(tmp_path / "disk", "2m") as disk:
        run = disk / "r"
        argv = ["train", STAGE1, f"data.photos={photos}", f"out_dir={disk}", "name=r", "steps=6", "ckpt_every=2",
                "eval.val_size=0"]
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()[-1]
        assert err.startswith(f"sigma: error [out_of_space]: {run / 'checkpoint.pt'}: cannot write the checkpoint "
                              "(no space left on the device"), err
        assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True, capture_output=True)
        assert main(["train", "--resume", str(run)]) == 0
        assert "resumed" in capsys.readouterr().out and steps_logged(run) == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_over_the_file_size_limit_says_the_limit_and_leaves_no_partial_file(tmp_path):
    """Under `ulimit -f` (RLIMIT_FSIZE) torch's zip writer fails with the same errno-less "unexpected pos" as on a
    full disk: `sigma train` said "the write failed, 78294104 KiB free", with no word of the limit. Now EFBIG naming
    it. A real limit (set on this process for the save only; Python ignores SIGXFSZ, so the write gets EFBIG)."""
    import errno
    import resource

    import sigma.training.checkpoint as C

    state = {"model": {"w": torch.zeros(64 * 1024)}, "opt": {"state": {}, "param_groups": []},
             "torch_rng": torch.get_rng_state(), "step": 3}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError) as err:
            C.save_checkpoint(tmp_path, state)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert err.value.errno == errno.EFBIG and "ulimit -f" in str(err.value) and "64 KiB" in str(err.value)
    assert list(tmp_path.iterdir()) == []


_KILLED_CHECKPOINT_SAVER = at_first_temp_rename() + """import torch
from sigma.training.checkpoint import save_checkpoint
run = Path(sys.argv[1])
state = {"model": {"w": torch.zeros(1)}, "opt": {"state": {}, "param_groups": []}, "torch_rng": torch.get_rng_state()}
for step in map(int, sys.argv[2:]):
    save_checkpoint(run, {**state, "step": step})
"""


def test_a_checkpoint_save_killed_at_its_rename_leaves_the_old_one_and_junk_the_next_run_sweeps(tmp_path):
    """save_checkpoint had its own temp+fsync+rename under the shared name `checkpoint.pt.tmp`: a run killed
    (SIGKILL, OOM) between the write and the rename left that file, a whole checkpoint's size, in the run folder for
    good — no sweep knows that name — and the folder was never synced after the rename. It now goes through
    `sigma.tempfiles` (`temp_name`, fsynced, renamed, folder synced): a kill at the rename (a real process, killed
    by the signal) leaves the previous checkpoint whole, and its temporary file is removed when the next run holds
    the folder (`hold_folder`'s sweep). Killed at the keeping of the one before (checkpoint.prev.pt), the same."""
    from sigma.folderlock import hold_folder
    from sigma.training.checkpoint import load_checkpoint, save_checkpoint

    for before, first in ((None, ".checkpoint.pt."), (3, ".checkpoint.prev.pt.")):
        run = tmp_path / f"after-{before}"
        run.mkdir()
        if before is not None:
            save_checkpoint(run, {"model": {"w": torch.zeros(1)}, "opt": {"state": {}, "param_groups": []},
                                  "torch_rng": torch.get_rng_state(), "step": before})
        killed = subprocess.run([sys.executable, "-c", _KILLED_CHECKPOINT_SAVER, str(run), "6"],
                                capture_output=True, text=True, timeout=120, check=False)
        assert killed.returncode == -9, killed.stderr
        dead = killed.stdout.strip()
        assert dead.startswith(first) and dead.endswith(".tmp") and (run / dead).is_file(), dead
        on_disk = load_checkpoint(run)
        assert (on_disk is None) if before is None else on_disk["step"] == before
        with hold_folder(run, other="name="):
            pass
        assert not (run / dead).exists()
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]



def test_a_resumed_run_sweeps_an_older_versions_checkpoint_tmp_once_a_day_old(photos, tmp_path, capsys):
    """Older sigma versions wrote checkpoints through the fixed name `checkpoint.pt.tmp`; one killed mid-save left
    it, a whole checkpoint's size, in the run folder, and the folder holder's sweep knows only today's
    `.NAME.PID.RANDOM.tmp` form: it stayed for good. The run that takes the folder now removes the legacy names of
    its checkpoints (`sweep_stale_temps(run, {checkpoint.pt, checkpoint.prev.pt})`) once older than a day (no pid
    to ask whether an old writer is still at it): a fresh one stays, and so do other `.tmp` names."""
    import os
    import time

    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=2", "batch_size=2",
                 "eval.val_size=0"]) == 0
    run = runs / "r"
    day_old = time.time() - 2 * 24 * 3600
    for name in ("checkpoint.pt.tmp", "checkpoint.prev.pt.tmp", "metrics.jsonl.tmp", "notes.tmp"):
        (run / name).write_bytes(b"left by an older version")
        os.utime(run / name, (day_old, day_old))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "checkpoint.pt.tmp").write_bytes(b"perhaps a live old writer")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "steps=3"]) == 0
    assert not (run / "checkpoint.pt.tmp").exists() and not (run / "checkpoint.prev.pt.tmp").exists()
    assert (run / "metrics.jsonl.tmp").is_file() and (run / "notes.tmp").is_file()
    from sigma.training.checkpoint import sweep_checkpoint_temps

    assert sweep_checkpoint_temps(fresh) == [] and (fresh / "checkpoint.pt.tmp").is_file()


def test_freeze_holds_the_named_parameters_and_their_batchnorm_statistics(photos, tmp_path, capsys):
    """docs/training.md: `freeze` fine-tunes the rest of a model (a decoder on a new label convention) while the
    named part keeps its weights *and* its BatchNorm running statistics (train mode would drift them with the
    new data); a prefix that names nothing is refused, not a run that silently trains everything."""
    from safetensors.torch import load_file
    runs = tmp_path / "runs"
    common = [f"data.photos={photos}", f"out_dir={runs}", "eval.val_size=4", "eval.every=2"]
    assert main(["train", STAGE1, *common, "name=base", "steps=2"]) == 0
    assert main(["train", STAGE1, *common, "name=tuned", "steps=4", f"init_from={runs / 'base' / 'final'}",
                 "freeze=[backbone]"]) == 0
    before = load_file(str(runs / "base" / "final" / "model.safetensors"))
    after = load_file(str(runs / "tuned" / "final" / "model.safetensors"))
    held = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in held)           # BatchNorm statistics are among what is held
    assert all(torch.equal(before[k], after[k]) for k in held)
    moved = [k for k in before if not k.startswith("backbone.") and not torch.equal(before[k], after[k])]
    assert any(k.startswith("decoder.") for k in moved)
    capsys.readouterr()
    assert main(["train", STAGE1, *common, "name=typo", "steps=1", "freeze=[bakbone]"]) == 2
    assert "bakbone" in capsys.readouterr().err
    # what trains is the run's: its optimizer state fits those parameters only
    assert main(["train", "--resume", str(runs / "tuned"), "freeze=[]"]) == 2
    assert "freeze [\"backbone\"] -> []" in capsys.readouterr().err


def test_freezing_every_parameter_is_one_config_error_and_no_run_folder(photos, tmp_path, capsys):
    """`freeze` naming every top-level module left AdamW an empty parameter list: a ValueError traceback ("optimizer
    got an empty parameter list"). Now one invalid_config line, before any run folder."""
    args = ["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=all", "steps=1",
            "eval.val_size=0", "freeze=[backbone, decoder, difference, heads, refine]"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [invalid_config]: freeze: 'backbone', 'decoder', 'difference', 'heads', "
                          "'refine' holds every parameter of this model fixed: nothing would train"), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs" / "all").exists()


# `python -c` of a `sigma train` that, at its first rename of a temporary file of the validation set (the set is being
# written, its lock held), prints `holding PID` and then runs ACTION (stops itself; or waits, running, for a file)
_HOLD_VAL = """import os, signal, sys, time
from pathlib import Path
_first = []
def _hook(event, args):
    if event == "os.rename" and not _first and ".tmp" in str(args[0]) and "val" in Path(args[0]).name:
        _first.append(1)
        print("holding", os.getpid(), flush=True)
        {action}
sys.addaudithook(_hook)
from sigma.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train_holding_val(photos: Path, tmp_path: Path, action: str) -> tuple[subprocess.Popen, list[str], list[str]]:
    """A `sigma train` (name=a) stopped or held at ACTION while it writes eval.val_dir, once it says so; and the
    arguments a second run (its name to add) on the same val_dir takes."""
    common = [STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "steps=1", "batch_size=2",
              f"eval.val_dir={tmp_path / 'val' / 'synth'}", "eval.val_size=4", "eval.at_start=false"]
    writer = subprocess.Popen([sys.executable, "-c", _HOLD_VAL.format(action=action), "train", *common, "name=a"],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = _lines_of(writer)
    _until(lambda: any(line.startswith("holding ") for line in lines), writer, "the writer never held the set")
    return writer, lines, common


def _lines_of(proc: subprocess.Popen) -> list[str]:
    """The lines `proc` prints, gathered as they come (a thread: a test reads them while the process runs)."""
    import threading

    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return lines


def _until(ready, proc: subprocess.Popen, why: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline and proc.poll() is None, why
        time.sleep(0.1)


def test_a_run_waiting_on_a_stopped_writer_of_the_val_set_is_refused_naming_it(photos, tmp_path):
    """Runs started together on one eval.val_dir wait for its one writer, without a bound (writing it can take
    minutes). A writer stopped while writing it (Ctrl-Z, SIGSTOP) kept the others waiting for ever, without a word:
    the kernel drops a dead holder's flock, not a stopped one's. Now the waiter says whom it waits for, and once
    the writer has been stopped for $SIGMA_FOLDER_LOCK_WAIT_S it fails `folder_busy` naming it and how to resume
    it."""
    from sigma.folderlock import process_stopped

    writer, _, common = _train_holding_val(photos, tmp_path, "os.kill(os.getpid(), signal.SIGSTOP)")
    try:
        _until(lambda: process_stopped(writer.pid), writer, "the writer never stopped", 30)
        proc = subprocess.run([sys.executable, "-m", "sigma", "train", *common, "name=b"], capture_output=True,
                              text=True, timeout=240, check=False,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "SIGMA_FOLDER_LOCK_WAIT_S": "2"})
    finally:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "folder_busy" in said, said[-2000:]
    assert f"waiting for the fixed synthetic validation set that pid {writer.pid} is writing" in proc.stdout, said
    assert f"pid {writer.pid} (writing the fixed synthetic validation set)" in said and "stopped for" in said
    assert f"kill -CONT {writer.pid}" in said and "$SIGMA_FOLDER_LOCK_WAIT_S" in said, said
    assert "Traceback" not in said


def test_a_run_waiting_on_a_slow_writer_of_the_val_set_waits_past_the_bound(photos, tmp_path):
    """The other side of the bound above: a writer that is running (here: waiting for a file, as a slow write
    does) is waited for however long it takes — past $SIGMA_FOLDER_LOCK_WAIT_S — and both runs score its set."""
    release = tmp_path / "release"
    writer, _, common = _train_holding_val(
        photos, tmp_path, f"while not Path({str(release)!r}).exists(): time.sleep(0.1)")
    waiter = None
    try:
        waiter = subprocess.Popen([sys.executable, "-m", "sigma", "train", *common, "name=b"],
                                  env={**os.environ, "PYTHONPATH": str(ROOT), "SIGMA_FOLDER_LOCK_WAIT_S": "1",
                                       "PYTHONUNBUFFERED": "1"},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = _lines_of(waiter)
        _until(lambda: any(f"that pid {writer.pid} is writing" in line for line in lines), waiter,
               f"the waiter never said it waits: {lines[-20:]}")
        time.sleep(4)                                      # well past the bound of 1 s
        assert waiter.poll() is None, lines[-20:]
        release.touch()
        waiter.wait(timeout=240)
        writer.wait(timeout=240)
    finally:
        for proc in (writer, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert (writer.returncode, waiter.returncode) == (0, 0), lines[-20:]
    assert len((tmp_path / "val" / "synth" / "pairs.jsonl").read_text().splitlines()) == 4


def test_a_val_dir_holding_a_set_already_is_said_so_when_written_again(tmp_path):
    """`scripts/write_margin_check.py` and the other check-set writers call write_val_dir on a folder a user names:
    one holding a finished set was refused as one with 'files but no pairs.jsonl', the opposite of what it held."""
    from sigma.errors import ConfigError
    from sigma.training.data import refuse_foreign_val_dir

    (tmp_path / "pairs.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="holds a validation set already"):
        refuse_foreign_val_dir(tmp_path)
    assert (tmp_path / "pairs.jsonl").read_text() == "{}\n"


# `python -c` prelude: once the first checkpoint is renamed into place, the process may write no file past 64 KiB, and
# SIGXFSZ (Python ignores it) kills it: the next large write — model/'s weights — dies half-written, as a run killed
# by the OOM killer or a scheduler while it saved model/ does
_KILLED_IN_MODEL_SAVE = """import os, resource, signal, sys
from pathlib import Path
def _hook(event, args):
    if event == "os.rename" and Path(args[1]).name == "checkpoint.pt":
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.addaudithook(_hook)
from sigma.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_while_it_writes_model_leaves_no_file_that_the_resume_keeps(photos, tmp_path):
    """safetensors (0.7 and later) writes a file through a temporary file of its own beside it (`.tmpXXXXXX`, Rust's
    tempfile crate) that it renames at the end: `sigma train` killed while it saved `model/` (every checkpoint) or
    `final/` left that file, a whole weights file's size, in the folder for good — no sweep knows that name, and
    every resume and save went on beside it. The weights are now streamed into sigma's own temporary name
    (`temp_name`), which the next save of that folder removes once its writer is dead."""
    runs = tmp_path / "runs"
    run = runs / "x"
    args = ["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=x", "steps=4", "batch_size=2",
            "eval.val_size=0"]
    killed = subprocess.run([sys.executable, "-c", _KILLED_IN_MODEL_SAVE, *args], capture_output=True, text=True,
                            timeout=120, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    left = sorted(p.name for p in (run / "model").iterdir())
    assert [name for name in left if name.endswith(("tmp",)) or name.startswith(".tmp")], left   # died mid-write
    assert main(["train", "--resume", str(run)]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    for folder in ("model", "final"):
        assert sorted(p.name for p in (run / folder).iterdir()) == ["config.json", "model.safetensors"], folder


# `python -c` prelude: SIGKILL at the first rename or link after the run's top-level best.json was renamed into place
# (best/ and best.json written whole): the next checkpoint's keeping of the one before it
_KILLED_AFTER_BEST = """import os, signal, sys
from pathlib import Path
_best = []
def _hook(event, args):
    if event in ("os.rename", "os.link") and _best:
        os.kill(os.getpid(), signal.SIGKILL)
    if event == "os.rename" and Path(args[1]).name == "best.json" and Path(args[1]).parent.name == "x":
        _best.append(1)
sys.addaudithook(_hook)
from sigma.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _val_rows(run: Path) -> list[tuple[int, float, bool]]:
    return [(r["step"], r["synthetic"]["f1"], bool(r.get("best"))) for r in
            (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()) if r["event"] == "val"]


def test_a_best_saved_after_the_last_checkpoint_is_decided_again_by_the_steps_the_resume_reruns(photos, tmp_path):
    """Killed after a validation wrote best/ (step 4) but before the next checkpoint (step 6), a run resumed from
    step 3: the resume dropped that validation's row (the steps past the checkpoint run again) but kept best/ and
    best.json from it. Its own step-4 validation then tied the record and was not marked best: no row said which
    step best/ came from, and where the steps re-run differ (another `--resume` override, CUDA's non-deterministic
    kernels) best/ kept weights of steps the run no longer had, their score the one to beat. Now a best from past
    the checkpoint goes with the rows: the resume's own validations decide it, as in the uninterrupted run."""
    runs = tmp_path / "runs"
    common = [STAGE1, f"data.photos={photos}", f"out_dir={runs}", "steps=7", "batch_size=2", "ckpt_every=3",
              "eval.every=4", "eval.val_size=8", "eval.at_start=false"]
    assert main(["train", *common, "name=ref"]) == 0
    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_BEST, "train", *common, "name=x"],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    run = runs / "x"
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3
    assert json.loads((run / "best.json").read_text())["step"] == 4
    assert main(["train", "--resume", str(run)]) == 0
    assert _val_rows(run) == _val_rows(runs / "ref") and _val_rows(run)[0][2]
    assert json.loads((run / "best.json").read_text()) == json.loads((runs / "ref" / "best.json").read_text())
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (runs / "ref").iterdir())


@pytest.mark.timeout(240)
def test_an_unfinished_synth_set_as_val_dir_or_eval_data_is_refused_before_the_first_step(photos, tmp_path, capsys):
    """`eval.val_dir` naming a `sigma synth --out` set whose run was killed after its pairs.jsonl but before its mark
    went was read without the mark's check: every validation scored it, exit 0. Killed before its listing, it was
    refused as `invalid_config` "holds files but no pairs.jsonl ... empty this one" (a folder synth is writing). An
    unfinished `eval.data` was refused only when scored, after the last step. Now each is `unfinished_synth_set`
    before the first step, and no run is started."""
    from test_synth import KILL_AT_MARK_REMOVAL

    listed = tmp_path / "sets" / "listed"
    argv = ["synth", "--out", str(listed), "-n", "2", "--photos", str(photos), "--no-progress", "crop=64"]
    proc = subprocess.run([sys.executable, "-c", KILL_AT_MARK_REMOVAL, *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9 and (listed / "synth_unfinished.json").is_file(), proc.stderr
    unlisted = tmp_path / "unlisted"
    shutil.copytree(listed, unlisted)
    (unlisted / "pairs.jsonl").unlink()
    capsys.readouterr()
    for n, setting in enumerate([f"eval.val_dir={listed}", f"eval.val_dir={unlisted}", f"eval.data={listed.parent}"]):
        assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", f"name=r{n}",
                     "steps=2", "eval.val_size=2", setting]) == 2, setting
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("sigma: error [unfinished_synth_set]"), (setting, err)
        assert not (tmp_path / "runs" / f"r{n}" / "checkpoint.pt").exists(), setting
    assert sorted(p.name for p in unlisted.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in listed.iterdir() if p.name != "pairs.jsonl" and not p.name.startswith("."))


# A `sigma synth --out` rewrite of eval.data beginning during the run: its mark appears just before the final scoring
_SET_REWRITTEN_AT_THE_END = """import sys
from pathlib import Path
import sigma.training.loop as loop
_score = loop.evaluate_real
def _rewrite_begins(model, data, *args, **kwargs):
    (Path(data) / "synth_unfinished.json").write_text('{"command": "sigma synth --out X", "runs": []}')
    return _score(model, data, *args, **kwargs)
loop.evaluate_real = _rewrite_begins
from sigma.cli import main
sys.exit(main(sys.argv[1:]))
"""


_SET_REWRITTEN_FOR_A_WHILE = """import sys
from pathlib import Path
import sigma.training.loop as loop
_score = loop.evaluate_real
_calls = []
def _rewrite_for_a_while(model, data, *args, **kwargs):
    mark = Path(data) / "synth_unfinished.json"
    if not _calls:
        mark.write_text('{"command": "sigma synth --out X", "runs": []}')
    else:
        mark.unlink(missing_ok=True)
    _calls.append(1)
    return _score(model, data, *args, **kwargs)
loop.evaluate_real = _rewrite_for_a_while
from sigma.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(240)
def test_an_eval_data_set_being_rewritten_at_a_mid_run_scoring_is_skipped_and_the_run_goes_on(photos, tmp_path):
    """eval.data scored every step (eval.data_every) while a `sigma synth --out` rewrote it: the scoring's refusal
    (unfinished_synth_set) stopped the run there, hours of training ended by another command's rewrite of a report
    set. Now that scoring's row says it was skipped, the run goes on, and the final scoring (the set finished by
    then) is made."""
    pairs = tmp_path / "pairs"
    assert main(["synth", "--out", str(pairs), "-n", "3", "--photos", str(photos), "--no-progress", "crop=64"]) == 0
    run = tmp_path / "runs" / "a"
    proc = subprocess.run([sys.executable, "-c", _SET_REWRITTEN_FOR_A_WHILE, "train", STAGE1, f"data.photos={photos}",
                           f"out_dir={run.parent}", "name=a", "steps=2", "batch_size=2", "eval.val_size=2",
                           f"eval.data={pairs}", "eval.limit=2", "eval.every=1", "eval.data_every=1",
                           "eval.at_start=false"], capture_output=True, text=True, timeout=200, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("event") == "val"]
    assert vals[0]["step"] == 1 and vals[0]["real"].startswith("skipped: "), vals
    assert vals[-1]["step"] == 2 and isinstance(vals[-1]["real"], dict), vals
    assert (run / "final" / "model.safetensors").is_file()


@pytest.mark.timeout(240)
def test_an_eval_data_set_that_becomes_unfinished_keeps_the_trained_model_and_says_how_to_score_it(photos, tmp_path):
    """eval.data became an unfinished `sigma synth` set after the check before the first step: the final scoring
    refused it and the run ended at its last step with that refusal alone, no final/, no val row, nothing said of the
    trained weights. Now final/ is saved, the row says the real set was skipped, and one unfinished_synth_set line
    names the set, where the model is and the `sigma eval` that scores it once the set is finished."""
    pairs = tmp_path / "pairs"
    assert main(["synth", "--out", str(pairs), "-n", "3", "--photos", str(photos), "--no-progress", "crop=64"]) == 0
    run = tmp_path / "runs" / "a"
    proc = subprocess.run([sys.executable, "-c", _SET_REWRITTEN_AT_THE_END, "train", STAGE1, f"data.photos={photos}",
                           f"out_dir={run.parent}", "name=a", "steps=2", "batch_size=2", "eval.val_size=2",
                           f"eval.data={pairs}", "eval.limit=2"], capture_output=True, text=True, timeout=200,
                          check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sigma: error [unfinished_synth_set]: eval.data {pairs}: "), err
    command = f"`sigma eval --data {pairs} --annotator sigma-lite --set options.weights={run / 'final'} --set limit=2"
    assert f"the model is saved in {run / 'final'}" in err[0] and command in err[0], err
    assert (run / "final" / "config.json").is_file() and (run / "final" / "model.safetensors").is_file()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "val" and last["step"] == 2 and last["real"].startswith("skipped: "), last


def test_a_bad_eval_data_manifest_is_refused_before_the_first_step(photos, tmp_path, capsys):
    """`eval.data`'s pairs.jsonl was read only at its first scoring: a repeated id or a line that is not JSON stopped
    the run with `bad_manifest` after all its steps (here 2; `eval.data_every` or hours in a real run), and a set whose
    pairs all lack their files was scored as `"real": {}` and marked best, exit 0. Now each is refused before the
    run folder is made; a set with some pairs missing is said once and trains."""
    good = tmp_path / "sets" / "good"
    assert main(["synth", "--out", str(good), "-n", "3", "--photos", str(photos), "--no-progress", "crop=64"]) == 0
    lines = (good / "pairs.jsonl").read_text().splitlines(keepends=True)
    broken = {"repeated": ("".join(lines) + lines[0], "bad_manifest"),
              "not_json": ("".join(lines) + "{not json\n", "bad_manifest"),
              "no_masks": ("".join(lines), "no_pairs")}
    for name, (manifest, _) in broken.items():
        shutil.copytree(good, tmp_path / name)
        (tmp_path / name / "pairs.jsonl").write_text(manifest)
    for mask in (tmp_path / "no_masks").glob("*_mask.png"):
        mask.unlink()
    capsys.readouterr()
    for name, (_, code) in broken.items():
        assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", f"name={name}",
                     "steps=2", "eval.val_size=2", f"eval.data={tmp_path / name}"]) == 2, name
        out, err = capsys.readouterr()
        assert err.strip().splitlines()[-1].startswith(f"sigma: error [{code}]"), (name, err)
        assert "step 1/2" not in out and not (tmp_path / "runs" / name).exists(), name
    (good / lines[1].split('"mask": "')[1].split('"')[0]).unlink()
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=some",
                 "steps=1", "eval.val_size=2", f"eval.data={good}"]) == 0
    assert "1 of 3 pairs cannot be scored" in capsys.readouterr().out


def test_a_resume_changing_batch_size_or_seed_says_what_it_does_to_the_examples(photos, tmp_path, capsys):
    """`--resume RUN batch_size=N` renumbers the run's examples (step t reads from t x batch_size x ranks) and
    `seed=N` draws the rest from another stream: both were taken without a word. Each is now one stderr warning
    naming the old and new value; a resume that changes neither (steps=) says nothing."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=2", "batch_size=2",
                 "ckpt_every=2", "eval.val_size=0"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(runs / "r"), "steps=3"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["train", "--resume", str(runs / "r"), "steps=4", "batch_size=4", "seed=5"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sigma: warning:")]
    assert len(warnings) == 1, warnings
    assert "batch_size 2 -> 4" in warnings[0] and "from step 3 on the run reads from example 12, not 6" in warnings[0]
    assert "seed 0 -> 5" in warnings[0]


def test_a_resume_of_a_run_whose_config_was_edited_says_what_it_does_to_the_examples(photos, tmp_path, capsys):
    """A run's config.yaml edited by hand (`batch_size: 4`, `seed: 5` in a run trained with 2 and 0), then `--resume
    RUN`: the same renumbering of the examples as `--resume RUN batch_size=4 seed=5`, which is said, was taken
    without a word, since the resume compared its values with config.yaml alone. The checkpoint now keeps the run's
    batch_size and seed, and the resume says the change from them."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=2", "batch_size=2",
                 "ckpt_every=2", "eval.val_size=0"]) == 0
    config = runs / "r" / "config.yaml"
    tree = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**tree, "batch_size": 4, "seed": 5}))
    capsys.readouterr()
    assert main(["train", "--resume", str(runs / "r"), "steps=3"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sigma: warning:")]
    assert len(warnings) == 1, warnings
    assert "batch_size 2 -> 4" in warnings[0] and "from step 2 on the run reads from example 8, not 4" in warnings[0]
    assert "seed 0 -> 5" in warnings[0]
    assert main(["train", "--resume", str(runs / "r"), "steps=4"]) == 0     # its checkpoint now of batch 4, seed 5
    assert "warning" not in capsys.readouterr().err


def test_an_empty_out_dir_is_refused_not_taken_for_the_current_folder(photos, tmp_path, capsys, monkeypatch):
    """`sigma train CONFIG out_dir=$RUNS` with the variable unset (`out_dir=`) trained into the current folder, as
    `--out ''` did before every command refused it (`empty_path`). Now one `invalid_config` line; nothing made."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", STAGE1, f"data.photos={photos}", "out_dir=", "name=z", "steps=1", "eval.val_size=0"]) == 2
    err = capsys.readouterr().err
    assert err == ("sigma: error [invalid_config]: out_dir: an empty path; name the folder the runs go in (`.` for "
                   "the current folder)\n"), err
    assert list(work.iterdir()) == []


def test_eval_data_may_name_the_sets_pairs_jsonl(photos, tmp_path):
    """`eval.data=SET/pairs.jsonl`, the form `sigma eval --data` and `sources` take, was refused as "no such folder"
    (invalid_config) although the file was there. The set is its folder, and it is scored."""
    good = tmp_path / "good"
    assert main(["synth", "--out", str(good), "-n", "2", "--photos", str(photos), "--no-progress", "crop=64"]) == 0
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=m", "steps=1", "eval.val_size=0",
                 f"eval.data={good / 'pairs.jsonl'}"]) == 0
    rows = [json.loads(line) for line in (runs / "m" / "metrics.jsonl").read_text().splitlines()]
    real = [row["real"] for row in rows if row.get("event") == "val" and "real" in row]
    assert real and isinstance(real[-1], dict) and any(key.endswith("/good") for key in real[-1]), real


def test_a_refused_resume_leaves_the_runs_config_as_it_was(photos, tmp_path, capsys):
    """`--resume RUN data.photos=EMPTY` was refused (no_photos) after config.yaml had been rewritten with it: the
    run's own photo folder was gone from its folder, and every plain `--resume RUN` after it failed the same way.
    config.yaml now takes a resume's overrides only once the run has read its data with them."""
    runs = tmp_path / "runs"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=2",
                 "eval.val_size=0"]) == 0
    before = (runs / "r" / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(runs / "r"), f"data.photos={empty}", "steps=3"]) == 2
    assert "[no_photos]" in capsys.readouterr().err
    assert (runs / "r" / "config.yaml").read_text() == before
    assert main(["train", "--resume", str(runs / "r"), "steps=3"]) == 0
    assert yaml.safe_load((runs / "r" / "config.yaml").read_text())["steps"] == 3


def test_a_fresh_run_refused_while_reading_its_data_leaves_no_run_folder(photos, tmp_path, capsys):
    """A fresh run refused once its data was read (`no_photos` for an empty photo folder) left `<out_dir>/<name>/`
    with a config.yaml (and the folder's `.lock`) of a run that never began: `--resume` of it, or a listing of the
    runs, took it for one. config.yaml is now written once the data is read; a folder the run made is removed again,
    out_dir too when it made it, and a folder that was there stays as it was."""
    runs = tmp_path / "runs"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", STAGE1, f"data.photos={empty}", f"out_dir={runs}", "name=group/r", "steps=1",
                 "eval.val_size=0"]) == 2
    assert "[no_photos]" in capsys.readouterr().err
    assert not runs.exists()
    (runs / "mine").mkdir(parents=True)
    assert main(["train", STAGE1, f"data.photos={empty}", f"out_dir={runs}", "name=mine", "steps=1",
                 "eval.val_size=0"]) == 2
    assert "[no_photos]" in capsys.readouterr().err
    assert (runs / "mine").is_dir() and not (runs / "mine" / "config.yaml").exists()
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=mine", "steps=1",
                 "eval.val_size=0"]) == 0
    assert yaml.safe_load((runs / "mine" / "config.yaml").read_text())["steps"] == 1


def test_a_validation_with_nothing_to_score_writes_no_val_row(photos, tmp_path):
    """`eval.val_size=0` (no val_dir, no eval.data) wrote `{"event": "val"}` rows holding nothing, at every
    `eval.every` and at the end, which a reader of metrics.jsonl took for validations. Now there is none."""
    runs = tmp_path / "runs"
    assert main(["train", STAGE1, f"data.photos={photos}", f"out_dir={runs}", "name=r", "steps=2", "batch_size=2",
                 "eval.val_size=0", "eval.every=1"]) == 0
    rows = [json.loads(line) for line in (runs / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows if r["event"] != "train"] == [], rows
    assert (runs / "r" / "final").is_dir() and not (runs / "r" / "best").exists()


def test_a_metrics_row_or_best_record_whose_step_is_a_bool_is_not_read_as_a_step(tmp_path):
    """`"step": true` passes `isinstance(x, int)` (True == 1): a resume from step 0 dropped that row of metrics.jsonl
    as one logged past the checkpoint (a line that holds no integer step is kept as it is), and a best/ record with
    it was taken for a record of step 1."""
    from sigma.training.loop import BEST_INFO, _best_record, drop_rows_after

    metrics = tmp_path / "metrics.jsonl"
    body = b'{"step": true, "event": "train"}\n{"step": 0, "event": "train"}\n{"step": 1, "event": "train"}\n'
    metrics.write_bytes(body)
    assert drop_rows_after(metrics, 0) == 1
    assert metrics.read_bytes() == b'{"step": true, "event": "train"}\n{"step": 0, "event": "train"}\n'
    best = tmp_path / "best"
    best.mkdir()
    (best / "config.json").write_text("{}")
    for record, read in (('{"step": 1, "f1": 0.5}', True), ('{"step": true, "f1": 0.5}', False),
                         ('{"step": 1, "f1": false}', False)):
        (best / BEST_INFO).write_text(record)
        assert (_best_record(best) is not None) is read, record
