"""Text users hand us that the standard library chokes on: lone UTF-16 surrogates, and JSON whose
parse fails with something other than a JSONDecodeError.

`json.loads` turns `"\\ud800"` into a str holding a lone surrogate, which no UTF-8 encoder accepts, and a
file name that is not UTF-8 reaches Python with its bad bytes as surrogates (`\\udcff`): the first print,
hash, file name or parquet row that touches either raises. Where it is found (`find_surrogate`): the API
refuses the request (422 `invalid_text`) and a pairs.jsonl record is refused (`invalid_text`); a batch run,
which must go on, keeps names escaped (`escape_surrogates`: two ids stay two) and gives instructions U+FFFD
(`replace_surrogates`). `loads` is `json.loads` for files and streams users give us (pairs.jsonl,
manifests, sidecars, stdin): every failure is a ValueError; `finite` is what we write back: JSON has no NaN
or infinity (Python writes them, strict parsers — JSON.parse, jq — refuse the file), so they become null.
`json_ready` / `json_text` are what a plugin's extras become in every front end's output (batch rows, service
results, `sigma annotate`'s result.json): one conversion, so all write the same JSON for the same extras.
Bottom layer: the API, the readers and the writers share it.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import numpy as np

from sigma.errors import ConfigError

_SURROGATE = re.compile("[\ud800-\udfff]")
# The longest time a config field (`sigma.config.schema.Seconds` and its kin) or a wait a deployment sets in the
# environment (`$SIGMA_FOLDER_LOCK_WAIT_S`, `$SIGMA_MODEL_LOCK_WAIT_S`) may say: 30 days. Here, in the bottom layer,
# so that the folder locks, below the config, read their waits against the same bound; why 30 days: the comment
# above `sigma.config.schema._at_most`, which reads config fields against it.
MAX_DURATION_S = 30 * 86_400
# a user-given name or id in a message: longer ones are cut (`shown`); a whole message, at most MAX_MESSAGE
SHOWN_LIMIT = 64
MAX_MESSAGE = 2000
# a value in a line a person reads to find a file (a CLI error line, a failed shard's reason in a run's summary): a
# run of more than 2 * PATH_SHOWN characters is cut to PATH_SHOWN; wider than SHOWN_LIMIT, as paths of 130 to 320
# characters (a corpus's nested folders) are common and are what the reader needs whole
PATH_SHOWN = 160
_LONG_TOKEN = re.compile(r"[^\s'\"]+")


def nearest(name: str, known: Any) -> str | None:
    """The name of `known` closest to `name` (a typo's), None when none is close: the one did-you-mean of the
    registries' unknown names (`sigma.registry.did_you_mean`) and the config's unknown keys (`sigma.config.loader`).
    A name of more than 256 characters is compared with none (difflib is quadratic in its length). Case and width
    are no typo's: `--annotator PIXEL-DIFF`, `--set IO.align=true` or a full-width `ｉｏ.align` (an input method's)
    had no did-you-mean (difflib compares characters as they are: 'IO' and 'io' share none), so the name that
    differs from one only so (NFKC, casefolded) is that one; else the nearest as written, then as folded."""
    if len(name) > 256:
        return None
    names = [str(k) for k in known]
    folded: dict[str, str] = {}
    for known_name in names:
        folded.setdefault(_folded(known_name), known_name)
    if (same := folded.get(_folded(name))) is not None:
        return same
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    if close:
        return close[0]
    close = difflib.get_close_matches(_folded(name), list(folded), n=1, cutoff=0.5)
    return folded[close[0]] if close else None


def _folded(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def shown(value: Any, limit: int = SHOWN_LIMIT) -> str:
    """A user-given value as a message echoes it: cut in the middle past `limit` characters, with its length
    said. A 1 MiB name in a request (a preset, an annotator, a job id) came back whole in the answer and the log."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}…{text[-(limit // 2):]} ({len(text)} characters)"


# the largest integer a limit set in the environment may be when its reader gives no bound of its own: a count
# that fits a signed 64-bit integer with room for `limit + 1` (`$SIGMA_MAX_RUN_BYTES` became `read(limit + 1)`, and
# a 500-digit value was an OverflowError traceback in every reader of run.json)
ENV_INT_MOST = 2 ** 62


