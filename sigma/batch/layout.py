"""The run folder: where each file lives, and the manifest of shard status.

    OUT/run.json                  config, corpus identity, run hash, the planned shards (fixed at first run)
    OUT/config.yaml               the resolved config (sigma.config.save_resolved)
    OUT/shards/<key>.<hash>.parquet   one manifest per shard: a pure function of (input, shard, run hash)
    OUT/status/<key>.json         written after the shard's parquet is on disk (fsynced, renamed, folder synced)
                                  and its PNG masks too (each fsynced, masks/<key>/ synced): "done" or "failed";
                                  fsynced, renamed, then status/ synced
                                  (also "failed" when a fleet task for the shard was dead-lettered)
    OUT/.locks/status-<key>.lock  flock serialising the writes of one shard's status across processes
    OUT/masks/<key>/<pair>.png    optional PNG masks
    OUT/.lock                     flock: a local run holds it exclusively, fleet workers share it per shard

Status lives in one small file per shard so that many fleet workers can finish shards concurrently without
rewriting a shared file; `summary()` aggregates them.
"""
from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from sigma.errors import InputError
from sigma.folderlock import LOCK_FILE, LockWait, hold_folder, waiting_lock
from sigma.io.corpora.base import Shard, resolved_under
from sigma.io.lines import read_at_most
from sigma.regular import NotRegularFile, open_regular
from sigma.stdio import closed_stream_named
from sigma.tempfiles import replace_atomically, sweep_stale_below, sync_folder
from sigma.text import PATH_SHOWN, cut_long_values, dumps_finite, positive_int_env, shown
from sigma.text import loads as load_json

RUN_FILE = "run.json"
# The top-level keys of a run record: every one any version of sigma wrote (`sigma.batch.runner.prepare_run`; version 1
# records had no `model`, none was ever renamed or dropped). Another key is refused (`run_modified`): a record from
# a newer sigma, or one edited by hand ("planed_pairs"), would be half understood, its new key ignored.
RUN_KEYS = frozenset({"version", "run_hash", "config", "model", "corpus", "format", "planned_pairs", "shards"})
# failed shards a summary lists (`failed_shards`), first in run order; `failed` counts them all and
# `failed_shards_omitted` says how many were left out. A run with thousands of failures (a corpus whose every shard
# the fleet dead-lettered) made every status answer and summary.json list all of them, each with its message
FAILED_SHOWN = 100
# the most one may ask for (`--failed-limit`, the API's `failed_limit`): a status that big is read by a program
MAX_FAILED_SHOWN = 10_000
# Dead letters a run's status reads, newest first (`sigma batch status --redis --dead-limit`, the API's
# `dead_limit`): a worker that cannot read or trust a run.json (`run_too_large`: the $SIGMA_MAX_RUN_BYTES of every
# live worker is lower than the driver's; `bad_task`, `run_unreadable`) dead-letters the task without writing the
# shard's status, and the run showed that shard "pending" for ever, the reason only in `<stream>:dead`. The stream
# serves every run and may hold `queue.dead_letter_maxlen` entries (10,000 by default, no upper bound) of up to ~4 KB
# each: a poll reads at most this many, and says when it stopped short (`dead_read_all`).
DEAD_READ = 2000
MAX_DEAD_READ = 10_000
# Task stream entries a run's status reads, newest first, to find the run's tasks (`sigma batch status --redis
# --task-limit`, the API's `task_limit`); it stops sooner once every pending shard of the run has its task. The stream
# serves every run: the API caps it at `api.max_batch_tasks` (1,000,000 by default), `sigma batch submit` not at all,
# and a status that read all of it (~300 bytes an entry) on every poll took as long, and as much memory, as the stream
# was long. A pending shard whose task was not found within the limit is `unchecked` (`tasks_read_all` false), not
# said lost (`unqueued`).
TASK_READ = 20_000
MAX_TASK_READ = 200_000
# a shard's status file is a few hundred bytes (its error message is one line); one larger than this is damaged
MAX_STATUS_BYTES = 1 << 20
# The largest run.json (bytes) a run may write and any reader parses: its size is checked before a byte is read.
# Every reader parses the whole shard plan (`--resume`, `sigma batch submit` and POST /v1/batches, each fleet worker,
# `sigma batch status`, the exports, the review page, GET /v1/batches/status): one of 200 MB took each of them ~21 s
# and 1.6 GB. A plan of 50,000 shards is ~15 MB (~300 bytes a shard), api.max_batch_shards' 100,000 ~30 MB; 64 MiB
# leaves room for long corpus paths. $SIGMA_MAX_RUN_BYTES changes it, for the writer and every reader alike: one
# limit, read wherever run.json is (a status or an export has no config of its own before it reads the record).
DEFAULT_MAX_RUN_BYTES = 64 * 1024 * 1024
ENV_MAX_RUN_BYTES = "SIGMA_MAX_RUN_BYTES"


