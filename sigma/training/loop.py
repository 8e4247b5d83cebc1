"""The one training loop for Stage I and Stage II.

A run folder holds: `config.yaml` (the resolved TrainConfig), `checkpoint.pt` (model, optimiser, schedule,
EMA teacher, step; written atomically, the one before kept as `checkpoint.prev.pt`), `metrics.jsonl` (one
JSON object per log/validation event), `model/` (the latest weights as a `sigma.models.save_model` folder,
what `sigma eval` loads) and, at the end, `final/`. Batches are a pure function of (seed, step), so
`--resume` continues the same stream.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from sigma.config.loader import config_hash, load_config, parse_overrides, save_resolved
from sigma.errors import ConfigError, InputError, SigmaError, Stopped, first_line
from sigma.folderlock import folder_lock_wait_s, hold_folder, waiting_lock, watch_stopped_holder
from sigma.io.folders import require_folder
from sigma.io.runmarks import OTHER_THAN_TRAINING, TRAINING_FILES, TRAINING_FOLDERS
from sigma.lifeline import (
    Noted,
    QuickExitSpawnContext,
    die_with_parent,
    interrupts_ignored,
    join_queue_feeders,
    leave_stop_signals_to_parent,
    quiet_failed_handoffs,
    signal_noted,
    stop_signals_deferred,
)
from sigma.tempfiles import has_staged_set, replace_atomically
from sigma.text import dumps_finite, printable
from sigma.training import world

from . import losses as L
from .checkpoint import (
    CKPT,
    PREV,
    latest_checkpoint,
    load_checkpoint,
    refuse_changed_shaping,
    refuse_lost_checkpoints,
    refuse_other_world,
    save_checkpoint,
    saved_stream,
    shaping_changes,
    shaping_of,
    stream_changes,
    sweep_checkpoint_temps,
)
from .config import TrainConfig
from .data import StepSampler, TrainDataset, fixed_val_set, freeze_cache_index, load_val_dir, to_float
from .datawait import DataWait, DataWaitCut
from .ranks import connect, lost_ranks_said, mark_launcher, register_rank, restarted_here
from .regions import sample_regions
from .validate import ValidationAbandoned, evaluate_real, validate_synthetic


def _worker_init(_: int) -> None:
    """Data workers do numpy/OpenCV work: one thread each, so they never oversubscribe the cores.
    Workers are *spawned*: a forked child of a process whose OpenMP pool is running can deadlock.

    Ctrl-C signals the whole process group: a worker took it as its own and died (a KeyboardInterrupt traceback
    from spawn's imports) while the trainer was stopping. Workers start with SIGINT/SIGTERM blocked
    (`QuickExitSpawnContext`: shielded, and ending as a forked child does) and ignore them here, first thing: the
    trainer alone stops, and stops them. A hand-off of a batch the trainer gave up on mid-transfer is not printed
    (`quiet_failed_handoffs`)."""
    leave_stop_signals_to_parent()
    die_with_parent()
    quiet_failed_handoffs()
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _stall_for_tests()


#: test hook, `FIFO:INDEX`: a data worker opens FIFO (no writer: it blocks in the kernel, as a read on a hung
#: network mount does) before it reads any sample from INDEX on (`tests/test_training_signals.py`), its pid appended
#: to `FIFO.stalled` first (a test knows when the workers are stuck)
STALL_ENV = "SIGMA_TEST_WORKER_STALL"


def _stall_for_tests() -> None:
    """`STALL_ENV` set: this worker's dataset blocks, for real, at sample INDEX and after — a worker stuck in a read
    when the trainer stops it, which ignores SIGTERM (above) and outlived torch's shutdown. Unset: nothing."""
    fifo, _, first = os.environ.get(STALL_ENV, "").rpartition(":")
    info = get_worker_info()
    if not fifo or info is None:
        return
    sample = info.dataset.sample

    def stalling(index: int, *args: Any, **kwargs: Any) -> Any:
        if index >= int(first):
            with open(f"{fifo}.stalled", "a") as said:
                said.write(f"{os.getpid()}\n")
            Path(fifo).read_bytes()
        return sample(index, *args, **kwargs)

    info.dataset.sample = stalling


class _SampleChecked(Dataset):
    """`dataset`, `check()` called before each sample: a batch built in the main thread (`num_workers=0`) is cut
    between two samples by a stop (`DataWait.between_samples`), not only once it is whole."""

    def __init__(self, dataset: Dataset, check: Callable[[], None]) -> None:
        self.dataset, self.check = dataset, check

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        self.check()
        return self.dataset[index]


def _until_cut(batches: Iterator[Any], cut: list[DataWaitCut]) -> Iterator[Any]:
    """The batches, until the wait for one is cut short (`DataWait`): the cut is put in `cut` and the iteration
    ends. Only a wait for a batch is caught here, never the loop body's own work (exceptions raised there do not
    pass through this generator)."""
    try:
        yield from batches
    except DataWaitCut as exc:
        cut.append(exc)


class TrainingDiverged(SigmaError):
    code = "training_diverged"


class DataWorkersDying(SigmaError):
    code = "data_workers_dying"


MAX_LOADER_RESTARTS = 3
#: seconds a data worker still alive after torch's shutdown gets, all of them together, before SIGKILL
KILL_GRACE_S = 2.0


def kill_stuck_workers(workers: list, grace: float = KILL_GRACE_S) -> int:
    """SIGKILL those of `workers` (a loader's processes) still alive after `grace` s; how many it killed.

    torch's shutdown joins a worker for 5 s, then falls back to SIGTERM, which our workers ignore (`_worker_init`):
    one stuck in a read (a hung network mount, a C call) outlived it, multiprocessing's exit handler then joined it
    forever and `sigma train` hung at exit instead of ending. Now it is killed and reaped here."""
    deadline = time.monotonic() + grace
    for w in workers:
        w.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [w for w in workers if w.is_alive()]
    for w in stuck:
        w.kill()
    for w in stuck:
        w.join(timeout=5.0)
    return len(stuck)


def shared_eval_dir() -> Path:
    env = os.environ.get("SIGMA_SHARED")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"
    return root / "data" / "eval"


def eval_data_path(data: str | None) -> str | None:
    """The path `eval.data` names ("shared": `shared_eval_dir()`): one reading for the check before the first step
    and each scoring."""
    return str(shared_eval_dir()) if data == "shared" else data


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine to min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _frozen_name(name: str, prefixes: list[str]) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def _freeze(model: torch.nn.Module, prefixes: list[str]) -> int:
    """Hold the parameters under `prefixes` fixed; the number of values held. A prefix that names no
    parameter is a typo that would silently train everything: refused."""
    held = 0
    for prefix in prefixes:
        matched = [p for n, p in model.named_parameters() if _frozen_name(n, [prefix])]
        if not matched:
            tops = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
            raise ConfigError(f"freeze: {prefix!r} names no parameter of this model (its top-level modules: "
                              f"{', '.join(tops)})")
        for p in matched:
            if p.requires_grad:
                p.requires_grad_(False)
                held += p.numel()
    if prefixes and not any(p.requires_grad for p in model.parameters()):
        # every module named: AdamW's "optimizer got an empty parameter list" ValueError traceback
        raise ConfigError(f"freeze: {', '.join(map(repr, prefixes))} holds every parameter of this model fixed: "
                          "nothing would train; freeze fewer modules")
    return held


def init_source(init_from: str) -> Path:
    """The saved model an `init_from` names: a run folder (its final/ or model/), a save_model folder,
    or an `X.safetensors` beside `X.json` (e.g. the shipped sigma/weights/sigma-lite.safetensors), or a folder a
    save killed mid-commit left (its journal instead of config.json)."""
    src = Path(init_from)
    for cand in (src / "final", src / "model", src):
        # a save killed mid-commit leaves its config's journal where config.json was (the load finishes it):
        # refused as `no saved model` before, though `load_model` of that folder gave the saved model whole
        if ((cand / "config.json").is_file() or (cand.suffix == ".safetensors" and cand.is_file())
                or has_staged_set(cand, "config.json")):
            return cand
    raise ConfigError(f"init_from {src}: no saved model (looked for final/, model/, config.json or a .safetensors)")


def _build_model(cfg: TrainConfig, log=print, resuming: bool = False):
    """`cfg.model` is the architecture. With `init_from`, a saved model of the same architecture is
    loaded strictly; a different (grown) one gets every matching tensor, new blocks initialised so the
    grown network starts out computing what the saved one did (`sigma.models.grow`). A run that resumes takes
    every weight from its checkpoint: `init_from` is not read again (it may be gone: deleted, or on the machine
    the run folder was copied from)."""
    from sigma.models import build_model, load_model
    from sigma.models.factory import lock_deadline, read_config
    from sigma.models.grow import grow_from
    from sigma.tempfiles import time_left

    if not cfg.init_from or resuming:
        return build_model(cfg.model, pretrained=True), None
    src = init_source(cfg.init_from)
    # one bound for both reads' waits on the folder (a saver stopped mid-commit there): each had all of
    # $SIGMA_MODEL_LOCK_WAIT_S, and a start that finished a killed save in the first, then met a holder in the
    # second, waited twice it. Building the network between is no wait and does not spend it (a pretrained
    # backbone's load would leave the second read one try, refused by a live saver's moment of commit)
    deadline = lock_deadline()
    saved = read_config(src, deadline=deadline)
    left = time_left(deadline) or 0.0
    model = build_model(cfg.model, pretrained=True)
    if saved.model_dump(exclude={"name"}) == model.config.model_dump(exclude={"name"}):
        return load_model(src, deadline=time.monotonic() + left), None
    report = grow_from(model, str(src), deadline=time.monotonic() + left)
    log(f"init_from {src}: grown to {cfg.model if isinstance(cfg.model, str) else 'the configured model'}: "
        f"{report.summary()}")
    return model, report


def cut_torn_tail(path: Path) -> int:
    """Cut a JSON-lines file back to its last newline; the number of bytes removed (0: it ended with one)."""
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep = end = size
        while end > 0:      # back to the last newline, a block at a time (a long run's log is large)
            start = max(0, end - 65536)
            handle.seek(start)
            found = handle.read(end - start).rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            end, keep = start, 0
        handle.truncate(keep)
    return size - keep


def metrics_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON-object rows of `path` (metrics.jsonl), in order; nothing when it is missing. A line that is no JSON
    object (cut short, damaged) is passed over. One reader for what a resume looks up in the log (the rows that
    TensorBoard gets again, whether a step's validation was logged)."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            yield row


def drop_rows_after(path: Path, step: int, again: frozenset[str] | None = frozenset()) -> int:
    """Remove the rows of `path` (metrics.jsonl) logged past `step`, and those at `step` whose event is in `again`
    (None: every event at `step`); the number removed. A run killed after its last checkpoint had logged the steps
    since, and the resume logs them again: each appeared twice. At the checkpoint's own step the resume writes
    again only what came after the checkpoint (`Trainer._again`: the final validation of a run killed before
    `final/`, a skipped step), so only those kinds go. Written to a new file that replaces the old one (a kill here
    leaves one or the other, whole); untouched when nothing goes. A line that is not a JSON object with an integer
    step is kept as it is."""
    def past(line: bytes) -> bool:
        try:
            row = json.loads(line)
        except ValueError:
            return False
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
            return False
        return row["step"] > step or (row["step"] == step and (again is None or row.get("event") in again))

    with open(path, "rb") as handle:
        lines = handle.readlines()
    kept = [line for line in lines if not past(line)]
    if len(kept) < len(lines):
        replace_atomically(path, b"".join(kept), durable=True)
    return len(lines) - len(kept)


BEST_INFO = "best.json"      # inside best/: the step and score of the weights beside it (the pair's record)


def write_json_atomically(path: Path, info: dict[str, Any]) -> None:
    replace_atomically(path, dumps_finite(info, indent=1).encode())


def save_best(run_dir: Path, model, info: dict[str, Any]) -> None:
    """`best/` replaced by `model` with `info` inside it, then `best.json` (a copy of that record) rewritten.
    Written into `best.new/` (the record last: a folder without it is unfinished), swapped in by two renames
    through `best.old/`; a kill at any point leaves a state `settle_best` completes. With best/ and best.json
    written one after the other, a kill between them left best.json naming a step whose weights were not in best/."""
    import shutil

    from sigma.models import save_model

    new, old, best = run_dir / "best.new", run_dir / "best.old", run_dir / "best"
    shutil.rmtree(new, ignore_errors=True)
    save_model(model, new)
    write_json_atomically(new / BEST_INFO, info)
    shutil.rmtree(old, ignore_errors=True)
    if best.exists():
        os.replace(best, old)
    os.replace(new, best)
    shutil.rmtree(old, ignore_errors=True)
    write_json_atomically(run_dir / "best.json", info)


def _best_record(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / BEST_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(info, dict) and isinstance(info.get("step"), int) and isinstance(info.get("f1"), (int, float))
          and not isinstance(info["step"], bool) and not isinstance(info["f1"], bool))     # `true` is no step or F1
    return info if ok and (folder / "config.json").is_file() else None


def settle_best(run_dir: Path) -> str:
    """Finish what a kill inside `save_best` left: a complete `best.new/` with no `best/` is swapped in, an
    unfinished one removed, `best.old/` restored or removed; then `best.json` is made the copy of the record in
    `best/` (the weights decide). A best/ from before the record existed is left as it is. What was done, or ''."""
    import shutil

    new, old, best = run_dir / "best.new", run_dir / "best.old", run_dir / "best"
    notes = []
    if not best.exists():
        if new.is_dir() and _best_record(new) is not None:
            os.replace(new, best)
            notes.append("the new best weights were written but not yet moved into place; moved")
        elif old.is_dir():
            os.replace(old, best)
            notes.append("restored from best.old/")
    if new.exists():
        shutil.rmtree(new, ignore_errors=True)
        notes.append("an unfinished best.new/ removed")
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    record = _best_record(best)
    if record is not None:
        path = run_dir / "best.json"
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            current = None
        if current != record:
            write_json_atomically(path, record)
            notes.append(f"best.json did not name the weights in best/; rewritten (step {record['step']})")
    return "; ".join(notes)


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, log=print, terminated: Noted | None = None,
                 inputs_read: Callable[[], None] | None = None):
        """`terminated`: a SIGTERM noted by the caller since the command started (`sigma train` notes it from
        before its imports, `start`); `run` notes its own without one. `inputs_read`: called once the training and
        validation data are read, before the first step (`start` writes a resume's config.yaml there)."""
        self.cfg, self.run_dir, self.log = cfg, run_dir, log
        self.terminated = terminated
        self.inputs_read = inputs_read or (lambda: None)
        # the validation a SIGTERM abandoned (step, what, scored, of), for the `paused` row that ends the run
        self.abandoned_validation: dict[str, Any] | None = None
        # the run stopped while it waited for a batch (`DataWait`), for the `paused` row that ends the run
        self.waited_for_data = False
        # the final validation's real set, left unscored: a `sigma synth --out` began rewriting it during the run
        self.unscored_set: str | None = None
        # a SIGTERM pause checkpointed between steps (`_save_stop` done): the data workers' batches are not wanted
        # (`_data_workers`), and the pause does not write its row and checkpoint again
        self.stopping = False
        # torch's env:// rendezvous checked first (`world.rendezvous`): a WORLD_SIZE=2 without torchrun's other
        # variables was its ValueError traceback; the rank and size are given as read, not read again by int()
        self.rank, self.world = world.rendezvous()
        if torch.cuda.is_available():
            # one device per rank of the node, chosen before the ranks connect: a LOCAL_RANK past the last device
            # is said (`no_such_device`), not CUDA's `invalid device ordinal` traceback
            local = world.cuda_device(world.local_rank(), torch.cuda.device_count())
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            if not torch.distributed.is_initialized():
                connect("nccl" if torch.cuda.is_available() else "gloo", self.rank, self.world)
            # for a rank lost mid-run to be named (`rank_lost`); in a group the user's own script started too (its
            # rank and size checked against the environment's by `world.rendezvous`): it was registered only here
            register_rank(self.rank)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.use_bf16 = self.device.type == "cuda" and cfg.amp in ("auto", "bf16")
        torch.manual_seed(cfg.seed)
        self.is_main = self.rank == 0
        if not self.is_main:
            self.log = log = lambda *a, **k: None        # only rank 0 logs
        resuming = any((run_dir / name).is_file() for name in (CKPT, PREV))
        self.model, self.grow_report = _build_model(cfg, log, resuming=resuming)
        self.model = self.model.to(self.device)
        if self.device.type == "cpu" and cfg.channels_last:
            # oneDNN's convolutions run 25 % faster per training step in NHWC on this CPU (measured: 1.11 → 0.83
            # CPU-s for a batch of 12 at 160² px); saved files are plain contiguous tensors either way
            self.model = self.model.to(memory_format=torch.channels_last)
        self.frozen = _freeze(self.model, cfg.freeze)
        if self.frozen:
            log(f"freeze {', '.join(cfg.freeze)}: {self.frozen} parameters held fixed")
        self._train_mode()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.teacher = None
        if cfg.ema.enabled:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ddp = None
        if self.world > 1:
            # Parameters unused on some steps are the rule here, not a bug: the noise head outside Stage II,
            # region tokens on batches that drew no regions. DDP must not wait for their gradients.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.step = 0
        self.metrics_path = run_dir / "metrics.jsonl"
        self.tb = None          # opened by `_open_tb` once the step the run continues from is known

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "teacher": self.teacher.state_dict() if self.teacher is not None else None,
                "torch_rng": torch.get_rng_state(), "config_hash": config_hash(self.cfg),
                "world": self.world,        # a resume on another number of ranks is refused (refuse_other_world)
                # what the run's examples were numbered and drawn by, said when a resume changes it (stream_changes)
                "batch_size": self.cfg.batch_size, "seed": self.cfg.seed,
                # model, what trains, optimizer schedule: a resume may not change them (refuse_changed_shaping)
                "shaping": shaping_of(self.cfg.model_dump(mode="json"))}

    def restore(self, ckpt: dict[str, Any]) -> None:
        """The checkpoint's state into this trainer; `ConfigError` when it does not fit the configured model (the
        checkpoint loader then tries the one before it). Every load is strict and whole, so a later restore replaces
        whatever a failed one had copied before its mismatch. A checkpoint that keeps what shaped its run
        (`shaping`) fits only a config with the same: the run's config.yaml edited to another lr or model size was
        taken (two schedules mixed), or refused by the strict load naming no key."""
        kept = ckpt.get("shaping")
        changed = shaping_changes(kept, shaping_of(self.cfg.model_dump(mode="json"))) if isinstance(kept, dict) else []
        if changed:
            raise ConfigError(f"was trained with other values than the run's config.yaml: {'; '.join(changed)} (the "
                              "config.yaml edited, or the checkpoint of another run)")
        try:
            self.model.load_state_dict(ckpt["model"], strict=True)
            self.opt.load_state_dict(ckpt["opt"])
            if self.teacher is not None:
                if ckpt.get("teacher") is not None:
                    self.teacher.load_state_dict(ckpt["teacher"], strict=True)
                else:
                    # EMA switched on at --resume of a run that had none: the teacher starts from the weights the
                    # run reached, not from the ones it was built with before the checkpoint replaced them
                    self.teacher.load_state_dict(self.model.state_dict(), strict=True)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ConfigError(f"does not fit the configured model ({_load_error(exc)})") from exc
        torch.set_rng_state(ckpt["torch_rng"])
        self.step = int(ckpt["step"])

    def checkpoint(self) -> None:
        self._refuse_non_finite_weights()     # on every rank: DDP keeps the weights equal, so every rank stops
        if not self.is_main:
            return
        from sigma.models import save_model

        save_checkpoint(self.run_dir, self.state())
        save_model(self.model, self.run_dir / "model")

    def _refuse_non_finite_weights(self) -> None:
        """`training_diverged` instead of a checkpoint of weights that hold inf or NaN. The NaN guard judges each
        step's loss and gradient, not what the optimizer step made of the weights: `weight_decay=1e300` (or any
        lr x weight_decay far above 1) made them inf at the first step from a finite loss and gradient, and the run
        wrote them over checkpoint.pt, model/ and final/ and ended 0. The checkpoint before is kept."""
        bad = [name for name, t in self.model.state_dict().items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            from .checkpoint import latest_step

            kept = latest_step(self.run_dir)
            raise TrainingDiverged(f"the weights hold non-finite values at step {self.step} ({len(bad)} tensor(s), "
                                   f"{bad[0]} first): an optimizer step made them so (lr {self.cfg.lr:g}, weight_decay "
                                   f"{self.cfg.weight_decay:g}); not saved, "
                                   + (f"the checkpoint of step {kept} is kept" if kept is not None else
                                      "no checkpoint was written") + "; lower lr or weight_decay")

    def emit(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = {"step": self.step, "time": round(time.time(), 2), **record}
        with open(self.metrics_path, "a") as handle:
            handle.write(dumps_finite(record, default=float) + "\n")
        self._tb_add(record)

    def _tb_add(self, record: dict[str, Any]) -> None:
        """A metrics.jsonl row's numbers as TensorBoard scalars at the row's step."""
        if self.tb is None:
            return
        step = record["step"]
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("step", "time"):
                self.tb.add_scalar(k, v, step)
            elif isinstance(v, dict):
                for kk, vv in v.items():
                    if isinstance(vv, (int, float)):
                        self.tb.add_scalar(f"{k}/{kk}", vv, step)

    def _open_tb(self) -> None:
        """TensorBoard's writer (`tb/`, when the tensorboard package is installed). A resume opens it with
        `purge_step` at the step it continues from: TensorBoard then hides what the earlier stretch wrote from that
        step on, which the steps re-run write again (each appeared twice: two points per step, lines doubling
        back). The rows of that very step that are not written again (those metrics.jsonl keeps) are written
        anew, so the events say what metrics.jsonl says."""
        if not (self.cfg.tensorboard and self.is_main):
            return
        folder = self.run_dir / "tb"
        earlier = folder.is_dir() and any(folder.iterdir())
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self.tb = SummaryWriter(str(folder), purge_step=self.step if earlier else None)
        except Exception:  # noqa: BLE001 - optional
            self.tb = None
            return
        if earlier:
            for row in metrics_rows(self.metrics_path):
                if row.get("step") == self.step and type(row["step"]) is int:
                    self._tb_add(row)

    # ------------------------------------------------------------------ one step
    def _guidance(self, b: dict[str, torch.Tensor], gen: torch.Generator):
        """Edit-type ids for a fraction of samples; a box prior (sometimes a wrong box) for a fraction."""
        n = b["mask"].shape[0]
        tell = torch.rand(n, generator=gen) < self.cfg.edit_type_p
        ids = torch.where(tell, b["edit_type"].cpu(), torch.zeros_like(b["edit_type"].cpu())).to(self.device)
        prior = None
        if self.cfg.prior_p > 0:
            give = torch.rand(n, generator=gen) < self.cfg.prior_p
            if bool(give.any()):
                h, w = b["mask"].shape[-2:]
                prior = torch.full((n, 1, h, w), 0.5)
                for i in torch.nonzero(give).flatten().tolist():
                    m = b["mask"][i, 0].cpu()
                    wrong = bool(torch.rand(1, generator=gen) < 0.3) or not bool(m.any())
                    if wrong:
                        y0, x0 = (torch.rand(2, generator=gen) * torch.tensor([h * 0.7, w * 0.7])).long().tolist()
                        y1, x1 = y0 + int(h * 0.3), x0 + int(w * 0.3)
                    else:
                        ys, xs = torch.nonzero(m, as_tuple=True)
                        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
                    prior[i, 0] = 0.3
                    prior[i, 0, y0:y1, x0:x1] = 0.9
                prior = prior.to(self.device)
        regions = sample_regions(b["mask"], b["edit_type"].cpu(), self.cfg.region_p, gen,
                                 self.model.config.max_regions if self.model.config.refine_blocks else 0)
        return ids, prior, regions

    def _strong_view(self, edited: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c = self.cfg.ema
        n = edited.shape[0]
        gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * c.strong_jitter
        bias = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * c.strong_jitter
        noise = torch.randn(edited.shape, generator=gen) * c.strong_noise
        return (edited * gain.to(edited) + bias.to(edited) + noise.to(edited)).clamp(0, 1)

    def train_step(self, b: dict[str, torch.Tensor]) -> dict[str, float] | None:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        net = self.ddp or self.model
        labelled = b["labelled"].float()
        unl = 1.0 - labelled
        ids, prior, regions = self._guidance(b, gen)
        edited = b["edited"]
        use_ema = self.teacher is not None and bool(unl.sum() > 0)
        if use_ema:
            with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.use_bf16):
                t_prob = torch.sigmoid(self.teacher(b["original"], edited).logits.float())
            strong = self._strong_view(edited, gen)
            edited = torch.where(unl.bool()[:, None, None, None], strong, edited)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.use_bf16):
            out = net(b["original"], edited, prior=prior, edit_type=ids, regions=regions)
        terms: dict[str, torch.Tensor] = {}
        terms["sup"] = L.bce_dice(out.logits, b["mask"], labelled, cfg.loss.bce, cfg.loss.dice, cfg.loss.pos_weight)
        loss = terms["sup"]
        if use_ema:
            terms["ema"] = L.pseudo_label_loss(out.logits, t_prob, unl, cfg.ema.hi, cfg.ema.lo)
            loss = loss + cfg.ema.weight * terms["ema"]
        if cfg.disentangle.enabled:
            noise_only = (b["mask"].flatten(1).sum(1) == 0) & b["labelled"]
            d = L.disentangle_terms(out.edit_feat, out.noise_feat, out.noise_pred, b["noise"], noise_only,
                                    cfg.disentangle.noise_scale)
            terms.update({f"dis_{k}": v for k, v in d.items()})
            loss = loss + cfg.disentangle.zero * d["zero"] + cfg.disentangle.decorrelate * d["decor"] \
                + cfg.disentangle.noise * d["noise"]
        finite = torch.isfinite(loss.detach()).float()
        if self.world > 1:   # skip on every rank or on none: a rank that skips backward hangs the others
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not bool(finite > 0):
            self.opt.zero_grad(set_to_none=True)
            return None
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
        if not torch.isfinite(gnorm):
            self.opt.zero_grad(set_to_none=True)
            return None
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(self.step, cfg)
        self.opt.step()
        if self.teacher is not None:
            with torch.no_grad():
                m = cfg.ema.momentum
                for tp, sp in zip(self.teacher.parameters(), self.model.parameters()):
                    tp.mul_(m).add_(sp.detach(), alpha=1 - m)
                for tb, sb in zip(self.teacher.buffers(), self.model.buffers()):
                    tb.copy_(sb)
        res = {k: float(v.detach()) for k, v in terms.items()}
        res.update(loss=float(loss.detach()), grad_norm=float(gnorm), lr=self.opt.param_groups[0]["lr"])
        return res

    def _reduce_window(self, window: dict[str, list[float]]) -> dict[str, float]:
        """Window means over every rank's steps (each rank saw different pairs): what rank 0 logs is the
        loss of the whole global batch, not of its own slice."""
        sums = {k: (float(np.sum(v)), len(v)) for k, v in window.items()}
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, sums)
            total: dict[str, list[float]] = {}
            for part in gathered:
                for k, (sv, nv) in part.items():
                    acc = total.setdefault(k, [0.0, 0])
                    acc[0] += sv
                    acc[1] += nv
            sums = {k: (v[0], v[1]) for k, v in total.items()}
        return {k: sv / max(nv, 1) for k, (sv, nv) in sums.items()}

    # ------------------------------------------------------------------ the loop
    def barrier(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def _train_mode(self) -> None:
        """Training mode, except the frozen modules' BatchNorm layers, whose running statistics would
        otherwise drift with the fine-tune's data while their weights stay put."""
        self.model.train()
        for name, module in self.model.named_modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and _frozen_name(name, self.cfg.freeze):
                module.eval()

    def validate(self, val, final: bool = False) -> None:
        """Rank 0 scores; every rank waits for it (no rank runs ahead into the next all-reduce).

        A SIGTERM noted while it scores abandons it between two batches (`ValidationAbandoned`): nothing of it is
        kept — no `val` row, no `best/` — and the caller's next stop check ends the run (143). A periodic validation
        (`eval.every`, minutes on a CPU with a large `eval.val_size`, more with `eval.data`) used to run to its end
        first, outlasting the scheduler's grace period (SIGKILL, the stop unsaid). `--resume` scores it again
        (`_owes_validation`; the final one and the one at start were already done again)."""
        if self.is_main:
            try:
                self._validate(val, final)
            except ValidationAbandoned as cut:
                self.abandoned_validation = {"step": self.step, "what": cut.what, "scored": cut.scored,
                                             "of": cut.total}
                self.log(f"[val step {self.step}] abandoned after {cut.scored} of {cut.total} pairs of {cut.what}: "
                         "the run is stopping (SIGTERM); nothing of it is kept")
            finally:
                self._train_mode()
        self.barrier()

    def _stopping(self) -> bool:
        return bool(self.terminated)

    def _validate(self, val, final: bool = False) -> None:
        rec: dict[str, Any] = {"event": "val"}
        ev = self.cfg.eval
        real_due = ev.data and (final or (ev.data_every and self.step % ev.data_every == 0))
        if not val and not real_due:
            # nothing to score (`eval.val_size=0`, no `eval.val_dir`, no real set due): it wrote a `{"event": "val"}`
            # row holding nothing, at every `eval.every` and at the end, which readers of metrics.jsonl took for a
            # validation
            return
        # said as it starts: a long validation was silent for minutes (and a test knows when it is under way)
        also = " and the real set" if real_due else ""
        self.log(f"[val step {self.step}] scoring {len(val)} synthetic pairs{also}")
        if val:
            rec["synthetic"] = validate_synthetic(self.model, val, self.device, stop=self._stopping)
        if real_due:
            data = eval_data_path(ev.data)
            if Path(data).is_dir():
                self.checkpoint()
                try:
                    rec["real"] = evaluate_real(self.run_dir / "model", data, ev.perturb, ev.image_size, ev.limit,
                                                stop=self._stopping)
                except InputError as exc:
                    if exc.code != "unfinished_synth_set":
                        raise
                    # checked before the first step; a rewrite begun since skips this scoring: mid-run, the run goes
                    # on (it ended there, hours of training stopped by another command's rewrite of a report set);
                    # at the end, it is said once final/ is saved
                    if final:
                        self.unscored_set = data
                    rec["real"] = f"skipped: {data} is an unfinished `sigma synth` set (unfinished_synth_set)"
            else:
                rec["real"] = f"skipped: {data} not found"
        self._keep_best(rec)
        self.emit(rec)
        self.log(f"[val step {self.step}] "
                 + json.dumps(rec, default=lambda x: round(x, 4) if isinstance(x, float) else str(x)))

    def _read_best(self, path: Path) -> dict[str, Any] | None:
        """best.json, or None when there is none or it cannot be read: a damaged one (a disk fault, an edit by
        hand, null for a NaN score) was a JSONDecodeError / KeyError / TypeError traceback at the first validation
        of a resume, after the work of a whole evaluation interval. Said, and replaced by the next best."""
        if not path.is_file():
            return None
        try:
            best = json.loads(path.read_text(encoding="utf-8"))
            # `"f1": true` (a bool passes as an int) was a best of 1.0 that no later validation beat: best/ frozen
            if (isinstance(best, dict) and isinstance(best.get("f1"), (int, float)) and not isinstance(best["f1"], bool)
                    and math.isfinite(best["f1"])):
                return best
            problem = "no finite f1"
        except (OSError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {first_line(exc, 120)}"
        self.log(f"{path}: cannot be read ({problem}); the next validation's score replaces it")
        return None

    def _keep_best(self, rec: dict[str, Any]) -> None:
        """`best/`: the weights with the highest synthetic-validation F1 so far (the selection rule), with
        `best.json` saying which step and score; the at-start score of an init_from model counts as the
        one to beat but is not copied (it already exists where it came from)."""
        f1 = (rec.get("synthetic") or {}).get("f1")
        if f1 is None or not math.isfinite(f1):
            return
        if self.step == 0 and not self.cfg.init_from:
            # random weights are no baseline: kept as the one to beat, a run whose model never scored above
            # them (a tie: both mark every pixel) had no best/ at all and a best.json naming weights nowhere
            return
        path = self.run_dir / "best.json"
        best = self._read_best(path)
        if best is not None and f1 <= best["f1"]:
            return
        info = {"step": self.step, "f1": f1, "iou": rec["synthetic"].get("iou"),
                "saved": self.step > 0, "val": self.cfg.eval.val_dir or f"seed {self.cfg.eval.val_seed}"}
        if self.step > 0:
            save_best(self.run_dir, self.model, info)
        else:
            write_json_atomically(path, info)
        rec["best"] = True

    def _settle_best(self) -> None:
        if self.is_main:
            note = settle_best(self.run_dir)
            if note:
                self.log(f"{self.run_dir / 'best'}: {note}")

    def _heal_metrics(self) -> None:
        """A run killed (or out of disk space) in the middle of a metrics.jsonl write left half a line; the resume
        appended its first record to it, and that line — two records glued together — failed every reader from
        then on. The torn tail is cut off (and said) before anything is appended."""
        if self.is_main and self.metrics_path.is_file():
            cut = cut_torn_tail(self.metrics_path)
            if cut:
                self.log(f"{self.metrics_path}: its last line was cut short ({cut} bytes, the run was stopped while "
                         "writing it); removed")

    def _trim_metrics(self, restored: bool) -> None:
        """The rows past the step the run continues from are dropped, and those of that step that the resume
        writes again (`_again`): the steps re-run log them again."""
        if self.is_main and self.metrics_path.is_file():
            dropped = drop_rows_after(self.metrics_path, self.step, self._again(restored))
            if dropped:
                self.log(f"{self.metrics_path}: {dropped} rows after the checkpoint of step {self.step} (logged "
                         "before the run stopped) removed; what they logged runs again")

    def _drop_rerun_best(self, restored: bool) -> None:
        """A best (best.json, best/) that a validation the run does again recorded goes with that validation's row
        (`_trim_metrics`): from a step past the checkpoint, or of the step the run continues from where its
        validation is logged again (`_again`: the final one of a run killed before final/, the one at start). It was
        kept: the resume's own validation of that step tied it and was not marked best (no row said where best/ came
        from), and where the steps re-run differ (a `--resume` override, CUDA's non-deterministic kernels) best/ held
        weights of steps the run no longer had, their score the one to beat. Without a checkpoint (the run starts
        over) only a record without weights goes (the at-start score): best/ weights are never removed unless a
        checkpoint says they came after it."""
        if not self.is_main:
            return
        drop = self.run_dir / "best.drop"
        shutil.rmtree(drop, ignore_errors=True)        # a kill mid-way through the removal below
        path, best_dir = self.run_dir / "best.json", self.run_dir / "best"
        best = self._read_best(path)
        step = best.get("step") if best is not None else None
        if not isinstance(step, int) or isinstance(step, bool):
            return
        again = self._again(restored)
        if not restored:
            if best_dir.exists():
                return
        elif step < self.step or (step == self.step and again is not None and "val" not in again):
            return
        path.unlink(missing_ok=True)        # first: a best/ left alone is settled back into best.json, then dropped
        if best_dir.exists():
            os.replace(best_dir, drop)
            shutil.rmtree(drop, ignore_errors=True)
        self.log(f"{path}: the best of step {step} (f1 {best['f1']:.4f}) came from a validation this run does again "
                 f"(it continues from step {self.step}); dropped with its row, the validations re-run decide it")

    def _validates_at_start(self) -> bool:
        ev = self.cfg.eval
        return bool(ev.at_start and self.step == 0 and (ev.val_size or ev.val_dir or ev.data))

    def _owes_validation(self, restored: bool) -> bool:
        """Whether the periodic validation (`eval.every`) of the step the run continues from is owed: due at that
        step and no `val` row for it in metrics.jsonl. A SIGTERM abandons a validation mid-way (nothing kept) and
        the run pauses at that step with a checkpoint; the resume goes on from the step after, so that step's
        weights were never scored (nor considered for `best/`). Owed, it is scored before the first step, as the
        validation at start is. (A SIGKILL mid-validation after a checkpoint of that step is owed one too.) Rank 0
        reads the rows; under DDP the answer is shared (one all-reduce), for every rank to wait in `validate`."""
        ev, step = self.cfg.eval, self.step
        if not (restored and ev.every and 0 < step < self.cfg.steps and step % ev.every == 0):
            return False           # the same on every rank: the config and the checkpoint's step
        owed = float(self.is_main and not self._logged_val_at(step))
        if self.world > 1:
            agreed = torch.tensor([owed], device=self.device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
            owed = float(agreed.item())
        return bool(owed)

    def _logged_val_at(self, step: int) -> bool:
        return any(row.get("event") == "val" and row.get("step") == step for row in metrics_rows(self.metrics_path))

    def _finished(self) -> bool:
        return (self.run_dir / "final" / "config.json").is_file()   # save_model writes the config last

    def _again(self, restored: bool) -> frozenset[str] | None:
        """The events this run logs again at the step it continues from (None: all of them). Rows of that step
        written before its checkpoint (its train row, its periodic validation) are not: the run goes on after
        them. What came after the checkpoint is: the attempt at the next step (a skipped step, a data loader
        restart), the final validation of a run killed before `final/` (it was logged twice), the validation
        at start. Without a checkpoint the run starts over: everything it logged is logged again."""
        if not restored:
            return None
        again = {"skipped_step", "loader_restart"}
        if (self.step >= self.cfg.steps and not self._finished()) or self._validates_at_start():
            again.add("val")
        return frozenset(again)

    def run(self) -> Path:
        """The run, a SIGTERM noted throughout and obeyed at the next safe point: only the training loop noted it
        before, and one while the run started (the model built, the validation set written), validated at start
        or at its end, or saved `final/` killed it at once: no line, killed instead of 143, a half-written
        `val.tmp/` or a temporary `final/` weights file left behind."""
        with nullcontext(self.terminated) if self.terminated is not None else signal_noted(signal.SIGTERM) as noted:
            self.terminated = noted
            return self._run()

    def _run(self) -> Path:
        cfg = self.cfg
        self._heal_metrics()
        self._settle_best()
        ckpt = load_checkpoint(self.run_dir, warn=self.log, apply=self.restore)
        if ckpt is not None:
            self.log(f"resumed {self.run_dir} at step {self.step}")
        self._trim_metrics(ckpt is not None)
        self._drop_rerun_best(ckpt is not None)
        owed = self._owes_validation(ckpt is not None)
        if self.step >= cfg.steps and self._finished():
            self.log(f"{self.run_dir}: already at step {self.step} of {cfg.steps}")
            return self.run_dir
        if self.step >= cfg.steps:
            # stopped after its last checkpoint, before its end was written (killed in the final validation,
            # which scores a real set for minutes): the end is done now — it used to say "already at step N"
            # and exit 0 with no final/, no final validation and no best/ from it, however often resumed
            self.log(f"{self.run_dir}: at step {self.step} of {cfg.steps} but stopped before final/ was written; "
                     "finishing it")
            val = self._val_set() if self.is_main else []
            self.inputs_read()
            self._open_tb()
            return self._finish(val, time.monotonic())
        started = time.monotonic()
        ds = TrainDataset(cfg)
        val = self._val_set() if self.is_main else []
        # nothing is written into the run folder before this (`start`: a fresh run refused while it read its data
        # leaves no folder behind), then its config.yaml, the TensorBoard events and grow.json
        self.inputs_read()
        self._open_tb()
        if self.grow_report is not None and self.step == 0 and self.is_main:
            rep = self.grow_report
            # replaced whole: written in place, a kill or a full disk mid-write left a torn grow.json behind (a
            # run that stops before its first checkpoint writes it again when resumed: it starts over)
            write_json_atomically(self.run_dir / "grow.json",
                                  {"init_from": cfg.init_from, "loaded": len(rep.loaded), "new": rep.new,
                                   "identity_initialised": rep.identity, "dropped": rep.dropped})
            self.emit({"event": "grow", "loaded": len(rep.loaded), "new": len(rep.new),
                       "identity_initialised": rep.identity})
        if self._validates_at_start() or owed:
            self.validate(val)
        self._stop_if_terminated(started)     # before the first step: nothing trained since the checkpoint
        bad = finite = 0          # non-finite steps in a row; finite steps of this stretch
        t_data = t_model = 0.0
        n_pairs = 0
        t_last = time.perf_counter()
        window: dict[str, list[float]] = {}
        # closed on the way out, whatever it is: a Ctrl-C in a step stops the data workers at once, and quietly. A
        # SIGTERM is noted, not obeyed at once: the step in hand finishes and the run pauses there (`_pause`). One
        # (or the max_minutes deadline) while the loop waits for its next batch cuts the wait (`_data_waits`)
        terminated = self.terminated
        reason = None
        waits = self._data_waits(started)
        cut: list[DataWaitCut] = []
        with closing(self._batches(ds, waits)) as batches, waits.armed() if waits else nullcontext():
            for batch in _until_cut(batches, cut):
                t0 = time.perf_counter()
                t_data += t0 - t_last
                b = to_float(batch, self.device)
                res = self.train_step(b)
                t_last = time.perf_counter()
                t_model += t_last - t0
                if res is None:
                    bad += 1
                    self.emit({"event": "skipped_step", "reason": "non-finite loss or gradient"})
                    if bad >= cfg.max_bad_steps:
                        self.checkpoint()
                        raise TrainingDiverged(f"{bad} non-finite steps in a row at step {self.step}; "
                                               "lower lr or check the data")
                else:
                    bad, finite = 0, finite + 1
                    for k, v in res.items():
                        window.setdefault(k, []).append(v)
                self.step += 1
                n_pairs += cfg.batch_size * self.world
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rec = self._reduce_window(window)
                    rec.update(event="train", pairs_per_s=n_pairs / max(t_data + t_model, 1e-9),
                               data_s=t_data, model_s=t_model)
                    self.emit(rec)
                    self.log(f"step {self.step}/{cfg.steps} loss {rec.get('loss', float('nan')):.4f} "
                             f"lr {rec.get('lr', 0):.2e} {rec['pairs_per_s']:.1f} pairs/s "
                             f"(data wait {t_data:.0f}s, model {t_model:.0f}s)")
                    window = {}
                if self.step % cfg.ckpt_every == 0:
                    self.checkpoint()
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.steps:
                    self.validate(val)
                # every step, not at log steps only: a run overshot its budget by up to a whole logging interval
                reason = self._stop_reason(started, bool(terminated))
                if reason == "sigterm":          # saved before the data workers are stopped (`_save_stop`)
                    window = self._save_stop(window, n_pairs, t_data, t_model)
                    self.stopping = True
                if reason:
                    break
        if cut:             # the wait for the next batch was cut short (`_data_waits`)
            t_data += time.perf_counter() - t_last
            reason = self._waited_out(cut[0])
        # the data workers are stopped by now, whichever way the loop ended (`_data_workers`): a pause stopped them
        # only once its checkpoint and validation were done, and they went on reading batches meanwhile
        if reason:
            return self._pause(val, started, window, n_pairs, t_data, t_model, reason)
        self.checkpoint()
        if bad and not finite:
            # every step skipped, fewer than max_bad_steps (a short run, the last steps of a resume): it ended 0
            # with a final/ that no step had trained
            raise TrainingDiverged(f"every step of this run ({bad}, to step {self.step}) had a non-finite loss or "
                                   "gradient and was skipped: nothing was trained (the checkpoint is kept, no final/ "
                                   "written); lower lr or check the data and the loss weights")
        return self._finish(val, started)

    def _data_waits(self, started: float) -> DataWait | None:
        """What cuts the wait for the next batch short (`DataWait`): a SIGTERM, and the `max_minutes` deadline once
        this stretch has made a step (each stretch makes one at least, as between steps: a deadline shorter than
        the data workers' start would pause every resume at its first step for ever). A data worker stuck in a read
        (a hung mount) held the trainer in that wait: the SIGTERM was noted but never acted on, the scheduler's
        SIGKILL came, and max_minutes overshot without bound.

        Without data workers the batch is built in the main thread, where a raise from the handler would land inside
        the dataset's own code: the stop is looked for between two samples instead (`in_process`). A SIGTERM was only
        noted there, and the run stopped after the batch and its step: minutes for 1024 crops at 192 px, past a
        scheduler's grace period.

        None — the wait is not cut, as before — under DDP: the other ranks wait for this one inside the step's
        collectives, which a rank that left the loop would never join (torchrun's ranks then wait for the
        scheduler's SIGKILL, and `--resume` continues from the last checkpoint)."""
        if self.world > 1:
            return None
        minutes = self.cfg.max_minutes
        first = self.step
        return DataWait(self.terminated, None if minutes is None else started + 60.0 * minutes,
                        timed=lambda: first < self.step < self.cfg.steps, in_process=not self.cfg.num_workers)

    def _waited_out(self, cut: DataWaitCut) -> str:
        """The wait for the next batch was cut (`_data_waits`): the model stands at the end of step `self.step`,
        which the pause checkpoints; the data workers are killed by now (`_data_workers`). The reason, said."""
        self.waited_for_data = True
        stop = "a SIGTERM came" if cut.reason == "sigterm" else f"max_minutes={self.cfg.max_minutes:.15g} ran out"
        if self.cfg.num_workers:
            self.log(f"{stop} while the run waited for its data workers' batch for step {self.step + 1} (a worker "
                     f"stuck in a read?); pausing at step {self.step}")
        else:
            self.log(f"{stop} while the run built its batch for step {self.step + 1} (num_workers=0: the samples "
                     f"built so far are dropped); pausing at step {self.step}")
        return cut.reason

    def _finish(self, val, started: float) -> Path:
        """The end of the run, after its last checkpoint: the final validation (the real set too), final/. A SIGTERM
        in the validation abandons it (between two batches) and stops the run before final/ (the next `--resume`
        validates and saves it); one while final/ is saved lets it finish (seconds), and the run ends finished, with
        143 all the same. A real set (`eval.data`) that became an unfinished `sigma synth` set during the run is left
        unscored: final/ is saved all the same, and the run ends `unfinished_synth_set` (`_unscored_set`)."""
        self.validate(val, final=True)
        self._stop_if_terminated(started)
        if self.is_main:
            from sigma.models import save_model

            save_model(self.model, self.run_dir / "final")
        if self._stop_reason(started, bool(self.terminated)) == "sigterm":
            self._close()
            raise Stopped(f"terminated at step {self.step}, as the run ended: {self.run_dir / 'final'} is complete"
                          if self.is_main else "", 128 + signal.SIGTERM)
        run_dir = self._close()
        if self.unscored_set is not None:
            self._unscored_set(self.unscored_set)
        return run_dir

    def _unscored_set(self, data: str) -> NoReturn:
        """The run trained to its end, but its real set could not be scored: a `sigma synth --out` began rewriting it
        (its mark appeared) after the check before the first step. That ended the run at its last step with the
        refusal alone: no final/, no val row, no word of where the weights were or how to score them later."""
        from sigma.text import printable

        final = printable(self.run_dir / "final")
        ev = self.cfg.eval
        extra = (f" --set options.image_size={ev.image_size}" if ev.image_size else "") + (
            f" --set limit={ev.limit}" if ev.limit else "")
        raise InputError(f"eval.data {printable(data)}: became an unfinished `sigma synth` set during the run (its "
                         f"synth_unfinished.json appeared), so the final model was not scored on it; the model is "
                         f"saved in {final}: once the set is finished, score it with `sigma eval --data "
                         f"{printable(data)} --annotator sigma-lite --set options.weights={final}{extra} --perturb "
                         f"{','.join(ev.perturb)}`", code="unfinished_synth_set")

    def _stop_if_terminated(self, started: float) -> None:
        """Outside the training loop, at a safe point (nothing half-written): a SIGTERM noted since the command
        started stops the run here as in the loop (`_pause`: a `paused` row, one line, 143), with nothing to save —
        the checkpoint of this step is there, or none was written yet and `--resume` starts the run over. Every rank
        asks (one all-reduce under DDP), so all stop together."""
        if self._stop_reason(started, bool(self.terminated)) == "sigterm":
            self._end_terminated(started)

    def _end_terminated(self, started: float) -> NoReturn:
        """The end of a run a SIGTERM stopped, in the loop (`_pause`) or outside it: a `paused` row, the data workers
        closed, `Stopped` (the CLI: one line, exit 143) on every rank, the line saying how to continue. A validation
        the SIGTERM abandoned is in the row (`abandoned_validation`): only stdout said so, and metrics.jsonl alone
        did not tell a run paused mid-validation from one paused between steps."""
        self.emit(self._paused_row("sigterm", (time.monotonic() - started) / 60.0))
        self._close()
        raise Stopped(f"terminated at step {self.step}; continue with: sigma train --resume {self.run_dir}"
                      if self.is_main else "", 128 + signal.SIGTERM)

    def _loader(self, ds: TrainDataset) -> DataLoader:
        cfg = self.cfg
        sampler = StepSampler(self.step, cfg.steps, cfg.batch_size, self.rank, self.world)
        return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                          persistent_workers=False, prefetch_factor=4 if cfg.num_workers else None,
                          worker_init_fn=_worker_init if cfg.num_workers else None,
                          multiprocessing_context=QuickExitSpawnContext() if cfg.num_workers else None)

    def _loader_iter(self, ds: TrainDataset) -> Iterator[dict[str, torch.Tensor]]:
        """The loader's iterator, without torch's SIGCHLD handler: that handler raises a worker's death in the
        main thread at whatever bytecode runs — inside backward() or halfway through optimizer.step(), where
        nothing can be recovered. Without it the loader notices the death itself on its next read (a liveness
        check every few seconds while it waits) and raises there, between two steps, where `_batches` can
        start a new loader."""
        import signal
        import threading

        main_thread = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGCHLD")
        before = signal.getsignal(signal.SIGCHLD) if main_thread else None
        iterator = iter(self._loader(ds))
        if main_thread and signal.getsignal(signal.SIGCHLD) is not before:
            signal.signal(signal.SIGCHLD, before if before is not None else signal.SIG_DFL)
        return iterator

    @contextmanager
    def _data_workers(self, ds: TrainDataset,
                      waits: DataWait | None = None) -> Iterator[Iterator[dict[str, torch.Tensor]]]:
        """The loader's iterator, its workers stopped on leaving, whatever the way out. A Ctrl-C while the workers
        started left a half-built iterator whose `__del__` printed an AttributeError traceback; one while they
        stopped (a second Ctrl-C, or the first one landing in a read) a KeyboardInterrupt traceback from that
        `__del__`, and workers possibly left running. Now a Ctrl-C in their start is taken once they are started
        and known, and they are stopped with further Ctrl-Cs ignored (bounded: a join, then terminate). One still
        alive after that (stuck in a read: it ignores SIGTERM) is killed (`kill_stuck_workers`), with one line.

        With `waits`, each batch is waited for through it (`DataWait.next`: a stop cuts that wait, and only it).
        Left before the loader ran out — a cut wait, a SIGTERM or `max_minutes` pause between steps, an error, a
        Ctrl-C, a worker's death — the workers are killed at once (`_kill_unwanted_workers`), before torch's
        shutdown: their batches are not wanted, and that shutdown joins a worker stuck in a read (a hung mount) 5 s,
        then `kill_stuck_workers` gives it 2 s more — 22 s measured with two stuck workers at a `max_minutes` pause,
        spent before its checkpoint (a SIGTERM's too, of a scheduler's grace period). A loader that ran out shut its
        workers down itself, after their last batch (torch, in its `__next__`): none of them can be waiting on a read
        then, and the stuck-worker kill after the shutdown stays as the safety net. Last, the feeder threads of the
        closed index queues are joined while the iterator still holds the queues (`join_queue_feeders`): a feeder
        left the last holder of their semaphores ran their finalizers as the trainer exited, half-done."""
        iterator = None
        cut = drained = False
        try:
            with stop_signals_deferred():
                iterator = self._loader_iter(_SampleChecked(ds, waits.between_samples)
                                             if waits is not None and waits.in_process else ds)
            yield waits.around(iterator) if waits is not None else iterator
            drained = True
        except DataWaitCut:
            cut = True
            raise
        finally:
            shutdown = getattr(iterator, "_shutdown_workers", None)   # torch's, idempotent; none without workers
            if shutdown is not None:
                with interrupts_ignored():
                    if not drained:
                        self._kill_unwanted_workers(list(getattr(iterator, "_workers", [])), cut)
                    shutdown()
                    killed = kill_stuck_workers(list(getattr(iterator, "_workers", [])))
                    join_queue_feeders(getattr(iterator, "_index_queues", []))    # closed by shutdown()
                if killed:
                    self.log(f"{killed} data worker(s) still running after the data loader's shutdown (stuck in a "
                             "read?) were killed with SIGKILL")

    def _kill_unwanted_workers(self, workers: list, cut: bool) -> None:
        """The one way the workers of a loader left early are stopped (`_data_workers`): at once, before torch's
        shutdown (5 s a stuck worker), with one line saying why — a wait cut short (`cut`), a SIGTERM pause whose
        checkpoint is written (`stopping`, `_save_stop`), or any other way out (a `max_minutes` pause, an error)."""
        killed = kill_stuck_workers(workers, grace=0.0)
        if not killed:
            return
        if cut:
            why = "the run stopped while it waited for their data"
        elif self.stopping:
            why = f"a SIGTERM stopped the run at step {self.step}, its checkpoint written; their batches are not wanted"
        else:
            why = (f"their loader was left at step {self.step} (a pause, an error, a restart); their batches are "
                   "not wanted")
        self.log(f"{killed} data worker(s) killed with SIGKILL: {why}")

    def _batches(self, ds: TrainDataset, waits: DataWait | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """The batches from `self.step` on. A data worker that dies (the OOM killer, a stray kill) ends the
        DataLoader with a RuntimeError; since batch t is a pure function of (seed, t), a new loader from the
        step in hand continues the very same stream, so the run goes on by itself instead of waiting for a
        person to --resume it. A worker that dies again before one more batch arrives, `MAX_LOADER_RESTARTS`
        times in a row, is a real fault (a dataset that kills its process): the run stops with it."""
        restarts = 0
        while self.step < self.cfg.steps:
            start = self.step
            try:
                with self._data_workers(ds, waits) as batches:
                    yield from batches
                return
            except (RuntimeError, ConnectionError, EOFError) as exc:
                # a death seen by the loader, or the pipe it tore (a tensor in transit when it was killed)
                if isinstance(exc, RuntimeError) and "DataLoader worker" not in str(exc):
                    raise
                restarts = restarts + 1 if self.step == start else 1
                if restarts > MAX_LOADER_RESTARTS:
                    raise DataWorkersDying(f"the data workers died {restarts} times in a row at step {self.step} "
                                           f"({exc}); the last checkpoint is kept: --resume once fixed") from exc
                self.log(f"a data worker died at step {self.step} ({exc}); the data loader restarts there")
                self.emit({"event": "loader_restart", "error": str(exc)[:500]})

    def _close(self) -> Path:
        """The end of a stretch, finished or paused: every rank waits for rank 0's writes."""
        self.barrier()
        if self.tb is not None:
            self.tb.close()
        return self.run_dir

    def _stop_reason(self, started: float, terminated: bool) -> str | None:
        """Why the run stops after this step, if it does: "sigterm" (a SIGTERM reached a rank), "max_minutes" (past
        the budget, before the last step; rank 0's clock decides for all) or None. Asked after every step: a clock
        read and, under DDP, one 4-byte all-reduce (MAX) next to the step's gradient all-reduce, so that every rank
        stops at the same step — one collective for both reasons, and any rank's SIGTERM stops them all (torchrun
        passes a SIGTERM on to every rank; a scheduler that signals one rank's process stops the run too)."""
        code = 2.0 if terminated else 0.0
        if not code and self.is_main and self.cfg.max_minutes is not None and self.step < self.cfg.steps:
            code = float(time.monotonic() - started > 60.0 * self.cfg.max_minutes)
        if self.world > 1:
            # on the training device: NCCL (multi-GPU) reduces CUDA tensors only, a CPU one raised there
            agreed = torch.tensor([code], device=self.device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
            code = float(agreed.item())
        return {0: None, 1: "max_minutes", 2: "sigterm"}[int(code)]

    def _pause(self, val, started: float, window: dict[str, list[float]] | None = None, n_pairs: int = 0,
               t_data: float = 0.0, t_model: float = 0.0, reason: str = "max_minutes") -> Path:
        """End of a stretch, not of the run: the steps since the last log row logged, checkpoint, score (so
        `best/` holds this stretch's progress), no `final/`; the next `--resume` continues the schedule from this
        step. What this step's loop iteration already wrote (a checkpoint, a validation) is not done again.

        Stopped by SIGTERM (`reason` "sigterm": a batch scheduler's stop — SLURM, Kubernetes, systemd — which sends
        SIGKILL after a grace period of some 10 to 90 s), it does not score: a validation (minutes with `eval.data`)
        would outlast the grace period and the process would be killed in it, its stop unsaid; the next stretch's
        validations score the weights. It ends with `Stopped` (the CLI: one line, exit 143) on every rank."""
        cfg = self.cfg
        if not self.stopping:        # a SIGTERM between steps wrote them in the loop already
            self._save_stop(window, n_pairs, t_data, t_model)
        if reason == "sigterm":
            self._end_terminated(started)
        if not (cfg.eval.every and self.step % cfg.eval.every == 0):
            self.validate(val)
            self._stop_if_terminated(started)    # a SIGTERM cut that validation short: the run ends as terminated
        minutes = (time.monotonic() - started) / 60.0
        self.emit(self._paused_row(reason, minutes))
        self.log(f"stopped at step {self.step} of {cfg.steps} after {minutes:.1f} min (max_minutes="
                 f"{cfg.max_minutes:.15g}); continue with: sigma train --resume {self.run_dir}")
        return self._close()

    def _paused_row(self, reason: str, minutes: float) -> dict[str, Any]:
        """The `paused` row that ends a stretch: why, after how long, and what was cut short — a validation a
        SIGTERM abandoned (`abandoned_validation`: metrics.jsonl alone did not tell a run paused mid-validation from
        one paused between steps) or the wait for a batch (`waiting_for_data`)."""
        row: dict[str, Any] = {"event": "paused", "reason": reason, "minutes": round(minutes, 2)}
        if self.abandoned_validation is not None:
            row["abandoned_validation"] = self.abandoned_validation
        if self.waited_for_data:
            row["waiting_for_data"] = True
        return row

    def _save_stop(self, window: dict[str, list[float]] | None, n_pairs: int, t_data: float,
                   t_model: float) -> dict[str, list[float]]:
        """A stop's own writes: the train row of the steps since the last one (a stop between log steps: their
        losses are not lost) and the checkpoint of this step, unless this step's loop iteration wrote them already;
        the window left to log (empty). A SIGTERM between steps calls it in the loop, before the data workers are
        stopped, and marks them unwanted (`stopping`): it came after torch's loader shutdown, which joins each
        worker stuck in a read (a hung mount) 5 s, and `kill_stuck_workers`' 2 s — 22 s measured with two stuck
        workers, of a scheduler's grace period of some 10 to 90 s; now the checkpoint is written first and the
        workers are killed at once (their batches are not wanted), the run exits within seconds."""
        cfg = self.cfg
        if window and self.step % cfg.log_every:
            rec = self._reduce_window(window)
            rec.update(event="train", pairs_per_s=n_pairs / max(t_data + t_model, 1e-9), data_s=t_data,
                       model_s=t_model)
            self.emit(rec)
        if self.step % cfg.ckpt_every:
            self.checkpoint()
        return {}

    def _val_set(self):
        ev = self.cfg.eval
        if ev.val_dir:
            folder = Path(ev.val_dir)
            if not (folder / "pairs.jsonl").is_file():
                if not ev.val_size:
                    raise ConfigError(f"eval.val_dir {folder} holds no pairs.jsonl and eval.val_size is 0")
                from .data import write_val_dir

                # one writer: runs started together with one val_dir (a seed sweep of a shipped config) wrote into
                # one .tmp folder at once, and the one that finished second lost its files (os_error) or removed
                # the set the first was reading; the others wait here and then read what the writer wrote
                folder.parent.mkdir(parents=True, exist_ok=True)
                # a writer stopped holding it (Ctrl-Z, SIGSTOP) kept the others waiting for ever without a word: they
                # say whom they wait for, and give up on one stopped past $SIGMA_FOLDER_LOCK_WAIT_S (`folder_busy`)
                watch = watch_stopped_holder(folder, "the fixed synthetic validation set", self.log,
                                             folder_lock_wait_s())
                with waiting_lock(folder.parent / f".{folder.name}.lock", watch=watch):
                    if not (folder / "pairs.jsonl").is_file():
                        write_val_dir(self.cfg, folder, ev.val_size)
                        self.log(f"wrote the fixed synthetic validation set: {ev.val_size} pairs in {folder}")
            return load_val_dir(folder)
        return fixed_val_set(self.cfg, ev.val_size) if ev.val_size else []


def _load_error(exc: BaseException) -> str:
    """What a failed load_state_dict says, in a line: its first line is only "Error(s) in loading state_dict for
    SigmaNet:", the first mismatch follows it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading"):
        return lines[1][:120]
    return first_line(exc, 120)


def _refuse_links(run_dir: Path) -> None:
    """A run folder never holds symbolic links (sigma train makes none): one where the run writes — metrics.jsonl
    appended to, checkpoint.pt written, model/ replaced — sent the write to whatever file it named (a run
    folder from elsewhere appended its metrics to ~/.bashrc). Refused before anything is written."""
    if not run_dir.is_dir():
        return
    links = [p for p in run_dir.iterdir() if p.is_symlink()]
    for sub in ("model", "best", "final", "tb"):
        folder = run_dir / sub
        if folder.is_dir() and not folder.is_symlink():
            links += [p for p in folder.iterdir() if p.is_symlink()]
    if links:
        names = ", ".join(str(p.relative_to(run_dir)) for p in links[:5])
        raise InputError(f"{run_dir}: holds symbolic links where the run writes ({names}); the run would write "
                         "through them into the files they name — replace them with the files themselves",
                         code="bad_outdir")
    # nor FIFOs, devices or sockets: a metrics.jsonl that is a FIFO hung `sigma train --resume` for ever in its
    # open (SIGTERM only noted, the open resumed), a checkpoint.pt that is one hung the restore
    special = [p for p in run_dir.iterdir() if not p.is_symlink() and not (p.is_file() or p.is_dir())]
    if special:
        names = ", ".join(p.name for p in special[:5])
        raise InputError(f"{run_dir}: holds files that are no regular files ({names}: a FIFO, a device or a "
                         "socket) where the run reads and writes; replace them with the files themselves",
                         code="bad_outdir")
    # nor the other kind of entry under a name the run writes: a folder named checkpoint.pt was passed over as a
    # missing checkpoint, the resume went on from checkpoint.prev.pt and trained to its next checkpoint, which then
    # failed (`os_error: Is a directory: .checkpoint.pt.<pid>.<hex>.tmp`, a temporary name); a file named model the
    # same at model/'s save (`File exists`)
    wrong = [f"{name}: a folder" for name in TRAINING_FILES if (run_dir / name).is_dir()]
    wrong += [f"{name}: a file" for name in TRAINING_FOLDERS if (run_dir / name).is_file()]
    if wrong:
        raise InputError(f"{run_dir}: holds entries of the other kind where the run writes ({', '.join(wrong)}; "
                         f"{', '.join(TRAINING_FILES)} are files, {', '.join(TRAINING_FOLDERS)} folders): the run "
                         "would fail there after its steps; move them away", code="bad_outdir")



def _refuse_nesting(out_dir: Path, name: str) -> None:
    """A run folder never lies inside another, nor holds one: names `a` and `a/b` in one out_dir put run b's
    config.yaml, checkpoints and model/ inside run a's folder (an export or a copy of a carried b along, a
    removal of a removed b). A name with sub-folders (`group/run`) is fine while no folder on its way is a run."""
    parts = Path(name).parts
    for depth in range(1, len(parts)):
        outer = out_dir.joinpath(*parts[:depth])
        if (outer / "config.yaml").is_file():
            raise ConfigError(f"name={name}: {outer} is a run folder; a run cannot be made inside another run "
                              "(choose a name beside it)")
    run_dir = out_dir / name
    if run_dir.is_dir():
        inner = next((p for p in run_dir.rglob("config.yaml") if p.parent != run_dir), None)
        if inner is not None:
            raise ConfigError(f"name={name}: {run_dir} holds the run folder {inner.parent}; a run cannot be made "
                              "around another run (choose another name)")


# files other commands leave in their output folders (a batch run's, `sigma eval --out`'s, `sigma annotate -o`'s, a
# `sigma synth --out` set's); a training run writes none of them
_OTHER_OUTPUTS = OTHER_THAN_TRAINING      # one list with the CLI's refusal of run folders (`sigma.io.runmarks`)
_MAX_CONFIG_READ = 1 << 20


def _refuse_foreign_folder(run_dir: Path) -> None:
    """A new run's folder (no checkpoint in it) must be empty or a training run's: `out_dir=RUNS name=batch1`, the
    folder of a batch run, an eval's --out or a data set, was trained into, its config.yaml replaced by the training
    config (the batch run's, the eval's record of what ran: gone) and a checkpoint, model/ and metrics.jsonl put
    beside its files. Refused, before anything is read or written, when it holds a file another command writes
    (`_OTHER_OUTPUTS`) or a config.yaml that is no training config (a mapping with `stage` and `steps`); a folder a
    run was started in and stopped before its first checkpoint (its own config.yaml) is started over as before."""
    if not run_dir.is_dir():
        return
    other = next((name for name in _OTHER_OUTPUTS if (run_dir / name).exists()), None)
    said = f"{other}: the output of another sigma command" if other else None
    config = run_dir / "config.yaml"
    if said is None and config.is_file():
        import yaml

        try:
            with open(config, "rb") as handle:
                saved = yaml.safe_load(handle.read(_MAX_CONFIG_READ + 1)[:_MAX_CONFIG_READ])
        except (OSError, ValueError, yaml.YAMLError):
            saved = None
        if not (isinstance(saved, dict) and "stage" in saved and "steps" in saved):
            said = "config.yaml: not a training run's"
    if said is not None:
        raise ConfigError(printable(f"{run_dir}: holds {said}; a new training run would replace its files (choose "
                                    "another name= or out_dir=)"))


def _refuse_unfinished_eval_sets(inputs: TrainConfig) -> None:
    """`unfinished_synth_set` before the first step when `eval.val_dir` or `eval.data` is a `sigma synth --out`
    folder still being written or left by a killed run (`sigma.io.unfinished`). `eval.val_dir` was read without the
    check (every validation scored a set of pairs mixing two runs' images, or a folder without its listing was
    refused as one to "empty"), and `eval.data` was refused only when scored, after the last step."""
    from sigma.io.unfinished import refuse_unfinished, refuse_unfinished_sets

    if inputs.eval.val_dir and Path(inputs.eval.val_dir).is_dir():
        refuse_unfinished(Path(inputs.eval.val_dir))
    if inputs.eval.data and inputs.eval.data != "shared" and Path(inputs.eval.data).is_dir():
        refuse_unfinished_sets(Path(inputs.eval.data))


def _check_eval_data(inputs: TrainConfig, log=print) -> None:
    """`eval.data`'s manifests read and checked before the first step, as its first scoring will read them
    (`sigma.eval.runner.eval_records`; no image decoded): a repeated id, a record that is not JSON or lacks a field
    stopped the run with `bad_manifest` only at that scoring, after `eval.data_every` steps or the whole run, and a
    set none of whose pairs can be scored (files missing, masks null) was scored as `"real": {}` every time, marked
    best, without a word. Now that set is `no_pairs`; some pairs unscoreable are said once, and skipped as before."""
    from sigma.eval.runner import eval_records, unscoreable

    ev = inputs.eval
    data = eval_data_path(ev.data)
    if not data or not Path(data).is_dir():
        return
    records = eval_records(data, ev.limit)
    problems = [why for why in map(unscoreable, records) if why is not None]
    if len(problems) == len(records):
        raise InputError(printable(f"eval.data {data}: none of its {len(records)} pair(s) can be scored, so every "
                                   f"scoring of the real set would be empty (first: {problems[0]}); fix the set or "
                                   "leave eval.data out"), code="no_pairs")
    if problems and world.rank() == 0:
        log(printable(f"eval.data {data}: {len(problems)} of {len(records)} pairs cannot be scored and are skipped "
                      f"at each scoring (first: {problems[0]})"))


# The config's paths that name inputs (read, never written): relative ones are read from `workdir`.
INPUT_PATHS = ("data.photos", "data.cache", "data.cache_index", "eval.val_dir", "eval.data", "init_from")


def _get(cfg: TrainConfig, dotted: str) -> str | None:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _replace(cfg: TrainConfig, dotted: str, value: Any) -> TrainConfig:
    head, _, rest = dotted.partition(".")
    if not rest:
        return cfg.model_copy(update={head: value})
    return cfg.model_copy(update={head: getattr(cfg, head).model_copy(update={rest: value})})


def _input_paths(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(key, path) of every non-empty input path in `cfg`; a source is `sources[i]`."""
    found = [(key, _get(cfg, key)) for key in INPUT_PATHS]
    found += [(f"sources[{i}]", s.path) for i, s in enumerate(cfg.sources)]
    return [(k, v) for k, v in found if v and not (k == "eval.data" and v == "shared")]


def _absolute_overrides(overrides: list[str]) -> list[str]:
    """`--resume RUN key=PATH`: a relative path given now is relative to the current folder, not to the folder the
    run started in (where config.yaml's own paths are read from): written down absolute."""
    from sigma.config.loader import parse_value

    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if sep and key in INPUT_PATHS and value and value not in ("null", "~", "shared") \
                and not Path(value).is_absolute():
            item = f"{key}={Path(value).absolute()}"
        elif sep and key == "sources":
            sources = parse_value(value, key)
            if isinstance(sources, list):
                sources = [{**s, "path": str(Path(s["path"]).absolute())}
                           if isinstance(s, dict) and isinstance(s.get("path"), str) and s["path"] else s
                           for s in sources]
                item = f"{key}={json.dumps(sources)}"        # JSON is YAML: read back as it was given
        out.append(item)
    return out


def resolve_inputs(cfg: TrainConfig, log=print) -> TrainConfig:
    """`cfg` with each relative input path read from `cfg.workdir` (the folder the run started in): `--resume` of a
    run started elsewhere looked for `data.cache: cache` in the current folder, found no photo files and said
    `no_photos`. A path that is not under workdir but is in the current folder (the run folder copied to another
    machine, with its data, and resumed from the project root) is taken from there, and said."""
    base = Path(cfg.workdir) if cfg.workdir else Path.cwd()
    for key, value in _input_paths(cfg):
        path = Path(value)
        if path.is_absolute():
            continue
        chosen = base / path
        if not chosen.exists() and path.exists() and path.absolute() != chosen.absolute():
            log(f"{key}: {value} is not in {base} (where the run started) but is in the current folder; using "
                f"{path.absolute()}")
            chosen = path
        chosen = chosen.absolute()
        if key.startswith("sources["):
            i = int(key[8:-1])
            sources = list(cfg.sources)
            sources[i] = sources[i].model_copy(update={"path": str(chosen)})
            cfg = cfg.model_copy(update={"sources": sources})
        else:
            cfg = _replace(cfg, key, str(chosen))
    return cfg


def _relative_note(cfg: TrainConfig, key: str) -> str:
    value = _get(cfg, key)
    if not value or Path(value).is_absolute():
        return ""
    return f" ({key} is {value!r}, read from {cfg.workdir or Path.cwd()}, the folder the run started in: workdir)"


def _check_model(cfg: TrainConfig) -> None:
    """The configured architecture, validated and its size checked (`sigma.models.size`) before the run folder is
    made: a `model:` mapping with an absurd width was built, and failed, after config.yaml had been written."""
    from sigma.models import make_config, preset_config
    from sigma.models.config import CompactBackboneConfig, Dinov2BackboneConfig
    from sigma.models.size import check_model_size

    model = preset_config(cfg.model) if isinstance(cfg.model, str) else make_config(cfg.model)
    check_model_size(model)
    if isinstance(model.backbone, CompactBackboneConfig) and cfg.batch_size == 1:
        side = cfg.data.crop
        for _ in model.backbone.widths:     # each stage halves the grid (a stride-2 conv, padded)
            side = (side - 1) // 2 + 1
        if side == 1:
            # BatchNorm in train mode needs more than one value per channel: a ValueError traceback at the first step
            raise ConfigError(f"batch_size=1 at data.crop={cfg.data.crop}: the backbone's last stage sees a 1x1 grid, "
                              "one value per channel, which BatchNorm cannot train on; use batch_size=2 or more, or a "
                              "larger data.crop")
    if isinstance(model.backbone, Dinov2BackboneConfig):
        # a ViT sees whole patches: a crop of 64 for patch 14 was a ValueError traceback at the first step
        patch = int((model.backbone.hf_config or {}).get("patch_size") or model.size_multiple)
        if cfg.data.crop % patch:
            low = cfg.data.crop // patch * patch
            raise ConfigError(f"data.crop {cfg.data.crop} is not a multiple of the DINOv2 patch size {patch}: the "
                              f"network sees whole patches (use {low} or {low + patch})")


def start(config_path: str | None, overrides: list[str] | None = None, resume: str | None = None,
          log=print, terminated: Noted | None = None) -> Path:
    """`sigma train CONFIG [k=v ...]` or `sigma train --resume RUN_DIR`. The run folder is held for the whole
    run (rank 0 holds it under DDP): a second `sigma train` on it — the same name=, or --resume while the
    first still runs — is refused with `run_locked` before it reads or writes anything there."""
    world.rendezvous()      # a DDP run's environment (torchrun's variables) said wrong before anything is read
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise InputError(f"{run_dir}: not a run folder (no config.yaml)", code="file_not_found")
        overrides = _absolute_overrides(overrides or [])
        cfg = load_config(TrainConfig, run_dir / "config.yaml", overrides)
        saved = load_config(TrainConfig, run_dir / "config.yaml", [])
        # refused before config.yaml is rewritten: the run stays resumable
        refuse_changed_shaping(run_dir, cfg.model_dump(mode="json"), saved.model_dump(mode="json"))
        latest = latest_checkpoint(run_dir)     # read once: every check below judges this one checkpoint
        refuse_other_world(run_dir, world.world_size(), latest)
        # the checkpoint's own, where it keeps them: config.yaml edited by hand changed them without a word
        saved_batch, saved_seed = saved_stream(run_dir, latest) or (saved.batch_size, saved.seed)
        changed = stream_changes(run_dir, saved_batch, cfg.batch_size, saved_seed, cfg.seed, world.world_size(),
                                 None if latest is None else int(latest["step"]))
        at = None if latest is None else int(latest["step"])
        del latest          # not held through the run: its tensors map the checkpoint file, which later saves replace
        if at is not None and cfg.steps < at:
            # `--resume RUN steps=1` on a run at step 2 of 4 wrote steps: 1 into config.yaml, dropped its `paused`
            # row and wrote final/ at step 2: the run ended for good, at 2 of what said 1, by a typo
            raise ConfigError(f"steps={cfg.steps} is below the step {run_dir} stands at ({at}): a resume cannot "
                              f"undo steps; give steps={at} or more ({at} ends the run there), or start a new run "
                              f"from it with init_from={run_dir} (nothing in the run folder was changed)")
        if changed and world.rank() == 0:
            print(f"sigma: warning: {printable(changed)}", file=sys.stderr, flush=True)
        frozen = (run_dir / "cache_index.json").absolute()
        if cfg.data.cache_index and frozen.is_file() and "data.cache_index" not in parse_overrides(overrides):
            # the run's own snapshot of the cache index, wherever the run folder is now: config.yaml holds the
            # path it was written at (relative to the first run's working folder), so a resume from another
            # folder, or of a run folder moved or copied back from another machine, failed with file_not_found
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache_index": str(frozen)})})
    else:
        if not config_path:
            raise ConfigError("give a config (sigma train configs/train/sigma-lite-stage1.yaml) or --resume RUN_DIR")
        cfg = load_config(TrainConfig, config_path, overrides or [])
        if cfg.out_dir == "":
            # `out_dir=$RUNS` with the variable unset trained into the current folder, as `--out ''` did before every
            # command refused it (`empty_path`); a fresh run only: a run made so is still resumed from its folder
            raise ConfigError("out_dir: an empty path; name the folder the runs go in (`.` for the current folder)")
        # recorded in config.yaml, absolute: a --resume from elsewhere reads the same inputs
        cfg = cfg.model_copy(update={"workdir": str(Path(cfg.workdir or ".").absolute())})
        run_dir = Path(cfg.out_dir) / cfg.name
        _refuse_nesting(Path(cfg.out_dir), cfg.name)
        if not any((run_dir / name).is_file() for name in (CKPT, PREV)):
            _refuse_foreign_folder(run_dir)
        if any((run_dir / name).is_file() for name in (CKPT, PREV)) and restarted_here(run_dir):
            # torchrun's restart of the run it started here (--max-restarts, a rank lost): it continues the run
            if world.rank() == 0:
                log(f"torchrun restart {os.environ.get('TORCHELASTIC_RESTART_COUNT')}: continuing {run_dir}")
            return start(None, overrides, resume=str(run_dir), log=log, terminated=terminated)
    _check_model(cfg)
    inputs = resolve_inputs(cfg, log=log)     # what the run reads: relative paths from where it started
    manifest = Path(inputs.eval.data) if inputs.eval.data and inputs.eval.data != "shared" else None
    if manifest is not None and manifest.name == "pairs.jsonl" and manifest.is_file():
        # the set's manifest named, as `sigma eval --data` and `sources` take it: it was "no such folder"
        inputs = _replace(inputs, "eval.data", str(manifest.parent))
    if inputs.eval.data and inputs.eval.data != "shared" and not Path(inputs.eval.data).exists():
        # said now, not as "skipped" in the last log line of an hour-long run ("shared" may be absent: skipped)
        raise ConfigError(f"eval.data {inputs.eval.data}: no such folder (a pairs.jsonl set or a folder of sets)"
                          f"{_relative_note(cfg, 'eval.data')}")
    if inputs.eval.data and inputs.eval.data != "shared":
        # there but no folder (a file, a FIFO): said as `sigma eval --data` says it, not as "no such folder"
        require_folder(Path(inputs.eval.data), "eval.data is a pairs.jsonl set or a folder of sets")
    _refuse_unfinished_eval_sets(inputs)
    _check_eval_data(inputs, log=log)
    if cfg.eval.data and (cfg.eval.data != "shared" or shared_eval_dir().is_dir()):
        # what the perturbations need (TAEF2 for vae / regen) is loaded now: a missing module or missing weights
        # ended the run only when the real set was scored, after the last step, with no final/
        from sigma.eval import perturb

        perturb.prepare(perturb.expand(cfg.eval.perturb))
    rank0 = world.rank() == 0
    fresh = rank0 and not resume
    # the folders a fresh run makes (its run folder, an out_dir not there yet): removed again if it never begins
    made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()] if fresh else []
    # config.yaml (the paths as given, with the workdir they are read from) is written only once the run has read its
    # data with them (`inputs_read`). A resume's overrides: a `--resume RUN data.photos=EMPTY` refused (no_photos) had
    # already replaced the run's own photos there, so every plain `--resume RUN` after it failed the same way. A fresh
    # run's: one refused there left its folder with a config.yaml (and cache_index.json) of a run that never began
    begun: list[bool] = []

    def inputs_read() -> None:
        if rank0:
            save_resolved(cfg, run_dir)
        if fresh:
            mark_launcher(run_dir)      # for torchrun's own restarts to continue it (`restarted_here`)
        begun.append(True)
    try:
        with hold_folder(run_dir, other="name= (or wait and --resume it)", created=bool(made)) if rank0 \
                else nullcontext():
            _refuse_links(run_dir)
            refuse_lost_checkpoints(run_dir)        # saved weights but no checkpoint: never started over unsaid
            if rank0:
                sweep_checkpoint_temps(run_dir)     # an older version's `checkpoint.pt.tmp` too, once a day old
            if not resume and any((run_dir / name).is_file() for name in (CKPT, PREV)):
                raise ConfigError(f"{run_dir} already holds a run; use `sigma train --resume {run_dir}` or name=...")
            if not resume:
                inputs = freeze_cache_index(inputs, run_dir, stop=terminated)
                cfg = _replace(cfg, "data.cache_index", inputs.data.cache_index)
            try:
                # under DDP, every collective of the run is the trainer's: a rank lost mid-run is said here, once
                with lost_ranks_said(run_dir):
                    return Trainer(inputs, run_dir, log=log, terminated=terminated, inputs_read=inputs_read).run()
            except BaseException:
                if fresh and not begun and inputs.data.cache_index == str((run_dir / "cache_index.json").absolute()):
                    (run_dir / "cache_index.json").unlink(missing_ok=True)   # its snapshot (`freeze_cache_index`)
                raise
    except BaseException:
        for folder in made[1:] if not begun else []:      # the run folder itself: `hold_folder(created=)`
            try:
                folder.rmdir()          # only while empty: another run may have begun there meanwhile
            except OSError:
                break
        raise
