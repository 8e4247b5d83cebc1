"""`sigma annotate`: one pair (or a JSON list on stdin) → mask.png, prob.png, overlay.png, result.json."""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from sigma.cli.common import (
    add_config_args,
    add_plugin_arg,
    check_outdir,
    error_line,
    flag_overrides,
    import_plugin_args,
    path,
    refuse_run_folder,
)
from sigma.config.loader import flags_named, load_config, resolved_yaml
from sigma.config.schema import MAX_BATCH_SIZE, AnnotatorSpec, IOConfig
from sigma.errors import FolderBusyError, InputError, SigmaError
from sigma.folderlock import hold_folder
from sigma.registry import build_annotator, named_annotator, options_model
from sigma.text import NotWritable, find_surrogate, printable, unwritable_output
from sigma.text import loads as load_json

HELP = """Annotate an (original, edited) pair with a manipulation mask.

Writes OUTDIR/mask.png (0/255), prob.png (8-bit probability), overlay.png (edited image with the mask
tinted and outlined) and result.json (COCO RLE, bbox, area, parser output, timings, resolved config).

Several pairs: pass '-' as ORIGINAL and give a JSON list on stdin,
  [{"id": "a", "original": "a_o.png", "edited": "a_e.png", "instruction": "remove the boat"}, ...]
each written to OUTDIR/<id>/. A bad pair is reported and the others are still annotated (exit 2).
"""

EXAMPLES = """examples:
  sigma annotate --example -o out/          (the bundled example pair; see sigma/assets/examples/README.md)
  sigma annotate orig.png edited.png -i "remove the boat" -o out/
  sigma annotate orig.png edited.png --annotator pixel-diff --threshold 0.1
  sigma annotate orig.png edited.png --config configs/annotate.yaml --set io.align=true
  cat pairs.json | sigma annotate - -o out/
"""

# A pair id becomes a folder name under OUTDIR: keep it to one safe path component.
# matched whole (`fullmatch`): with `match` and `$`, which also matches before a trailing newline, "boat\n" passed
# and was written to a folder of that name, beside "boat"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class AnnotateConfig(AnnotatorSpec):
    options_model = staticmethod(options_model)        # the options validated with the rest
    batch_size: int = Field(4, ge=1, le=MAX_BATCH_SIZE)
    io: IOConfig = IOConfig()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotate", help="annotate one pair (or a JSON list of pairs on stdin)",
                       description=HELP, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("original", nargs="?", type=path,
                   help="original image (PNG/JPEG/WebP/TIFF/BMP), or '-' for a JSON list on stdin")
    p.add_argument("edited", nargs="?", type=path, help="edited image")
    p.add_argument("-i", "--instruction", help="the edit instruction, e.g. 'remove the boat' (optional)")
    p.add_argument("-o", "--outdir", type=path, default="sigma_out", help="output folder (default: sigma_out)")
    p.add_argument("--annotator", help="registry name (see `sigma models`); default: sigma-lite when embedded")
    p.add_argument("--threshold", type=float, help="mask = prob > T (pixel-diff: PIXAR's τ)")
    p.add_argument("--example", action="store_true",
                   help="annotate the example pair shipped with the package (astronaut photo, shuttle replaced "
                        "by a cup of coffee) with its instruction")
    add_plugin_arg(p)
    add_config_args(p)
    p.set_defaults(run=run, config_of=config_of, stdout_is_a_log=True)


MAX_STDIN_BYTES = 32 * 1024 * 1024   # a JSON list of paths; a corpus is `sigma batch run`'s job


def _read_stdin_pairs() -> list[Any]:
    if sys.stdin is None:        # `<&-`: Python starts with no stdin at all; reading it was an AttributeError
        raise InputError("stdin: closed, so there is no JSON list of pairs to read; pipe one in "
                         "(cat pairs.json | sigma annotate - ...) or give ORIGINAL EDITED", code="no_pairs")
    stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
    raw = stream.read(MAX_STDIN_BYTES + 1)
    if len(raw) > MAX_STDIN_BYTES:
        raise InputError(f"stdin: more than {MAX_STDIN_BYTES // 2**20} MiB of pairs; for a corpus use "
                         "`sigma batch run` (sharded, resumable)", code="input_too_large")
    try:
        items = load_json(raw)
    except ValueError as exc:
        raise InputError(f"stdin: not a JSON list of pairs ({exc})", code="bad_json") from exc
    if not isinstance(items, list):
        raise InputError("stdin: expected a JSON list of objects with 'original' and 'edited'", code="bad_json")
    if not items:
        raise InputError("stdin: the JSON list of pairs is empty", code="no_pairs")
    return items


