"""`sigma models`: the zoo, one line each, with where each model's weights are (or are not)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered annotators and their weight status",
                       description="List every registered annotator with one line each and the status of "
                                   "its weights (embedded, found at PATH, or missing with where it looked).")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sigma.registry import list_annotators

    entries = list_annotators()
    width = max(len(e.name) for e in entries)
    for entry in entries:
        print(f"{entry.name:<{width}}  {entry.description}")
        print(f"{'':<{width}}  weights: {entry.weights_status()}")
    return 0
