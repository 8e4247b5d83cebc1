"""A full disk under `sigma eval`, `sigma report` and the exports: one `out_of_space` line naming the file the write
was for (it was `os_error: No space left on device`, mostly naming nothing), and what was finished kept.

`/dev/full` refuses every write with ENOSPC, for anyone; a small tmpfs (root only, skipped elsewhere) is a real full
disk for the outputs that are files."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tmpfs import mounted_tmpfs

from sigma.batch import BatchConfig, run_batch
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

HINT = " (free room on that file system, or write elsewhere)"


def sigma(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sigma", *argv], capture_output=True, text=True, timeout=180,
                          check=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "set"
    write_pairs_jsonl(root, synthetic_pairs(3))
    return root


@pytest.fixture(scope="module")
def run_dir(corpus: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full_disk_run") / "run"
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus)}, "annotator": "pixel-diff", "workers": 0})
    assert run_batch(cfg, out, progress=False).status["ok"] == 3
    return out


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs filled with 4 KiB files, then one removed: one page (4 KiB) of room left."""
    with mounted_tmpfs(tmp_path / "disk", "256k") as disk:
        fill = disk / "fill"
        fill.mkdir()
        n = 0
        while True:
            try:
                (fill / str(n)).write_bytes(b"x" * 4096)
            except OSError:
                break
            n += 1
        (fill / str(n)).unlink(missing_ok=True)
        (fill / "0").unlink()
        yield disk


@pytest.mark.parametrize("argv", [["report", "RUN", "--out", "/dev/full"],
                                  ["export", "coco", "RUN", "--out", "/dev/full"]])
def test_an_output_that_is_dev_full_is_out_of_space_naming_it(run_dir, argv):
    """`--out /dev/full`: was `os_error: No space left on device`, no path."""
    done = sigma(*[str(run_dir) if a == "RUN" else a for a in argv])
    assert done.returncode == 2, done
    assert done.stderr == f"sigma: error [out_of_space]: No space left on device: /dev/full{HINT}\n"


def test_a_full_disk_under_eval_names_the_file_keeps_the_scored_pairs_and_the_rerun_continues(corpus, full_disk):
    """Room for the journal (one batch of pairs scored) but not for config.yaml / metrics.json: was `os_error: No
    space left on device` naming nothing. Now `out_of_space` naming OUT/config.yaml; the journal holds the scored
    batch, no temporary file is left, and the same eval run again once there is room continues from the journal and
    writes the metrics."""
    (full_disk / "fill" / "1").unlink()     # two pages: one for the folder --out, one for the journal
    out = full_disk / "ev"
    argv = ["eval", "--data", str(corpus), "--annotator", "pixel-diff", "--out", str(out)]
    done = sigma(*argv)
    assert done.returncode == 2, done
    assert done.stderr == f"sigma: error [out_of_space]: No space left on device: {out / 'config.yaml'}{HINT}\n"
    assert sorted(p.name for p in out.iterdir()) == [".lock", "eval_progress.jsonl"]
    assert len((out / "eval_progress.jsonl").read_text().splitlines()) == 2      # the header and the one batch
    for f in (full_disk / "fill").iterdir():
        f.unlink()
    again = sigma(*argv)
    assert again.returncode == 0, again
    assert "continuing the eval killed in" in again.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml", "metrics.json"]
    assert len(json.loads((out / "metrics.json").read_text())["per_pair"]["none"]) == 3


@pytest.mark.parametrize("how", ["report", "coco", "coco-images", "hf", "imdl-benco"])
def test_a_full_disk_under_report_and_exports_names_the_output(run_dir, full_disk, how):
    """A full disk at the review page, the COCO JSON (its spool beside it), the images of `--images` and a HF
    export's parquet: `os_error: No space left on device` with no path (pyarrow's: `Error writing bytes to file.
    Detail: [errno 28]`). Now `out_of_space` naming the output, and nothing left there."""
    argv, named = {
        "report": (["report", str(run_dir), "--out", str(full_disk / "r.html")], full_disk / "r.html"),
        "coco": (["export", "coco", str(run_dir), "--out", str(full_disk / "c.json")], full_disk / "c.json"),
        "coco-images": (["export", "coco", str(run_dir), "--out", str(run_dir.parent / "c.json"), "--images",
                         str(full_disk / "im")], None),
        "hf": (["export", "hf", str(run_dir), str(full_disk / "hf")], full_disk / "hf" / "data"),
        # an image named in OUT/Tp or OUT/Gt, where the user looks: it named the hidden staging OUT/.Tp.tmp/NAME.png
        "imdl-benco": (["export", "imdl-benco", str(run_dir), "--out", str(full_disk / "b")], None),
    }[how]
    done = sigma(*argv)
    assert done.returncode == 2, done
    assert done.stderr.startswith("sigma: error [out_of_space]: No space left on device: "), done.stderr
    assert done.stderr.endswith(f"{HINT}\n")
    if named is not None:
        assert done.stderr == f"sigma: error [out_of_space]: No space left on device: {named}{HINT}\n"
    else:   # one of the images, under its name in --images (IMDL-BenCo: in OUT/Tp or OUT/Gt)
        folder = full_disk / "im" if how == "coco-images" else full_disk / "b"
        assert f": {folder}/" in done.stderr and done.stderr.count(".tmp") == 0, done.stderr
    left = sorted(str(p.relative_to(full_disk)) for p in full_disk.rglob("*") if p.parent.name != "fill")
    assert [p for p in left if p.endswith(".tmp")] == [], left
