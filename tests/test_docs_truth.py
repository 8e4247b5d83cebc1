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