def _items_from_args(args: argparse.Namespace) -> tuple[list[Any], bool]:
    """(pair items, several?) from --example, '-' (stdin) or ORIGINAL EDITED."""
    if args.example:
        if args.original or args.edited:
            raise InputError("--example annotates the bundled pair; drop ORIGINAL/EDITED", code="bad_arguments")
        from sigma.assets import example_pair

        example = example_pair()
        instruction = example["instruction"] if args.instruction is None else args.instruction
        return [{"id": example["id"], "original": example["original"], "edited": example["edited"],
                 "instruction": instruction}], False
    if args.original is None:
        raise InputError("give ORIGINAL EDITED, '-' for a JSON list on stdin, or --example", code="bad_arguments")
    if args.original == "-":
        if args.edited:
            raise InputError("with '-' the pairs come from stdin; drop the EDITED argument", code="bad_arguments")
        return _read_stdin_pairs(), True
    if not args.edited:
        raise InputError("missing EDITED image (or pass '-' to read a JSON list of pairs)", code="bad_arguments")
    return [{"id": Path(args.original).stem, "original": args.original, "edited": args.edited,
             "instruction": args.instruction}], False


def _pair_id(item: Any, n: int, multi: bool, seen: set[str]) -> str:
    if not isinstance(item, dict):
        return f"pair_{n:04d}"
    raw = item.get("id")
    pair_id = str(raw) if raw not in (None, "") else (f"pair_{n:04d}" if multi else "pair")
    if multi:
        if not _SAFE_ID.fullmatch(pair_id):
            raise InputError(f"pair #{n}: id {pair_id!r} is not a safe folder name (letters, digits, '.', '_', "
                             "'-'; at most 128)", code="bad_json")
        if pair_id.casefold() in seen:       # case-folded: "Boat" and "boat" are one folder on macOS or Windows
            raise InputError(f"pair #{n}: id {pair_id!r} appears twice (letter case aside); ids name the output "
                             "folders", code="bad_json")
    return pair_id


PAIR_KEYS = frozenset({"id", "original", "edited", "instruction"})
# options the API takes per request: in a pair here they would be ignored, so they are refused instead;
# other keys (a pairs.jsonl record's mask, editor, source ...) are metadata, ignored with one warning
PER_RUN_OPTIONS = frozenset({"threshold", "annotator", "mask_mode", "outputs", "options"})
EXPORT_WORTH_PAIRS = 16    # below this, a one-off ONNX export (tens of seconds) costs more than it saves


def _few_pairs_skip_export(cfg: AnnotateConfig, n_pairs: int) -> AnnotateConfig:
    """A handful of pairs runs on a cached ONNX graph or on torch, never waiting for an export: the first
    `sigma annotate --example` on a machine takes seconds, not a minute. `--set options.build_graph=true` wins."""
    from sigma.registry import annotator_config_cls

    if n_pairs >= EXPORT_WORTH_PAIRS or "build_graph" in cfg.options:
        return cfg
    cls = annotator_config_cls(cfg.annotator)
    if cls is None or "build_graph" not in cls.model_fields:
        return cfg
    return cfg.model_copy(update={"options": {**cfg.options, "build_graph": False}})


def config_of(args: argparse.Namespace) -> AnnotateConfig:
    """The command's config: --config, --set, then its flags (`config_of` of the parser: `refused_said`)."""
    import_plugin_args(args)          # first: the annotator (and its defaults) may be the plugin's
    # flags are overrides like --set ones, applied before validation (so a bad --threshold is a config error)
    flags = {"annotator": args.annotator, "threshold": args.threshold}
    overrides = flag_overrides(args.overrides, **flags)
    return load_config(AnnotateConfig, args.config, overrides, flags=flags_named(flags))


