"""The `sigma` command: annotate, eval, models, config files, overrides and errors (exit 2, one line)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sigma.cli
from sigma.assets import example_pair
from sigma.rle import decode_rle, mask_bbox

REPO = Path(__file__).resolve().parents[1]
TRAIN_TINY = REPO / "configs" / "train" / "tiny-stage1.yaml"


def sigma_cmd(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script when there is one (a real install), else `python -m sigma`."""
    exe = Path(sys.executable).with_name("sigma")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sigma"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd + list(args), input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=env, check=False)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = sigma.cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error_line(err: str, code: str | None = None) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sigma: error ["), err
    assert "Traceback" not in err
    if code:
        assert lines[0].startswith(f"sigma: error [{code}]"), err


def save(arr: np.ndarray, path: Path) -> Path:
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture()
def pair_files(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    orig = rng.integers(40, 200, size=(30, 40, 3), dtype=np.uint8)
    edited = orig.copy()
    edited[5:15, 10:30] = 250
    return save(orig, tmp_path / "orig.png"), save(edited, tmp_path / "edited.png")


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ---------------------------------------------------------------- annotate: the README's first command
def test_annotate_example_writes_the_four_outputs(tmp_path):
    out = tmp_path / "out"
    proc = sigma_cmd("annotate", "--example", "--annotator", "pixel-diff", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "sigma_example" in proc.stdout
    mask = read_png(out / "mask.png")
    assert mask.dtype == np.uint8 and mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}
    prob = read_png(out / "prob.png")
    assert prob.dtype == np.uint8 and prob.shape == (512, 512)
    overlay = read_png(out / "overlay.png")
    assert overlay.shape == (512, 512, 3)
    record = json.loads((out / "result.json").read_text())
    decoded = decode_rle(record["segmentation"])
    np.testing.assert_array_equal(decoded, mask == 255)
    assert record["area"] == int((mask == 255).sum()) and record["bbox"] == mask_bbox(mask == 255)
    assert record["instruction"] == example_pair()["instruction"]
    assert set(record["timings_ms"]) >= {"load", "predict"}
    assert record["config"]["annotator"] == "pixel-diff" and record["config_hash"]
    assert record["files"] == {"mask": "mask.png", "prob": "prob.png", "overlay": "overlay.png"}
    assert (out / "config.yaml").is_file()
    # and the mask is a good one: pixel difference on this composite is close to the ground truth
    gt = read_png(Path(example_pair()["mask"])) > 127
    pred = mask == 255
    f1 = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    assert f1 > 0.85
    # the overlay tints the marked pixels and leaves the others as the edited image
    edited = np.asarray(Image.open(example_pair()["edited"]).convert("RGB"))
    far = np.zeros_like(pred)
    far[:100, :200] = True                      # top-left: flag and backdrop, untouched by the edit
    assert not pred[far].any()
    np.testing.assert_array_equal(overlay[far], edited[far])
    assert (overlay[pred].astype(int)[:, 0] >= edited[pred].astype(int)[:, 0] - 1).all()


def test_annotate_one_pair_in_process(capsys, pair_files, tmp_path):
    orig, edited = pair_files
    code, _out, err = run_main(capsys, "annotate", str(orig), str(edited), "-i", "make a white bar",
                              "--annotator", "pixel-diff", "-o", str(tmp_path / "o"))
    assert code == 0, err
    record = json.loads((tmp_path / "o" / "result.json").read_text())
    assert record["bbox"] == [10, 5, 20, 10] and record["area"] == 200
    assert record["instruction"] == "make a white bar" and record["threshold"] == 0.05
    assert record["preprocess"]["original"]["format"] == "PNG"


def test_result_json_says_what_preprocessing_did(capsys, tmp_path):
    rng = np.random.default_rng(2)
    orig = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    rgba = np.dstack([orig, np.full((20, 30), 255, np.uint8)])
    rgba[0, 0, 3] = 0                                                   # one transparent pixel
    save(rgba, tmp_path / "o.png")
    save(np.asarray(Image.fromarray(orig).resize((60, 40))), tmp_path / "e.png")   # twice the size
    rc, _, err = run_main(capsys, "annotate", str(tmp_path / "o.png"), str(tmp_path / "e.png"),
                          "--annotator", "pixel-diff", "-o", str(tmp_path / "out"))
    assert rc == 0, err
    rec = json.loads((tmp_path / "out" / "result.json").read_text())
    assert rec["preprocess"]["original"]["alpha"] == "composited on white"
    assert rec["preprocess"]["resize"] == "edited resized 60x40 -> 30x20 (area)"
    assert rec["size"] == [20, 30] and read_png(tmp_path / "out" / "mask.png").shape == (20, 30)


def test_stdin_batch_annotates_the_good_and_reports_the_bad(pair_files, tmp_path):
    orig, edited = pair_files
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    items = [{"id": "good1", "original": str(orig), "edited": str(edited), "instruction": "add a bar"},
             {"id": "bad", "original": str(orig), "edited": str(bad)},
             {"id": "good2", "original": str(orig), "edited": str(edited)}]
    out = tmp_path / "batch"
    proc = sigma_cmd("annotate", "-", "--annotator", "pixel-diff", "-o", str(out), stdin=json.dumps(items))
    assert proc.returncode == 2
    assert (out / "good1" / "mask.png").is_file() and (out / "good2" / "result.json").is_file()
    assert not (out / "bad").exists()
    assert "Traceback" not in proc.stderr
    assert "sigma: error [image_unreadable]: bad: " in proc.stderr and str(bad) in proc.stderr
    assert "2 of 3 pairs annotated" in proc.stderr


def test_stdin_per_item_problems(capsys, monkeypatch, pair_files, tmp_path):
    orig, edited = pair_files
    items = [{"id": "../escape", "original": str(orig), "edited": str(edited)},
             {"id": "ok", "original": str(orig), "edited": str(edited)},
             {"id": "ok", "original": str(orig), "edited": str(edited)},
             "not-an-object",
             {"id": "noedited", "original": str(orig)},
             {"id": "emptyinstr", "original": str(orig), "edited": str(edited), "instruction": "  "}]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(items)))
    code, _out, err = run_main(capsys, "annotate", "-", "--annotator", "pixel-diff", "-o", str(tmp_path / "b"))
    assert code == 2
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [".lock", "ok"]   # .lock: the hold on -o
    assert not (tmp_path / "escape").exists()
    assert "not a safe folder name" in err and "appears twice" in err and "got str" in err
    assert "needs 'original' and 'edited'" in err and "[empty_instruction]" in err
    assert "1 of 6 pairs annotated" in err


def test_a_second_result_in_one_folder_leaves_no_mask_of_the_first(capsys, tmp_path):
    """A composite annotated into -o, then a pair that is not one (or pixel-diff, which writes one mask) into the
    same -o: the first pair's mask_footprint.png (and mask_semantic.png) stayed beside a result.json whose
    footprint_segmentation was null and whose "files" did not list it, another pair's mask read as this one's."""
    rng = np.random.default_rng(0)
    orig = rng.integers(0, 255, (33, 65, 3), dtype=np.uint8)
    composite = orig.copy()
    composite[8:16, 16:32] = 255 - composite[8:16, 16:32]
    for name, img in (("o.png", orig), ("c.png", composite), ("r.png", 255 - orig)):
        save(img, tmp_path / name)
    out = tmp_path / "out"
    base = ["annotate", str(tmp_path / "o.png")]
    assert run_main(capsys, *base, str(tmp_path / "c.png"), "--annotator", "pixel-diff", "--set",
                    "options.mask_mode=auto", "-o", str(out))[0] == 0
    assert (out / "mask_footprint.png").is_file() and (out / "mask_semantic.png").is_file()
    assert run_main(capsys, *base, str(tmp_path / "r.png"), "--annotator", "pixel-diff", "--set",
                    "options.mask_mode=auto", "-o", str(out))[0] == 0
    record = json.loads((out / "result.json").read_text())
    assert record["footprint_segmentation"] is None and "footprint_mask" not in record["files"]
    assert not (out / "mask_footprint.png").exists() and (out / "mask_semantic.png").is_file()
    assert run_main(capsys, *base, str(tmp_path / "c.png"), "--annotator", "pixel-diff", "-o", str(out))[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml", "mask.png", "overlay.png", "prob.png",
                                                     "result.json"]


@pytest.mark.parametrize(("first_id", "kept", "said"), [
    ("Boat", "Boat", "'boat' appears twice"),
    ("boat\n", "boat", "not a safe folder name"),
], ids=["case", "trailing-newline"])
def test_stdin_ids_that_would_be_one_folder_or_no_safe_name_are_refused(capsys, monkeypatch, pair_files, tmp_path,
                                                                        first_id, kept, said):
    """"Boat" and "boat" were two pairs here but one output folder on a case-insensitive disk (macOS, Windows):
    the second pair's mask overwrote the first's, both reported as written; ids are compared case-folded, as the
    exports name their files. "boat\n" passed the safe-id check (`$` matches before a trailing newline) and was
    written to a folder named `boat<newline>` beside "boat": neither the letters, digits, '.', '_', '-' the message
    promises, nor one folder per pair as a consumer listing the output sees it."""
    orig, edited = pair_files
    items = [{"id": first_id, "original": str(orig), "edited": str(edited)},
             {"id": "boat", "original": str(orig), "edited": str(edited)}]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(items)))
    code, _out, err = run_main(capsys, "annotate", "-", "--annotator", "pixel-diff", "-o", str(tmp_path / "b"))
    assert code == 2 and sorted(p.name for p in (tmp_path / "b").iterdir()) == [".lock", kept]
    assert "[bad_json]" in err and said in err and "1 of 2 pairs annotated" in err


def test_stdin_pairs_refuse_per_pair_options_and_say_which_keys_they_ignore(capsys, monkeypatch, pair_files,
                                                                          tmp_path):
    """A per-pair "threshold" (the API takes one per request) would be silently ignored here, the mask made
    with another: refused, naming the way to set it; metadata such as a pairs.jsonl record's mask or editor
    is ignored with one warning line."""
    orig, edited = pair_files
    items = [{"id": "p1", "original": str(orig), "edited": str(edited), "threshold": 0.9},
             {"id": "meta", "original": str(orig), "edited": str(edited), "mask": "m.png", "editor": "x"}]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(items)))
    code, _out, err = run_main(capsys, "annotate", "-", "--annotator", "pixel-diff", "-o", str(tmp_path / "b"))
    assert code == 2
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [".lock", "meta"]
    assert "sigma: error [bad_json]: pair p1: 'threshold' cannot be set per pair" in err and "--threshold" in err
    assert "sigma: warning: ignored key(s) in the pairs: 'editor', 'mask'" in err
    assert err.count("p1") == 1                                   # the pair is named once, not twice


