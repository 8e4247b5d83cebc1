"""Config sections shared by every front end. Each command composes these into its own model."""
from __future__ import annotations

import collections.abc
import copy
import functools
import math
import sys
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sigma.text import MAX_DURATION_S, MAX_JSON_DEPTH, shown

# Pairs decoded and held in memory at once by one batch: a bound, so a typo (--batch-size 1000000) is a
# config error instead of a whole shard decoded into memory.
MAX_BATCH_SIZE = 1024
# Pairs per batch shard: a shard's rows are held in memory until its parquet is written, and a shard is one
# fleet task (one lease). `shard_size: 1e300` was taken (an integral float), a whole corpus in one shard.
MAX_SHARD_SIZE = 100_000
# The largest working size (long side, px) a network may be asked to run at, and the most intra-op threads:
# both are options a batch submitted through the API may set, and 100000 px with upscale=true (a 10^10-pixel
# tensor) or 100000 threads would kill the worker that takes the task, again at each redelivery.
MAX_WORKING_SIZE = 4096
MAX_THREADS = 256
# Processes one command may start (decode workers, inference processes, Ray actors): `--workers 100000`
# forked until the machine stalled, `--threads 100000` died with "can't start new thread".
MAX_PROCESSES = 256


# The most an operator may raise io.limits.max_instruction_chars to: an instruction is held whole in every job record,
# result row and LLM prompt and parsed on the request path (linear, ~1 s per 20 KB of hostile text); a config that
# set 10^12 accepted any instruction the body limit let through.
MAX_INSTRUCTION_CHARS = 100_000
# The most an operator may raise io.limits.max_json_depth to: writing extras (sigma.text.json_ready, then json.dumps)
# takes about two Python frames per nested dict, and Python stops at sys.getrecursionlimit() (1000) frames in all,
# the caller's included. At 480 levels a dict already ended in RecursionError; 200 leaves half the stack spare.
MAX_JSON_DEPTH_CEILING = 200
# ... and the least it may be lowered to: our own fields of a result nest up to 5 levels (result.json's resolved config,
# the components split), so a lower limit failed every pair, the annotator's extras or not.
MIN_JSON_DEPTH = 8


MAX_FLOAT_INT = int(sys.float_info.max)     # a larger integer has no float: float() raises OverflowError