def max_run_bytes() -> int:
    """The limit: $SIGMA_MAX_RUN_BYTES when set (a positive whole number; `1e8` and `100_000_000` are read too), else
    `DEFAULT_MAX_RUN_BYTES`."""
    return positive_int_env(ENV_MAX_RUN_BYTES, DEFAULT_MAX_RUN_BYTES, "the run record size limit is a positive "
                            f"whole number of bytes (default {DEFAULT_MAX_RUN_BYTES})")


def refuse_folder(path: Path) -> None:
    """An output *file* that names a folder: the one check, said early by the CLI and again at the write."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; name the file to write", code="out_is_a_folder")


# What a run folder holds for itself: an export or review page written over one of these destroys the run
# (`--out RUN/run.json`) or a shard's output; anything else in the folder (report.html, coco.json) is fine.
RUN_OWN = frozenset({RUN_FILE, "config.yaml", "summary.json", LOCK_FILE, ".locks", "shards", "status", "masks"})


def refuse_run_file(path: str | Path) -> None:
    """An output file that would land on a run folder's own record, status or shard files: refused before any
    work. The folder is found by its run.json one or two levels up (`RUN/run.json`, `RUN/shards/x.parquet`); a
    training run's by its checkpoint or metrics (`sigma.io.runmarks.refuse_training_file`)."""
    from sigma.io.runmarks import refuse_training_file

    refuse_training_file(path)
    target = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    for candidate in {target, real}:
        for folder in (candidate.parent, candidate.parent.parent):
            if (folder / RUN_FILE).is_file():
                first = candidate.relative_to(folder).parts[0]
                if first in RUN_OWN:
                    raise InputError(f"{path}: would overwrite the batch run's own {first} in {folder}; write "
                                     "the output elsewhere", code="out_is_run_file")


def refuse_inside_run(folder: str | Path, out_name: str = "--out") -> None:
    """A new run folder may not lie in another run's own files (`RUN/status/x`, `RUN/masks/<shard>`, `RUN/shards`):
    the two runs wrote into each other (a shard keyed `run` put its status over the inner run's run.json, the outer
    run's masks landed in the inner run, and a sweep of `RUN/shards` took the inner run's files). Checked when a
    run is planned (`sigma batch run`, `sigma batch submit`, POST /v1/batches); a run inside `RUN/other` is fine.
    A training run's own folders (`TRAIN/best`, `TRAIN/model`, `TRAIN/final`, `TRAIN/tb`: `sigma.io.runmarks`) are
    refused alike: `sigma export hf RUN TRAIN/model` put a README.md and data/ in the saved model's folder, and
    `sigma eval --out TRAIN/best` (or `sigma annotate -o TRAIN/best/x`) its files among the best weights'."""
    from sigma.io.runmarks import TRAINING_FOLDERS, is_training_run

    real = Path(os.path.realpath(folder))
    for up in real.parents:
        first = real.relative_to(up).parts[0]
        if (up / RUN_FILE).is_file():
            if first in RUN_OWN:
                raise InputError(f"{folder}: inside the batch run's own {first}/ in {up}; choose another {out_name}",
                                 code="out_is_run_file")
        elif first in TRAINING_FOLDERS and is_training_run(up):
            raise InputError(f"{folder}: inside the training run's own {first}/ in {up}; choose another {out_name}",
                             code="out_is_run_file")


def refuse_images_dir(folder: str | Path, corpus: str | None) -> None:
    """A folder an export writes images into (`sigma export coco --images`) must not be where the run or its corpus
    (`corpus`: the path its checked record names) keeps files: inside a run's own folders (`RUN/masks/<shard>`: the
    run's --png-masks replaced by edited images), inside a folder corpus, or the folder of a manifest corpus (where
    its images sit: `<id>.png` there would replace them). Checked before any work; `RUN/images` (a new folder of
    the run) stays allowed."""
    refuse_inside_run(folder, "--images folder")   # a batch run's own folders, and a training run's (`TRAIN/model`)
    if not corpus:
        return
    real, source = Path(os.path.realpath(folder)), Path(os.path.realpath(corpus))
    root = source if source.is_dir() else source.parent
    # a folder inside a run folder that itself sits in the corpus (`cd corpus && sigma batch run . --out run`, then
    # the documented `--images run/images`) is the run's, not the corpus's: no reader takes images from there
    in_run = any((up / RUN_FILE).is_file() and root in up.parents for up in real.parents)
    if real == root or (source.is_dir() and root in real.parents and not in_run):
        raise InputError(f"{folder}: where the corpus this run was made from keeps its files ({corpus}); images "
                         "written there would replace them. Choose another folder", code="out_not_empty")


