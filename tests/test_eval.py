"""`sigma eval` internals on a tiny pair set built here, perturbations, and a smoke run on ../shared."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from heappeak import heap_peak
from PIL import Image

from sigma.annotators.base import Annotator
from sigma.errors import ConfigError, InputError
from sigma.eval import perturb
from sigma.eval.runner import evaluate, format_tables
from sigma.io.pairs_jsonl import find_sets, read_set
from sigma.registry import create_annotator
from sigma.types import Pair

SHARED = Path(os.environ.get("SIGMA_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def _save(arr: np.ndarray, path: Path) -> str:
    Image.fromarray(arr).save(path)
    return path.name


def make_pair_set(root: Path, name: str, n: int, whole_image_changed: bool = False, seed: int = 0,
                  extra: list[dict] | None = None) -> Path:
    """n pairs in the ../shared/data/eval layout: a square painted into a noisy photo-like image."""
    rng = np.random.default_rng(seed)
    d = root / name
    d.mkdir(parents=True)
    lines = []
    for i in range(n):
        orig = rng.integers(40, 200, size=(24, 32, 3), dtype=np.uint8)
        edited = orig.copy()
        mask = np.zeros((24, 32), np.uint8)
        y, x = 4 + i, 6 + 2 * i
        edited[y:y + 8, x:x + 10] = 255
        mask[y:y + 8, x:x + 10] = 255
        pid = f"{name}_{i}"
        rec = {"id": pid, "original": _save(orig, d / f"{pid}_original.png"),
               "edited": _save(edited, d / f"{pid}_edited.png"), "mask": _save(mask, d / f"{pid}_mask.png"),
               "instruction": "paint a white box" if i % 2 else None, "edit_type": "add",
               "whole_image_changed": whole_image_changed}
        lines.append(json.dumps(rec))
    for rec in extra or []:
        lines.append(json.dumps(rec))
    (d / "pairs.jsonl").write_text("\n".join(lines) + "\n\n")
    return d


@pytest.fixture()
def eval_root(tmp_path: Path) -> Path:
    root = tmp_path / "eval"
    make_pair_set(root, "edits", 3, extra=[{"id": "broken", "original": "edits_0_original.png",
                                            "edited": "missing.png", "mask": "edits_0_mask.png"}])
    make_pair_set(root, "aerial", 2, whole_image_changed=True, seed=1)
    return root


class Recorder(Annotator):
    """A real annotator (pixel difference) that also keeps what it was given, to check the inputs."""

    name = "recorder"
    default_threshold = 0.05

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Pair] = []

    def _predict_batch(self, pairs: list[Pair]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        self.seen.extend(pairs)
        return [(np.abs(p.original.astype(np.int16) - p.edited).mean(axis=2).astype(np.float32) / 255, {})
                for p in pairs]


def test_dataset_reader(eval_root):
    sets = find_sets(eval_root)
    assert [s.name for s in sets] == ["aerial", "edits"]
    assert find_sets(eval_root / "edits") == [eval_root / "edits"]
    assert find_sets(eval_root / "edits" / "pairs.jsonl") == [eval_root / "edits"]
    recs = list(read_set(eval_root / "edits"))
    assert [r.pair_id for r in recs] == ["edits_0", "edits_1", "edits_2", "broken"]
    assert recs[0].instruction is None and recs[1].instruction == "paint a white box"
    with pytest.raises(InputError) as info:
        find_sets(eval_root / "nope")
    assert info.value.code == "file_not_found"
    (eval_root / "empty").mkdir()
    with pytest.raises(InputError) as info:
        find_sets(eval_root / "empty")
    assert info.value.code == "no_pairs"


def test_bad_manifest_line_is_named(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "pairs.jsonl").write_text('{"id": "a", "original": "a.png"}\n')
    with pytest.raises(InputError) as info:
        list(read_set(d))
    assert info.value.code == "bad_manifest" and "pairs.jsonl:1" in info.value.message


def read_set_refused(folder: Path) -> tuple[str, str]:
    """The code and message of the InputError that reading the set in `folder` whole raises."""
    with pytest.raises(InputError) as info:
        list(read_set(folder))
    return info.value.code, info.value.message


def test_an_endless_record_or_a_pairs_jsonl_that_is_not_a_file_is_never_read_whole(tmp_path, capsys):
    """A 300 MB line was read whole (1.2 GB RSS) and became a 300 MB pair id in metrics.json; a pairs.jsonl
    linked to /dev/zero was one endless line (MemoryError traceback), one that is a FIFO hung the eval. A record
    is read no further than MAX_RECORD_BYTES (bad_manifest at file:line); only regular files are sets, and a set whose
    pairs.jsonl is anything else is refused, naming it, never opened (it was passed over)."""
    from sigma.cli import main
    from sigma.io.pairs_jsonl import MAX_RECORD_BYTES

    root = make_pair_set(tmp_path / "data", "ok", 1).parent
    big = root / "big"
    big.mkdir()
    with open(big / "pairs.jsonl", "w") as handle:
        handle.write('{"id": "' + "x" * (16 * MAX_RECORD_BYTES) + '", "original": "a", "edited": "b", "mask": "m"}\n')
    measured = heap_peak(read_set_refused, big)       # in a fresh interpreter (tests/heappeak.py)
    code, message = measured.value
    assert code == "bad_manifest" and "pairs.jsonl:1" in message
    assert measured.peak < 4 * MAX_RECORD_BYTES, measured.peak
    assert main(["eval", "--data", str(root), "--annotator", "pixel-diff", "--out", str(tmp_path / "o")]) == 2
    assert "[bad_manifest]" in capsys.readouterr().err
    (big / "pairs.jsonl").unlink()
    (big / "pairs.jsonl").symlink_to("/dev/zero")
    os.mkfifo(root / "fifo_set_pairs")
    (root / "fifo").mkdir()
    (root / "fifo" / "pairs.jsonl").symlink_to(root / "fifo_set_pairs")
    with pytest.raises(InputError) as info:
        find_sets(root)
    assert info.value.code == "not_a_regular_file" and info.value.message.startswith(
        f"{big / 'pairs.jsonl'}: not a regular file (a character device)"), info.value.message
    (big / "pairs.jsonl").unlink()
    with pytest.raises(InputError) as info:
        find_sets(root)
    assert info.value.message.startswith(f"{root / 'fifo' / 'pairs.jsonl'}: not a regular file (a FIFO)")
    (root / "fifo" / "pairs.jsonl").unlink()
    assert find_sets(root) == [root / "ok"]

def test_evaluate_scores_groups_and_reports_bad_pairs(eval_root):
    result = evaluate(create_annotator("pixel-diff"), eval_root, ["none"])
    tables = result.tables()["none"]
    assert tables["edits"]["pairs"] == 3 and tables["edits"]["f1"] == pytest.approx(1.0)
    assert tables["aerial"]["pairs"] == 2
    assert set(tables) >= {"editing (all but whole-image-change sets)", "whole-image-change sets", "overall"}
    assert tables["overall"]["pairs"] == 5 and tables["overall"]["iou"] == pytest.approx(1.0)
    assert [(e["id"], e["code"]) for e in result.errors] == [("broken", "file_not_found")]
    text = format_tables(result)
    assert "== perturbation: none ==" in text and "edits" in text and "100.0" in text
    record = result.to_dict()
    json.dumps(record)                                              # JSON-ready
    assert len(record["per_pair"]["none"]) == 5


def test_whole_image_changed_as_text_is_read_as_meant(tmp_path):
    """bool("false") is True: records carrying "whole_image_changed": "false" (a CSV turned JSON) made their set a
    whole-image-change set, scored out of the editing aggregate without a word. Text yes/no values are read as
    meant; anything else is bad_manifest at file:line."""
    d = tmp_path / "s"
    d.mkdir()
    base = {"original": "o.png", "edited": "e.png", "mask": "m.png"}
    values = [False, None, 0, "false", "False", "0", "", "no", True, 1, "true", "TRUE", "1", "yes"]
    (d / "pairs.jsonl").write_text("".join(json.dumps({**base, "id": str(i), "whole_image_changed": v}) + "\n"
                                           for i, v in enumerate(values)) + json.dumps({**base, "id": "x"}) + "\n")
    assert [r.whole_image_changed for r in read_set(d)] == [False] * 8 + [True] * 6 + [False]
    for bad in ("maybe", 2, [True]):
        (d / "pairs.jsonl").write_text(json.dumps({**base, "id": "b", "whole_image_changed": bad}) + "\n")
        with pytest.raises(InputError) as info:
            list(read_set(d))
        assert info.value.code == "bad_manifest" and "whole_image_changed" in info.value.message


def test_a_set_named_like_an_aggregate_keeps_its_own_row(tmp_path):
    """A set named "overall" merged into the overall row: the table showed one "overall" row of every pair and
    the set's own scores were nowhere, in the printed table or in metrics.json. Its row is now "overall (set)"."""
    root = tmp_path / "eval"
    make_pair_set(root, "overall", 2)
    make_pair_set(root, "other", 3, seed=1)
    result = evaluate(create_annotator("pixel-diff"), root, ["none"])
    tables = result.tables()["none"]
    assert list(tables) == ["other", "overall (set)", "overall"]
    assert tables["overall (set)"]["pairs"] == 2 and tables["overall"]["pairs"] == 5
    assert list(result.mask_tables()["none"]) == ["other", "overall (set)", "overall"]
    assert {row["set"] for row in result.to_dict()["per_pair"]["none"]} == {"other", "overall"}
    assert "overall (set)" in format_tables(result)


