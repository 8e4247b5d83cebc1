"""Atomic checkpoints (temp file + rename): a kill at any moment leaves the previous checkpoint intact.

The one before it is kept too (`checkpoint.prev.pt`, a hard link, so no copy): a checkpoint that is there but
cannot be read (a disk fault, a file truncated by a full disk before the rename) costs one checkpoint interval,
and a resume says so and goes on, instead of ending the run."""
from __future__ import annotations

import errno
import os
import pickle
import re
import resource
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sigma.errors import ConfigError, InputError, first_line
from sigma.regular import open_regular
from sigma.tempfiles import sweep_stale_temps, sync_folder, temp_name, write_synced_by

CKPT = "checkpoint.pt"
PREV = "checkpoint.prev.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """`state` at RUN/checkpoint.pt, the one before kept as checkpoint.prev.pt, through the shared writers of
    `sigma.tempfiles`: the new checkpoint is written under its own temporary name (`temp_name`), fsynced
    (`write_synced_by`), renamed over checkpoint.pt, and the folder synced (`sync_folder`), so a kill or a power cut
    at any point leaves the old checkpoint or the new one whole. Before, this module had its own twin of that code
    under the shared name `checkpoint.pt.tmp` and never synced the folder (a power cut after the rename could lose
    the rename), and a run killed between the write and the rename left the file beside the checkpoint for good: no
    sweep knows that name. A `temp_name` file of a dead run is removed when the next run holds the folder."""
    target = run_dir / CKPT
    tmp = temp_name(target)
    try:
        write_synced_by(tmp, lambda path: torch.save(state, path))
    except BaseException as exc:
        tmp.unlink(missing_ok=True)          # a partial file would hold the space the next try needs
        if isinstance(exc, RuntimeError):    # torch's zip writer loses the errno ("unexpected pos ..."): say it
            raise _write_failed(run_dir, target, exc) from exc
        raise
    try:
        if target.is_file():
            _keep_previous(target, run_dir / PREV)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(run_dir)                     # both renames (PREV's and the checkpoint's) on disk
    return target


def sweep_checkpoint_temps(run_dir: Path) -> list[Path]:
    """Called by the run that holds `run_dir`: the temporary checkpoints dead writers left there, including the
    legacy `checkpoint.pt.tmp` (and `checkpoint.prev.pt.tmp`) of older sigma versions' fixed temp name. The folder
    holder's sweep (`hold_folder`) knows only `temp_name`'s form, so a run folder from an older version killed
    mid-save kept a whole checkpoint's size of junk for good, resumed or not. `sweep_stale_temps`' rule: a legacy
    name only once older than `LEGACY_AGE_S` (no pid to ask; no writer takes a day to rename its checkpoint)."""
    return sweep_stale_temps(run_dir, {CKPT, PREV})


def _write_failed(run_dir: Path, target: Path, exc: RuntimeError) -> OSError:
    """The OSError a failed torch.save is (its zip writer says "unexpected pos ..." on a full disk, no errno). Under a
    file size limit (`ulimit -f`, RLIMIT_FSIZE) the same RuntimeError came as "the write failed, 78294104 KiB free":
    the limit, the likely cause with that much room, is said (EFBIG)."""
    free = shutil.disk_usage(run_dir).free
    full = free < 64 * 1024 * 1024
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if not full and limit != resource.RLIM_INFINITY:
        return OSError(errno.EFBIG, f"{target}: cannot write the checkpoint (the write failed; files are limited to "
                                    f"{limit // 1024} KiB here: `ulimit -f` / RLIMIT_FSIZE; {first_line(exc, 120)})")
    cause = "no space left on the device" if full else "the write failed"
    return OSError(errno.ENOSPC if full else errno.EIO,
                   f"{target}: cannot write the checkpoint ({cause}, {free // 1024} KiB free; "
                   f"{first_line(exc, 120)})")


def _keep_previous(current: Path, prev: Path) -> None:
    """`current` kept as `prev` (a hard link, no copy; a copy, fsynced, where the file system has no hard links),
    under a temporary name of this writer's own renamed over `prev`: a kill leaves the old `prev` or the new one."""
    keep = temp_name(prev)
    try:
        try:
            os.link(current, keep)
        except OSError:          # a file system without hard links: a copy, on disk before it is renamed
            write_synced_by(keep, lambda path: shutil.copyfile(current, path))
        os.replace(keep, prev)
    except BaseException:
        keep.unlink(missing_ok=True)
        raise