def is_stream(path: Path) -> bool:
    """A pipe or a device (followed through links): there is no file to replace, only a stream to write."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


STREAM_READER_WAIT_S = 10.0     # how long a write to a FIFO waits for a process to read it


@contextmanager
def stream_reader_held(path: Path, wait_s: float | None = None) -> Iterator[int | None]:
    """Around a write to a stream: for a FIFO, an open write end once some process reads it (its fd, blocking
    again), else `out_no_reader` after `wait_s` (STREAM_READER_WAIT_S). The plain open of a FIFO nobody reads
    blocks until one does: `sigma export coco RUN --out p`, `sigma report --out p` and `sigma parse --out p` with
    no reader on `p` (or a reader that is gone) hung for ever, after all of their work, without a word. A reader
    that comes within the wait (`gzip < p > x.gz &` started just after) is found: the open is retried
    (O_NONBLOCK: ENXIO while none reads). The caller writes through this end (a second open of the FIFO would
    block again once the reader has left); a reader that leaves mid-write is a BrokenPipeError. Other streams (a
    tty, /dev/null, /dev/full) yield None."""
    try:
        fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        fifo = False
    if not fifo:
        yield None
        return
    wait_s = STREAM_READER_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            if time.monotonic() >= deadline:
                raise InputError(f"{path}: a FIFO that no process reads (waited {wait_s:g} s); start its reader "
                                 "first (e.g. `gzip < FIFO > out.gz &`) or name a file", code="out_no_reader") from None
            time.sleep(0.05)
    try:
        os.set_blocking(fd, True)
        yield fd
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | Callable[[Path | int], None], *, stream: bool = True) -> None:
    """Whole or not at all; a write that fails (a full disk, `path` a folder) takes its temporary file with
    it instead of leaving a hidden `.name.pid.tmp` beside the target. `data`: the bytes, or a writer of the file at
    the path it is given (`data(path)`, which opens it itself: `open(path, "wb")`), for an output too large to hold
    in memory; for a FIFO it is given a file descriptor to take instead (a second open of a FIFO whose reader has
    left blocks; `stream_reader_held`). `stream=False`: a file in a folder the writer owns — a run's own files
    (run.json, a status, summary.json), an export's JSON in its OUT folder — never a stream: a FIFO or device of its
    name is replaced like a file (a status that was a FIFO hung `--resume`)."""
    with output_file(path, stream=stream) as write:
        write(data)


#: what `output_file` yields: writes the output, given its bytes or a writer of the file (`atomic_write_bytes`)
OutputWrite = Callable[[bytes | Callable[[Path | int], None]], None]


@contextmanager
def output_file(path: Path, *, stream: bool = True) -> Iterator[OutputWrite]:
    """`atomic_write_bytes` in two steps: entered, the target is checked and a FIFO's reader found (its write end
    held, `stream_reader_held`: `out_no_reader` here); the function it yields then writes the output, once. A
    command that writes other files before its one output (`sigma export coco --out FIFO --images DIR`) enters it
    before any of them: a FIFO that no process read was `out_no_reader` only after DIR had been filled with the
    images of an export that then said it failed."""
    path = Path(path)
    closed = closed_stream_named(path)
    if closed:      # `--out /dev/stdout` after `>&-`: written into the /dev/null held there, or (before) over the link
        raise InputError(f"{path}: the {closed} this sigma was started with is closed, so nothing reads it; give "
                         "the stream back (e.g. `> FILE` instead of `>&-`) or name a file", code="out_no_reader")
    refuse_folder(path)
    if not (stream and is_stream(path)):
        yield lambda data: replace_atomically(path, data, durable=True)
        return
    # `--out /dev/stdout`, a FIFO, `>(gzip > x.gz)`: written to, never renamed over — a rename replaced the
    # /dev/stdout link itself (as root, in a container) or failed in /dev (os_error), and nothing was written
    with stream_reader_held(path) as fd:
        yield lambda data: _write_stream(path, data, fd)


def _write_stream(path: Path, data: bytes | Callable[[Path | int], None], fd: int | None = None) -> None:
    """`data` written to the stream `path` (a FIFO: through its write end `fd`, held). A write it refuses for room
    (`--out /dev/full`) is said of `path`: the write carries no file name (`out_of_space` with no word of where)."""
    from sigma.tempfiles import no_room_said_of

    with no_room_said_of(path):
        _write_to(path if fd is None else os.dup(fd), data)


def _write_to(target: Path | int, data: bytes | Callable[[Path | int], None]) -> None:
    if not isinstance(data, bytes):
        data(target)
        return
    with open(target, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: Path, data: Any, *, stream: bool = True) -> None:
    atomic_write_bytes(path, dumps_finite(data, indent=2, sort_keys=True).encode(), stream=stream)   # NaN -> null


def _count(value: Any) -> int:
    """A count a status file holds, or 0 when it holds something else: a status written by hand, by another tool
    or by a hostile run folder (`"pairs": "many"`, `"error_codes": [1]`) ended `sigma batch status`, the API's
    status route and every export in a ValueError traceback (a 500)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not (value.is_integer() and abs(value) < 2 ** 63):
        return 0
    return max(int(value), 0)


