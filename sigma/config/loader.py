"""Merge defaults, a YAML file and `key=value` overrides once, validate, and write the result down.

Plain values in, a validated pydantic object out: no global state, so the library can be called
from any program (sam2's Hydra globals are what we avoid).
"""
from __future__ import annotations

import collections.abc
import copy
import datetime
import hashlib
import json
import math
import os
import re
import types
import typing
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import AliasChoices, BaseModel, ValidationError

from sigma.config.schema import NamesAnnotator, field_for_key, field_position, item_annotations, type_arms
from sigma.errors import ConfigError, InputError, error_text
from sigma.regular import NotRegularFile, open_regular
from sigma.tempfiles import replace_atomically
from sigma.text import escape_surrogates, find_surrogate, nearest, printable, shown

M = TypeVar("M", bound=BaseModel)


# A config is a few hundred values a few levels deep. These bounds are what a YAML file or a `--set` value may
# expand to: aliases cost nothing to parse and everything to copy (9 aliases of 9 aliases, nine levels down, is
# 387 M values — the "billion laughs"), and a list nested 100000 deep blew the parser's stack (a traceback).
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 64
# Digits of the largest `1eN` an integer field is given as a number (Python's own bound for int('...') text):
# 10**N is built exactly, and `1e999999999` would build a number of a billion digits. Also the bound on a YAML
# integer in any base (`_bounded_int`).
MAX_INTEGER_DIGITS = 4300
MAX_CONFIG_BYTES = 4 * 2**20      # a config file is a few KB; a file of gigabytes was read whole before parsing


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that names one key twice: PyYAML keeps the last and drops the first without a word."""


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _TooManyValues(Exception):
    """More than MAX_CONFIG_VALUES values written in the text (`_Strict.descend_resolver`): refused while parsing."""


class _Strict:
    """`yaml.safe_load`, refusing a key given twice in one mapping (a merged key `<<` may still be overridden; two
    merged mappings that give one key differently are refused: `flatten_mapping`), and
    reading a plain `1:00` as the text it is (YAML 1.2), not as YAML 1.1's base 60 (`resolve`)."""

    def resolve(self, kind, value, implicit):
        """A plain scalar with a ':' is text: YAML 1.1 reads `1:00` and `1:30.5` as base-60 numbers (60, 90.5), so
        `queue.lease_ms: 1:00` was a lease of 60 ms, taken without a word, and `worker.consumer: 10:30` the number
        630, "not a valid string". Nobody writes a setting in base 60; YAML 1.2 dropped it. A number field then says
        what it takes (a duration its unit, `sigma.config.schema.Seconds`); an explicit `!!int 1:00` is still read."""
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and tag in _NUMBER_TAGS and ":" in value:
            return "tag:yaml.org,2002:str"
        return tag

    def descend_resolver(self, current_node, current_index):
        """Count each value as the parser makes it (not a mapping's keys, not an alias's uses: `_check_size` counts
        those, on the data), so that a file of more than MAX_CONFIG_VALUES values is refused when the parser reaches
        that many, not after it has read them all and built every one (150000 values took 19 s to be refused)."""
        if current_index is not None or current_node is None:
            count = self.__dict__.get("_values", 0) + 1
            if count > MAX_CONFIG_VALUES:
                raise _TooManyValues
            self.__dict__["_values"] = count
        return super().descend_resolver(current_node, current_index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def flatten_mapping(self, node):
        """YAML's merge (`<<`), in place of PyYAML's, which tells merged keys apart by `id()` of their strings: which
        value it kept of a key two merged mappings give depended on whether the two strings were one object in memory,
        so `<<: [{t: 1}, {t: 2}]` gave t 1 and `<<: [{threshold: 0.1}, {threshold: 0.2}]` threshold 0.2, and `<<: *b`
        of `b: {<<: *a, t: 5}` took a's t, not b's 5; the other value was dropped without a word. Now a mapping merged
        is what it reads as (its own keys over those it merges), and a key two merged mappings (or two `<<` keys) give
        with different values is refused (`DuplicateKeyError`); a key of the mapping itself overrides a merged one."""
        flattened: set[int] = self.__dict__.setdefault("_flattened", set())
        flattened.add(id(node))
        merged: dict[Any, tuple[yaml.Node, yaml.Node, yaml.Node]] = {}
        own = []
        for key_node, value_node in node.value:
            if key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.tag == "tag:yaml.org,2002:value":       # as PyYAML: `=` is a plain key
                    key_node.tag = "tag:yaml.org,2002:str"
                own.append((key_node, value_node))
                continue
            if isinstance(value_node, yaml.MappingNode):
                subnodes = [value_node]
            elif isinstance(value_node, yaml.SequenceNode):
                subnodes = value_node.value
                for sub in subnodes:
                    if not isinstance(sub, yaml.MappingNode):
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"expected a mapping for merging, but found {sub.id}", sub.start_mark)
            else:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"expected a mapping or list of mappings for merging, but found {value_node.id}",
                    value_node.start_mark)
            for sub in subnodes:
                if id(sub) not in flattened:            # an inline mapping is merged, never constructed itself
                    _refuse_duplicates(sub)
                    self.flatten_mapping(sub)
                # each key merged is work, counted as a value: `<<: [*m, *m, …]` 20000 times over a mapping of 2000
                # keys (a 99 KB file) took 100 s to be refused, 40 million keys compared for a mapping of 2000
                merged_keys = self.__dict__.get("_merged_keys", 0) + len(sub.value)
                if merged_keys > MAX_CONFIG_VALUES:
                    raise _TooManyValues
                self.__dict__["_merged_keys"] = merged_keys
                for key, (k, v) in _effective(sub).items():
                    first = merged.setdefault(key, (k, v, sub))
                    if not _same(first[1], v):
                        raise DuplicateKeyError(
                            "while constructing a mapping", node.start_mark,
                            f"found key {getattr(k, 'value', '?')!r} in two merged mappings ({_at(first[2])} and "
                            f"{_at(sub)}) with different values: which one is kept is not dependable; give the key "
                            "in this mapping itself", sub.start_mark)
        if merged:
            node.value = [(k, v) for k, v, _ in merged.values()] + own


def _effective(node: yaml.MappingNode) -> dict[Any, tuple[yaml.Node, yaml.Node]]:
    """A flattened mapping's pairs by key, as it reads: a later pair (its own key) over an earlier (a merged one)."""
    return {((k.tag, k.value) if isinstance(k, yaml.ScalarNode) else id(k)): (k, v) for k, v in node.value}


def _same(one: yaml.Node, other: yaml.Node) -> bool:
    return one is other or (isinstance(one, yaml.ScalarNode) and isinstance(other, yaml.ScalarNode)
                            and (one.tag, one.value) == (other.tag, other.value))


