"""The temporary files our writers leave beside their outputs, and the sets of files replaced together.

Every atomic write goes through a temporary file of its own (`temp_name`: `.NAME.PID.RANDOM.tmp`) renamed over the
target. A writer killed (SIGKILL, OOM, power) between the two leaves that file behind, and nothing removed it: an
output folder written after crashes filled with hidden junk. A writer that owns a folder (`sweep_stale_temps`, from
`sigma.folderlock.hold_folder` and from `replace_together`) now removes such files when it next starts there — only
names of that exact form, only when their pid is no live process on this host (a file of ours in progress, or of
another live writer, is never touched; a user's `notes.tmp` never matches). A pid of another machine (shared storage)
or another pid namespace cannot be checked from here: the sweeps run where one writer owns the folder (an exclusive
hold, or the files of its own set), not where fleet workers share it. The subfolders such an owner writes into (a
batch run's `status/` and the `masks/KEY/` of its unfinished shards) are swept by name (`sweep_stale_below`): a kill
there left junk the sweep of the folder itself never saw; no tree is walked, no link followed.

`replace_together` puts down files that only mean something together (metrics.json and its config.yaml) so that a
kill at any point leaves either the whole old set or the whole new one: the new set is staged completely (temporary
files, then a journal naming them, `.LAST.PID.RANDOM.pending`, the commit point; each synced to disk before the
journal's rename, so a power cut is no worse than a kill), then moved into place. Killed before
the journal, the old set stands and the staged files are swept later; killed after it, the next writer of the folder
(or a reader calling `finish_replacements`) completes the moves from the journal. Before, the old last file was
removed first and a kill before the new one's rename lost the old result with nothing to finish it from. The moves
of a set hold an flock on its folder: two live writers of one set (two `save_model`s into one folder) commit one
after the other, never interleaved. A caller may bound the waits for it (`timeout_s`, `flock_within`): a holder
stopped or hung mid-commit keeps its flock (the kernel drops it when the holder dies, not when it stops), and
`FolderBusy` then says who holds it instead of a wait for ever.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import BinaryIO, TextIO

# `.NAME.PID.RANDOM.tmp` as temp_name writes it: pid in 1..PID_MAX, 8 hex digits
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>[1-9][0-9]{0,9})\.[0-9a-f]{8}\.tmp")
_JOURNAL = re.compile(r"\.(?P<name>.+)\.(?P<pid>[1-9][0-9]{0,9})\.[0-9a-f]{8}\.pending")
# Linux's largest pid (/proc/sys/kernel/pid_max at most 2^22): a larger number in a name is no pid of ours
PID_MAX = 1 << 22
# `NAME.tmp`, the shared temporary name older writers used (no pid to ask): removed only for a name of the caller's own
# set, and only once this old — no writer takes a day between writing a file and renaming it
LEGACY_AGE_S = 24 * 3600.0

# a journal names a handful of files: a larger `.pending` file is none of ours and is not read
MAX_JOURNAL_BYTES = 64 * 1024

# journals this process is committing now (another thread's, in a server): not finished under it by a sweep
_COMMITTING: set[str] = set()
_COMMITTING_LOCK = threading.Lock()


def temp_name(path: Path) -> Path:
    """A temp file beside `path` that no other writer (process, thread, host) picks: pid + random."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process on this host (True for one we may not signal: someone else's, alive)."""
    if not 0 < pid <= PID_MAX:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True          # cannot tell: kept
    return True


def _stale(name: str, names: set[str] | None, suffixes: tuple[str, ...] | None = None) -> bool:
    """A `temp_name` file (of one of `names`, when given; of a target ending in one of `suffixes`, when given) whose
    writer is no live process on this host."""
    found = _TEMP.fullmatch(name)
    if found is None:
        return False
    # the temporary file of a journal (`..LAST.PID.RANDOM.pending.PID.RANDOM.tmp`) is one of LAST's set too
    journal = _JOURNAL.fullmatch(found["name"])
    target = journal["name"] if journal is not None else found["name"]
    if names is not None and target not in names:
        return False
    if suffixes is not None and (journal is not None or not target.endswith(suffixes)):
        return False
    pid = int(found["pid"])
    return 0 < pid <= PID_MAX and not pid_alive(pid)