def test_stdin_pairs_are_decoded_one_batch_at_a_time(capsys, monkeypatch, pair_files, tmp_path):
    """A long list on stdin holds batch_size decoded pairs in memory, not all of them: each batch is read,
    annotated and written before the next is read (so the pairs before a fault are on disk)."""
    import sigma.io.outputs
    import sigma.io.pairs

    orig, edited = pair_files
    events: list[str] = []
    real_load, real_write = sigma.io.pairs.load_pair, sigma.io.outputs.write_annotation
    monkeypatch.setattr(sigma.io.pairs, "load_pair", lambda *a, **k: events.append("load") or real_load(*a, **k))
    monkeypatch.setattr(sigma.io.outputs, "write_annotation",
                        lambda *a, **k: events.append("write") or real_write(*a, **k))
    items = [{"id": f"p{i}", "original": str(orig), "edited": str(edited)} for i in range(5)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(items)))
    code, _out, err = run_main(capsys, "annotate", "-", "--annotator", "pixel-diff", "-o", str(tmp_path / "b"),
                               "--set", "batch_size=2")
    assert code == 0, err
    assert events == ["load", "load", "write", "write", "load", "load", "write", "write", "load", "write"]


def test_stdin_larger_than_the_cap_is_refused_before_parsing(capsys, monkeypatch, tmp_path):
    import sigma.cli.annotate

    monkeypatch.setattr(sigma.cli.annotate, "MAX_STDIN_BYTES", 64)
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps([{"original": "a" * 80, "edited": "b"}])))
    code, _out, err = run_main(capsys, "annotate", "-", "--annotator", "pixel-diff", "-o", str(tmp_path / "b"))
    assert code == 2 and "[input_too_large]" in err and "sigma batch run" in err
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- every bad input: exit 2, one line
def _bad_cases(tmp: Path, orig: Path, edited: Path) -> dict[str, tuple[list[str], str | None]]:
    (tmp / "text.png").write_text("I am text")
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "trunc.png").write_bytes(orig.read_bytes()[:60])
    save(np.zeros((30, 80, 3), np.uint8), tmp / "wide.png")
    (tmp / "bad.yaml").write_text("io: [unclosed")
    (tmp / "unknown.yaml").write_text("io:\n  alignn: true\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "afile").write_text("x")
    (tmp / "latin1.txt").write_bytes("remove the boat\nremove the caf\xe9\n".encode("latin-1"))
    # pairs.jsonl sets that a print, a hash or an open() of would have crashed on, refused at the line
    rec = {"id": "a", "original": orig.name, "edited": edited.name, "mask": orig.name}
    for name, line in {"surrogate": json.dumps({**rec, "instruction": "remove the \udc80"}),
                       "nul": json.dumps({**rec, "edited": "b\x00.png"}), "not_utf8": None,
                       # CPython raises a bare ValueError / RecursionError for these, not a JSONDecodeError
                       "huge_int": json.dumps(rec)[:-1] + ', "whole_image_changed": ' + "9" * 5000 + "}",
                       "deep": json.dumps(rec)[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000 + "}"}.items():
        (tmp / f"set_{name}").mkdir()
        (tmp / f"set_{name}" / "pairs.jsonl").write_bytes(
            line.encode() + b"\n" if line else json.dumps(rec).encode()[:-1] + b', "editor": "\xff"}\n')
    (tmp / "folder_bad_instructions").mkdir()
    (tmp / "folder_bad_instructions" / "x_original.png").write_bytes(orig.read_bytes())
    (tmp / "folder_bad_instructions" / "x_edited.png").write_bytes(edited.read_bytes())
    (tmp / "folder_bad_instructions" / "instructions.jsonl").write_text(
        '{"id": "x", "instruction": ' + "9" * 5000 + "}\n")
    o, e = str(orig), str(edited)
    pd = ["--annotator", "pixel-diff", "-o", str(tmp / "out")]
    return {
        "missing": (["annotate", o, str(tmp / "missing.png"), *pd], "file_not_found"),
        "text": (["annotate", o, str(tmp / "text.png"), *pd], "image_unreadable"),
        "empty": (["annotate", str(tmp / "empty.png"), e, *pd], "image_empty"),
        "truncated": (["annotate", str(tmp / "trunc.png"), e, *pd], "image_unreadable"),
        "aspect": (["annotate", o, str(tmp / "wide.png"), *pd], "aspect_mismatch"),
        "empty_instruction": (["annotate", o, e, "-i", "", *pd], "empty_instruction"),
        "too_many_pixels": (["annotate", o, e, "--set", "io.limits.max_pixels=100", *pd], "too_many_pixels"),
        "too_many_bytes": (["annotate", o, e, "--set", "io.limits.max_bytes=10", *pd], "file_too_large"),
        "unknown_annotator": (["annotate", o, e, "--annotator", "pixel-dif"], "unknown_name"),
        # `--annotator "$UNSET"` ran the embedded default without a word
        "empty_annotator": (["annotate", o, e, "--annotator", ""], "bad_arguments"),   # the flag's value
        "threshold_range": (["annotate", o, e, *pd, "--threshold", "2"], "bad_arguments"),
        "threshold_type": (["annotate", o, e, *pd, "--threshold", "x"], "bad_arguments"),
        "unknown_set_key": (["annotate", o, e, *pd, "--set", "io.alignn=true"], "invalid_config"),
        "set_syntax": (["annotate", o, e, *pd, "--set", "threshold"], "invalid_config"),
        "unknown_option": (["annotate", o, e, *pd, "--set", "options.tau=0.1"], "invalid_config"),
        "bad_yaml": (["annotate", o, e, *pd, "--config", str(tmp / "bad.yaml")], "invalid_config"),
        "unknown_yaml_key": (["annotate", o, e, *pd, "--config", str(tmp / "unknown.yaml")], "invalid_config"),
        "yaml_not_mapping": (["annotate", o, e, *pd, "--config", str(tmp / "list.yaml")], "invalid_config"),
        "missing_config": (["annotate", o, e, *pd, "--config", str(tmp / "nope.yaml")], "invalid_config"),
        "no_edited": (["annotate", o, *pd], "bad_arguments"),
        "no_args": (["annotate"], "bad_arguments"),
        "outdir_is_file": (["annotate", o, e, "--annotator", "pixel-diff", "-o", str(tmp / "afile")],
                           "out_not_a_folder"),
        "outdir_name_too_long": (["annotate", o, e, "--annotator", "pixel-diff", "-o", str(tmp / ("d" * 300))],
                                 "bad_outdir"),
        # one situation, one code in every command: a folder that cannot be made is bad_outdir (synth said
        # os_error), an output folder that is a file out_not_a_folder (annotate and eval said bad_outdir)
        "synth_out_name_too_long": (["synth", "--out", str(tmp / ("s" * 300)), "-n", "1", "--photos", str(tmp)],
                                    "bad_outdir"),
        "synth_out_under_file": (["synth", "--out", str(tmp / "afile" / "s"), "-n", "1", "--photos", str(tmp)],
                                 "bad_outdir"),
        "synth_out_is_file": (["synth", "--out", str(tmp / "afile"), "-n", "1", "--photos", str(tmp)],
                              "out_not_a_folder"),
        "train_run_folder_is_file": (["train", str(TRAIN_TINY), f"out_dir={tmp}", "name=afile"], "out_not_a_folder"),
        "train_run_folder_under_file": (["train", str(TRAIN_TINY), f"out_dir={tmp / 'afile'}"], "bad_outdir"),
        # an input path over the system's limits is bad input naming the limit (it was os_error "File name too long")
        "eval_data_name_too_long": (["eval", "--data", str(tmp / ("e" * 300)), "--annotator", "pixel-diff"],
                                    "path_too_long"),
        "example_and_paths": (["annotate", "--example", o, e], "bad_arguments"),
        "unknown_flag": (["annotate", o, e, "--treshold", "0.1"], "bad_arguments"),
        "eval_missing_data": (["eval", "--data", str(tmp / "nothing"), "--annotator", "pixel-diff"],
                              "file_not_found"),
        "eval_bad_perturb": (["eval", "--data", str(tmp), "--annotator", "pixel-diff", "--perturb", "jpeg50"],
                             "bad_arguments"),
        "eval_no_data_flag": (["eval"], "bad_arguments"),
        "eval_surrogate_record": (["eval", "--data", str(tmp / "set_surrogate"), "--annotator", "pixel-diff"],
                                  "invalid_text"),
        "eval_nul_path": (["eval", "--data", str(tmp / "set_nul"), "--annotator", "pixel-diff"], "invalid_path"),
        "eval_not_utf8": (["eval", "--data", str(tmp / "set_not_utf8"), "--annotator", "pixel-diff"],
                          "bad_manifest"),
        # refused before the evaluation (the data is not even looked at), not after minutes of it
        "eval_out_is_file": (["eval", "--data", str(tmp / "nothing"), "--annotator", "pixel-diff", "--out",
                              str(tmp / "afile")], "out_not_a_folder"),
        "eval_out_unwritable": (["eval", "--data", str(tmp / "nothing"), "--annotator", "pixel-diff", "--out",
                                 str(tmp / "afile" / "sub")], "bad_outdir"),
        "eval_huge_int": (["eval", "--data", str(tmp / "set_huge_int"), "--annotator", "pixel-diff"], "bad_manifest"),
        "eval_deep_json": (["eval", "--data", str(tmp / "set_deep"), "--annotator", "pixel-diff"], "bad_manifest"),
        "batch_huge_int_instructions": (["batch", "run", str(tmp / "folder_bad_instructions"), "--out",
                                         str(tmp / "b2"), "--annotator", "pixel-diff"], "bad_manifest"),
        "export_nan_confidence": (["export", "coco", str(tmp), "--out", str(tmp / "c.json"), "--min-confidence",
                                   "nan"], "bad_arguments"),
        "report_confidence_range": (["report", str(tmp), "--max-confidence", "2"], "bad_arguments"),
        "hf_max_shard_nan": (["export", "hf", str(tmp), str(tmp / "hf"), "--max-shard-mb", "nan"], "bad_arguments"),
        "hf_max_shard_inf": (["export", "hf", str(tmp), str(tmp / "hf"), "--max-shard-mb", "inf"], "bad_arguments"),
        "hf_max_shard_zero": (["export", "hf", str(tmp), str(tmp / "hf"), "--max-shard-mb", "0"], "bad_arguments"),
        # output files that are folders, or lie under a file: said before any work, no temporary file left
        "report_out_is_folder": (["report", str(tmp), "--out", str(tmp)], "out_is_a_folder"),
        "coco_out_is_folder": (["export", "coco", str(tmp), "--out", str(tmp)], "out_is_a_folder"),
        "coco_out_under_file": (["export", "coco", str(tmp), "--out", str(tmp / "afile" / "c.json")], "bad_outdir"),
        "unknown_command": (["annotat"], "bad_arguments"),
        # a batch is held in memory: an absurd size is a config error, not a shard decoded into RAM
        "annotate_batch_size_huge": (["annotate", o, e, *pd, "--set", "batch_size=100000000"], "invalid_config"),
        "eval_batch_size_huge": (["eval", "--data", str(tmp), "--annotator", "pixel-diff", "--set",
                                  "batch_size=99999999999999999999"], "invalid_config"),
        "batch_size_huge": (["batch", "run", str(tmp), "--out", str(tmp / "b"), "--annotator", "pixel-diff",
                             "--batch-size", "100000"], "bad_arguments"),
        # options an API batch may set: a 10^10-pixel working size or 100000 threads would kill its worker
        "working_size_huge": (["annotate", o, e, "--annotator", "sigma-lite", "-o", str(tmp / "out"), "--set",
                               "options.image_size=100000", "--set", "options.upscale=true"], "invalid_config"),
        "threads_huge": (["annotate", o, e, "--annotator", "sigma-lite", "-o", str(tmp / "out"), "--set",
                          "options.cpu_threads=100000"], "invalid_config"),
        "batch_workers_huge": (["batch", "run", str(tmp), "--out", str(tmp / "b"), "--annotator", "pixel-diff",
                                "--workers", "100000"], "bad_arguments"),
        "batch_threads_huge": (["batch", "run", str(tmp), "--out", str(tmp / "b"), "--annotator", "pixel-diff",
                                "--threads", "100000"], "bad_arguments"),
        # an instruction limit with no ceiling: 10^12 characters accepted whatever the body limit let through
        "instruction_chars_huge": (["annotate", o, e, *pd, "--set", "io.limits.max_instruction_chars=1000000000000"],
                                   "invalid_config"),
        "annotator_batch_size_huge": (["annotate", o, e, "--annotator", "sigma-lite", "-o", str(tmp / "out"),
                                       "--set", "options.batch_size=5000"], "invalid_config"),
        # a training config: 0 threads (torch raises), a 10^5 px crop (30 GB a sample in the data worker),
        "train_threads_zero": (["train", str(TRAIN_TINY), "threads=0"], "invalid_config"),
        "train_crop_huge": (["train", str(TRAIN_TINY), "data.crop=100000"], "invalid_config"),
        # ... 100000 data worker processes, a batch of a million crops in one worker's memory
        "train_workers_huge": (["train", str(TRAIN_TINY), "num_workers=100000"], "invalid_config"),
        "train_batch_huge": (["train", str(TRAIN_TINY), "batch_size=1000000"], "invalid_config"),
        # text no file can hold: non-UTF-8 bytes in argv arrive as lone surrogates; a non-UTF-8 --file line
        "annotate_instruction_surrogate": (["annotate", o, e, *pd, "-i", "add \udcff", "-o", str(tmp / "s")],
                                           "invalid_text"),
        "parse_surrogate": (["parse", "remove the \udcff boat"], "invalid_text"),
        "parse_file_not_utf8": (["parse", "--file", str(tmp / "latin1.txt")], "invalid_input"),
        # sigma parse says the codes the table of docs/foundation.md gives, not the generic invalid_input
        "parse_file_missing": (["parse", "--file", str(tmp / "no_such.jsonl")], "file_not_found"),
        "parse_too_long": (["parse", "x" * 1001], "instruction_too_long"),
        "parse_text_and_file": (["parse", "remove the boat", "--file", str(tmp / "latin1.txt")], "bad_arguments"),
        "parse_nothing": (["parse"], "bad_arguments"),
        "parse_blank": (["parse", "   "], "empty_instruction"),      # as the service answers it (422)
        "parse_model_with_rules": (["parse", "remove the boat", "--model", "m"], "bad_arguments"),
        "parse_original_alone": (["parse", "remove the boat", "--original", o], "bad_arguments"),
        # sigma synth's numbers, said before the VAE loads (a traceback from float('abc') / a negative seed)
        "synth_scales_text": (["synth", "--build-cache", str(tmp / "cache"), "--scales", "abc"], "bad_arguments"),
        "synth_scales_nan": (["synth", "--build-cache", str(tmp / "cache"), "--scales", "1.0,nan"], "bad_arguments"),
        "synth_max_side_zero": (["synth", "--build-cache", str(tmp / "cache"), "--max-side", "0"], "bad_arguments"),
        "synth_seed_negative": (["synth", "--out", str(tmp / "syn"), "--seed", "-1"], "bad_arguments"),
    }


def test_every_bad_input_exits_2_with_one_line(capsys, pair_files, tmp_path):
    orig, edited = pair_files
    failures = []
    for name, (argv, code) in _bad_cases(tmp_path, orig, edited).items():
        rc, _out, err = run_main(capsys, *argv)
        try:
            assert rc == 2, f"exit {rc}"
            assert_one_error_line(err, code)
        except AssertionError as exc:
            failures.append(f"{name}: {exc} :: {err!r}")
    assert not failures, "\n".join(failures)


def raised_codes() -> set[str]:
    """Every error code the code can raise or record: each `code="..."`, `code = "..."`, `{"code": "..."}` and
    `error_line("...", ...)` written in sigma/, api/ and workers/. (The last form was missed once: a review that
    inlined `code = "out_of_space"` into its error_line call made the code vanish from this scan.)"""
    import re

    pattern = re.compile(r"""\bcode\s*=\s*["']([a-z_]+)["']|["']code["']\s*:\s*["']([a-z_]+)["']"""
                         r"""|\berror_line\(\s*["']([a-z_]+)["']""")
    raised = set()
    for folder in ("sigma", "api", "workers"):
        for path in (REPO / folder).rglob("*.py"):
            raised |= {a or b or c for a, b, c in pattern.findall(path.read_text(encoding="utf-8"))}
    return raised


def test_every_error_code_the_code_raises_is_documented():
    """docs/foundation.md's table (and the tables of the other docs it points to) name every code a user can
    meet: each code `raised_codes` finds."""
    raised = raised_codes()
    docs = "\n".join(p.read_text(encoding="utf-8") for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")])
    # the base classes' own codes: every raise names a more precise one
    undocumented = sorted(c for c in raised - {"sigma_error", "limit_exceeded"}
                          if f"`{c}`" not in docs and f"[{c}]" not in docs)
    assert not undocumented, f"codes raised but in no docs table: {undocumented}"
    assert {"invalid_input", "no_photos", "no_results", "out_not_a_folder", "missing_extra", "redis_unavailable",
            "worker_failed"} <= raised


# Codes the API never answers with a status of their own, each with why. A code the code raises that is neither here
# nor in api/errors.py's STATUS_BY_CODE fails the test below: it would fall to the default (422, its message whole).
NOT_AN_API_STATUS = {
    # base classes' own codes: every raise names a more precise one
    "sigma_error": "SigmaError's default", "limit_exceeded": "LimitError's default",
    # CLI-only: raised by a command's own flags, files or stages, never on a path the API runs
    "bad_arguments": "a command's flags", "input_too_large": "sigma annotate's stdin",
    "missing_extra": "a command whose optional dependency is not installed", "file_unreadable": "an image file by path",
    "no_photos": "sigma synth", "no_instructions": "sigma parse --file", "no_results": "sigma export",
    "empty_path": "a command's empty path argument, or sigma eval's empty `data` in its config",
    "out_is_a_folder": "an export's output file", "out_no_reader": "an output file that is a FIFO nobody reads",
    "mask_size_mismatch": "sigma eval",
    # the CLI's line for a write a full disk refused (sigma.cli._out_of_space); the API answers its own storage errors
    "out_of_space": "a command's output on a full disk",
    "os_error": "the CLI's line for an OSError no SigmaError named (the API answers those 500 internal_error)",
    "path_too_long": "the CLI's line for an ENAMETOOLONG no SigmaError named (as os_error, the API answers 500)",
    "eval_changed": "sigma eval's resume",
    "perturbation_unavailable": "sigma eval --perturb",
    "ray_unreachable": "sigma batch run --backend ray", "worker_failed": "sigma batch run's --procs / Ray workers",
    "checkpoint_unreadable": "sigma train", "checkpoint_missing": "sigma train", "data_workers_dying": "sigma train",
    "training_diverged": "sigma train", "rank_lost": "sigma train under torchrun (a rank gone mid-run)",
    "no_such_device": "sigma train under torchrun (more ranks per machine than CUDA devices)",
    "rendezvous_failed": "sigma train under torchrun (the ranks did not all connect within $SIGMA_DDP_TIMEOUT_S)",
    "graph_unavailable": "sigma models --prepare",
    # a batch worker's task outcomes: in a shard's status or dead letter (GET /v1/batches/status relays them in the
    # body, scrubbed), never raised in the API
    "bad_task": "a malformed task on the stream", "plugin_missing": "a worker without the run's plugins",
    "run_unreadable": "a run.json a worker cannot read", "shard_failed": "a shard's failure",
    "unknown": "a dead letter without a code",
    # job records: written by a worker or by the API itself into a job, shown by GET /v1/jobs/{id} in the body;
    # /v1/annotate answers them 500 annotation_failed (WORKER_SIDE_FAILURES) or, cancelled, 409 itself
    "annotator_failed": "an output that breaks the annotator contract", "dead_letter": "a job given up on",
    "job_expired": "a job whose images expired", "worker_lost": "a worker that died", "worker_hung": "a hung batch",
    "cancelled": "a job cancelled", "withdrawn": "a 503'd submission taken back",
}


def test_every_error_code_the_code_raises_has_a_deliberate_api_status():
    """`folder_busy` (a new run's `out` whose commit lock a stopped writer holds) was in no status map: POST
    /v1/batches answered it as the caller's input, 422 with no Retry-After. Every code the code raises is now either
    given a status in STATUS_BY_CODE or listed, with why, in NOT_AN_API_STATUS: a new code cannot fall to the
    default unseen. Neither list names a code nothing raises any more."""
    from sigma.api.errors import RETRY_AFTER_S, STATUS_BY_CODE

    raised = raised_codes()
    unmapped = sorted(raised - set(STATUS_BY_CODE) - set(NOT_AN_API_STATUS))
    assert not unmapped, f"codes with no deliberate API status (STATUS_BY_CODE or NOT_AN_API_STATUS): {unmapped}"
    assert not set(STATUS_BY_CODE) & set(NOT_AN_API_STATUS), set(STATUS_BY_CODE) & set(NOT_AN_API_STATUS)
    assert not set(NOT_AN_API_STATUS) - raised, sorted(set(NOT_AN_API_STATUS) - raised)
    assert {"folder_busy", "weights_busy", "run_locked"} <= set(RETRY_AFTER_S)
    assert all(STATUS_BY_CODE[code] in (409, 429, 503) for code in RETRY_AFTER_S)


def test_the_api_known_codes_are_its_documented_codes():
    """`KNOWN_CODES` (api/errors.py) was assigned twice, held `http_error` that no docs table named, and was read
    by the fuzz test alone: it is now the one list of the API's codes, each documented in docs/service.md, and
    every code written in api/ (`ApiError(status, "code", ...)`, `error_response(...)`) is one of them."""
    import re

    from sigma.api.errors import KNOWN_CODES

    service = (REPO / "docs" / "service.md").read_text(encoding="utf-8")
    undocumented = sorted(c for c in KNOWN_CODES - {"limit_exceeded"} if f"`{c}`" not in service)
    assert not undocumented, undocumented
    written = set()
    for path in (REPO / "api").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        written |= set(re.findall(r"(?:ApiError|error_response)\(\s*\d{3},\s*[\"']([a-z_]+)[\"']", text))
    assert written and written <= KNOWN_CODES, sorted(written - KNOWN_CODES)


def test_bad_input_through_the_real_console_script(pair_files, tmp_path):
    orig, _ = pair_files
    proc = sigma_cmd("annotate", str(orig), str(tmp_path / "missing.png"), "--annotator", "pixel-diff")
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_error_line(proc.stderr, "file_not_found")
    assert str(tmp_path / "missing.png") in proc.stderr
    proc = sigma_cmd("annotate", "-", stdin="{not json")
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "bad_json")


def test_annotate_dash_with_stdin_closed_is_one_line(tmp_path):
    """`sigma annotate - <&-`: Python starts with sys.stdin None; reading it was an AttributeError traceback."""
    exe = Path(sys.executable).with_name("sigma")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sigma"]
    proc = subprocess.run([*cmd, "annotate", "-", "--annotator", "pixel-diff", "-o", str(tmp_path / "out")],
                          preexec_fn=lambda: os.close(0), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, "no_pairs")
    assert "stdin: closed" in proc.stderr and not (tmp_path / "out").exists()


def test_registry_did_you_mean(capsys, pair_files):
    rc, _, err = run_main(capsys, "annotate", *map(str, pair_files), "--annotator", "pixel-dif")
    assert rc == 2 and "Did you mean 'pixel-diff'?" in err and "Known:" in err
    from sigma.errors import UnknownNameError
    from sigma.registry import create_annotator

    with pytest.raises(UnknownNameError) as info:
        create_annotator("pixeldiff")
    assert "pixel-diff" in str(info.value)


# ---------------------------------------------------------------- config: file < --set < flags
def test_config_precedence_file_then_set_then_flags(capsys, pair_files, tmp_path):
    cfg = tmp_path / "annotate.yaml"
    cfg.write_text("annotator: pixel-diff\nthreshold: 0.2\nio:\n  align: true\n")
    orig, edited = map(str, pair_files)

    def threshold_of(*extra: str) -> dict:
        out = tmp_path / f"o{len(extra)}"
        rc, _, err = run_main(capsys, "annotate", orig, edited, "--config", str(cfg), "-o", str(out), *extra)
        assert rc == 0, err
        return json.loads((out / "result.json").read_text())

    rec = threshold_of()
    assert rec["threshold"] == 0.2 and rec["config"]["io"]["align"] is True
    assert "alignment" in rec["preprocess"]
    assert threshold_of("--set", "threshold=0.3")["threshold"] == 0.3
    assert threshold_of("--set", "threshold=0.3", "--threshold", "0.4")["threshold"] == 0.4
    # the top-level threshold wins over the annotator's own option; null hands it back to the option
    assert threshold_of("--set", "options.threshold=0.25")["threshold"] == 0.2
    rec = threshold_of("--set", "threshold=null", "--set", "options.threshold=0.25", "--set", "io.align=false")
    assert rec["threshold"] == 0.25 and "alignment" not in rec["preprocess"]


def test_load_config_unit(tmp_path):
    from sigma.cli.annotate import AnnotateConfig
    from sigma.config import config_hash, load_config, save_resolved
    from sigma.errors import ConfigError

    # an annotator not registered here (a plugin's): its options are a free mapping, validated where it is built
    cfg = load_config(AnnotateConfig, None, ["io.limits.max_pixels=1000", "batch_size=2", "options.x=[1,2]",
                                             "annotator=a-plugins-annotator"])
    assert cfg.io.limits.max_pixels == 1000 and cfg.batch_size == 2 and cfg.options == {"x": [1, 2]}
    with pytest.raises(ConfigError, match="io.limits.max_pixelz"):
        load_config(AnnotateConfig, None, ["io.limits.max_pixelz=1"])
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(AnnotateConfig, None, ["batch_size=0"])
    path = save_resolved(cfg, tmp_path)
    again = load_config(AnnotateConfig, path)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(AnnotateConfig, None, ["batch_size=3"])) != config_hash(cfg)


def test_set_values_of_text_fields_are_taken_as_written(capsys, pair_files, tmp_path):
    """`--set name=a: b` was read as YAML into a mapping {a: b} ("name: Input should be a valid string"), `out_dir=on`
    into true, `name=2026-01-01` into a date, and `name=a #1` was taken as 'a' without a word. A text field takes
    the text as written (quotes removed, null where the field allows None); another field's error says what YAML
    made of the value and how to quote it."""
    from sigma.config import load_config
    from sigma.errors import ConfigError
    from sigma.service.settings import load_serve_config
    from sigma.training.config import TrainConfig

    def train(*items: str) -> TrainConfig:
        return load_config(TrainConfig, None, list(items))

    assert train("name=a: b").name == "a: b" and train("name=a #1").name == "a #1"
    assert train("out_dir=on").out_dir == "on" and train("name=2026-01-01").name == "2026-01-01"
    assert train("name=[x]").name == "[x]" and train("name=123").name == "123" and train("name=null").name == "null"
    assert train("data.photos=").data.photos == "" and train("amp=bf16").amp == "bf16"
    assert train('name="quoted"').name == "quoted" and train("name='a: b'").name == "a: b"
    assert train("init_from=null").init_from is None and train("init_from=").init_from is None
    assert train("init_from=a: b").init_from == "a: b"
    assert train("model={backbone: {kind: compact}}").model == {"backbone": {"kind": "compact"}}
    assert train("model=tiny-lite").model == "tiny-lite" and train("steps=7").steps == 7
    assert train("eval.perturb=[none, jpeg75]").eval.perturb == ["none", "jpeg75"]
    with pytest.raises(ConfigError, match=r"steps: .*read as YAML, giving \{\"a\": \"b\"\}.*quote it") as info:
        train("steps=a: b")
    assert "--set" not in info.value.message       # sigma train refuses --set: the form it takes, 'steps="a: b"'
    assert "'steps=\"a: b\"'" in info.value.message
    with pytest.raises(ConfigError) as info:      # a list where a list is wanted: no note about quoting
        train("eval.perturb=[]")
    assert "no perturbation given" in info.value.message and "read as YAML" not in info.value.message
    # the environment and `sigma serve --set` follow the same rule
    assert load_serve_config(None, ["redis.url=redis://h:1/0 #x"], env={}).redis.url == "redis://h:1/0 #x"
    # through the CLI: the annotator named 'pixel: diff' is looked up (and not found), not refused as a mapping
    orig, edited = map(str, pair_files)
    rc, _, err = run_main(capsys, "annotate", orig, edited, "-o", str(tmp_path / "o"), "--set", "annotator=pixel: diff")
    assert rc == 2 and "'pixel: diff'" in err
    assert_one_error_line(err, "unknown_name")
    rc, _, err = run_main(capsys, "annotate", orig, edited, "-o", str(tmp_path / "o"), "--annotator", "pixel-diff",
                          "--set", "batch_size=a: b")
    assert rc == 2 and "read as YAML" in err and "batch_size=\"a: b\"" in err
    assert_one_error_line(err, "invalid_config")


def test_set_integers_in_exponent_notation_are_numbers(capsys, tmp_path):
    """YAML reads `1e3` and `1e300` as text (a YAML 1.1 float needs a dot and a signed exponent), so an integer
    field refused them as "unable to parse string as an integer": `--set input.shard_size=1e300` did not say that
    the number is past the field's bound. An exponent that makes a whole number is that number, exactly."""
    from sigma.batch.config import BatchConfig
    from sigma.cli.annotate import AnnotateConfig
    from sigma.config import load_config
    from sigma.errors import ConfigError
    from sigma.training.config import TrainConfig

    assert load_config(BatchConfig, None, ["input.path=c", "input.shard_size=1e3"]).input.shard_size == 1000
    assert load_config(BatchConfig, None, ["input.path=c", "input.shard_size=2.5E+2"]).input.shard_size == 250
    assert load_config(TrainConfig, None, ["steps=1e3", "lr=1e-3"]).steps == 1000
    assert load_config(TrainConfig, None, ["lr=1e-3", "warmup_steps=0"]).lr == 0.001     # floats as before
    with pytest.raises(ConfigError) as info:
        load_config(AnnotateConfig, None, ["io.limits.max_instruction_chars=1e300"])
    assert "less than or equal to 100000" in info.value.message and "parse" not in info.value.message
    with pytest.raises(ConfigError, match=r"steps=1\.5e0: not a whole number"):
        load_config(TrainConfig, None, ["steps=1.5e0"])
    with pytest.raises(ConfigError, match="more than 4300 digits"):        # not a billion-digit number built
        load_config(TrainConfig, None, ["steps=1e999999999"])
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_main(capsys, "batch", "run", str(empty), "--out", str(tmp_path / "out"),
                          "--set", "input.shard_size=1e300")
    assert rc == 2 and "input.shard_size" in err and "at most 100000" in err and "integer" not in err
    assert_one_error_line(err, "invalid_config")


def test_yaml_files_take_integers_in_exponent_notation_as_set_does(capsys, tmp_path):
    """`--set input.shard_size=1e3` was 1000, but the same `shard_size: 1e3` in a YAML config file was refused
    as "unable to parse string as an integer" (YAML 1.1 reads `1e3` and `1.5e3` as text), and `1e300` there did
    not say it is past the field's bound. A file, `--set` and the environment now share one reading."""
    from sigma.batch.config import BatchConfig
    from sigma.config import load_config
    from sigma.errors import ConfigError
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl
    from sigma.service.settings import load_serve_config
    from sigma.training.config import TrainConfig

    def config(name: str, text: str) -> Path:
        (tmp_path / name).write_text(text)
        return tmp_path / name

    batch = config("batch.yaml", "input:\n  path: corpus\n  shard_size: 1e3\nbatch_size: 1.6E+1\n")
    cfg = load_config(BatchConfig, batch)
    assert (cfg.input.shard_size, cfg.batch_size) == (1000, 16)
    assert load_config(BatchConfig, config("b2.yaml", "input: {path: c, shard_size: 1.5e3}")).input.shard_size == 1500
    train = load_config(TrainConfig, config("train.yaml", "steps: 2e3\nlr: 1e-3\n"))
    assert (train.steps, train.lr) == (2000, 0.001)                                 # a float field as before
    serve = load_serve_config(config("serve.yaml", "queue: {lease_ms: 5e3}\n"), env={"SIGMA__QUEUE__BLOCK_MS": "2e3"})
    assert (serve.queue.lease_ms, serve.queue.block_ms) == (5000, 2000)
    with pytest.raises(ConfigError) as info:
        load_config(BatchConfig, config("huge.yaml", "input: {path: c, shard_size: 1e300}"))
    assert "at most 100000" in info.value.message and "integer" not in info.value.message
    with pytest.raises(ConfigError, match=r"half\.yaml: steps=1\.5e0: not a whole number"):
        load_config(TrainConfig, config("half.yaml", "steps: 1.5e0"))
    with pytest.raises(ConfigError, match=r"big\.yaml: steps=1e999999999: more than 4300 digits"):
        load_config(TrainConfig, config("big.yaml", "steps: 1e999999999"))
    with pytest.raises(ConfigError, match=r"override steps=1\.5e0: not a whole number"):     # a --set says so
        load_config(TrainConfig, config("ok.yaml", "steps: 1e3"), ["steps=1.5e0"])

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))
    cli = config("cli.yaml", "input:\n  shard_size: 1.5e3\nannotator: pixel-diff\nworkers: 0\n")
    rc, _, err = run_main(capsys, "batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "run"),
                          "--config", str(cli), "--no-progress")
    assert rc == 0, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["input"]["shard_size"] == 1500
    for text, needle in (("input: {shard_size: 1e300}", "at most 100000"), ("batch_size: 1e-1", "not a whole")):
        rc, _, err = run_main(capsys, "batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "bad"),
                              "--annotator", "pixel-diff", "--config", str(config("bad.yaml", text)))
        assert rc == 2 and needle in err and "unable to parse" not in err, err
        assert_one_error_line(err, "invalid_config")
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("spelt", ["0x" + "f" * 5000, "-0b" + "1" * 20000, "0" + "7" * 5000,
                                   "!!int 1:" + "59:" * 3000 + "1"],
                         ids=["hex", "binary", "octal", "base60"])
