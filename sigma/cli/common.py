"""Options every command shares: a config file, `--set key=value` overrides, the annotator name."""
from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sigma.errors import InputError, SigmaError, loading_refused

# an error line at most ERROR_LIMIT characters; its user-given values (a path, a name) cut as a run's summary cuts
# them (`sigma.text.PATH_SHOWN`: a run of more than twice that without a space or quote, cut in the middle). The cap
# is for a pathological message only: a config refused with every bad field named is long by right (a TrainConfig
# with NaN in each of its float fields: 4,057 characters, which a 4,000 cap cut, the last fields unsaid)
ERROR_LIMIT = 32_000


def error_line(code: str, message: str) -> str:
    """An error's one line: whitespace made single spaces (whatever a library put in it), the other control
    characters escaped (`sigma.text.printable`: a folder named with an ESC sequence in `unfinished_synth_set` drove
    the terminal), long values cut (`sigma.text.cut_long_values`). A 5000-character path (`--out`, `--data`,
    `batch status RUN`) came back whole in `os_error` (`File name too long: xxxx…`) and in the project's own errors
    (`bad_outdir`)."""
    return f"sigma: error [{code}]: {said(message)}"


def said(message: str) -> str:
    """A message as a line of the CLI says it (`error_line`'s text; a failed shard's line of `sigma batch run` and
    `sigma batch status`): one line (a line break in a name is a space here, as in a library's message), no other
    control character (`printable`), long values cut to PATH_SHOWN, at most ERROR_LIMIT characters."""
    # imported here: numpy, which sigma.text imports, is seconds a CLI start need not wait
    from sigma.text import PATH_SHOWN, cut_long_values, printable

    return cut_long_values(printable(" ".join(message.split())), ERROR_LIMIT, PATH_SHOWN)


class SigmaArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line in the same `sigma: error [code]: ...` form as every
    other error (argparse's default prints the whole usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        """The lines said as every error's are (`sigma.cli._say_lines`): under torchrun once, by rank 0, and in
        torchrun's report. Each rank printed them, and the report said `To enable traceback see: ...`."""
        from sigma.cli import elastic

        lines = [*getattr(self, "refused", []), self.bad_arguments(message)]   # values refused before it, first
        if elastic.record("\n".join(lines)):
            self._print_message("".join(f"{line}\n" for line in lines), sys.stderr)
        self.exit(2)

    def bad_arguments(self, message: str) -> str:
        """argparse's `message` as this command's `bad_arguments` line."""
        return f"sigma: error [bad_arguments]: {self.prog}: {message} (see `{self.prog} --help`)"

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        """argparse, but a flag's value its `type=` refuses (`--threshold abc`) does not end the parse: each is
        recorded (`_get_value`) as one `bad_arguments` line in the namespace's `refused_flags`, the flag's value
        `REFUSED`, so that every bad flag of the command, and the command's config with the flags that are good
        (`--set`, `--config`: `refused_said`), are said together. Before, the first bad value was said alone, and a
        mistake in a `--set` of the same command only on the next run."""
        self.refused: list[str] = []
        namespace, extras = super().parse_known_args(args, namespace)
        if self.refused:
            namespace.refused_flags = [*getattr(namespace, "refused_flags", []), *self.refused]
        # said first by `error`: the top parser's (`unrecognized arguments`) follows its sub-command's refusals
        self.refused = list(getattr(namespace, "refused_flags", []))
        if extras and self._subparsers is None and self.prog != "sigma":
            # a command's own (`sigma train --config FILE`): said by the top parser, it named `sigma` and sent the
            # user to `sigma --help`, which lists the commands, not the flags this one takes
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if value is not REFUSED:        # already said: not "invalid choice" too
            super()._check_value(action, value)

    def _get_value(self, action: argparse.Action, arg_string: str):  # type: ignore[no-untyped-def]
        """An empty path argument (`sigma batch run ''`, `--out ''`, `--data ''`, `-o ''`) is refused here, for every
        command, before any work: Python's `Path('')` is `.`, so it meant the current folder — an output written
        into wherever the shell stood, a corpus or eval set read from there — which nobody types on purpose (an
        unset shell variable, `--out "$OUT"`). `.` still names the current folder. Gathered as a refused value is
        (`refused`), not said alone at once: `--out '' --threshold abc` said only the first and the second came on
        the next run, while two refused values were said together."""
        if action.type is path and arg_string == "":
            name = argparse._get_action_name(action) or action.dest
            self.refused.append(f"sigma: error [empty_path]: {self.prog}: {name}: an empty path; name the file or "
                                f"folder (`.` for the current folder)")
            return REFUSED
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError as exc:
            if not action.option_strings:       # a positional's: said at once, as before
                raise
            self.refused.append(self.bad_arguments(str(exc)))
            return REFUSED

    def _parse_optional(self, arg_string: str):  # type: ignore[no-untyped-def]
        """A value that reads as a negative number is a value, not a flag. argparse's own test knows -1 and -.5
        only: `--min-confidence -inf` (or -1e-3) was "expected one argument", and after a flag with a short
        option -i, `-inf` was `-i nf`; the user never heard the real reason (a confidence is in [0, 1])."""
        if NEGATIVE_NUMBER.fullmatch(arg_string) and not self._has_negative_number_optionals:
            return None
        return super()._parse_optional(arg_string)


class _Refused:
    """The value of a flag whose `type=` refused what was given (`SigmaArgumentParser.parse_known_args`)."""

    def __repr__(self) -> str:
        return "REFUSED"


REFUSED = _Refused()


def refused_said(args: argparse.Namespace) -> list[str]:
    """The `bad_arguments` lines of the flags whose values the parser refused (none: []), followed by what the
    command's config says with its other flags, `--set` and `--config` (the command's `config_of(args)`, where it has
    one: every problem of the command said in one run). The config is only read here, never acted on: the command
    does not run."""
    lines = list(getattr(args, "refused_flags", None) or [])
    config_of = getattr(args, "config_of", None)
    if not lines or config_of is None:
        return lines
    given = argparse.Namespace(**{name: _without_refused(value) for name, value in vars(args).items()})
    try:
        config_of(given)
    except SigmaError as exc:
        lines.extend(said_lines(exc))
    except Exception:       # noqa: BLE001 - a config that cannot even be read (an OSError): the flags' lines alone
        pass
    return lines


def _without_refused(value: Any) -> Any:
    """A flag's value with the parser's refused ones taken out: as not given (None), or left out of a list."""
    if value is REFUSED:
        return None
    if isinstance(value, list) and REFUSED in value:
        return [item for item in value if item is not REFUSED] or None
    return value


def said_lines(exc: SigmaError) -> list[str]:
    """The lines a SigmaError is said in: its own, then those of the errors it carries (`also`: a command's config
    refused beside its flags)."""
    return [error_line(exc.code, str(exc.message)), *(line for more in exc.also for line in said_lines(more))]


def path(text: str) -> str:
    """argparse `type=` of every argument that names a file or folder: the text as given (a command makes its
    `Path`), but the parser refuses it empty (`SigmaArgumentParser._get_value`, `empty_path`)."""
    return text


#: -1, -0.5, -.5, -1e-3, -inf, -Infinity, -nan: what `float` reads as a number below zero (or NaN)
NEGATIVE_NUMBER = re.compile(r"-(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf(?:inity)?|nan)", re.IGNORECASE)


# How a `--set` / `key=value` VALUE is read (sigma.config.loader.Override): said in every --help that takes one.
VALUE_RULE = ("VALUE is YAML (0.1, true, null, [2,5,11], {a: 1}), except that a text field takes the text as "
              "written (name=a: b gives 'a: b', out_dir=on gives 'on'; outer quotes are removed), and an integer "
              "field takes 1e3 as 1000, in a list too ([1e1, 95]).")


def add_config_args(parser: argparse.ArgumentParser,
                    example: str = "--set io.align=true --set io.limits.max_pixels=10000000") -> None:
    """`--config` and `--set`; `example` are overrides the command's own config accepts (its --help shows them)."""
    parser.add_argument("--config", metavar="FILE", type=path, help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one config value, e.g. {example} (repeatable; applied after --config). "
                             f"{VALUE_RULE}")


def integer(text: str) -> int:
    """argparse `type=` of every integer flag. `type=int` refused `--shard-size 1e3`, which `--set
    input.shard_size=1e3` and a YAML file take as 1000: both now read integers with `sigma.config.loader.whole_number`
    (exponent notation that is whole, at most 4300 digits). A bad value is one `bad_arguments` line naming the flag."""
    from sigma.config.loader import whole_number

    try:
        return whole_number(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text[:100]!r}: {exc}") from None


def within(low: int, high: int) -> type[argparse.Action]:
    """`action=` of an integer flag no config field bounds (`sigma report --limit`, `sigma synth -n`; the others
    get their field's bound through the config): `-5` or `1e30` was taken, a silent no-op, a run that never ends or
    a traceback further on. A value outside [low, high] is one `bad_arguments` line naming the flag and the range,
    which its --help states too, said with the command's other refused flags (`SigmaArgumentParser.refused`)."""

    class Within(argparse.Action):
        bounds = (low, high)

        def __call__(self, parser, namespace, value, option_string=None):
            if value is not REFUSED and not low <= value <= high:
                text = str(value)
                said = text if len(text) <= 24 else f"a number of {len(text.lstrip('-'))} digits"
                refusal = argparse.ArgumentError(self, f"{said}: must be in {low} .. {high}")
                if not isinstance(parser, SigmaArgumentParser):
                    raise refusal
                parser.refused.append(parser.bad_arguments(str(refusal)))
                value = REFUSED
            setattr(namespace, self.dest, value)
    return Within


def refuse_unused(flags: dict[str, Any], why: str) -> None:
    """Flags a command's mode takes and never uses are refused, not ignored: `flags` maps each flag as written to
    its value, None (or an empty list) when not given, so a flag whose default is a value gets None as its
    argparse default and the command applies the real one itself. Those given are one `bad_arguments` line,
    '--a, --b and --c: WHY', before any work (`sigma worker --batch --annotator`, `sigma synth --build-cache -n`)."""
    given = [flag for flag, value in flags.items() if value is not None and value != []]
    if given:
        named = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
        raise InputError(f"{named}: {why}", code="bad_arguments")


PLUGIN_HELP = ("import MODULE first, so the annotators it registers can be named with --annotator (a module "
               "on sys.path: installed, or under PYTHONPATH; repeatable)")


def add_plugin_arg(parser: argparse.ArgumentParser, help_text: str = PLUGIN_HELP) -> None:
    """`--plugin MODULE` (repeatable): every command that takes `--annotator NAME` takes it, so an annotator a
    plugin registers is reached from the command line, not only in-process. `import_plugin_args` imports them."""
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=help_text)