def env_text(name: str, env: Mapping[str, str] | None = None) -> str:
    """`$name` stripped, "" when unset or blank: the one reading of the convention that a blank variable is an unset
    one (an `export X=` or a template's empty value), for `SIGMA_*` settings, torchrun's and Ray's variables."""
    return (os.environ if env is None else env).get(name, "").strip()


def positive_int_env(name: str, default: int, what: str, most: int = ENV_INT_MOST, *, says_most: bool = False,
                     least: int = 1) -> int:
    """A size limit or a wait a deployment sets in the environment (`$SIGMA_MAX_MODEL_PARAMS`,
    `$SIGMA_MAX_RUN_BYTES`, `$SIGMA_FOLDER_LOCK_WAIT_S`, `$SIGMA_MODEL_LOCK_WAIT_S`): read wherever the limit
    applies, before any config of the command exists. Here in the bottom layer (it was sigma.config.loader's) so
    that `sigma.folderlock` reads its wait the same way. A positive whole number (`1e8` and `100_000_000` are read
    too), at most `most` (the waits: MAX_DURATION_S; else ENV_INT_MOST), `default` when unset; anything else is a
    ConfigError saying `what` the limit is. The waits had no upper bound: `1e300` was taken as a wait of 10**300 s (for
    ever), and a 500-digit integer was an OverflowError traceback where the wait became a deadline
    (`time.monotonic() +`). A fraction (`2.5`, `1000.7`) was cut by int() to 2 and 1000 without a word; now refused,
    saying a whole number is needed. A value past `most` is told `, at most MOST` after `what`, unless `says_most`:
    `what` says the bound already (the waits' WAIT_RULE). That was guessed from `str(most) in what`, so a `what` whose
    digits merely held the bound's (`up to 10000 files`, bound 100) never said it. `least`: 0 for torchrun's
    `$RANK` / `$LOCAL_RANK` (`sigma.training.world`), read by this one parser too."""
    raw = env_text(name).replace("_", "")
    if not raw:
        return default
    value = _env_number(raw)
    if (isinstance(value, float) and not math.isfinite(value)) or value < least:
        raise ConfigError(f"${name}={shown(raw, 40)!r}: {what}")
    if isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"${name}={shown(raw, 40)!r}: {what} ({shown(raw, 40)} is not a whole number)")
    if value > most:
        raise ConfigError(f"${name}={shown(raw, 40)!r}: {what}" + ("" if says_most else f", at most {most}"))
    return int(value)


def _env_number(raw: str) -> int | float:
    """`raw` as an exact integer when it is one (of up to 4300 digits, Python's bound on int()), else as a float
    (`1e8`, `2.5`; a longer integer reads as infinity); NaN when it is no number at all."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return math.nan


def printable(value: Any) -> str:
    """`value` as a terminal line may show it: every character `repr` would escape (NUL, ESC and the other C0 and C1
    controls, DEL, line breaks and tabs, U+2028, the invisible format characters such as the bidi overrides) as
    `repr` writes it (`\\x1b`, `\\n`, `\\u202e`), a name's other characters as they are (é, 日本, emoji sequences
    with their joiners, `_shown_as_is`); a lone surrogate (a non-UTF-8 byte of a file name) is left to the
    stream, which writes the byte back on stdout and escapes it on stderr (`sigma.cli._printable_names`).

    The one owner of that rule for every line the CLI prints that holds a user-given name or text (a pair id, a
    folder, a set name, a message embedding them; `sigma.cli.common.said` for every error line): a file named
    `$'a\\x1b[2Jb\\nFAKE.png'` cleared the terminal and forged a line of its own in `sigma annotate`'s status line.
    Not for JSON output (JSON escapes it already) nor for the files written, which keep the true name."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if _shown_as_is(c) else repr(c)[1:-1] for c in text)


# What `str.isprintable` calls unprintable but a terminal shows as the name meant it, with no control of the line:
# spaces other than ' ' (the ideographic U+3000 of a Japanese name, a no-break space), the joiners of emoji sequences
# (👨‍👩‍👧, 🏳️‍🌈) and of Persian or Indic words (ZWJ, ZWNJ), characters newer than Python's Unicode tables (an emoji
# of Unicode 15 under Python 3.11: 'unassigned' here) and private-use ones (icon fonts). These were escaped too, a
# legitimate name printed as `👨\u200d👩\u200d👧`; the controls, line separators, bidi overrides and the other
# invisible format characters are escaped still.
_AS_IS_CATEGORIES = frozenset({"Zs", "Cn", "Co", "Cs"})     # Cs: a lone surrogate, left to the stream
_JOINERS = frozenset({"\u200c", "\u200d"})


