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