def test_a_set_named_like_the_renamed_aggregate_set_keeps_its_own_row(tmp_path):
    """Sets "overall" and "overall (set)" side by side: the first was renamed to the second's name and the two
    sets' pairs were one row (5 pairs under "overall (set)"), each set's own scores nowhere."""
    root = tmp_path / "eval"
    make_pair_set(root, "overall", 2)
    make_pair_set(root, "overall (set)", 3, seed=1)
    tables = evaluate(create_annotator("pixel-diff"), root, ["none"]).tables()["none"]
    assert {name: row["pairs"] for name, row in tables.items()} == {
        "overall (set)": 2, "overall (set) (set)": 3, "overall": 5}


def test_perturbations_touch_the_edited_image_only(eval_root):
    rec = Recorder()
    result = evaluate(rec, eval_root / "edits", ["none", "jpeg75", "resize"])
    by_key = {}
    for pert_index, name in enumerate(["none", "jpeg75", "resize"]):
        for pair in rec.seen[pert_index * 3:(pert_index + 1) * 3]:
            by_key[(name, pair.pair_id)] = pair
    for pid in ("edits_0", "edits_1", "edits_2"):
        clean, jpeg, resized = by_key[("none", pid)], by_key[("jpeg75", pid)], by_key[("resize", pid)]
        np.testing.assert_array_equal(jpeg.original, clean.original)
        np.testing.assert_array_equal(resized.original, clean.original)
        assert not np.array_equal(jpeg.edited, clean.edited) and not np.array_equal(resized.edited, clean.edited)
    # ground truth is the same: the clean run is perfect, perturbed runs score against the same mask
    assert result.tables()["none"]["overall"]["f1"] == 1.0
    assert result.tables()["jpeg75"]["overall"]["f1"] < 1.0


def test_perturbations_are_deterministic_per_pair():
    img = np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    for name in ("jpeg75", "jpeg90", "resize", "color"):
        a, b = perturb.apply(name, img, "pair-a"), perturb.apply(name, img, "pair-a")
        np.testing.assert_array_equal(a, b)
        assert a.shape == img.shape and a.dtype == np.uint8
        assert not np.array_equal(a, img)
    # random parameters depend on the pair id, so pairs are not all perturbed identically
    assert not np.array_equal(perturb.apply("color", img, "pair-a"), perturb.apply("color", img, "pair-b"))
    assert perturb.apply("none", img, "x") is img


def test_expand_perturbation_names():
    assert perturb.expand("all") == list(perturb.PERTURBATIONS)
    assert perturb.expand(["none,jpeg75", "resize", "jpeg75"]) == ["none", "jpeg75", "resize"]
    with pytest.raises(ConfigError, match="unknown perturbation 'jpeg50'"):
        perturb.expand("none,jpeg50")
    with pytest.raises(ConfigError):
        perturb.apply("blur", np.zeros((4, 4, 3), np.uint8), "x")


def test_limit_and_empty(eval_root):
    result = evaluate(create_annotator("pixel-diff"), eval_root, ["none"], limit=2)
    assert result.tables()["none"]["overall"]["pairs"] == 2
    d = eval_root / "blank"
    d.mkdir()
    (d / "pairs.jsonl").write_text("\n")
    with pytest.raises(InputError) as info:
        evaluate(create_annotator("pixel-diff"), d, ["none"])
    assert info.value.code == "no_pairs"


def test_vae_perturbation_when_available():
    try:
        import sigma.models.vae  # noqa: F401
    except ImportError:
        pytest.skip("sigma.models.vae is not importable here")
    from sigma.errors import WeightsNotFoundError

    try:
        perturb.prepare(["vae"])
    except WeightsNotFoundError as exc:
        pytest.skip(f"TAEF2 weights not here: {exc.message[:80]}")
    img = np.random.default_rng(0).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    out = perturb.apply("vae", img, "p")
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, perturb.apply("vae", img, "p"))     # deterministic
    # the regeneration chain: same size and type, seeded per pair, and more than its JPEG step alone
    smooth = cv2.GaussianBlur(img, (0, 0), 2)
    chained = perturb.apply("regen", smooth, "p")
    assert chained.shape == img.shape and chained.dtype == np.uint8
    np.testing.assert_array_equal(chained, perturb.apply("regen", smooth, "p"))
    assert not np.array_equal(chained, perturb.apply("regen", smooth, "q"))
    jpeg_only = np.abs(perturb.apply("jpeg90", smooth, "p").astype(int) - smooth).mean()
    assert np.abs(chained.astype(int) - smooth).mean() > jpeg_only


# ---------------------------------------------------------------- ../shared (skipped on a fresh clone)
def _need_shared() -> Path:
    data = SHARED / "data" / "eval"
    if not (data / "libcom_insertion" / "pairs.jsonl").is_file():
        pytest.skip(f"no shared evaluation data at {data} (set SIGMA_SHARED)")
    return data


def test_smoke_one_real_set():
    data = _need_shared()
    result = evaluate(create_annotator("pixel-diff"), data / "libcom_insertion", ["none"])
    row = result.tables()["none"]["overall"]
    assert row["pairs"] == 4 and not result.errors
    assert row["f1"] > 0.9                  # exact cut-and-paste composites: pixel difference is near perfect


def test_pixel_diff_reference_numbers_on_shared_editing_sets():
    """The issue's reference: pixel-diff at τ = 0.05 on the editing sets, F1 82.3 / IoU 74.1."""
    data = _need_shared()
    result = evaluate(create_annotator("pixel-diff"), data, ["none"])
    editing = result.tables()["none"]["editing (all but whole-image-change sets)"]
    assert editing["pairs"] == 43
    assert round(100 * editing["f1"], 1) == 82.3 and round(100 * editing["iou"], 1) == 74.1


def test_vae_unavailable_is_one_clear_error(monkeypatch, eval_root):
    import sys

    monkeypatch.setitem(sys.modules, "sigma.models.vae", None)      # as if the module were not installed
    monkeypatch.setattr(perturb, "_VAE_CACHE", {})
    with pytest.raises(ConfigError) as info:
        evaluate(create_annotator("pixel-diff"), eval_root, ["none", "vae"])
    assert info.value.code == "perturbation_unavailable" and "sigma.models.vae" in info.value.message


def _refuse(constant: str):
    raise ValueError(f"{constant} is not JSON")


