"""`sigma parse`: an instruction -> (edit_type, source, target) as JSON; or a whole JSONL file, scored."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sigma.cli.common import integer, path, within
from sigma.config.schema import MAX_INSTRUCTION_CHARS
from sigma.errors import InputError, LimitError
from sigma.text import has_words, is_blank, json_line
from sigma.text import loads as load_json

HELP = """Parse an editing instruction into (edit_type, source concept, target concept), the input of
the grounding branch. edit_type is add | remove | replace | attribute | global (null: no instruction).

With --file, parse one instruction per line (JSON objects with an "instruction" field, or plain text); blank
lines are skipped. An empty instruction (nothing but spaces) is refused, as the service refuses it
(empty_instruction, exit 2; in a file, every such line is named): a pair without one is {"instruction": null}.
A file with no instruction at all (empty, or blank lines alone) is no_instructions, exit 2.
When the lines carry expected fields (edit_type, source, target; e.g. ../shared/data/instructions/dev.jsonl)
it prints edit-type accuracy and concept match instead of the parses."""

EXAMPLES = """examples:
  sigma parse "replace the dog with a cat"
  sigma parse "make it snowy" --backend llm
  sigma parse "remove the boat" --backend qwen-vl --model ./qwen2.5-vl --original a.png --edited b.png
  sigma parse --file ../shared/data/instructions/dev.jsonl --show-errors
