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
    import warnings

    from sigma.errors import SigmaError
    from sigma.registry import annotator_config_cls, create_annotator
    from sigma.runtime import FALLBACK

    cls = annotator_config_cls(name)
    options = {"build_graph": True} if cls is not None and "build_graph" in cls.model_fields else {}
    start = time.perf_counter()
    with warnings.catch_warnings():      # said once below, as the error, when it is one
        warnings.filterwarnings("ignore", "sigma: .* runs on torch instead of ONNX Runtime", RuntimeWarning)
        annotator = create_annotator(name, **options)
    runtime = annotator.describe().get("runtime", {"runtime": "torch", "reason": "no runtime choice"})
    reason = str(runtime.get("reason", ""))
    if reason.startswith(FALLBACK):
        # its one job not done (a read-only or full cache, a model that does not export): it said "ready" and exited
        # 0, and a `sigma models --prepare && ...` (an image build) went on with no graph, every later start exporting
        raise SigmaError(f"{name}: its ONNX Runtime graph was not built: {reason.removeprefix(FALLBACK)}",
                         code="graph_unavailable")
    print(f"{name}: ready in {time.perf_counter() - start:.1f} s; runs on {runtime.get('runtime')} "
          f"({runtime.get('reason', '')}){'; graph ' + str(runtime['graph']) if runtime.get('graph') else ''}")
    return 0


def run(args: argparse.Namespace) -> int:
    from sigma.registry import list_annotators

    if args.prepare is not None:
        # `--prepare ''` (an image build's `--prepare "$MODEL"`, the variable unset) listed the zoo and exited 0: the
        # build went on with no graph; the registry refuses the empty name as it does an unknown one
        return prepare(args.prepare)

    entries = list_annotators()
    width = max(len(e.name) for e in entries)
    for entry in entries:
        print(f"{entry.name:<{width}}  {entry.description}")
        print(f"{'':<{width}}  weights: {entry.weights_status()}")
    return 0