def _at(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _refuse_duplicates(node: yaml.MappingNode) -> None:
    """A key written twice in one mapping (`DuplicateKeyError`); merge keys (`<<`) are `flatten_mapping`'s."""
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            raise DuplicateKeyError("while constructing a mapping", node.start_mark,
                                    f"found duplicate key {key_node.value!r}", key_node.start_mark)
        seen.add(key)


class _HugeInteger(ValueError):
    """A YAML integer of more than MAX_INTEGER_DIGITS decimal digits, in a spelling CPython's own bound on int(str)
    does not cover."""


# YAML 1.1 also spells integers in hex (`0x…`), octal (`0…`), binary (`0b…`) and base 60 (`1:30:00`). Python's
# bound on int('…') (4300 digits) holds for decimal text only: `0x` + 5000 digits was built, went into the config
# and its hash, and the command died there in a traceback (exit 1: "Exceeds the limit (4300 digits) for integer
# string conversion"); base 60 is summed part by part, quadratic: a 4 MB config of `1:59:59:…` took ~10 minutes.
# Now each is refused as a decimal one is: the parts counted before any sum, the value bounded once built.
INTEGER_BOUND = 10 ** MAX_INTEGER_DIGITS
MAX_BASE60_PARTS = 2500         # the first part is >= 1, so more parts than this is >= 60**2500, 4445 digits


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """PyYAML's integer, within INTEGER_BOUND whatever its base (see above)."""
    text = loader.construct_scalar(node)
    if isinstance(text, str) and text.count(":") > MAX_BASE60_PARTS:
        raise _HugeInteger(f"a base 60 integer of more than {MAX_INTEGER_DIGITS} digits")
    value = yaml.SafeLoader.construct_yaml_int(loader, node)
    if -INTEGER_BOUND < value < INTEGER_BOUND:
        return value
    raise _HugeInteger(f"an integer of more than {MAX_INTEGER_DIGITS} digits")


def _no_bytes(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """`!!binary` (and `!!set`): no setting holds bytes or a set. The bytes went on as their Python repr (`threshold:
    !!binary MC41` was "got "b'0.5'"", a text nobody wrote), a set as `{'a'}`; now the file's line says what it is."""
    what = "!!binary data (bytes)" if node.tag.endswith(":binary") else "a !!set"
    raise yaml.constructor.ConstructorError(None, None, f"{what} is no config value: write the text, number, list or "
                                            "mapping itself", node.start_mark)


class _StrictLoader(_Strict, yaml.SafeLoader):
    """PyYAML's own parser, in Python: the one whose errors a config's message gives (`_parse`)."""


class _StrictCLoader(_Strict, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser (where PyYAML was built with it), about 15 times faster than PyYAML's own: a 1 MB file of
    150000 values took 19 s in that one. Only for a text it reads without error (`_parse`)."""


for _loader in (_StrictLoader, _StrictCLoader):
    _loader.add_constructor("tag:yaml.org,2002:int", _bounded_int)
    _loader.add_constructor("tag:yaml.org,2002:binary", _no_bytes)
    _loader.add_constructor("tag:yaml.org,2002:set", _no_bytes)


def _check_size(data: Any, where: str) -> None:
    """Walk the loaded tree (aliases counted once per use, as every later copy would) within the bounds."""
    stack, count = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise _too_many(where)
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_CONFIG_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)


_BARE_TAG = re.compile(r"(?:^|[\s\[\]{},])!(?:[\s\[\]{},]|$)")


_KEPT_TAGS = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")


def _keys_as_written(root: yaml.Node | None) -> None:
    """Every scalar key of `root` made the text it is written as (in place, each node once): a config's keys are
    names. YAML made `1.5:`, `1.50:`, `~:`, `yes:` and `2026-01-01:` a float, None, True and a date, which the merge
    (`apply_overrides`, through JSON) turned into '1.5', 'null', 'true' — not what was written — and a date key
    into a TypeError traceback; `1:` beside `'1':` (or `yes:` beside `true:`) were two keys to YAML and one after,
    the first dropped without a word. As text, such a pair is a duplicate key (`_refuse_duplicates`), and an
    unknown one is named as written. A free mapping whose keys are numbers (an HF config's `id2label: {0: a}`) gets
    the same text keys it got through JSON."""
    stack, seen = [root] if root is not None else [], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            pairs = []
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag not in _KEPT_TAGS:
                    # a new node: an alias key (`*n: x`) is the very node its anchor's value is, which stays a number
                    key = yaml.ScalarNode("tag:yaml.org,2002:str", key.value, key.start_mark, key.end_mark, key.style)
                else:
                    stack.append(key)
                pairs.append((key, value))
                stack.append(value)
            node.value = pairs
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The text's root node and its data: by libyaml (`_StrictCLoader`); a text it refuses (or cannot take: a lone
    surrogate is no UTF-8) again by PyYAML's own parser, whose error (its wording, its line and column) is the one
    said, as before, or whose reading is taken if it has one. Both are SafeLoaders: no python/* tags. A text with a tab
    is PyYAML's alone: libyaml takes `a:<TAB>b` and a trailing tab, which PyYAML refuses (and a `--set` value it
    refuses stays the text as typed, tab and all); so is one with a bare `!` (YAML's non-specific tag), which libyaml
    reads `a: !` as '' and PyYAML as null: the places where the two read the same text differently (a differential
    check of the configs, mutated)."""
    if "\t" in text or _BARE_TAG.search(text):
        return _parse_with(_StrictLoader, text)
    try:
        return _parse_with(_StrictCLoader, text)
    except (yaml.YAMLError, UnicodeError, ValueError, RecursionError):
        return _parse_with(_StrictLoader, text)


def _parse_with(loader_class: type[_Strict], text: str) -> tuple[yaml.Node | None, Any]:
    loader = loader_class(text)     # type: ignore[call-arg]
    try:
        node = loader.get_single_node()
        _keys_as_written(node)
        return node, loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _too_many(where: str) -> ConfigError:
    return ConfigError(f"{where}: expands to more than {MAX_CONFIG_VALUES} values (YAML aliases that repeat "
                       "themselves?); a config is a few hundred")


def load_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load` within the bounds above, duplicate keys refused. YAML syntax errors are raised as
    `yaml.YAMLError` (the caller says where); what the parser cannot hold is a ConfigError naming `where`."""
    return _load_yaml_lines(text, where)[0]


def _load_yaml_lines(text: str, where: str) -> tuple[Any, dict[str, int]]:
    """`load_yaml`, and the line of each place whose key or text no setting may hold (`_unfit_lines`): where a config
    file's NUL byte or trailing carriage return is, which a loaded value no longer knows."""
    try:
        node, data = _parse(text)
    except _TooManyValues as exc:
        raise _too_many(where) from exc
    except RecursionError as exc:
        raise ConfigError(f"{where}: nested too deeply for a config") from exc
    except ValueError as exc:   # CPython's bound on int(str), or ours on the other bases: more than 4300 digits
        if not isinstance(exc, _HugeInteger) and "integer string conversion" not in str(exc):
            raise
        what = str(exc) if isinstance(exc, _HugeInteger) else f"an integer of more than {MAX_INTEGER_DIGITS} digits"
        raise ConfigError(f"{where}: holds {what}") from exc
    _check_size(data, where)
    return data, _unfit_lines(node)


def _unfit_lines(root: yaml.Node | None) -> dict[str, int]:
    """The line (1-based) of each place of `root` (written as `_refuse_nul` writes it: `a.b[0]`) whose key or text
    no setting may hold (`_unusable_key`, `_unfit`). Each node is walked once: an alias is the node it names, so a
    billion-laughs file is walked in the size of its text (a place reached through an alias has no line)."""
    lines: dict[str, int] = {}
    stack: list[tuple[str, yaml.Node]] = [("", root)] if root is not None else []
    seen: set[int] = set()
    while stack:
        where, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if isinstance(node.value, str) and _unfit(node.value):
                lines.setdefault(where, node.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                dotted = f"{where}.{key.value}" if where else str(key.value)
                if _unusable_key(key.value):
                    lines.setdefault(dotted, key.start_mark.line + 1)
                stack.append((dotted, value))
    return lines


def parse_value(text: str, key: str = "value") -> Any:
    """`key=value` values are YAML scalars/lists: `0.1`, `true`, `[2,5,11]`, `null`, `name`; text that is not
    YAML stays text. Type-blind: `load_config` reads a `--set` value against its field (`Override`)."""
    try:
        return load_yaml(text, f"override {key}")
    except DuplicateKeyError as exc:
        raise ConfigError(f"override {key}: {exc.problem}") from exc
    except yaml.YAMLError:
        return text


@dataclass(frozen=True)
class Override:
    """One `--set key=value`: the text as typed and what YAML made of it. `load_config` picks one by the type
    of the field the key names (`resolve`): YAML read `name=a: b` as a mapping {a: b}, `out_dir=on` as true,
    `name=2026-01-01` as a date and `name=a #1` as 'a' (the rest a comment) — each refused as "not a valid
    string", or, worse, taken cut short. A text field takes the text as written unless it is quoted or YAML
    gave a value of a type the field also accepts (null for an optional field, a mapping for `model`)."""

    text: str
    value: Any

    @classmethod
    def read(cls, text: str, key: str) -> Override:
        return cls(text, parse_value(text, key))

    def resolve(self, accepts: FieldTypes | None) -> Any:
        if accepts is None:
            return self.value
        if str not in accepts.types:
            if isinstance(self.value, str) and _integer_only(accepts):
                return self.text        # `1e3`: made a whole number with the YAML file's values (`whole_numbers`)
            return self.value
        if isinstance(self.value, str):
            return self.value if _quoted(self.text) else self.text
        if self.value is None:
            return None if accepts.none else self.text
        if type(self.value) in accepts.types or isinstance(self.value, bool) and bool in accepts.types:
            return self.value
        return self.text


# A number in exponent notation that YAML 1.1 reads as text: no dot (`1e3`) or no sign in the exponent (`1.5e3`).
_EXPONENT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)[eE][+-]?\d+")


def _integer_only(accepts: FieldTypes | None) -> bool:
    return accepts is not None and int in accepts.types and not accepts.types & {float, str}


# One problem a check before validation found: (where, in pydantic's places written `a.b[0]`; the message).
Problem = tuple[str, str]


def _found(problems: list[Problem] | None, place: str, message: str) -> None:
    """Raise `message` alone (no list to collect into), or add it to `problems` for `load_config` to report with the
    rest of the config's errors."""
    if problems is None:
        raise ConfigError(message)
    problems.append((place, message))


def _whole_number(text: str, key: str, origin: str, field: str | None = None,
                  problems: list[Problem] | None = None) -> Any:
    """Text for an integer field: `1e3` (YAML gives the text '1e3') is 1000, exactly, so a bound on the field says
    what it is (`1e300`: "at most 100000 …") instead of pydantic's "unable to parse string as an integer", which
    read as if exponents were not numbers. Other text is returned for the field to refuse. `origin`: where the
    value was written, for the message ("override ", "cfg.yaml: "); `field`: the list or mapping `key` is an item
    of (`perturb.jpeg_quality` for `perturb.jpeg_quality[0]`), None for a field of its own. With `problems`, a value
    that is no whole number is added there (and returned as written) instead of raised."""
    written = text.strip()
    if not _EXPONENT.fullmatch(written):
        return text
    what = f"{key} is an integer setting" if field is None else f"{field} holds integers"
    try:
        return _exponent_integer(written)
    except _TooLarge:
        _found(problems, key, f"{origin}{key}={written}: more than {MAX_INTEGER_DIGITS} digits, too large: {what}")
    except ValueError:
        _found(problems, key, f"{origin}{key}={written}: not a whole number, and {what}")
    return text


class _TooLarge(ValueError):
    pass


def _exponent_integer(written: str) -> int:
    """`1e3` → 1000 exactly (Decimal, never a float); ValueError when not whole, _TooLarge past MAX_INTEGER_DIGITS."""
    number = Decimal(written)
    if number.adjusted() >= MAX_INTEGER_DIGITS:
        raise _TooLarge(f"more than {MAX_INTEGER_DIGITS} digits")
    if number != number.to_integral_value():
        raise ValueError("not a whole number")
    return int(number)


def whole_number(text: str) -> int:
    """An integer written as a config value may be: `1000`, `-3`, or exponent notation (`1e3`, `1.5E+3`) that is a
    whole number of at most MAX_INTEGER_DIGITS digits, as `whole_numbers` reads YAML files and `--set`. The
    command line's integer flags use it too (`sigma.cli.common.integer`), so `--shard-size 1e3` is what
    `--set input.shard_size=1e3` is. ValueError (its message says why) for anything else."""
    written = text.strip()
    if _EXPONENT.fullmatch(written):
        return _exponent_integer(written)
    if not re.fullmatch(r"[+-]?[0-9]+(?:_[0-9]+)*", written):       # as int() and YAML read it: 1_000 too
        raise ValueError("not an integer")
    if len(written.lstrip("+-").replace("_", "")) > MAX_INTEGER_DIGITS:
        raise ValueError(f"more than {MAX_INTEGER_DIGITS} digits")
    return int(written)


def whole_numbers(model: type[BaseModel], tree: dict, origin: Callable[[str], str] = lambda key: "",
                  prefix: str = "", problems: list[Problem] | None = None) -> dict:
    """Integers written in exponent notation (`shard_size: 1e3`, `--set steps=1.5e3`, an environment variable),
    made whole numbers in the merged tree: the one place for a YAML file, `--set` and the environment, which YAML
    1.1 all read as text. A YAML file gave "not an integer" for what `--set` took. The items of integer lists,
    tuples and mappings too (`perturb.jpeg_quality: [1e1, 95]` was "unable to parse string as an integer" where
    `quality: 1e1` was 10). In place; `origin(key)` says where the value of `key` was written; `prefix` names the
    tree in messages (`options`: `options.image_size=...`). `problems`: where to collect the values that are no whole
    number (`load_config`); without it, the first is raised."""
    _whole_items([model], tree, prefix, "", origin, problems)
    return tree


_MAPPINGS = (dict, collections.abc.Mapping)


def _whole_items(annotations: list[Any], value: Any, key: str, field: str, origin: Callable[[str], str],
                 problems: list[Problem] | None) -> Any:
    """`value`, written for a field of one of `annotations`, with its exponent-notation integers made whole (lists
    and mappings in place). `key`: how the value is named (`a.b[0]`); `field`: the field's dotted key (`a.b`)."""
    arms = [arm for annotation in annotations for arm in type_arms(annotation)]
    if isinstance(value, str):
        plain: set[type] = set()
        for arm in arms:
            plain |= _types_of(arm)[0]
        if _EXPONENT.fullmatch(value.strip()) and _integer_only(FieldTypes(frozenset(plain), False)):
            # where it was written: by the key without list indexes (`--set a.b=[..]`, `--set a.m.x=1e1` both match)
            return _whole_number(value, key, origin(key.split("[", 1)[0]), None if key == field else field,
                                 problems)
    elif isinstance(value, dict):
        for name, item in value.items():
            found, values = _key_annotations(arms, name)
            dotted = f"{key}.{name}" if key else str(name)
            if found:                                      # a field: named by its own dotted key
                value[name] = _whole_items(found, item, dotted, dotted, origin, problems)
            elif values:                                   # an item of a typed mapping (dict[str, int])
                value[name] = _whole_items(values, item, dotted, field or dotted, origin, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if item_arms := item_annotations(arms, index):
                value[index] = _whole_items(item_arms, item, f"{key}[{index}]", field, origin, problems)
    return value


def _key_annotations(arms: list[Any], name: Any) -> tuple[list[Any], list[Any]]:
    """For the key `name` of a mapping written for a field of one of `arms`: the annotations of the model fields it
    names (`found`), and the value types of the typed mappings among `arms` (`dict[str, int]`: `values`). The one
    walk of `_whole_items` and `non_finite_options`."""
    models = [arm for arm in arms if isinstance(arm, type) and issubclass(arm, BaseModel)]
    values = [typing.get_args(arm)[1] for arm in arms
              if typing.get_origin(arm) in _MAPPINGS and len(typing.get_args(arm)) == 2]
    return [field.annotation for m in models if (field := field_for_key(m, name)) is not None], values


def _quoted(text: str) -> bool:
    text = text.strip()
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""


@dataclass(frozen=True)
class FieldTypes:
    """What a config field accepts, as far as a `--set` value is concerned: plain Python types, and None."""

    types: frozenset[type]
    none: bool


def _types_of(annotation: Any) -> tuple[set[type], bool, list[type[BaseModel]]]:
    """(plain types, accepts None, pydantic models) an annotation admits; Any admits nothing in particular."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _types_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        plain, none, models = set(), False, []
        for arg in typing.get_args(annotation):
            p, n, m = _types_of(arg)
            plain |= p
            none = none or n
            models += m
        return plain, none, models
    if annotation is type(None) or annotation is None:
        return set(), True, []
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(annotation)}, None in typing.get_args(annotation), []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {dict}, False, [annotation]
    if isinstance(origin, type):
        return {origin}, False, []
    if isinstance(annotation, type):
        return {annotation, int} if annotation is float else {annotation}, False, []
    return set(), False, []


def field_types(model: type[BaseModel], dotted: str) -> FieldTypes | None:
    """What the field `dotted` (`data.photos`, `eval.val_dir`) of `model` accepts; None when the key is not a
    field (an unknown key, or one inside a free mapping like `options`)."""
    models: list[type[BaseModel]] = [model]
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        found = [m.model_fields[part] for m in models if part in m.model_fields]
        if not found:
            return None
        plain, none = set(), False
        models = []
        for info in found:
            p, n, m = _types_of(info.annotation)
            plain |= p
            none = none or n
            models += m
        if i == len(parts) - 1:
            return FieldTypes(frozenset(plain), none)
    return None


def read_overrides(items: list[str] | None) -> dict[str, Override]:
    """`key=value` items as `Override`s: `load_config` reads each value against the type of its field. Two items
    that set one place are refused (`OverrideKeys`)."""
    out: dict[str, Override] = {}
    taken = OverrideKeys("override")
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. threshold=0.4 or io.align=true)")
        key, value = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"override {item!r} has an empty key")
        if key != key.strip() or value != value.strip(VALUE_SPACE):
            # a line end (`name=$'run\n'`, a CRLF file's `\r`) is no space typed by mistake: the field's own check
            # says it, as a control character or `_unfit`'s carriage return
            raise ConfigError(_spaced(item, key, value))
        taken.add(key, item)
        out[key] = Override.read(value, key)
    return out


# what `--set` refuses around a value: spaces and tabs, typed; a line end is the field's to name (a control character)
VALUE_SPACE = " \t"


def _spaced(item: str, key: str, value: str) -> str:
    """Why `--set` refuses `item`: space around its key or its value. `' threshold =0.3'` had its key stripped without
    a word, while `'name= run'` kept the space, a run named ' run' (a text field takes a value as written): one item,
    two rules. Taken as written or not at all, as a trailing carriage return is (`_unfit`): a text that starts or
    ends with a space says so in YAML quotes (`name=' run'`)."""
    where = "its key" if key != key.strip() else "its value"
    if key != key.strip() and value != value.strip(VALUE_SPACE):
        where = "its key and its value"
    return (f"override '{shown(printable(item), 100)}': space around {where}; write {key.strip()}="
            f"{shown(printable(value.strip()), 60)} (a text that starts or ends with a space is quoted: "
            f"{key.strip()}=' text ')")


class OverrideKeys:
    """The keys of one layer of overrides (a command line's `--set`s, the environment's `SIGMA__...`), which sets each
    place once: a key given twice (`model.dim=8 ... model.dim=16`), or a key under one given whole (`model={...}` and
    `model.dim=16`, in either order), is a ConfigError naming both as written. The later one won without a word (or,
    whole after dotted, replaced it), so a long script of overrides could not tell which applied; a YAML file refuses
    a key given twice the same way (`DuplicateKeyError`). Each key is checked against its own prefixes and the
    prefixes of those before it, not against every one before it: 20000 `--set`s took a minute compared in pairs."""

    def __init__(self, what: str) -> None:
        self.what = what                          # what the layer's items are called in the message
        self.keys: dict[str, str] = {}            # key -> how it was written
        self.under: dict[str, str] = {}           # a proper prefix of a key taken -> that key (the first)

    def add(self, key: str, written: str) -> None:
        parts = key.split(".")
        prefixes = [".".join(parts[:n]) for n in range(1, len(parts))]
        if key in self.keys:
            self._refuse(key, written, f"{key} is given twice")
        for prefix in prefixes:
            if prefix in self.keys:
                self._refuse(prefix, written, f"{key} is under {prefix}, given whole")
        if key in self.under:
            other = self.under[key]
            self._refuse(other, written, f"{key} is given whole, and {other} under it")
        self.keys[key] = written
        for prefix in prefixes:
            self.under.setdefault(prefix, key)

    def _refuse(self, other: str, written: str, why: str) -> None:
        raise ConfigError(f"{self.what} {shown(self.keys[other], 100)!r}, then {shown(written, 100)!r}: {why}; give "
                          "each setting once (a mapping whole, or its keys one by one)")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`key=value` items as YAML values, without a config model to read them against (see `read_overrides`)."""
    return {key: o.value for key, o in read_overrides(items).items()}


def resolve_overrides(model: type[BaseModel], overrides: dict[str, Any]) -> dict[str, Any]:
    """Each `Override` as the value its field takes (`Override.resolve`); plain values as they are."""
    return {key: value.resolve(field_types(model, key)) if isinstance(value, Override) else value
            for key, value in overrides.items()}


def _set_dotted(tree: dict, dotted: str, value: Any, problems: list[Problem] | None = None,
                origin: Callable[[str], str] = lambda key: "") -> None:
    """Put `value` at `dotted` in `tree`, making the mappings on the way. A value on the way that is no mapping (the
    file's `model: tiny-lite` under `--set model.dim=32`, a list under `sources.0.path=x`) is a problem (`_found`): it
    was replaced by a mapping of the one key, so the preset (or the list) was gone without a word."""
    parts = dotted.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            # said as `KEY=...`, the form every entry takes (`--set KEY=...`; `sigma train`/`synth`'s own `KEY=...`,
            # which refuse `--set`: the line said `--set 'model=...'` there)
            named = ("; a name stands for all its settings: to change one, give them all as a mapping"
                     if isinstance(child, str) else "")
            _found(problems, dotted, f"{origin(dotted)}{dotted}: {where} is {shown(json.dumps(child, default=str))} "
                   f"here, not a mapping with keys; set {where} as a whole ({where}=...){named}")
            return
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(tree: dict, overrides: dict[str, Any], problems: list[Problem] | None = None,
                    origin: Callable[[str], str] = lambda key: "") -> dict:
    """`tree` with each dotted override put in place; an override with nowhere to go is a problem (`_set_dotted`)."""
    tree = json.loads(json.dumps(tree, default=str))
    for key, value in overrides.items():      # a copy: the tree is changed in place (`whole_numbers`), the value not
        _set_dotted(tree, key, copy.deepcopy(value), problems, origin)
    return tree


def _through_a_setting(model: type[BaseModel], key: str) -> tuple[str, str] | None:
    """Where the dotted `key` goes on past a setting that has no keys of its own (a text, a number, a list):
    (that setting's dotted name, what to say instead), None when it does not. `--set annotator.options.bogus=1`
    made `annotator` the mapping {options: {bogus: 1}}, which the `--annotator` flag (set after) replaced without a
    word, so the option was never seen: the run went on as if it had not been given. A key that names no field is
    pydantic's to refuse (unknown), and a free mapping's (`options`, `model: str | dict`) is the tree's
    (`_set_dotted`)."""
    models: list[type[BaseModel]] = [model]
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        fields = [f for m in models if (f := field_for_key(m, part)) is not None]
        if not fields:
            return None
        plain: set[type] = set()
        inner: list[type[BaseModel]] = []
        for info in fields:
            p, _, m = _types_of(info.annotation)
            plain |= p
            inner += m
        if inner:
            models = inner
            continue
        if dict in plain or not plain:              # a free mapping, or Any
            return None
        where = ".".join(parts[: depth + 1])
        if plain & {list, tuple, set, frozenset}:
            return where, f"{where} is a list, with no keys: set it whole ({where}=[...])"
        rest = parts[depth + 1:]
        meant = [*parts[:depth], *rest]
        hint = f" (did you mean {'.'.join(meant)!r}?)" if any(field_for_key(m, rest[0]) for m in models) else ""
        return where, f"{where} is a setting of its own, with no keys{hint}"
    return None


def _models_at(model: type[BaseModel], tree: Any, loc: tuple) -> list[type[BaseModel]]:
    """The models whose fields the keys at `loc` (pydantic's place, within `tree`) are, [] when not known: a section's
    model, an item's of a list of sections, or the one that checks a free mapping (`Strict.mapping_model`)."""
    models: list[type[BaseModel]] = [model]
    items: list[type[BaseModel]] = []
    node = tree
    for part in loc:
        if isinstance(part, int):           # an item of a list of sections
            models, items = items, []
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
            continue
        found: list[type[BaseModel]] = []
        items = []
        for m in models:
            field = field_for_key(m, part)
            if field is None:
                continue
            arms = type_arms(field.annotation)
            found += [a for a in arms if _is_model(a)]
            items += [a for a in item_annotations(arms, 0) if _is_model(a)]
            mapping_model = getattr(m, "mapping_model", None)
            if mapping_model is not None and isinstance(node, dict) and (beside := mapping_model(part, node)):
                found.append(beside)
        models = found
        node = node.get(part) if isinstance(node, dict) else None
        if not models and not items:
            return []
    return models


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _meant(model: type[BaseModel], tree: dict, loc: tuple, variable: str = "") -> str:
    """` (did you mean 'io.limits.max_pixels'?)` for the unknown key at `loc`: the known key beside it nearest to it
    (`sigma.text.nearest`), named in full; "" for none near. From an environment variable (`variable`) whose last part
    reads the key in lower case (`SIGMA__WORKER__OPTIONS__IMAGESIZE` for `imageSize`), the variable to write instead
    (`sigma.service.settings.env_key`)."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    known = [name for m in _models_at(model, tree, loc[:-1]) for name, field in m.model_fields.items()
             for name in (field.alias or name,)]
    close = nearest(loc[-1], dict.fromkeys(known))
    if not close:
        return ""
    head, _, last = variable.rpartition("__")
    in_capitals = last == last.upper() and last.lower() == loc[-1]
    if head.startswith("SIGMA_") and in_capitals and close != loc[-1] and close.lower() == loc[-1]:
        return (f" (did you mean {_place((*loc[:-1], close))!r}? A variable's part in capitals is read in lower case: "
                f"write the key's own capitals, {head}__{close})")
    return f" (did you mean {_place((*loc[:-1], close))!r}?)"


def utf8_text(raw: bytes, path: Path) -> str:
    """A config file's bytes as UTF-8 text (a byte-order mark allowed), whatever the locale: the file was opened
    with the system's default encoding, so under LC_ALL=C a UTF-8 config with an "é" in a name was "cannot read
    ('ascii' codec ...)" and on a Latin-1 system it was read as other characters than it was written in."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            why = "UTF-16 text (it starts with a UTF-16 byte-order mark)"
        else:
            line = raw.count(b"\n", 0, exc.start) + 1
            why = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}: Latin-1 or another legacy encoding?)"
        raise ConfigError(f"{path}: {why}; a config file is read as UTF-8, save it as UTF-8") from None


def read_yaml(path: str | Path) -> dict:
    """A config file's top-level mapping. Opened once (`open_regular`): a FIFO, a device or a folder is refused as
    what it is, never waited on or read; a file of more than MAX_CONFIG_BYTES is refused by the size of what was
    opened (not by an earlier look at the path), and no more than that is ever read (a file still growing). Read as
    UTF-8 (`utf8_text`), not in the locale's encoding. Opened by the name as given: `Path` drops a trailing '/', so
    `--config a.yaml/` read the file a.yaml, where the system (`cat a.yaml/`) refuses a file named as a folder."""
    given = os.fspath(path)
    path = Path(path)
    try:
        handle = open_regular(given, "rb")
    except NotADirectoryError:
        raise ConfigError(f"{given}: config file not found: a file is named as a folder there (by a trailing '/', "
                          "or a path that goes on past it)") from None
    except (FileNotFoundError, ValueError):   # ValueError: a NUL byte, no such name can exist
        raise ConfigError(f"{given}: config file not found") from None
    except NotRegularFile:
        raise ConfigError(f"{path}: not a regular file (a FIFO, a device or a folder); a config must be a YAML "
                          "file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc
    try:
        with handle:
            size = os.fstat(handle.fileno()).st_size
            raw = b"" if size > MAX_CONFIG_BYTES else handle.read(MAX_CONFIG_BYTES + 1)
        if size > MAX_CONFIG_BYTES or len(raw) > MAX_CONFIG_BYTES:
            said = f"{size} bytes" if size > MAX_CONFIG_BYTES else "still growing"
            raise ConfigError(f"{path}: {said}, more than a config file holds "
                              f"(at most {MAX_CONFIG_BYTES // 2**20} MiB); is it the right file?")
        text = utf8_text(raw, path)
        data, lines = _load_yaml_lines(text, str(path))
    except yaml.reader.ReaderError as exc:     # a character YAML refuses raw (a NUL byte): said at its line
        before = text[:exc.position]
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError(f"{path}: not valid YAML at line {before.count(chr(10)) + 1}, column "
                          f"{exc.position - before.rfind(chr(10))} (unacceptable character {what}"
                          f"{' (a NUL byte)' if exc.character == 0 else ''}: {exc.reason})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML{where} ({problem})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return ConfigFile(data, lines)


class ConfigFile(dict):
    """A config file's top-level mapping (`read_yaml`), with the line of each place in it whose key or text no setting
    may hold (`lines`, by place): `load_config` names the file and the line of such a value."""

    def __init__(self, data: dict, lines: Mapping[str, int] | None = None) -> None:
        super().__init__(data)
        self.lines = dict(lines or {})


def _unusable(text: str) -> str | None:
    """Why `text` can be no path or name: a NUL byte, or a lone surrogate that is not an undecodable file-name
    byte (`\udc80`-`\udcff`, what a non-UTF-8 argument or name arrives as, is one; `\ud800` from a YAML escape
    is none)."""
    if "\x00" in text:
        return "a NUL byte"
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "a lone UTF-16 surrogate"
    return None


CR_ADVICE = "no setting's text ends in one (a line end of a file saved with Windows line ends, CRLF?): remove it"


def _unfit(text: str) -> str | None:
    """Why `text` can be no setting's text: what `_unusable` refuses, or a trailing carriage return. A variable from
    an env file saved with Windows line ends (`SIGMA__QUEUE__GROUP=$'g\r'`, a script's `--set` likewise) kept it:
    a consumer group, a path, a name with an invisible `\r` at its end, another than the one meant (compose strips
    it, a shell's `source` or a hand-written `$'...\r'` does not). Refused, not stripped, from every source alike
    (a YAML file's `"g\r"` too): a value is taken as written or not at all. A number or a boolean is YAML, to which
    a line end is space (`5000\r` is 5000)."""
    if why := _unusable(text):
        return why
    if text.endswith("\r"):
        return "a carriage return at its end"
    return None


def _unusable_key(key: str) -> str | None:
    """Why `key` can be no config key: what `_unusable` refuses, and bytes that are not UTF-8 (`\udc80`-`\udcff`, a
    non-UTF-8 environment variable's name or YAML escape): a path may hold them, a key never, since every key is
    validated as UTF-8 text. Such a key was pydantic's "unable to parse raw data as a unicode string" at the mapping
    holding it (`options:`, or `<root>:`), the key itself never named."""
    if why := _unusable(key):
        return why
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "bytes that are not UTF-8 text"
    return None


def _refuse_nul(tree: dict, problems: list[Problem] | None = None,
                source: Callable[[str], str] = lambda place: "") -> None:
    """No config text may hold a NUL byte or a lone surrogate: every one is a path, a name or a choice, and the first
    `open()` or `mkdir()` of it raised a bare ValueError ("embedded null byte") or UnicodeEncodeError ("surrogates
    not allowed"), a traceback, after the config was taken (`name: "\ud800"` once the run folder was made). Each
    one found is added to `problems`, in the order written (without it, the first is raised). A key refused
    (`_unusable_key`) is taken out of the tree (in place): pydantic would say it again, unnamed, at its mapping.
    A text ending in a carriage return is refused too (`_unfit`). `source(place)`: where the value came from, as
    `load_config`'s errors start with it (the environment variable, `SIGMA__QUEUE__GROUP: `; the `--set` argument;
    the file and the line), "" for none: these said the key alone, sending the user to a file that did not set it,
    or (a `--set`, a file) giving neither the argument nor the file and line."""
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str) and (why := _unfit(node)):
            tail = "no path or name can" if _unusable(node) else CR_ADVICE
            _found(problems, where, f"{source(where)}{where or '<root>'}: holds {why} ({node[:80]!r}); {tail}")
        children: list[tuple[str, Any]] = []
        if isinstance(node, dict):
            refused = []
            for key, value in node.items():
                dotted = f"{where}.{key}" if where else str(key)
                if why := _unusable_key(str(key)):
                    _found(problems, dotted, f"{source(dotted)}{dotted!r}: a key holding {why}")
                    refused.append(key)
                    continue                # its value is not looked into: the key is the problem
                children.append((dotted, value))
            for key in refused:
                del node[key]
        elif isinstance(node, list):
            children = [(f"{where}[{i}]", v) for i, v in enumerate(node)]
        stack.extend(reversed(children))    # popped in the order written


def _free(arms: list[Any]) -> bool:
    """Whether a value of one of `arms` may be anything (`Any`, `object`): a free-form option, no field to check it."""
    return any(arm is Any or arm is object for arm in arms)


def non_finite_options(annotations: list[Any], value: Any, key: str = "",
                       origin: Callable[[str], str] = lambda key: "", problems: list[Problem] | None = None) -> None:
    """Every NaN or infinite float in a free-form place of `value` (written for a field of one of `annotations`): an
    annotator's `options` (whose model may not be known here: a plugin's), feature-diff's `hf_config`. YAML reads
    `.inf`, `.nan`, `1.0e+400` and a 5000-digit `1111….0` in a file or a `--set` value, and Python's JSON parser
    `1e400` in an API body, as a float that is no finite number; no field's type checked it there, so it went on to
    code that computes with it. Now each is a problem named by its place (`_found`), left to pydantic's error where
    a field (of an annotator's options model) checks the place itself (`_unsaid`: "a finite number in [0, 1]").
    Strings stay strings: `1e400` is text until a field reads it (an integer field exactly)."""
    arms = [arm for annotation in annotations for arm in type_arms(annotation)]
    free = _free(arms)
    if isinstance(value, float) and not math.isfinite(value):
        if free:
            _found(problems, key, f"{origin(key.split('[', 1)[0])}{key}: {value} is no finite number (NaN, an "
                   "infinity, or past a float's range, ~1.8e308); a setting takes a finite one")
    elif isinstance(value, dict):
        for name, item in value.items():
            found, values = _key_annotations(arms, name)
            inner = found or values or ([Any] if free else [])
            if inner:                                      # an unknown key of a model: pydantic says so
                non_finite_options(inner, item, f"{key}.{name}" if key else str(name), origin, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if inner := item_annotations(arms, index) or ([Any] if free else []):
                non_finite_options(inner, item, f"{key}[{index}]", origin, problems)


def _unsaid(problems: list[Problem], errors: list[Any]) -> list[Problem]:
    """`problems` that pydantic did not also find at, inside or around their place: a field of an annotator's options
    model says itself what its number must be (`options.threshold`: "a finite number in [0, 1]"), an unknown key that
    it is unknown. The note that a section's checks across fields were not run (`checks_skipped`, at `options`) is
    about none of its values: it hid `options.grounding_options.x: inf ...` beside another option's error."""
    places = [(_place(e["loc"]), e["type"] == "checks_skipped") for e in errors if e["loc"]]
    around = {prefix for other, _ in places for prefix in _prefixes(other)}      # a place at or inside one of them
    plain = {other for other, note in places if not note}
    return [(place, message) for place, message in problems
            if place not in around and plain.isdisjoint(_prefixes(place))]


def _prefixes(place: str) -> list[str]:
    """Every place `place` is at or under (`_at_or_under`): `a`, `a.b`, `a.b[0]` for `a.b[0]`. The checks of places
    against places look these up in a set: compared pair by pair, a file of 20000 options holding a NUL byte (20000
    problems, 20000 unknown keys) took 8 minutes to be refused (500 KB, well inside MAX_CONFIG_BYTES)."""
    return [place[:i] for i in range(1, len(place)) if place[i] in ".["] + [place]


def load_config(model: type[M], path: str | Path | None = None,
                overrides: dict[str, Any] | list[str] | None = None, base: dict | None = None,
                before_validate: Callable[[dict], None] | None = None, sources: Mapping[str, str] | None = None,
                base_from: str | None = None, flags: Mapping[str, str] | None = None) -> M:
    """defaults (the model) < `base` < YAML file < overrides; errors name the offending key. `before_validate(tree)`
    sees the merged values just before they are validated: a command imports the plugins they name there, since
    validation checks names those plugins register (a corpus format in the same config file was unknown).
    `sources`: override keys that came from elsewhere than the command line, with where (an environment variable,
    `SIGMA_REDIS_URL`): an error at or under one starts with it, since the key alone (`redis.url`) sent the user
    looking for a config file that does not set it. `base_from`: the file `base` was read from, when the caller read
    it (the service's `--config` or `$SIGMA_SERVE_CONFIG`), named as `path` is: its errors said "the config file".
    `flags`: override keys a command's own flag gave, with the flag as written (`threshold` → `--threshold`): a value
    the config refuses there is the flag's mistake, `bad_arguments` naming it (`_flag_error`)."""
    tree: dict = dict(base or {})
    named = path if path is not None else base_from
    lines = dict(getattr(base, "lines", {}))        # where a `base` read by `read_yaml` holds what `_unfit` refuses
    if path is not None:
        read = read_yaml(path)
        lines = {**lines, **read.lines} if isinstance(read, ConfigFile) else lines
        tree = deep_merge(tree, read)
    if isinstance(overrides, list):
        overrides = read_overrides(overrides)
    given = {k: v for k, v in (overrides or {}).items() if isinstance(v, Override)}
    set_here = tuple(overrides or {})

    def source(place: str) -> str:
        return next((f"{label}: " for key, label in (sources or {}).items() if _at_or_under(place, key)), "")

    def origin(key: str) -> str:
        if source(key):
            return source(key)
        if any(key == k or key.startswith(k + ".") for k in set_here):
            return "override "
        return f"{named}: " if named is not None else ""

    def came_from(place: str) -> str:
        """Where a text `_refuse_nul` refuses came from: the variable, the `key=value` argument as typed, or the file
        and its line ("threshold: holds a NUL byte" named none of them)."""
        if said := source(place):
            return said
        key = next((k for k in set_here if _at_or_under(place, k)), None)
        if key is not None:
            if key in (flags or {}):
                return f"{flags[key]}: "
            typed = given.get(key)
            return (f"override {shown(escape_surrogates(printable(f'{key}={typed.text}')), 100)}: "
                    if typed is not None else "override ")
        if named is None:
            return ""
        return f"{named}, line {lines[place]}: " if place in lines else f"{named}: "

    found: list[Problem] = []
    placeable = {}
    for key, value in resolve_overrides(model, overrides or {}).items():
        if "" in key.split("."):        # `.io.align`, `io..align`, `io.align.`, SIGMA__QUEUE____LEASE_MS
            # were said as `<root>:` / `io.:` unknown keys, or (`io.align.`) as "not a valid boolean"
            _found(found, key, f"{origin(key)}{key!r}: a key with an empty name in it (a leading, trailing or doubled "
                   "'.'); keys are dotted names, e.g. io.align")
        elif key.count(".") >= MAX_CONFIG_DEPTH:
            # a key is as deep as a value may be (`_check_size`): `options.a.a.…` 10000 parts deep was built into the
            # tree, and the walks after (`non_finite_options`) died in a RecursionError traceback
            _found(found, key, f"{origin(key)}{shown(key, 80)}: a key of {key.count('.') + 1} dotted parts; a config "
                   f"is nested at most {MAX_CONFIG_DEPTH} levels deep")
        elif (past := _through_a_setting(model, key)) is not None:
            _found(found, key, f"{origin(key)}{key}: {past[1]}")
        else:
            placeable[key] = value
    if sources:
        placeable, sources = _capitals_as_known(model, tree, placeable, sources)
    written = tree
    tree = apply_overrides(tree, placeable, found, origin)
    _refuse_options_of_another(model, written, tree, set(placeable), origin, named, found)
    _one_spelling(model, tree, origin, found)
    whole_numbers(model, tree, origin, problems=found)
    before = len(found)
    _refuse_nul(tree, found, came_from)
    # a flag's text refused there (`--consumer $'g\r'`) is the flag's mistake, said alone as `_flag_error` says one
    if by_flag := [message for place, message in found[before:]
                   if any(_at_or_under(place, key) for key in flags or {})]:
        raise InputError("; ".join(by_flag), code="bad_arguments")
    loose: list[Problem] = []               # said unless a field's own check says it (`_unsaid`)
    non_finite_options([model], tree, origin=origin, problems=loose)
    if before_validate is not None:
        _prepare(before_validate, tree, model, found)
    try:
        config = model.model_validate(tree)
    except ValidationError as exc:
        taken = {place for place, _ in found}
        errors = [e for e in exc.errors() if taken.isdisjoint(_prefixes(_place(e["loc"])))]
        rest = [*found, *_unsaid(loose, errors)]
        flagged = _flag_error(errors, flags or {})
        if flagged is not None:     # the flags' line, then the rest of the config's problems on their own
            errors = [e for e in errors if not _at_a_flag(e, flags or {})]

        def said_by(error: Any) -> str:
            """`source` of an error's place, and for an unknown key the variables that gave keys under it alone
            (`SIGMA__BOGUS__X=1` is an unknown `bogus`: it was said without the variable, which every other error
            of a variable's value names)."""
            place = _place(error["loc"])
            if (said := source(place)) or error["type"] != "extra_forbidden":
                return said
            if _holds_place(written, error["loc"]) or any(
                    _at_or_under(key, place) for key in set_here if not source(key)):
                return ""               # the file or the command line gave keys there too
            under = [label for key, label in (sources or {}).items() if _at_or_under(key, place)]
            return f"{', '.join(dict.fromkeys(under))}: " if under else ""

        problems = [(e["loc"][0] if e["loc"] else "",
                     _sourced(_message(e, given, model, origin, tree, said_by(e)[:-2]), said_by(e))) for e in errors]
        if flagged is None:
            raise _one_error(model, rest, problems) from exc
        if rest or any(e["type"] != "checks_skipped" for e in errors):     # not a section's note alone
            flagged.also = (_one_error(model, rest, problems),)
        raise flagged from exc
    if found or loose:
        raise _one_error(model, [*found, *loose], [])
    return config


def _holds_place(tree: Any, loc: tuple) -> bool:
    """Whether `tree` (a file's values, before the overrides) gives the place `loc` of a pydantic error."""
    for part in loc:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _capitals_as_known(model: type[BaseModel], tree: dict, overrides: dict[str, Any],
                       sources: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """`overrides` and their `sources`, each key from a `SIGMA__...` variable (`sigma.service.settings.env_key`, which
    reads a part written in capitals in lower case) spelt in capitals where the config knows the key only so: a
    plugin's option `K` (or `TAU_MS`) had no spelling at all, since `SIGMA__WORKER__OPTIONS__K` set `k`, an unknown
    key (whose did-you-mean told the user to write `SIGMA__WORKER__OPTIONS__K`, what they had written), and the only
    way was the whole mapping, `SIGMA__WORKER__OPTIONS='{K: 1}'`, which replaced every option of the file. A part is
    kept in capitals only where the key in lower case is not one the config knows there and the key in capitals is
    (`_models_at`, on the tree with the overrides in place: an option's model is the annotator's they name), so a
    config that was taken reads as before. A free mapping, whose keys no model knows, keeps the lower case."""
    if not any(name.startswith("SIGMA__") for name in sources.values()):
        return overrides, dict(sources)
    placed = apply_overrides(tree, overrides, [])           # where each key's models are: problems said later
    out: dict[str, Any] = {}
    named = {key: name for key, name in sources.items() if key not in overrides}
    for key, value in overrides.items():
        variable = sources.get(key, "")
        parts, spelt = key.split("."), variable[7:].split("__")
        if variable.startswith("SIGMA__") and len(spelt) == len(parts):
            for i, (part, capitals) in enumerate(zip(parts, spelt)):
                if capitals == part or capitals != capitals.upper():
                    continue
                known = {field.alias or name for m in _models_at(model, placed, tuple(parts[:i]))
                         for name, field in m.model_fields.items()}
                if part not in known and capitals in known:
                    parts[i] = capitals
        dotted = ".".join(parts)
        if dotted in out and dotted != key:     # a later layer (the command line) gives the key in capitals itself
            continue
        out[dotted] = value
        if key in sources:
            named[dotted] = sources[key]
    return out, named


def flags_named(flags: Mapping[str, Any], names: Mapping[str, str] | None = None) -> dict[str, str]:
    """`load_config(flags=...)` for the flags given (not None) of `flags` (dotted key → value): each key with its flag
    as written, `--` and the key's last part, `_` as `-` (`input.shard_size` → `--shard-size`), unless `names` says
    otherwise. A value the config field refuses is then `bad_arguments` naming the flag, as argparse's own refusal
    of the same flag is, while `--set` and `KEY=VALUE` stay `invalid_config`."""
    return {key: (names or {}).get(key) or "--" + key.rsplit(".", 1)[-1].replace("_", "-")
            for key, value in flags.items() if value is not None}


def _flag_error(errors: list[Any], flags: Mapping[str, str]) -> InputError | None:
    """The errors at keys a command's flag gave (`flags`: key → flag) as one `bad_arguments` line naming each flag,
    its value and what the field takes, or None when there are none. `--threshold nan` and `--batch-size 100000`
    were `invalid_config` ("threshold: Input should be ..."), while `--threshold abc`, refused by argparse, was
    `bad_arguments`: one flag, two codes for one mistake. The check stays the config field's own (pydantic's); only
    its words name the flag. The config's other problems (a `--set`'s) are said after it (`also`), not left for the
    next run."""
    said = []
    for error in errors:
        flag = _at_a_flag(error, flags)
        if flag is not None:
            value = error.get("input")
            given = (f" {shown(repr(value), 80)}" if isinstance(value, str) else f" {shown(value, 80)}"
                     if isinstance(value, (int, float)) else "")
            said.append(f"{flag}{given}: {error['msg']}")
    if not said:
        return None
    return InputError("; ".join(said), code="bad_arguments")


def _at_a_flag(error: Any, flags: Mapping[str, str]) -> str | None:
    """The flag (of `flags`: key → flag) that gave the value pydantic's `error` is at or under, or None."""
    place = _place(error["loc"])
    return next((flag for key, flag in flags.items() if _at_or_under(place, key)), None)


def _one_spelling(model: type[BaseModel], tree: Any, origin: Callable[[str], str], problems: list[Problem],
                  prefix: str = "") -> None:
    """A setting given in two of its spellings (a field's `AliasChoices`: `limits.max_bytes`, `max_image_bytes`) is a
    problem naming both and where each was written: pydantic took one and refused the other as an unknown key,
    "limits.max_image_bytes: Extra inputs are not permitted (did you mean 'limits.max_bytes'?)", whichever layers gave
    them (a file's max_bytes under `--set limits.max_image_bytes=...`), so the line said neither what was wrong nor
    where. The spellings after the first are taken out of the tree (in place), so that the one problem is said once."""
    if not isinstance(tree, dict):
        return
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            present = [spelt for spelt in alias.choices if isinstance(spelt, str) and spelt in tree]
            if len(present) > 1:
                said = " and ".join(f"{prefix}{spelt} ({_layer(origin(prefix + spelt))})" for spelt in present)
                _found(problems, f"{prefix}{present[1]}", f"{said} are two spellings of one setting, {prefix}{name}: "
                       f"give it once, in one spelling ({prefix}{name} in each place, so that a later layer "
                       "overrides an earlier one: file < environment < command line)")
                for spelt in present[1:]:
                    del tree[spelt]
        key = field.alias or name
        for arm in type_arms(field.annotation):
            if _is_model(arm):
                _one_spelling(arm, tree.get(key), origin, problems, f"{prefix}{key}.")


def _layer(said: str) -> str:
    """Where a value was written, from `load_config`'s `origin`: "override " → the command line, "cfg.yaml: " → the
    file (an environment variable's name likewise), "" → the config."""
    said = said.strip().removesuffix(":")
    return "command line" if said == "override" else said or "config"


def _annotator_sections(model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """The sections of `model` that name an annotator with its options (`NamesAnnotator`): (dotted prefix, model),
    the config itself (`AnnotatorSpec`: prefix "") or one of its fields (the service's `worker.`)."""
    sections = [("", model)] if issubclass(model, NamesAnnotator) else []
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, NamesAnnotator):
            sections.append((f"{name}.", info.annotation))
    return sections


def _refuse_options_of_another(model: type[BaseModel], written: dict, tree: dict, keys: set[str],
                               origin: Callable[[str], str], path: str | Path | None,
                               problems: list[Problem]) -> None:
    """A config file's `options` (and `threshold`) are written for the annotator it names: `annotator: pixel-diff`
    with `options: {threshold: 0.2}` and `--annotator sigma-lite` on the command line ran sigma-lite at a
    probability threshold of 0.2 (pixel-diff's is a pixel difference), and an option sigma-lite lacks was an
    unknown key that did not say why. Each such section is a problem now, naming the file's annotator and the one
    run, unless the command line sets those values itself (`--set options.KEY=...`, `--set options={}`).
    `written`: the tree before the overrides (defaults, `base`, the file); `keys`: the overrides' keys."""
    for prefix, section in _annotator_sections(model):
        before = _section(written, prefix)
        after = _section(tree, prefix)
        named, runs = before.get("annotator"), after.get("annotator")
        if not isinstance(named, str) or runs == named:
            continue
        if prefix and prefix[:-1] in keys:        # the section given whole on the command line
            continue
        left: list[str] = []
        options, now = before.get("options"), after.get("options")
        if isinstance(options, dict) and isinstance(now, dict) and f"{prefix}options" not in keys:
            left += [f"{prefix}options.{key}" for key in options if key in now and f"{prefix}options.{key}" not in keys]
        if ("threshold" in section.model_fields and before.get("threshold") is not None
                and f"{prefix}threshold" not in keys):
            left.append(f"{prefix}threshold")
        if not left:
            continue
        where = f"{path}" if path is not None else "the config file"
        said = origin(f"{prefix}annotator")
        by = said[:-2] if said and said != "override " else "the command line"
        _found(problems, f"{prefix}options",
               f"{where}: {', '.join(left)} {'is' if len(left) == 1 else 'are'} written for annotator {named!r}, "
               f"and {by} runs {shown(runs, 80)!r}: one annotator's options are not another's (a threshold of "
               f"pixel-diff is a pixel difference, of sigma-lite a probability); name {shown(runs, 80)!r} in the "
               f"file, or give its values here ({prefix}options.KEY=..., {prefix}options={{}} for none"
               f"{f', {prefix}threshold=...' if f'{prefix}threshold' in left else ''})")


def _section(tree: dict, prefix: str) -> dict:
    node = tree.get(prefix[:-1]) if prefix else tree
    return node if isinstance(node, dict) else {}


def _sourced(message: str, source: str) -> str:
    """`message` led by `source` (`SIGMA_REDIS_URL: `) unless it already is (a whole-number check's, by `origin`)."""
    return message if message.startswith(source) else f"{source}{message}"


def _prepare(before_validate: Callable[[dict], None], tree: dict, model: type[BaseModel], found: list[Problem]) -> None:
    """`load_config`'s `before_validate(tree)`, run whatever the checks before it found: it was skipped when they
    found anything, so the plugins were not imported and a corpus format one of them registers read as "Unknown
    corpus format" beside the real problems, a false error gone on the next run. When it fails (a plugin that
    cannot be imported), its error comes with theirs; the config is not validated then, since what it checks
    may be what the plugins register."""
    try:
        before_validate(tree)
    except ConfigError as exc:
        if not found:
            raise
        raise _one_error(model, [*found, ("", exc.message)], []) from exc


def _message(error: Any, given: dict[str, Override], model: type[BaseModel], origin: Callable[[str], str],
             tree: dict | None = None, variable: str = "") -> str:
    """One of pydantic's errors as the loader says it: `key: message`, with what YAML made of a `--set` value, or
    (an exponent in a free mapping's model, `ReadsWholeNumbers`) the problem as the loader's own check words it; an
    unknown key with the known one nearest to it (`_meant`). `variable`: the environment variable (`sources`) the
    value came from, if one did."""
    if error["type"] == "whole_number":
        return f"{origin(_place(error['loc']).split('[', 1)[0])}{error_text(error)}"
    if error["type"] == "extra_forbidden":
        dotted = _dotted_note(model, tuple(error["loc"]))
        meant = "" if dotted else _meant(model, tree or {}, tuple(error["loc"]), variable) + _one_key(error["loc"])
        return f"{error_text(_decomposed_shown(error))}{meant}{_decomposed_note(error['loc'])}{dotted}"
    notes = (f"{_yaml_note(error['loc'], given, model)}"
             f"{BOOL_NOTE if error['type'] == 'bool_for_number' else ''}{_base60_note(error)}{_bytes_note(error)}"
             f"{_invisible_note(error)}")
    return f"{error_text(error)}{notes or _value_note(error)}"


# pydantic's errors that say the text could not be read without saying the text
_UNREAD_TEXT = frozenset({"int_parsing", "float_parsing", "bool_parsing", "int_from_float", "decimal_parsing",
                          "date_parsing", "datetime_parsing", "time_parsing", "timedelta_parsing", "url_parsing"})
VALUE_SHOWN = 160       # as every CLI error line cuts a value (docs/foundation.md: more than 320 characters, to 160)


def _value_note(error: Any) -> str:
    """The text a field could not read, as written: `--set threshold=O.5` (a letter O) or `batch_size: four` in a
    file was "Input should be a valid number, unable to parse string as a number", and the user, seeing a number in
    the file, could not tell which value was meant. A long one is cut in the middle, its length said. Not where
    another note shows it already (`_message`)."""
    value = error.get("input")
    if error["type"] not in _UNREAD_TEXT or not isinstance(value, str) or repr(value) in error.get("msg", ""):
        return ""
    if len(value) <= VALUE_SHOWN:
        return f", got {value!r}"
    half = VALUE_SHOWN // 2
    return f", got {value[:half]!r}…{value[-half:]!r} ({len(value)} characters)"


def _dotted_note(model: type[BaseModel], loc: tuple) -> str:
    """For a YAML file's key with dots that names a setting (`io.align: true`, `"io.limits.max_pixels": 9`): YAML
    reads it as one key, which is not the path `--set` reads it as. It was "io.align: Extra inputs are not
    permitted", the place read as the setting itself, so the user saw the very key they meant refused."""
    if not loc or not isinstance(loc[-1], str) or "." not in loc[-1]:
        return ""
    dotted = ".".join(str(part) for part in loc)
    if field_types(model, dotted) is None:
        return ""
    head, _, last = loc[-1].partition(".")
    nested = "".join(f"{{{part}: " for part in last.split(".")) + "..." + "}" * (last.count(".") + 1)
    return (f" (the key {loc[-1]!r} is one key with dots in it, not a path: in a YAML file nest it, {head}: {nested}; "
            f"on the command line a dotted key is a path, --set {dotted}=...)")


def _one_key(loc: tuple) -> str:
    """For an unknown key with a dot in it that names no setting (`io: {1.5: 3}`, `options: {"a.b": 1}`): that it is
    one key, as written. Its place `io.1.5` read as a path of three keys, io, 1 and 5."""
    if not loc or not isinstance(loc[-1], str) or "." not in loc[-1]:
        return ""
    return f" (one key, {shown(loc[-1], 80)!r}, with a dot in it)"


def _decomposed(part: Any) -> bool:
    return isinstance(part, str) and not unicodedata.is_normalized("NFC", part)


def _decomposed_shown(error: Any) -> Any:
    """`error` with each key of its place that is not in Unicode's composed form (NFC) escaped (`cafe\\u0301`): a
    file (or two `--set`s) with `café` and `cafe\u0301` (e + a combining accent, as macOS and some editors write it),
    two keys to YAML and to the config, said "options.café: Extra inputs are not permitted" twice, alike to the eye."""
    if not any(_decomposed(part) for part in error["loc"]):
        return error
    loc = tuple(part.encode("ascii", "backslashreplace").decode() if _decomposed(part) else part
                for part in error["loc"])
    return {**error, "loc": loc}


def _decomposed_note(loc: tuple) -> str:
    """What a decomposed key (`_decomposed_shown`) holds, by code point, and the composed key it is not."""
    part = next((part for part in loc if _decomposed(part)), None)
    if part is None:
        return ""
    marks = dict.fromkeys(c for c in part if unicodedata.combining(c))
    names = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, '?')}" for c in list(marks)[:3])
    escaped = shown(part.encode("ascii", "backslashreplace").decode(), 80)
    return (f" ({escaped} is written decomposed, with {names or 'characters NFC composes'}: a key other than its "
            f"composed form {shown(unicodedata.normalize('NFC', part), 80)!r})")


def _invisible_note(error: Any) -> str:
    """For an error whose value is text holding characters that do not show (a byte-order mark, a zero-width space,
    a control character: `printable` escapes them), the value escaped and each such character named. `--set
    threshold=$'0.\ufeff1'` (a BOM pasted from a Windows file) was "threshold: Input should be a valid number, unable
    to parse string as a number", and the value the user looked at read as a number. Not where the message shows the
    value already (escaped, as `repr` writes it), nor for a value of bytes that are not UTF-8 (`_bytes_note`)."""
    value = error.get("input")
    if not isinstance(value, str) or error["type"] in ("string_unicode", "extra_forbidden") or value.isprintable():
        return ""
    hidden = [c for c in dict.fromkeys(value) if printable(c) != c]
    if not hidden or repr(value) in error.get("msg", ""):
        return ""
    names = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'a control character')}" for c in hidden[:4])
    return (f" (the value is '{shown(printable(value), 80)}': it holds {names}{', …' if len(hidden) > 4 else ''}, "
            "which do not show)" if len(hidden) > 1 else
            f" (the value is '{shown(printable(value), 80)}': it holds {names}, which does not show)")


def _bytes_note(error: Any) -> str:
    """For pydantic's "unable to parse raw data as a unicode string": what it means, and the value (escaped). The text
    holds bytes that are not UTF-8 (an environment variable or argument, which Python reads as surrogate escapes):
    `SIGMA__QUEUE__GROUP=$'\\xff'` was said that way alone, showing nothing of what was wrong."""
    value = error.get("input")
    if error["type"] != "string_unicode" or not isinstance(value, str):
        return ""
    return f" (it holds bytes that are not UTF-8 text: {shown(ascii(value), 80)})"


# A plain scalar YAML 1.1 read as a base-60 number (`_StrictLoader.resolve` reads it as text).
_BASE60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


def _base60_note(error: Any) -> str:
    """For a number field given `1:00`: why it is text here, where YAML 1.1 (and so this loader, before) read 60."""
    value = error.get("input")
    if error["type"] in ("int_parsing", "float_parsing") and isinstance(value, str) and _BASE60.fullmatch(value):
        return f" ({value!r} is not read as YAML 1.1's base 60, h:m:s; write the number itself)"
    return ""


def _place(loc: tuple) -> str:
    """A pydantic error's place as the checks before validation write theirs: `a.b[0]`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _at_or_under(place: str, found: str) -> bool:
    return place == found or place.startswith((f"{found}.", f"{found}["))


def _one_error(model: type[BaseModel], found: list[Problem], problems: list[tuple[Any, str]]) -> ConfigError:
    """One ConfigError for every problem of the config: the checks before validation (`whole_numbers`,
    `_refuse_nul`) raised alone, on the first, so `sigma train c.yaml name=$'a\\x00b' steps=abc` said only `name`
    and the user fixed one error per run. Their problems come with pydantic's (whose errors at or inside their places
    were dropped: `1.5e0` is also "unable to parse string as an integer", a NUL key also an unknown one), ordered by
    the config's fields as declared, theirs first within a field. One problem of theirs alone reads as before."""
    ours = [(re.split(r"[.\[]", place, maxsplit=1)[0], message) for place, message in found]
    ordered = sorted([*ours, *problems], key=lambda item: field_position(model, item[0]))
    text = "; ".join(message for _, message in ordered)
    # a front end's variant of a config (`WorkerServeConfig`) is named as the config it is (its `title`)
    name = model.model_config.get("title") or model.__name__
    return ConfigError(f"invalid {name}: {text}" if problems or len(found) > 1 else text)


# A bool where a number belongs (`sigma.config.schema.Strict`) is most often YAML 1.1's reading of a bare word.
BOOL_NOTE = " (YAML reads yes/no, on/off and true/false as booleans)"


def _yaml_note(loc: tuple, given: dict[str, Override], model: type[BaseModel]) -> str:
    """What YAML made of the `--set` value behind an error, when the field does not take a value of that kind: a
    mapping from `a: b`, a list from `[x]`, a date, or text cut at a ` #` comment."""
    dotted = ".".join(str(p) for p in loc)
    for key, o in given.items():
        if dotted != key and not dotted.startswith(key + "."):
            continue
        accepts = field_types(model, key)
        if accepts is None or type(o.value) in accepts.types or (      # read as meant; the error is about the value
                isinstance(o.value, list) and accepts.types & {tuple, set, frozenset}):   # YAML has lists only
            continue
        if isinstance(o.value, (dict, list, datetime.date)) or isinstance(o.value, str) and o.value != o.text.strip():
            shown = json.dumps(o.value, default=str, ensure_ascii=False)[:80]
            # said as `KEY=VALUE`, the form every entry takes (after `--set`, or `sigma train`/`synth`'s own, which
            # refuse `--set`: the note told them `--set '...'`)
            return (f" ({key}={o.text!r} was read as YAML, giving {shown}: ': ', ' #' and brackets are "
                    f"YAML syntax; to pass the text itself, quote it inside the argument: '{key}=\"{o.text}\"')")
    return ""


def config_hash(config: BaseModel | dict) -> str:
    """Short stable hash of a resolved config; outputs are keyed by it."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def save_resolved(config: BaseModel | dict, directory: str | Path, name: str = "config.yaml",
                  durable: bool = False) -> Path:
    """Write the resolved config next to an output, atomically, so every result can be reproduced. The temporary
    file is this writer's own (pid + random, `sigma.tempfiles.temp_name`, which a later run's sweep knows): with
    one shared `config.yaml.tmp`, two processes writing one folder's config truncated each other's file, and a
    rename installed a half-written or the other's config, or found the file gone (FileNotFoundError). A write
    that fails (a value YAML cannot write, a full disk) takes its temporary file with it. `durable`: its bytes
    fsynced before the rename (the caller syncs the folder after), for outputs whose other files are."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    text = resolved_yaml(config)          # before any file: a config YAML cannot write leaves nothing behind
    return replace_atomically(target, text.encode("utf-8"), durable=durable)


# the first line of a resolved config holding a name that is not UTF-8 (docs/foundation.md, `sigma eval`)
NOT_UTF8_NOTE = ("# a \\uDCXX in a value below is the byte 0xXX of a file or folder name that is not UTF-8 (Python's "
                 "surrogate escape, os.fsencode): sigma and Python's yaml read the name back exactly\n")


def resolved_yaml(config: BaseModel | dict) -> str:
    """The text of a resolved config file (`save_resolved`), for a writer that puts it down with other files at
    once (`sigma eval`: metrics.json and config.yaml, `sigma.io.outputs.replace_together`). A path of bytes that are
    not UTF-8 (`--data $'d\\xff'`) is kept as YAML writes its surrogate escape, `"d\\uDCFF"`: the one form that
    reads back to the same folder (`sigma train --resume`, `batch run --resume` reopen it). Other tools show it as
    U+FFFD or refuse it, without a word on why: the file now says what it is in its first line (`NOT_UTF8_NOTE`)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    text = yaml.safe_dump(data, sort_keys=False)
    return NOT_UTF8_NOTE + text if find_surrogate(data) else text
