"""Turn an HTTP body (multipart or JSON with base64 images) into bytes + validated options.

Parsing is done by hand rather than by FastAPI parameters so that one route accepts both content
types and every malformed body gets a stable error code instead of a framework default. JSON is held to
RFC 8259 where Python's parser is laxer: NaN/Infinity and integers of more than 4300 digits are `bad_json`
(400), a string holding a lone UTF-16 surrogate (`"\\ud800"`, or its raw bytes) is `invalid_text` (422): such
text cannot be encoded, stored or answered faithfully, so it is refused rather than silently changed. A body nested
deeper than `MAX_BODY_DEPTH` levels is `bad_json` too: Python's parser takes ~950, but the code that walks a body
after it (copying a batch's options: two frames a level) ran out of stack at ~480, a 500 internal_error.
An object that names one key twice (`{"instruction": "a", "instruction": "b"}`) is `bad_json` naming the key: RFC 8259
(4) leaves such an object's meaning to the parser, Python's keeps the last value silently, and a proxy or a client
library that keeps the first would have sent one job while the API queued another.
The body is streamed into one buffer and dropped as soon as it is parsed, base64 is decoded without
intermediate copies, and multipart files above `api.multipart_spool_bytes` are spooled to disk. A file part is
counted while it streams in: one above `limits.max_bytes` is 413 `file_too_large` at once, with the connection
closed (after a bounded lingering discard of the rest, `sigma.api.server`), instead of being spooled whole, read
into memory and only then refused by the decoder.

Text is UTF-8 whichever way it comes. RFC 8259 (8.1) asks JSON exchanged between systems to be UTF-8: a body in
UTF-16 or UTF-32 (which `json.loads(bytes)` would guess and read) is `bad_json` "not UTF-8 text"; a UTF-8 byte order
mark is skipped (8.1 lets a parser ignore one, and Windows tools write it). A multipart text field is held to the
same (`_LimitedParser`): Starlette decodes it by the body's `charset` and, where that fails or names no codec, as
Latin-1, so `\xff\xfe` was queued as "ÿþ" where the same bytes in JSON are refused. A field that is not UTF-8, or
that declares (its part's `Content-Type`, or the body's) a charset other than UTF-8 or US-ASCII, is 422
`invalid_text` naming it. Why not decode a declared charset: browsers send the page's encoding (UTF-8) unlabelled,
no client we serve labels another, JSON cannot carry one, and text that reaches the parser and the detector must
mean one thing whichever route brought it; a label is refused, not guessed at.
"""
from __future__ import annotations

import binascii
import codecs
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

import python_multipart.multipart
from fastapi import Request
from pydantic import Field, ValidationError
from python_multipart.exceptions import MultipartParseError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser, MultipartPart, parse_options_header

from sigma.api.errors import ApiError, validation_message
from sigma.api.middleware import BodyReadAborted
from sigma.config.schema import NonNegative, Strict, UnitInterval
from sigma.text import find_surrogate, shown
from sigma.types import MaskMode

MAX_INT_DIGITS = 4300          # CPython's own default limit, enforced whatever the interpreter is set to
# the deepest JSON body read: the routes' own bodies nest 3 levels (a batch's options.detector.weights), and the code
# that walks a body (pydantic, copying a batch's options, hashing its config) stays far from Python's stack limit
MAX_BODY_DEPTH = 64

OUTPUTS = ("rle", "png", "prob")
OPTION_FIELDS = ("instruction", "annotator", "threshold", "mask_mode", "outputs", "wait")