def _shown_as_is(char: str) -> bool:
    return char.isprintable() or char in _JOINERS or unicodedata.category(char) in _AS_IS_CATEGORIES


def shown_path(path: Any, limit: int = 240) -> str:
    """A path as an error message shows it: NUL and control characters escaped (`printable`; lone surrogates too:
    an API answer cannot carry one), a long one cut in the middle (a corpus can name a 6000-character path: the
    message repeated it whole in every row and log line; a 5000-character `options.weights` likewise). 240: a batch
    root's path, which the API's answers hide, stays whole. Here, in the bottom layer, for the image readers and the
    models' weights checks alike."""
    return shown(escape_surrogates(printable(path)), limit)


def cut_long_values(message: str, limit: int = MAX_MESSAGE, token_limit: int = SHOWN_LIMIT) -> str:
    """A message built elsewhere from user-given values (a library's "unknown preset 'x…'"): every run of more
    than 2 * `token_limit` characters without a space or quote is cut to `token_limit` (`shown`), then the whole
    message to at most `limit` characters, its length said as `shown` says it.

    The punctuation that ends a run (`TRAILING_PUNCTUATION`: the colon after a path, a sentence's full stop) is not
    the value: it stays after the `(N characters)` note, and N counts the value alone. It was cut with the value:
    `xxx…xxx: (5001 characters) not a usable output folder`. And the whole message came out longer than `limit`
    (`shown` adds its note past the limit), so cutting a cut message again cut it once more, its note then saying
    the length of the first cut: a message cut here (`batches.scrub`) and again where every answer is built
    (`sigma.api.errors.ApiError`) said two lengths. A message this returns now comes back unchanged from it."""
    message = _LONG_TOKEN.sub(lambda m: _cut_token(m.group(0), token_limit), message)
    if len(message) <= limit:
        return message
    note = f" ({len(message)} characters)"
    return shown(message, max(limit - len(note) - 1, 2))


# what ends a value in a sentence, kept after a cut value's `(N characters)`; a longer run of it is a value
TRAILING_PUNCTUATION = ":,.;)"
_MOST_TRAILING = 3


def _cut_token(token: str, token_limit: int) -> str:
    """`token` (no space or quote in it) as `cut_long_values` says it: whole up to 2 * `token_limit` characters,
    else cut (`shown`) with the punctuation it ends with (at most `_MOST_TRAILING` characters) kept after the cut."""
    value = token.rstrip(TRAILING_PUNCTUATION)
    if len(token) - len(value) > _MOST_TRAILING:
        value = token
    if len(value) <= 2 * token_limit:
        return token
    return shown(value, token_limit) + token[len(value):]


PLACE_CHARS = 120      # the most of a value's place (`a.b[2]`) `find_surrogate` says


def find_surrogate(value: Any, where: str = "") -> str | None:
    """The location (`a.b[2]`, `<key>`) of the first string holding a lone surrogate, or None; its first
    `PLACE_CHARS` characters.

    Each place is kept to that length as it is made, since only that much is ever said: spelt in full, the place of
    every value was made before it was looked at, and a 206 KB JSON body (ten 20 000-character keys around a list of
    2000 numbers) made 2000 places of 200 000 characters, 400 MB, on the API's request path (4.5 MB: terabytes)."""
    stack: list[tuple[Any, str]] = [(value, where[:PLACE_CHARS])]
    while stack:
        item, loc = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return loc or "<body>"
        elif isinstance(item, dict):
            for key, val in item.items():
                if isinstance(key, str) and not key.isascii() and _SURROGATE.search(key):
                    return (f"{loc}.<key>" if loc else "<key>")[:PLACE_CHARS]
                stack.append((val, _place(loc, ".", str(key)) if loc else str(key)[:PLACE_CHARS]))
        elif isinstance(item, list):
            stack.extend((val, _place(loc, "", f"[{i}]")) for i, val in enumerate(item))
    return None