"""

MAX_CHARS = 1000             # the default of --max-chars: io.limits.max_instruction_chars' default
MAX_PROBLEMS_SHOWN = 5   # lines said in the error when expected fields are bad; the rest are counted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parse", help="parse an instruction into (edit_type, source, target)", description=HELP,
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("instruction", nargs="?", help="the editing instruction (quote it)")
    p.add_argument("--file", metavar="JSONL", type=path, help="parse every line of this file instead")
    p.add_argument("--backend", default="rules", help="rules (default) | llm | qwen-vl")
    p.add_argument("--model", type=path,
                   help="llm / qwen-vl: a local model folder, .gguf file or HF repo id in the cache")
    p.add_argument("--original", metavar="IMAGE", type=path, help="qwen-vl: the original image")
    p.add_argument("--edited", metavar="IMAGE", type=path, help="qwen-vl: the edited image")
    p.add_argument("--show-errors", action="store_true", help="with --file: list every line that did not match")
    p.add_argument("--out", metavar="JSONL", type=path, help="with --file: also write each parse to this file")
    p.add_argument("--max-chars", type=integer, action=within(1, MAX_INSTRUCTION_CHARS), default=MAX_CHARS,
                   metavar="N", help=f"longest instruction accepted, in characters, 1 .. "
                                     f"{MAX_INSTRUCTION_CHARS} (default {MAX_CHARS}; the most is the service's "
                                     "io.limits.max_instruction_chars)")
    p.set_defaults(run=run)


def _check(text: str | None, max_chars: int, where: str = "instruction") -> None:
    from sigma.text import find_surrogate

    if text is not None and is_blank(text):
        # the service refuses it so (HTTP 422, empty_instruction); here it was a parse with edit_type null and exit 0,
        # as if the text had said there is no edit
        raise InputError(f"{where} is empty (nothing but spaces): give the words of an edit", code="empty_instruction")
    if text is not None and not has_words(text):
        # "🐶🐱": every backend parses text without a letter or digit as no edit (edit_type null), which is what the
        # refusal above is for; it was printed with exit 0
        raise InputError(f"{where} has no words (no letter or digit in any script), which every parser reads as no "
                         "edit: give the words of an edit", code="empty_instruction")
    if text is not None and len(text) > max_chars:
        raise LimitError(f"{where} is {len(text)} characters; at most {max_chars} are accepted (--max-chars)",
                         code="instruction_too_long")
    if text is not None and find_surrogate(text) is not None:   # "\ud800" in JSON, non-UTF-8 bytes in argv
        raise InputError(f"{where}: holds a lone UTF-16 surrogate (text no file or terminal can hold)",
                         code="invalid_text")


def _parser(args: argparse.Namespace):
    from sigma.parse import get_parser

    options: dict[str, Any] = {}
    if args.model:
        if args.backend == "rules":
            raise InputError("--model applies to --backend llm or qwen-vl, not rules", code="bad_arguments")
        options["model"] = args.model
    return get_parser(args.backend, **options)


def _read_lines(path: Path, max_chars: int) -> list[dict[str, Any]]:
    """The file's records, each checked; lines whose expected fields cannot be scored (an unknown edit type), and
    JSON lines whose instruction is empty, are said together, before the parser loads (a model backend takes seconds
    a line). A blank line is layout (a file's last newline, a gap between groups), not an instruction: skipped. An
    empty instruction in a JSON line is a record without its text (an export that lost it): the service refuses it
    (empty_instruction), and a parse of it would score or write as if the text had asked for no edit."""
    from sigma.parse.evaluate import expectation_problem
    from sigma.regular import BrokenLink, NotRegularFile, open_regular

    try:    # opened once, never waited on: a FIFO, a device or a folder was "no such file", as if nothing were there
        fh = open_regular(path, "rb")
    except NotRegularFile as exc:
        raise InputError(f"--file {path}: not a regular file ({exc.kind}); give a JSONL or text "
                         "file", code="not_a_regular_file") from None
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:    # ValueError: a NUL in the name
        said = exc.strerror if isinstance(exc, BrokenLink) else "no such file"
        raise InputError(f"--file {path}: {said}", code="file_not_found") from None
    records = []
    lineno = 0
    problems: list[str] = []
    empty: list[str] = []        # JSON lines whose instruction is "" or spaces: said together, before any parse
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                # utf-8-sig on the first line: a BOM (Notepad, Excel's "UTF-8" export) made the first JSON
                # line plain text, parsed as the instruction '{"instruction": ...' (add '"instruction"')
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
            except UnicodeDecodeError as exc:   # said at the line, not as a traceback from the codec
                raise InputError(f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
            if is_blank(line):          # layout (a zero-width space alone included), not an instruction
                continue
            if line.startswith("{"):
                try:
                    rec = load_json(line)
                except ValueError as exc:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)})") from exc
                if not isinstance(rec, dict) or ("instruction" not in rec):
                    raise InputError(f"{path}:{lineno}: a JSON line needs an \"instruction\" field")
                if rec["instruction"] is not None and not isinstance(rec["instruction"], str):
                    raise InputError(f"{path}:{lineno}: \"instruction\" must be a string or null")
            else:
                rec = {"instruction": line}
            if isinstance(rec["instruction"], str) and not has_words(rec["instruction"]):
                empty.append(f"{path}:{lineno}")
                continue
            _check(rec["instruction"], max_chars, f"{path}:{lineno}")
            problem = expectation_problem(rec)
            if problem is not None:
                problems.append(f"{path}:{lineno}: {problem}")
            records.append(rec)
    if empty:
        raise InputError(f"{len(empty)} line(s) with an empty instruction (nothing but spaces, or no letter or digit):"
                         f" {_some(empty, ', ')}; "
                         'a line for a pair without an instruction is {"instruction": null}', code="empty_instruction")
    if problems:
        raise InputError(f"{len(problems)} line(s) with expected fields that cannot be scored: {_some(problems, '; ')}")
    if not records:
        # nothing printed and exit 0 (with --out, its file replaced by an empty one): no parse and no word. Said as
        # `sigma eval` says a set without a pair (no_pairs), before the parser loads and anything is written
        held = f"its {lineno} line(s) are all blank" if lineno else "it is empty"
        raise InputError(f"--file {path}: no instructions to parse ({held}); give one per line, as text or "
                         '{"instruction": ...}', code="no_instructions")
    return records


def _some(items: list[str], sep: str) -> str:
    """The first MAX_PROBLEMS_SHOWN items, and how many more there are."""
    more = f" (and {len(items) - MAX_PROBLEMS_SHOWN} more)" if len(items) > MAX_PROBLEMS_SHOWN else ""
    return sep.join(items[:MAX_PROBLEMS_SHOWN]) + more


def run(args: argparse.Namespace) -> int:
    if args.file and args.instruction is not None:
        raise InputError("give either an INSTRUCTION or --file, not both", code="bad_arguments")
    if not args.file and args.instruction is None:
        raise InputError("nothing to parse: give an INSTRUCTION (quoted) or --file X.jsonl", code="bad_arguments")
    if args.out is not None:    # "" too: --out "" was ignored without a word (no file written)
        # said before the parser loads and every line is parsed (minutes with a model backend), not at the write
        from sigma.cli.common import check_outfile

        if not args.file:
            raise InputError("--out goes with --file (one instruction is printed)", code="bad_arguments")
        out, src = Path(args.out), Path(args.file)
        check_outfile(args.out, "parses.jsonl")
        if out.exists() and src.exists() and out.samefile(src):
            raise InputError(f"--out {out} is the --file it reads: the instructions (and their expected fields) "
                             "would be replaced by the parses; name another file", code="bad_arguments")
    images = None
    if args.original or args.edited:
        if args.backend != "qwen-vl" or not (args.original and args.edited):
            raise InputError("--original and --edited go together, with --backend qwen-vl", code="bad_arguments")
        from sigma.io.images import read_image  # validated decoding, the same limits as annotate

        images = [read_image(args.original).rgb, read_image(args.edited).rgb]
    if args.file is None:
        _check(args.instruction, args.max_chars)
        parser = _parser(args)
        result = parser(args.instruction, images=images) if images is not None else parser(args.instruction)
        print(json_line(result.to_json_dict()))
        return 0

    from sigma.parse.evaluate import has_expectations, score

    records = _read_lines(Path(args.file), args.max_chars)
    parser = _parser(args)
    from sigma.cli.common import Progress

    parses = []
    # a model backend takes seconds a line
    with Progress(f"parse ({args.backend})", unit="instruction", total=len(records)) as bar:
        for rec in records:
            parses.append(parser(rec["instruction"]))
            bar.advance()
    if args.out is not None:
        _write_out(Path(args.out), parses)
    if not any(has_expectations(r) for r in records):
        for p in parses:
            print(json_line(p.to_json_dict()))
        return 0
    summary = score(zip(records, parses))
    errors = summary.pop("errors")
    if args.show_errors:
        for err in errors:
            print(json_line(err))
    print(f"{summary['n']} instructions, backend {args.backend}: edit-type accuracy "
          f"{100 * summary['type_accuracy']:.1f} %, concept match {100 * summary['concept_match']:.1f} % "
          f"(source {100 * summary['source_match']:.1f} %, target {100 * summary['target_match']:.1f} %)",
          file=sys.stderr)
    print(json_line({"backend": args.backend, **summary}))
    return 0


def _write_out(out: Path, parses: list) -> None:
    """The parses, one JSON line each, at `out` (whole or not at all). The folder of `--out` is anyone's (no one
    holds it): a parse killed between writing its temporary file and renaming it left `.FILE.PID.RANDOM.tmp` there
    for good, one per kill. The temporary files of `out`'s own name whose writer is dead go first (never a live
    writer's, never another name, never through a link: `sweep_dead_writers_of`); a stream is not swept."""
    from sigma.batch.layout import atomic_write_bytes, is_stream
    from sigma.tempfiles import sweep_dead_writers_of

    if not is_stream(out):
        sweep_dead_writers_of(out.parent, names={out.name})
    atomic_write_bytes(out, "".join(json_line(p.to_json_dict()) + "\n" for p in parses).encode())