class AnnotateOptions(Strict):
    instruction: str | None = Field(None, description="the edit instruction, e.g. 'remove the boat'")
    annotator: str | None = Field(None, min_length=1, description="registry name; default: the first of api.annotators")
    # UnitInterval: `threshold=nan` (a form field) or `1e400` (JSON reads it as inf) is "a finite number in [0, 1]",
    # not "less than or equal to 1"; under strict validation `true` is still no number
    threshold: UnitInterval | None = Field(None, description="mask = prob > threshold")
    mask_mode: MaskMode | None = Field(
        None, description="which mask is *the* mask (segmentation, area, bbox, png): auto = the synthesised "
        "footprint on composites, the semantic mask elsewhere; both are reported either way. Default: the "
        "annotator's (auto for the SIGMA models; baselines keep their own mask unless one is asked for)")
    outputs: list[Literal["rle", "png", "prob"]] = Field(
        default_factory=lambda: ["rle"], description="rle (always included), png (base64 mask PNG), "
        "prob (base64 8-bit probability PNG)")
    # NonNegative: `wait=nan` said "greater than or equal to 0" (NaN fails every comparison); inf is no wait either
    wait: NonNegative | None = Field(None, description="seconds POST /v1/annotate waits before answering 202 "
                                     "(a finite number >= 0, capped at api.max_wait_timeout_s)")


class AnnotateJson(AnnotateOptions):
    original: str = Field(description="base64 of the original image file (PNG/JPEG/WebP/TIFF/BMP)")
    edited: str = Field(description="base64 of the edited image file")


@dataclass
class Submission:
    original: bytes
    edited: bytes
    options: AnnotateOptions


def _options(raw: dict, strict: bool = False) -> AnnotateOptions:
    """`strict` for JSON, whose values carry their own types: `"threshold": true` is a 422, not 1.0 (an empty mask);
    multipart fields are text, converted as pydantic does."""
    try:
        return AnnotateOptions.model_validate(raw, strict=strict)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_message(exc)) from exc


FORM_NUMBERS = ("threshold", "wait")
# a number as text (a form field, a query parameter) is plain decimal: pydantic parses text with Python's rules, so
# `wait=0_5` waited 5 s, `threshold=0.1_0` was 0.1, `+0.5`, ` 0.5 ` and `1_000` were numbers; ASCII digits only
PLAIN_DECIMAL = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
PLAIN_INTEGER = re.compile(r"-?[0-9]+")
_NOT_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)    # left to the field's own "finite" message


def plain_number(name: str, text: str, integer: bool = False) -> None:
    """Refuse `text` (422 `invalid_request`) unless it is a number written in plain decimal: ASCII digits, a leading
    `-`, for a float one `.` and an exponent. `nan` / `inf` are left to the field, which says it wants a finite one."""
    if (PLAIN_INTEGER if integer else PLAIN_DECIMAL).fullmatch(text) or (not integer and _NOT_FINITE.fullmatch(text)):
        return
    example = "an integer in decimal digits (5)" if integer else "a number in plain decimal (0.5, 1e-1)"
    raise ApiError(422, "invalid_request", f"{name}: Input should be a valid number, {example}, got {shown(text)!r} "
                   "('_' separators, a '+' sign, spaces, hex and digits other than 0-9 are refused)")


def _b64(text: Any, name: str) -> bytes:
    if not isinstance(text, str):
        raise ApiError(422, "invalid_request", f"{name}: Input should be a valid string (base64)")
    try:    # one pass, no copy: a2b_base64 reads an ASCII str directly; strict = b64decode(validate=True)
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", f"{name}: not valid base64 ({exc})") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a number has more than {MAX_INT_DIGITS} digits")
    return int(text)


