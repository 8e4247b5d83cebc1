"""A batch run planned with annotator options the annotator's config, as this sigma has it, no longer accepts (an
option removed or renamed, a range tightened): the read-only commands read it as recorded and warn, those that
would build the annotator from it refuse it with one code (`run_options_refused`)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from runrecords import rehash_shards

from sigma.batch import BatchConfig
from sigma.batch.record import plan_digest
from sigma.cli import main
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

REPO = Path(__file__).resolve().parents[1]
REMOVED = {"dilate": 2}          # an option pixel-diff's config does not have (as if removed since the run)


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, Path]:
    """A finished pixel-diff run (2 shards) and its corpus."""
    root = tmp_path_factory.mktemp("opts")
    corpus, run = root / "corpus", root / "run"
    write_pairs_jsonl(corpus, synthetic_pairs(4))
    assert main(["batch", "run", str(corpus), "--out", str(run), "--annotator", "pixel-diff", "--shard-size", "2",
                 "--workers", "0", "--no-progress"]) == 0
    return corpus, run


def _with_options(run: Path, options: dict) -> str:
    """Make `run` what a sigma whose pixel-diff took `options` left: its record's options, the run hash they make
    (with its corpus, model and plan), its shard files named by it and their rows holding it. Returns the hash."""
    record = json.loads((run / "run.json").read_text())
    then = BatchConfig.model_validate(record["config"]).model_copy(update={"options": options})
    run_hash = then.run_hash(record["corpus"], record["model"], plan_digest(record["shards"]))
    record["config"]["options"] = options
    record["run_hash"] = run_hash
    (run / "run.json").write_text(json.dumps(record))
    rehash_shards(run, run_hash)
    return run_hash


@pytest.fixture
def old_run(planned, tmp_path) -> tuple[Path, Path, str]:
    corpus, run = planned
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return corpus, copy, _with_options(copy, REMOVED)


def _sigma(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sigma", *argv], capture_output=True, text=True, timeout=120,
                          check=False, cwd=REPO)


def test_status_of_a_run_whose_options_are_refused_now_counts_it_and_warns(old_run):
    """`sigma batch status` (read-only) was `run_modified`, exit 2, "its config is not a batch config
    (options.dilate: Extra inputs are not permitted)": the record was taken for edited. Now it counts the run as
    recorded, exit 0, and says on one stderr line that the options are no longer accepted."""
    _, run, run_hash = old_run
    done = _sigma("batch", "status", str(run))
    assert done.returncode == 0, done.stderr
    assert f"run {run_hash}: 2/2 shards done" in done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sigma: warning: "), done.stderr
    assert "options.dilate" in lines[0] and "run_options_refused" in lines[0] and "pixel-diff" in lines[0]


def test_status_json_carries_the_warning_as_the_http_answer_does(planned, old_run):
    """`sigma batch status --json` said the options were refused on stderr only: its JSON had no `warnings`, so a
    script reading it could not see that the run can no longer be continued by this sigma (GET /v1/batches/status
    has said so in `warnings` since 75d872b). Now the JSON carries the same list, from the same producer
    (`sigma.batch.record.run_warnings`): `[{"code": "run_options_refused", "message": ...}]`, `[]` for a run as
    planned; the stderr line stays for people."""
    from sigma.batch.layout import RunDir
    from sigma.batch.record import run_warnings, verified_record

    _, run, run_hash = old_run
    done = _sigma("batch", "status", str(run), "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["run_hash"] == run_hash and answer["done"] == 2, answer
    [warning] = answer["warnings"]
    assert warning["code"] == "run_options_refused", warning
    assert "options.dilate" in warning["message"] and str(run / "run.json") in warning["message"], warning
    assert done.stderr == f"sigma: warning: {warning['message']}\n", done.stderr
    record, _ = verified_record(RunDir(run), "no status shown")
    assert answer["warnings"] == run_warnings(record, run / "run.json")
    fine = _sigma("batch", "status", str(planned[1]), "--json")
    assert fine.returncode == 0 and fine.stderr == "", fine.stderr
    assert json.loads(fine.stdout)["warnings"] == []


def test_exports_and_the_review_page_of_such_a_run_read_it_and_warn(old_run, tmp_path, capsys):
    _, run, run_hash = old_run
    outs = tmp_path / "outs"
    for argv in (["export", "coco", str(run), "--out", str(outs / "c.json")],
                 ["export", "imdl-benco", str(run), "--out", str(outs / "benco")],
                 ["export", "hf", str(run), str(outs / "hf")], ["report", str(run)]):
        assert main(argv) == 0, (argv, capsys.readouterr().err)
        err = capsys.readouterr().err
        assert err.count("sigma: warning: ") == 1 and "options.dilate" in err and "run_options_refused" in err, err
    assert run_hash in (outs / "hf" / "README.md").read_text() and (run / "report.html").exists()


@pytest.mark.parametrize("options", [["--set", "options.dilate=2"], []], ids=["same_options", "without_them"])
def test_resuming_such_a_run_is_one_clear_refusal(old_run, options):
    """`--resume` with the run's own options failed on the command line (`invalid_config`: options.dilate ...), and
    without them as another run (`run_modified`-like, "restore run.json"): neither said the run cannot go on with
    this sigma. Now both are `run_options_refused`, one line, exit 2, naming run.json and what to do."""
    corpus, run, _ = old_run
    before = sorted(p.name for p in (run / "shards").iterdir())
    done = _sigma("batch", "run", str(corpus), "--out", str(run), "--annotator", "pixel-diff", "--shard-size", "2",
                  "--workers", "0", "--no-progress", "--resume", *options)
    assert done.returncode == 2, done
    assert done.stderr.startswith("sigma: error [run_options_refused]: ") and done.stderr.count("\n") == 1, done.stderr
    assert str(run / "run.json") in done.stderr and "new --out" in done.stderr and "options.dilate" in done.stderr
    assert sorted(p.name for p in (run / "shards").iterdir()) == before


def test_options_edited_into_run_json_are_still_an_edited_record(planned, tmp_path, capsys):
    """Options written into run.json without the run hash to match are an edit, as before: `run_modified`."""
    _, run = planned
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    record = json.loads((copy / "run.json").read_text())
    record["config"]["options"] = REMOVED
    (copy / "run.json").write_text(json.dumps(record))
    assert main(["batch", "status", str(copy)]) == 2
    assert capsys.readouterr().err.startswith("sigma: error [run_modified]: ")


def test_a_fleet_workers_task_of_such_a_run_is_refused_with_the_code(old_run):
    """A fleet worker checks the run's config before it builds the annotator from it: such a run's task was refused
    as a damaged run.json (`run_modified`, "its config is not a batch config"); now as `run_options_refused`."""
    from sigma.service.fleet import _checked_config

    _, run, run_hash = old_run
    record = json.loads((run / "run.json").read_text())
    found = _checked_config({"run_dir": str(run), "run_hash": run_hash}, record)
    assert isinstance(found, str) and found.startswith("[run_options_refused] "), found
    assert "options.dilate" in found and "refused, nothing run" in found
