"""`sigma annotate`: one pair (or a JSON list on stdin) → mask.png, prob.png, overlay.png, result.json."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from sigma.cli.common import add_config_args, build_annotator, default_annotator_name
from sigma.config.loader import load_config, save_resolved
from sigma.config.schema import IOConfig, Strict
from sigma.errors import InputError, SigmaError

HELP = """Annotate an (original, edited) pair with a manipulation mask.

Writes OUTDIR/mask.png (0/255), prob.png (8-bit probability), overlay.png (edited image with the mask
tinted and outlined) and result.json (COCO RLE, bbox, area, parser output, timings, resolved config).

Several pairs: pass '-' as ORIGINAL and give a JSON list on stdin,
  [{"id": "a", "original": "a_o.png", "edited": "a_e.png", "instruction": "remove the boat"}, ...]
each written to OUTDIR/<id>/. A bad pair is reported and the others are still annotated (exit 2).
"""

EXAMPLES = """examples:
  sigma annotate orig.png edited.png -i "remove the boat" -o out/
  sigma annotate orig.png edited.png --annotator pixel-diff --threshold 0.1
  cat pairs.json | sigma annotate - -o out/
"""


class AnnotateConfig(Strict):
    annotator: str | None = Field(None, description="registry name; None = the embedded default")
    options: dict[str, Any] = Field(default_factory=dict, description="annotator config overrides")
    threshold: float | None = None
    batch_size: int = Field(4, ge=1)
    io: IOConfig = IOConfig()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotate", help="annotate one pair (or a JSON list of pairs on stdin)",
                       description=HELP, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("original", help="original image (PNG/JPEG/WebP/TIFF/BMP), or '-' for a JSON list on stdin")
    p.add_argument("edited", nargs="?", help="edited image")
    p.add_argument("-i", "--instruction", help="the edit instruction, e.g. 'remove the boat' (optional)")
    p.add_argument("-o", "--outdir", default="sigma_out", help="output folder (default: sigma_out)")
    p.add_argument("--annotator", help="registry name (see `sigma models`); default: sigma-lite when embedded")
    p.add_argument("--threshold", type=float, help="mask = prob > T (pixel-diff: PIXAR's τ)")
    add_config_args(p)
    p.set_defaults(run=run)


def _read_stdin_pairs() -> list[dict[str, Any]]:
    try:
        items = json.load(sys.stdin)
    except json.JSONDecodeError as exc:
        raise InputError(f"stdin: not a JSON list of pairs ({exc})", code="bad_json") from exc
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InputError("stdin: expected a JSON list of objects with 'original' and 'edited'", code="bad_json")
    return items


def run(args: argparse.Namespace) -> int:
    from sigma.io.outputs import write_annotation
    from sigma.io.pairs import load_pair

    overrides = list(args.overrides)
    cfg = load_config(AnnotateConfig, args.config, overrides)
    if args.annotator:
        cfg.annotator = args.annotator
    if args.threshold is not None:
        cfg.threshold = args.threshold
    cfg.annotator = cfg.annotator or default_annotator_name()

    if args.original == "-":
        if args.edited:
            raise InputError("with '-' the pairs come from stdin; drop the EDITED argument", code="bad_arguments")
        items = _read_stdin_pairs()
        multi = True
    else:
        if not args.edited:
            raise InputError("missing EDITED image (or pass '-' to read a JSON list of pairs)", code="bad_arguments")
        items = [{"id": Path(args.original).stem, "original": args.original, "edited": args.edited,
                  "instruction": args.instruction}]
        multi = False

    outdir = Path(args.outdir)
    failures: list[str] = []
    loaded = []
    for n, item in enumerate(items):
        pair_id = str(item.get("id") or f"pair_{n:04d}")
        try:
            if "original" not in item or "edited" not in item:
                raise InputError(f"pair {pair_id}: needs 'original' and 'edited'", code="bad_json")
            loaded.append(load_pair(item["original"], item["edited"], item.get("instruction"), cfg.io, pair_id))
        except SigmaError as exc:
            failures.append(f"{pair_id}: [{exc.code}] {exc.message}")

    if loaded:
        annotator = build_annotator(cfg.annotator, cfg.options, cfg.threshold)
        resolved = cfg.model_dump(mode="json")
        resolved["annotator_config"] = annotator.describe()
        for start in range(0, len(loaded), cfg.batch_size):
            batch = loaded[start:start + cfg.batch_size]
            try:
                annotations = annotator.predict(batch)
            except SigmaError as exc:
                failures.extend(f"{p.pair_id}: [{exc.code}] {exc.message}" for p in batch)
                continue
            for pair, ann in zip(batch, annotations, strict=True):
                target = outdir / pair.pair_id if multi else outdir
                write_annotation(ann, pair.edited, target, {"instruction": pair.instruction, "config": resolved})
                save_resolved(resolved, target)
                print(f"{pair.pair_id}: {ann.area_fraction:.2%} of the image marked by {ann.annotator} -> {target}/")

    for line in failures:
        print(f"sigma: error: {line}", file=sys.stderr)
    return 2 if failures else 0
