"""`sigma export imdl-benco|coco RUN_DIR`: a batch run's masks as training data for IML trainers."""
from __future__ import annotations

import argparse
import json

from sigma.cli.common import AREA, CONFIDENCE, number_in, path

SHARD_MB = number_in("the largest parquet file in MB, a number > 0", 0.0, float("inf"), low_open=True)

MASKS = ("chosen", "semantic", "footprint")          # sigma.export.select.MASKS (not imported: CLI start-up)
ORDERS = ("corpus", "confidence", "confidence-asc")  # sigma.export.select.ORDERS

EXAMPLES = """examples:
  sigma export imdl-benco runs/mb --out data/mb_benco --min-confidence 0.97 --max-area 0.5   # docs/masks.md: F1 per cut
  sigma export imdl-benco runs/mb --out data/mb_forensic --mask footprint --sort confidence
  sigma export coco runs/mb --out runs/mb/coco.json --images runs/mb/images
  sigma export hf runs/mb data/mb_hf --min-confidence 0.5   # then: load_dataset("parquet", data_dir="data/mb_hf")
"""


def _filters(p: argparse.ArgumentParser, sort: bool = True) -> None:
    p.add_argument("run_dir", type=path, help="a `sigma batch run` folder (finished shards are exported)")
    p.add_argument("--min-confidence", type=CONFIDENCE, help="keep pairs with confidence >= C (pairs without one "
                   "drop); docs/masks.md gives the expected F1 for each C")
    p.add_argument("--max-confidence", type=CONFIDENCE, help="keep pairs with confidence <= C (e.g. to hand-check)")
    p.add_argument("--min-area", type=AREA, help="keep masks covering at least this fraction of the image")
    p.add_argument("--max-area", type=AREA, help="keep masks covering at most this fraction of the image")
    p.add_argument("--composite", choices=("only", "exclude"), help="keep only the pairs found to be "
                   "composites (most pixels untouched), or only the others")
    p.add_argument("--mask", choices=MASKS, default="chosen", help="which mask to export: chosen (the run's "
                   "mask_mode, default), semantic (what changed in meaning), footprint (every pixel the editor "
                   "re-made; composites only, the others are skipped)")
    if sort:
        p.add_argument("--sort", choices=ORDERS, default="corpus", help="output order: corpus (default), "
                       "confidence (highest first) or confidence-asc")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a batch run as IMDL-BenCo folders, COCO JSON or a Hugging Face dataset",
                       epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    esub = p.add_subparsers(dest="export_format", metavar="FORMAT")
    b = esub.add_parser("imdl-benco", help="Tp/ + Gt/ PNGs and the JSON list [[tp, gt|\"Negative\"], ...]",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _filters(b)
    b.add_argument("--out", required=True, type=path, help="output folder (Tp/, Gt/, imdl_benco.json)")
    b.add_argument("--relative", action="store_true", help="paths in the JSON relative to --out (default absolute)")
    b.add_argument("--json-name", default="imdl_benco.json", metavar="NAME",
                   help="the JSON list's file name in --out (default imdl_benco.json): a plain name ending in .json, "
                        "no folder")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an export already in --out (Tp/, Gt/ and the JSON)")
    b.set_defaults(run=run_imdl_benco, needs=("batch",), stdout_is_a_log=True)
    c = esub.add_parser("coco", help="COCO-style JSON with RLE segmentations", epilog=EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _filters(c)
    c.add_argument("--out", required=True, type=path, help="output JSON file")
    c.add_argument("--images", type=path,
                   help="also write the edited images here under the JSON's file_name (a name there "
                   "that holds another image is refused before any image is written; the same bytes are kept)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace the files in --images that hold other images (another export's) under the names "
                        "this export writes")
    c.set_defaults(run=run_coco, needs=("batch",), stdout_is_a_log=True)
    h = esub.add_parser("hf", help="a Hugging Face dataset: parquet with Image() columns + a dataset card",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _filters(h, sort=False)
    h.add_argument("out", nargs="?", type=path, help="output folder (README.md, data/train-*.parquet)")
    h.add_argument("--out", dest="out_flag", metavar="OUT", type=path, help="the same, as an option")
    h.add_argument("--name", help="the dataset's pretty name in the card")
    h.add_argument("--max-shard-mb", type=SHARD_MB, default=500, help="start a new parquet file past this size (500)")
    h.add_argument("--overwrite", action="store_true", help="replace a dataset already exported to OUT")
    h.set_defaults(run=run_hf, needs=("batch",), stdout_is_a_log=True)
    p.set_defaults(run=lambda args: (p.print_help(), 2)[1])


def _row_filter(args: argparse.Namespace):
    from sigma.cli.common import check_min_max
    from sigma.export.select import RowFilter

    check_min_max(args, ["min_area", "max_area", "min_confidence", "max_confidence"])
    composite = {"only": True, "exclude": False, None: None}[args.composite]
    return RowFilter(min_confidence=args.min_confidence, max_confidence=args.max_confidence,
                     min_area=args.min_area, max_area=args.max_area, composite=composite)


def _report(info: dict) -> None:
    """The export's summary as one JSON line (`skipped`: how many), then the first 20 skipped pairs. Every export
    counts its skipped pairs (`Skipped.report`: `skipped_total`, `skipped_by_reason`) and returns only some as
    `skipped`."""
    skipped = info.pop("skipped")
    total = info.pop("skipped_total")
    print(json.dumps({**info, "skipped": total}))
    from sigma.text import printable

    for s in skipped[:20]:          # a pair id is the corpus's: a control character in it escaped, not obeyed
        print(printable(f"sigma: warning: skipped {s['pair_id']}: {s['reason']}"))
    reasons = info.get("skipped_by_reason")
    if reasons and total > min(len(skipped), 20):
        print(printable(f"sigma: warning: skipped {total} pair(s) in all: "
                        + "; ".join(f"{n}: {reason}" for reason, n in reasons.items())))


def run_imdl_benco(args: argparse.Namespace) -> int:
    from sigma.export.imdl_benco import export_imdl_benco

    _report(export_imdl_benco(args.run_dir, args.out, _row_filter(args), relative=args.relative, mask=args.mask,
                              order=args.sort, overwrite=args.overwrite, json_name=args.json_name))
    return 0


def run_coco(args: argparse.Namespace) -> int:
    from sigma.cli.common import check_outfile
    from sigma.export.coco import export_coco

    check_outfile(args.out, "coco.json")
    _report(export_coco(args.run_dir, args.out, _row_filter(args), images_dir=args.images, mask=args.mask,
                        order=args.sort, overwrite=args.overwrite))
    return 0


def run_hf(args: argparse.Namespace) -> int:
    from sigma.errors import ConfigError
    from sigma.export.hf import export_hf

    out = args.out or args.out_flag
    if not out or (args.out and args.out_flag and args.out != args.out_flag):
        raise ConfigError("sigma export hf RUN_DIR OUT: give the output folder once (as OUT or --out)")
    _report(export_hf(args.run_dir, out, _row_filter(args), name=args.name, max_shard_mb=args.max_shard_mb,
                      overwrite=args.overwrite, mask=args.mask))
    return 0