def import_plugin_args(args: argparse.Namespace) -> None:
    """Import the command's `--plugin` modules before anything is validated or built; one that cannot be imported
    or raises while importing is a ConfigError (`invalid_config`, exit 2) naming it, never a traceback."""
    from sigma.registry import import_plugins

    import_plugins(getattr(args, "plugin", None) or (), "--plugin")


def with_plugin_args(configured: list[str], args: argparse.Namespace) -> list[str]:
    """The plugins a command runs with: its config's list, then the `--plugin` modules it lacks, each once in the
    order first named. One meaning on every command: `sigma batch run|submit` replaced the config's `plugins:` with
    --plugin (a corpus format or annotator the config's own plugin registered was then unknown) while `sigma serve`
    and `sigma worker` added to theirs."""
    return list(dict.fromkeys([*configured, *(getattr(args, "plugin", None) or ())]))


# What each optional extra brings, by import name: a command says which it needs (`set_defaults(needs=...)`),
# and `sigma` checks them before any work, so a plain `pip install -e .` gets one line naming the extra
# instead of a traceback after the work is done.
EXTRAS: dict[str, tuple[str, ...]] = {
    "batch": ("pyarrow",),
    "serve": ("fastapi", "uvicorn", "redis", "prometheus_client", "python_multipart", "httpx"),
    "redis": ("redis",),
}
EXTRA_OF = {"redis": "serve"}      # a sub-set of an extra installs with the extra


def missing_extras(needs: tuple[str, ...]) -> list[tuple[str, str]]:
    """(extra, module) pairs that cannot be imported. A module the system gave no memory to load (`import pyarrow`
    under a low `ulimit -v`: its library "failed to map segment") is installed: its ImportError is raised, for the
    CLI's `out_of_memory` line, not told as a missing extra ("pip install 'sigma-masks[batch]'" to a user who has)."""
    missing = []
    for extra in needs:
        for module in EXTRAS[extra]:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                if loading_refused(exc):
                    raise
                missing.append((EXTRA_OF.get(extra, extra), module))
    return missing


def check_extras(command: str, needs: tuple[str, ...]) -> None:
    missing = missing_extras(needs)
    if missing:
        extras = sorted({e for e, _ in missing})
        modules = ", ".join(sorted({m for _, m in missing}))
        raise MissingExtraError(f"`{command}` needs {modules}, which this install lacks: "
                                f"pip install 'sigma-masks[{','.join(extras)}]'")


class MissingExtraError(SigmaError):
    code = "missing_extra"


def flag_overrides(overrides: list[str], **flags: Any) -> dict[str, Any]:
    """`--set key=value` items plus the command's own flags (None = not given) as dotted overrides: flags
    are applied before validation, like every other override, never by mutating a validated config."""
    from sigma.config.loader import read_overrides

    merged: dict[str, Any] = dict(read_overrides(overrides))
    merged.update({k: v for k, v in flags.items() if v is not None})
    return merged