class DuplicateKey(ValueError):
    """An object of the body names `key` twice."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads`'s object hook: the object as a dict, or `DuplicateKey` for the first key it names twice."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def parse_json(body: bytes | bytearray) -> Any:
    """RFC 8259 JSON → Python, at most `MAX_BODY_DEPTH` lists / objects deep, each object's keys unique; anything
    Python's parser would raise on, a key named twice in one object, and anything nested deeper, become 400
    bad_json."""
    deep = ApiError(400, "bad_json", f"body is nested more than {MAX_BODY_DEPTH} levels deep")
    try:
        text = _utf8(body)
        data = json.loads(text, parse_int=_int, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
        del text
    except RecursionError as exc:
        raise deep from exc
    except DuplicateKey as exc:
        raise ApiError(400, "bad_json", f"body names the key {shown(json.dumps(exc.key))} twice in one object: "
                       "send each key once (which value was meant is ambiguous)") from exc
    except json.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON ({exc.msg} at line {exc.lineno} column "
                       f"{exc.colno})") from exc
    except ValueError as exc:       # parse_int / parse_constant (and CPython's own int limit)
        raise ApiError(400, "bad_json", f"body is not valid JSON: {str(exc)[:200]}") from exc
    if nested_deeper(data, MAX_BODY_DEPTH):
        raise deep
    return data


def _utf8(body: bytes | bytearray) -> str:
    """The body as text: UTF-8, a byte order mark skipped (RFC 8259 8.1 lets a parser ignore one). `json.loads(bytes)`
    guesses UTF-16 and UTF-32 too (from a BOM or the NULs of ASCII text), so such a body was read as if it were UTF-8;
    8.1 asks JSON between systems to be UTF-8 (`bad_json` "not UTF-8 text"; multipart text is held to it too).
    `surrogatepass`, as `json.loads(bytes)` decodes: the raw bytes of a lone surrogate stay one, for
    `find_surrogate`'s 422 invalid_text."""
    encoding = json.detect_encoding(body)
    if encoding not in ("utf-8", "utf-8-sig"):
        raise ApiError(400, "bad_json", f"body is not valid JSON (not UTF-8 text: it reads as {encoding.upper()}; "
                       "RFC 8259 asks JSON exchanged between systems to be UTF-8)")
    skip = len(codecs.BOM_UTF8) if encoding == "utf-8-sig" else 0
    try:
        return str(memoryview(body)[skip:], "utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON (not UTF-8 text: {exc.reason} at byte "
                       f"{exc.start + skip})") from exc


def nested_deeper(value: Any, max_depth: int) -> bool:
    """Whether `value` holds lists / dicts more than `max_depth` deep (the top one is level 1); without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _too_large(max_bytes: int, how: str) -> ApiError:
    # the rest of the body is not parsed: the connection cannot carry another request, and left open it drained what
    # the client kept sending (an endless chunked body: for api.body_timeout_s) after the answer had gone out. The
    # close is a lingering one (sigma.api.server): the rest is discarded within api.close_linger_s/_bytes first, so a
    # client that writes its whole body before reading gets this answer, not a connection reset
    return ApiError(413, "request_too_large", f"this route takes a JSON body of at most {max_bytes} bytes; {how}",
                    {"Connection": "close"})


def refuse_content_encoding(request: Request) -> None:
    """415 `unsupported_content_encoding` (with `Accept-Encoding: identity`, RFC 9110 15.5.16) for a body sent
    with any `Content-Encoding` but `identity`, before a byte of it is read. The header was ignored: a gzip body was
    read as the JSON it is not (400 `bad_json`, "not UTF-8 text", blaming the JSON) and a plain body labelled gzip
    was taken as plain. The service inflates nothing, so a gzip bomb costs no more than its own bytes, which
    `limits.max_request_bytes` bounds as any body's."""
    codings = [token.strip().lower() for line in request.headers.getlist("content-encoding")
               for token in line.split(",")]
    sent = [token for token in codings if token and token != "identity"]
    if sent:
        raise ApiError(415, "unsupported_content_encoding", f"Content-Encoding {shown(', '.join(sent))!r}: this "
                       "service reads request bodies as sent; send them uncompressed (no Content-Encoding)",
                       {"Accept-Encoding": "identity"})


def media_type(request: Request) -> str:
    """The body's media type (`multipart/form-data`, lower-cased; "" for none) from its one Content-Type. Two
    Content-Type fields of different values, or a multipart type naming its boundary twice, are refused (400
    `bad_request`, `malformed_multipart`), as a Content-Length beside Transfer-Encoding is: the API read the first
    field and the last boundary, so `multipart; boundary=A` then `application/json` was read as multipart and
    `boundary=B; boundary=A` as A, where a proxy or filter in front may read the other one (a JSON body it inspected,
    a multipart body the API took)."""
    values = list(dict.fromkeys(line.strip() for line in request.headers.getlist("content-type")))
    if len(values) > 1:
        raise ApiError(400, "bad_request", f"Content-Type is sent {len(values)} times with different values "
                       f"({', '.join(repr(shown(v)) for v in values[:3])}): send it once")
    value = values[0] if values else ""
    mime = value.split(";")[0].strip().lower()
    if mime == "multipart/form-data":
        named = [param for param in value.split(";")[1:] if param.strip().lower().startswith("boundary=")]
        if len(named) > 1:
            raise ApiError(400, "malformed_multipart", f"the Content-Type names its boundary {len(named)} times "
                           f"({shown(value)!r}): name it once")
        boundary = parse_options_header(value)[1].get(b"boundary", b"")
        if len(boundary) > MAX_BOUNDARY_CHARS:
            # python-multipart refuses it in its constructor, which Starlette answered "Invalid multipart data."
            raise ApiError(400, "malformed_multipart", f"the Content-Type's boundary has {len(boundary)} characters, "
                           f"over the {MAX_BOUNDARY_CHARS} this server reads (RFC 2046 5.1.1 allows 1 to 70): send a "
                           "shorter one")
    return mime


