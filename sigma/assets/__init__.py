"""Files that ship inside the package: the example pair behind `sigma annotate --example`."""
from __future__ import annotations

import json
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


def example_pair() -> dict[str, str]:
    """The bundled example as {"id", "original", "edited", "mask", "instruction"} with absolute paths.

    It is also a one-pair evaluation set (`sigma eval --data <EXAMPLES_DIR>`), read from its pairs.jsonl
    so that the README, the CLI and the tests never disagree about what the example is.
    """
    record = json.loads((EXAMPLES_DIR / "pairs.jsonl").read_text().splitlines()[0])
    return {"id": record["id"], "instruction": record["instruction"],
            **{key: str(EXAMPLES_DIR / record[key]) for key in ("original", "edited", "mask")}}