@pytest.mark.parametrize("where", ["file", "set"])
def test_a_yaml_integer_of_more_than_4300_digits_in_another_base_is_one_error_line(tmp_path, spelt, where):
    """Python bounds int('...') at 4300 decimal digits, and a decimal one was refused ("holds an integer of more
    than 4300 digits"); YAML 1.1's hex, binary, octal and base 60 integers are built without that bound. Such an
    option went into the config and the run hash, and `sigma batch run` died there: a traceback, exit 1 ("Exceeds
    the limit (4300 digits) for integer string conversion"). Now the same invalid_config line, exit 2, nothing run;
    an integer of 4300 digits in those bases is still an integer."""
    from sigma.config.loader import load_yaml
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))
    config = tmp_path / "big.yaml"
    config.write_text(f"options:\n  max_components: {spelt}\n")
    given = ["--config", str(config)] if where == "file" else ["--set", f"options.max_components={spelt}"]
    done = sigma_cmd("batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--annotator",
                     "pixel-diff", "--workers", "0", "--no-progress", *given)
    assert done.returncode == 2, done.stderr[-600:]
    assert_one_error_line(done.stderr, "invalid_config")
    assert "more than 4300 digits" in done.stderr and not (tmp_path / "run").exists(), done.stderr[-600:]
    assert load_yaml("n: 0x" + "f" * 3570, "x")["n"] == 16 ** 3570 - 1           # 4299 digits: still an integer


