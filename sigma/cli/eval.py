"""`sigma eval`: per-set F1/IoU/AUC of one annotator, as is and under whole-image perturbations."""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from sigma.cli.common import (
    Progress,
    add_config_args,
    add_plugin_arg,
    check_outdir,
    flag_overrides,
    import_plugin_args,
    path,
    refuse_run_folder,
)
from sigma.config.loader import flags_named, load_config, read_overrides, resolved_yaml
from sigma.config.schema import MAX_BATCH_SIZE, AnnotatorSpec, IOConfig
from sigma.errors import InputError
from sigma.folderlock import busy_as_error, folder_lock_wait_s, hold_folder
from sigma.registry import build_annotator, named_annotator, options_model

HELP = """Score an annotator on pairs with ground-truth masks (the layout of ../shared/data/eval:
<set>/pairs.jsonl + images + masks). DATA is one set or a folder of sets.

Per-image F1, IoU and AUC at the annotator's threshold, averaged over manipulated images (IMDL-BenCo);
pooled F1, cIoU and gIoU (PIXAR) as secondary columns. Perturbations touch the edited image only:
vae (TAEF2 encode→decode), jpeg75, jpeg90, resize (down 0.5–0.8× and back), color (gamma/white balance),
regen (a regeneration chain: down 0.6–0.85×, TAEF2, back up, JPEG 80–95, gamma).

The SIGMA models carry two masks (mask_mode, default auto: the synthesised footprint on composites, the
semantic mask elsewhere). F1 in the first table scores the chosen mask; a second table per perturbation
gives the semantic mask's F1, the footprint's F1 over the pairs found to be composites, how many were,
and Spearman's rho between each pair's confidence and its F1; then the mean F1 of the most confident
100/90/75/50/25 % of the editing pairs. All of it is in metrics.json (tables, masks, confidence, per_pair).
"""

EXAMPLES = """examples:
  sigma eval --data ../shared/data/eval --annotator pixel-diff --threshold 0.1
  sigma eval --data ../shared/data/eval --perturb none,vae,jpeg75,resize --out runs/eval-lite
  sigma eval --data ../shared/data/eval --set options.mask_mode=semantic   # the semantic mask as *the* mask
  sigma eval --config runs/eval-lite/config.yaml --out runs/eval-again   # same eval again (its data recorded there)
"""


class EvalConfig(AnnotatorSpec):
    options_model = staticmethod(options_model)        # the options validated with the rest
    data: str | None = Field(None, description="one set folder or a folder of sets (`--data`); config.yaml records "
                             "it as an absolute path, so `sigma eval --config OUT/config.yaml` needs no --data")
    perturb: list[str] = Field(default_factory=lambda: ["none"])
    batch_size: int = Field(4, ge=1, le=MAX_BATCH_SIZE)
    limit: int | None = Field(None, ge=1, description="score only the first N pairs (smoke runs)")
    io: IOConfig = IOConfig()

    # Checked with the rest of the config (as `eval.perturb` of `sigma train` is): `--perturb none,` or `jpeg50` is then
    # `bad_arguments` naming the flag, said beside the command's other flag errors in one run, and `invalid_config`
    # from --set or --config; raised in `run` instead, it was `invalid_config` for the flag and said alone. A text is
    # the flag's form, comma-separated: `--set perturb=none,jpeg75` was refused "Input should be a valid list"
    @field_validator("perturb", mode="before")
    @classmethod
    def _known_perturbations(cls, names: Any) -> Any:
        from pydantic_core import PydanticCustomError

        from sigma.errors import ConfigError
        from sigma.eval.perturb import expand

        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            return names                  # pydantic's own words for what is not a list of names
        try:
            expand(names)
        except ConfigError as exc:        # said as it is (no "Value error, "); the names given quoted, braces and all
            raise PydanticCustomError("perturbation", "{message}", {"message": exc.message}) from None
        return names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score an annotator on an evaluation set (F1/IoU/AUC per set)",
                       description=HELP, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=path,
                   help="one set folder or a folder of sets (each with pairs.jsonl); default: the `data` "
                   "of --config (an earlier eval's config.yaml records it)")
    p.add_argument("--annotator", help="registry name (default: the embedded default)")
    p.add_argument("--threshold", type=float, help="mask threshold (pixel-diff: τ)")
    p.add_argument("--perturb", default=None,
                   help="none|vae|jpeg75|jpeg90|resize|color|regen|all, comma-separated (default: none)")
    p.add_argument("--out", default="sigma_eval", type=path,
                   help="folder for metrics.json and config.yaml (default sigma_eval); an eval killed there is "
                   "continued by the same eval run again (OUT/eval_progress.jsonl)")
    p.add_argument("--restart", action="store_true",
                   help="drop the progress of an unfinished eval in --out and score every pair again")
    add_plugin_arg(p)
    add_config_args(p)
    p.set_defaults(run=run, config_of=config_of, stdout_is_a_log=True)


