"""The docs name what the code writes: every field of a file or table a command writes is named where the docs
describe that file, so a reader of the docs (or a script written from them) finds every field it will meet."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

import sigma.cli

REPO = Path(__file__).resolve().parents[1]


def doc(name: str) -> str:
    return (REPO / "docs" / name).read_text(encoding="utf-8")


def table_row(text: str, first_cell: str) -> str:
    """The docs table row whose first cell is `first_cell` (one line of markdown)."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, f"no single table row {first_cell!r}: {rows}"
    return rows[0]


def named(field: str, text: str) -> bool:
    """`field` written as code in `text`, alone or as one of a `prefix_a/b/c` group (`gt_tp/fp/fn`)."""
    if f"`{field}`" in text:
        return True
    head, _, tail = field.rpartition("_")
    return any(tail in group.split("/") for group in re.findall(rf"`{re.escape(head)}_([a-z0-9/]+)`", text))


def test_every_manifest_column_is_in_the_batch_docs_table():
    """docs/batch.md's "fixed schema" table left out `weights_sha256` and `sigma_version`, which every shard has."""
    from sigma.batch.rows import SCHEMA_FIELDS

    text = doc("batch.md")
    start = text.index("One parquet manifest per shard")
    table = text[start:text.index("\n\n", text.index("| column | meaning |", start))]
    missing = [name for name, _ in SCHEMA_FIELDS if not named(name, table)]
    assert not missing, f"manifest columns not in docs/batch.md's table: {missing}"


def test_every_hf_export_column_is_in_the_batch_docs():
    """The Hugging Face export's column list in docs/batch.md left out `pair_id`, `source`, `subset` and said
    "sizes, sha256s, ground-truth F1/IoU" for columns a `datasets` user selects by name."""
    from sigma.export.hf import COLUMNS

    text = doc("batch.md")
    start = text.index("- **Hugging Face datasets**")
    section = text[start:text.index("\n- ", start + 1)]
    section += text[text.index("- The Hugging Face export takes `--mask` too"):][:400]
    missing = [name for name, *_ in COLUMNS if not named(name, section)]
    assert not missing, f"HF export columns not named in docs/batch.md: {missing}"


def test_every_result_json_key_is_in_the_foundation_table(tmp_path, capsys):
    """docs/foundation.md's `result.json` row left out ten of its top-level keys (`pair_id`, `size`,
    `working_size`, `weights_sha256`, `sigma_version`, `files`, `confidence`, `components`, `grounding`, and
    `parse` by name), which sigma-lite and pixel-diff write on every pair."""
    rng = np.random.default_rng(0)
    orig = rng.integers(40, 200, size=(48, 64, 3), dtype=np.uint8)
    edited = orig.copy()
    edited[8:24, 16:40] = 250
    Image.fromarray(orig).save(tmp_path / "o.png")
    Image.fromarray(edited).save(tmp_path / "e.png")
    keys: set[str] = set()
    for annotator in ("pixel-diff", "sigma-lite"):
        out = tmp_path / annotator
        code = sigma.cli.main(["annotate", str(tmp_path / "o.png"), str(tmp_path / "e.png"), "-i", "remove the box",
                               "--annotator", annotator, "-o", str(out)])
        assert code == 0, capsys.readouterr().err
        keys |= set(json.loads((out / "result.json").read_text(encoding="utf-8")))
    row = table_row(doc("foundation.md"), "`result.json`")
    missing = sorted(k for k in keys if f"`{k}`" not in row)
    assert not missing, f"result.json keys not in docs/foundation.md's table: {missing}"


def test_every_sigma_model_option_is_in_the_models_docs_table():
    """docs/models.md's table of "Annotator options (`--set options.KEY=VALUE`) of the SIGMA models" left out
    `threshold`, `mask_mode`, `footprint` and `build_graph`, which `--set options.X=...` takes."""
    from sigma.annotators.model_annotator import ModelAnnotatorConfig

    text = doc("models.md")
    start = text.index("| option | default | meaning |")
    table = text[start:text.index("\n\n", start)]
    first_cells = " ".join(line.split("|")[1] for line in table.splitlines()[2:])
    missing = [name for name in ModelAnnotatorConfig.model_fields if f"`{name}`" not in first_cells]
    assert not missing, f"sigma-lite / sigma-b options not in docs/models.md's table: {missing}"