MAX_BOUNDARY_CHARS = getattr(python_multipart.multipart, "MAX_BOUNDARY_LENGTH", 256)    # python-multipart's bound


async def read_body(request: Request, max_bytes: int | None = None) -> bytearray:
    """The whole body in one buffer (no second copy; nothing cached on the request). Over `max_bytes`: 413
    `request_too_large`, the connection closed, refused by its Content-Length before a byte is read (a head that
    declared 4 MB and sent nothing waited for api.body_timeout_s and got 408), else as soon as the bytes read pass
    it (a chunked body has no length)."""
    if max_bytes is not None:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and (len(declared) > 20 or int(declared) > max_bytes):
            raise _too_large(max_bytes, f"this one declares {declared[:24]} (Content-Length); not read")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if max_bytes is not None and len(body) > max_bytes:
            raise _too_large(max_bytes, "refused while it was arriving, the rest not read")
    return body


async def read_json_object(request: Request, max_bytes: int | None = None) -> dict[str, Any]:
    """A JSON object body (`parse_json`: RFC 8259, at most `MAX_BODY_DEPTH` deep), checked for text that cannot be
    represented (lone surrogates → 422 invalid_text)."""
    refuse_content_encoding(request)
    body = await read_body(request, max_bytes)
    if not body:
        raise ApiError(400, "bad_json", "empty body: send a JSON object")
    data = parse_json(body)
    del body
    where = find_surrogate(data)
    if where is not None:
        raise ApiError(422, "invalid_text", f"{where}: a string holds a lone UTF-16 surrogate (e.g. \\ud800); "
                       "JSON text must be valid Unicode")
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", f"body must be a JSON object, got {json_kind(data)}")
    return data


