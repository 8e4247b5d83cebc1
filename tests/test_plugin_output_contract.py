"""A plugin annotator's output is checked against the contract (docs/ARCHITECTURE.md, 'The annotator output
contract') before any mask is made: a probability map on a 0-255 scale used to be clipped to [0, 1] silently (every
changed pixel 1: a confident full mask said as a result), NaN thresholded to an empty one. Now each broken output
is that pair's `annotator_failed` error naming the annotator and the pair, and a batch run goes on."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sigma.errors import SigmaError
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl
from sigma.types import Pair


@pytest.fixture
def plugin_annotators(monkeypatch):
    """The test plugin's annotators in this process' registry for one test only."""
    import service_plugins

    from sigma.registry import ANNOTATORS

    monkeypatch.setattr(ANNOTATORS, "_entries", dict(ANNOTATORS._entries))
    importlib.reload(service_plugins)


def pair(pair_id: str) -> Pair:
    rng = np.random.default_rng(3)
    original = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    edited = original.copy()
    edited[4:12, 6:20] = 255 - edited[4:12, 6:20]
    return Pair(original, edited, pair_id=pair_id)


@pytest.mark.parametrize(("defect", "said"), [
    ("scale-255-uint8", "a uint8 probability map; it must be floating-point in [0, 1] (a 0-255 map: divide by 255)"),
    ("scale-255-float", "112 values outside [0, 1] (min 0, max 221.667) (a 0-255 map? divide by 255)"),
    ("negative", "values outside [0, 1] (min -0.5"),
    ("nan", "non-finite values (NaN or inf)"),
    ("inf", "non-finite values (NaN or inf)"),
    ("wrong-size", "a (23, 32) map for a (24, 32) pair"),
    ("channels", "a (24, 32, 1) map for a (24, 32) pair"),
    ("int-0-1", "a int64 probability map"),
    ("list", "the probability map is a list, not a numpy array"),
    ("extra-none", "the extra fields must be a dict, not a NoneType"),
    ("not-a-tuple", "a ndarray instead of a Prediction or a (prob, extra) tuple"),
    ("too-few", "1 results for 2 pairs"),
])
def test_a_broken_output_is_an_error_naming_the_annotator_and_the_pair(plugin_annotators, defect, said):
    from sigma.registry import create_annotator

    annotator = create_annotator("bad-output", defect=defect)
    good = annotator.predict([pair("good")])[0]
    assert good.area == 8 * 14
    with pytest.raises(SigmaError) as err:
        annotator.predict([pair("good"), pair("bad")])
    assert err.value.code == "annotator_failed", err.value
    assert "annotator 'bad-output' broke the output contract" in err.value.message, err.value.message
    assert said in err.value.message, err.value.message
    if defect != "too-few":
        assert "pair bad:" in err.value.message, err.value.message


def test_rounding_slop_just_outside_0_1_is_clipped_not_refused(plugin_annotators):
    """A half-precision or exported network may stray by an ulp; within PROB_SLACK it is clipped as before."""
    from sigma.annotators.base import PROB_SLACK
    from sigma.registry import create_annotator

    assert PROB_SLACK > 1.0004 - 1.0
    ann = create_annotator("bad-output", defect="slop").predict([pair("bad")])[0]
    assert float(ann.prob.max()) == 1.0 and ann.area == 8 * 14


def test_a_bool_map_is_a_valid_hard_probability_map():
    from sigma.annotators.pixel_diff import PixelDiff

    class Hard(PixelDiff):
        name = "hard"

        def _predict_batch(self, pairs):
            return [(prob > 0.5, extra) for prob, extra in super()._predict_batch(pairs)]

    hard = (PixelDiff().predict([pair("p")])[0].prob > 0.5).sum()
    ann = Hard().predict([pair("p")])[0]
    assert ann.prob.dtype == np.float32 and set(np.unique(ann.prob).tolist()) == {0.0, 1.0}
    assert ann.area == hard > 0


def test_a_batch_run_records_the_broken_pair_and_goes_on(plugin_annotators, tmp_path):
    """`sigma batch run --plugin`: the 0-255 pair is an `annotator_failed` row naming the annotator, not a full
    mask; its neighbours in the same batch are annotated."""
    from sigma.cli import main

    records = list(synthetic_pairs(4, size=32))
    records[1]["id"] = "p-bad"
    write_pairs_jsonl(tmp_path / "set", records)
    out = tmp_path / "run"
    assert main(["batch", "run", str(tmp_path / "set"), "--out", str(out), "--annotator", "bad-output",
                 "--set", "options.defect=scale-255-float", "--batch-size", "4", "--set", "workers=0",
                 "--plugin", "service_plugins", "--no-progress"]) == 0
    rows = {r["pair_id"]: r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    bad = rows["set/p-bad"]
    assert bad["status"] == "error" and bad["error_code"] == "annotator_failed", bad
    assert "'bad-output'" in bad["error"] and "pair set/p-bad" in bad["error"] and "divide by 255" in bad["error"]
    assert sorted(pid for pid, r in rows.items() if r["status"] == "ok") == sorted(
        f"set/{r['id']}" for r in records if r["id"] != "p-bad")


def test_a_model_that_calls_sys_exit_fails_its_pair_not_the_run(plugin_annotators, tmp_path, capsys):
    """`sigma batch run` with a plugin that gives up with sys.exit(3) on one pair ended the whole run with status 3
    and no word; the pair is now `annotator_failed` saying so, the rest of the run goes on."""
    from sigma.cli import main

    records = list(synthetic_pairs(3, size=32))
    records[1]["instruction"] = "remove the exit sign"
    write_pairs_jsonl(tmp_path / "set", records)
    out = tmp_path / "run"
    assert main(["batch", "run", str(tmp_path / "set"), "--out", str(out), "--annotator", "exit-diff",
                 "--batch-size", "4", "--set", "workers=0", "--plugin", "service_plugins", "--no-progress"]) == 0
    rows = {r["pair_id"]: r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    bad = rows[f"set/{records[1]['id']}"]
    assert bad["error_code"] == "annotator_failed" and "sys.exit(3)" in bad["error"], bad
    assert sum(r["status"] == "ok" for r in rows.values()) == 2


@pytest.mark.parametrize(("defect", "procs"), [("too-few", 1), ("too-few", 2), ("predict-too-few", 1),
                                               ("predict-too-few", 2), ("predict-too-many", 1)])
def test_an_annotator_giving_the_wrong_number_of_results_never_loses_a_row(plugin_annotators, tmp_path, capsys,
                                                                           defect, procs):
    """`sigma batch run` (in process and with --procs) when an annotator gives fewer or more results than pairs.
    From `_predict_batch` (too-few) the base class already says so and the batch is retried pair by pair: that pair
    is an `annotator_failed` row. From a predict() of the plugin's own, the results were zipped with the pairs: the
    pair short lost its row without a word (the shard done, exit 0) and every mask after the missing one sat beside
    the wrong pair. Now the shard is failed, its reason naming the annotator and the counts, and the run goes on."""
    from sigma.cli import main

    records = list(synthetic_pairs(8, size=32))
    records[1]["id"] = "p-bad"                      # the first shard's batch only
    write_pairs_jsonl(tmp_path / "set", records)
    out = tmp_path / "run"
    rc = main(["batch", "run", str(tmp_path / "set"), "--out", str(out), "--annotator", "bad-output", "--set",
               f"options.defect={defect}", "--batch-size", "4", "--shard-size", "4", "--workers", "0", "--procs",
               str(procs), "--plugin", "service_plugins", "--no-progress", "--json"])
    summary = json.loads(capsys.readouterr().out)
    rows = {r["pair_id"]: r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    first, second = "set__pairs.r0000000-0000003", "set__pairs.r0000004-0000007"
    assert sorted(r["pair_id"] for r in rows.values() if r["shard"] == second) == [
        f"set/{r['id']}" for r in records[4:]]
    assert all(r["status"] == "ok" for r in rows.values() if r["shard"] == second)
    status = json.loads((out / "status" / f"{first}.json").read_text())
    if defect == "too-few":
        assert rc == 0 and status["status"] == "done" and len(rows) == 8
        bad = rows["set/p-bad"]
        assert bad["error_code"] == "annotator_failed" and "0 results for 1 pairs" in bad["error"], bad
        assert sum(r["status"] == "ok" for r in rows.values()) == 7
        return
    counts = "3 results for 4 pairs" if defect == "predict-too-few" else "5 results for 4 pairs"
    assert rc == 1 and status["status"] == "failed", status
    assert "annotator 'bad-output' broke the output contract" in status["error"] and counts in status["error"]
    assert not any(r["shard"] == first for r in rows.values()) and len(rows) == 4
    assert [f["shard"] for f in summary["failed"]] == [first] and counts in summary["failed"][0]["error"]
    assert (summary["status"]["done"], summary["status"]["failed"], summary["status"]["pending"]) == (1, 1, 0)


def test_extras_no_json_holds_as_they_are_cost_at_most_their_pair(plugin_annotators, tmp_path, capsys):
    """`sigma batch run` with a plugin whose extras hold a tuple key, int keys beside str keys and an object whose
    __str__ raises: the shard writer's json.dumps raised, the writer thread stopped, and the whole run ended with a
    RuntimeError traceback (or hung, its queue full). Now those keys are written as text and the object by its type;
    a dict that contains itself is that pair's `annotator_failed` error, counted in the summary; the run goes on."""
    from sigma.cli import main

    records = list(synthetic_pairs(4, size=32))
    records[1]["instruction"], records[2]["instruction"] = "an odd one", "a loop"
    write_pairs_jsonl(tmp_path / "set", records)
    out = tmp_path / "run"
    assert main(["batch", "run", str(tmp_path / "set"), "--out", str(out), "--annotator", "odd-keys", "--batch-size",
                 "4", "--set", "workers=0", "--plugin", "service_plugins", "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["pairs"], summary["errors"], summary["status"]["errors"]) == (4, 1, 1), summary
    assert "Traceback" not in captured.err
    rows = {r["pair_id"]: r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    odd, loop = rows[f"set/{records[1]['id']}"], rows[f"set/{records[2]['id']}"]
    assert odd["status"] == "ok", odd
    extra = json.loads(odd["extra"])
    assert (extra["by_box"], extra["mixed"], extra["shy"]) == ({"(1, 2)": 0.5}, {"1": "a", "b": 2}, "<Shy>"), extra
    assert loop["status"] == "error" and loop["error_code"] == "annotator_failed", loop
    assert "annotator 'odd-keys'" in loop["error"] and "a value that contains itself (at loop.self)" in loop["error"]
    assert [rows[f"set/{r['id']}"]["status"] for r in records] == ["ok", "ok", "error", "ok"]


_PLAIN = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=4), inner, max_size=4),
                            st.dictionaries(st.integers(-20, 20), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_PLAIN)
def test_a_manifest_column_of_plain_json_is_byte_for_byte_what_it_was(value):
    """Guard for the one extras conversion (`sigma.text.json_text`, shared with service results): a column whose
    value JSON already holds (int keys included, sorted as numbers: 9 before 10) is written exactly as the
    `json.dumps(value, sort_keys=True)` that wrote rows before, so existing runs and their digests do not change."""
    from sigma.batch.rows import _json

    for column in ({"v": value}, [value]):          # a column holds a dict (extras) or what a plugin gave
        assert _json(column) == json.dumps(column, sort_keys=True)


def test_extras_nesting_is_bounded_by_a_stated_depth_not_by_pythons_stack():
    """`json_ready` recursed once per level: a list nested 100 000 deep ended in RecursionError (and a limit that
    moves with sys.getrecursionlimit()). Now MAX_JSON_DEPTH levels are written and one more is a NotWritable naming
    the place, far inside the interpreter's limit."""
    import sys

    from sigma.text import MAX_JSON_DEPTH, NotWritable, json_ready, json_text

    def nested(levels: int) -> list:
        value: list = []
        for _ in range(levels - 1):
            value = [value]
        return value

    assert sys.getrecursionlimit() > MAX_JSON_DEPTH * 4
    assert json_text({"x": nested(MAX_JSON_DEPTH - 1)}) == '{"x": ' + "[" * (MAX_JSON_DEPTH - 1) + \
        "]" * (MAX_JSON_DEPTH - 1) + "}"
    said = rf"nested deeper than {MAX_JSON_DEPTH} levels \(at x(\[0\]){{{MAX_JSON_DEPTH - 1}}}; max_json_depth\)"
    with pytest.raises(NotWritable, match=said):
        json_ready({"x": nested(MAX_JSON_DEPTH)})
    with pytest.raises(NotWritable, match=r"nested deeper than 3 levels \(at \[0\]\[0\]\[0\]; max_json_depth\)"):
        json_ready(nested(10), max_depth=3)
    looped: list = [1]
    looped.append({"back": looped})
    with pytest.raises(NotWritable, match=r"contains itself \(at \[1\]\.back\)"):
        json_ready(looped)
    shared = [1, 2]
    assert json_ready({"a": shared, "b": shared}) == {"a": [1, 2], "b": [1, 2]}     # shared is not a loop


def test_the_words_for_extras_no_json_holds_are_built_in_one_place():
    """Service results, batch rows and `sigma annotate` each built 'annotator X: its output for this pair cannot be
    written as JSON: ...' themselves (three copies of the words the tests compare across front ends, free to drift).
    Now `sigma.text.unwritable_output` builds them, and it is the only place in the code that spells them."""
    from pathlib import Path

    from sigma.text import NotWritable, unwritable_output

    root = Path(__file__).resolve().parents[1]
    phrase = "its output for this pair cannot be written as JSON"
    spelled = sorted(str(f.relative_to(root)) for folder in ("sigma", "api", "workers")
                     for f in (root / folder).rglob("*.py") if phrase in f.read_text(encoding="utf-8"))
    assert spelled == ["sigma/text.py"], spelled
    assert unwritable_output("odd-keys", NotWritable("a value that contains itself (at loop.self)")) == (
        "annotator 'odd-keys': its output for this pair cannot be written as JSON: a value that contains itself "
        "(at loop.self)")


def test_sigma_annotate_writes_extras_as_batch_rows_do_and_fails_only_the_pair_it_cannot_write(
        plugin_annotators, tmp_path, capsys, monkeypatch):
    """`sigma annotate` wrote result.json with its own `default=`: extras holding a set, bytes, a tuple key or an
    object ended the command with a TypeError traceback, a dict that contains itself (or a list nested 100 000 deep)
    with a RecursionError, each after mask.png / prob.png / overlay.png were written and before result.json, and the
    pairs after it on stdin were never annotated. Now result.json goes through `sigma.text.json_ready`, as batch rows
    and service results do: the same extras read the same JSON there as in the batch row, and what cannot be written
    is that pair's `annotator_failed` error in the batch row's words, its folder left as it was."""
    import io
    import sys

    from sigma.cli import main

    records = list(synthetic_pairs(4, size=32))
    for record, instruction in zip(records, ["remove it", "an odd one", "a loop", "a deep one"], strict=True):
        record["instruction"] = instruction
    write_pairs_jsonl(tmp_path / "set", records)
    assert main(["batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--annotator", "odd-keys",
                 "--set", "workers=0", "--plugin", "service_plugins", "--no-progress", "--json"]) == 0
    capsys.readouterr()
    rows = {r["pair_id"]: r for f in sorted((tmp_path / "run" / "shards").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()}
    good, odd, loop, deep = (rows[f"set/{r['id']}"] for r in records)
    assert (good["status"], odd["status"], loop["status"], deep["status"]) == ("ok", "ok", "error", "error"), rows

    out = tmp_path / "out"
    (out / "loop").mkdir(parents=True)
    (out / "loop" / "result.json").write_text('{"earlier": true}')          # an earlier result, left as it was
    items = [{"id": name, "original": str(tmp_path / "set" / f"{r['id']}_original.png"),
              "edited": str(tmp_path / "set" / f"{r['id']}_edited.png"), "instruction": r["instruction"]}
             for name, r in zip(["good", "odd", "loop", "deep"], records, strict=True)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(items)))
    code = main(["annotate", "-", "--annotator", "odd-keys", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "2 of 4 pairs annotated, 2 failed" in err, err
    # the batch row's own words for the same pair, after the pair id
    assert f"sigma: error [annotator_failed]: loop: {loop['error']}\n" in err, (loop["error"], err)
    assert f"sigma: error [annotator_failed]: deep: {deep['error']}\n" in err, (deep["error"], err)
    assert "a value that contains itself (at loop.self)" in loop["error"], loop
    assert sorted(p.name for p in (out / "loop").iterdir()) == ["result.json"]
    assert (out / "loop" / "result.json").read_text() == '{"earlier": true}'
    assert not (out / "deep").exists()

    result = json.loads((out / "odd" / "result.json").read_text())
    batch = json.loads(odd["extra"])
    assert batch and {k: result[k] for k in batch} == batch, (result, batch)
    assert (result["ints"], result["blob"], result["tags"], result["shy"], result["by_box"], result["map"]) == (
        [1, 9, 10], {"bytes": 3}, ["a", "b"], "<Shy>", {"(1, 2)": 0.5}, {"array_shape": [10, 10], "dtype": "float32"})
    assert json.loads((out / "good" / "result.json").read_text())["files"]["mask"] == "mask.png"


def test_extras_keys_that_become_one_json_key_fail_their_pair_not_merge(plugin_annotators, tmp_path, capsys,
                                                                        monkeypatch):
    """Extras `{1: "a", "1": "b"}` (a plugin's dict, a parquet map column) were written as `{"1": "b"}`: both keys are
    the JSON key "1" and the later one replaced the other, silent data loss in batch rows, result.json and service
    results alike. Now it is the pair's `annotator_failed` error naming both keys and the place, in every front end's
    words (`sigma batch run`: the pair's row, the run goes on; `sigma annotate`: that pair's error, exit 2, nothing
    written for it)."""
    import io
    import sys

    from sigma.cli import main
    from sigma.text import NotWritable, json_ready, json_text

    with pytest.raises(NotWritable, match=r"""keys None and 'null' are both the JSON key "null" \(at a\.b\)"""):
        json_ready({"a": {"b": {None: 1, "null": 2}}})
    with pytest.raises(NotWritable, match=r"""keys 1 and '1' are both the JSON key "1" \(at <value>\)"""):
        json_text({1: "a", "1": "b"})
    assert json_text({1: "a", "2": "b", 10: "c"}) == '{"1": "a", "10": "c", "2": "b"}'      # distinct: written

    records = list(synthetic_pairs(2, size=32))
    records[0]["instruction"], records[1]["instruction"] = "remove it", "a clash"
    write_pairs_jsonl(tmp_path / "set", records)
    assert main(["batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--annotator", "odd-keys",
                 "--set", "workers=0", "--plugin", "service_plugins", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["errors"] == 1, summary
    rows = {r["pair_id"]: r for f in sorted((tmp_path / "run" / "shards").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()}
    good, clash = (rows[f"set/{r['id']}"] for r in records)
    assert good["status"] == "ok", good
    assert (clash["status"], clash["error_code"]) == ("error", "annotator_failed"), clash
    assert clash["error"] == ("annotator 'odd-keys': its output for this pair cannot be written as JSON: keys 1 and "
                              "'1' are both the JSON key \"1\" (at clash)"), clash

    out = tmp_path / "out"
    items = [{"id": name, "original": str(tmp_path / "set" / f"{r['id']}_original.png"),
              "edited": str(tmp_path / "set" / f"{r['id']}_edited.png"), "instruction": r["instruction"]}
             for name, r in zip(["good", "clash"], records, strict=True)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(items)))
    code = main(["annotate", "-", "--annotator", "odd-keys", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"sigma: error [annotator_failed]: clash: {clash['error']}\n" in err, err
    assert (out / "good" / "result.json").is_file() and not (out / "clash").exists()


def test_the_extras_nesting_limit_is_a_setting_every_front_end_uses(plugin_annotators, tmp_path, capsys,
                                                                     monkeypatch):
    """The extras depth limit was a constant (MAX_JSON_DEPTH, 32) no config could change. It is now
    io.limits.max_json_depth (service: limits.max_json_depth), 8 to 200: extras 12 levels deep are written under the
    default and are the pair's `annotator_failed` with `--set io.limits.max_json_depth=8`, in `sigma batch run` and
    `sigma annotate` alike; a value out of bounds is an invalid_config, and the ceiling is inside Python's stack."""
    import io
    import sys

    from sigma.cli import main

    records = list(synthetic_pairs(1, size=32))
    records[0]["instruction"] = "a nested one"
    write_pairs_jsonl(tmp_path / "set", records)
    pair_id = f"set/{records[0]['id']}"

    def batch(run: str, *setting: str) -> dict:
        assert main(["batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / run), "--annotator", "odd-keys",
                     "--set", "workers=0", *setting, "--plugin", "service_plugins", "--no-progress", "--json"]) == 0
        capsys.readouterr()
        return {r["pair_id"]: r for f in (tmp_path / run / "shards").glob("*.parquet")
                for r in pq.read_table(f).to_pylist()}[pair_id]

    default = batch("run-default")
    assert default["status"] == "ok" and "nested_12" in json.loads(default["extra"]), default
    low = batch("run-low", "--set", "io.limits.max_json_depth=8")
    assert (low["status"], low["error_code"]) == ("error", "annotator_failed"), low
    assert "a value nested deeper than 8 levels (at nested_12.n.n.n.n.n.n.n; max_json_depth)" in low["error"], low

    image = [str(tmp_path / "set" / f"{records[0]['id']}_{which}.png") for which in ("original", "edited")]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["annotate", *image, "-i", "a nested one", "--annotator", "odd-keys", "-o",
                 str(tmp_path / "out-default")]) == 0
    assert "nested_12" in json.loads((tmp_path / "out-default" / "result.json").read_text())
    capsys.readouterr()
    code = main(["annotate", *image, "-i", "a nested one", "--annotator", "odd-keys", "-o", str(tmp_path / "out-low"),
                 "--set", "io.limits.max_json_depth=8"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"sigma: error [annotator_failed]: {low['error']}\n", err
    assert not (tmp_path / "out-low").exists()

    from sigma.config.schema import MAX_JSON_DEPTH_CEILING, MIN_JSON_DEPTH
    from sigma.io.outputs import json_record
    from sigma.text import json_text

    for bad in (MIN_JSON_DEPTH - 1, MAX_JSON_DEPTH_CEILING + 1):
        assert main(["annotate", *image, "--annotator", "odd-keys", "-o", str(tmp_path / "out-bad"),
                     "--set", f"io.limits.max_json_depth={bad}"]) == 2
        said = capsys.readouterr().err
        assert "sigma: error [invalid_config]" in said and "io.limits.max_json_depth" in said, said
    deepest: dict = {"leaf": 1}
    for _ in range(MAX_JSON_DEPTH_CEILING - 2):
        deepest = {"n": deepest}
    json_text({"x": deepest}, max_depth=MAX_JSON_DEPTH_CEILING)         # no RecursionError at the ceiling
    json_record({"x": deepest}, MAX_JSON_DEPTH_CEILING)