def test_a_base_60_integer_of_many_parts_is_refused_before_it_is_summed():
    """PyYAML sums a base 60 integer part by part, quadratic in their count: a 4 MB config of `1:59:59:…` was
    ~10 minutes of CPU (300,000 parts: 31 s) before the command said anything. The parts are counted first: the
    refusal is the part count's (its own words), never the sum's bound reached after the quadratic work. Only an
    explicit `!!int` is read in base 60 now: a plain `1:59:…` is text (YAML 1.2), read in no time."""
    from sigma.config.loader import load_yaml
    from sigma.errors import ConfigError

    with pytest.raises(ConfigError, match="holds a base 60 integer of more than 4300 digits"):
        load_yaml("n: !!int 1:" + "59:" * 300_000 + "1\n", "big.yaml")
    with pytest.raises(ConfigError, match="holds an integer of more than 4300 digits"):      # summed, then bounded
        load_yaml("n: !!int 1:" + "59:" * 2_450 + "1\n", "big.yaml")
    assert load_yaml("n: 1:" + "59:" * 300_000 + "1\n", "big.yaml")["n"].startswith("1:59:59")


def test_integer_flags_read_numbers_as_set_and_yaml_files_do(capsys, tmp_path):
    """`--set input.shard_size=1e3` and `shard_size: 1e3` in a file were 1000, but `--shard-size 1e3` was refused
    (argparse `type=int`: "invalid int value"). Every integer flag now reads with the config's own conversion
    (`sigma.config.loader.whole_number`): exponent notation that is whole, at most 4300 digits; the field's bound
    is then the config's, as for `--set`."""
    import argparse

    from sigma.cli.common import integer
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    def integer_flags(parser: argparse.ArgumentParser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from integer_flags(sub)
            elif action.type is int or action.type is integer:
                yield action
    flags = list(integer_flags(sigma.cli.build_parser()))
    assert len(flags) >= 10 and all(a.type is integer for a in flags), [a.option_strings for a in flags]

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(3, size=32))
    rc, _, err = run_main(capsys, "batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--annotator",
                          "pixel-diff", "--shard-size", "2e0", "--batch-size", "1.6E+1", "--workers", "0",
                          "--no-progress")
    assert rc == 0, err
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert (config["input"]["shard_size"], config["batch_size"]) == (2, 16), config
    for value, needle, code in (("1e300", "at most 100000", "bad_arguments"),        # the field's own bound
                                ("1.5e0", "argument --shard-size: '1.5e0': not a whole number", "bad_arguments"),
                                ("1e999999999", "'1e999999999': more than 4300 digits", "bad_arguments"),
                                ("1" * 5000, "more than 4300 digits", "bad_arguments"),
                                ("ten", "argument --shard-size: 'ten': not an integer", "bad_arguments")):
        rc, _, err = run_main(capsys, "batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "bad"),
                              "--annotator", "pixel-diff", "--shard-size", value)
        assert rc == 2 and needle in err, (value, err)
        assert_one_error_line(err, code)
        assert not (tmp_path / "bad").exists()
    assert (integer("1_000"), integer(" -3 "), integer("+1.5e3")) == (1000, -3, 1500)   # what int() took, still