def json_kind(value: object) -> str:
    """A parsed JSON value's type as JSON names it (`null`, `array`), not Python's (`NoneType`, `list`): the
    client wrote JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {list: "an array", str: "a string", int: "a number", float: "a number"}.get(type(value), "a value")


# python-multipart's bound on one header line of a part (its Content-Disposition: the field's name and filename);
# Starlette builds the parser with the default, so it is this API's bound too. Older releases had none
PART_HEADER_LINE_BYTES: int = getattr(python_multipart.multipart, "DEFAULT_MAX_HEADER_SIZE", 4096 + 128)


def header_line_too_long(line: bytes) -> str:
    """What a client is told of a part header line over `PART_HEADER_LINE_BYTES`: the filename (or field name) it
    sent is too long, and the bound. Starlette said only `Invalid multipart data.`"""
    head = line[:200].decode("latin-1")
    name = re.search(r'(?i)\bname="([^"]{1,64})"', head)
    whose = f"of the part {name.group(1)!r} " if name else ""
    if re.match(r"(?i)content-disposition\s*:", head) and re.search(r"(?i)\bfilename\*?=", head):
        what = f"the filename {whose}is too long"
    elif re.match(r"(?i)content-disposition\s*:", head):
        what = "a field name is too long"
    else:
        what = f"a header line {whose}is too long"
    return (f"{what}: a part's header line (its Content-Disposition holds the field name and the filename) may be at "
            f"most {PART_HEADER_LINE_BYTES} bytes; send a shorter one (the API does not use the filename)")


# python-multipart's bound on the header lines of one part (Starlette builds the parser with the default)
PART_HEADER_LINES: int = getattr(python_multipart.multipart, "DEFAULT_MAX_HEADER_COUNT", 8)

# python-multipart logs each parse error it raises as a warning ("Expected boundary character 45, got 84 at index 2"):
# a line in the API's log per malformed body any client sends, saying what the client is told anyway (the 400
# `malformed_multipart` carries the reason). Its errors (a temporary file it could not open) are still logged.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)

# how much of a multipart body may come before its first boundary delimiter (a preamble, RFC 2046 5.1.1)
MAX_PREAMBLE_BYTES = 64 * 1024


class NoFirstBoundary(Exception):
    """A multipart body with no boundary delimiter within its first `MAX_PREAMBLE_BYTES` (or in the whole body)."""


async def without_preamble(stream: Any, boundary: bytes) -> Any:
    """`stream` from its first boundary delimiter on: what comes before it is a preamble, which RFC 2046 (5.1.1)
    lets a body carry and tells the recipient to ignore (a MIME library's "This is a multi-part message in MIME
    format."). python-multipart skips only blank lines there, and any other byte was 400 `malformed_multipart`
    "Expected boundary character 45, got 84 at index 2". The first delimiter begins the body or a line;
    `NoFirstBoundary` when none comes within `MAX_PREAMBLE_BYTES`."""
    delimiter = b"--" + boundary
    head = b""
    found = False
    async for chunk in stream:
        if found:
            yield chunk
            continue
        head += chunk
        at = 0 if head.startswith(delimiter) else head.find(b"\n" + delimiter) + 1
        if at > 0 or head.startswith(delimiter):
            found = True
            yield head[at:]
            head = b""
        elif len(head) > MAX_PREAMBLE_BYTES + len(delimiter):
            raise NoFirstBoundary()
    if not found:
        if head.strip(b"\r\n"):
            raise NoFirstBoundary()
        yield head


def parse_error(exc: MultipartParseError) -> str:
    """What python-multipart found wrong, as a client may read it (one line, bounded): Starlette hid every such
    error under `Invalid multipart data.`, so a client could not tell a part with too many header lines from a
    malformed boundary."""
    if "header count" in str(exc):
        return (f"a part has more than {PART_HEADER_LINES} header lines (python-multipart's bound; a part needs only "
                "Content-Disposition and, for a file, Content-Type)")
    return f"{shown(str(exc))} (python-multipart)"


class FilePartTooLarge(Exception):
    def __init__(self, name: str, limit: int):
        super().__init__(name)
        self.name, self.limit = name, limit


_PARAM = re.compile(rb';\s*([^\s=;]+)\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;]*)')
SINGLE_PART_HEADERS = (b"content-disposition", b"content-type")


def refuse_ambiguous_part(part: MultipartPart) -> None:
    """`MultiPartException` (400 `malformed_multipart`) for a part whose headers say two things: a Content-Disposition
    or Content-Type given twice, or a disposition naming its `name` or `filename` twice. Starlette kept the last of
    each, so a part headed `name="instruction"` then `name="threshold"` set the threshold, where a proxy or filter in
    front may read the first (as two Content-Type fields of the body, `media_type`)."""
    for header in SINGLE_PART_HEADERS:
        if sum(name == header for name, _ in part.item_headers) > 1:
            raise MultiPartException(f"a part gives its {header.decode().title()} header twice; give it once")
    named = [key.lower() for key in _PARAM.findall(part.content_disposition or b"")]
    for key in (b"name", b"filename"):
        if named.count(key) > 1:
            raise MultiPartException(f"a part's Content-Disposition names its {key.decode()} twice; name it once")


class CutShort(Exception):
    """A multipart body that ended before its closing boundary (`--BOUNDARY--`)."""


class TextNotUtf8(Exception):
    """Text fields of a multipart body that are not UTF-8 (one line each), found once the body is read."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


# the charsets a text field may declare: UTF-8 and its subset US-ASCII (as `codecs.lookup` names them)
TEXT_CHARSETS = ("utf-8", "ascii")


def declared_charset(content_type: bytes | str | None) -> str | None:
    """The `charset` a Content-Type value names, as sent (None: none named)."""
    if not content_type:
        return None
    _, params = parse_options_header(content_type)
    charset = params.get(b"charset")
    if charset is None:
        return None
    return charset.decode("latin-1") if isinstance(charset, bytes) else str(charset)


def text_codec(charset: str | None) -> str | None:
    """The codec a declared charset names when it is one a text field may use (None: not one); no charset is UTF-8.
    `codecs.lookup` raises ValueError, not LookupError, for a name holding a NUL (`charset="utf-8\\x00"`, which a
    part's header may carry): it escaped the parser as a 400 `malformed_multipart` "(ValueError)"."""
    if charset is None:
        return "utf-8"
    try:
        codec = codecs.lookup(charset).name
    except (LookupError, ValueError):
        return None
    return codec if codec in TEXT_CHARSETS else None


class _LimitedParser(MultiPartParser):
    """Starlette's parser, with each file part held to `max_file_bytes` as its bytes arrive (Starlette bounds only
    text parts): the part above it stops the parse, before anything more of the body is read. Text parts are decoded
    as UTF-8 only (see the module's docstring): Starlette's fallback to Latin-1 never runs; a part that is not UTF-8
    is noted, and `parse` raises `TextNotUtf8` for them all once the body is read whole (the connection can carry
    the next request)."""

    def __init__(self, *args: Any, max_file_bytes: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_file_bytes = max_file_bytes
        self._file_bytes = 0
        self.text_problems: list[str] = []
        self._body_charset: str | None = None
        self.before = self.chunk = b""
        self.ended = False

    async def parse(self) -> FormData:
        """The form; `CutShort` for a body without its closing boundary, whose last part python-multipart drops
        without a word (its `finalize` checks nothing): the route then said "'edited' file is required" of a part
        the client had sent."""
        self._body_charset = declared_charset(self.headers.get("content-type"))
        boundary = parse_options_header(self.headers.get("content-type", ""))[1].get(b"boundary")
        if boundary:
            self.stream = without_preamble(self.stream, boundary)
        self.stream = self._kept(self.stream)
        form = await super().parse()
        if not self.ended:
            await form.close()
            raise CutShort()
        if self.text_problems:
            await form.close()
            raise TextNotUtf8(self.text_problems)
        return form

    def on_end(self) -> None:
        """python-multipart's `end`: called only at the closing boundary."""
        self.ended = True

    def on_headers_finished(self) -> None:
        """A part's field name, as UTF-8 whatever the body's charset: Starlette decodes it by that charset and, where
        that fails, as Latin-1, so a name of bytes that are no UTF-8 (`instr\\xff`) was reported garbled, as an
        unknown field `'instrÿ'`. One that is not is noted as a text field's value is (`TextNotUtf8`)."""
        refuse_ambiguous_part(self._current_part)
        super().on_headers_finished()
        _, options = parse_options_header(self._current_part.content_disposition)
        raw = options.get(b"name", b"")
        try:
            self._current_part.field_name = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            self.text_problems.append(f"the field name {bytes(raw[:64])!r} is not UTF-8 text ({exc.reason} at byte "
                                      f"{exc.start})")

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is not None:
            super().on_part_end()
            return
        self.items.append((part.field_name, self._text(part)))

    def _text(self, part: MultipartPart) -> str:
        """A text part's value, strictly as the charset it may declare (its own Content-Type's, else the body's)
        reads it; a problem noted (and "" returned) where it is no UTF-8 text."""
        if part.field_name in ("original", "edited"):
            # an image sent as a text field (`curl -F original=<o.png`): the route answers 400 not_a_file; its bytes
            # are no text to check (a PNG was 422 invalid_text "'original' is not UTF-8 text")
            return ""
        own = declared_charset(dict(part.item_headers).get(b"content-type"))
        where = repr(part.field_name[:64])         # both client-chosen: a message stays a line
        for charset, whose in ((self._body_charset, "the body's Content-Type"), (own, "its Content-Type")):
            if text_codec(charset) is None:
                self.text_problems.append(f"{where} declares charset {str(charset)[:64]!r} ({whose})")
                return ""
        codec = text_codec(own if own is not None else self._body_charset)
        try:
            return bytes(part.data).decode(codec or "utf-8")
        except UnicodeDecodeError as exc:
            said = "US-ASCII, as declared" if codec == "ascii" else "UTF-8 text"
            self.text_problems.append(f"{where} is not {said} ({exc.reason} at byte {exc.start})")
            return ""

    async def _kept(self, stream: Any) -> Any:
        """`stream`, its last `2 * PART_HEADER_LINE_BYTES` bytes before the chunk being parsed kept (`before`), and
        that chunk (`chunk`): what `long_header_line` reads a refused header line from."""
        async for chunk in stream:
            self.before = (self.before + self.chunk)[-2 * PART_HEADER_LINE_BYTES:]
            self.chunk = chunk
            yield chunk

    def long_header_line(self, offset: int) -> bytes:
        """The first 200 bytes of the part header line that python-multipart refused as too long at `offset` of the
        chunk (where it counted past its bound: within the line, at its value's start)."""
        seen = self.before + self.chunk
        at = len(self.before) + max(offset, 0)
        start = seen.rfind(b"\n", 0, at) + 1
        return seen[start:start + 200]

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None and self.max_file_bytes is not None:
            self._file_bytes += end - start
            if self._file_bytes > self.max_file_bytes:
                raise FilePartTooLarge(self._current_part.field_name, self.max_file_bytes)
        super().on_part_data(data, start, end)


def refuse_query(request: Request, fields: str) -> None:
    """A submission takes its options from its body; a query string was ignored without a word, so
    `POST /v1/annotate?wait=30` waited the default and `POST /v1/jobs?threshold=0.9` masked at the annotator's
    threshold. 422 `invalid_request` naming the parameters and where they go."""
    names = list(dict.fromkeys(name for name, _ in request.query_params.multi_items()))
    if names or request.url.query:
        said = ", ".join(repr(shown(name)) for name in names[:5]) or repr(shown(request.url.query))
        raise ApiError(422, "invalid_request", f"{request.method} {request.url.path} takes no query parameters "
                       f"(got {said}): send {fields} in the body")


async def parse_submission(request: Request, max_text_chars: int, spool_bytes: int = 1024 * 1024,
                           max_file_bytes: int | None = None) -> Submission:
    refuse_query(request, f"the options ({', '.join(OPTION_FIELDS)}) as form fields or JSON keys")
    refuse_content_encoding(request)
    ctype = media_type(request)
    if ctype == "multipart/form-data":
        return await _multipart(request, max_text_chars, spool_bytes, max_file_bytes)
    if ctype in ("application/json", ""):
        return await _json(request)
    raise ApiError(415, "unsupported_media_type", f"content type {ctype!r}: send multipart/form-data with "
                   "'original' and 'edited' files, or application/json with base64 images")


async def _json(request: Request) -> Submission:
    data = await read_json_object(request)
    for name in ("original", "edited"):
        if name not in data:
            raise ApiError(400, "missing_field", f"'{name}' (base64 image) is required")
    # the two large strings are taken out (not copied by a model) and decoded one at a time
    original, edited = data.pop("original"), data.pop("edited")
    options = _options(data, strict=True)
    o = _b64(original, "original")
    del original
    e = _b64(edited, "edited")
    return Submission(o, e, options)


def _form_parser(request: Request, max_text_chars: int, spool_bytes: int, max_file_bytes: int | None = None
                 ) -> _LimitedParser:
    parser = _LimitedParser(request.headers, request.stream(), max_files=2, max_fields=len(OPTION_FIELDS) + 2,
                            max_part_size=max(4 * max_text_chars + 1024, 16_384), max_file_bytes=max_file_bytes)
    parser.spool_max_size = spool_bytes        # file parts above it go to a temporary file while streaming
    return parser


async def _parse_form(request: Request, max_text_chars: int, spool_bytes: int, max_file_bytes: int | None = None
                      ) -> FormData:
    return await _form_parser(request, max_text_chars, spool_bytes, max_file_bytes).parse()


def _malformed(exc: MultiPartException | StarletteHTTPException) -> ApiError:
    detail = getattr(exc, "message", None) or getattr(exc, "detail", "")
    if "Too many files" in str(detail):      # Starlette's words; the route's own checks never ran
        detail = (f"{detail} The form takes two file parts, 'original' and 'edited', each once; the options "
                  f"({', '.join(OPTION_FIELDS)}) are text fields, not files.")
    return ApiError(400, "malformed_multipart", f"multipart body could not be parsed: {detail}")


async def _multipart(request: Request, max_text_chars: int, spool_bytes: int, max_file_bytes: int | None
                     ) -> Submission:
    parser = _form_parser(request, max_text_chars, spool_bytes, max_file_bytes)
    try:
        form = await parser.parse()
    except BodyReadAborted:
        raise                   # too large / too slow: the middleware that raised it answers
    except ApiError:
        raise   # a refusal made as the body arrived (the byte budget's 429 server_busy), not a parse error
    except NoFirstBoundary as exc:
        raise ApiError(400, "malformed_multipart", "multipart body could not be parsed: no boundary delimiter "
                       f"(--BOUNDARY, as the Content-Type's boundary names it) begins a line within its first "
                       f"{MAX_PREAMBLE_BYTES} bytes") from exc
    except CutShort as exc:
        raise ApiError(400, "malformed_multipart", "multipart body could not be parsed: it ended before its closing "
                       "boundary (--BOUNDARY--), so its last part may be cut; send the whole body") from exc
    except TextNotUtf8 as exc:
        raise ApiError(422, "invalid_text", "multipart field names and text fields must be UTF-8, as JSON bodies are: "
                       f"{'; '.join(exc.problems)} (send UTF-8 text, with no charset or charset=utf-8)") from exc
    except FilePartTooLarge as exc:
        # the rest of the body is not parsed (a bounded lingering discard, sigma.api.server): the connection cannot
        # carry another request
        raise ApiError(413, "file_too_large", f"'{exc.name}': more than limits.max_bytes={exc.limit} bytes; "
                       "refused while it was arriving", {"Connection": "close"}) from exc
    except MultiPartException as exc:
        cause = exc.__cause__       # python-multipart's own error, under Starlette's `Invalid multipart data.`
        if isinstance(cause, MultipartParseError) and "header size" in str(cause):
            raise ApiError(400, "malformed_multipart", "multipart body could not be parsed: "
                           + header_line_too_long(parser.long_header_line(cause.offset))) from exc
        if isinstance(cause, MultipartParseError):      # Starlette said only `Invalid multipart data.` of each
            raise ApiError(400, "malformed_multipart", f"multipart body could not be parsed: {parse_error(cause)}"
                           ) from exc
        raise _malformed(exc) from exc
    except StarletteHTTPException as exc:
        raise _malformed(exc) from exc
    except Exception as exc:
        if type(exc).__name__ == "ClientDisconnect":
            raise
        raise ApiError(400, "malformed_multipart", f"multipart body could not be parsed ({type(exc).__name__})"
                       ) from exc
    try:
        unknown = sorted(set(form.keys()) - set(OPTION_FIELDS) - {"original", "edited"})
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown field(s) {unknown}; allowed: original, edited, "
                           f"{', '.join(OPTION_FIELDS)}")
        images: dict[str, bytes] = {}
        for name in ("original", "edited"):
            values = form.getlist(name)
            if not values:
                raise ApiError(400, "missing_field", f"'{name}' file is required")
            if len(values) > 1:
                raise ApiError(422, "invalid_request", f"'{name}' given {len(values)} times")
            if not isinstance(values[0], UploadFile):
                raise ApiError(400, "not_a_file", f"'{name}' must be a file upload, not a text field")
            images[name] = await values[0].read()
        raw: dict = {}
        for name in OPTION_FIELDS:
            values = form.getlist(name)
            if not values:
                continue
            if any(isinstance(v, UploadFile) for v in values):
                raise ApiError(422, "invalid_request", f"'{name}' must be a text field, not a file")
            if name == "outputs":
                raw[name] = [o.strip() for v in values for o in str(v).split(",") if o.strip()]
            elif len(values) > 1:
                raise ApiError(422, "invalid_request", f"'{name}' given {len(values)} times")
            else:
                if name in FORM_NUMBERS:
                    plain_number(name, str(values[0]))
                raw[name] = values[0]
        return Submission(images["original"], images["edited"], _options(raw))
    finally:
        await form.close()
