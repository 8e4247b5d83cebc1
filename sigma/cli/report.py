"""`sigma report RUN_DIR`: a self-contained HTML review page (gallery, filters, lowest confidence first)."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a static HTML review page for a batch run",
                       description="Writes RUN_DIR/report.html (or --out): the pairs with their masks overlaid, "
                                   "lowest confidence first, with filters by edit type, set and confidence, "
                                   "per-set metrics when the corpus had ground truth, and the bad pairs. "
                                   "No network: images are inlined.")
    p.add_argument("run_dir", help="a `sigma batch run` folder")
    p.add_argument("--out", help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--limit", type=int, default=300, help="pairs in the gallery, lowest confidence first (300)")
    p.add_argument("--thumb", type=int, default=192, help="thumbnail size in pixels (192)")
    p.set_defaults(run=run, needs=("batch",))


def run(args: argparse.Namespace) -> int:
    from sigma.errors import ConfigError
    from sigma.report.build import build_report

    if args.limit < 1 or args.thumb < 16:
        raise ConfigError("--limit must be >= 1 and --thumb >= 16")
    print(json.dumps(build_report(args.run_dir, args.out, limit=args.limit, thumb=args.thumb)))
    return 0