def _laughs(levels: int) -> str:
    """YAML aliases nine deep per level: a few hundred bytes that expand to 9**levels values."""
    lines = ["&l0 [" + ", ".join(["1"] * 9) + "]"]
    lines += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(lines) + "]"


@pytest.mark.parametrize("how", ["file", "set"])
def test_yaml_that_expands_nests_or_repeats_a_key_is_one_config_error(capsys, pair_files, tmp_path, how):
    """A YAML file or a --set value is parsed within bounds: aliases expanding to millions of values (the
    "billion laughs": 4 GB and growing after a minute), nesting that blew the parser's stack (RecursionError
    traceback), an integer of 5000 digits (ValueError traceback), and a key given twice (the first was dropped
    without a word) are each one `invalid_config` line naming the file or the key, before any work."""
    orig, edited = map(str, pair_files)
    cases = {"expands to more than": f"options: {{x: {_laughs(7)}}}",
             "nested too deeply": "options: {x: " + "[" * 20000 + "]" * 20000 + "}",
             "more than 4300 digits": "batch_size: " + "9" * 5000,
             "duplicate key 'threshold'": "threshold: 0.9\nio: {align: true}\nthreshold: 0.1"}
    for i, (needle, text) in enumerate(cases.items()):
        if how == "file":
            (tmp_path / f"c{i}.yaml").write_text(text + "\n")
            args = ["--config", str(tmp_path / f"c{i}.yaml")]
        else:
            key, value = text.split(": ", 1)
            args = ["--set", f"{key}={value}" if "\n" not in value else "options={a: 1, a: 2}"]
            needle = "duplicate key 'a'" if "\n" in value else needle
        rc, _, err = run_main(capsys, "annotate", orig, edited, "--annotator", "pixel-diff", "-o",
                              str(tmp_path / "out"), *args)
        assert rc == 2 and needle in err, (needle, err[-300:])
        assert_one_error_line(err, "invalid_config")
        assert not (tmp_path / "out").exists()
    if how == "file":   # a file of gigabytes (a dataset passed by mistake) was read whole before parsing
        with open(tmp_path / "big.yaml", "wb") as handle:
            handle.truncate(5 * 2**20)
        rc, _, err = run_main(capsys, "annotate", orig, edited, "--annotator", "pixel-diff", "-o",
                              str(tmp_path / "out"), "--config", str(tmp_path / "big.yaml"))
        assert rc == 2 and "more than a config file holds" in err
        assert_one_error_line(err, "invalid_config")
    # what YAML is for still works: an anchor merged, and a merged key overridden (not a duplicate)
    from sigma.config.loader import load_yaml

    assert load_yaml("a: &a {x: 1, y: 2}\nb: {<<: *a, x: 3}\n", "t") == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}


@pytest.mark.parametrize("name", ["annotate", "eval"])
def test_shipped_config_files_spell_out_the_defaults(name):
    from sigma.cli.annotate import AnnotateConfig
    from sigma.cli.eval import EvalConfig
    from sigma.config import load_config

    model = {"annotate": AnnotateConfig, "eval": EvalConfig}[name]
    assert load_config(model, REPO / "configs" / f"{name}.yaml") == model()