def _missing(exc: OSError) -> bool:
    """An OSError that `Path.is_file()` takes for "no such file" (so the checks it made keep their answers now that
    the file is opened, not checked first): nothing there, a file where a folder was expected, a link loop."""
    return exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _opened_file(path: Path) -> BinaryIO | None:
    """`path` opened for reading (`open_regular`), or None where `is_file()` would have said no: nothing there, or
    no regular file (a FIFO, a device, a folder: never waited on)."""
    try:
        return open_regular(path)
    except OSError as exc:
        if isinstance(exc, NotRegularFile) or _missing(exc):
            return None
        raise


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- the run record -------------------------------------------------------------------------
    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    def exists(self) -> bool:
        """A run.json is there, of any kind (`load` refuses one that is no regular file, not_a_run, saying so: with
        `is_file()` here a FIFO run.json was "not empty and not a batch run", out_not_empty)."""
        return os.path.lexists(self.run_file)

    def own(self, path: Path) -> Path:
        """`path` if it stays in the run folder once symbolic links are followed, else InputError
        (link_outside_run). A run folder from elsewhere (a shared volume, a hostile corpus next to it) whose
        run.json, status file or shard file is a link to /elsewhere made every reader of the run (a fleet worker,
        `sigma batch status`, an export) read that file, and a `shards/`, `status/` or `masks/` that is one made
        the writers put their files there. Links that stay inside the folder are fine, as for a corpus's files
        (`resolved_under`)."""
        if self._no_link_below_root(path):
            return path             # the common case, in a few lstat calls (a status poll asks this per shard)
        if resolved_under(str(path), os.path.realpath(self.root)) is None:
            raise InputError(f"{path}: a symbolic link that leaves the run folder {self.root}; a run reads and "
                             "writes only its own files (remove the link)", code="link_outside_run")
        return path

    def is_empty(self) -> bool:
        """Nothing but (maybe) our lock file: a folder a new run may take."""
        return not self.root.exists() or all(p.name in (LOCK_FILE, ".locks") for p in self.root.iterdir())

    @contextmanager
    def locked(self, exclusive: bool = True, other: str = "--out", lock_wait: LockWait | None = None) -> Iterator[None]:
        """Hold the run folder (`sigma.folderlock`): `sigma batch run` exclusively for the whole run (a second
        run on the same --out exits with `run_locked` and the holder's pid and host), fleet workers shared while they
        write a shard (so a local run cannot start under them, and they wait while one holds it). A run that
        failed before writing anything leaves no folder. `other`: what a refusal tells the caller to choose
        instead (the CLI's `--out`; the API's callers have no such flag). `lock_wait`: `hold_folder`'s, the bound of
        a new holder's wait for the folder's commit lock (the API's `api.lock_wait_s`; None: the command's)."""
        with hold_folder(self.root, exclusive, other=other, lock_wait=lock_wait):
            yield

    def load(self) -> dict[str, Any]:
        """The run record, checked. not_a_run when there is none: no run.json, or one that is not a regular file (a
        FIFO, a device or a folder: said so; it was "no run.json", and one put there after the check held every
        reader of the run, `sigma batch status` and `--resume` included, for ever)."""
        try:
            record = load_json(self._read_run_file())
        except ValueError as exc:
            raise InputError(f"{self.run_file}: unreadable ({exc})", code="bad_run") from exc
        shards = record.get("shards") if isinstance(record, dict) else None
        if (not isinstance(record, dict) or not isinstance(record.get("run_hash"), str)
                or not isinstance(shards, list) or not all(isinstance(s, dict) and "key" in s for s in shards)):
            # valid JSON that is not a run record (overwritten by hand or by a tool): a KeyError traceback before
            raise InputError(f"{self.run_file}: not a batch run record (no run_hash and shard list)", code="bad_run")
        unknown = sorted((str(key) for key in record if key not in RUN_KEYS), key=str)
        if unknown:
            named = ", ".join(repr(shown(key, 80)) for key in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise InputError(f"{self.run_file}: top-level key(s) this sigma does not know: {named}{more} (a run record "
                             f"holds {', '.join(sorted(RUN_KEYS))}): written by a newer version of sigma, or edited. "
                             "Restore run.json, or read the run with the version that planned it", code="run_modified")
        for n, item in enumerate(shards):
            # a key names the shard's files (shards/<key>.<hash>.parquet, status/<key>.json): a run.json from
            # elsewhere with `"key": "../../x"` had every writer put them outside the run folder
            key = item["key"]
            if not isinstance(key, str) or key in ("", ".", "..") or any(c in key for c in "/\\\x00"):
                raise InputError(f"{self.run_file}: shard key {key!r} is not a plain file name", code="bad_run")
            # `"index": "x"`, `"ref": 5`: a ValueError / TypeError traceback in every command that read the run,
            # and a fleet worker that could neither run nor dead-letter the task
            if (isinstance(item.get("index"), bool) or not isinstance(item.get("index"), int)
                    or not isinstance(item.get("ref") or {}, dict)
                    or not isinstance(item.get("num_items"), int | None) or isinstance(item.get("num_items"), bool)):
                raise InputError(f"{self.run_file}: shard {n} ({key!r}) is not a shard record (an integer index, "
                                 "a ref object, a pair count or null)", code="bad_run")
        if not isinstance(record.get("config", {}), dict):
            raise InputError(f"{self.run_file}: its config is not an object", code="bad_run")
        return record

    def _read_run_file(self) -> bytes:
        """run.json's bytes, refused (run_too_large) by its size before any is read when it is over `max_run_bytes`;
        read no further than the limit should it grow meanwhile."""
        limit = max_run_bytes()
        try:
            handle = open_regular(self.own(self.run_file))
        except NotRegularFile:
            raise InputError(f"{self.root}: not a batch run folder (its {RUN_FILE} is not a regular file: a FIFO, a "
                             "device or a folder); start one with sigma batch run", code="not_a_run") from None
        except OSError as exc:
            if not _missing(exc):
                raise
            raise InputError(f"{self.root}: not a batch run folder (no {RUN_FILE}); start one with sigma batch run",
                             code="not_a_run") from None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            data = read_at_most(handle, limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise InputError(f"{self.run_file}: {max(size, len(data))} bytes, over the {limit} a run record may hold "
                             f"(${ENV_MAX_RUN_BYTES}, default {DEFAULT_MAX_RUN_BYTES}); not read. A plan of 50,000 "
                             "shards is ~15 MB: this one was planned under a higher limit (set the same one here) "
                             "or written by something else", code="run_too_large")
        return data

    def shards(self) -> list[Shard]:
        return [Shard.from_dict(s) for s in self.load()["shards"]]

    def write_run(self, record: dict[str, Any]) -> None:
        """Write the run record, refused (plan_too_large, nothing written) when it is over `max_run_bytes`: no reader
        would take it, and every one would parse it whole."""
        data = dumps_finite(record, indent=2, sort_keys=True).encode()
        limit = max_run_bytes()
        if len(data) > limit:
            shards = record.get("shards") or []
            raise InputError(f"{self.root}: the run record of {len(shards)} shards would be {len(data)} bytes, over "
                             f"the {limit} a run record may hold (${ENV_MAX_RUN_BYTES}, default "
                             f"{DEFAULT_MAX_RUN_BYTES}); nothing written. The corpus is too large for one run: split "
                             "it into several runs (or use a larger shard_size: fewer shards)", code="plan_too_large")
        atomic_write_bytes(self.run_file, data, stream=False)

    # --- per-shard paths --------------------------------------------------------------------------
    def subdir(self, *parts: str) -> Path:
        """A folder inside the run, made as needed, but never the run folder itself: a run folder deleted while a
        fleet worker (or a local run) writes a shard stays deleted — FileNotFoundError for the writer. It was made
        again, holding a shard and status no run.json describes, and submitting to it anew was refused
        (out_not_empty) until it was deleted a second time. A folder made here is on disk by name once (its parent
        fsynced): the files in it were synced, but a power cut could still lose `shards/` (or `status/`,
        `masks/<key>/`) itself."""
        path = self.root
        for part in parts:
            path = self.own(path / part)          # checked before mkdir: a dangling link to /elsewhere too
            try:              # not make_folders_durably: a run folder deleted meanwhile must stay deleted
                path.mkdir()
            except FileExistsError:
                if not path.is_dir():     # said as such: it was "File exists: RUN/status", as though that were wrong
                    raise NotADirectoryError(errno.ENOTDIR, "Not a folder (a FIFO, a device or a file where the run "
                                             "keeps a folder of its own; remove it)", str(path)) from None
                continue
            sync_folder(path.parent)
        return path

    def shard_path(self, shard: Shard, run_hash: str) -> Path:
        return self.root / "shards" / f"{shard.key}.{run_hash}.parquet"

    def _no_link_below_root(self, path: Path) -> bool:
        """True when no component of `path` below the run folder is a symbolic link (nor `.` or `..`): it is inside.
        On strings, not Paths: a status poll asks this twice per shard."""
        root, text = str(self.root), str(path)
        if not text.startswith(root + os.sep):
            return False
        probe = root
        for part in text[len(root) + 1:].split(os.sep):
            if part in ("..", ".", ""):
                return False
            probe = probe + os.sep + part
            try:
                if stat.S_ISLNK(os.lstat(probe).st_mode):
                    return False
            except FileNotFoundError:
                return True         # nothing below a missing component exists
            except OSError:
                return False
        return True

    def check_links(self, shard: Shard, run_hash: str) -> None:
        """Every path the work on `shard` reads or writes stays in the run folder (`own`): checked by a fleet
        worker before it starts, so a run folder that links out is refused (a dead letter that says why) and
        nothing is read or written through the link."""
        for path in (self.run_file, self.shard_path(shard, run_hash), self.status_path(shard),
                     self.root / "masks" / shard.key, self.root / ".locks" / f"status-{shard.key}.lock"):
            self.own(path)

    def sweep_temps(self, shard: Shard, run_hash: str, min_age_s: float = 5.0) -> int:
        """Remove the temporary parquet files of `shard` that no writer holds: what a writer killed mid-write left
        (a preempted fleet worker, the OOM killer). A folder worked on only by fleet workers is never swept at a
        start (that needs it held exclusively), so every such kill left a file up to a shard's size for good. A
        writer holds an flock on its file until it renames it (`ShardWriter`), as the fleet's folder lock relies on
        flock across machines; `min_age_s` spares a file made an instant ago, before its writer could lock it."""
        import fcntl
        import glob
        import time

        folder = self.root / "shards"
        if folder.is_symlink() or not folder.is_dir():
            return 0
        removed = 0
        cutoff = time.time() - min_age_s
        for tmp in folder.glob(f".{glob.escape(self.shard_path(shard, run_hash).name)}.*.tmp"):
            try:
                if tmp.is_symlink() or tmp.lstat().st_mtime > cutoff:
                    continue
                with open_regular(tmp) as handle:     # a FIFO of that name: NotRegularFile, not waited on
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue              # its writer is alive
                    tmp.unlink()
                    removed += 1
            except OSError:                   # gone meanwhile
                continue
        return removed

    def sweep_dead_writers(self, pending: list[Shard]) -> list[Path]:
        """Remove what writers killed in `status/` and in the `masks/<key>/` of the `pending` shards left (a status
        or a PNG mask written to its temporary name, never renamed): a run sweeps only its folder itself when it
        takes it, and a run folder resumed after crashes and OOM kills gathered hidden `.NAME.PID.RANDOM.tmp` files
        there for good. Only by a caller that holds the folder exclusively (`prepare_run(sweep=True)`): fleet workers
        sharing it write there from other hosts, whose pids cannot be checked. Bounded: the masks of finished
        shards are not read — a shard is done only once its masks were all renamed into place, so a kill can have
        left one only in a shard that is still pending; no folder is walked below, no link followed, and only
        `temp_name`'s form with a pid that is no live process here goes (`sigma.tempfiles.sweep_stale_below`)."""
        return sweep_stale_below(self.root, ["status", *(f"masks/{shard.key}" for shard in pending)])

    def status_path(self, shard: Shard) -> Path:
        return self.root / "status" / f"{shard.key}.json"

    def status(self, shard: Shard) -> dict[str, Any] | None:
        """The shard's status record, or None: none written, or not a regular file (a FIFO or a device in its place
        is no status: it was checked with `is_file()` and then read by its path, so one put there in between held
        `sigma batch status`, `--resume` and the fleet for ever), or not a JSON object,
        or over MAX_STATUS_BYTES (ours are a few hundred bytes: one of gigabytes was read whole by every status poll;
        as a damaged one, it is not done)."""
        handle = _opened_file(self.own(self.status_path(shard)))
        if handle is None:
            return None
        with handle:
            if os.fstat(handle.fileno()).st_size > MAX_STATUS_BYTES:
                return None
            data = read_at_most(handle, MAX_STATUS_BYTES + 1)
        if len(data) > MAX_STATUS_BYTES:       # grew while read
            return None
        try:
            st = load_json(data)
        except ValueError:     # torn or corrupt: the shard is not done
            return None
        return st if isinstance(st, dict) else None

    def is_done(self, shard: Shard, run_hash: str, verify: bool = False) -> bool:
        """Done = a "done" status for this run hash and the output it names is there, unchanged: the size it was
        written with, and with `verify` (a run or a fleet submission deciding what to redo) its sha256 too — a
        shard file damaged in place (a bad disk, a copy cut and patched) keeps its size, and was taken as done
        for ever; the status records the checksum, so reading the file once per resume settles it."""
        st = self.status(shard)
        if not st or st.get("status") != "done" or st.get("run_hash") != run_hash:
            return False
        out = self.own(self.shard_path(shard, run_hash))
        if not verify:       # one stat, no open: a status poll asks this per shard
            try:
                info = os.stat(out)
            except OSError as exc:
                if _missing(exc):
                    return False
                raise
            return stat.S_ISREG(info.st_mode) and info.st_size == st.get("bytes")
        # checked and hashed through one handle: a FIFO put in the shard file's place after a check by its path held
        # `--resume` and the fleet for ever in the hashing open; one that is not a regular file is not done (redone,
        # as a damaged one is)
        handle = _opened_file(out)
        if handle is None:
            return False
        with handle:
            return os.fstat(handle.fileno()).st_size == st.get("bytes") and self.as_written(st, out, handle)

    @staticmethod
    def as_written(status: dict[str, Any], path: Path, handle: BinaryIO | None = None) -> bool:
        """The shard file `path` has the sha256 its status recorded when the run wrote it (a status with none: held
        to its size alone, as before checksums were recorded). A file damaged in place keeps its size. `handle`:
        the file as a reader already opened it (read from its start), not opened again by its path."""
        recorded = status.get("sha256")
        if not isinstance(recorded, str):
            return True
        from sigma.digest import sha256_file, sha256_stream

        if handle is None:
            try:
                return sha256_file(path) == recorded
            except NotRegularFile:        # a FIFO or a device in its place (never waited on): not what was written
                return False
        handle.seek(0)
        return sha256_stream(handle) == recorded

    @contextmanager
    def _status_lock(self, shard: Shard, wait_s: float | None = None) -> Iterator[None]:
        """Serialises the status writes of one shard across processes (fleet workers share the folder). `wait_s`:
        TimeoutError once another process has held it that long (None: wait for ever)."""
        with waiting_lock(self.own(self.subdir(".locks") / f"status-{shard.key}.lock"), wait_s):
            yield

    def write_status(self, shard: Shard, data: dict[str, Any]) -> None:
        with self._status_lock(shard):
            self._put_status(shard, data)

    def _put_status(self, shard: Shard, data: dict[str, Any]) -> None:
        """The status file, durably: its bytes fsynced before the rename (`atomic_write_json`), then `status/` itself
        fsynced, so the rename is on disk too. Before, the folder was not synced: a power cut could lose the rename
        (the shard redone: harmless) — now the status, once written, stays."""
        folder = self.subdir("status")
        atomic_write_json(self.status_path(shard), {"shard": shard.key, "index": shard.index, **data}, stream=False)
        sync_folder(folder)

    def mark_failed(self, shard: Shard, run_hash: str, error: str, wait_s: float | None = None, **extra: Any) -> bool:
        """Record a shard given up on (a fleet task dead-lettered), unless it is done for this run: another
        worker may have finished it meanwhile, and a done shard is never overwritten. True when written.
        `wait_s`: how long another writer of the shard's status may keep it waiting (TimeoutError after)."""
        with self._status_lock(shard, wait_s):
            if self.is_done(shard, run_hash):
                return False
            self._put_status(shard, {"status": "failed", "run_hash": run_hash, "error": error, **extra})
            return True

    def shard_states(self, record: dict[str, Any] | None = None, dead_letters: Mapping[str, str] | None = None
                     ) -> Iterator[tuple[Shard, str, dict[str, Any] | None]]:
        """Each planned shard with its state for the run's hash — "done" (`is_done`), "failed" (given up on) or
        "pending" — and its status record: the one walk `summary` and `pending_keys` share. `record`: the run
        record already loaded. `dead_letters`: shard key -> reason, for shards a fleet worker dead-lettered without
        writing their status (it could not read or trust run.json; `sigma.service.fleet.queue_status`): such a
        shard, neither done nor failed, is "failed" with that reason, not "pending" for ever."""
        record = self.load() if record is None else record
        dead_letters = dead_letters or {}
        run_hash = record["run_hash"]
        for item in record["shards"]:
            shard = Shard.from_dict(item)
            st = self.status(shard)
            if self.is_done(shard, run_hash):
                yield shard, "done", st
            elif st and st.get("status") == "failed" and st.get("run_hash") == run_hash:
                yield shard, "failed", st
            elif shard.key in dead_letters:
                yield shard, "failed", {"status": "failed", "run_hash": run_hash, "error": dead_letters[shard.key],
                                        "dead_letter": True}
            else:
                yield shard, "pending", st

    def summary(self, failed_limit: int | None = FAILED_SHOWN, record: dict[str, Any] | None = None,
                dead_letters: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Shard counts, pair counts and error codes of the run, with the first `failed_limit` failed shards (None:
        all) and each one's message cut (`cut_long_values`: long values, then MAX_MESSAGE). `record`: the run
        record already loaded (and checked: `sigma.batch.record.verified_record`), not read again. `dead_letters`:
        as `shard_states`'."""
        record = self.load() if record is None else record
        counts = {"done": 0, "failed": 0, "pending": 0}
        pairs = ok = errors = 0
        codes: dict[str, int] = {}
        failed: list[dict[str, str]] = []
        for shard, state, st in self.shard_states(record, dead_letters):
            counts[state] += 1
            if state == "done" and st is not None:
                # a status with a field missing (edited by hand, written by another version) is still done:
                # its counts are unknown, not a KeyError traceback in every command that reads the run
                pairs += _count(st.get("pairs"))
                ok += _count(st.get("ok"))
                errors += _count(st.get("errors"))
                error_codes = st.get("error_codes")
                for code, n in (error_codes.items() if isinstance(error_codes, dict) else ()):
                    codes[str(code)] = codes.get(str(code), 0) + _count(n)
            elif state == "failed" and st is not None and (failed_limit is None or len(failed) < failed_limit):
                error = cut_long_values(str(st.get("error", "")), token_limit=PATH_SHOWN)
                failed.append({"shard": shard.key, "error": error})
        return {"run_hash": record["run_hash"], "shards": len(record["shards"]), **counts, "pairs": pairs, "ok": ok,
                "errors": errors, "error_codes": dict(sorted(codes.items())), "failed_shards": failed,
                "failed_shards_omitted": counts["failed"] - len(failed), "planned_pairs": record.get("planned_pairs")}

    def pending_keys(self, record: dict[str, Any] | None = None) -> tuple[str, list[str]] | None:
        """(run hash, the keys of the shards neither done nor failed); None when the folder holds no run. `record`:
        the run record already loaded (and checked), not read again: run.json may be tens of MB."""
        if record is None:
            if not self.exists():
                return None
            record = self.load()
        return record["run_hash"], [shard.key for shard, state, _ in self.shard_states(record) if state == "pending"]

    def done_outputs(self, record: dict[str, Any] | None = None) -> list[tuple[Shard, Path]]:
        """The finished shards with their files; `record`: the run record already loaded, not read again."""
        record = self.load() if record is None else record
        run_hash = record["run_hash"]
        shards = [Shard.from_dict(s) for s in record["shards"]]
        return [(s, self.shard_path(s, run_hash)) for s in shards if self.is_done(s, run_hash)]