def run(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    # the options as the annotator reads them (`--set options.image_size=2.24e2` ran at 224): what result.json and
    # config.yaml record, as a batch run's config does; a bad option is refused here, before any pair is read
    name, options = named_annotator(cfg.annotator, cfg.options)
    cfg = cfg.model_copy(update={"annotator": name, "options": options})
    items, multi = _items_from_args(args)
    cfg = _few_pairs_skip_export(cfg, len(items))
    # Built before any image is read: a typo in --annotator or --set is one error, not one per pair.
    annotator = build_annotator(cfg)
    # config.yaml is the AnnotateConfig alone, a valid `--config` for the same run again (it held annotator_config
    # too and was refused as invalid_config); result.json's `config` adds what the annotator read
    resolved = cfg.model_dump(mode="json")
    config_text = resolved_yaml(resolved).encode()
    resolved["annotator_config"] = annotator.describe()

    outdir = check_outdir(Path(args.outdir))      # said before any pair is read (a path through a file: by the hold)
    # one pair writes config.yaml in OUTDIR itself, over an eval's (a list of pairs writes OUTDIR/<id>/)
    refuse_run_folder(outdir, "-o OUTDIR", others=() if multi else ("metrics.json",))
    # one annotate per OUTDIR (the default sigma_out/ is every run's in a folder): two at once, each set written
    # whole, still left one run's pairs beside the other's (another --threshold) and each said all of its own were
    # written; the second is refused at once (run_locked), as `sigma eval --out` is. A run that writes nothing
    # leaves no folder it made. sweep=False: OUTDIR may be a folder of the user's (`-o .`); each set's own write
    # (`replace_together`) removes only what dead annotates left of its files, not every dead writer's temporary
    with hold_folder(outdir, other="-o OUTDIR", sweep=False):
        failures, written = _annotate(annotator, cfg, items, multi, outdir, resolved, config_text)
    for pair_id, code, message in failures:
        # Same one-line form as every other error; with several pairs, the pair id comes first (once).
        named = message.startswith((f"{pair_id}: ", f"pair {pair_id}: "))
        # long values cut as in every error line (`error_line`): a 5000-character pair id came back whole
        print(error_line(code, f"{pair_id + ': ' if multi and not named else ''}{message}"), file=sys.stderr)
    if failures and multi:
        print(f"sigma: {written} of {len(items)} pairs annotated, {len(failures)} failed", file=sys.stderr)
    return 2 if failures else 0


def _annotate(annotator: Any, cfg: AnnotateConfig, items: list[Any], multi: bool, outdir: Path,
              resolved: dict[str, Any], config_text: bytes) -> tuple[list[tuple[str, str, str]], int]:
    """Each pair checked, annotated and written into `outdir` (held by the caller): (failures, pairs written)."""
    from sigma.io.outputs import write_annotation
    from sigma.io.pairs import load_pair

    failures: list[tuple[str, str, str]] = []       # (pair id, code, message)
    checked: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    ignored: set[str] = set()
    for n, item in enumerate(items):
        label = f"pair #{n}"
        try:
            pair_id = _pair_id(item, n, multi, seen)
            label = pair_id
            if not isinstance(item, dict):
                raise InputError(f"pair #{n}: expected an object with 'original' and 'edited', got "
                                 f"{type(item).__name__}", code="bad_json")
            if not item.get("original") or not item.get("edited"):
                raise InputError(f"pair {pair_id}: needs 'original' and 'edited'", code="bad_json")
            options = sorted(set(item) & PER_RUN_OPTIONS)
            if options:                  # a per-pair "threshold" silently ignored would be a wrong mask, unsaid
                raise InputError(f"pair {pair_id}: {', '.join(map(repr, options))} cannot be set per pair here; "
                                 "give it once with --threshold/--annotator or --set (e.g. --set "
                                 "options.mask_mode=semantic)", code="bad_json")
            if isinstance(item.get("instruction"), str) and find_surrogate(item["instruction"]) is not None:
                # non-UTF-8 bytes in -i (argv) or "\ud800" on stdin: result.json would carry a lone surrogate
                raise InputError(f"pair {pair_id}: the instruction holds a lone UTF-16 surrogate (bytes that are "
                                 "not UTF-8?)", code="invalid_text")
            ignored.update(set(item) - PAIR_KEYS)
            seen.add(pair_id.casefold())
            checked.append((pair_id, item))
        except SigmaError as exc:
            failures.append((label, exc.code, exc.message))

    if ignored:
        print(f"sigma: warning: ignored key(s) in the pairs: {', '.join(sorted(map(repr, ignored)))} (a pair has "
              f"{', '.join(sorted(PAIR_KEYS))})", file=sys.stderr)
    written = 0
    # images are decoded one batch at a time: a long list on stdin holds batch_size pairs in memory, not all
    # of them, and the pairs before a fault are written
    for start in range(0, len(checked), cfg.batch_size):
        batch, load_ms = [], {}
        for pair_id, item in checked[start:start + cfg.batch_size]:
            t0 = time.perf_counter()
            try:
                batch.append(load_pair(str(item["original"]), str(item["edited"]), item.get("instruction"),
                                       cfg.io, pair_id))
            except SigmaError as exc:
                failures.append((pair_id, exc.code, exc.message))
                continue
            load_ms[pair_id] = (time.perf_counter() - t0) * 1000.0
        if not batch:
            continue
        try:
            annotations = annotator.predict(batch)
        except SigmaError as exc:
            failures.extend((p.pair_id, exc.code, exc.message) for p in batch)
            continue
        for pair, ann in zip(batch, annotations, strict=True):
            target = outdir / pair.pair_id if multi else outdir
            ann.timings_ms = {"load": load_ms.get(pair.pair_id, 0.0), **ann.timings_ms}
            try:
                # config.yaml in the same set as result.json: a kill never leaves one run's beside the other's
                write_annotation(ann, pair.edited, target, {"instruction": pair.instruction, "config": resolved},
                                 cfg.io.limits.max_json_depth, companions={"config.yaml": config_text})
            except FolderBusyError as exc:  # a writer stopped mid-commit in this pair's folder: the others go on
                failures.append((pair.pair_id, exc.code, exc.message))
                continue
            except OSError as exc:
                failures.append((pair.pair_id, "output_unwritable", f"{target}: cannot write ({exc.strerror or exc})"))
                continue
            except NotWritable as exc:     # the words of batch rows and service results for the same extras
                failures.append((pair.pair_id, "annotator_failed", unwritable_output(ann.annotator, exc)))
                continue
            written += 1
            # the id and folder are a file's name: a control character in it escaped (`printable`), not obeyed
            print(printable(f"{pair.pair_id}: {ann.area_fraction:.2%} of the image marked by {ann.annotator} -> "
                            f"{target}/"))
            for warning in pair.preprocess.get("warnings", []):
                print(printable(f"sigma: warning: {pair.pair_id}: {warning}"), file=sys.stderr)

    return failures, written