class Progress:
    """A progress bar (count, rate, ETA) on a terminal, silence when stderr is piped or redirected.

    The bar is made at the first update, once the total is known: a tqdm bar made with total=0 and given
    its total later never draws (that is how `sigma eval` ran 85 s in silence)."""

    def __init__(self, desc: str, unit: str = "pair", total: int | None = None, enabled: bool | None = None):
        self.desc, self.unit, self.total = desc, unit, total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None

    def _make(self, total: int | None):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, dynamic_ncols=True,
                        smoothing=0.1, disable=not self.enabled)

    def update(self, done: int, total: int | None = None) -> None:
        """Absolute progress: `done` of `total` (the callback form `evaluate(progress=...)` uses)."""
        if self.bar is None:
            self._make(total if total is not None else self.total)
        elif total is not None and total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def advance(self, n: int = 1) -> None:
        if self.bar is None:
            self._make(self.total)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def number_in(meaning: str, low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """argparse `type=` of a float flag that no config field bounds (report and export filters, `--max-shard-mb`):
    a finite number in [low, high] ((low, high] with `low_open`), `meaning` saying what it is ("a confidence in
    [0, 1]"). Its value was checked after parsing and refused as `invalid_config` (`--min-confidence nan`) while
    `--min-confidence abc` was argparse's `bad_arguments`: one flag, two codes for one mistake. Now every bad value
    of such a flag is one `bad_arguments` line naming it. NaN fails too, where a bare comparison would let it through
    and filter out every row, unsaid."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{meaning}, got {text[:100]!r}") from None
        above_low = low < value if low_open else low <= value
        if not (math.isfinite(value) and above_low and value <= high):
            raise argparse.ArgumentTypeError(f"{meaning}, got {value}")
        return value
    return number


#: `type=` of a flag that is a confidence, and of one that is a fraction of the image
CONFIDENCE = number_in("a confidence in [0, 1]", 0.0, 1.0)
AREA = number_in("a fraction of the image in [0, 1]", 0.0, 1.0)


def check_min_max(args: argparse.Namespace, names: list[str]) -> None:
    """A `min_X` flag above its `max_X` (`names`: the flags' attributes) passes no pair: the review page was an
    empty gallery, exit 0. One `bad_arguments` line, as any other mistake in a flag is."""
    for low in (name for name in names if name.startswith("min_")):
        high = "max_" + low[4:]
        lo, hi = getattr(args, low), getattr(args, high, None)
        if high in names and lo is not None and hi is not None and lo > hi:
            raise InputError(f"--{low.replace('_', '-')} {lo:g} is above --{high.replace('_', '-')} {hi:g}: no pair "
                             "could pass both", code="bad_arguments")


def check_outdir(outdir: Path, create: bool = False) -> Path:
    """Refuse an output folder that cannot be one (a file: `out_not_a_folder`; a name too long, a path through
    a file, a read-only place: `bad_outdir`) before any work, not after minutes of it: `create` makes it now,
    which is the only test a permission or a read-only file system answers honestly. The codes every command's
    output folder answers with (`sigma.folderlock.make_out_folder`)."""
    from sigma.folderlock import make_out_folder, refuse_non_folder

    refuse_non_folder(outdir)
    if create:
        make_out_folder(outdir)
    return outdir


def refuse_run_folder(outdir: Path, flag: str, why: str = "this command's config.yaml would replace the run's",
                      others: tuple[str, ...] = ()) -> None:
    """`out_is_run_file` when `outdir` is a batch or training run's own folder (`sigma.io.runmarks.RUN_MARKS`: the
    files that make a folder a run whose config.yaml is its record, one list with training's): `sigma eval --out RUN`
    and `sigma annotate -o RUN` wrote their config.yaml over the run's, and `sigma train --resume RUN` then failed
    `invalid_config` (an eval's keys in a training config): the run could not be continued. A folder inside is fine.
    `why`: what the command would do to the run (`sigma synth --out RUN` put its pairs and manifest among its files).
    A folder inside a run's own folders (`RUN/status`, `RUN/masks/x`, `TRAIN/best`) is refused too
    (`refuse_inside_run`): `sigma annotate -o RUN/status` put its result.json and config.yaml among the shards'
    status files. `others`: the marks (`OUTPUT_MARKS`) of the other commands whose config.yaml this one's would
    replace: `sigma eval --out` into a `sigma annotate -o` folder (its result.json) put the eval's config.yaml over the
    annotation's, which `--config OUT/config.yaml` no longer reran; `sigma annotate -o` into an eval's (metrics.json)
    replaced the eval's, which `sigma eval --config OUT/config.yaml` then refused."""
    from sigma.batch.layout import refuse_inside_run
    from sigma.io.runmarks import OUTPUT_MARKS, RUN_MARKS

    for name, what in OUTPUT_MARKS:
        if name in others and _is_file(outdir / name):
            raise InputError(f"{outdir}: the output folder of {what} (it holds {name}); this command's config.yaml "
                             f"would replace its record. Choose another {flag}", code="out_is_run_file")

    try:
        refuse_inside_run(outdir, flag)
    except OSError:     # a folder on the way not to be looked into: the output folder's own check says why
        pass
    for name, what in RUN_MARKS:
        if _is_file(outdir / name):
            raise InputError(f"{outdir}: the folder of {what} (it holds {name}); {why}. Choose another {flag} (a new "
                             "folder inside the run is fine)",
                             code="out_is_run_file")


# what POSIX promises at the least when the system cannot say (`os.pathconf` of a folder that is not there)
NAME_MAX, PATH_MAX = 255, 4096


def path_too_long(filename: str | bytes | os.PathLike) -> str:
    """The message of `path_too_long` (ENAMETOOLONG on a path no check of a command's own named first: `sigma eval
    --data`, `sigma batch run CORPUS`, `sigma report RUN`, `sigma export ... RUN`, `sigma parse --file`): which limit
    the path is over, the part of it over NAME_MAX or the whole over PATH_MAX, in bytes as the system counts them.
    It was `os_error` ("File name too long"), the code for a machine's refusal, naming neither limit."""
    raw = os.fsencode(filename)
    longest = max(raw.split(b"/"), key=len)
    where = os.path.dirname(os.path.abspath(raw)) or b"/"
    while where != b"/" and not os.path.isdir(where):
        where = os.path.dirname(where)
    name_max, path_max = (_limit(where, "PC_NAME_MAX", NAME_MAX), _limit(where, "PC_PATH_MAX", PATH_MAX))
    if len(longest) > name_max:
        part = "its name" if longest == os.path.basename(raw) else "a folder's name in it"
        return (f"{os.fsdecode(raw)}: too long a path for this system: {part} is {len(longest)} bytes, over the "
                f"{name_max} a file or folder name may have (NAME_MAX); name a shorter one")
    return (f"{os.fsdecode(raw)}: too long a path for this system: it is {len(os.fsencode(os.path.abspath(raw)))} "
            f"bytes from the root, over the {path_max} a path may have (PATH_MAX); name a shorter one")


def _limit(folder: bytes, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def _is_file(path: Path) -> bool:
    """`Path.is_file`, False where it raises (a name too long, a folder not to be looked into): the output folder's
    own check (`check_outdir`, the command's hold) says why in its words (`bad_outdir`), not `os_error` here."""
    try:
        return path.is_file()
    except OSError:
        return False


def check_outfile(text: str | Path, example: str = "out.json") -> Path:
    """An output *file* (a COCO JSON, the review page) refused before the work when it names a folder, lies
    under a file, or would overwrite a batch run's own files (run.json, status, shards), instead of after it.
    `text` is the path as typed: one ending in `/` (or `/.`, `/..`) names a folder even where none is yet, and
    `Path` drops that slash — `sigma report RUN --out RUN/zz/` wrote a file named `zz`. `example`: a file name to
    suggest in it."""
    from sigma.batch.layout import is_stream, refuse_folder, refuse_run_file
    from sigma.errors import InputError
    from sigma.folderlock import probe_writable

    raw = os.fspath(text)
    if raw.endswith(("/", os.sep)) or os.path.basename(raw) in (".", ".."):
        raise InputError(f"{raw}: names a folder (it ends in {'/' if raw.endswith(('/', os.sep)) else raw[-2:]!r}); "
                         f"name the file to write, e.g. {os.path.join(raw, example)}", code="out_is_a_folder")
    path = Path(raw)
    try:
        refuse_folder(path)
        refuse_run_file(path)
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise InputError(f"{path}: {parent} is not a folder", code="bad_outdir")
        if not is_stream(path):
            # the file is written beside itself and renamed (or its folders made here): a read-only mount, a folder
            # whose mode refuses writes, a full inode table were `os_error` naming `.report.html.PID.RANDOM.tmp` once
            # the whole page was built (thumbnails of every pair), not `bad_outdir` before any work as a folder is
            probe_writable(parent)
    except OSError as exc:
        raise InputError(f"{path}: not a usable output file ({exc.strerror or exc})", code="bad_outdir") from exc
    return path