def test_what_eval_and_the_review_page_write_is_strict_json(tmp_path, capsys):
    """A one-pair set has no Spearman rho (NaN): Python wrote it as the bare word NaN, which JSON does not
    have — JSON.parse and jq refuse metrics.json, summary.json and the review page's data block. Now null."""
    from sigma.cli import main
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    data = tmp_path / "one"
    write_pairs_jsonl(data, synthetic_pairs(1))
    assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(), parse_constant=_refuse)
    assert metrics["tables"]["none"]["one"]["conf_rho"] is None
    assert main(["batch", "run", str(data), "--out", str(tmp_path / "run"), "--annotator", "pixel-diff",
                 "--no-progress"]) == 0
    json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=_refuse)
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "page.html")]) == 0
    page = (tmp_path / "page.html").read_text()
    block = page.split('<script type="application/json" id="data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(block, parse_constant=_refuse)["metrics"]["one"]["conf_rho"] is None
    capsys.readouterr()


class OddConfidence(Recorder):
    """A plugin whose `confidence` extra is not a number it means (10**400, inf, NaN, text), one per pair."""

    name = "odd-confidence"
    values: tuple[Any, ...] = (10 ** 400, float("inf"), float("nan"), "high", "0.7", 0.25)

    def _predict_batch(self, pairs: list[Pair]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        out = super()._predict_batch(pairs)
        return [(prob, {"confidence": self.values[int(p.pair_id.rsplit("_", 1)[1])]})
                for (prob, _), p in zip(out, pairs)]


def test_a_confidence_that_is_no_finite_number_is_none_and_the_rest_is_scored(tmp_path):
    """`float(10**400)` raised OverflowError out of `sigma eval` (a traceback after the whole run, no metrics.json),
    and inf or NaN went into the Spearman rho and the "keep the most confident" table as if measured. Now a
    confidence that is no finite number is None (`sigma.types.confidence_value`), as the batch rows hold it."""
    root = tmp_path / "eval"
    make_pair_set(root, "s", len(OddConfidence.values))
    result = evaluate(OddConfidence(), root, ["none"], batch_size=2)
    confidences = [row["confidence"] for row in result.to_dict()["per_pair"]["none"]]
    assert confidences == [None, None, None, None, 0.7, 0.25]
    assert result.mask_tables()["none"]["overall"]["rho_pairs"] == 2


@pytest.mark.parametrize("line, says", [
    ('[1, 2]', "a JSON array, not an object"),
    ('"p.png"', "a JSON string, not an object"),
    ('{"id": "a", "original": null, "edited": "e.png", "mask": "m.png"}', "no original"),
    ('{"id": "a", "original": "o.png", "edited": 5, "mask": "m.png"}', "edited is a JSON number, not a file name"),
    ('{"id": ["a"], "original": "o.png", "edited": "e.png", "mask": "m.png"}', "id is a JSON array"),
    # "id is a JSON number, not text or a number" contradicted itself
    ('{"id": 1.5, "original": "o.png", "edited": "e.png", "mask": "m.png"}',
     "id is the JSON number 1.5, not a whole one; an id is text or a whole number"),
    ('{"id": 1e400, "original": "o.png", "edited": "e.png", "mask": "m.png"}', "id is the JSON number inf, not"),
    ('{"original": "o.png", "edited": "e.png", "mask": "m.png"}', "no id"),
    ('{"id": "a", "original": "o.png", "edited": "e.png", "mask": [1]}', "mask is a JSON array, not a file name"),
    ('{"id": "a", "original": "o.png", "edited": "e.png"}', "no mask"),
])
def test_a_record_that_is_no_object_or_names_no_file_says_so(tmp_path, line, says):
    """A line that was a list or a string said "bad record (string indices must be integers, not 'str')", and
    `"original": null` became the file "None" (a file_not_found pair); both are bad_manifest in words now."""
    d = tmp_path / "s"
    d.mkdir()
    (d / "pairs.jsonl").write_text(line + "\n")
    with pytest.raises(InputError) as info:
        list(read_set(d))
    assert info.value.code == "bad_manifest" and f"pairs.jsonl:1: {says}" in info.value.message


def test_a_null_mask_is_an_unlabelled_pair_that_eval_skips_saying_so(tmp_path):
    """`"mask": null` (a pair without ground truth, as training's unlabelled sources hold) was the file "None" (a
    file_not_found naming a file nobody wrote); it is read as no mask, and eval skips the pair saying why."""
    root = tmp_path / "eval"
    make_pair_set(root, "s", 2, extra=[{"id": "unlabelled", "original": "s_0_original.png",
                                        "edited": "s_0_edited.png", "mask": None}])
    assert [r.mask for r in read_set(root / "s")][-1] is None
    result = evaluate(create_annotator("pixel-diff"), root, ["none"])
    assert len(result.scores["none"]) == 2
    [error] = result.errors
    assert error["id"] == "unlabelled" and "mask is null" in error["message"] and "None" not in error["message"]


def test_a_pairs_jsonl_with_a_byte_order_mark_is_read(tmp_path, capsys):
    """Notepad and PowerShell start a UTF-8 file with a byte-order mark: the whole set was refused at line 1
    ("Unexpected UTF-8 BOM (decode using utf-8-sig)"), though `sigma batch run` read the same file."""
    d = make_pair_set(tmp_path, "bom", 2)
    (d / "pairs.jsonl").write_bytes(b"\xef\xbb\xbf" + (d / "pairs.jsonl").read_bytes())
    assert [r.pair_id for r in read_set(d)] == ["bom_0", "bom_1"]


def test_an_empty_perturb_flag_is_refused_not_read_as_none(eval_root, tmp_path, capsys):
    """`--perturb ""` (a shell variable left empty) ran the default `none` silently; `--perturb ,` was refused."""
    from sigma.cli import main

    out = tmp_path / "o"
    argv = ["eval", "--data", str(eval_root), "--annotator", "pixel-diff", "--out", str(out)]
    assert main([*argv, "--perturb", ""]) == 2
    assert "[bad_arguments]" in capsys.readouterr().err and not (out / "metrics.json").exists()


@pytest.mark.parametrize("given", ["none,", "none,,jpeg75", "none, ,jpeg75", ",none"])
def test_an_empty_name_in_the_perturb_flag_is_refused_with_the_other_flag_errors(given, eval_root, tmp_path, capsys):
    """`--perturb none,` (a name left off, or `none,$P` with P empty) and `none,,jpeg75` ran `none` and `none,jpeg75`
    without a word, while `--perturb ,` was refused: an empty name is `bad_arguments` naming the flag and the item,
    said in the same run as another flag's mistake (`--threshold nan`), before anything is scored or written."""
    from sigma.cli import main

    out = tmp_path / "o"
    argv = ["eval", "--data", str(eval_root), "--annotator", "pixel-diff", "--out", str(out)]
    assert main([*argv, "--threshold", "nan", "--perturb", given]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [bad_arguments]: ") and "--threshold nan" in err
    assert f"--perturb: an empty perturbation name in {given!r}" in err and not out.exists()
    assert main([*argv, "--set", f"perturb={given}"]) == 2      # the same from --set: the config's mistake
    assert f"[invalid_config]: invalid EvalConfig: perturb: an empty perturbation name in {given!r}" in \
        capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("name", ["metrics.json", "config.yaml"])
def test_an_out_whose_result_file_is_a_folder_is_refused_before_scoring(name, eval_root, tmp_path, capsys):
    """--out's metrics.json (or config.yaml) a folder: the whole eval ran, then failed `os_error` naming a temporary
    file ("Is a directory: OUT/.config.yaml.PID.RANDOM.tmp") and left a half-done set's plan that failed every rerun
    the same way. Now `bad_outdir` naming it, before any pair is scored (no journal), and nothing written."""
    from sigma.cli import main

    out = tmp_path / "o"
    (out / name).mkdir(parents=True)
    argv = ["eval", "--data", str(eval_root), "--annotator", "pixel-diff", "--out", str(out)]
    assert main(argv) == 2
    assert f"[bad_outdir]: {out / name}: is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted([".lock", name])
    (out / name).rmdir()
    assert main(argv) == 0 and (out / "metrics.json").is_file()


def test_an_out_inside_a_batch_runs_own_folders_is_refused_before_any_work(eval_root, tmp_path, capsys):
    """`sigma eval --out RUN/status` (or RUN/shards, RUN/masks/x): the eval wrote its metrics.json, config.yaml and
    .lock among the batch run's status files and shards, exit 0. Now `out_is_run_file` naming the run's folder, before
    the folder is made; a new folder beside them in the run is fine."""
    from sigma.cli import main

    run = tmp_path / "run"
    assert main(["batch", "run", str(eval_root / "edits"), "--out", str(run), "--annotator", "pixel-diff"]) == 0
    capsys.readouterr()
    before = {p: sorted(os.listdir(p)) for p in (run, run / "status", run / "shards")}
    for inner, own in ((run / "status", "status"), (run / "shards", "shards"), (run / "masks" / "x", "masks")):
        argv = ["eval", "--data", str(eval_root), "--annotator", "pixel-diff", "--out", str(inner)]
        assert main(argv) == 2
        assert f"[out_is_run_file]: {inner}: inside the batch run's own {own}/ in {run}" in capsys.readouterr().err
    assert {p: sorted(os.listdir(p)) for p in before} == before and not (run / "masks").exists()
    assert main(["eval", "--data", str(eval_root), "--annotator", "pixel-diff", "--out", str(run / "eval")]) == 0
    assert (run / "eval" / "metrics.json").is_file()


def test_spaces_around_a_perturbation_name_are_read_as_the_name(eval_root, tmp_path, capsys):
    """`--perturb " none , jpeg75"` (spaces around a name, as lists are written) is `none` and `jpeg75`."""
    from sigma.cli import main

    out = tmp_path / "o"
    assert main(["eval", "--data", str(eval_root), "--annotator", "pixel-diff", "--out", str(out),
                 "--perturb", " none , jpeg75"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["perturb"] == ["none", "jpeg75"]
    # the flag's form in --set too: it was refused "perturb: Input should be a valid list"
    assert main(["eval", "--data", str(eval_root), "--annotator", "pixel-diff", "--out", str(tmp_path / "set"),
                 "--set", "perturb=jpeg75,none"]) == 0
    assert json.loads((tmp_path / "set" / "metrics.json").read_text())["config"]["perturb"] == ["jpeg75", "none"]


# Runs `sigma eval` and SIGKILLs it, for real, just before its Nth write to a file of --out named metrics.json or
# config.yaml (their temporary files too): an open for writing, a rename or a removal, as the interpreter's audit
# hooks report each one before it happens (the code under test is not touched).
_KILL_AT_WRITE = r'''
import os, signal, sys
out, n = os.path.realpath(sys.argv[1]), int(sys.argv[2])
seen = [0]
def ours(path):
    try:
        path = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return os.path.dirname(path) == out     # any file of the output folder: its results, configs, masks
def hook(event, args):
    if event == "open":
        mode, flags = args[1], args[2]
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
        hit = writes and ours(args[0])
    elif event in ("os.rename", "os.remove"):
        hit = ours(args[0]) or event == "os.rename" and ours(args[1])
    else:
        return
    if hit:
        seen[0] += 1
        if seen[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
from sigma.cli import main
sys.exit(main(sys.argv[3:]))
'''


def _config_part(record: dict) -> dict:
    """metrics.json's `config` less the run's record (`annotator_config`): what config.yaml holds (`data` too)."""
    return {k: v for k, v in record.items() if k != "annotator_config"}


def _killable_eval(tmp_path: Path):
    """`sigma eval` (pixel-diff on two synthetic pairs) run as `sigma_eval(out, threshold, kill_at)`: a process
    SIGKILLed before its `kill_at`-th file write (0: never), through `_KILL_AT_WRITE`."""
    import subprocess
    import sys

    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    data = tmp_path / "data"
    write_pairs_jsonl(data, synthetic_pairs(2))
    script = tmp_path / "kill_at_write.py"
    script.write_text(_KILL_AT_WRITE)

    def sigma_eval(out: Path, threshold: str, kill_at: int) -> subprocess.CompletedProcess:
        argv = ["eval", "--data", str(data), "--annotator", "pixel-diff", "--threshold", threshold, "--out", str(out)]
        return subprocess.run([sys.executable, str(script), str(out), str(kill_at), *argv], capture_output=True,
                              text=True, timeout=120, check=False)

    return sigma_eval


def test_a_killed_eval_never_leaves_metrics_beside_another_runs_config(tmp_path):
    """metrics.json and config.yaml were two whole-file replacements, metrics first: an eval killed between them
    left the new run's metrics.json beside the old run's config.yaml, a result saying another config made it. The
    eval is killed (SIGKILL) before each of its writes in turn; after each kill, a metrics.json in the folder is
    always the one whose config config.yaml holds, and the run that is not killed writes the new pair."""
    import shutil

    import yaml


    sigma_eval = _killable_eval(tmp_path)

    def pair(out: Path) -> tuple[dict | None, dict | None]:
        metrics, config = out / "metrics.json", out / "config.yaml"
        return (_config_part(json.loads(metrics.read_text())["config"]) if metrics.exists() else None,
                yaml.safe_load(config.read_text()) if config.exists() else None)

    old = tmp_path / "old"
    assert sigma_eval(old, "0.1", 0).returncode == 0
    old_metrics, old_config = pair(old)
    assert old_metrics == old_config and old_config["threshold"] == 0.1
    states = []
    for kill_at in range(1, 25):        # each write: the lock, the probe, the progress journal, the set
        out = tmp_path / f"killed{kill_at}"
        shutil.copytree(old, out)
        proc = sigma_eval(out, "0.3", kill_at)
        metrics, config = pair(out)
        if metrics is not None:
            assert metrics == config, f"killed before write {kill_at}: metrics.json of one run, config.yaml of another"
        if proc.returncode == 0:       # fewer writes than kill_at: the run that finished
            assert metrics["threshold"] == 0.3
            break
        assert proc.returncode == -9, proc.stderr
        states.append((metrics or {}).get("threshold"))
    else:
        pytest.fail("the eval was killed at every write point tried and never finished")
    assert states[0] == 0.1 and len(states) >= 2      # killed at the first write: the old pair intact


def test_a_killed_annotate_never_leaves_a_result_beside_another_runs_masks_or_config(tmp_path):
    """`sigma annotate -o DIR` wrote mask.png, prob.png, overlay.png, result.json and config.yaml one after the
    other, each replaced whole: killed between them, the folder held the new masks beside the old result.json, or
    the new result.json beside the old config.yaml. Now one set, result.json last. Killed (SIGKILL) before each
    write in turn, a result.json in the folder always has the config.yaml and the mask.png of its own run."""
    import shutil
    import subprocess
    import sys

    import yaml

    from sigma.io.images import read_mask

    rng = np.random.default_rng(0)
    orig = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    edited = orig.copy()
    edited[10:30, 20:44] = np.clip(edited[10:30, 20:44].astype(int) + 60, 0, 255).astype(np.uint8)
    edited[5:8, 2:6] = np.clip(edited[5:8, 2:6].astype(int) + 20, 0, 255).astype(np.uint8)  # marked at 0.05 only
    Image.fromarray(orig).save(tmp_path / "o.png")
    Image.fromarray(edited).save(tmp_path / "e.png")
    script = tmp_path / "kill_at_write.py"
    script.write_text(_KILL_AT_WRITE)

    def annotate(out: Path, threshold: str, kill_at: int) -> subprocess.CompletedProcess:
        argv = ["annotate", str(tmp_path / "o.png"), str(tmp_path / "e.png"), "--annotator", "pixel-diff",
                "--threshold", threshold, "-o", str(out)]
        return subprocess.run([sys.executable, str(script), str(out), str(kill_at), *argv], capture_output=True,
                              text=True, timeout=120, check=False)

    old = tmp_path / "old"
    assert annotate(old, "0.05", 0).returncode == 0
    new = tmp_path / "new"
    assert annotate(new, "0.2", 0).returncode == 0
    area = {t: int(read_mask(d / "mask.png").sum()) for t, d in ((0.05, old), (0.2, new))}
    assert area[0.05] > area[0.2] > 0                  # the two runs' masks differ: a mix-up would show
    finished = False
    for kill_at in range(1, 40):
        out = tmp_path / f"killed{kill_at}"
        shutil.copytree(old, out)
        proc = annotate(out, "0.2", kill_at)
        if (out / "result.json").exists():
            threshold = json.loads((out / "result.json").read_text())["threshold"]
            assert yaml.safe_load((out / "config.yaml").read_text())["threshold"] == threshold, kill_at
            assert int(read_mask(out / "mask.png").sum()) == area[threshold], kill_at
        if proc.returncode == 0:
            finished = json.loads((out / "result.json").read_text())["threshold"] == 0.2
            break
        assert proc.returncode == -9, proc.stderr
    assert finished and kill_at > 3                    # killed at several writes before the one that finished


def _dead_pid() -> int:
    """The pid of a process that has finished (and been reaped): what a killed writer's temporary files name."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftovers(folder: Path) -> list[str]:
    """Temporary files and staged-set journals of our writers in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".pending")))


def test_a_killed_eval_loses_no_result_the_next_run_finishes_the_set(tmp_path):
    """`sigma eval` removed the old metrics.json before renaming the new one over it: killed in between, the folder
    held the new config.yaml and no metrics.json — the old result lost, the new one stranded in a hidden temporary
    file nothing ever read or removed. Now the new set is staged whole first (temporary files, then a journal); the
    next run on the folder finishes a staged set or removes an unfinished one. Killed (SIGKILL) before each write in
    turn, then a next run that fails at once (no data): the folder always holds a whole set, old or new, and no
    temporary file or journal."""
    import shutil

    import yaml

    from sigma.cli import main

    sigma_eval = _killable_eval(tmp_path)

    old = tmp_path / "old"
    assert sigma_eval(old, "0.1", 0).returncode == 0
    seen = set()
    for kill_at in range(1, 25):        # each write: the lock, the probe, the progress journal, the set
        out = tmp_path / f"killed{kill_at}"
        shutil.copytree(old, out)
        proc = sigma_eval(out, "0.3", kill_at)
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, proc.stderr
        # the next run on the folder: it takes the folder, then fails (no such data) without writing a result
        assert main(["eval", "--data", str(tmp_path / "missing"), "--annotator", "pixel-diff", "--out", str(out)]) == 2
        assert (out / "metrics.json").exists(), f"killed before write {kill_at}: the old result is gone, no new one"
        metrics = _config_part(json.loads((out / "metrics.json").read_text())["config"])
        assert metrics == yaml.safe_load((out / "config.yaml").read_text()), kill_at
        assert _leftovers(out) == [], (kill_at, _leftovers(out))
        seen.add(metrics["threshold"])
    else:
        pytest.fail("the eval was killed at every write point tried and never finished")
    assert seen == {0.1, 0.3}        # killed before the commit: the old set; after it: the new set, finished


def test_a_set_replacement_that_failed_after_staging_is_finished_by_a_reader(tmp_path, monkeypatch):
    """The rename step failing after its first rename (a disk error, or the kill simulated in-process): the set
    stays staged with its journal, and `finish_replacements` (any reader, or the next writer) moves it into place:
    the whole new set, never the old metrics.json beside the new config.yaml or no metrics.json at all."""
    from sigma.tempfiles import replace_together

    out = tmp_path / "ev"
    out.mkdir()
    replace_together([(out / "config.yaml", b"old config"), (out / "metrics.json", b"old metrics")])
    real = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "metrics.json":      # config.yaml renamed, metrics.json not
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        replace_together([(out / "config.yaml", b"new config"), (out / "metrics.json", b"new metrics")])
    monkeypatch.setattr(os, "replace", real)
    assert not (out / "metrics.json").exists() and (out / "config.yaml").read_bytes() == b"new config"
    from sigma.tempfiles import finish_replacements
    assert [p.name for p in finish_replacements(out)]
    assert (out / "metrics.json").read_bytes() == b"new metrics" and (out / "config.yaml").read_bytes() == b"new config"
    assert _leftovers(out) == []


def test_a_rename_into_place_that_fails_names_the_users_file_not_the_staged_one(tmp_path):
    """config.yaml made a folder while an eval ran (past the check before scoring): its commit failed `os_error: Is a
    directory: OUT/.config.yaml.PID.RANDOM.tmp`, a name the user never gave (the rename's filename2 is theirs). Now
    the error names OUT/config.yaml; the set stays staged, and is finished once the folder is gone."""
    from sigma.tempfiles import finish_replacements, replace_together

    out = tmp_path / "ev"
    (out / "config.yaml").mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as caught:
        replace_together([(out / "config.yaml", b"new config"), (out / "metrics.json", b"new metrics")])
    assert caught.value.filename == str(out / "config.yaml") and caught.value.filename2 is None
    assert str(caught.value) == f"[Errno 21] Is a directory: '{out / 'config.yaml'}'"
    (out / "config.yaml").rmdir()
    assert [p.name for p in finish_replacements(out)]
    assert (out / "metrics.json").read_bytes() == b"new metrics" and (out / "config.yaml").read_bytes() == b"new config"
    assert _leftovers(out) == []


def test_a_set_is_on_disk_before_its_journal_names_it(tmp_path):
    """Kill-safe was not power-safe: the staged files and the journal were written without fsync, so a power cut after
    the journal's rename could leave a journal naming files the page cache had not written, and the next writer would
    move those (empty, cut short) over the old set. Now every staged file and the journal are synced before the
    journal's rename (the commit point), and the folder after it: in a real `sigma eval` (its config.yaml and
    metrics.json, one set), its fsyncs and renames recorded by the shared recorder (`killers.RECORD_SYNCS`)."""
    import subprocess
    import sys

    from killers import RECORD_SYNCS

    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    data, out = tmp_path / "data", tmp_path / "ev"
    write_pairs_jsonl(data, synthetic_pairs(2))
    out.mkdir()
    log, script = tmp_path / "events.json", tmp_path / "record.py"
    script.write_text(RECORD_SYNCS)
    proc = subprocess.run([sys.executable, str(script), str(log), "eval", "--data", str(data), "--annotator",
                           "pixel-diff", "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    # ["fsync", path] as recorded; a rename as ("replace", the target's name), as this test read them before
    events = [("replace", Path(e[2]).name) if e[0] == "rename" else (e[0], e[1]) for e in json.loads(log.read_text())]
    synced = [Path(path).name for kind, path in events if kind == "fsync"]
    commit = next(i for i, (kind, name) in enumerate(events) if kind == "replace" and name.endswith(".pending"))
    before = [Path(path).name for kind, path in events[:commit] if kind == "fsync"]
    assert any(n.startswith(".config.yaml.") for n in before) and any(n.startswith(".metrics.json.") for n in before)
    assert any(n.endswith(".pending.tmp") or ".pending." in n for n in before), events      # the journal itself
    assert str(out) in [path for kind, path in events[commit:] if kind == "fsync"], events  # the folder's entry
    assert (out / "metrics.json").is_file() and _leftovers(out) == [], synced


def test_eval_and_annotate_sweep_what_killed_writers_left_and_nothing_else(tmp_path):
    """A writer killed between writing its temporary file and renaming it left `.NAME.PID.RANDOM.tmp` behind, and
    nothing removed it: output folders filled with hidden junk after crashes. The writer that owns the folder now
    removes them when it next starts there — only names of that form whose pid is no live process here. A live
    writer's file (another process's pid) and a user's `notes.tmp` stay."""
    import subprocess
    import sys

    from sigma.cli import main
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    data = tmp_path / "data"
    write_pairs_jsonl(data, synthetic_pairs(2))
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        ev = tmp_path / "ev"
        ev.mkdir()
        stale = [f".metrics.json.{dead}.0badf00d.tmp", f".config.yaml.{dead}.12345678.tmp",
                 f".summary.json.{dead}.abcdef01.tmp", f"..metrics.json.{dead}.deadbeef.pending.{dead}.0a0b0c0d.tmp"]
        kept = [f".metrics.json.{live.pid}.0badf00d.tmp", "notes.tmp", ".notes.tmp", f".x.{dead}.notrandom.tmp",
                f"metrics.json.{dead}.12345678.tmp"]
        for name in stale + kept:
            (ev / name).write_text("x")
        assert main(["eval", "--data", str(data), "--annotator", "pixel-diff", "--out", str(ev)]) == 0
        assert (ev / "metrics.json").exists()
        assert _leftovers(ev) == sorted(kept), _leftovers(ev)

        o, e = tmp_path / "o.png", tmp_path / "e.png"
        rng = np.random.default_rng(0)
        orig = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(orig).save(o)
        Image.fromarray(255 - orig).save(e)
        an = tmp_path / "an"
        an.mkdir()
        old_legacy = an / "result.json.tmp"                  # an older sigma's shared temporary name, days old
        stale = [f".mask.png.{dead}.0badf00d.tmp", f".result.json.{dead}.12345678.tmp", old_legacy.name,
                 f"..result.json.{dead}.deadbeef.pending.{dead}.0a0b0c0d.tmp"]
        # another live writer's file; a dead writer's file of no name annotate writes (not its own); user files
        # and a shared temporary name of annotate's own that is not old enough to be sure its writer is gone
        kept = [f".mask.png.{live.pid}.0badf00d.tmp", f".metrics.json.{dead}.12345678.tmp", "notes.tmp",
                "prob.png.tmp"]
        for name in stale + kept:
            (an / name).write_text("x")
        os.utime(old_legacy, (1e9, 1e9))
        assert main(["annotate", str(o), str(e), "--annotator", "pixel-diff", "-o", str(an)]) == 0
        assert (an / "result.json").exists()
        assert _leftovers(an) == sorted(kept), _leftovers(an)
    finally:
        live.kill()
        live.wait()


def test_an_evals_saved_config_runs_the_same_eval_again(eval_root, tmp_path, capsys):
    """The config.yaml `sigma eval` writes beside metrics.json held the run's record too (`annotator_config`,
    `data`): `sigma eval --config OUT/config.yaml` was refused as invalid_config (Extra inputs are not permitted),
    so the saved config could not reproduce the run. Now config.yaml is the EvalConfig alone and a second eval
    from it scores the same numbers; metrics.json's `config` keeps the record."""
    from sigma.cli import main

    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["eval", "--data", str(eval_root), "--annotator", "pixel-diff", "--threshold", "0.3", "--perturb",
                 "none,jpeg90", "--set", "io.align=true", "--set", "batch_size=2", "--out", str(first)]) == 0
    assert main(["eval", "--data", str(eval_root), "--config", str(first / "config.yaml"), "--out", str(again)]) == 0
    capsys.readouterr()
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (first, again))
    assert one["config"]["threshold"] == 0.3 and one["config"]["perturb"] == ["none", "jpeg90"]
    assert one["config"]["annotator_config"]["name"] == "pixel-diff" and one["config"]["data"] == str(eval_root)
    assert one == two                                   # tables, per-pair scores, skipped pairs, the config record
    assert (first / "config.yaml").read_text() == (again / "config.yaml").read_text()


def test_an_evals_saved_config_runs_again_without_data_from_another_folder(tmp_path):
    """`sigma eval --config OUT/config.yaml` was refused by argparse (`--data` required) though the eval's data was
    recorded, and only as typed (relative: good in the folder the eval ran in). Now config.yaml records `data` as an
    absolute path: the real CLI reruns from another folder with no --data and writes the same metrics; --data on
    the command line still wins; neither is one bad_arguments line; a recorded folder that is gone is named."""
    import subprocess
    import sys

    import yaml

    make_pair_set(tmp_path / "start" / "eval", "edits", 2)
    make_pair_set(tmp_path / "other", "more", 3, seed=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def sigma_eval(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sigma", "eval", *argv], capture_output=True, text=True,
                              timeout=120, check=False, cwd=cwd)

    first = tmp_path / "start" / "first"
    done = sigma_eval(tmp_path / "start", "--data", "eval", "--annotator", "pixel-diff", "--out", "first")
    assert done.returncode == 0, done.stderr
    recorded = str(tmp_path / "start" / "eval")
    assert yaml.safe_load((first / "config.yaml").read_text())["data"] == recorded
    assert json.loads((first / "metrics.json").read_text())["config"]["data"] == recorded

    saved = str(first / "config.yaml")
    done = sigma_eval(elsewhere, "--config", saved, "--out", "again")
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "again" / "metrics.json").read_text() == (first / "metrics.json").read_text()
    assert (elsewhere / "again" / "config.yaml").read_text() == (first / "config.yaml").read_text()

    done = sigma_eval(elsewhere, "--config", saved, "--data", str(tmp_path / "other"), "--out", "theirs")
    assert done.returncode == 0, done.stderr
    theirs = json.loads((elsewhere / "theirs" / "metrics.json").read_text())
    assert theirs["config"]["data"] == str(tmp_path / "other"), theirs["config"]
    assert {row["set"] for row in theirs["per_pair"]["none"]} == {"more"}, theirs["per_pair"]

    done = sigma_eval(elsewhere, "--annotator", "pixel-diff", "--out", "none")
    assert done.returncode == 2 and done.stderr.startswith("sigma: error [bad_arguments]: "), done.stderr
    assert done.stderr.count("\n") == 1 and "--data" in done.stderr and not (elsewhere / "none").exists()

    (tmp_path / "start" / "eval").rename(tmp_path / "start" / "moved")
    done = sigma_eval(elsewhere, "--config", saved, "--out", "gone")
    assert done.returncode == 2 and done.stderr.startswith("sigma: error [file_not_found]: "), done.stderr
    assert recorded in done.stderr and saved in done.stderr and "--data" in done.stderr, done.stderr
    assert not (elsewhere / "gone").exists()


def test_an_older_evals_config_without_data_says_it_predates_the_saved_data_path(tmp_path):
    """The config.yaml of an eval from before `data` was saved in it has none: `sigma eval --config OLD/config.yaml`
    said "give --data ..., or a --config that records it", as if no config had been given. Now the real CLI says the
    file records no data and predates the saved data path, and asks for --data; with --data the old config runs."""
    import subprocess
    import sys

    make_pair_set(tmp_path / "eval", "edits", 2)
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("annotator: pixel-diff\noptions: {}\nthreshold: null\nperturb: [none]\n"
                                     "batch_size: 4\nlimit: null\n")
    (old / "metrics.json").write_text(json.dumps({"config": {"data": "eval", "annotator": "pixel-diff"}}))

    def sigma_eval(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sigma", "eval", *argv], capture_output=True, text=True,
                              timeout=120, check=False, cwd=tmp_path)

    done = sigma_eval("--config", str(old / "config.yaml"), "--out", "again")
    assert done.returncode == 2 and done.stderr.startswith("sigma: error [bad_arguments]: "), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{old / 'config.yaml'} records no `data`" in done.stderr and "predates" in done.stderr, done.stderr
    assert "Pass --data" in done.stderr and not (tmp_path / "again").exists(), done.stderr

    done = sigma_eval("--config", str(old / "config.yaml"), "--data", "eval", "--out", "again")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["config"]["data"] == str(tmp_path / "eval")


def test_an_annotates_saved_config_runs_the_same_annotation_again(tmp_path, capsys):
    """`sigma annotate`'s config.yaml carried `annotator_config` and was no valid `--config` (invalid_config). Now
    it is the AnnotateConfig alone: the same pair annotated from it gives the same mask and result."""
    from sigma.cli import main

    d = make_pair_set(tmp_path / "set", "edits", 1)
    pair = [str(d / "edits_0_original.png"), str(d / "edits_0_edited.png")]
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["annotate", *pair, "--annotator", "pixel-diff", "--threshold", "0.3", "--set",
                 "options.mask_mode=semantic", "-o", str(first)]) == 0
    assert main(["annotate", *pair, "--config", str(first / "config.yaml"), "-o", str(again)]) == 0
    capsys.readouterr()
    one, two = (json.loads((o / "result.json").read_text()) for o in (first, again))
    assert one["config"]["threshold"] == 0.3 and one["config"]["annotator_config"]["name"] == "pixel-diff"
    for key in ("segmentation", "area", "bbox", "threshold", "config_hash", "config"):
        assert one[key] == two[key], key
    assert (first / "mask.png").read_bytes() == (again / "mask.png").read_bytes()


def test_an_eval_that_scores_no_pair_is_an_error_and_writes_nothing(tmp_path, capsys):
    """Every pair skipped (here: each mask of another size than its image) ended with exit 0, an empty table and a
    metrics.json of no scores — a script saw success. Now `no_pairs` (exit 2) saying how many were skipped and why,
    each skipped pair still named, and nothing written (an earlier eval's metrics.json in --out stays)."""
    from sigma.cli import main

    root = tmp_path / "eval"
    d = make_pair_set(root, "s", 2)
    for mask in d.glob("*_mask.png"):
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(mask)
    out = tmp_path / "o"
    assert main(["eval", "--data", str(root), "--annotator", "pixel-diff", "--out", str(out)]) == 2
    said = capsys.readouterr()
    assert "[no_pairs]" in said.err and "none of the 2 pairs" in said.err and "mask_size_mismatch" in said.err
    assert "Traceback" not in said.err and said.out.count("skipped s/") == 2
    assert not out.exists()


def test_an_eval_into_a_folder_holding_another_evals_metrics_says_it_replaces_them(eval_root, tmp_path, capsys):
    """Two evals into one --out (the default `sigma_eval/` of every eval started in one folder): the second replaced
    the first's metrics.json and config.yaml without a word. Now said, naming the earlier eval, before it starts (a
    Ctrl-C keeps them); the set is replaced whole, never mixed."""
    from sigma.cli import main

    out = tmp_path / "o"
    argv = ["eval", "--data", str(eval_root), "--out", str(out)]
    assert main([*argv, "--annotator", "pixel-diff", "--threshold", "0.3"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([*argv, "--annotator", "pixel-diff", "--threshold", "0.1"]) == 0
    err = capsys.readouterr().err
    assert f"{out} holds the metrics.json of an earlier eval" in err and "pixel-diff" in err and str(eval_root) in err
    record = json.loads((out / "metrics.json").read_text())["config"]
    assert record["threshold"] == 0.1 and "threshold: 0.1" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("twin", ["s_1", 7])
def test_an_id_given_to_two_records_of_a_set_is_refused_not_counted_twice(tmp_path, capsys, twin):
    """A pairs.jsonl naming two records by one id (a manifest concatenated twice; `7` beside `"7"`) was scored as
    two pairs: `pairs` said 4 for 3, the pair's F1 weighed double, and per_pair held two rows no reader could tell
    apart. Now bad_manifest, exit 2, naming the set and the id; nothing written. The same id in two sets is fine."""
    from sigma.cli import main

    root = tmp_path / "eval"
    first = {"id": twin, "original": "s_0_original.png", "edited": "s_0_edited.png", "mask": "s_0_mask.png"}
    make_pair_set(root, "s", 2, extra=[first, {**first, "id": "7"}] if twin == 7 else [first])
    make_pair_set(root, "t", 2, extra=[{**first, "id": "s_1", "original": "t_0_original.png",
                                        "edited": "t_0_edited.png", "mask": "t_0_mask.png"}])
    out = tmp_path / "o"
    assert main(["eval", "--data", str(root), "--annotator", "pixel-diff", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[bad_manifest]" in err and f"s/pairs.jsonl: id '{twin}'" in err
    assert not out.exists()
    assert main(["eval", "--data", str(root / "t"), "--annotator", "pixel-diff", "--out", str(out)]) == 0
    assert [r["id"] for r in json.loads((out / "metrics.json").read_text())["per_pair"]["none"]] == \
        ["t_0", "t_1", "s_1"]
    capsys.readouterr()



def _as_one_refused_writes(argv: list[str]) -> list[str]:
    """`argv` run so that a folder's mode binds: as it is for a user, through `setpriv` without the capabilities
    that let root write anywhere (skipped where neither is possible)."""
    import shutil

    if os.geteuid() != 0:
        return argv
    if not shutil.which("setpriv"):
        pytest.skip("root without setpriv: a folder's mode does not stop this process")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", *argv]


def test_an_out_under_a_folder_the_user_may_not_look_into_is_bad_outdir(eval_root, tmp_path):
    """`--out LOCKED/x` with LOCKED of mode 000 was `os_error: Permission denied` (its existence asked with
    Path.exists, which raises there) where every other unusable --out, and `batch run` / `annotate` with the same
    path, say `bad_outdir` naming it. Now the same line, before any pair is scored."""
    import subprocess
    import sys

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        done = subprocess.run(_as_one_refused_writes([sys.executable, "-m", "sigma", "eval", "--data", str(eval_root),
                                                      "--annotator", "pixel-diff", "--out", str(locked / "x")]),
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2 and "perturbation" not in done.stdout, done
    assert done.stderr == f"sigma: error [bad_outdir]: {locked / 'x'}: not a usable output folder (Permission denied)\n"


@pytest.mark.parametrize("how", ["mode", "mount", "full"])
def test_an_out_that_refuses_writes_is_refused_before_the_evaluation(eval_root, tmp_path, how):
    """`--out RO`, a folder an earlier eval used (its `.lock` there) whose mode now refuses writes, ran the whole
    evaluation — 14 minutes on the real set — and then failed with `os_error` naming a hidden
    `.config.yaml.PID.RANDOM.tmp`; on a read-only mount it was `os_error` of `.lock`, on a full disk `os_error: No
    space left on device` naming nothing. Now one `bad_outdir` line naming --out and the reason, before any pair is
    scored (docs: checked before any work)."""
    import subprocess
    import sys

    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / ".lock").write_bytes(b"")
    cmd = [sys.executable, "-m", "sigma", "eval", "--data", str(eval_root), "--annotator", "pixel-diff",
           "--out", str(ro)]
    if how == "mode":
        ro.chmod(0o555)
        cmd, reason = _as_one_refused_writes(cmd), "Permission denied"
    else:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(ro)], capture_output=True).returncode:
            pytest.skip("mount is not allowed here")
        (ro / ".lock").write_bytes(b"")
        if how == "mount":
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, capture_output=True)
            reason = "Read-only file system"
        else:
            with open(ro / "fill", "wb", buffering=0) as fill, pytest.raises(OSError):   # the disk full
                while True:
                    fill.write(b"x" * 4096)
            reason = "No space left on device"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2 and "perturbation" not in done.stdout, done
        assert done.stderr == f"sigma: error [bad_outdir]: {ro}: not a usable output folder ({reason})\n"
        assert sorted(p.name for p in ro.iterdir()) == [".lock", "fill"][:1 + (how == "full")]
    finally:
        if how != "mode":
            subprocess.run(["umount", str(ro)], check=False, capture_output=True)
        ro.chmod(0o755)


class ConstantConfidence(Recorder):
    """A plugin whose confidence is the same for every pair: it ranks nothing."""

    name = "constant-confidence"

    def _predict_batch(self, pairs: list[Pair]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        return [(prob, {"confidence": 0.5}) for prob, _ in super()._predict_batch(pairs)]


def test_a_confidence_that_ranks_nothing_has_no_rho_and_its_cut_keeps_every_tied_pair_saying_so(tmp_path):
    """One confidence for every pair: Spearman's rho is undefined (n/a, null), not 0; and the "keep the most
    confident" line printed `top 25% (conf >= 0.5000): F1 x` where the cut kept all four pairs (ties are kept),
    the F1 of all of them named as the top quarter's. A cell that keeps more than its share says so."""
    root = tmp_path / "eval"
    make_pair_set(root, "s", 4)
    result = evaluate(ConstantConfidence(), root, ["none"])
    assert result.mask_tables()["none"]["overall"]["rho_confidence_f1"] != result.mask_tables()["none"]["overall"][
        "rho_confidence_f1"]                                      # NaN: undefined
    assert result.to_dict()["masks"]["none"]["overall"]["rho_confidence_f1"] is None
    text = format_tables(result)
    assert "top 25% (conf >= 0.5000, ties at the cut: 4 of 4 kept): F1" in text
    assert "top 100% (conf >= 0.5000): F1" in text and "top 25% (conf >= 0.5000): F1" not in text


# SIGKILL before the `kill_at`-th append to the eval's progress journal (0: never); each append's count is logged to
# LOG, so a test sees how many batches a run scored itself.
_KILL_AT_APPEND = r'''
import os, signal, sys
log, n = sys.argv[1], int(sys.argv[2])
seen = [0]
def hook(event, args):
    if event == "open" and str(args[0]).endswith("eval_progress.jsonl") and args[1] == "a":
        seen[0] += 1
        with open(log, "w") as fh:
            fh.write(str(seen[0]))
        if seen[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
from sigma.cli import main
sys.exit(main(sys.argv[3:]))
'''


def _resumable_eval(tmp_path: Path):
    """`sigma eval` (pixel-diff, `none` and `jpeg75`, 2 pairs a batch, on 6 synthetic pairs: 6 batches) as
    `sigma_eval(out, kill_at, *more)` → (process, batches it scored itself)."""
    import subprocess
    import sys

    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    data = tmp_path / "data"
    write_pairs_jsonl(data, synthetic_pairs(6, size=48))
    script = tmp_path / "kill_at_append.py"
    script.write_text(_KILL_AT_APPEND)

    def sigma_eval(out: Path, kill_at: int, *more: str) -> tuple[subprocess.CompletedProcess, int]:
        log = tmp_path / "appends"
        log.write_text("0")
        argv = ["eval", "--data", str(data), "--annotator", "pixel-diff", "--perturb", "none,jpeg75",
                "--set", "batch_size=2", "--out", str(out), *more]
        proc = subprocess.run([sys.executable, str(script), str(log), str(kill_at), *argv], capture_output=True,
                              text=True, timeout=120, check=False)
        return proc, int(log.read_text()) - (1 if proc.returncode == -9 else 0)

    return sigma_eval


def _journal_batches(out: Path) -> int:
    return len((out / "eval_progress.jsonl").read_text().splitlines()) - 1


def test_a_killed_eval_continues_where_it_stopped_and_ends_with_the_uninterrupted_metrics(tmp_path):
    """A killed eval started over (the shared set: 11-14 minutes). Now each batch goes to OUT/eval_progress.jsonl
    as it ends; the same eval run again scores only the batches it lacks. SIGKILLed before each batch's append in
    turn, then run again: metrics.json is byte for byte the uninterrupted run's, the rerun scored only what was left,
    and the journal is gone."""
    sigma_eval = _resumable_eval(tmp_path)
    whole, scored = sigma_eval(tmp_path / "whole", 0)
    assert whole.returncode == 0 and scored == 6, whole.stderr
    expected = (tmp_path / "whole" / "metrics.json").read_bytes()
    assert not (tmp_path / "whole" / "eval_progress.jsonl").exists()
    for kill_at in range(1, 7):
        out = tmp_path / f"killed{kill_at}"
        proc, _ = sigma_eval(out, kill_at)
        assert proc.returncode == -9, proc.stderr
        kept = _journal_batches(out)
        assert kept == kill_at - 1
        proc, scored = sigma_eval(out, 0)
        assert proc.returncode == 0, proc.stderr
        assert scored == 6 - kept, (kill_at, scored)
        assert ("continuing the eval killed" in proc.stderr) == (kept > 0)
        assert (out / "metrics.json").read_bytes() == expected, kill_at
        assert not (out / "eval_progress.jsonl").exists()


def test_a_journal_line_cut_by_the_kill_is_dropped_and_its_batch_scored_again(tmp_path):
    sigma_eval = _resumable_eval(tmp_path)
    assert sigma_eval(tmp_path / "whole", 0)[0].returncode == 0
    out = tmp_path / "out"
    assert sigma_eval(out, 4)[0].returncode == -9
    with open(out / "eval_progress.jsonl", "a") as fh:
        fh.write('{"perturbation": "jpeg75", "start": 0, "rows": [{"ind')
    proc, scored = sigma_eval(out, 0)
    assert proc.returncode == 0 and scored == 3, proc.stderr
    assert (out / "metrics.json").read_bytes() == (tmp_path / "whole" / "metrics.json").read_bytes()


def test_an_eval_of_other_settings_on_a_killed_evals_out_is_refused_until_restart(tmp_path):
    """Another threshold (or annotator, perturbations, data) on a killed eval's --out would mix two evals' scores:
    `eval_changed`, exit 2, nothing scored, the journal as it was; `--restart` scores every pair again."""
    sigma_eval = _resumable_eval(tmp_path)
    out = tmp_path / "out"
    assert sigma_eval(out, 3)[0].returncode == -9
    journal = (out / "eval_progress.jsonl").read_bytes()
    proc, scored = sigma_eval(out, 0, "--threshold", "0.3")
    assert proc.returncode == 2 and scored == 0
    assert "[eval_changed]" in proc.stderr and "--restart" in proc.stderr, proc.stderr
    assert (out / "eval_progress.jsonl").read_bytes() == journal and not (out / "metrics.json").exists()
    # a pair's file changed since the kill is another eval too
    data = tmp_path / "data"
    mask = next(data.glob("*mask*.png"))
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    proc, _ = sigma_eval(out, 0)
    assert proc.returncode == 2 and "[eval_changed]" in proc.stderr, proc.stderr
    proc, scored = sigma_eval(out, 0, "--threshold", "0.3", "--restart")
    assert proc.returncode == 0 and scored == 6, proc.stderr
    assert json.loads((out / "metrics.json").read_text())["config"]["threshold"] == 0.3
    assert not (out / "eval_progress.jsonl").exists()


@pytest.mark.parametrize("edit", ["index", "score", "errors", "row_dropped", "row_copied", "start_bool", "index_bool",
                                  "f1_bool", "f1_text", "tp_bool", "error_no_fields", "error_of_numbers",
                                  "rows_swapped", "skipped_beside_its_row", "perturbation_list"])
def test_a_journal_line_edited_by_hand_is_eval_changed_not_a_traceback(tmp_path, edit):
    """A batch line that is whole JSON but not what an eval writes (a row's index out of its batch, a score with a
    field missing, errors that are no objects, a row deleted or copied) was read back as it was: a traceback, scores
    given to the wrong pairs, a pair left out of the metrics or counted twice. Now `eval_changed` naming the journal,
    exit 2; `--restart` still ends the eval."""
    sigma_eval = _resumable_eval(tmp_path)
    out = tmp_path / "out"
    assert sigma_eval(out, 3)[0].returncode == -9
    path = out / "eval_progress.jsonl"
    lines = path.read_text().splitlines()
    batch = json.loads(lines[1])
    if edit == "index":
        batch["rows"][0]["index"] = 5
    elif edit == "score":
        del batch["rows"][0]["score"]["f1"]
    elif edit == "row_dropped":         # the pair neither scored nor skipped: it was left out of the metrics
        del batch["rows"][1]
    elif edit == "row_copied":          # the same pair twice: counted twice in the metrics
        batch["rows"][1] = batch["rows"][0]
    elif edit == "start_bool":          # bools pass `isinstance(x, int)`: false was batch 0 (False == 0 as a key)
        batch["start"] = False
    elif edit == "index_bool":          # true was pair 1
        batch["rows"][1]["index"] = True
    elif edit == "f1_bool":             # averaged as 1.0
        batch["rows"][0]["score"]["f1"] = True
    elif edit == "f1_text":             # a traceback at the tables' mean
        batch["rows"][0]["score"]["f1"] = "0.5"
    elif edit == "tp_bool":
        batch["rows"][0]["score"]["tp"] = True
    elif edit == "error_no_fields":     # a pair said skipped with no set, id, code or message: a KeyError traceback
        batch["errors"] = [{}]
        del batch["rows"][1]
    elif edit == "error_of_numbers":
        batch["errors"] = [{"set": 1, "id": 2, "perturbation": 3, "code": 4, "message": 5}]
        del batch["rows"][1]
    elif edit == "rows_swapped":        # each pair's score put on the other pair
        batch["rows"][0]["index"], batch["rows"][1]["index"] = batch["rows"][1]["index"], batch["rows"][0]["index"]
    elif edit == "perturbation_list":   # unhashable: a TypeError traceback as a key of the batches done
        batch["perturbation"] = [batch["perturbation"]]
    elif edit == "skipped_beside_its_row":      # pair 0 scored and said skipped, pair 1 left out of the metrics
        batch["errors"] = [{"set": "data", "id": batch["rows"][0]["score"]["pair_id"], "perturbation": "none",
                            "code": "image_unreadable", "message": "x"}]
        del batch["rows"][1]
    else:
        batch["errors"] = ["x"]
    path.write_text("\n".join([lines[0], json.dumps(batch), *lines[2:]]) + "\n")
    proc, _ = sigma_eval(out, 0)
    assert proc.returncode == 2 and "[eval_changed]" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc, scored = sigma_eval(out, 0, "--restart")
    assert proc.returncode == 0 and scored == 6, proc.stderr


_KILL_AT_JOURNAL_REMOVAL = r'''
import os, signal, sys
from pathlib import Path
def hook(event, args):
    # the journal's removal once the metrics are written or staged (not the one before its header is first written)
    if event == "os.remove" and str(args[0]).endswith("eval_progress.jsonl") \
            and any("metrics.json" in name for name in os.listdir(Path(args[0]).parent)):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
from sigma.cli import main
sys.exit(main(sys.argv[1:]))
'''


def _eval_killed_at_journal_removal(tmp_path: Path) -> tuple[Path, list[str]]:
    """A real `sigma eval` SIGKILLed at the removal of its journal, once its metrics are written (or staged):
    (its --out, the argv of the same eval)."""
    import subprocess
    import sys

    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    data, out = tmp_path / "data", tmp_path / "out"
    write_pairs_jsonl(data, synthetic_pairs(5, size=48))
    argv = ["eval", "--data", str(data), "--annotator", "pixel-diff", "--set", "batch_size=2", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_JOURNAL_REMOVAL, *argv], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr
    return out, argv


# `sigma eval`, saying at its exit how many times it opened its --out's journal for reading
_COUNT_JOURNAL_READS = r'''
import atexit, sys
reads = [0]
def hook(event, args):
    if event == "open" and str(args[0]).endswith("eval_progress.jsonl") and str(args[1]).startswith("r") \
            and "+" not in str(args[1]):
        reads[0] += 1
sys.addaudithook(hook)
atexit.register(lambda: print(f"journal opened for reading {reads[0]} time(s)", file=sys.stderr))
from sigma.cli import main
sys.exit(main(sys.argv[1:]))
'''


def _sigma(*argv: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "sigma", *argv], capture_output=True, text=True, timeout=120,
                          check=False)


def test_an_eval_killed_at_its_journals_removal_lets_an_eval_of_other_settings_run(tmp_path):
    """Killed between putting metrics.json in place and removing the journal, an eval left both: a finished eval,
    whose rerun with another threshold was refused `eval_changed` until --restart. The journal's removal is now part
    of the metrics' set: the next eval on OUT finishes that set (metrics.json in place, the journal gone) and runs."""
    out, argv = _eval_killed_at_journal_removal(tmp_path)
    plans = [json.loads(p.read_text()) for p in out.iterdir() if p.name.endswith(".pending")]
    assert [plan["remove"] for plan in plans] == [["eval_progress.jsonl"]], sorted(os.listdir(out))
    proc = _sigma(*argv, "--threshold", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "metrics.json").read_text())["config"]["threshold"] == 0.3
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml", "metrics.json"]


def test_a_finished_evals_journal_left_beside_its_metrics_is_stale_not_eval_changed(tmp_path):
    """The state an eval of an earlier sigma left when killed between its metrics.json and its journal's removal:
    the whole journal beside the metrics it gave (the same per-pair numbers, metrics.json no older). An eval of other
    settings was refused `eval_changed`; that journal is now recognised as stale and replaced. A journal of an
    unfinished eval beside an earlier eval's metrics.json is still refused."""
    import shutil
    import subprocess
    import sys

    from sigma.tempfiles import finish_replacements

    out, argv = _eval_killed_at_journal_removal(tmp_path)
    journal = out / "eval_progress.jsonl"
    kept = tmp_path / "journal.jsonl"
    shutil.copy2(journal, kept)                 # its mtime too: written before the metrics
    finish_replacements(out)                    # metrics.json in place, the journal removed with it
    assert (out / "metrics.json").is_file() and not journal.exists()
    shutil.copy2(kept, journal)
    unfinished = tmp_path / "unfinished.jsonl"  # the same journal, its last batch not written: an unfinished eval
    unfinished.write_text("".join(kept.read_text().splitlines(keepends=True)[:-1]))
    proc = subprocess.run([sys.executable, "-c", _COUNT_JOURNAL_READS, *argv, "--threshold", "0.3"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "metrics.json").read_text())["config"]["threshold"] == 0.3
    assert not journal.exists()
    # the stale journal opened (and each line parsed) once: `finished_beside` read it again after `_read`'s header
    assert proc.stderr.splitlines()[-1] == "journal opened for reading 1 time(s)", proc.stderr
    shutil.copy2(unfinished, journal)
    os.utime(out / "metrics.json")              # newer than the journal: only the rows tell it apart
    proc = _sigma(*argv, "--threshold", "0.4")
    assert proc.returncode == 2 and "[eval_changed]" in proc.stderr, proc.stderr


@pytest.mark.parametrize("how", ["file", "set"])
def test_an_empty_data_in_a_config_or_set_is_refused_not_the_current_folder(tmp_path, monkeypatch, capsys, how):
    """`data: ""` in a config file (or `--set data="''"`) was Path(''), the current folder: an eval of whatever
    pairs lay there, unasked (`--data ""` was refused `empty_path`). Now refused the same way, before --out is made."""
    from sigma.cli import main
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "here", synthetic_pairs(2))
    monkeypatch.chdir(tmp_path / "here")
    args = ["eval", "--annotator", "pixel-diff", "--out", str(tmp_path / "out")]
    if how == "file":
        (tmp_path / "c.yaml").write_text('data: ""\n')
        args += ["--config", str(tmp_path / "c.yaml")]
    else:
        args += ["--set", "data=''"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "sigma: error [empty_path]: `data` of " in err and "is an empty path" in err, err
    assert not (tmp_path / "out").exists()


def test_a_config_data_path_with_a_tilde_says_it_is_not_expanded(tmp_path, monkeypatch, capsys):
    """`data: ~/sets` in a config is a folder named `~` (no shell expands it): the file_not_found line says so."""
    from sigma.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("data: ~/sets\n")
    assert main(["eval", "--annotator", "pixel-diff", "--config", "c.yaml", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"[file_not_found]: {tmp_path}/~/sets:" in err and "`~` and `$VARIABLE` are not expanded" in err, err