def sweep_stale_temps(folder: Path, names: set[str] | None = None, timeout_s: float | None = None,
                      held: bool = False) -> list[Path]:
    """Remove the temporary files of writers that died in `folder` (not below it): `temp_name`'s files whose pid
    is no live process here (`names`: only those of these targets), and `NAME.tmp` for NAME in `names` older than
    LEGACY_AGE_S. A staged set a journal names is finished first (`finish_replacements`), never swept from under it.
    Returns what was removed; a file that cannot be removed is left (the write that follows says what is wrong).
    `timeout_s`: the bound of `finish_replacements`' waits (`FolderBusy`, nothing removed); `held`: the caller
    holds the folder's own flock exclusively already (`finish_replacements`)."""
    finish_replacements(folder, timeout_s=timeout_s, held=held)
    return [folder / name for name in _sweep_in(folder, names)]


def _sweep_in(where: Path | int, names: set[str] | None, suffixes: tuple[str, ...] | None = None,
              legacy: bool = True) -> list[str]:
    """The one pass every sweep makes over a folder (a path, or a descriptor opened link-free by `_open_below`): its
    plain files (never a link) that are `temp_name`'s of a dead writer (`names`, `suffixes`: only of those targets,
    of targets ending so), or with `names` and `legacy` a legacy `NAME.tmp` older than LEGACY_AGE_S, removed; nothing
    below it. Returns the names removed; one that cannot be removed is left."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(where))
    except OSError:
        return removed
    dir_fd = where if isinstance(where, int) else None
    now = time.time()
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            stale = _stale(entry.name, names, suffixes)
            if not stale and legacy and names is not None and entry.name.endswith(".tmp") \
                    and entry.name[:-4] in names:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > LEGACY_AGE_S
            if stale:
                os.unlink(entry.name if dir_fd is not None else entry.path, dir_fd=dir_fd)
                removed.append(entry.name)
        except OSError:
            continue
    return removed


def sweep_dead_writers_of(folder: Path, suffixes: tuple[str, ...] | None = None,
                          names: set[str] | None = None) -> list[Path]:
    """For a folder of the user's that other processes may write into at the same time (`sigma export coco --images
    DIR`, which one export holds but the user's own tools may share, or the folder of `--out FILE.json`): only
    `temp_name`'s files of targets ending in `suffixes` (`.png`), or named one of `names` (`FILE.json`), whose pid is
    no live process here are removed. A live
    writer's file is never touched — nor a journal finished, nor a legacy `NAME.tmp` of unknown writer removed, as
    `sweep_stale_temps` does where one writer owns the folder. Before, an export killed mid-write left its hidden
    temporary image (or FILE.json) there for good: nothing swept that folder. Returns what was removed."""
    return [folder / name for name in _sweep_in(folder, names, suffixes, legacy=False)]


def sweep_stale_below(root: Path, subfolders: Iterable[str]) -> list[Path]:
    """`sweep_stale_temps`' rule in the named `subfolders` of `root` (`status`, `masks/KEY`): a writer that owns
    `root` writes there too (a batch run's status files and PNG masks), and a kill there left hidden junk that
    the sweep of `root` never saw — a corpus-scale run folder gathered it with every crash or OOM kill. Bounded:
    only the folders named (those the caller itself writes), never a walk below them; each opened without
    following a symbolic link (a link or a non-folder at any level: that name is skipped, nothing removed through
    it). Only `temp_name`'s form whose pid is no live process here goes; a `.pending` journal is not finished
    here (`replace_together` writes none in such folders). Returns what was removed."""
    removed: list[Path] = []
    for rel in subfolders:
        fd = _open_below(root, rel)
        if fd is None:
            continue
        try:
            removed += [root / rel / name for name in _sweep_in(fd, None)]
        finally:
            os.close(fd)
    return removed


def _open_below(root: Path, rel: str) -> int | None:
    """A descriptor of the folder `root/rel`, each component opened O_NOFOLLOW from its parent's descriptor (a
    component swapped for a link between a check and the open cannot redirect the sweep); None when any is a
    link, no folder, missing, or `rel` is not a plain relative path."""
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    for part in parts:
        try:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = inner
    return fd


def _journals(folder: Path, last: str | None = None) -> list[tuple[Path, int]]:
    """The set journals in `folder` (`last`: only those of sets ending with that file), with their writers' pids,
    in name order; none where the folder cannot be read."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".pending"))
    except OSError:
        return []
    found = [(folder / name, m) for name in names if (m := _JOURNAL.fullmatch(name)) is not None]
    return [(journal, int(m["pid"])) for journal, m in found if last is None or m["name"] == last]


def has_staged_set(folder: Path, last: str) -> bool:
    """Whether `folder` holds a journal of a set ending with `last`: a set a writer staged whole (killed before its
    moves, or still moving it), which `finish_replacements` puts in place. What `last` may be missing for."""
    return bool(_journals(folder, last))


def staged_set_writers(folder: Path, last: str) -> list[int]:
    """The pids of the live writers (this process included) whose staged sets ending with `last` lie in `folder`:
    savers mid-commit, whose `last` is missing until their last rename, not a set that is gone. A dead writer's
    journal is not listed (`finish_replacements` completes it)."""
    return [pid for _, pid in _journals(folder, last) if pid_alive(pid)]


def finish_replacements(folder: Path, last: str | None = None, timeout_s: float | None = None,
                        held: bool = False) -> list[Path]:
    """Complete the set replacements in `folder` (`last`: only those ending with that file) whose writer died after
    staging the whole set (its journal written): the staged files are moved into place, the last one last, the
    files the set drops removed. Any reader of such a set may call it; `replace_together` and `hold_folder` do.
    `timeout_s` bounds all its waits for the folder's commit lock together, one deadline for every journal
    (`FolderBusy` after it: the journal stays for the next one): it bounded each wait, and a folder with N journals
    could keep a caller N times as long. `held`: the caller holds that lock itself, exclusively
    (`hold_folder(marker=False)` locks an export folder itself): it is not taken again — through another descriptor
    flock waits on the caller's own hold, and taking such a folder with a killed writer's journal in it waited for
    ever (then `folder_busy` naming its own pid). Returns the journals finished."""
    done: list[Path] = []
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for journal, pid in _journals(folder, last):
        with _COMMITTING_LOCK:
            if str(journal) in _COMMITTING or (pid != os.getpid() and pid_alive(pid)):
                continue
        # never interleaved with a live writer's commit of another set here
        with nullcontext() if held else _commit_lock(folder, time_left(deadline)):
            if _finish(folder, journal):
                done.append(journal)
    return done


def _finish(folder: Path, journal: Path) -> bool:
    """Complete the set `journal` names (held under `_commit_lock`); False when it is none of ours or gone."""
    try:
        if journal.is_symlink() or journal.stat().st_size > MAX_JOURNAL_BYTES:
            return False             # not one we wrote: never followed, never read whole
        plan = json.loads(journal.read_bytes())
        moves = [(folder / tmp, folder / target) for tmp, target in plan["files"]]
        removes = [folder / target for target in plan["remove"]]
    except (OSError, ValueError, KeyError, TypeError):
        return False                 # not a journal of ours (or another finisher's, done): left as it is
    if not all(_inside(folder, p) for pair in moves for p in pair) or not all(_inside(folder, p) for p in removes):
        return False
    _move_into_place(moves, removes, folder)
    journal.unlink(missing_ok=True)
    return True


@contextmanager
def _commit_lock(folder: Path, timeout_s: float | None = None) -> Iterator[None]:
    """An exclusive flock on `folder` itself (no lock file: a saved model's folder holds its two files alone) for
    the moves of one set. Two live writers of one set (two `save_model`s into one folder) each staged whole but
    moved into place interleaved — one's weights renamed, the other's whole set, then the first's config — and the
    folder held one saver's weights beside the other's config. Committed one at a time, the last commit's whole set
    stands. Best effort: where a folder cannot be opened or locked (some network mounts) the moves go unlocked.
    `timeout_s` bounds the wait for another holder (`FolderBusy` after it; None: for ever)."""
    with _folder_flock(folder, fcntl.LOCK_EX, timeout_s):
        yield


@contextmanager
def reading_lock(folder: Path, timeout_s: float | None = None) -> Iterator[None]:
    """A shared flock on `folder` itself for reading a set whole (`load_model`: config.json, then the weights): a
    live writer's commit (`_commit_lock`, exclusive) waits for the readers inside, and a reader waits for a commit in
    progress — only its renames, never the staging before them. Before, a save committing between the two reads
    gave the reader one saver's config and another's weights, or a folder caught mid-commit with no config at all.
    Best effort, as `_commit_lock`: a folder that cannot be opened or locked is read unlocked. Never call
    `finish_replacements` (or anything that takes `_commit_lock` on the same folder) inside it: flock does not
    upgrade a shared hold taken through another descriptor, and the process would wait on itself for good.
    `timeout_s` bounds the wait: a saver stopped mid-commit (Ctrl-Z, SIGSTOP, a hung network write) keeps its
    exclusive hold — the kernel drops it when the holder dies, not when it stops — and every load waited for ever
    without a word; now `FolderBusy` after `timeout_s` (None: for ever)."""
    with _folder_flock(folder, fcntl.LOCK_SH, timeout_s):
        yield


class FolderBusy(TimeoutError):
    """Another process held `folder`'s flock for all of `waited_s` (stopped or hung while holding it: a live holder
    commits in a moment). `holders`: (pid, `WRITE`/`READ`) of the holds /proc/locks shows on the folder (best
    effort: empty where it cannot be read). `journal`: set by `replace_together` when its set is staged and
    committed to that journal but not moved into place (the next writer or `finish_replacements` completes it)."""

    def __init__(self, folder: Path, waited_s: float, holders: list[tuple[int, str]]):
        super().__init__(errno.ETIMEDOUT, f"held by another process for {waited_s:g} s", str(folder))
        self.folder, self.waited_s, self.holders = folder, waited_s, holders
        self.journal: Path | None = None


def flock_within(file: int | BinaryIO | TextIO, operation: int, timeout_s: float | None,
                 name: str | None = None, waiting: Callable[[], None] | None = None) -> None:
    """flock(`file`, `operation`: LOCK_EX / LOCK_SH), waiting at most `timeout_s` (None: for ever) for the holds
    in its way: TimeoutError (ETIMEDOUT, its `filename` `name`) after it. The one bounded wait of a lock
    (`sigma.folderlock.waiting_lock`, `reading_lock`, `_commit_lock`): a blocking flock cannot be given a deadline,
    so the lock is tried without blocking (LOCK_NB) until it is had or the time is up. `waiting`: called after
    each try that found the lock held (it may raise to end the wait): a wait with no time bound that still says
    it waits, and gives up on a holder that is stopped (`sigma.folderlock.watch_stopped_holder`)."""
    if timeout_s is None and waiting is None:
        fcntl.flock(file, operation)
        return
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(file, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(errno.ETIMEDOUT, f"held by another process for {timeout_s:g} s", name) from None
            if waiting is not None:
                waiting()
            time.sleep(0.02)


def time_left(deadline: float | None) -> float | None:
    """The seconds from now to `deadline` (a `time.monotonic()` instant), never below 0 (one try, no wait); None
    for None (no bound). Several waits of one operation share one deadline through it, so their bound is the
    operation's, not each wait's."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def lock_holders(fd: int) -> list[tuple[int, str]]:
    """(pid, `WRITE` or `READ`) of each flock held on the file open at `fd`, as Linux's /proc/locks lists them
    (the pid that took it), for a message that says whom to resume or end. Best effort: [] where /proc/locks
    cannot be read or names none (another system, another pid namespace, a network file system)."""
    try:
        st = os.fstat(fd)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found: list[tuple[int, str]] = []
    for line in lines:
        parts = line.split()
        # `N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END`; a waiter's line has `->` after `N:`
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == where and parts[4].isdigit():
            entry = (int(parts[4]), parts[3])
            if entry not in found:
                found.append(entry)
    return found


@contextmanager
def _folder_flock(folder: Path, operation: int, timeout_s: float | None = None) -> Iterator[None]:
    """An flock (`operation`: LOCK_EX / LOCK_SH) on `folder` itself, best effort: a folder that cannot be opened or
    locked is held unlocked. The lock goes with the descriptor (and with a process killed holding it). Another
    holder that keeps it for all of `timeout_s` (None: waited for for ever) is `FolderBusy`."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        try:
            flock_within(fd, operation, timeout_s)
        except TimeoutError:
            raise FolderBusy(folder, timeout_s or 0.0, lock_holders(fd)) from None
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def _inside(folder: Path, path: Path) -> bool:
    """Whether `path` (from a journal) names a file in `folder` or in a folder below it (`data/x.parquet` of an
    export's set, whose last file is `folder/README.md`): plain names only, no `..`, and no folder on the way that
    is a symbolic link (a journal is never followed out of its folder)."""
    try:
        parts = path.relative_to(folder).parts
    except ValueError:
        return False
    if not parts or any(part in ("", ".", "..") for part in parts):
        return False
    return not any((folder.joinpath(*parts[:depth])).is_symlink() for depth in range(1, len(parts)))


def _relative(path: Path, folder: Path) -> str:
    """`path` as a journal names it: relative to the set's folder, `/`-separated (`NAME`, `data/NAME`)."""
    return path.relative_to(folder).as_posix()


def _subfolders(folder: Path, paths: Iterable[Path]) -> list[Path]:
    """The folders below `folder` that files of a set lie in (none for a set of one folder), in a stable order."""
    return sorted({path.parent for path in paths if path.parent != folder})


def _move_into_place(moves: list[tuple[Path, Path]], removes: list[Path], folder: Path) -> None:
    """The commit: the old last file and the files the set drops removed, then each staged file renamed over its
    target, the last one last. Idempotent: a staged file already moved is skipped, so a commit interrupted at any
    point is finished by running it again. A set with files below `folder` (`sigma export hf`: `data/*.parquet`,
    then the card `README.md`) syncs those folders before the last file's rename: the last file says the set is
    complete, and its rename in `folder` is no promise about the renames in another folder."""
    if moves and moves[-1][0].exists():
        moves[-1][1].unlink(missing_ok=True)
    for path in removes:
        path.unlink(missing_ok=True)
    for at, (tmp, path) in enumerate(moves):
        if at == len(moves) - 1:
            for sub in _subfolders(folder, [target for _, target in moves] + removes):
                sync_folder(sub)
        if tmp.exists():
            try:
                os.replace(tmp, path)
            except OSError as exc:   # said of `path` (the error's filename2), not of the staged `.NAME.PID.RANDOM.tmp`
                said = said_of_target(exc, tmp, path, True)
                if said is exc:
                    raise
                raise said from exc


def write_synced(path: Path, data: bytes) -> None:
    """`data` in a new file at `path`, flushed and fsynced: the one synced write (`replace_atomically(durable=True)`
    too). On disk before a journal names it: without the fsync a power cut after the journal's rename could leave a
    journal on disk naming staged files the page cache had not written yet (empty or cut short), and the next
    writer would faithfully move those into place over the old set — the kill-safety undone by a power loss."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_synced_by(path: Path, write: Callable[[Path], None]) -> None:
    """The file `write(path)` puts at `path` (a library that streams to a path: safetensors' weights, torch.save's
    checkpoint; as bytes they would be one more copy of every tensor in memory), then fsynced: `write_synced` for
    writers that take a path, so the bytes are on disk before a rename or a journal publishes them."""
    write(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_staged(path: Path, data: bytes | Callable[[Path], None]) -> None:
    """A staged file of a set, on disk before the journal names it: `data` itself, or written by `data(path)` (a
    model's weights, streamed: `write_synced_by`), then fsynced."""
    if isinstance(data, bytes):
        write_synced(path, data)
    else:
        write_synced_by(path, data)


def replace_atomically(path: Path, data: bytes | Callable[[Path], None], durable: bool = False) -> Path:
    """Write a temporary file beside `path`, then rename it over `path`; a write or rename that fails (a full disk)
    takes the temporary file with it instead of leaving it to hold the space. The one writer of write_png,
    write_json, the batch layer's atomic_write_bytes and the artefact cache's manifests (`durable`: fsync before
    the rename, for run records, exports and cache manifests). The temporary name is this writer's own
    (`temp_name`): with one shared `<path>.tmp`, two writers of one file — two fleet workers on one shard's masks —
    truncated each other's file and one rename found it gone (FileNotFoundError: the shard failed), and a writer
    killed then left the other's mask cut short. Killed between the write and the rename, it leaves a name the
    sweeps know (`sweep_stale_temps`). `data` may be a writer of the file at the path it is given (a COCO export
    streamed from its shards: as bytes the whole JSON was in memory at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        if durable:
            _write_staged(tmp, data)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        said = said_of_target(exc, tmp, path, isinstance(data, bytes))
        if said is exc:
            raise
        raise said from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# what a write refuses for the room it has (a full disk, a quota, RLIMIT_FSIZE): said of the file being written
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def said_of_target(exc: OSError, tmp: Path, path: Path, ours: bool) -> OSError:
    """The failure of a write to `tmp`, staged for `path`, said of `path`, the name the user gave and knows: the
    temporary `.NAME.PID.RANDOM.tmp` (gone once the write failed) was named (`os_error: ...: DIR/.p.jsonl.1234.x.tmp`),
    or no file at all (`os_error: File too large`, the write of a full disk or past RLIMIT_FSIZE carries none).
    An error naming another file (one a writer `data` reads) is kept as it is; one naming none is the target's when
    the bytes are ours (`ours`) or it is a write's lack of room."""
    named = exc.filename is not None and os.fsdecode(exc.filename) == str(tmp)
    if not named and not (exc.filename is None and (ours or exc.errno in _NO_ROOM)):
        return exc
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


_ARROW_ERRNO = re.compile(r"\[errno (\d+)\]")


def room_refused(exc: BaseException) -> int | None:
    """The errno of a write refused for the room it has (`_NO_ROOM`: a full disk, a quota, RLIMIT_FSIZE), or None.
    pyarrow's OSError carries no errno, only its words (`Error writing bytes to file. Detail: [errno 28] No space
    left on device`): read from them."""
    if not isinstance(exc, OSError):
        return None
    code = exc.errno
    if code is None:
        found = _ARROW_ERRNO.search(str(exc))
        code = int(found.group(1)) if found else None
    return code if code in _NO_ROOM else None


@contextmanager
def no_room_said_of(path: Path | str) -> Iterator[None]:
    """A write refused for room inside (a full disk, a quota) that names no file, said of `path`, the output the
    user named: a close or a flush on a full disk (`/dev/full`, a full tmpfs) carries no file name, nor does
    pyarrow's error, and `sigma eval --out`, `sigma report --out` and the exports ended `os_error: No space left on
    device` with no word of where. An error that names its file is kept as it is."""
    try:
        yield
    except OSError as exc:
        code = room_refused(exc)
        if code is None or exc.filename is not None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from exc


def sync_folder(folder: Path) -> None:
    """A rename in `folder` on disk too (its directory entry): the journal's here, a batch shard's before its status
    (`rename_durably`). Best effort: a file system that cannot sync a folder (some network mounts) refuses, and what
    relies on it is still kill-safe there."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_folders_durably(folder: Path) -> list[Path]:
    """`mkdir -p folder`, each folder made here on disk by name too: the parent of every one created is fsynced
    (`sync_folder`), so a power cut after a command said its files were written cannot take the folder that holds
    them (`sigma synth --out NEW`, `export coco --images NEW`, a batch run's `shards/`). Before, only the files were
    synced, and the new folder's own entry in its parent could still be lost. An existing folder: nothing done, no
    sync. Returns the folders created, outermost first; errors are mkdir's (`FileExistsError` for a non-folder)."""
    folder = Path(folder)
    missing: list[Path] = []
    up = folder
    while not os.path.lexists(up) and up.parent != up:
        missing.append(up)
        up = up.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:
            if not path.is_dir():
                raise                # made by another writer in between: synced here too, it may not sync it
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)    # a dangling link on the way: mkdir -p's own error
            raise
        sync_folder(path.parent)
    if not missing and not folder.is_dir():
        folder.mkdir()               # mkdir -p's own error: FileExistsError (a file, a dangling link)
    return created


def rename_durably(handle: BinaryIO, tmp: Path, target: Path) -> None:
    """Publish the temporary file `tmp`, written through the open `handle`, at `target` so that it is on disk —
    its bytes (fsync of the file), then its name (the rename, then fsync of the folder) — before the caller writes
    anything that refers to it. A batch shard's parquet was renamed with its bytes only flushed to the page cache
    while the status file saying "done" that followed was written durably: a power cut could leave the status on
    disk beside a shard cut short or missing (caught only by the size and digest checks). The handle stays open
    (a lock held on it lasts until the caller closes it)."""
    handle.flush()
    os.fsync(handle.fileno())
    os.replace(tmp, target)
    sync_folder(target.parent)


def replace_together(files: list[tuple[Path, bytes | Callable[[Path], None]]],
                     remove: list[Path] | None = None, timeout_s: float | None = None,
                     held: bool = False) -> list[Path]:
    """Files that only mean something together (metrics.json and the config.yaml it was made with), written so that
    a kill or a failed write at any point never leaves one run's file beside another run's, and never loses the old
    set without the new one to finish: the last file is the one that says the set is complete. Every file is
    written to a temporary name first (a full disk fails here, with the old set intact), then a journal naming
    them (the commit point); then the old last file is removed, the others renamed into place, the last one last,
    and the journal removed. Killed or failed after the journal, the folder holds the old set's others beside the
    new ones without a last file until the next writer, or `finish_replacements`, completes the set from the
    journal. The set's folder is the last file's: the journal lies there, and its flock is the commit lock; the
    other files lie in it or in folders below it (`sigma export hf`: `data/*.parquet`, then `README.md`, the card
    that says what the shards hold — the card was renamed after the shards' set, and a kill between left new shards
    beside the earlier export's card). Such subfolders exist before the call, and are fsynced before the journal
    (the staged files' names there) and before the last file's rename (the other files' moves). `held`: the caller
    holds the folder's flock itself, exclusively (`hold_folder(marker=False)`: an export folder), so the commit
    lock is not taken again (a wait on ourselves). `remove`: files of the old set the new one does not have. A
    file's data is bytes, or a function that writes the file at the path it is given (`save_model`'s weights,
    streamed). The moves are made under an flock on the folder (`_commit_lock`): two live writers of one set commit
    one after the other, never interleaved, and the last one's whole set stands. `timeout_s` bounds the waits for
    that lock, all of them together (None: for ever; a holder stopped or hung mid-commit kept the writer waiting
    without a word): finishing
    a killed writer's sets first and the commit share it — each had all of it, and a save that finished a set late
    in its wait, then met another holder at its commit, waited twice the bound. The staging between is no wait and
    does not spend it (a large model's weights on a slow disk would leave the commit a single try). `FolderBusy`
    after it, its `waited_s` the part of the bound left to that wait — before staging (a killed writer's set to
    finish first), nothing written; at the commit, the set stays staged with its journal (`FolderBusy.journal`),
    and the next writer of the folder or `finish_replacements` moves it into place, as after a kill there."""
    if not files:
        return []
    folder = files[-1][0].parent
    remove = list(remove or [])
    paths = [path for path, _ in files] + remove
    if not all(_inside(folder, path) for path in paths):
        raise ValueError("replace_together: every file of a set lies in its last file's folder, or below it")
    subfolders = _subfolders(folder, paths)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    # a killed writer's staged set is finished, its junk goes (in each folder of the set: its own names there)
    sweep_stale_temps(folder, {path.name for path in paths if path.parent == folder}, time_left(deadline), held)
    for sub in subfolders:
        _sweep_in(sub, {path.name for path in paths if path.parent == sub})
    wait_left = time_left(deadline)     # the rest of the bound, for the commit: the staging between is no wait
    written: list[tuple[Path, Path]] = []
    journal = temp_name(files[-1][0]).with_suffix(".pending")     # .LAST.PID.RANDOM.pending
    with _COMMITTING_LOCK:
        _COMMITTING.add(str(journal))
    committed = False
    try:
        for path, data in files:
            tmp = temp_name(path)
            written.append((tmp, path))
            try:
                _write_staged(tmp, data)
            except OSError as exc:       # a full disk: said of the file being written, not of none or the tmp
                said = said_of_target(exc, tmp, path, isinstance(data, bytes))
                if said is exc:
                    raise
                raise said from exc
        plan = {"files": [[_relative(tmp, folder), _relative(path, folder)] for tmp, path in written],
                "remove": [_relative(p, folder) for p in remove]}
        for sub in subfolders:       # the staged files' names on disk before the journal names them
            sync_folder(sub)
        staged = temp_name(journal)
        try:
            write_synced(staged, json.dumps(plan).encode())
            os.replace(staged, journal)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        committed = True
        sync_folder(folder)
        with nullcontext() if held else _commit_lock(folder, wait_left):
            _move_into_place(written, remove, folder)
            journal.unlink(missing_ok=True)
    except FolderBusy as exc:
        exc.journal = journal        # committed, not moved: left for the next writer (or a reader) to finish
        raise
    except BaseException:
        if not committed:            # the old set stands: the staged files go
            for tmp, _ in written:
                tmp.unlink(missing_ok=True)
        raise                        # committed: the journal and what it names stay for the next writer to finish
    finally:
        with _COMMITTING_LOCK:
            _COMMITTING.discard(str(journal))
    return [path for path, _ in files]