# ---------------------------------------------------------------- help, models, eval
def test_help_texts_teach(capsys):
    rc, out, _ = run_main(capsys, "--help")
    assert rc == 0 and "annotate" in out and "eval" in out and "models" in out
    rc, out, _ = run_main(capsys, "annotate", "--help")
    assert rc == 0
    for needle in ("mask.png", "prob.png", "overlay.png", "result.json", "--example", "--set", "--config",
                   "--threshold", "--annotator", "stdin"):
        assert needle in out, needle
    rc, out, _ = run_main(capsys, "eval", "--help")
    assert rc == 0 and "--perturb" in out and "jpeg75" in out and "pairs.jsonl" in out
    rc, out, _ = run_main(capsys, "models", "--help")
    assert rc == 0 and "weights" in out
    rc, out, _err = run_main(capsys)
    assert rc == 2 and "annotate" in out


def _subcommand_parsers(parser, prefix=""):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subcommand_parsers(sub, f"{prefix}{name} ")


def test_every_help_has_examples_and_its_set_examples_are_its_own_keys():
    """README: "Every command has a `--help` with examples"; and the `--set` examples a --help shows are keys of
    that command's config (`sigma serve --set io.align=true` was invalid_config: ServeConfig has no io)."""
    import re

    from sigma.batch.config import BatchConfig
    from sigma.cli.annotate import AnnotateConfig
    from sigma.cli.eval import EvalConfig
    from sigma.config import load_config
    from sigma.service.settings import load_serve_config

    validate = {
        "annotate": lambda o: load_config(AnnotateConfig, None, o),
        "eval": lambda o: load_config(EvalConfig, None, o),
        "batch run": lambda o: load_config(BatchConfig, None, ["input.path=x", *o]),
        "batch submit": lambda o: load_config(BatchConfig, None, ["input.path=x", *o]),
        "serve": lambda o: load_serve_config(None, o, env={}),
        "worker": lambda o: load_serve_config(None, o, env={}),
    }
    no_examples, checked = [], set()
    for name, sub in _subcommand_parsers(sigma.cli.build_parser()):
        if "examples:" not in sub.format_help():
            no_examples.append(name)
        for action in sub._actions:
            if "--set" in action.option_strings:
                examples = re.findall(r"--set (\S+)", action.help)
                assert examples and name in validate, name
                validate[name](examples)
                checked.add(name)
    assert not no_examples, f"--help without examples: {no_examples}"
    assert checked == set(validate)


def test_every_help_fits_120_columns(monkeypatch):
    """`sigma worker --help` printed its description as one line of 498 characters (a raw-text formatter keeps
    the lines it is given), `sigma export --help` an example of 129: on a 120-column terminal (the limit the code
    keeps to) each help wraps or fits."""
    monkeypatch.setenv("COLUMNS", "120")
    parser = sigma.cli.build_parser()
    long = [(name, line) for name, sub in [("sigma", parser), *_subcommand_parsers(parser)]
            for line in sub.format_help().splitlines() if len(line) > 120]
    assert not long, [(name, len(line), line[:60]) for name, line in long]


def test_version_and_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "sigma", "--version"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("sigma ")


def test_models_lists_every_annotator_with_its_weights(capsys):
    from sigma.registry import list_annotators

    rc, out, _ = run_main(capsys, "models")
    assert rc == 0
    for entry in list_annotators():
        assert entry.name in out
    assert "pixel-diff" in out and "weights: none needed" in out
    assert out.count("weights:") == len(list_annotators())


def test_eval_prints_tables_and_writes_metrics(capsys, tmp_path):
    from test_eval import make_pair_set

    data = tmp_path / "eval"
    make_pair_set(data, "edits", 2)
    make_pair_set(data, "more", 2, seed=3)
    out = tmp_path / "run"
    rc, stdout, err = run_main(capsys, "eval", "--data", str(data), "--annotator", "pixel-diff", "--perturb",
                               "none,jpeg90", "--out", str(out))
    assert rc == 0, err
    assert "== perturbation: none ==" in stdout and "== perturbation: jpeg90 ==" in stdout
    assert "edits" in stdout and "more" in stdout and "overall" in stdout and "100.0" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tables"]["none"]["overall"]["f1"] == 1.0
    assert set(metrics["tables"]) == {"none", "jpeg90"}
    assert metrics["config"]["annotator"] == "pixel-diff" and metrics["config"]["perturb"] == ["none", "jpeg90"]
    assert (out / "config.yaml").is_file()
    rc, stdout, _ = run_main(capsys, "eval", "--data", str(data), "--annotator", "pixel-diff", "--threshold", "0.9",
                             "--out", str(out))
    assert rc == 0 and "threshold: 0.9" in stdout


def test_eval_on_the_bundled_example(capsys, tmp_path):
    rc, _stdout, err = run_main(capsys, "eval", "--data", str(Path(example_pair()["original"]).parent),
                               "--annotator", "pixel-diff", "--out", str(tmp_path))
    assert rc == 0, err
    f1 = json.loads((tmp_path / "metrics.json").read_text())["tables"]["none"]["overall"]["f1"]
    assert f1 > 0.85


@pytest.mark.parametrize("command", ["annotate", "eval"])
@pytest.mark.parametrize("setting", ["threshold=nan", "options.threshold=nan", "threshold=.nan", "threshold=1e400",
                                     "options.threshold=-inf", "threshold=inf"])
def test_a_threshold_that_is_no_finite_number_is_said_to_be_one(capsys, pair_files, tmp_path, command, setting):
    """NaN fails every comparison: `--set threshold=nan` said "Input should be less than or equal to 1", as if it
    were too large. Now it, the infinities and a number too large for a float are told what a threshold must be."""
    orig, edited = pair_files
    where = ([str(orig), str(edited), "-i", "x", "-o", str(tmp_path / "out")] if command == "annotate"
             else ["--data", str(tmp_path)])
    code, _out, err = run_main(capsys, command, *where, "--annotator", "pixel-diff", "--set", setting)
    assert code == 2
    assert_one_error_line(err, "invalid_config")
    assert "threshold: Input should be a finite number in [0, 1], got " in err and "less than" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_flag_the_config_refuses_is_bad_arguments_naming_the_flag(capsys, pair_files, tmp_path):
    """`--threshold nan` and `--batch-size 100000` were `invalid_config` ("threshold: Input should be ..."), while
    `--threshold abc` was argparse's `bad_arguments`: one flag, two codes for one mistake. A value a flag gave is now
    `bad_arguments` naming the flag, with the config field's own check and words; `--set` stays `invalid_config`."""
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    orig, edited = pair_files
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))
    out = tmp_path / "out"
    cases = [
        (["annotate", str(orig), str(edited), "-i", "x", "-o", str(out), "--annotator", "pixel-diff",
          "--threshold", "nan"], "--threshold nan: Input should be a finite number in [0, 1]"),
        (["eval", "--data", str(tmp_path / "set"), "--annotator", "pixel-diff", "--out", str(out), "--threshold", "2"],
         "--threshold 2.0: Input should be"),
        (["batch", "run", str(tmp_path / "set"), "--out", str(out), "--annotator", "pixel-diff",
          "--batch-size", "100000"], "--batch-size 100000: Input should be less than or equal to"),
        (["batch", "run", str(tmp_path / "set"), "--out", str(out), "--annotator", "pixel-diff", "--procs", "0"],
         "--procs 0: Input should be greater than or equal to 1"),
    ]
    for argv, needle in cases:
        code, _out, err = run_main(capsys, *argv)
        assert code == 2 and needle in err, (argv, err)
        assert_one_error_line(err, "bad_arguments")
        assert not out.exists()
    code, _out, err = run_main(capsys, "batch", "run", str(tmp_path / "set"), "--out", str(out), "--annotator",
                               "pixel-diff", "--set", "batch_size=100000")
    assert code == 2 and "batch_size: Input should be less than or equal to" in err, err
    assert_one_error_line(err, "invalid_config")


def test_every_argument_problem_of_one_command_is_said_in_one_run(capsys, pair_files, tmp_path):
    """A bad flag value was said alone: argparse's refusal (`--threshold abc`) ended the parse, and the config's
    (`--threshold nan`) dropped the config's other errors, so a `--set` mistake (or a second bad flag) of the same
    command showed only on the next run. Now each is one line, flags first (`bad_arguments`), then the config's
    (`invalid_config`), exit 2, and no work done."""
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    orig, edited = pair_files
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))
    out = tmp_path / "out"
    annotate = ["annotate", str(orig), str(edited), "-i", "x", "-o", str(out), "--annotator", "pixel-diff"]
    batch = ["batch", "run", str(tmp_path / "set"), "--out", str(out), "--annotator", "pixel-diff"]
    cases = [
        ([*annotate, "--threshold", "abc", "--set", "options.nope=1"],
         ["[bad_arguments]: sigma annotate: argument --threshold: invalid float value: 'abc'",
          "[invalid_config]: invalid AnnotateConfig: options.nope: Extra inputs are not permitted"]),
        ([*annotate, "--threshold", "nan", "--set", "options.nope=1"],
         ["[bad_arguments]: --threshold nan: Input should be a finite number in [0, 1]",
          "[invalid_config]: invalid AnnotateConfig: options.nope: Extra inputs are not permitted"]),
        (["eval", "--data", str(tmp_path / "set"), "--annotator", "pixel-diff", "--out", str(out), "--threshold", "x",
          "--set", "threshold=y"],
         ["[bad_arguments]: sigma eval: argument --threshold: invalid float value: 'x'",
          "[invalid_config]: invalid EvalConfig: threshold: Input should be a valid number"]),
        ([*batch, "--threshold", "abc", "--shard-size", "x", "--batch-size", "100000", "--set", "png_masks=maybe"],
         ["[bad_arguments]: sigma batch run: argument --threshold: invalid float value: 'abc'",
          "[bad_arguments]: sigma batch run: argument --shard-size: 'x': not an integer",
          "[bad_arguments]: --batch-size 100000: Input should be less than or equal to",
          "[invalid_config]: invalid BatchConfig: png_masks: Input should be a valid boolean"]),
        ([*batch, "--threshold", "abc", "--batch-size", "8"],
         ["[bad_arguments]: sigma batch run: argument --threshold: invalid float value: 'abc'"]),
        (["serve", "api", "--port", "abc", "--set", "api.nope=1"],
         ["[bad_arguments]: sigma serve: argument --port: 'abc': not an integer",
          "[invalid_config]: invalid ServeConfig: api.nope: Extra inputs are not permitted"]),
    ]
    for argv, said in cases:
        code, _out, err = run_main(capsys, *argv)
        lines = err.splitlines()
        assert code == 2 and len(lines) == len(said), (argv, err)
        assert all(line.startswith("sigma: error [") and needle in line for line, needle in zip(lines, said)), err
        assert not out.exists()