def _coco_docs_fields() -> dict[str, set[str]]:
    """docs/batch.md's COCO field list: for each `  - `OBJECT`: ...` item, the field names it writes as code."""
    text = doc("batch.md")
    start = text.index("- **COCO**")
    section = text[start:text.index("\n\n", start)]
    fields: dict[str, set[str]] = {}
    for item in re.split(r"\n  - ", section)[1:]:
        label, _, rest = item.partition(":")
        fields[label.strip("`")] = set(re.findall(r"`([a-z_]+)`", rest))
    return fields


def test_every_coco_export_field_is_in_the_batch_docs(tmp_path, capsys):
    """docs/batch.md's COCO section named `segmentation`, `area`, `bbox`, `iscrowd`, `score` and the `--mask`
    extras, and not `images[].pair_id/source/instruction/edit_type` or `annotations[].annotator/config_hash/mask`,
    which every export writes. The fields come from a real export (pixel-diff on two real PNG pairs), object by
    object, and must equal the docs' list: a field added to the exporter without docs fails, and so does one the
    docs name that the exporter no longer writes."""
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    corpus = write_pairs_jsonl(tmp_path / "corpus", synthetic_pairs(2))
    run, out = tmp_path / "run", tmp_path / "coco.json"
    assert sigma.cli.main(["batch", "run", str(corpus), "--out", str(run), "--annotator", "pixel-diff",
                           "--workers", "0"]) == 0, capsys.readouterr().err
    assert sigma.cli.main(["export", "coco", str(run), "--out", str(out)]) == 0, capsys.readouterr().err
    coco = json.loads(out.read_text(encoding="utf-8"))
    written = {"info": set(coco["info"])}
    for name in ("images", "annotations", "categories"):
        assert coco[name], f"the export wrote no {name}"
        written[f"{name}[]"] = set().union(*(set(obj) for obj in coco[name]))
    assert set(coco) == {"info", "images", "annotations", "categories"}
    documented = _coco_docs_fields()
    assert set(documented) == set(written), f"COCO objects in docs/batch.md: {sorted(documented)}"
    for name, keys in written.items():
        assert documented[name] == keys, (f"COCO {name} fields: not in docs/batch.md "
                                          f"{sorted(keys - documented[name])}, not written "
                                          f"{sorted(documented[name] - keys)}")


def _code_block(text: str, after: str, lang: str) -> str:
    start = text.index(f"```{lang}\n", text.index(after)) + len(lang) + 4
    return text[start:text.index("```", start)]


def _within(documented, actual) -> bool:
    """`documented` (a docs example's output, `"..."` for any value, keys left out as `...`) says what `actual` is."""
    if documented == "...":
        return True
    if isinstance(documented, dict):
        return isinstance(actual, dict) and all(k in actual and _within(v, actual[k]) for k, v in documented.items())
    if isinstance(documented, list):
        return (isinstance(actual, list) and len(documented) == len(actual)
                and all(_within(d, a) for d, a in zip(documented, actual, strict=True)))
    return documented == actual


def _parse_examples() -> list[tuple[str, str]]:
    """docs/parsing-grounding.md's `sigma parse "TEXT"` examples with the rules backend: (TEXT, its comment)."""
    import shlex

    examples: list[tuple[str, str]] = []
    for line in _code_block(doc("parsing-grounding.md"), "## Parsing", "bash").splitlines():
        if line.startswith("sigma parse "):
            command, _, comment = line.partition("#")
            args = shlex.split(command)[2:]
            examples.append((args[0], comment.strip()) if len(args) == 1 else ("", ""))
        elif line.startswith("#") and examples:
            text, comment = examples[-1]
            examples[-1] = (text, f"{comment} {line[1:].strip()}".strip())
    return [(text, comment) for text, comment in examples if text]


