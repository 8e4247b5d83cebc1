"""A 5000-character value (a path, an option, a pair id) in an error line: it came back whole, through the real CLI.

`sigma batch submit --set options.weights=<5000 x>` was `os_error: File name too long: xxxx…` with all 5000
characters: the submit's weights checks (`check_model_files`, `check_weights_reference`) let ENAMETOOLONG out of
Path.exists, and the CLI's generic os_error line (and its SigmaError line: `bad_outdir`) printed values uncut. Now the
weights checks say `weights_not_found` and every error line cuts long values (`sigma.cli.common.error_line`).
Real subprocesses, real files; an unreachable Redis (nothing is ever queued)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from servicekit import base_env

from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

LONG = "x" * 5000
DEEP = "/" + "a/" * 3000          # past PATH_MAX, each name short
SHORT = 500                      # an error line's length at most, whatever the value


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("long-values")
    write_pairs_jsonl(folder, synthetic_pairs(2, size=32))
    return folder


def sigma_cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sigma", *args], capture_output=True, text=True, timeout=120,
                          env=base_env("redis://127.0.0.1:1/0"), cwd=str(cwd), input=stdin, check=False)


def assert_short_line(proc: subprocess.CompletedProcess, code: str, *needles: str) -> None:
    """Exit 2, the code named, each line under SHORT characters (the length of the cut value said), no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[:600])
    lines = proc.stderr.splitlines()
    assert any(line.startswith(f"sigma: error [{code}]: ") for line in lines), proc.stderr[:600]
    assert all(len(line) < SHORT for line in lines), [len(line) for line in lines]
    assert "Traceback" not in proc.stderr and all(n in proc.stderr for n in needles), (needles, proc.stderr[:600])


@pytest.mark.parametrize("args, code, needles", [
    (["--set", f"options.weights={LONG}"], "weights_not_found",
     ["options.weights: xxx", "(5000 characters) cannot name a file (File name too long)"]),
    (["--annotator", "feature-diff", "--set", f"options.backbone_weights={DEEP}"], "weights_not_found",
     ["options.backbone_weights: /a/a/", "(6001 characters) cannot name a file"]),
    # bad_outdir, as annotate and eval say it (was os_error while RunDir.exists let ENAMETOOLONG out of is_file())
    (["--out", LONG], "bad_outdir", ["xxx…xxx", "(5000 characters): not a usable output folder (File name too long)"]),
])
def test_batch_submit_says_a_long_value_cut_with_the_projects_code(corpus, args, code, needles):
    """The reviewer's case: the weights checks' ENAMETOOLONG was `os_error` with the whole value."""
    out = ["--out", "o1"] if "--out" not in args else []
    proc = sigma_cli("batch", "submit", "pairs.jsonl", *out, *args, cwd=corpus)
    assert_short_line(proc, code, *needles)
    assert not (corpus / "o1").exists()


@pytest.mark.parametrize("args, code, limit", [
    (["batch", "status", LONG], "path_too_long", "over the 255 a file or folder name may have (NAME_MAX)"),
    (["batch", "run", "pairs.jsonl", "--out", LONG], "bad_outdir", "File name too long"),
    (["eval", "--annotator", "pixel-diff", "--data", LONG], "path_too_long", "its name is 5000 bytes, over the 255"),
    (["eval", "--annotator", "pixel-diff", "--data", DEEP], "path_too_long",
     "bytes from the root, over the 4096 a path may have (PATH_MAX)"),
    (["batch", "run", f"{LONG[:400]}/pairs.jsonl", "--out", "o2"], "path_too_long",
     "a folder's name in it is 400 bytes, over the 255"),
    (["report", DEEP], "path_too_long", "over the 4096 a path may have (PATH_MAX)"),
    (["export", "coco", LONG, "--out", "c.json"], "path_too_long", "over the 255 a file or folder name may have"),
])
def test_other_commands_cut_a_long_path_in_their_error_line(corpus, args, code, limit):
    """`os_error` (the CLI's line for any OSError) and the project's own errors printed a 5000-character path whole.
    An input path over the system's limits (a name over NAME_MAX, the whole over PATH_MAX) was `os_error` "File name
    too long", the code of a machine's refusal, naming no limit: now `path_too_long`, saying which limit and by how
    much (bad input, as a too-long --out folder is `bad_outdir`)."""
    assert_short_line(sigma_cli(*args, cwd=corpus), code, "characters)", limit)
    assert not (corpus / "o2").exists()


def test_annotate_cuts_a_long_pair_id_in_each_pairs_error_line(corpus):
    """`sigma annotate -` with a list of pairs: each failed pair's line printed its value whole (a 5000-character
    id in `bad_json`)."""
    pairs = [{"original": LONG, "edited": "b.png"}, {"original": "a.png", "edited": "b.png", "id": LONG}]
    proc = sigma_cli("annotate", "-", "--annotator", "pixel-diff", "--out", "ann", cwd=corpus, stdin=json.dumps(pairs))
    assert_short_line(proc, "bad_json", "characters)")