def config_of(args: argparse.Namespace) -> EvalConfig:
    """The command's config: --config, --set, then its flags (`config_of` of the parser: `refused_said`)."""
    import_plugin_args(args)          # first: --annotator may name an annotator the plugin registers
    # `--perturb ""` (a variable left empty) is no perturbation named, refused as `--perturb ,` is: it ran `none`
    flags = {"annotator": args.annotator, "threshold": args.threshold,
             "perturb": [args.perturb] if args.perturb is not None else None, "data": args.data}
    overrides = flag_overrides(args.overrides, **flags)
    return load_config(EvalConfig, args.config, overrides, flags=flags_named(flags))


def run(args: argparse.Namespace) -> int:
    from sigma.batch.layout import refuse_inside_run
    from sigma.eval import perturb
    from sigma.eval.progress import JOURNAL, fingerprint
    from sigma.eval.progress import Progress as EvalProgress
    from sigma.eval.runner import eval_records, evaluate, format_tables
    from sigma.io.outputs import json_record
    from sigma.tempfiles import replace_together
    from sigma.text import escape_name, printable

    cfg = config_of(args)
    set_data = "data" in read_overrides(args.overrides)
    data = eval_data(cfg.data, None if args.data is not None else "--set data" if set_data else args.config)
    # the options as the annotator reads them (`--set options.image_size=2.24e2` ran at 224): what metrics.json and
    # config.yaml record, as a batch run's config does
    name, options = named_annotator(cfg.annotator, cfg.options)
    cfg = cfg.model_copy(update={"annotator": name, "options": options, "data": str(data),
                                 "perturb": perturb.expand(cfg.perturb)})
    annotator = build_annotator(cfg)
    # lexists, not Path.exists: under a folder the user may not look into (mode 000) that raised PermissionError, an
    # `os_error` before check_outdir could say `bad_outdir` as for every other unusable --out
    # a folder in a batch run's own files (`RUN/status`, `RUN/shards`, `RUN/masks/x`): the eval's metrics.json,
    # config.yaml and .lock landed among the run's status files and shards. Before the folder is made; a folder on the
    # way the user may not search (mode 000) is check_outdir's `bad_outdir`, as before
    try:
        refuse_inside_run(args.out, "--out")
    except PermissionError:
        pass
    made = not os.path.lexists(args.out)
    out = check_outdir(Path(args.out), create=True)   # before the evaluation, not after it
    refuse_run_folder(out, "--out", others=("result.json",))
    # one eval per --out (the default is the same sigma_eval/ for every eval started in a folder): two would
    # write one metrics.json.tmp at once, or leave the metrics of one beside the config of the other; an
    # eval that fails before writing leaves no empty folder it made
    with hold_folder(out, other="--out", created=made):
        writable_results(out)
        records = eval_records(data, cfg.limit)
        resolved = cfg.model_dump(mode="json")
        # the one journal of this eval (sigma.eval.progress): a killed run's batches are read back, not scored again
        journal = EvalProgress.open(out, fingerprint(resolved, annotator.describe(), records), restart=args.restart)
        if journal.done:
            print(printable(f"sigma: continuing the eval killed in {out}: {len(journal.done)} batch(es) of pairs "
                            f"already scored ({JOURNAL}; --restart scores every pair again)"), file=sys.stderr)
        earlier = earlier_eval(out)
        if earlier:
            print(printable(f"sigma: warning: {out} holds the metrics.json of an earlier eval ({earlier}); this eval "
                            "replaces it and its config.yaml when it ends (give another --out to keep both)"),
                  file=sys.stderr)
        with Progress(f"eval {cfg.annotator}") as bar:
            result = evaluate(annotator, data, cfg.perturb, cfg.io, cfg.batch_size, bar.update, cfg.limit,
                              records=records, journal=journal)
        print(f"annotator: {annotator.name}  threshold: {annotator.threshold}  config: {annotator.config_hash}")
        print(format_tables(result))
        for err in result.errors:
            print(printable(f"skipped {err['set']}/{err['id']} ({err['perturbation']}): [{err['code']}] "
                            f"{err['message']}"))
        if not any(result.scores.values()):
            journal.finish()                   # "nothing written": a rerun scores them all again anyway
            raise nothing_scored(data, result.errors)
        # config.yaml is the EvalConfig alone, a valid `--config` (`sigma eval --config OUT/config.yaml` runs the
        # eval again, on its recorded data); it held the record too and was refused as invalid_config
        # (annotator_config: Extra inputs are not permitted). The record (what the annotator read) is metrics.json's
        # `config`, around the same values.
        # its --data as the sets' names are (`escape_name`): by `surrogates_escaped` alone, the folder `d\xff` and
        # one named in plain text `d\udcff` were recorded as one
        record = resolved | {"data": escape_name(resolved["data"]), "annotator_config": annotator.describe()}
        # config.yaml first, metrics.json (which carries the config too) last, the old metrics.json removed in
        # between: a kill leaves the old pair, a config.yaml alone, or the new pair, never the metrics of one run
        # beside the config of another (metrics.json, then config.yaml, each replaced whole, did). The journal is
        # one of the set's removals: an eval killed once metrics.json was in place but before the journal's removal
        # left both, and a rerun with other settings was refused (eval_changed) until --restart, its scores done
        # bounded (`folder_busy`, $SIGMA_FOLDER_LOCK_WAIT_S): another process stopped mid-commit in --out (Ctrl-Z,
        # SIGSTOP; a finish_replacements or a writer that does not take the folder's .lock) kept the eval waiting
        # for ever after its whole evaluation, without a word
        wait_s = folder_lock_wait_s()
        with busy_as_error("write the metrics into", wait_s):
            replace_together([(out / "config.yaml", resolved_yaml(resolved).encode()),
                              (out / "metrics.json", json_record(result.to_dict() | {"config": record}))],
                             remove=[journal.path], timeout_s=wait_s)
        journal.finish()
    print(f"\nwrote {printable(out / 'metrics.json')}")
    return 0