def finite_in(bounds: str) -> BeforeValidator:
    """NaN and the infinities (`--set threshold=nan`, `1e400`, a form's `wait=nan`) said "should be less than or
    equal to 1" or "greater than or equal to 0" (NaN fails every comparison, so whichever bound is checked first
    speaks): misleading. They are told what a number here must be (`finite_number`, "a finite number `bounds`");
    the rest goes on to the field's own checks. One reader for every float option a user gives."""
    def check(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_FLOAT_INT:
            # a JSON integer of 400 digits is a number, not "not a valid number" (pydantic's words: float() overflows)
            raise PydanticCustomError("finite_number", f"Input should be a finite number {bounds}, got an integer of "
                                      "{digits} digits", {"digits": _digits(value)})
        number = _as_number(value)
        if number is not None and not math.isfinite(number):
            raise PydanticCustomError("finite_number", f"Input should be a finite number {bounds}, got {{value}}",
                                      {"value": number})
        return value
    return BeforeValidator(check)


def _digits(value: int) -> str:
    """How many decimal digits `value` has, said without printing it: Python refuses to print an integer of more than
    `sys.get_int_max_str_digits()` digits (a YAML or --set value may hold one)."""
    try:
        return str(len(str(abs(value))))
    except ValueError:
        return f"more than {sys.get_int_max_str_digits()}"


def _as_number(value: Any) -> float | None:
    """A float or a text a float field reads (`nan`, `1e400`), as the number it is; None for anything else, which the
    field's own checks refuse."""
    if isinstance(value, (str, float)):
        try:
            return float(value)
        except ValueError:
            return None
    return None


UnitInterval = Annotated[float, Field(ge=0.0, le=1.0), finite_in("in [0, 1]")]


def _no_nan(what: str) -> BeforeValidator:
    """NaN for a limit that infinity lifts (`LimitOrInfinity`): NaN fails every comparison, so `x > limit` is never true
    and the limit was gone as surely as with `.inf`, but unsaid; pydantic's own word for it ("greater than or equal
    to 0") named a bound NaN does not break. Told what the field takes instead."""
    def check(value: Any) -> Any:
        number = _as_number(value)
        if number is not None and math.isnan(number):
            raise PydanticCustomError("finite_number", f"Input should be {what}, got nan")
        return value
    return BeforeValidator(check)


def _infinity_as_text(value: float) -> float | str:
    """+inf written as the text `inf` where a config is written as JSON (run.json, the config hash): JSON has no
    infinity, and `dumps_finite` wrote it as null, which no float field reads back, so a batch run with
    `io.limits.max_aspect_change=inf` could not be resumed (run_modified: "Input should be a valid number"). The
    field reads `inf` back as infinity."""
    return "inf" if value == math.inf else value


#: a limit that may be lifted: a finite number >= 0, or `.inf` (YAML; `inf` in `--set`) for no limit. Never NaN. The
#: one exception to `Strict`'s finite floats; a field of this type says in its description what infinity means.
LimitOrInfinity = Annotated[float, Field(ge=0.0, allow_inf_nan=True), _no_nan("a number >= 0, or .inf for no limit"),
                            PlainSerializer(_infinity_as_text, when_used="json")]


# The longest time a config field may say, a timeout, a lease, a TTL, a backoff or a budget alike: 30 days. Only NaN and
# infinity were refused, so a huge finite time was taken and met the code that used it: `redis.socket_timeout_s=1e308`
# (or `queue.block_ms` near 2**63) was an OverflowError traceback from socket.settimeout as the worker connected,
# `queue.heartbeat_ttl_ms` one Redis refused at every heartbeat ("invalid expire time in 'pexpire'": the worker never
# counted alive), `queue.heartbeat_interval_ms` an OverflowError in the heartbeat thread, `api.wait_timeout_s` a Redis
# error that answered every POST /v1/annotate 202 at once. 30 days is far inside what Python's timeouts (time_t,
# threading.TIMEOUT_MAX), asyncio and Redis's PX/EX/BLOCK take, and above every default and documented value.
# The bound is `MAX_DURATION_S`, defined in sigma.text (bottom layer) and imported here: the environment's waits
# (`$SIGMA_FOLDER_LOCK_WAIT_S`, `$SIGMA_MODEL_LOCK_WAIT_S`: `sigma.text.positive_int_env`) read against it too.


def _at_most(bound: int, unit: str, takes: str) -> BeforeValidator:
    """A time past MAX_DURATION_S (`bound` in `unit`) is told the bound in words (`duration_too_long`), the field named
    by its place; NaN and infinity are left to `finite_number`, which says more. Before pydantic's own `le`, whose
    "less than or equal to 2592000" says neither the unit nor why; an integer of thousands of digits is said by its
    size (str() of it raises past 4300 digits). Text that is no number (`30s`, `1:00`, `5 min`) is told what the
    field takes, `takes` (`duration_text`): its unit and an example. Pydantic's "unable to parse string as an
    integer" said neither, so `queue.lease_ms=30s` left the user guessing whether a unit was wanted, and which."""
    def check(value: Any) -> Any:
        number: Any = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise PydanticCustomError("duration_text", f"Input should be {takes}, got {{value}}: the number "
                                          "alone, without a unit or h:m:s", {"value": shown(repr(value), 80)}) \
                    from None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            return value
        if isinstance(number, float) and not math.isfinite(number):
            return value
        if number > bound:
            said = (f"a number of about {math.floor(math.log10(number)) + 1} digits" if isinstance(number, int)
                    and number > MAX_CONFIG_INT else repr(number))
            raise PydanticCustomError("duration_too_long", f"Input should be at most {bound} {unit} (30 days, "
                                      f"MAX_DURATION_S), got {said}")
        return value
    return BeforeValidator(check)


#: a length of time in seconds, at most 30 days (MAX_DURATION_S); each field says its own lower bound
Seconds = Annotated[float, Field(le=MAX_DURATION_S),
                    _at_most(MAX_DURATION_S, "s", "a number of seconds (e.g. 30, or 0.5 for half a second)")]
#: ... a whole number of seconds (a Redis TTL: EX, Retry-After)
WholeSeconds = Annotated[int, Field(le=MAX_DURATION_S),
                         _at_most(MAX_DURATION_S, "s", "a whole number of seconds (e.g. 3600 for an hour)")]
#: ... a whole number of milliseconds (Redis PX, BLOCK, XAUTOCLAIM's idle time)
Millis = Annotated[int, Field(le=MAX_DURATION_S * 1000),
                   _at_most(MAX_DURATION_S * 1000, "ms", "a whole number of milliseconds (e.g. 30000 for 30 s)")]
#: ... minutes (a training budget)
Minutes = Annotated[float, Field(le=MAX_DURATION_S // 60),
                    _at_most(MAX_DURATION_S // 60, "minutes", "a number of minutes (e.g. 90 for an hour and a half)")]


def _each_once(modules: list[str]) -> list[str]:
    """Each module once, in the order first named."""
    return list(dict.fromkeys(modules))


# A list of plugin modules (`plugins`, `api.plugins`, `worker.plugins`), each once whichever way it was given: only
# `--plugin` merged its list without repeats (`sigma.cli.common.with_plugin_args`), so `plugins: [m, m]` in a config
# file (or --set, or SIGMA__*__PLUGINS) was recorded as given: run.json said [m, m], and the same run submitted
# again with `--plugin m` ([m]) was refused as naming other plugins than the run's.
Modules = Annotated[list[str], AfterValidator(_each_once)]
#: a length of time or any other amount that cannot be negative: a finite number >= 0
NonNegative = Annotated[float, Field(ge=0.0), finite_in(">= 0")]


def type_arms(annotation: Any) -> list[Any]:
    """The alternatives of an annotation: `list[int] | None` → [list[int], None]; Annotated and nested unions
    unwrapped. One reading for the loader's whole-number parsing and the bool check below."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return type_arms(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [arm for arg in typing.get_args(annotation) for arm in type_arms(arg)]
    return [annotation]


def field_for_key(model: type[BaseModel], key: Any) -> Any:
    """The field (FieldInfo) of `model` that the key `key` sets: by its name, or by the alias it is read by (a plugin
    config's `Field(alias="imageSize")`); None for none."""
    if key in model.model_fields:
        return model.model_fields[key]
    for field in model.model_fields.values():
        if key in (field.alias, field.validation_alias):
            return field
    return None


def _takes_number_not_bool(annotation: Any) -> bool:
    """A field (or item) that takes an int or a float and no bool: pydantic reads True as 1 / 1.0 there."""
    leaves = {typing.get_origin(arm) or arm for arm in type_arms(annotation)}   # list[int] -> list
    return bool(leaves & {int, float}) and not leaves & {bool, Any, object}


_SEQUENCES = (list, set, frozenset, collections.abc.Sequence, collections.abc.Set)


def item_annotations(arms: list[Any], index: int) -> list[Any]:
    """What item `index` of a list may be, by the sequence arms of a field's type: list[X] / tuple[X, ...] → X,
    tuple[X, Y] → X or Y by index. One reading for the loader's messages and the bool check below."""
    out = []
    for arm in arms:
        origin, args = typing.get_origin(arm), typing.get_args(arm)
        if origin is tuple and args:
            if len(args) == 2 and args[1] is Ellipsis:
                out.append(args[0])
            elif index < len(args):
                out.append(args[index])
        elif origin in _SEQUENCES and args:
            out.append(args[0])
    return out


@functools.lru_cache(maxsize=4096)
def _key_annotation(model: type[BaseModel], key: str) -> Any:
    """The annotation of the field of `model` that the key `key` sets (`field_for_key`); Any for none."""
    field = field_for_key(model, key)
    if field is None:
        return Any
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def _bool_for_a_number(annotation: Any, value: Any) -> list[tuple[tuple[int, ...], bool]]:
    """Where in `value` a bool stands for a number `annotation` takes, and the bool: `()` (the value itself), `(1,)`
    (an item of a list or tuple); every such place, so that `[true, false]` names both items."""
    if isinstance(value, bool):
        return [((), value)] if _takes_number_not_bool(annotation) else []
    found = []
    if isinstance(value, (list, tuple)):
        arms = type_arms(annotation)
        for index, item in enumerate(value):
            if isinstance(item, bool) and any(_takes_number_not_bool(a) for a in item_annotations(arms, index)):
                found.append(((index,), item))
    return found


def _under(loc: tuple, where: tuple) -> bool:
    """Whether pydantic's error at `loc` is about the value at `where` (a key, a key and an item index, a nested
    place): at it or inside it, a union's arm tags (`scale_range.tuple[float, float].0`, `backbone.dinov2.taps`)
    skipped between its parts."""
    if not loc or not where or loc[0] != where[0]:
        return False
    rest = list(loc[1:])
    for part in where[1:]:
        while rest and rest[0] != part and isinstance(rest[0], str):
            rest.pop(0)
        if not rest or rest[0] != part:
            return False
        rest.pop(0)
    return True


def field_position(model: type[BaseModel], key: Any) -> int:
    """Where the field `key` names (by name or alias) stands among `model`'s fields: the order pydantic reports
    errors in (its fields in declaration order), so errors found elsewhere (the bool check below, the loader's checks
    before validation) join pydantic's in that order; a key that names no field (unknown, or none: a model-wide
    check) last."""
    names = list(model.model_fields)
    field = field_for_key(model, key) if isinstance(key, str) and key else None
    for position, name in enumerate(names):
        if model.model_fields[name] is field:
            return position
    return len(names)


def _as_init_error(error: Any) -> InitErrorDetails:
    """One of pydantic's errors, raised again as it was (type, message, place, input): a custom error of the same
    type and the message already written, since pydantic rebuilds its own types only from their original context."""
    return InitErrorDetails(type=PydanticCustomError(error["type"], error["msg"]), loc=error["loc"],
                            input=error["input"])


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not be silently ignored. A bool where a number belongs
    is one too: pydantic reads True as 1 and 1.0, so `threshold: yes` (YAML 1.1 reads yes/no/on/off as booleans)
    or `AnnotatorConfig(threshold=True)` was a threshold of 1.0, every pixel left out of the mask. Refused for every
    int or float field (and the items of int/float lists and tuples) of every config section, named by its key; a
    field that takes a bool (`bool`, `int | bool`, `Any`) is left alone. A model validator, not a field one: a
    field validator on every field is not allowed on the `kind` that tells a discriminated union's models apart.

    A wrap validator, so the bools are reported with every other error of the input: raised alone before the rest
    was validated, `sigma train c.yaml lr=yes steps=abc` said only `lr`, and the user fixed one error per run. The
    input is validated as given (nothing removed, so no key reads as missing); pydantic's errors at or inside a
    bool's place (True read as 1, then `ge=32`) are dropped for the bool's own. A subclass adds the problems its own
    checks find before validation the same way (`_found_before`: `ReadsWholeNumbers`) and those of a value it
    validates with a model of its own (`_found_beside`: `AnnotatorSpec.options`).

    The model-wide checks (`mode="after"`, across fields: `depths` as long as `widths`) cannot run on a section
    with an error: pydantic runs them only on a section whose every field is valid, and one that ran on a bool read
    as a number says nothing true. A user who fixed the errors said then met the check's error on the next run. It
    is not run on the other fields with a stand-in for the bad one (a default would make up errors, or hide them),
    so the message says plainly that the section's checks across fields were not run (`checks_skipped`).

    Numbers a machine can hold, in every section: a float field takes finite numbers only (`allow_inf_nan=False`,
    pydantic's `finite_number`, "Input should be a finite number"). Before, only the training config, the annotators'
    options and the thresholds refused them: `worker.batch_timeout_s: .inf` or `--set stall_s=inf` was taken, a limit
    gone whose "no limit" is documented as `0` (or none), and NaN said "greater than 0". A field for which infinity
    does mean "no limit" says so with the type `LimitOrInfinity` (+inf only, never NaN). An integer field without an
    upper bound of its own takes at most MAX_CONFIG_INT (`int_too_large`): `queue.lease_ms=1e400` (a whole number, 401
    digits) was taken, to be handed to Redis and to timeouts as it was."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _every_error(cls, data: Any, handler: Any) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        data, found = cls._found_before(data)
        found += _bools(cls, data) + _huge_ints(cls, data)
        beside = cls._found_beside(data)
        if not found and not beside:
            try:
                return handler(data)
            except ValidationError as exc:
                errors = exc.errors()
                if not any(e["loc"] for e in errors) or not _checks_across_fields(cls):
                    raise
                raise ValidationError.from_exception_data(
                    cls.__name__, [*map(_as_init_error, errors), _checks_skipped()]) from None
        others: list[InitErrorDetails] = []
        failed = bool(found)            # a bool read as a number, an exponent left as text: no check is true on it
        try:
            handler(data)
        except ValidationError as exc:
            failed = True
            others = [_as_init_error(e) for e in exc.errors()
                      if e["loc"] and not any(_under(e["loc"], f["loc"]) for f in [*found, *beside])]
        errors = sorted([*others, *found, *beside],
                        key=lambda e: field_position(cls, e["loc"][0] if e["loc"] else None))
        if failed and _checks_across_fields(cls):
            errors.append(_checks_skipped())
        # raised as a ValidationError of its own, so each error is placed at its key (`io.limits.x`)
        raise ValidationError.from_exception_data(cls.__name__, errors)

    @classmethod
    def _found_before(cls, data: dict) -> tuple[dict, list[InitErrorDetails]]:
        """The input as it is to be validated, and the problems a check before validation found in it."""
        return data, []

    @classmethod
    def _found_beside(cls, data: dict) -> list[InitErrorDetails]:
        """Errors of a value of the input that the section validates with a model of its own, placed in it."""
        return []

    @classmethod
    def mapping_model(cls, key: str, data: dict) -> type[BaseModel] | None:
        """The model that checks the free mapping `key` of `data` (a field typed `dict`, validated by `_found_beside`),
        None for none: where the loader looks for the keys an unknown one of that mapping may have meant."""
        return None


def _bools(cls: type[BaseModel], data: dict) -> list[InitErrorDetails]:
    """Every place in `data` where a bool stands for a number a field of `cls` takes (`Strict`)."""
    bools = []
    for key, value in data.items():
        if not isinstance(value, (bool, list, tuple)) or not isinstance(key, str):
            continue
        for where, flag in _bool_for_a_number(_key_annotation(cls, key), value):
            bools.append(InitErrorDetails(type=PydanticCustomError(
                "bool_for_number", "Input should be a valid number, not the boolean {value}", {"value": str(flag)}),
                loc=(key, *where), input=flag))
    return bools


# The largest integer a config field without an upper bound of its own takes: a signed 64-bit integer, what Redis (TTLs,
# XAUTOCLAIM's idle time), numpy, torch and C's timeouts hold. Past it no count, size or time is meant.
MAX_CONFIG_INT = 2**63 - 1


def _takes_int(annotation: Any) -> bool:
    return any(arm is int for arm in type_arms(annotation))


def _bounded_above(field: Any) -> bool:
    """Whether a field (FieldInfo) has an upper bound of its own (`le=`, `lt=`): its error says more than ours."""
    return any(getattr(m, "le", None) is not None or getattr(m, "lt", None) is not None for m in field.metadata)


def _huge_ints(cls: type[BaseModel], data: dict) -> list[InitErrorDetails]:
    """Every integer past MAX_CONFIG_INT given to an int field of `cls` without an upper bound of its own, or to an
    item of an int list or tuple (`Strict`). Its size said by log10, not str(): past 4300 digits str() raises."""
    found = []
    for key, value in data.items():
        field = field_for_key(cls, key) if isinstance(key, str) else None
        if field is None:
            continue
        places: list[tuple[tuple[int, ...], Any]] = []
        if _takes_int(field.annotation) and not _bounded_above(field):
            places = [((), value)]
        elif isinstance(value, (list, tuple)):
            arms = type_arms(field.annotation)
            places = [((i,), item) for i, item in enumerate(value) if any(map(_takes_int, item_annotations(arms, i)))]
        found += [InitErrorDetails(type=PydanticCustomError(
            "int_too_large", f"Input should be at most {MAX_CONFIG_INT} (2**63 - 1), got a number of about "
            f"{math.floor(math.log10(abs(number))) + 1} digits"), loc=(key, *where), input=None)
            for where, number in places
            if isinstance(number, int) and not isinstance(number, bool) and abs(number) > MAX_CONFIG_INT]
    return found


def _checks_across_fields(cls: type[BaseModel]) -> bool:
    """Whether `cls` has model-wide checks that run after its fields are validated (`mode="after"`)."""
    return any(d.info.mode == "after" for d in cls.__pydantic_decorators__.model_validators.values())


CHECKS_SKIPPED = ("its checks across fields were not run: they run once the errors above are fixed (pydantic runs "
                  "them only on a section whose every field is valid)")


def _checks_skipped() -> InitErrorDetails:
    """The `Strict` note that a section's model-wide checks did not run (placed at the section)."""
    return InitErrorDetails(type=PydanticCustomError("checks_skipped", CHECKS_SKIPPED), loc=(), input=None)


def place_loc(place: str) -> tuple[str | int, ...]:
    """A place as the loader's checks write it (`a.b[0]`) as pydantic's: ('a', 'b', 0)."""
    loc: list[str | int] = []
    for part in place.split("."):
        name, *indexes = part.split("[")
        if name:
            loc.append(name)
        loc += [int(index.rstrip("]")) for index in indexes if index.rstrip("]").isdigit()]
    return tuple(loc)


def errors_placed(exc: ValidationError, key: str) -> list[InitErrorDetails]:
    """The errors of `exc`, a model validated from the value of `key`, placed under `key` (`a.b` → `key.a.b`)."""
    return [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]), loc=(key, *e["loc"]), input=e["input"])
            for e in exc.errors()]


def errors_within(model: type[BaseModel], value: Any, key: str) -> list[InitErrorDetails]:
    """The errors `model` finds in `value`, the value of the free mapping `key` of a config, placed under `key`: for
    a `Strict._found_beside` that validates the mapping with the rest of its config. A validator of a plugin's that
    raises something else than a validation error is left to where the mapping is used, which says it."""
    try:
        model.model_validate(value)
    except ValidationError as exc:
        return errors_placed(exc, key)
    except Exception:  # noqa: BLE001 - not ours to word here (`sigma.registry.validate_annotator_options`)
        return []
    return []


class ReadsWholeNumbers(Strict):
    """A config validated from a free mapping of another config (an annotator's `options`, a training `model`),
    into which the loader's walk (`sigma.config.loader.whole_numbers`) cannot see: its own integer fields, and
    the items of its integer lists, take `1e3` as 1000 when it is validated, as every other config field does
    (`--set options.image_size=2.24e2` was "unable to parse string as an integer"). `exponent_prefix` names the
    mapping in messages. One that is no whole number (`1.5e0`, `1e5000`) is an error (`whole_number`, its message
    naming the place) with the section's other errors: it was raised alone, and the user fixed one error per run.

    Its float fields take finite numbers only (`finite_number`): `--set options.scale=1e400` (text, which pydantic
    reads as inf) or `.nan` in a YAML file went through a field bounded below only (feature-diff's `scale`, a plugin's
    `delay_ms: float = Field(ge=0)`) or said "greater than 0" for NaN. What no field types (`hf_config`'s values) is
    `sigma.config.loader.non_finite_options`' (`Strict`'s `allow_inf_nan=False` is every config's)."""

    exponent_prefix: ClassVar[str] = ""

    @classmethod
    def _found_before(cls, data: dict) -> tuple[dict, list[InitErrorDetails]]:
        from sigma.config.loader import whole_numbers

        problems: list[tuple[str, str]] = []
        data = whole_numbers(cls, copy.deepcopy(data), prefix=cls.exponent_prefix, problems=problems)
        prefix = f"{cls.exponent_prefix}." if cls.exponent_prefix else ""
        return data, [InitErrorDetails(type=PydanticCustomError("whole_number", message),
                                       loc=place_loc(place.removeprefix(prefix)), input=None)
                      for place, message in problems]


class LimitsConfig(Strict):
    max_pixels: int = Field(40_000_000, gt=0, description="largest width*height accepted per image")
    max_bytes: int = Field(50 * 1024 * 1024, gt=0, description="largest encoded image file accepted")
    max_instruction_chars: int = Field(1000, gt=0, le=MAX_INSTRUCTION_CHARS,
                                       description="longest instruction accepted (characters); at most 100000")
    max_aspect_change: LimitOrInfinity = Field(
        0.05, description="relative aspect-ratio difference between original and edited "
        "above which the pair is refused instead of resized; .inf: no limit (never refused)")
    max_json_depth: int = Field(MAX_JSON_DEPTH, ge=MIN_JSON_DEPTH, le=MAX_JSON_DEPTH_CEILING,
                                description="deepest nesting of dicts / lists written in a result (a result.json, a "
                                "service result, a manifest column), counted from its top: an annotator's extras "
                                "nested deeper make that pair annotator_failed. 8 to 200 (Python's recursion limit)")


class IOConfig(Strict):
    limits: LimitsConfig = LimitsConfig()
    align: bool = Field(False, description="estimate a small translation (phase correlation) and "
                        "undo it on the edited image before differencing")
    max_shift_px: int = Field(16, ge=0, description="largest translation `align` will undo")
    align_min_response: float = Field(0.1, ge=0.0, le=1.0, description="weakest phase-correlation peak "
                                      "`align` trusts; below it the images are left as they are")


class NamesAnnotator(Strict):
    """A section with an `annotator` and its `options` (`AnnotatorSpec`; the service's `worker:` section): the options
    are validated by that annotator's own config with the rest of the section, each error placed at its full key
    (`worker.options.bogus`) with the loader's did-you-mean. The worker's were validated only where its annotator was
    built, said as `pixel-diff: bogus: Extra inputs are not permitted`, the key cut and no suggestion."""

    # the config model the annotator named (None: the default one) validates its options with; None when it is not
    # known here. Set by the front ends' configs (`sigma.registry.options_model`), which may look in the registry.
    options_model: ClassVar[Callable[[str | None], type[BaseModel] | None] | None] = None

    @classmethod
    def _found_beside(cls, data: dict) -> list[InitErrorDetails]:
        """The options' errors, validated by the annotator's own config with the rest of this one: they were
        validated once the config was taken, so a config with errors in both took two runs to hear of them all.
        An annotator not known here (a plugin not imported yet, a typo) leaves its options to where it is built."""
        options = data.get("options")
        if not isinstance(options, dict) or not options:
            return []
        model = cls.mapping_model("options", data)
        return [] if model is None else errors_within(model, options, "options")

    @classmethod
    def mapping_model(cls, key: str, data: dict) -> type[BaseModel] | None:
        # not given: the section's own default (the worker's is pixel-diff; AnnotatorSpec's None, the embedded one)
        name = data.get("annotator", cls.model_fields["annotator"].default)
        if key != "options" or cls.options_model is None or not (name is None or isinstance(name, str)):
            return None
        return cls.options_model(name)


class AnnotatorSpec(NamesAnnotator):
    """Which annotator runs, with which options and threshold: the one section `sigma annotate`, `sigma eval`
    and `sigma batch` configs share (`sigma.registry.build_annotator(spec)` builds it)."""

    # min_length: "" (`--annotator "$UNSET"`) ran the default without a word, as if no name had been given
    annotator: str | None = Field(None, min_length=1, description="registry name; None = the embedded default "
                                  "(sigma-lite when its weights ship with this install, else pixel-diff)")
    options: dict[str, Any] = Field(default_factory=dict, description="annotator config overrides")
    threshold: UnitInterval | None = Field(None, description="mask = prob > threshold; None = the "
                                    "annotator's default")