def test_the_parsing_docs_edit_types_are_the_parsers():
    """The edit types docs/parsing-grounding.md names (the parse's `edit_type ∈ {...}` and the labels `--file`
    scores) are the parser's `EDIT_TYPES`, and its limits (`MAX_EDITS`, `MAX_SENTENCE_TOKENS`, `--max-chars`) are the
    code's."""
    from sigma.cli.parse import MAX_CHARS
    from sigma.config.schema import MAX_INSTRUCTION_CHARS
    from sigma.parse.rules import MAX_READ_AS_SAID, MAX_SENTENCE_TOKENS
    from sigma.parse.types import EDIT_TYPES, MAX_EDITS
    from sigma.parse.typos import REAL_NEAR_MISSES

    text = " ".join(doc("parsing-grounding.md").split())
    listed = re.search(r"`edit_type ∈ \{([a-z, ]+)\}`", text)
    assert listed and tuple(listed.group(1).split(", ")) == EDIT_TYPES, listed
    scored = re.search(r"An expected `edit_type` must be one of ((?:`[a-z]+`,? (?:or )?)+)", text)
    assert scored and tuple(re.findall(r"`([a-z]+)`", scored.group(1))) == EDIT_TYPES, scored
    assert f"at most {MAX_EDITS} edits are read (`sigma.parse.types.MAX_EDITS`" in text
    assert f"the parse's `rule` then ends `at most {MAX_EDITS} edits read`" in text
    assert f"at most {MAX_SENTENCE_TOKENS} tokens of one sentence are read" in text
    assert f"ends `at most {MAX_SENTENCE_TOKENS} words of a sentence read`" in text
    assert f"(default {MAX_CHARS}, as `io.limits.max_instruction_chars`; at most {MAX_INSTRUCTION_CHARS})" in text
    assert f"(the first {MAX_READ_AS_SAID} readings, then `and N more`)" in text
    assert f"one of the {len(REAL_NEAR_MISSES)} real English words one slip from a rule word" in text


def test_every_sigma_parse_example_prints_what_the_parsing_docs_say(capsys):
    """Each `sigma parse "TEXT"` example of docs/parsing-grounding.md (rules backend) against the command's real
    output: a documented JSON (with `...` elisions) must match it key by key, and a short comment (`# add, target
    "hat"`, `# global, no concepts`) must name its edit type and concepts."""
    examples = _parse_examples()
    assert len(examples) >= 4, examples
    for text, comment in examples:
        assert sigma.cli.main(["parse", text]) == 0, capsys.readouterr().err
        got = json.loads(capsys.readouterr().out)
        if comment.startswith("{"):
            # a bare `...` (not the value `"..."`) stands for keys left out: dropped with its comma
            elided = re.sub(r'(?<!")\.\.\.(?!")\s*,\s*|\s*,\s*(?<!")\.\.\.(?!")', "", comment)
            assert _within(json.loads(elided), got), (text, comment, got)
            continue
        kind, _, rest = comment.partition(",")
        assert got["edit_type"] == kind.strip(), (text, comment, got)
        for concept in ("source", "target"):
            said = re.search(rf'{concept} "([^"]*)"', rest)
            if said:
                assert got[concept] == said.group(1), (text, comment, got)
        if "no concepts" in rest:
            assert got["source"] is None and got["target"] is None, (text, got)


def test_the_python_parse_examples_return_what_the_parsing_docs_say():
    """The `parse_instruction(...)` lines of docs/parsing-grounding.md's Python example, against the parser."""
    from sigma.parse import parse_instruction

    block = _code_block(doc("parsing-grounding.md"), "From Python:", "python")
    checked = 0
    for text, attribute, said in re.findall(r'^parse_instruction\("([^"]*)"\)(\.edits)?\s+# (.*)$', block, re.M):
        parse = parse_instruction(text)
        if attribute:
            edits = re.findall(r"Edit\((\w+), (\w+), (\w+)\)", said)
            assert [(e.edit_type, str(e.source), str(e.target)) for e in parse.edits] == edits, (text, said)
        else:
            fields = dict(re.findall(r'(\w+)="([^"]*)"', said))
            assert fields and all(getattr(parse, k) == v for k, v in fields.items()), (text, said, parse)
        checked += 1
    assert checked == 2, block