def _place(loc: str, sep: str, part: str) -> str:
    """`loc + sep + part`, no longer than `PLACE_CHARS` (nothing is added to a place already that long)."""
    if len(loc) >= PLACE_CHARS:
        return loc
    return (loc + sep + part[:PLACE_CHARS])[:PLACE_CHARS]


def has_words(text: str) -> bool:
    """Whether `text` holds a letter or digit of any script: a word some parser can read. Every parser backend
    (`sigma.parse`) reads text without one ("🐶🐱", "!!!", "→") as no edit at all, the parse of no instruction, so
    the front ends refuse it as they refuse a blank one (`empty_instruction`), not annotate or print it as if the
    text had said there is no edit."""
    return any(ch.isalnum() for ch in text)


def is_blank(text: str) -> bool:
    """Whether `text` shows nothing: only whitespace, format characters (zero-width space and joiners, the BOM,
    direction marks: Unicode Cf) and control characters. `str.strip()` keeps U+200B, so an instruction of one
    zero-width space was accepted as words and parsed into nothing. Stops at the first visible character."""
    return not any(not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Cc") for ch in text)


# a control character (Unicode Cc) that is not whitespace: NUL, ESC, DEL, the C1 block but NEL
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")


def find_control(text: str) -> tuple[int, str] | None:
    """`(index, character)` of the first control character in `text` that is not whitespace, or None.

    Whitespace controls (tab, line breaks, \\x1c-\\x1f, NEL) are spaces to an instruction; the others are never
    words. A NUL ends the text for a C library a parser may hand it to (a tokenizer, a terminal showing a log),
    and an escape sequence (`"replace the\\x1b[2J dog"`) made the rules parser lose the source without a word."""
    found = _CONTROL.search(text)
    return None if found is None else (found.start(), found.group())


def replace_surrogates(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def escape_surrogates(text: str) -> str:
    """Each lone surrogate as the six characters `\\udXXX`: for names (pair ids, sources), where two
    different ids must stay different — U+FFFD would merge `\\udcff` and `\\udcfe` (the non-UTF-8 bytes
    0xFF and 0xFE of two file names) into one id."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# a run of backslashes just before a `u` or a lone surrogate (`escape_name`), or a lone surrogate itself
_NAME_ESCAPED = re.compile(r"(\\+)(?=[u\ud800-\udfff])|[\ud800-\udfff]")


def escape_name(text: str) -> str:
    """A name (a set's folder, a pair id, a source) as text any reader takes, two names always two: each lone
    surrogate as `\\udXXX` (`escape_surrogates`), and each run of backslashes just before a `u` or a surrogate
    doubled. `escape_surrogates` alone made the folder `s\\xff` (U+DCFF in Python) and a folder named, in plain
    text, `s\\udcff` one name: `sigma eval` scored the two sets as one table row, a batch run gave both one subset.
    Now the text one is `s\\\\udcff` (an even run of backslashes before `u` is text, an odd one ends in an escape);
    names holding no `\\u` and no surrogate are unchanged."""
    if "\\" not in text and not _SURROGATE.search(text):
        return text
    return _NAME_ESCAPED.sub(lambda m: m.group(1) * 2 if m.group(1) else f"\\u{ord(m.group()):04x}", text)


def surrogates_escaped(value: Any) -> Any:
    """Plain JSON `value` (dicts, lists, text, numbers) with every lone surrogate of its text, keys included, written
    as the six characters `\\udXXX` (`escape_surrogates`). A name from a file name of non-UTF-8 bytes (a set folder,
    `--data`: the byte 0xFF is the surrogate U+DCFF in Python) was written to metrics.json as the JSON escape
    `"\\udcff"`, a lone surrogate that strict readers (serde_json, many JSON Schema validators) refuse, taking the
    whole file with it; as text (`"s\\\\udcff"` in the file) any reader takes it, and 0xFF and 0xFE stay apart."""
    if isinstance(value, str):
        return escape_surrogates(value)
    if isinstance(value, dict):
        return {escape_surrogates(k) if isinstance(k, str) else k: surrogates_escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [surrogates_escaped(v) for v in value]
    return value


def loads(text: str | bytes) -> Any:
    """`json.loads`, every failure a ValueError (JSONDecodeError is one). CPython also raises a bare
    ValueError for an integer of more than 4300 digits — with advice about sys.set_int_max_str_digits that
    means nothing to the user — and RecursionError for nesting deeper than its stack: a reader that caught
    only JSONDecodeError crashed on either (sigma eval, a batch plan, a shard's instructions file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise ValueError("an integer of more than 4300 digits") from exc
        raise


def dumps_finite(value: Any, **kwargs: Any) -> str:
    """`json.dumps` for every JSON file, line or answer we write: NaN and infinities become null (`finite`) and
    `allow_nan=False` makes sure none is left (a numpy or `default=` value included). It was spelled three ways:
    `finite` + `allow_nan=False`, `finite` alone, and `json.dumps` with neither, which wrote `NaN` into a training
    run's metrics.jsonl (an F1 with no edited pair to score) that JSON.parse and jq refuse."""
    default = kwargs.pop("default", None)
    if default is not None:
        kwargs["default"] = lambda v: finite(default(v))
    return json.dumps(finite(value), allow_nan=False, **kwargs)


# Characters JSON lets a string hold raw that break a reader of lines: DEL and the C1 controls (a terminal acts on
# them; U+0085 is a line break to Python's `str.splitlines`), U+2028/U+2029 (line breaks to JavaScript before ES2019,
# `splitlines` and many editors). They appear only inside JSON strings, so escaping them is always valid.
_LINE_BREAKERS = re.compile("[\x7f-\x9f\u2028\u2029]")


def json_line(value: Any) -> str:
    """One JSON line for a line-oriented reader (JSONL files, one object per stdout line): `dumps_finite` that keeps
    other text readable (ensure_ascii=False: "कुत्ता" stays as written) but writes DEL, C1 controls and U+2028/U+2029
    as `\\uXXXX`. `sigma parse` passed them raw, so `--file` lines split in two for `splitlines` and JS readers."""
    text = dumps_finite(value, ensure_ascii=False)
    return _LINE_BREAKERS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def finite(value: Any) -> Any:
    """NaN and infinities become None, in nested dicts / lists / tuples, numpy scalars included: what a JSON
    file or answer we write may hold (an undefined Spearman rho of a one-pair set is NaN)."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


MAX_ARRAY_ITEMS = 64    # an array in a plugin's extras longer than this is said by its shape and dtype
MAX_JSON_DEPTH = 32     # default of io.limits.max_json_depth: extras nested deeper than this cannot be written


class NotWritable(ValueError):
    """A value `json_ready` cannot turn into JSON: it contains itself, nests deeper than its `max_depth`, or is a
    dict with two keys written as the same JSON key (1 and "1")."""


def unwritable_output(annotator: str, exc: NotWritable) -> str:
    """The one message for a pair whose annotation `json_ready` refused (`annotator_failed`): service results,
    batch rows and `sigma annotate` say the same words for the same extras, so it is built here, once."""
    return f"annotator {annotator!r}: its output for this pair cannot be written as JSON: {exc}"


def json_ready(value: Any, *, sort_keys: bool = False, max_depth: int = MAX_JSON_DEPTH, where: str = "") -> Any:
    """A plugin's extras (any Python value) as plain JSON values, the one conversion of docs/ARCHITECTURE.md's
    output contract: numpy scalars and arrays of up to `MAX_ARRAY_ITEMS` items as numbers, longer arrays as
    `{"array_shape", "dtype"}`, sets as sorted lists, bytes as `{"bytes": n}`, NaN and infinities as null, keys
    that are not strings as JSON writes them (ints, floats, true/false/null) or as text (a tuple), any other object
    as its `str` (by its type name when `str` raises). Batch rows wrote a set as `"{1, 10, 9}"` and bytes as
    `"b'...'"` while service results wrote lists and lengths; and the service's converter recursed until
    RecursionError on a dict that contains itself or a list nested 100 000 deep. Such a value raises `NotWritable`
    saying where (`loop.self`), and depth is bounded by `max_depth`, never by Python's stack. So does a dict whose
    keys would collapse into one JSON key (1 and "1", None and "null"): the later one replaced the other unseen.

    With `sort_keys`, each dict comes out in the order `json.dumps(sort_keys=True)` gives it (its keys sorted as
    they are; as text where they cannot be compared), so `json_text` of plain JSON is byte for byte what
    `json.dumps(value, sort_keys=True)` wrote before."""
    return _ready(value, sort_keys, max_depth, 0, [where] if where else [], set())


def json_text(value: Any, *, max_depth: int = MAX_JSON_DEPTH, where: str = "") -> str:
    """`json_ready` with sorted keys, as one line of text (a manifest column): for plain JSON exactly
    `json.dumps(value, sort_keys=True)`; raises `NotWritable` (a ValueError) as `json_ready` does."""
    return json.dumps(json_ready(value, sort_keys=True, max_depth=max_depth, where=where), allow_nan=False)


def _ready(value: Any, sort_keys: bool, limit: int, depth: int, path: list[str], seen: set[int]) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _ready(value.item(), sort_keys, limit, depth, path, seen)
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if isinstance(value, memoryview):
        return {"bytes": value.nbytes}
    if isinstance(value, np.ndarray) and value.size > MAX_ARRAY_ITEMS:
        return {"array_shape": list(value.shape), "dtype": str(value.dtype)}
    if not isinstance(value, (dict, list, tuple, set, frozenset, np.ndarray)):
        return _text(value)
    where = "".join(path) or "<value>"
    if id(value) in seen:
        raise NotWritable(f"a value that contains itself (at {shown(where, 120)})")
    if depth >= limit:
        raise NotWritable(f"a value nested deeper than {limit} levels (at {shown(where, 120)}; max_json_depth)")
    seen.add(id(value))
    try:
        if isinstance(value, np.ndarray):        # an object array may hold itself: still the same id
            return _ready(value.tolist(), sort_keys, limit, depth, path, seen)
        if isinstance(value, dict):
            return _ready_dict(value, sort_keys, limit, depth, path, seen)
        out = []
        for n, item in enumerate(value):
            path.append(f"[{n}]")
            out.append(_ready(item, sort_keys, limit, depth + 1, path, seen))
            path.pop()
        if isinstance(value, (set, frozenset)):
            out = _sorted_items(out)
        return out
    finally:
        seen.discard(id(value))


def _ready_dict(value: dict, sort_keys: bool, limit: int, depth: int, path: list[str], seen: set[int]) -> dict:
    items = [(key, _key_text(key), val) for key, val in value.items()]
    if sort_keys:
        try:   # json.dumps(sort_keys=True) sorts the keys as they are (ints as numbers): rows stay byte-identical
            if not all(key is None or isinstance(key, (str, int, float)) for key, _, _ in items):
                raise TypeError
            items.sort(key=lambda kv: kv[0])
        except TypeError:
            items.sort(key=lambda kv: kv[1])
    out: dict[str, Any] = {}
    owners: dict[str, Any] = {}
    for key, text, val in items:
        if text in owners:
            # {1: "a", "1": "b"} (a plugin's dict, a parquet map column): both are the JSON key "1", and the
            # later one silently replaced the other
            raise NotWritable(f"keys {_key_shown(owners[text])} and {_key_shown(key)} are both the JSON key "
                              f"{json.dumps(shown(text, 60))} (at {shown(''.join(path) or '<value>', 120)})")
        owners[text] = key
        path.append(f".{text}" if path else text)
        out[text] = _ready(val, sort_keys, limit, depth + 1, path, seen)
        path.pop()
    return out


def _key_text(key: Any) -> str:
    """A dict key as `json.dumps` writes it (True -> "true", 1.5 -> "1.5"); any other key as its text."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    return _text(key)


def _key_shown(key: Any) -> str:
    """A dict key as a message names it: its repr (1 and '1' must read differently), cut; by type if repr raises."""
    try:
        return shown(repr(key), 60)
    except Exception:  # noqa: BLE001 - a plugin object whose __repr__ raises is said by its type
        return f"<{type(key).__name__}>"


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a plugin object whose __str__ raises is said by its type
        return f"<{type(value).__name__}>"


def _sorted_items(items: list[Any]) -> list[Any]:
    """A set's items in order: as they compare, else (mixed types, dicts) by their JSON text."""
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=lambda v: (type(v).__name__, json.dumps(v, sort_keys=True)))