def eval_data(data: str | None, source: str | None) -> Path:
    """The data to score as an absolute path, what config.yaml and metrics.json record: `--data`, else the config's
    `data` (`source` says where that was read; None for --data, whose missing folder `find_sets` names as before).
    `sigma eval --config OUT/config.yaml` of an earlier eval was refused by argparse (`--data` required), and
    metrics.json held `--data` as typed: a relative path, good only in the folder the eval ran in. Neither given:
    bad_arguments; a recorded folder that is gone: file_not_found naming it and where it was recorded. Both before
    the annotator is built or --out taken. A --config without `data` (the config.yaml of an eval from before `data`
    was saved in it) asked for --data as if no config had been given: the message now says why that file has none.
    Its metrics.json is not read instead: the `data` it holds is as typed then, relative to a folder unknown here."""
    if data is None and source is not None:
        raise InputError(f"no data to score: {source} records no `data`. An eval's config.yaml records it (an absolute "
                         "path) since the data path was saved with the config; this one predates that (or never "
                         "named it). Pass --data (an old eval's metrics.json holds its `config.data` as typed then, "
                         "relative to the folder that eval ran in)", code="bad_arguments")
    if data is None:
        raise InputError("no data to score: give --data (one set folder or a folder of sets), or a --config that "
                         "records it (`data:`, as the config.yaml of an earlier eval does)", code="bad_arguments")
    if not data:        # `data: ""` in a file, `--set data="''"`: Path('') is the current folder, scored unasked
        raise InputError(f"`data` of {source or '--data'} is an empty path; name the data's folder (`.` for the "
                         "current folder)", code="empty_path")
    path = Path(data).absolute()
    if source is not None and not path.exists():
        # a shell expands `~` and `$HOME` in --data; nothing does in a config (`data: ~/sets` is a folder named ~)
        unexpanded = (" (`~` and `$VARIABLE` are not expanded in a config: write the path itself)"
                      if data.startswith("~") or "$" in data else "")
        raise InputError(f"{path}: the eval data named by `data` of {source} is not there (moved or deleted since it "
                         f"was recorded?){unexpanded}; give --data", code="file_not_found")
    return path


def writable_results(out: Path) -> None:
    """`bad_outdir` before any pair is scored when --out's metrics.json or config.yaml is a folder (or a FIFO, a
    device): the whole eval ran, then its write failed `os_error` naming a temporary file ("Is a directory:
    OUT/.config.yaml.PID.RANDOM.tmp"), and left the half-done set's plan to fail the same way on every rerun."""
    for name in ("metrics.json", "config.yaml"):
        target = out / name
        if target.is_dir() or (target.exists() and not target.is_file()):
            kind = "a folder" if target.is_dir() else "not a regular file"
            raise InputError(f"{target}: is {kind}, where the eval writes its {name}; remove it or choose another "
                             "--out", code="bad_outdir")


#: the largest metrics.json read to name the eval that wrote it (a large set's per-pair rows run to megabytes)
EARLIER_METRICS_BYTES = 64 * 1024 * 1024


def earlier_eval(out: Path) -> str:
    """What an earlier eval left in `out` (its annotator and data, from its metrics.json), or '' when it holds no
    metrics.json: two evals into one --out replaced the first's results without a word."""
    from sigma.text import loads

    path = out / "metrics.json"
    if not path.is_file():
        return ""
    try:
        if path.stat().st_size > EARLIER_METRICS_BYTES:
            raise ValueError("too large to read here")
        config = loads(path.read_bytes()).get("config") or {}
        annotator, data = config.get("annotator", "an annotator"), config.get("data", "unrecorded data")
        return f"{str(annotator)[:200]} on {str(data)[:400]}"
    except (OSError, ValueError, AttributeError):
        return "one whose metrics.json cannot be read"


def nothing_scored(data: Path, errors: list[dict[str, str]]) -> InputError:
    """`no_pairs` for an eval whose every pair was skipped: it ended with exit 0, an empty table and a metrics.json
    of no scores. How many pairs, why (the codes, counted) and the first message; each was printed as skipped."""
    pairs = len({(e["set"], e["id"]) for e in errors})
    codes = ", ".join(f"{code} ×{n}" for code, n in Counter(e["code"] for e in errors).most_common())
    first = errors[0]["message"] if errors else ""
    return InputError(f"{data}: none of the {pairs} pairs could be scored ({codes}; the first: {first}); nothing "
                      "written", code="no_pairs")
