"""Instructions with several edits (issue 11, item 22): the parser returns every edit, grounding
grounds them all into one prior, the network gets one edit-type token; and the issue's single-edit
misses (sky -> sunset, "should be wearing", written text)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sigma.annotators.guidance import Guide, edit_type_token
from sigma.cli import main
from sigma.grounding import (
    FLAG_GLOBAL,
    FLAG_NOTHING_FOUND,
    FLAG_PARTLY_FOUND,
    build_grounder,
    compose_prior,
)
from sigma.grounding.detector import Detector
from sigma.grounding.segmenter import BoxSegmenter
from sigma.grounding.types import Detection
from sigma.parse.evaluate import score
from sigma.parse.jsonrepair import repair_all
from sigma.parse.llm import answer_finished, parse_answer
from sigma.parse.rules import parse_rules
from sigma.parse.types import Edit, ParsedInstruction
from sigma.types import Pair

DATA = Path(__file__).parent / "data"
# Blind sets (written before the code they test ran; see docs/parsing-grounding.md for the figures)
BLIND = {"parse_multi_edit.jsonl": 1.0, "parse_multi_edit_2.jsonl": 0.95}


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def _edits(p: ParsedInstruction) -> list[tuple]:
    return [(e.edit_type, e.source, e.target) for e in p.edits]


@pytest.mark.parametrize("name,floor", BLIND.items())
def test_blind_sets_meet_the_floor(name, floor):
    records = _records(name)
    assert len(records) >= 45 and sum(len(r["edits"]) > 1 for r in records) >= 25
    result = score([(r, parse_rules(r["instruction"])) for r in records])
    assert result["n_with_edits"] == len(records)
    assert result["edits_match"] >= floor, result["errors"]
    assert result["type_accuracy"] >= 0.97 and result["concept_match"] >= 0.95, result["errors"]


def test_the_issue_example_gives_both_edits_and_keeps_the_first_on_top():
    p = parse_rules("make the sky purple and add a moon")
    assert _edits(p) == [("attribute", "sky", "sky"), ("add", None, "moon")]
    assert (p.edit_type, p.source, p.target) == ("attribute", "sky", "sky")   # what older readers see
    assert p.edit_types == ["attribute", "add"]
    assert p.all_concepts() == [(0, "original", "sky"), (0, "edited", "sky"), (1, "edited", "moon")]
    out = p.to_json_dict()
    assert out["edit_type"] == "attribute" and [e["edit_type"] for e in out["edits"]] == ["attribute", "add"]


@pytest.mark.parametrize("text,edits", [
    ("change the sky to a sunset", [("replace", "sky", "sunset")]),
    ("let the sky be sunset", [("replace", "sky", "sunset")]),
    ("make the sky stormy", [("attribute", "sky", "sky")]),                  # an adjective stays an attribute
    ("the dog should be wearing sunglasses", [("add", None, "sunglasses")]),
    ("let the man hold an umbrella", [("add", None, "umbrella")]),
    ("replace the text OPEN with CLOSED", [("replace", 'text "OPEN"', 'text "CLOSED"')]),
    ("Change the sign's text from 'SALE' to 'SOLD OUT'", [("replace", 'text "SALE"', 'text "SOLD OUT"')]),
    ('write "Happy Birthday" on the cake', [("add", None, 'text "Happy Birthday"')]),
    ("change the text colour to red", [("attribute", "text", "text")]),       # no literal: an attribute
    ("Replace the TV with a radio", [("replace", "tv", "radio")]),             # ALL-CAPS alone is no text
])
def test_the_issue_single_edit_misses(text, edits):
    assert _edits(parse_rules(text)) == edits


@pytest.mark.parametrize("text,edits", [
    ("convert the image to black and white", [("global", None, None)]),
    ("Add salt and pepper shakers to the table", [("add", None, "salt and pepper shakers")]),
    ("remove the cat and the dog", [("remove", "cat and dog", None)]),
    ("add a red and blue kite", [("add", None, "red and blue kite")]),
    ("Add a cat, a dog and a rabbit to the garden", [("add", None, "cat, dog and rabbit")]),
    ("Remove the bench, leaving only the grass and the path", [("remove", "bench", None)]),
    ("Replace the tree with a tower and keep everything else unchanged", [("replace", "tree", "tower")]),
    ("Add a cat and make it look natural", [("add", None, "cat")]),
    ("Add a dog and make it brown", [("add", None, "dog")]),                  # 'it' is the new dog
    # how the thing just edited should look, told as a clause about it: no second edit (it was a global one)
    ("add a hat and make it look like it was always there", [("add", None, "hat")]),
    ("Add a lamp, then make it seem as if it had always been part of the room", [("add", None, "lamp")]),
    ("replace the dog with a cat and make it look as though it belongs", [("replace", "dog", "cat")]),
    ("add a hat and make it look like it's always been there", [("add", None, "hat")]),
    ("add a vase. Make them look like they belong together", [("add", None, "vase")]),
    ("Add a deer standing near the riverbank, slightly to the right, in the foreground of the image.",
     [("add", None, "deer")]),
])
def test_no_false_splits(text, edits):
    assert _edits(parse_rules(text)) == edits


@pytest.mark.parametrize("text,edits", [
    ("make it look like it was taken at night", [("global", None, None)]),     # first: the whole picture's look
    ("add a hat and remove the dog", [("add", None, "hat"), ("remove", "dog", None)]),
])
def test_a_look_as_if_clause_is_a_constraint_only_after_an_edit(text, edits):
    assert _edits(parse_rules(text)) == edits


@pytest.mark.parametrize("text,edits", [
    ("remove it and remove them", [("remove", None, None)]),
    ("remove it. Remove them.", [("remove", None, None)]),
    ("remove it and add a cat", [("remove", None, None), ("add", None, "cat")]),
])
def test_edits_left_without_a_concept_by_a_pronoun_are_not_repeated(text, edits):
    """A pronoun alone names no concept (0e37d88), so 'remove it' and 'remove them' are the same edit: it was listed
    twice, once per pronoun, as (remove, None, None) each."""
    assert _edits(parse_rules(text)) == edits


def test_dev_set_splits_only_its_one_compound_instruction():
    shared = Path(os.environ.get("SIGMA_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
    dev = shared / "data" / "instructions" / "dev.jsonl"
    if not dev.is_file():
        pytest.skip(f"no dev.jsonl at {dev} (set SIGMA_SHARED)")
    split = [r["instruction"] for r in map(json.loads, dev.read_text().splitlines())
             if len(parse_rules(r["instruction"]).edits) > 1]
    assert split == [("Change the lawn in the image to a sandy beach environment and replace the tree with a "
                      "beach umbrella.")]


def test_parsed_instruction_keeps_its_old_shape():
    one = ParsedInstruction(instruction="x", edit_type="remove", source="boat", rule="r")
    assert one.edits == (Edit(edit_type="remove", source="boat", rule="r"),)
    many = ParsedInstruction(edits=[{"edit_type": "add", "target": "moon"}, Edit(edit_type="global")])
    assert (many.edit_type, many.target, many.edit_types) == ("add", "moon", ["add", "global"])
    assert ParsedInstruction.model_validate(many.to_json_dict()) == many
    assert ParsedInstruction(instruction=None).edits == () and parse_rules(None).edits == ()
    with pytest.raises(ValueError, match="not the first"):
        ParsedInstruction(edit_type="add", target="x", edits=[Edit(edit_type="remove", source="y")])


def test_llm_answers_may_hold_several_edits():
    p = parse_answer('{"edit_type": "attribute", "source": "the sky", "target": "purple"}\n'
                     '{"edit_type": "add", "source": null, "target": "a moon"}', "make the sky purple and add a moon")
    assert _edits(p) == [("attribute", "sky", "sky"), ("add", None, "moon")] and not p.fallback
    wrapped = parse_answer('{"edits": [{"edit_type": "remove", "source": "car"}, {"edit_type": "global"}]}', "x")
    assert _edits(wrapped) == [("remove", "car", None), ("global", None, None)]
    half = parse_answer('{"edit_type": "remove", "source": "car"} {"edit_type": "paint"}', "remove the car")
    assert _edits(half) == [("remove", "car", None)] and "1 invalid" in half.rule and not half.fallback
    bad_first = parse_answer('{"edit_type": "paint"} {"edit_type": "remove", "source": "car"}', "remove the car")
    assert bad_first.fallback and _edits(bad_first) == [("remove", "car", None)]
    assert len(repair_all("{" * 50)) <= 8                               # a looping model cannot blow up


@pytest.mark.parametrize("text,done", [
    ('{"edit_type": "add', False),
    ('{"edit_type": "add", "target": "}"}', False),       # a second object may still follow
    ('{"edit_type": "add"}\n{"edit_type": "re', False),
    ('{"edit_type": "add"} Hope this helps', True),
    ('{"a": 1}' * 4, True),
])
def test_answer_finished(text, done):
    assert answer_finished(text) is done


# ---- grounding several edits: a deterministic detector through the real pipeline ------------------
class TableDetector(Detector):
    """Finds each concept at a fixed box, in the image side given by `where`; records its calls."""

    def __init__(self, boxes: dict[str, tuple[float, float, float, float]]):
        self.boxes = boxes
        self.calls: list[list[str]] = []

    def detect(self, images, concepts):
        self.calls.append(list(concepts))
        return [[Detection(self.boxes[c], 0.8, c)] if c in self.boxes else [] for c in concepts]


class CountingBoxes(BoxSegmenter):
    def __init__(self):
        self.images_seen = 0

    def segment(self, images, boxes):
        self.images_seen += len(images)
        return super().segment(images, boxes)


def _pair(seed=0, h=40, w=60):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _grounder(boxes):
    det, seg = TableDetector(boxes), CountingBoxes()
    return build_grounder("gdino-sam2", detector_obj=det, segmenter_obj=seg), det, seg


def test_grounding_combines_the_regions_of_every_edit():
    g, det, seg = _grounder({"sky": (0, 0, 60, 10), "moon": (40, 2, 50, 8), "car": (5, 20, 25, 35)})
    o, e = _pair()
    texts = ["make the sky purple and add a moon", "remove the car"]
    multi, single = g.ground_batch([o, o], [e, e], [parse_rules(t) for t in texts])
    assert len(det.calls) == 1                                  # every request of the batch in one call
    assert sorted(det.calls[0]) == ["car", "moon", "sky", "sky"]
    assert seg.images_seen == 3            # multi: original once, edited once (sky + moon together); single: 1
    assert {(r.concept, r.image, r.edits) for r in multi.regions} == {
        ("sky", "original", (0,)), ("sky", "edited", (0,)), ("moon", "edited", (1,))}
    assert multi.flag is None and multi.informative and multi.edits_found() == [2, 1]
    np.testing.assert_allclose(multi.prior, compose_prior(multi.regions, (40, 60)))
    assert multi.prior[5, 45] > 0.9 and multi.prior[5, 5] > 0.5 and multi.prior[30, 5] == 0.0
    assert single.flag is None and single.prior[30, 10] == pytest.approx(0.8)
    extra = multi.to_extra()
    assert extra["grounding"]["regions_per_edit"] == [2, 1] and len(extra["parse"]["edits"]) == 2
    assert {tuple(r["edits"]) for r in extra["grounding"]["regions"]} == {(0,), (1,)}


def test_an_edit_not_found_leaves_the_prior_uninformative_where_it_may_be():
    g, _, _ = _grounder({"sky": (0, 0, 60, 10)})                # the moon is never found
    o, e = _pair()
    res = g.ground(o, e, parse_rules("make the sky purple and add a moon"))
    assert res.flag == FLAG_PARTLY_FOUND and not res.informative and res.edits_found() == [2, 0]
    assert res.prior.min() == pytest.approx(0.5) and res.prior[5, 5] > 0.9     # floor 0.5, the sky above it
    assert (res.prior > 0.5).sum() == 10 * 60                  # only the found region is above the floor
    nothing = _grounder({})[0].ground(o, e, parse_rules("make the sky purple and add a moon"))
    assert nothing.flag == FLAG_NOTHING_FOUND and np.all(nothing.prior == 0.5)


def test_a_global_edit_among_several_makes_the_whole_image_the_edit():
    g, det, _ = _grounder({"snowman": (0, 0, 10, 10)})
    o, e = _pair()
    res = g.ground(o, e, parse_rules("make it snowy and add a snowman"))
    assert res.flag == FLAG_GLOBAL and np.all(res.prior == 1.0) and det.calls == []


@pytest.mark.parametrize("types,token", [
    ([], None), (["add"], "add"), (["add", "add"], "add"), (["remove", "global"], "global"),
    (["attribute", "add"], None), (["replace", "remove", "replace"], None),
])
def test_edit_type_token(types, token):
    assert edit_type_token(types) == token


def test_guide_gives_the_network_one_token_and_every_type():
    o, e = _pair()
    texts = ["make the sky purple and add a moon", "add a moon and add some stars", "remove the boat", None]
    out = Guide("rules", "none")([Pair(o, e, t) for t in texts])
    assert [g.edit_type for g in out] == [None, "add", "remove", None]
    assert [g.edit_types for g in out] == [["attribute", "add"], ["add", "add"], ["remove"], []]
    assert out[0].extra["parse"]["edit_type"] == "attribute"           # result.json keeps the first edit on top


def test_cli_prints_and_scores_every_edit(tmp_path, capsys):
    assert main(["parse", "make the sky purple and add a moon"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["edit_type"] == "attribute" and [e["target"] for e in out["edits"]] == ["sky", "moon"]
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"instruction": "remove the car and add a bike", "edit_type": "remove", "source": "car",
                             "target": None, "edits": [{"edit_type": "remove", "source": "car", "target": None},
                                                       {"edit_type": "add", "source": None, "target": "bike"}]})
                 + "\n" + json.dumps({"instruction": "add a dog", "edit_type": "add", "source": None,
                                      "target": "dog", "edits": [{"edit_type": "add", "target": "dog"},
                                                                 {"edit_type": "add", "target": "cat"}]}) + "\n")
    assert main(["parse", "--file", str(f)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["edits_match"] == 0.5 and summary["type_accuracy"] == 1.0


def test_an_llm_answer_copied_from_the_worked_example_is_invalid():
    """SmolLM2 answered 'a' * 1000 (and other text it cannot read) with the prompt's worked example: replace
    'dog' with 'white cat', fallback false, so grounding looked for a dog and a white cat nobody named."""
    example = '{"edit_type": "replace", "source": "dog", "target": "white cat"}'
    copied = parse_answer(example, "a" * 1000)
    assert copied.fallback and "worked example" in copied.rule and copied.edits == parse_rules("a" * 1000).edits
    later = parse_answer('{"edit_type": "remove", "source": "car"} ' + example, "remove the car")
    assert _edits(later) == [("remove", "car", None)] and "1 invalid" in later.rule
    # the example's words in the instruction are a real answer
    real = parse_answer(example, "swap the dogs for a white cat")
    assert _edits(real) == [("replace", "dog", "white cat")] and not real.fallback
    assert _edits(parse_answer('{"edit_type": "remove", "source": "car"}', "get rid of the automobile")) == \
        [("remove", "car", None)]           # a concept of its own (not the example's) is the model's word


@pytest.mark.parametrize("answer, edits, completed", [
    # SmolLM2-135M's real answer: one object, the first edit only
    ('{"edit_type": "remove", "source": "dog", "target": null}',
     [("remove", "dog", None), ("attribute", "sky", "sky")], [False, True]),
    # a model that answered the second clause only: text order is kept, its own edit in its place
    ('{"edit_type": "attribute", "source": "sky", "target": "red"}',
     [("remove", "dog", None), ("attribute", "sky", "sky")], [True, False]),
    # a model with its own (other) type for the first edit keeps it; the rest comes from the rules
    ('{"edit_type": "replace", "source": "dog", "target": "puppy"}',
     [("replace", "dog", "puppy"), ("attribute", "sky", "sky")], [False, True]),
    # a model about something the rules did not find: its edit first, then the rules' later clauses
    ('{"edit_type": "add", "source": null, "target": "moon"}',
     [("add", None, "moon"), ("attribute", "sky", "sky")], [False, True]),
    # both edits answered: left alone
    ('{"edit_type": "remove", "source": "dog"}\n{"edit_type": "attribute", "source": "sky", "target": "red"}',
     [("remove", "dog", None), ("attribute", "sky", "sky")], [False, False]),
])
def test_a_model_answer_missing_edits_is_completed_from_the_rules(answer, edits, completed):
    """The llm backend (and qwen-vl) parsed only the first edit of "remove the dog and make the sky red": SmolLM2
    answers one object however many edits are asked, while the rules parser lists both. Both now keep the one
    contract: `edits` holds every edit the instruction asks for, in text order."""
    text = "remove the dog and make the sky red"
    assert _edits(parse_rules(text)) == [("remove", "dog", None), ("attribute", "sky", "sky")]
    p = parse_answer(answer, text)
    assert _edits(p) == edits and not p.fallback and p.backend == "llm"
    assert [e.rule.startswith("rules-completion") for e in p.edits] == completed
    assert ("edit(s) from rules" in p.rule) == any(completed), p.rule
    assert (p.edit_type, p.source, p.target) == edits[0]


def test_an_instruction_yields_at_most_max_edits():
    """'remove a0. remove a1. ...' (1000 characters) listed 90 edits, each a detection per pair in grounding."""
    from sigma.parse.types import MAX_EDITS

    many = parse_rules("".join(f"remove the a{i}. " for i in range(100)))
    assert _edits(many) == [("remove", f"a{i}", None) for i in range(MAX_EDITS)]
    assert many.rule.endswith(f"at most {MAX_EDITS} edits read")
    one_sentence = parse_rules("remove " + ", ".join(f"the b{i}" for i in range(100)))
    assert len(one_sentence.edits) <= MAX_EDITS
    assert parse_rules("remove the dog and add a cat").rule == "remove"      # no note under the cap
    # exactly MAX_EDITS edits: none dropped, so no note (it said "at most 8 edits read" all the same); one more: said
    exact = parse_rules("".join(f"remove the a{i}. " for i in range(MAX_EDITS)))
    assert _edits(exact) == [("remove", f"a{i}", None) for i in range(MAX_EDITS)] and exact.rule == "remove"
    over = parse_rules("".join(f"remove the a{i}. " for i in range(MAX_EDITS + 1)))
    assert len(over.edits) == MAX_EDITS and over.rule == f"remove; at most {MAX_EDITS} edits read"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unit", ["and ", "and then ", "please ", "then ", "remove the a{}. ", "remove the x, "])
def test_a_long_hostile_instruction_parses_in_linear_time(unit):
    """200 KB of connectors ('and and and ...') took minutes (100 KB: 54 s): fillers were stripped by slicing the
    token list again after each one, and the connector run was scanned again from every position; 200 KB of
    distinct edits took 30 s deduplicating an unbounded list. An operator may raise max_instruction_chars."""
    import time

    text = "".join(unit.format(i) for i in range(200_000 // len(unit)))
    start = time.process_time()
    parse = parse_rules(text)
    assert time.process_time() - start < 10, len(text)
    assert parse.edits and parse.instruction == text


@pytest.mark.timeout(30)
@pytest.mark.parametrize("unit", ["and ", ", ", "and the cat ", "\U0001F600"])
def test_a_long_sentence_after_an_edit_verb_parses_in_linear_time(unit):
    """100 KB (the most io.limits.max_instruction_chars allows) of 'and ', ', ' or 'and the cat ' after "replace the
    dog with" took minutes (10 KB of ', ': 2 s; emoji 10 s): each 'and' and comma of a sentence searched for a clause
    end, a gapped object and a noun phrase to the sentence's end. Only the first MAX_SENTENCE_TOKENS tokens of a
    sentence are read now (0.03 s here), and `rule` says so."""
    import time

    text = "replace the dog with a cat " + unit * (100_000 // len(unit))
    start = time.process_time()
    parse = parse_rules(text)
    assert time.process_time() - start < 1.0, unit

    from sigma.parse.rules import MAX_SENTENCE_TOKENS
    assert (parse.edit_type, parse.source) == ("replace", "dog") and parse.instruction == text
    assert f"at most {MAX_SENTENCE_TOKENS} words of a sentence read" in parse.rule
    assert "words of a sentence" not in parse_rules("replace the dog with a cat " + unit * 20).rule



@pytest.mark.parametrize("sep", [" and ", ", ", "，", "、", "。", "。 ", "；", "！", "． "])
@pytest.mark.parametrize("old, new", [("猫", "собака"), ("cat", "dog"), ("ねこ", "いぬ")])
def test_the_second_edit_after_ideographic_punctuation(sep, old, new):
    """"remove the 猫，add a собака" (a comma or full stop typed with a Chinese or Japanese IME) gave the first edit
    only: "，" "；" "！" "．" were not the "," ";" "!" "." they stand for (NFC keeps full-width forms) and "。" "、"
    (which NFKC keeps too) were no punctuation the rules knew, so the clause ran to the text's end. The script of the
    nouns plays no part: "remove the 猫 and add a собака" gave both edits already."""
    p = parse_rules(f"remove the {old}{sep}add a {new}")
    assert [(e.edit_type, e.source, e.target) for e in p.edits] == [("remove", old, None), ("add", None, new)], p


@pytest.mark.timeout(30)
@pytest.mark.parametrize("text", ["a" * 100_000, "remove the red " + "x" * 99_000, "add " + "cat " * 24_000,
                                  "make the " + "red" * 33_000])
def test_a_concept_is_at_most_max_concept_chars(text, capsys):
    """`sigma parse --max-chars 100000` of one 100,000-letter word answered a 100,000-character concept (256 long
    words: the same), for the detector prompt and every result row. A concept is cut to MAX_CONCEPT_CHARS now, at a
    word break that keeps at least half of it or mid-word, and `rule` says so; a real concept is left whole."""
    from sigma.parse.rules import MAX_CONCEPT_CHARS

    assert main(["parse", "--max-chars", "100000", text]) == 0
    out = json.loads(capsys.readouterr().out)
    concepts = [c for e in out["edits"] for c in (e["source"], e["target"]) if c]
    assert concepts and all(0 < len(c) <= MAX_CONCEPT_CHARS for c in concepts), [len(c) for c in concepts]
    assert all(c.split()[0] in text for c in concepts)
    assert out["rule"].endswith(f"concepts cut to {MAX_CONCEPT_CHARS} characters")
    assert "cut" not in parse_rules("remove the red car").rule