def test_grounding_thresholds_that_are_no_finite_number_are_said_to_be_one():
    from pydantic import ValidationError

    from sigma.grounding.config import DetectorConfig, SegmenterConfig

    for make in (lambda: DetectorConfig(box_threshold="nan"), lambda: DetectorConfig(text_threshold=float("inf")),
                 lambda: SegmenterConfig(mask_threshold=float("nan"))):
        with pytest.raises(ValidationError, match=r"finite number in \[0, 1\]"):
            make()
    assert DetectorConfig(box_threshold=0.5).box_threshold == 0.5 and SegmenterConfig().mask_threshold is None


@pytest.mark.parametrize("command", ["annotate", "batch"])
@pytest.mark.parametrize("yaml_text, key", [("threshold: yes\n", "threshold"),
                                            ("annotator: pixel-diff\noptions:\n  threshold: on\n", "threshold"),
                                            ("io:\n  limits:\n    max_pixels: true\n", "io.limits.max_pixels"),
                                            ("io:\n  max_shift_px: no\n", "io.max_shift_px")])
def test_a_boolean_where_a_config_takes_a_number_is_refused(capsys, pair_files, tmp_path, command, yaml_text, key):
    """pydantic reads True as 1 and 1.0: `threshold: yes` in a config file (YAML 1.1 reads yes/no/on/off as
    booleans) was a threshold of 1.0 (an empty mask for every pair), `max_pixels: true` a limit of one pixel. A bool
    where a number belongs is now invalid_config naming the key, through the file, `--set` and the constructor."""
    from pydantic import ValidationError

    from sigma.annotators.base import AnnotatorConfig
    from sigma.config.schema import IOConfig, LimitsConfig
    from sigma.models.config import CompactBackboneConfig

    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    orig, edited = pair_files
    where = ([str(orig), str(edited), "-i", "x", "-o", str(tmp_path / "out")] if command == "annotate"
             else ["run", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"])
    code, _out, err = run_main(capsys, command, *where, "--config", str(config))
    assert code == 2
    assert_one_error_line(err, "invalid_config")
    assert f"{key}: Input should be a valid number, not the boolean" in err, err
    # the loader says why a bare word was a boolean, for the annotator's options too: it validates them with the
    # rest of the config now (`AnnotatorSpec.options_model`)
    assert "YAML reads yes/no" in err, err
    assert not (tmp_path / "out").exists()
    code, _out, err = run_main(capsys, command, *where, "--set", "threshold=true")
    assert code == 2 and "threshold: Input should be a valid number, not the boolean True" in err, err

    for make, loc in [(lambda: AnnotatorConfig(threshold=True), "threshold"),
                      (lambda: LimitsConfig(max_bytes=False), "max_bytes"),
                      (lambda: CompactBackboneConfig(widths=[16, True]), "widths.1")]:
        with pytest.raises(ValidationError, match=rf"{loc}\n  Input should be a valid number, not the boolean"):
            make()
    # a field that takes a bool still does, and numbers are numbers
    assert AnnotatorConfig(threshold=1).threshold == 1.0 and LimitsConfig(max_bytes=5).max_bytes == 5
    assert IOConfig(align=True).align is True


BOOL_HINT = "(YAML reads yes/no, on/off and true/false as booleans)"
CHECKS_SKIPPED = "its checks across fields were not run"     # a section's `mode="after"` checks (sigma.config.schema)


@pytest.mark.parametrize("case", ["train-set", "train-yaml", "annotate-yaml", "eval-set", "serve-set", "options-set"])
def test_a_boolean_for_a_number_is_reported_with_every_other_error_of_the_config(capsys, pair_files, tmp_path, case):
    """The bool check raised before the rest of the config was validated: `sigma train c.yaml lr=yes steps=abc
    data.crop=-5` said only `lr`, and the user fixed one error per run. Every error of the config now comes in one
    message, the bools with their YAML hint once each, in pydantic's order (fields as declared), for a bool at the
    top, in a nested section and as a list item, from a file or `--set`, on every command that loads a config."""
    config = tmp_path / "c.yaml"
    orig, edited = pair_files
    annotate = [str(orig), str(edited), "-i", "x", "-o", str(tmp_path / "out")]
    if case == "train-set":
        args = ["train", str(TRAIN_TINY), "lr=yes", "steps=abc", "data.crop=-5"]
        expected = ["data.crop: Input should be greater than or equal to 32", f"data: {CHECKS_SKIPPED}",
                    "steps: Input should be a valid integer", f"lr: Input should be a valid number, not the boolean "
                    f"True {BOOL_HINT}"]
    elif case == "train-yaml":   # nested bools beside a nested error; a list item; a required key really missing
        config.write_text("name: t\nmodel: tiny-lite\ndata:\n  crop: true\n  scale_range: [true, 1.2]\n  mix: 3\n"
                          "sources:\n  - {weight: on}\n  - {path: x, weight: off}\nsteps: abc\nlr: yes\n")
        args = ["train", str(config)]
        expected = [f"data.crop: Input should be a valid number, not the boolean True {BOOL_HINT}",
                    f"data.scale_range.0: Input should be a valid number, not the boolean True {BOOL_HINT}",
                    "data.mix: Input should be a valid dictionary", f"data: {CHECKS_SKIPPED}",
                    "sources.0.path: Field required",
                    f"sources.0.weight: Input should be a valid number, not the boolean True {BOOL_HINT}",
                    f"sources.1.weight: Input should be a valid number, not the boolean False {BOOL_HINT}",
                    "steps: Input should be a valid integer", "lr: Input should be a valid number, not the boolean"]
    elif case == "annotate-yaml":
        config.write_text("annotator: pixel-diff\nthreshold: yes\nio:\n  max_shift_px: no\n  limits:\n"
                          "    max_pixels: true\n    max_bytes: -3\n  align_min_response: 7\nbogus: 1\n")
        args = ["annotate", *annotate, "--config", str(config)]
        expected = ["threshold: Input should be a valid number, not the boolean True",
                    "io.limits.max_pixels: Input should be a valid number, not the boolean True",
                    "io.limits.max_bytes: Input should be greater than 0",
                    "io.max_shift_px: Input should be a valid number, not the boolean False",
                    "io.align_min_response: Input should be less than or equal to 1",
                    "bogus: Extra inputs are not permitted"]
    elif case == "eval-set":
        args = ["eval", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--annotator", "pixel-diff",
                "--set", "threshold=yes", "--set", "io.max_shift_px=-1"]
        expected = ["threshold: Input should be a valid number, not the boolean True",
                    "io.max_shift_px: Input should be greater than or equal to 0"]
    elif case == "serve-set":
        args = ["serve", "api", "--port", "0", "--set", "queue.lease_ms=yes", "--set", "queue.bogus=1"]
        expected = ["queue.lease_ms: Input should be a valid number, not the boolean True",
                    "queue.bogus: Extra inputs are not permitted"]
    else:   # an annotator's options, validated with the rest of the config (its checks across fields not run)
        args = ["annotate", *annotate, "--annotator", "sigma-lite", "--set", "options.image_size=yes",
                "--set", "options.dim=abc"]
        expected = [f"options.image_size: Input should be a valid number, not the boolean True {BOOL_HINT}",
                    "options.dim: Extra inputs", f"options: {CHECKS_SKIPPED}"]
    code, _out, err = run_main(capsys, *args)
    assert code == 2
    assert_one_error_line(err, "invalid_config")
    places = [err.find(text) for text in expected]
    assert -1 not in places and places == sorted(places), (err, places)
    assert err.count("YAML reads") == err.count("not the boolean"), err
    assert err.count("; ") == len(expected) - 1, err   # nothing else: no error of a bool read as 1 (`ge=32`)
    assert not (tmp_path / "out").exists()


def test_the_checks_before_validation_report_with_every_other_error_of_the_config(capsys, tmp_path):
    """The NUL / lone-surrogate check and the exponent-notation integer check ran before validation and raised alone,
    on the first problem: `sigma train c.yaml name=$'a\\x00b' steps=abc` said only `name`. Every problem now comes
    in one message, worded as before, in the config's field order, and pydantic's own error for a place they name
    (`1e-3` is also "unable to parse string as an integer", a NUL key also an unknown one) is not said twice."""
    config = tmp_path / "c.yaml"
    config.write_text(TRAIN_TINY.read_text() + '"bad\\0key": 1\n')         # YAML's escape: a NUL in a key
    args = ["train", str(config), "name=a\x00b", "steps=1e-3", "lr=yes", "data.crop=1e999999", "data.mix=3",
            "out_dir=\ud800"]
    code, _out, err = run_main(capsys, *args)
    assert code == 2
    assert_one_error_line(err, "invalid_config")
    expected = ["invalid TrainConfig: override name=a\\x00b: name: holds a NUL byte ('a\\x00b'); no path or name can",
                "override out_dir=\\ud800: out_dir: holds a lone UTF-16 surrogate",
                "override data.crop=1e999999: more than 4300 digits, too large: data.crop is an integer setting",
                "data.mix: Input should be a valid dictionary", f"data: {CHECKS_SKIPPED}",
                "override steps=1e-3: not a whole number, and steps is an integer setting",
                f"lr: Input should be a valid number, not the boolean True {BOOL_HINT}",
                f"{config}, line {TRAIN_TINY.read_text().count(chr(10)) + 1}: 'bad\\x00key': a key holding a NUL byte"]
    places = [err.find(text) for text in expected]
    assert -1 not in places and places == sorted(places), (err, places)
    joins = err.count("; ") - err.count("; no path or name can")     # no second error for steps, data.crop, the key
    assert joins == len(expected) - 1, err
    # one problem alone reads as it did; two of one check come together
    code, _out, err = run_main(capsys, "train", str(TRAIN_TINY), "steps=1e-3")
    assert code == 2 and "[invalid_config]: override steps=1e-3: not a whole number, and steps" in err, err
    code, _out, err = run_main(capsys, "train", str(TRAIN_TINY), "name=a\x00b", "out_dir=c\x00d")
    assert "invalid TrainConfig: " in err and "name: holds a NUL" in err and "out_dir: holds a NUL" in err, err


def test_a_boolean_for_a_number_leaves_the_other_fields_to_pydantic_unchanged():
    """The model's own errors come with the bools' (constructor too), a key given as a bool is never 'missing', an
    error pydantic finds in the value a bool was read as (`ge=32` on True) is not added, and a model-wide check,
    which ran on a bool read as a number, says nothing until the bool is fixed: a section that has such checks
    says that they were not run (`checks_skipped`, at the section, last)."""
    from pydantic import Field, ValidationError

    from sigma.config.schema import Strict
    from sigma.data.synth.engine import SynthConfig
    from sigma.models.config import CompactBackboneConfig

    class Required(Strict):
        count: int
        size: int = Field(1, ge=0)
        ratio: tuple[float, float] | None = None

    with pytest.raises(ValidationError) as caught:
        Required(count=True, size=-1, ratio=[2.0, False])
    assert [(e["loc"], e["type"]) for e in caught.value.errors()] == [
        (("count",), "bool_for_number"), (("size",), "greater_than_equal"), (("ratio", 1), "bool_for_number")]
    with pytest.raises(ValidationError) as caught:
        SynthConfig(crop=True, scale_range=[True, 1.2], mix=3)
    assert [e["loc"] for e in caught.value.errors()] == [("crop",), ("scale_range", 0), ("mix",), ()]
    with pytest.raises(ValidationError) as caught:
        CompactBackboneConfig(widths=[16, True], depths=[0])
    assert [(e["loc"], e["type"]) for e in caught.value.errors()] == [(("widths", 1), "bool_for_number"),
                                                                    ((), "checks_skipped")]
    assert Required(count=2, ratio=[0.5, 1]).ratio == (0.5, 1.0)


@pytest.mark.parametrize("command", [["export", "coco", "RUN", "--out", "x.json"],
                                     ["export", "imdl-benco", "RUN", "--out", "x"], ["export", "hf", "RUN", "x"],
                                     ["report", "RUN"]])
@pytest.mark.parametrize("value", ["-inf", "-Infinity", "-1e-3", "-nan", "-1"])
def test_a_negative_or_infinite_confidence_flag_reaches_its_check(capsys, tmp_path, command, value):
    """argparse reads -1 and -.5 as values but took `--min-confidence -inf` (or -1e-3) for a flag: "expected one
    argument", never the real reason. Every such value now reaches the [0, 1] check, on every command that takes it."""
    args = [str(tmp_path / "run") if a == "RUN" else a for a in command]
    for flag in ("--min-confidence", "--max-confidence"):
        code, _out, err = run_main(capsys, *args, flag, value)
        assert code == 2
        assert_one_error_line(err, "bad_arguments")
        assert f"argument {flag}: a confidence in [0, 1], got {float(value)}" in err, err


@pytest.mark.parametrize("command, flag", [(["report", "RUN"], "--min-confidence"),
                                           (["export", "coco", "RUN", "--out", "x.json"], "--max-confidence"),
                                           (["export", "imdl-benco", "RUN", "--out", "x"], "--min-area"),
                                           (["export", "hf", "RUN", "x"], "--max-area"),
                                           (["export", "hf", "RUN", "x"], "--max-shard-mb")])
def test_every_bad_value_of_a_filter_flag_is_bad_arguments(capsys, tmp_path, command, flag):
    """`sigma report --min-confidence nan` (or 2) was `invalid_config`, `--min-confidence abc` `bad_arguments`: one
    flag, two codes for one kind of mistake. A flag no config field bounds now answers `bad_arguments` whatever is
    wrong with its value, before the run is read; so does a --min-X above its --max-X."""
    args = [str(tmp_path / "run") if a == "RUN" else a for a in command]
    for value in ("abc", "", "nan", "inf", "-0.5", "0" if flag == "--max-shard-mb" else "2"):
        code, _out, err = run_main(capsys, *args, flag, value)
        assert code == 2, (flag, value)
        assert_one_error_line(err, "bad_arguments")
        assert f"argument {flag}: " in err, err
    if flag != "--max-shard-mb":
        low, high = flag.replace("max-", "min-"), flag.replace("min-", "max-")
        code, _out, err = run_main(capsys, *args, low, "0.9", high, "0.1")
        assert code == 2
        assert_one_error_line(err, "bad_arguments")


@pytest.mark.parametrize("argv", [
    ("batch", "run", "", "--out", "OUT"), ("batch", "run", "SET", "--out", ""), ("eval", "--data", ""),
    ("eval", "--data", "SET", "--out", ""), ("annotate", "A", "B", "-o", ""), ("export", "hf", "RUN", ""),
    ("export", "coco", "RUN", "--out", "x.json", "--images", ""), ("train", ""), ("batch", "status", ""),
    ("parse", "--file", "", "x"), ("annotate", "A", "B", "--config", ""),
])
def test_an_empty_path_argument_is_refused_before_any_work(capsys, tmp_path, monkeypatch, argv):
    """`sigma batch run SET --out ''`, `eval --out ''`, `annotate -o ''` wrote into the current folder, and `batch
    run ''` / `eval --data ''` read it (`Path('')` is `.`): an unset shell variable aimed a command at wherever the
    shell stood. Now every path argument refuses '' at parsing (`empty_path`), naming the argument; nothing made."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(capsys, *argv)
    assert rc == 2 and out == ""
    assert_one_error_line(err, "empty_path")
    assert list(tmp_path.iterdir()) == []


def _refused_together(capsys, tmp_path, argv, said: list[str]) -> None:
    """`sigma ARGV` exits 2 saying exactly the lines `said` begins, in order, one per refused value, and makes nothing
    in `tmp_path`."""
    rc, out, err = run_main(capsys, *argv)
    assert rc == 2 and out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == len(said), err
    for line, want in zip(lines, said, strict=True):
        assert line.startswith(f"sigma: error [{want}"), (line, want)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, said", [
    (("eval", "--data", "", "--threshold", "abc", "--set", "bogus=1"),
     ["empty_path]: sigma eval: --data", "bad_arguments]: sigma eval: argument --threshold", "invalid_config]: "
      "invalid EvalConfig: bogus"]),
    (("batch", "run", "", "--out", "", "--set", "bogus=1"),
     ["empty_path]: sigma batch run: input", "empty_path]: sigma batch run: --out", "invalid_config]: invalid "
      "BatchConfig: bogus"]),
    (("train", "", "--resume", ""), ["empty_path]: sigma train: config", "empty_path]: sigma train: --resume"]),
    (("annotate", "A", "B", "-o", "", "--threshold", "x"),
     ["empty_path]: sigma annotate: -o/--outdir", "bad_arguments]: sigma annotate: argument --threshold"]),
])
def test_an_empty_path_is_said_together_with_the_other_refused_values(capsys, tmp_path, monkeypatch, argv, said):
    """`sigma eval --data '' --threshold abc --set bogus=1` said the empty path alone and stopped parsing there: the
    bad --threshold and --set came one run at a time, while every other refused value is said together. Now the
    empty path is one of them, in command-line order, followed by the config's problems; nothing made."""
    monkeypatch.chdir(tmp_path)
    _refused_together(capsys, tmp_path, argv, said)


@pytest.mark.parametrize("argv, said", [
    (("synth", "--out", "OUT", "-n", "abc", "data.crop=abc"),
     ["bad_arguments]: sigma synth: argument -n", "invalid_config]: invalid SynthConfig: crop"]),
    (("synth", "--out", "OUT", "--seed", "-1", "--max-side", "64"),
     ["bad_arguments]: sigma synth: argument --seed", "bad_arguments]: --max-side: only with --build-cache"]),
    (("synth", "--build-cache", "OUT", "-n", "abc", "--scales", "9"),
     ["bad_arguments]: sigma synth: argument -n", "bad_arguments]: --scales: "]),
    (("train", "configs/train/tiny-stage1.yaml", "steps=abc", "--resume", ""),
     ["empty_path]: sigma train: --resume", "invalid_config]: invalid TrainConfig: steps"]),
])
def test_synth_and_train_say_their_overrides_with_the_refused_flags(capsys, tmp_path, argv, said):
    """`sigma synth --out DIR -n abc data.crop=abc` said the bad -n alone, and the bad override (or a flag of the other
    mode) only on the next run; so did `sigma train CONFIG steps=abc --resume ''`: unlike eval, annotate, batch and
    serve, neither checked its config beside the refused flags. Now both do; nothing made."""
    root = Path(sigma.__file__).parent.parent
    args = [str(tmp_path / "out") if a == "OUT" else str(root / a) if a.startswith("configs/") else a for a in argv]
    _refused_together(capsys, tmp_path, args, said)


@pytest.mark.parametrize("argv, said", [
    (("train", "--config", "x.yaml"), "sigma train: unrecognized arguments: --config (see `sigma train --help`)"),
    (("export", "coco", "RUN", "--out", "x.json", "--zz"),
     "sigma export coco: unrecognized arguments: --zz (see `sigma export coco --help`)"),
    (("--zz",), "sigma: unrecognized arguments: --zz (see `sigma --help`)"),
])
def test_an_unknown_flag_of_a_command_names_the_command_and_its_help(capsys, tmp_path, monkeypatch, argv, said):
    """`sigma train --config FILE` (every other command takes --config) was `sigma: unrecognized arguments: --config
    (see `sigma --help`)`: the top parser said it, naming no command, and its help lists the commands, not the flags
    of this one. A command's own unknown flag is now said by the command; nothing made."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(capsys, *argv)
    assert rc == 2 and out == ""
    assert_one_error_line(err, "bad_arguments")
    assert err == f"sigma: error [bad_arguments]: {said}\n"
    assert list(tmp_path.iterdir()) == []


# String arguments of the CLI that name no file or folder (command, dest): every other one is `type=path`.
NOT_PATHS = {
    "instruction", "annotator", "plugin", "overrides", "perturb", "prepare", "host", "consumer", "format", "columns",
    "ray_address", "redis", "key_prefix", "json_name", "name", "scales", "device", "backend",
}


def test_every_path_argument_refuses_an_empty_path():
    """The empty-path rule holds for an argument marked `type=path` (`sigma.cli.common.path`): a new string argument
    is either marked or listed here as naming no file, so a path argument cannot be added without the rule."""
    import argparse

    from sigma.cli.common import path

    unmarked = []
    for name, parser in _subcommand_parsers(sigma.cli.build_parser()):
        for action in parser._actions:
            if action.nargs == 0 or action.choices is not None or isinstance(action, argparse._HelpAction):
                continue
            if action.type in (None, str) and action.dest not in NOT_PATHS:
                unmarked.append(f"{name} {action.dest}")
            assert not (action.type is path and action.dest in NOT_PATHS), (name, action.dest)
    assert not unmarked, f"string arguments neither type=path nor in NOT_PATHS: {unmarked}"
