"""`sigma models`: the zoo, one line each, with where each model's weights are (or are not)."""
from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sigma models
  sigma models --prepare              # build sigma-lite's ONNX Runtime graph once (tens of seconds)
  sigma models --prepare sigma-b
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered annotators and their weight status",
                       description="List every registered annotator with one line each and the status of its\n"
                                   "weights (embedded, found at PATH, or missing with where it looked).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", metavar="NAME", nargs="?", const="sigma-lite",
                   help="load NAME (default sigma-lite) once and build what its fast CPU path needs (the ONNX "
                        "Runtime graph, cached per machine and weights), so the next run starts fast")
    p.set_defaults(run=run)


def prepare(name: str) -> int:
    import time

    from sigma.registry import annotator_config_cls, create_annotator

    cls = annotator_config_cls(name)
    options = {"build_graph": True} if cls is not None and "build_graph" in cls.model_fields else {}
    start = time.perf_counter()
    annotator = create_annotator(name, **options)
    runtime = annotator.describe().get("runtime", {"runtime": "torch", "reason": "no runtime choice"})
    print(f"{name}: ready in {time.perf_counter() - start:.1f} s; runs on {runtime.get('runtime')} "
          f"({runtime.get('reason', '')}){'; graph ' + str(runtime['graph']) if runtime.get('graph') else ''}")
    return 0


def run(args: argparse.Namespace) -> int:
    from sigma.registry import list_annotators

    if args.prepare:
        return prepare(args.prepare)

    entries = list_annotators()
    width = max(len(e.name) for e in entries)
    for entry in entries:
        print(f"{entry.name:<{width}}  {entry.description}")
        print(f"{'':<{width}}  weights: {entry.weights_status()}")
    return 0
