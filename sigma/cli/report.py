"""`sigma report RUN_DIR`: a self-contained HTML review page (gallery, filters, lowest confidence first)."""
from __future__ import annotations

import argparse
import json

from sigma.cli.common import CONFIDENCE, integer, path, within

# The gallery inlines two JPEG thumbnails per pair: 10000 pairs at 192 px is ~150 MB of HTML, already more than a
# page to review; a larger --limit wrote a page no browser opens (and 1e30 was taken). A thumbnail is never enlarged.
MAX_REPORT_PAIRS = 10_000
THUMB_RANGE = (16, 4096)

EXAMPLES = """examples:
  sigma report runs/eval                                   # runs/eval/report.html: the 300 least confident pairs
  sigma report runs/mb --out mb.html --limit 1000 --thumb 256
  sigma report runs/mb --sort confidence --min-confidence 0.97   # what an export at that cut keeps
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a static HTML review page for a batch run",
                       description="Writes RUN_DIR/report.html (or --out): the pairs with their masks overlaid,\n"
                                   "lowest confidence first (or --sort confidence), within --min/--max-confidence,\n"
                                   "with filters by edit type, set and confidence, per-set metrics when the corpus\n"
                                   "had ground truth, and the bad pairs. No network: images are inlined.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=path, help="a `sigma batch run` folder")
    p.add_argument("--out", type=path, help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--limit", type=integer, action=within(1, MAX_REPORT_PAIRS), default=300,
                   help=f"pairs in the gallery, lowest confidence first (300; 1 .. {MAX_REPORT_PAIRS})")
    p.add_argument("--thumb", type=integer, action=within(*THUMB_RANGE), default=192,
                   help=f"thumbnail size in pixels (192; {THUMB_RANGE[0]} .. {THUMB_RANGE[1]})")
    p.add_argument("--min-confidence", type=CONFIDENCE, help="show only pairs with confidence >= C")
    p.add_argument("--max-confidence", type=CONFIDENCE, help="show only pairs with confidence <= C")
    p.add_argument("--sort", choices=("confidence-asc", "confidence"), default="confidence-asc",
                   help="which pairs fill the gallery: lowest confidence first (default: the ones to check) "
                        "or highest first (what an export at --min-confidence keeps)")
    p.set_defaults(run=run, needs=("batch",))


def run(args: argparse.Namespace) -> int:
    from sigma.cli.common import check_min_max, check_outfile
    from sigma.report.build import build_report

    check_min_max(args, ["min_confidence", "max_confidence"])
    if args.out is not None:    # "" too: it wrote RUN_DIR/report.html, a file not asked for
        check_outfile(args.out, "report.html")
    print(json.dumps(build_report(args.run_dir, args.out, limit=args.limit, thumb=args.thumb,
                                  min_confidence=args.min_confidence, max_confidence=args.max_confidence,
                                  sort=args.sort)))
    return 0