# what torch's zip reader says of a file that is not a whole archive (cut short, bytes changed): its first sentence
_ZIP_FAILED = re.compile(r"PytorchStreamReader (failed [^.\n]{1,200})")


def _read(path: Path, mapped: bool = False) -> dict[str, Any]:
    """The checkpoint at `path`, checked (`_check_fields`); any exception means a damaged one. `mapped`: its tensors
    memory-mapped, not read (`latest_step`: only the step is wanted)."""
    # weights_only: tensors, numbers, strings and containers — everything a checkpoint holds. The full unpickler
    # ran whatever a checkpoint.pt told it to (os.system, at `sigma train --resume` of a run folder from elsewhere)
    with open_regular(path) as handle:    # a FIFO put there after the check: refused, not waited on
        # torch maps only a file named by path: the one opened here, by its descriptor
        source = f"/proc/self/fd/{handle.fileno()}" if mapped else handle
        try:
            state = torch.load(source, map_location="cpu", weights_only=True, mmap=mapped)
        except pickle.UnpicklingError as exc:
            if "Weights only load failed" not in str(exc):
                raise ValueError(f"{_damaged(handle.fileno())} ({_torch_said(exc)})") from exc
            raise ValueError("holds objects other than tensors, numbers and text (refused: unpickling them would "
                             "run code); not a checkpoint sigma train wrote") from exc
        except MemoryError:
            raise
        except Exception as exc:  # torch's reader on a file cut short or changed: any of its errors
            raise ValueError(f"{_damaged(handle.fileno())} ({_torch_said(exc)})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("not a training checkpoint (no step)")
    _check_fields(state)
    return state


def _damaged(fd: int) -> str:
    """A checkpoint torch could not read, as the resume's line says it: its size, for the user to compare with the
    one before (a file cut short by a full disk or a copy that stopped is much smaller)."""
    return f"cut short or damaged ({os.fstat(fd).st_size} bytes): torch could not read it"


def _torch_said(exc: BaseException) -> str:
    """torch's reason, its first sentence: a file cut short was said in miniz's words, cut by the line's bound
    mid-sentence ("... failed finding central directory. This is an internal miniz error. If you are seeing this
    error, there is a high —"), or as a bare `OSError: [Errno 22] Invalid argument` (its seek past the end), which
    reads as a fault of the system, not of the file."""
    said = _ZIP_FAILED.search(str(exc))
    if said:
        return said.group(1)[:80]
    return f"{type(exc).__name__}: {first_line(exc, 60)}" if str(exc).strip() else type(exc).__name__


def _check_fields(state: dict[str, Any]) -> None:
    """What `Trainer.restore` reads, of the kinds it needs: a checkpoint that loads but holds a negative or
    non-integer step (the data stream was asked for sample -6: a ValueError traceback), no optimiser state, or an
    RNG state that is not a byte tensor (TypeError traceback) is a damaged checkpoint like one cut short."""
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step {str(step)[:40]!r} is not a non-negative integer")
    if (not isinstance(state.get("model"), dict)
            or not all(isinstance(v, torch.Tensor) for v in state["model"].values())):
        raise ValueError("no model state (a mapping of tensors)")
    if not isinstance(state.get("opt"), dict) or not {"state", "param_groups"} <= set(state["opt"]):
        raise ValueError("no optimiser state")
    rng = state.get("torch_rng")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        raise ValueError("no torch RNG state (a byte tensor)")
    if state.get("teacher") is not None and not isinstance(state["teacher"], dict):
        raise ValueError("an EMA teacher state that is not a mapping")
    ranks = state.get("world")          # absent from a checkpoint of an older sigma: not known
    if ranks is not None and (not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1):
        raise ValueError(f"world {str(ranks)[:40]!r} is not a number of ranks")


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The checkpoints a resume tries, newest first: checkpoint.pt, then checkpoint.prev.pt (regular files only).
    Some there but `latest_step` None: none readable, which `load_checkpoint` refuses (`checkpoint_unreadable`)."""
    return [p for p in (run_dir / CKPT, run_dir / PREV) if p.is_file()]


def _latest(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint `load_checkpoint` would resume from, judged the same way (the same candidates in the same
    order, each read and checked by `_read`), or None when there is none readable. Its tensors are memory-mapped,
    not loaded. Whether the weights fit the configured model (`load_checkpoint`'s `apply`) is not known here."""
    for path in checkpoint_files(run_dir):
        try:
            return _read(path, mapped=True)
        except Exception:  # noqa: BLE001 - damaged, as load_checkpoint judges it: the one before
            continue
    return None


def latest_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint a resume continues from (`_latest`: memory-mapped, checked), read once for every check a
    resume makes before it starts (`refuse_other_world`, `refuse_changed_shaping`, `saved_stream`,
    `stream_changes`). Each of them read it again: three reads of a checkpoint of several GB, and a checkpoint
    written between two of them (a run still going) had the checks judge different ones."""
    return _latest(run_dir)


#: read from the run folder by the function itself (the callers that judge one checkpoint pass it)
_UNREAD: Any = object()


def latest_step(run_dir: Path) -> int | None:
    """The step `load_checkpoint` would resume from (`_latest`), for a process that is leaving
    (`sigma.training.ranks.rank_lost` names the step). Before, `ranks` walked the candidates itself and checked only
    the step: a checkpoint.pt holding a step but no optimiser state was named as kept while the resume passed over
    it to checkpoint.prev.pt."""
    state = _latest(run_dir)
    return None if state is None else int(state["step"])


def saved_stream(run_dir: Path, state: dict[str, Any] | None = _UNREAD) -> tuple[int, int] | None:
    """(batch_size, seed) of the run that wrote the checkpoint a resume continues from (`Trainer.state` keeps them),
    or None: none readable, or one of an older sigma. `stream_changes` compared the resume's values with the run's
    config.yaml only, so a config.yaml edited by hand (`batch_size: 2` in a run trained with 4) renumbered the
    examples from the checkpoint's step on without a word, while the same change as an override was said. `state`:
    the checkpoint `latest_checkpoint` read (by default read here)."""
    state = _latest(run_dir) if state is _UNREAD else state
    if state is None:
        return None
    batch, seed = state.get("batch_size"), state.get("seed")
    if type(batch) is int and type(seed) is int:
        return batch, seed
    return None


def refuse_other_world(run_dir: Path, ranks: int, state: dict[str, Any] | None = _UNREAD) -> None:
    """`invalid_config` when the checkpoint a resume would continue from was written by a run of another number of
    ranks than `ranks` (`Trainer.state` keeps it as `world`; a checkpoint of an older sigma does not: not refused).

    A resume on 2 ranks of a run trained on 1 was taken without a word: each step's batch is `batch_size` per rank
    (twice the examples per step from then on, under the same learning rate), and step t's examples are numbered
    from t x batch_size x ranks (`data.StepSampler`), so the examples between the two numberings were never seen
    (fewer ranks: seen twice). The run would not go on as it started, and nothing said so. Said before the run
    folder is written (config.yaml stays as it was): every rank reads the same checkpoint, so every rank refuses.
    `state`: the checkpoint `latest_checkpoint` read (by default read here)."""
    state = _latest(run_dir) if state is _UNREAD else state
    saved = None if state is None else state.get("world")
    if saved is None or saved == ranks:
        return
    how = "without torchrun, or torchrun --nproc_per_node 1" if saved == 1 else f"torchrun with {saved} ranks in all"
    raise ConfigError(f"{run_dir}: the run was trained on {_ranks(saved)} (its checkpoint of step {state['step']}) "
                      f"and this resume has {_ranks(ranks)}: the examples of each step (batch_size per rank) and "
                      f"their order depend on the number of ranks; resume it on {_ranks(saved)} ({how}), or start a "
                      "new run from its model/ with init_from", code="invalid_config")


#: the keys of a TrainConfig a resume keeps as the run's own (`refuse_changed_shaping`): the architecture, what trains,
#: and the optimizer with its learning-rate schedule. `steps` is not among them (a run is lengthened by a resume)
SHAPING = ("model", "freeze", "lr", "weight_decay", "warmup_steps", "min_lr_ratio")


def shaping_of(config: dict[str, Any]) -> dict[str, Any]:
    """The `SHAPING` values of a config (its `model_dump(mode="json")`), as `Trainer.state` keeps them."""
    return {key: config[key] for key in SHAPING if key in config}


def shaping_changes(kept: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Each `SHAPING` key whose value differs between `kept` (the run's) and `ours`, as `key OLD -> NEW`."""
    return [f"{key} {_value(kept[key])} -> {_value(ours[key])}" for key in SHAPING
            if key in kept and key in ours and kept[key] != ours[key]]


def refuse_changed_shaping(run_dir: Path, resumed: dict[str, Any], started: dict[str, Any]) -> None:
    """`invalid_config` naming each `SHAPING` key a resume's overrides change (`resumed` against the run's
    config.yaml, `started`; both `model_dump(mode="json")`), with the run's value and the new one, before anything
    in the run folder is written. What the checkpoint keeps is checked as it is restored (`Trainer.restore`: a
    config.yaml edited by hand, a checkpoint of another run copied in, which the one before may replace).

    `--resume RUN lr=0.1` went on at lr 0.1 from the checkpoint's step, mixing two schedules without a word, and wrote
    lr 0.1 into config.yaml; `weight_decay=` was dropped without a word (the optimizer's saved state brings its own).
    Only `model` and `freeze` overrides were refused, naming neither value for the model."""
    changed = shaping_changes(shaping_of(started), shaping_of(resumed))
    if changed:
        raise ConfigError(f"{run_dir}: --resume changes what the run was trained with: {'; '.join(changed)}. "
                          f"{KEPT_ON_RESUME}", code="invalid_config")


#: what a refused resume is told (`refuse_changed_shaping`)
KEPT_ON_RESUME = ("A resume keeps the run's model, freeze, and optimizer and learning-rate schedule (lr, weight_decay, "
                  "warmup_steps, min_lr_ratio): resume without changing them, or start a new run from it with "
                  "init_from=RUN name=...")


def _value(value: Any) -> str:
    """A config value as the refusal shows it: one line, bounded (a `model:` mapping can be long)."""
    import json

    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def stream_changes(run_dir: Path, saved_batch: int, batch: int, saved_seed: int, seed: int, ranks: int,
                   step: int | None = _UNREAD) -> str | None:
    """What a `--resume RUN batch_size=N` or `seed=N` changes in the examples the run trains on, in one line (None
    when neither changed, or the run has no checkpoint and starts over). Both were taken without a word: step t's
    examples are numbered from t x batch_size x ranks (`data.StepSampler`) and drawn from (seed, number), so another
    batch size skips or repeats examples from the checkpoint's step on, and another seed draws the rest of the run
    from another stream. Said, not refused (unlike another number of ranks, `refuse_other_world`): a smaller batch
    for a smaller machine, or a fresh stream, may be what the user wants, but the run is no longer the one started.
    `step`: that of the checkpoint `latest_checkpoint` read (by default read here)."""
    if saved_batch == batch and saved_seed == seed:
        return None
    step = latest_step(run_dir) if step is _UNREAD else step
    if step is None:
        return None
    said = []
    if saved_batch != batch:
        old, new = step * saved_batch * ranks, step * batch * ranks
        gap = (f"examples {old} to {new - 1} are skipped" if new > old else
               f"examples {new} to {old - 1} are read again" if new < old else "none skipped or read again")
        said.append(f"batch_size {saved_batch} -> {batch}: step t reads examples from t x batch_size x ranks, so from "
                    f"step {step} on the run reads from example {new}, not {old} ({gap}), and each step averages "
                    f"{batch} pair(s) a rank under the same learning-rate schedule")
    if saved_seed != seed:
        said.append(f"seed {saved_seed} -> {seed}: the examples from step {step} on are drawn from another stream than "
                    "the first steps' (the run is no longer the one either seed names)")
    return f"{run_dir}: --resume changes the run's examples: {'; '.join(said)}"


def _ranks(n: int) -> str:
    return f"{n} rank{'s' if n != 1 else ''}"


def load_checkpoint(run_dir: Path, warn: Callable[[str], None] | None = None,
                    apply: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """The latest usable checkpoint: checkpoint.pt, else the one before it (with a warning), else None
    when the run has none; `checkpoint_unreadable` when neither can be read.

    `apply` (the trainer's restore) is given each readable checkpoint, newest first; a `ConfigError` from it (the
    checkpoint does not fit the configured model: one of another architecture copied in) moves on to the one before,
    like a damaged file — it stopped the resume with `invalid_config` although checkpoint.prev.pt fitted. Neither
    fitting stays `invalid_config`, naming both. `apply` must leave nothing half-applied that the next call does not
    replace whole (a strict load_state_dict does)."""
    found = checkpoint_files(run_dir)
    # checkpoint.pt gone while the one before it is there (deleted, lost): said like a damaged one, not passed over
    problems = [f"{CKPT}: missing"] if found and found[0].name == PREV else []
    misfit = False
    for path in found:
        try:
            state = _read(path)
        except Exception as exc:  # noqa: BLE001 - a damaged file of any kind: try the one before it
            problems.append(f"{path.name}: {type(exc).__name__}: {first_line(exc)}")
            continue
        if apply is not None:
            try:
                apply(state)
            except ConfigError as exc:
                problems.append(f"{path.name}: {exc}")
                misfit = True
                continue
        if problems and warn is not None:
            warn(f"{problems[0]} — resuming from {path.name} (step {state['step']}) instead")
        return state
    if misfit:
        raise ConfigError(f"{run_dir}: no checkpoint fits the configured model ({'; '.join(problems)}); resume "
                          "with the config the run was started with, or start a new run", code="invalid_config")
    if problems:
        raise InputError(f"{run_dir}: no readable checkpoint ({'; '.join(problems)}); start the run again "
                         "from its best/ or model/ with init_from", code="checkpoint_unreadable")
    return None


#: what a run folder holds only once a checkpoint was written (`Trainer.checkpoint` writes checkpoint.pt, then model/;
#: final/ follows the last checkpoint)
SAVED_WEIGHTS = ("model", "final")


def refuse_lost_checkpoints(run_dir: Path) -> None:
    """`checkpoint_missing` for a run folder with saved weights (model/, final/) but neither checkpoint: both were
    deleted (they are three times the model's size) or lost. The run started over from random weights without a
    word — every row of metrics.jsonl dropped, then model/ and final/ replaced by the new run's: its work lost.
    Called before anything in the folder is written (config.yaml included)."""
    if any((run_dir / name).is_file() for name in (CKPT, PREV)):
        return
    saved = [f"{name}/" for name in SAVED_WEIGHTS if (run_dir / name).is_dir()]
    if saved:
        raise InputError(f"{run_dir}: holds saved weights ({', '.join(saved)}) but no checkpoint ({CKPT} and {PREV} "
                         "are gone): the run would start over from random weights and replace them. Continue from "
                         f"them in a new run (sigma train CONFIG init_from={run_dir} name=...), or remove "
                         f"{' and '.join(saved)} to start this run over", code="checkpoint_missing")
