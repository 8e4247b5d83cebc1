"""The run record (OUT/run.json) held to the run hash that names every output.

run.json lies where anyone who may write the run folder may edit it (a shared volume, a fleet's batch root), and
it can be damaged or written by another version of sigma. What a run does next is read from it: the shard plan
(the file, offset and rows each shard reads) by every `--resume`, `sigma batch submit` and fleet worker, the
config (annotator, options, corpus) by the fleet workers, the exports and the review page. A run.json edited
between a first, partial run and its `--resume` made the second half annotate other pairs (a shard's `file`
pointed at another corpus) under the same run hash, in the same folder: two kinds of masks in one dataset, and
nothing said so.

The run hash is the anchor that does not live in run.json alone: `sigma batch run --resume` and `sigma batch
submit` compute it again from their own command line, a fleet task brings it from Redis. A record is trusted
only when its config, corpus identity, model and (version 2 on) its shard plan hash to that run, and its
`config.input` names the corpus its identity records. A version 1 record (planned before the plan was hashed)
is checked by planning its corpus again: it stays resumable while the corpus plans the same shards.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sigma.batch.config import BatchConfig
from sigma.batch.layout import RunDir
from sigma.errors import InputError, error_text
from sigma.io.corpora import Corpus
from sigma.io.corpora.base import unique_keys
from sigma.registry import options_model
from sigma.text import dumps_finite, loads, shown

# 2: the run hash covers the shard plan (`plan_digest`) and `config.input.path` is the corpus's resolved path
RUN_VERSION = 2
VERSIONS = (1, 2)
MODIFIED = "run_modified"
FIX = "Restore run.json, or start the run again in a new --out (or after deleting this run folder)"
# a record that holds to its run hash whose options the annotator's config, as this sigma (and its plugins) has it,
# no longer accepts (an option renamed or removed, a range tightened since the run was planned)
OPTIONS_REFUSED = "run_options_refused"
OPTIONS_FIX = ("Continue it with the sigma version (and plugins) that planned it, or start it again in a new --out "
               "with options this version accepts (`sigma models` lists the annotators)")


def plan_digest(shards: list[Any]) -> str:
    """sha256 of the shard plan as run.json holds it (the same text whether hashed at planning or read back).
    A plan holds no NaN: it is dumped as it is, and only one that does is made finite first (the same text either
    way). Walking it to make it finite was 70% of the cost, and every `sigma batch status` and export hashes it."""
    try:
        text = json.dumps(shards, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        text = dumps_finite(shards, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def plan_dicts(shards: list[Any]) -> list[Any]:
    """Shards as run.json holds them once written and read back (tuples are lists)."""
    return loads(dumps_finite([s.to_dict() for s in shards]))


def record_version(record: dict[str, Any], where: Any) -> int:
    version = record.get("version", 1)
    if isinstance(version, bool) or version not in VERSIONS:
        raise InputError(f"{where}: record version {shown(version)} is not one this sigma knows "
                         f"({', '.join(map(str, VERSIONS))}): written by another version of sigma, or edited. Resume "
                         f"it with the version that planned it. {FIX}", code=MODIFIED)
    return version


# How deep a record's config, corpus identity and model may nest. Planned ones nest a few levels (options a few more);
# JSON reads ~990, and one that deep overflowed the stack of whatever walked it (the hash, the message saying what
# differs): a RecursionError traceback
MAX_RECORD_DEPTH = 100


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


class RecordedConfig(BatchConfig):
    """A run record's config, its annotator options not validated with it. Since the options are validated by the
    annotator's own config (`AnnotatorSpec.options_model`), a record planned with options this sigma no longer
    accepts (renamed, removed, a range tightened) was `run_modified` for every reader, `sigma batch status` included:
    "its config is not a batch config". What the run was planned with is what its hash covers; whether the
    annotator can still be built with it is asked apart (`refused_options`), by those that build it."""

    options_model = None


def recorded_config(record: dict[str, Any], where: Any) -> BatchConfig:
    """The record's config as a BatchConfig (`RecordedConfig`: its options as recorded), its corpus identity and
    model objects: else run_modified."""
    if not isinstance(record.get("corpus"), dict) or not isinstance(record.get("model"), dict):
        raise InputError(f"{where}: its corpus or model is not an object (edited or damaged). {FIX}", code=MODIFIED)
    for name in ("config", "corpus", "model"):
        if _deeper_than(record.get(name), MAX_RECORD_DEPTH):
            raise InputError(f"{where}: its {name} nests more than {MAX_RECORD_DEPTH} levels deep: no run planned it "
                             f"(edited or damaged). {FIX}", code=MODIFIED)
    try:
        cfg = RecordedConfig.model_validate(record.get("config"))
        # as the hash dumps it: options nested deeper than pydantic writes (a few hundred levels; JSON reads ~990)
        # were a ValueError traceback. A config that was planned was dumped then, so this one was not planned
        cfg.model_dump(mode="json")
        return cfg
    except (ValidationError, TypeError, ValueError, RecursionError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) and exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ())) or "config"
        raise InputError(f"{where}: its config is not a batch config ({shown(loc)}: {first.get('msg', exc)}); "
                         f"edited or damaged, or written by another version of sigma. {FIX}", code=MODIFIED) from exc


def refused_options(record: dict[str, Any]) -> str | None:
    """What the annotator's config, as this sigma and the plugins imported have it, refuses in the record's options
    (`options.dilate: Extra inputs are not permitted`), or None: none refused, or the annotator's config is unknown
    here (a plugin not imported, which the builder imports first)."""
    config = record.get("config")
    if not isinstance(config, dict):
        return None
    name, options = config.get("annotator"), config.get("options")
    if not isinstance(options, dict) or not options or not (name is None or isinstance(name, str)):
        return None
    model = options_model(name)
    if model is None:
        return None
    try:
        model.model_validate(options)
    except ValidationError as exc:
        return "; ".join(error_text({**e, "loc": ("options", *e["loc"])}) for e in exc.errors()) or None
    except Exception:  # noqa: BLE001 - a plugin validator's own failure: said where the annotator is built
        return None
    return None


def options_note(record: dict[str, Any], where: Any) -> str | None:
    """The warning a reader of a checked record (status, exports, the review page) gives when its options are
    refused now: it reads the run as recorded, but the run can no longer be continued by this sigma."""
    problem = refused_options(record)
    if problem is None:
        return None
    return (f"{where}: the run's annotator options are no longer accepted by annotator "
            f"{shown(record['config'].get('annotator'))!r} in this sigma ({shown(problem, 300)}): read as recorded; "
            f"it cannot be continued with this version ({OPTIONS_REFUSED})")


def run_warnings(record: dict[str, Any], where: Any) -> list[dict[str, str]]:
    """What a reader of a checked record says of the run beside its counts, as `{"code", "message"}` objects (`[]`
    when nothing): the one list both GET /v1/batches/status and `sigma batch status --json` answer. The CLI's JSON
    had no such key (the warning went to stderr only), so a script reading it could not see that the run can no
    longer be continued by this sigma; the HTTP answer had it. `where` names run.json as the reader shows it."""
    note = options_note(record, where)
    return [] if note is None else [{"code": OPTIONS_REFUSED, "message": note}]


def check_options(record: dict[str, Any], where: Any, then: str = "nothing run") -> None:
    """InputError run_options_refused when the record's options are refused now (`refused_options`): for those
    that build the annotator from the record (`--resume`, a submission again, a fleet worker). Without it they
    failed as if run.json had been edited (`run_modified`, "Restore run.json"), or on a command line's own options
    (`invalid_config`), with no word that the run itself can no longer be continued by this sigma."""
    problem = refused_options(record)
    if problem is not None:
        raise InputError(f"{where}: the run was planned with annotator options this sigma no longer accepts for "
                         f"annotator {shown(record['config'].get('annotator'))!r} ({shown(problem, 300)}); {then}. "
                         f"{OPTIONS_FIX}", code=OPTIONS_REFUSED)


def record_hash(cfg: BatchConfig, record: dict[str, Any], version: int, digest: str | None = None) -> str:
    """What run hash `cfg`, with the record's corpus identity, model and plan, names. `digest`: the plan's
    `plan_digest`, when the caller has it already (hashing a plan of 50,000 shards reads 15 MB)."""
    plan = (digest or plan_digest(record["shards"])) if version >= 2 else None
    return cfg.run_hash(record["corpus"], record["model"], plan)


def input_problem(cfg: BatchConfig, corpus: dict[str, Any], version: int) -> str | None:
    """How `config.input` differs from the corpus identity the run hash covers, or None. `input` is outside the
    hash (where the corpus is spelt is not what it is): its identity stands for it, so the two must agree. A
    version 1 record may hold the path as it was typed, relative to wherever the run started: not checkable here
    (a fleet worker checks the corpus it opens, `corpus_identity_problem`)."""
    given = cfg.input
    if "format" in corpus and given.format not in ("auto", corpus["format"]):
        return f"input.format {shown(given.format)!r}, its corpus is {shown(corpus['format'])!r}"
    for name, value in (("preset", given.preset), ("columns", dict(sorted(given.columns.items()))),
                        ("shard_size", given.shard_size)):
        if name in corpus and value != corpus[name]:
            return f"input.{name} {shown(value)}, its corpus has {shown(corpus[name])}"
    path, recorded = given.path, corpus.get("path")
    if recorded is None:
        return None
    if version >= 2:
        same = path == recorded
    elif not os.path.isabs(path):
        return None
    else:
        try:
            same = str(Path(path).resolve()) == recorded
        except (OSError, ValueError):          # a NUL byte, a loop of links
            same = False
    return None if same else f"input.path {shown(path)!r}, its corpus is {shown(recorded)!r}"


def restated_problem(record: dict[str, Any]) -> str | None:
    """How the two fields of the record that restate what the hash covers differ from it, or None: `format` (the
    corpus identity's, shown by the review page and the dataset card) and `planned_pairs` (the plan's pair count,
    shown by `sigma batch status`). Outside the hash, an edit of either went unnoticed everywhere."""
    corpus = record["corpus"]
    if "format" in corpus and record.get("format") != corpus["format"]:
        return f"format {shown(record.get('format'))!r}, its corpus is {shown(corpus['format'])!r}"
    counts = [shard.get("num_items") for shard in record["shards"]]
    planned = sum(counts) if all(c is not None for c in counts) else None
    if record.get("planned_pairs") != planned:
        return f"planned_pairs {shown(record.get('planned_pairs'))}, its shard plan holds {shown(planned)}"
    return None


def check_record(record: dict[str, Any], run_hash: str, where: Any, then: str = "nothing run",
                 compare: dict[str, Any] | None = None, digest: str | None = None) -> BatchConfig:
    """The record's config when the record holds to `run_hash` (its config, corpus, model and plan hash to it, its
    input names its corpus, its format and pair count are its corpus's and plan's); else InputError run_modified.
    `then`: what the refusal says was not done. `compare`: the output fields (`BatchConfig.output_fields`) of the
    run the caller means, to name the first field that differs when the hash does not hold. `digest`: the plan's
    `plan_digest`, when the caller computed it already."""
    version = record_version(record, where)
    cfg = recorded_config(record, where)
    if record_hash(cfg, record, version, digest) != run_hash:
        part = "config, corpus, model or shard plan" if version >= 2 else "config, corpus or model"
        found = (first_difference(cfg.output_fields(record["corpus"], record["model"]), compare)
                 if compare is not None else None)
        if compare is not None and found is None:
            found = "its shard plan or its run_hash was changed" if version >= 2 else "its run_hash was changed"
        raise InputError(f"{where}: its {part} no longer hashes to run {shown(run_hash)} (edited or damaged after "
                         f"the run was planned{': ' + found if found else ''}); {then}. {FIX}", code=MODIFIED)
    problem = input_problem(cfg, record["corpus"], version) or restated_problem(record)
    if problem:
        raise InputError(f"{where}: {problem} (edited after the run was planned); {then}. {FIX}", code=MODIFIED)
    return cfg


def verified_record(rundir: RunDir, then: str) -> tuple[dict[str, Any], BatchConfig]:
    """run.json read once and held to the run hash it names, with its config: for the commands that read a run
    with no command line to hash again (`sigma export`, `sigma report`, `sigma batch status`). Its outputs carry
    that hash, not run.json alone: each shard file is named by it, each status records it, each row holds it. So a
    run.json edited without its hash (annotator, options, corpus, a shard's file or rows) no longer hashes to it,
    and one whose run_hash was made up to match names none of the run's outputs (no shard is done under it).
    The export and the review page described the masks by what an edited run.json said (the dataset card's
    annotator, weights and corpus) and read the pairs its plan named. Version 1 records are checked as
    `check_record` checks them; their plan, against the corpus by whoever opens it (`corpus_problem`)."""
    record = rundir.load()
    return record, check_record(record, record["run_hash"], rundir.run_file, then)


def first_difference(recorded: Any, planned: Any, other: str = "in this command", where: str = "") -> str | None:
    """The first key path where two JSON values differ, with both values (cut): `options.threshold: 0.9 in run.json,
    None in this command`; None when they are equal."""
    if isinstance(recorded, dict) and isinstance(planned, dict):
        for key in sorted(set(recorded) | set(planned), key=str):
            inner = f"{where}.{key}" if where else str(key)
            found = first_difference(recorded.get(key), planned.get(key), other, inner)
            if found:
                return found
        return None
    if recorded != planned:
        return f"{shown(where or 'value', 200)}: {shown(recorded, 200)} in run.json, {shown(planned, 200)} {other}"
    return None


def corpus_identity_problem(corpus: Corpus, record: dict[str, Any]) -> str | None:
    """The corpus a checked config opens is the one the run hash covers, or how it differs."""
    found = first_difference(record["corpus"], corpus.identity(), "as opened")
    return None if found is None else f"the corpus its config opens is not the one it records ({found})"


def plan_problem(corpus: Corpus, record: dict[str, Any]) -> str | None:
    """A version 1 record's plan (outside its hash) against the corpus planned again, or None when they agree."""
    shards = corpus.plan()
    planned = plan_dicts(unique_keys(shards))
    recorded = record["shards"]
    if recorded in (planned, plan_dicts(unique_keys(shards, dash_safe=False))):   # planned before keys lost a `-`
        return None
    if len(planned) != len(recorded):
        return f"it plans {len(recorded)} shards, the corpus now {len(planned)}"
    n = next(i for i, (a, b) in enumerate(zip(recorded, planned, strict=True)) if a != b)
    found = first_difference(recorded[n], planned[n], "in the corpus now")
    return f"its shard {n} differs from the corpus planned again ({found})"


def corpus_problem(corpus: Corpus, record: dict[str, Any]) -> str | None:
    """What a reader of a checked record checks once it opens the corpus: it is the one the run hash covers
    (`corpus_identity_problem`), and a version 1 record's plan, outside its hash, is what the corpus plans
    (`plan_problem`). None when both hold."""
    problem = corpus_identity_problem(corpus, record)
    if problem or record_version(record, "run.json") >= 2:
        return problem
    found = plan_problem(corpus, record)
    return (f"planned by an older sigma (its run hash does not cover the shard plan), and {found}: the corpus "
            "changed since, or run.json was edited") if found else None
