"""An output folder held by one process at a time: two runs writing into one folder would interleave their
files (checkpoints, manifests) and lose work, so the second is refused at once and told who holds it.

A kernel advisory lock (flock) on `FOLDER/.lock`: the kernel drops it when the holder dies, however it dies,
so a killed run never leaves its folder locked. An exclusive holder writes its pid and host name into the file
for the message (`PID HOST`: on shared storage the holder may be another machine's process, and a pid alone sent
the user looking for it on their own; a lock file of an older sigma holds the pid only, and is read as such);
shared holders (fleet workers writing shards of one batch run) leave it empty. An export folder, which is
published as it is, is locked through the folder itself instead (no file, no pid). A folder the
hold made and nothing was written into is removed again, so a run refused or failed at once leaves no trace. An
exclusive holder sweeps the temporary files of dead writers from the folder itself (`sigma.tempfiles`); the
subfolders it writes into are swept by that writer, by name (a batch run: `RunDir.sweep_dead_writers`).
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sigma.errors import FolderBusyError, InputError
from sigma.tempfiles import FolderBusy, flock_within, lock_holders, make_folders_durably, sweep_stale_temps
from sigma.text import MAX_DURATION_S, positive_int_env

LOCK_FILE = ".lock"
# what a holder's line may be: `PID HOST` (HOST as `socket.gethostname()` gives it), or `PID` (an older sigma)
_HOLDER = re.compile(r"(\d{1,10})(?:[ \t]+([A-Za-z0-9][A-Za-z0-9._-]{0,252}))?")
# bytes of the lock file read for the message: a pid and the longest host name, with room to spare
_HOLDER_BYTES = 320
# how long a writer of an output folder waits for another process's hold on the folder's commit lock (seconds)
ENV_FOLDER_LOCK_WAIT = "SIGMA_FOLDER_LOCK_WAIT_S"
DEFAULT_FOLDER_LOCK_WAIT_S = 120
# what a lock wait set in the environment may be, as a refusal says it (`folder_lock_wait_s`, and
# `$SIGMA_MODEL_LOCK_WAIT_S`: sigma.models.factory.lock_wait_s)
WAIT_RULE = f"a whole number of seconds from 1 to {MAX_DURATION_S} (30 days, MAX_DURATION_S)"


def holder_line() -> str:
    """What an exclusive holder writes into the lock file: its pid and the host it runs on."""
    return f"{os.getpid()} {socket.gethostname()}\n"


def described_holder(text: str) -> str:
    """The holder as a message names it: `pid N on host H`, `pid N` for a lock file of an older sigma (pid only).
    Anything else (a file written by hand or by another tool) is quoted, cut, its control characters escaped."""
    text = text.strip()
    found = _HOLDER.fullmatch(text)
    if found is None:
        shown = ascii(text[:120])
        return f"the lock file says {shown}{'…' if len(text) > 120 else ''}"
    pid, host = found.groups()
    return f"pid {pid} on host {host}" if host else f"pid {pid}"


# a holder as `described_holder` names it (a message cut short may end inside it)
_DESCRIBED = re.compile(r"pid \d{1,10}(?: on host [A-Za-z0-9][A-Za-z0-9._-]{0,252})?"
                        r"|the lock file says (?:'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?)…?")


# the pids a `weights_busy` message tells its reader to resume (`kill -CONT 123 456`, sigma.models.factory)
_RESUME = re.compile(r"(kill -CONT )\d{1,10}(?: \d{1,10})*")
# `busy_message`'s remedy (and `sigma.models.factory._refuse_mid_commit`'s, "or let it finish": a live saver found
# mid-commit), for a shell user on the server: how to resume or end the holder, and the variable that
# sets the wait (an environment variable, or the API's `api.lock_wait_s`: `busy_message`'s `setting`; a message cut
# short inside it keeps what is left, its pids `PID` by `_RESUME`)
_REMEDY = re.compile(r"resume it \(`fg`, `kill -CONT[^`]*`\) or (?:end it|let it finish), then try again"
                     r"(?: \((?:\$[A-Z0-9_]+|[a-z][a-z0-9_.]*) sets the wait, now [0-9.e+-]+ s\))?")
# what an API caller is told instead: the holder is the server's to resume or end
REMOTE_REMEDY = "try again later"


def anonymised(message: str) -> str:
    """`message` with each holder `described_holder` names said as `another process` (how long it has held the
    folder, when said, kept): for a caller who may learn that a run folder is held, not by which process on which
    machine — the API's answers (a local operator's CLI names them): host names are the server's internal layout.
    So are the pids a `weights_busy` message names (a fleet task deferred, or dead-lettered, on a model folder a
    stopped saver holds: `pid N (saving)`, `kill -CONT N`), which a run's status showed whole. And `busy_message`'s
    remedy, ``resume it (`fg`, `kill -CONT PID`) or end it, then try again ($SIGMA_..._WAIT_S sets the wait, now
    N s)``, is said `REMOTE_REMEDY`: advice for a shell on the server, which an HTTP caller can neither follow nor
    needs (the shell job, the holder's pid, the server's environment variable); it was answered with `PID` for the
    pid, still telling the caller to `fg` a process on a machine it has no shell on."""
    return _RESUME.sub(r"\1PID", _DESCRIBED.sub("another process", _REMEDY.sub(REMOTE_REMEDY, message)))


def folder_lock_wait_s() -> int:
    """How long a writer of an output folder waits for another process's hold on the folder's commit lock
    (`$SIGMA_FOLDER_LOCK_WAIT_S`, default 120 s): `sigma eval`'s metrics.json and config.yaml, `sigma annotate`'s
    result folders (`sigma.tempfiles.replace_together`), and the sweep of a folder a run or export takes
    (`hold_folder`); and how long `sigma train` waits on a writer of its shared validation set that is STOPPED
    (`watch_stopped_holder`: a running one is waited for). A live writer holds it a moment; one stopped (Ctrl-Z,
    SIGSTOP) or hung (a stuck network write) mid-commit kept the command waiting for ever without a word. Its own
    variable, not `$SIGMA_MODEL_LOCK_WAIT_S`: the lock is the same kind, but that one is documented (and tuned: a
    worker loads again after it) for saved models' folders, and a deployment shortening its model loads' wait should
    not make an eval give up its results sooner."""
    return positive_int_env(ENV_FOLDER_LOCK_WAIT, DEFAULT_FOLDER_LOCK_WAIT_S, "how long a writer of an output folder "
                            f"waits for another process's hold on it: {WAIT_RULE}", most=MAX_DURATION_S,
                            says_most=True)


def unrecorded_holder(fd: int) -> str:
    """Who holds the lock open at `fd` without having written a `holder_line()` into it, as far as Linux's
    /proc/locks knows (`lock_holders`): `another process holds this folder (pid N)`, `other processes share this
    folder (pid N, pid M)` (fleet workers of a batch run share its folder), or, unknown, `another process holds this
    folder`. An empty lock file was said to be held by "fleet workers (sigma worker --batch)" whoever held it: a run
    folder held by a plain `flock RUN/.lock ...` of another tool sent a `sigma train` user looking for fleet workers,
    which never touch a training run."""
    holders = lock_holders(fd)
    if not holders:          # /proc/locks unread, or it names none (another pid namespace, a network file system)
        return "another process holds this folder"
    names = ", ".join(f"pid {pid}" for pid, _ in holders)
    if all(mode == "READ" for _, mode in holders):
        return f"{'other processes share' if len(holders) > 1 else 'another process shares'} this folder ({names})"
    return f"another process holds this folder ({names})"


def busy_message(exc: FolderBusy, action: str, env: str, wait_s: float,
                 roles: tuple[str, str] = ("writing", "reading"), midway: str = "mid-write", left: str = "",
                 held: str | None = None, setting: str | None = None) -> str:
    """One line for a person and a log about a folder another process held for all of a bounded wait
    (`FolderBusy`): the folder, the wait, the holders (pid and `roles`: what a WRITE / READ hold is doing, best
    effort from /proc/locks), the remedy (resume or end it) and `env`, the variable that sets the wait (`setting`:
    what set it instead, the API's `api.lock_wait_s`: an API caller was told of a variable that was not its wait).
    The one message of `weights_busy` (sigma.models.factory) and `folder_busy` (`busy_as_error`). `held`: how long,
    said by the caller; default `held_for(exc, wait_s)`."""
    who = ", ".join(f"pid {pid} ({roles[0] if mode == 'WRITE' else roles[1]})" for pid, mode in exc.holders)
    pids = " ".join(str(pid) for pid, _ in exc.holders) or "PID"
    held = held or held_for(exc, wait_s)
    return (f"{exc.folder}: cannot {action} this folder: {who or 'another process'} held it {held} — stopped "
            f"(Ctrl-Z, SIGSTOP) or hung {midway}; "
            f"resume it (`fg`, `kill -CONT {pids}`) or end it, then try again ({setting or '$' + env} sets the wait, "
            f"now {said_wait(wait_s)} s){left}")


def said_wait(wait_s: float) -> str:
    """A wait as someone set it (`api.lock_wait_s` 0.25 or 1.5, `$SIGMA_FOLDER_LOCK_WAIT_S` 2592000), said whole:
    `:g` said 30 days as `2.592e+06` and cut a setting to 6 digits."""
    return format(wait_s, ".15g")


def said_held(held_s: float) -> str:
    """A time measured (how long a holder kept a folder): a tenth of a second from 1 s up, two digits below it —
    `.1f` said the last 0.04 s of a wait as `0.0 s`, and rounding to a tenth said all of a 0.25 s wait `0.3 s`."""
    return format(round(held_s, 1), ".15g") if held_s >= 1 else format(held_s, ".2g")


def held_for(exc: FolderBusy, wait_s: float, what: str = "the") -> str:
    """How long the holder kept the folder, as the message says it: `for all of N s` when the wait refused had the
    whole bound `wait_s`; `for the last X s of WHAT N s wait` when it was the rest of an operation's one deadline (a
    load's finish and its read, a save's finish of killed sets and its commit, several journals of one sweep).
    Before, the rest was said as the whole: `for all of 1.3 s` after a wait of 4 s in all (or, rounded, all of a
    bound the operation had spent part of elsewhere). `what`: whose wait (`this save's`). A wait under a second (the
    API's `api.lock_wait_s`, e.g. 0.25) was said rounded to a tenth: `for all of 0.3 s` of a 0.25 s wait, and `for the
    last 0.0 s of the 0.04 s wait` for all of it; now `for all of 0.25 s`, `for all of 0.04 s` (`said_held`)."""
    waited = exc.waited_s
    # the rest of a shared deadline, 1.99994 s of 2, is all of it: within what `said_held` rounds away
    if waited >= wait_s - (0.05 if wait_s >= 1 else wait_s / 100):
        return f"for all of {said_wait(wait_s) if waited <= wait_s else said_held(waited)} s"
    return f"for the last {said_held(waited)} s of {what} {said_wait(wait_s)} s wait"


@dataclass(frozen=True)
class LockWait:
    """How long a taker of an output folder waits for its commit lock (`hold_folder`'s sweep), and what a refusal
    names as setting that (`busy_message`). Default (`hold_folder(lock_wait=None)`): `folder_lock_wait_s()`, a
    command's `$SIGMA_FOLDER_LOCK_WAIT_S`. A front end that answers a request gives its own, short: POST
    /v1/batches waited the variable's 120 s before its 409 `folder_busy` (`api.lock_wait_s`)."""

    seconds: float
    setting: str


def default_lock_wait() -> LockWait:
    """`$SIGMA_FOLDER_LOCK_WAIT_S` (`folder_lock_wait_s`), said as that variable."""
    return LockWait(folder_lock_wait_s(), f"${ENV_FOLDER_LOCK_WAIT}")


@contextmanager
def busy_as_error(action: str, wait_s: float, setting: str | None = None) -> Iterator[None]:
    """An output folder's commit lock held past `wait_s` (`FolderBusy`) as `folder_busy` (FolderBusyError: one
    line and exit 2 from the CLI, never a traceback): `busy_message`, and for a set whose journal was written what
    becomes of it (the next writer of the folder, or `sigma.tempfiles.finish_replacements`, moves it into place).
    `setting`: what set `wait_s`, when not `$SIGMA_FOLDER_LOCK_WAIT_S` (`LockWait.setting`)."""
    try:
        yield
    except FolderBusy as exc:
        left = (f"; the new files are staged whole (journal {exc.journal.name}) but not in place: the next writer "
                "of the folder moves them into place" if exc.journal is not None else "")
        raise FolderBusyError(busy_message(exc, action, ENV_FOLDER_LOCK_WAIT, wait_s, left=left,
                                           setting=setting)) from None


@contextmanager
def waiting_lock(lock: Path, timeout_s: float | None = None,
                 watch: Callable[[int], Callable[[], None]] | None = None) -> Iterator[None]:
    """An exclusive flock on the file `lock` (made if missing), waited for rather than refused: for a short
    critical section others queue behind (one shard's status write, one writer of a shared validation set). The
    kernel drops it if the holder dies — not if it is stopped (SIGSTOP, Ctrl-Z) or hung while holding it:
    `timeout_s` bounds the wait (TimeoutError after it; None: for ever): `sigma.tempfiles.flock_within`, the one
    bounded wait that saved models' folder locks share. `watch(fd)`: what the wait calls while the lock is held
    by another (`watch_stopped_holder`); with it the holder writes its `holder_line()` into the file (emptied
    again when it lets go), for a waiter's message where /proc/locks names no one."""
    with open(lock, "a+") as handle:
        flock_within(handle, fcntl.LOCK_EX, timeout_s, str(lock), watch(handle.fileno()) if watch else None)
        try:
            if watch:
                os.ftruncate(handle.fileno(), 0)
                os.pwrite(handle.fileno(), holder_line().encode(), 0)
            yield
        finally:
            if watch:
                os.ftruncate(handle.fileno(), 0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def process_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped: state `T` (SIGSTOP, Ctrl-Z) or `t` (stopped by a tracer) in Linux's
    /proc/PID/stat. False where it cannot be read (gone, another system): only a stop seen is a stop."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] in ("T", "t")


# how often a waiter looks at the holder's state (seconds): /proc/locks is read whole each time
_LOOK_EVERY_S = 0.25


def watch_stopped_holder(folder: Path, what: str, say: Callable[[str], None],
                         bound_s: float) -> Callable[[int], Callable[[], None]]:
    """For `waiting_lock(watch=)`: a wait with no time bound on a writer of `what` in `folder` (a validation set
    runs started together write once) that says once, through `say`, that it waits and for whom, and is refused
    `folder_busy` when the holder has been STOPPED (`process_stopped`) continuously for longer than `bound_s`.
    Before, such a wait said nothing and never ended: the kernel drops a dead holder's flock, not a stopped one's,
    and a writer Ctrl-Z'd or SIGSTOPped while writing kept every other run of a sweep waiting for ever. A running
    holder is waited for however long it takes (a set of 192 pairs legitimately takes minutes, so a plain time
    bound would refuse honest waits); the bound is `$SIGMA_FOLDER_LOCK_WAIT_S` (`folder_lock_wait_s`), the
    variable that already bounds a stopped writer's hold on an output folder, and is counted from the first look
    that saw it stopped."""
    return partial(_StoppedHolderWatch, folder=folder, what=what, say=say, bound_s=bound_s)


class _StoppedHolderWatch:
    """`watch_stopped_holder`'s look at the holder of the lock open at `fd`, called by the wait after each try."""

    def __init__(self, fd: int, folder: Path, what: str, say: Callable[[str], None], bound_s: float):
        self.fd, self.folder, self.what, self.say, self.bound_s = fd, folder, what, say, bound_s
        self.said, self.next_look = False, 0.0
        self.stopped: int | None = None        # the holder seen stopped, since `self.since` (monotonic)
        self.since = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self.next_look:
            return
        self.next_look = now + _LOOK_EVERY_S
        pids = [pid for pid, mode in lock_holders(self.fd) if mode == "WRITE" and pid != os.getpid()]
        if not self.said:
            self.said = True
            line = os.pread(self.fd, _HOLDER_BYTES, 0).decode(errors="replace").strip()
            who = f"pid {pids[0]}" if pids else described_holder(line) if line else "another process"
            self.say(f"{self.folder}: waiting for {self.what} that {who} is writing (runs started together write "
                     f"it once; a writer stopped for over {self.bound_s:.15g} s is given up on, "
                     f"${ENV_FOLDER_LOCK_WAIT})")
        stopped = next((pid for pid in pids if process_stopped(pid)), None)
        if stopped != self.stopped:
            self.stopped, self.since = stopped, now
        if stopped is not None and now - self.since > self.bound_s:
            exc = FolderBusy(self.folder, now - self.since, [(stopped, "WRITE")])
            raise FolderBusyError(busy_message(
                exc, "read", ENV_FOLDER_LOCK_WAIT, int(self.bound_s), roles=(f"writing {self.what}", "reading"),
                held=f"stopped for {exc.waited_s:.1f} s", left="; a running writer is waited for"))


def refuse_non_folder(root: Path, hint: str = "") -> None:
    """An output folder that names an existing file: `out_not_a_folder`, from every command (annotate -o and
    eval --out said `bad_outdir` for it, batch, synth, train and the exports `out_not_a_folder`)."""
    try:
        is_file = root.exists() and not root.is_dir()
    except OSError as exc:     # a name too long to even look up
        raise InputError(f"{root}: not a usable output folder ({exc.strerror or exc})", code="bad_outdir") from exc
    if is_file:
        raise InputError(f"{root}: exists and is not a folder{hint}", code="out_not_a_folder")


def make_out_folder(root: Path) -> None:
    """mkdir -p, or `bad_outdir` with the system's reason (a name too long, a path through a file, no permission,
    a read-only file system): annotate and eval said `bad_outdir`, the other commands `os_error`. Each folder made
    is on disk by name too (`make_folders_durably`): its files' fsyncs did not keep a new --out itself."""
    try:
        make_folders_durably(root)
    except OSError as exc:
        raise InputError(f"{root}: not a usable output folder ({exc.strerror or exc})", code="bad_outdir") from exc


def probe_writable(root: Path) -> None:
    """Make and remove one empty file in `root` (its holder's, once held): the only honest test of a folder that is
    already there (mkdir -p asks nothing of it) — read-only (its mode, a read-only mount, an ACL) or on a full inode
    table. `sigma eval --out` into a folder whose mode refused writes ran its whole evaluation (14 minutes on the
    real set) before failing on its first file with `os_error` naming a hidden temporary file. The name is a
    temporary one (`.NAME.PID.RANDOM.tmp`), which the sweeps of dead writers remove should a kill come between."""
    import secrets

    probe = root / f".write-probe.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    try:
        probe.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def hold_folder(root: Path, exclusive: bool = True, other: str = "folder", marker: bool = True,
                created: bool | None = None, lock_wait: LockWait | None = None,
                sweep: bool = True) -> Iterator[None]:
    """Hold `root` (created if missing) for the block; `InputError(run_locked)` when another process holds it.
    `other`: what the messages tell the user to choose instead (`--out`, `name=`). `marker=False` locks the
    folder itself and leaves no file in it (an export folder is uploaded as it is), at the cost of the holder's pid
    and host.
    A folder this process made (`created`: said by a caller that made it just before, to test it early) is
    removed again when the block leaves nothing in it. `lock_wait`: the bound of an exclusive holder's wait for the
    folder's commit lock (its sweep); None: `default_lock_wait()`. `sweep=False`: an exclusive holder leaves the
    folder's temporary files alone — a folder the user's own tools share (`sigma export coco --images DIR`), which
    the caller sweeps more narrowly itself (`sigma.tempfiles.sweep_dead_writers_of`)."""
    refuse_non_folder(root, f"; choose another {other}")
    created = (not root.exists()) if created is None else created
    make_out_folder(root)
    try:
        # O_NOFOLLOW: a `.lock` that is a symbolic link (a run folder from elsewhere) had its target truncated and
        # overwritten with our pid — any file the user could write
        fd = (os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644) if marker
              else os.open(root, os.O_RDONLY))
    except OSError as exc:
        if exc.errno != errno.ELOOP:       # a read-only mount, a folder whose mode refuses us: as a folder not made
            raise InputError(f"{root}: not a usable output folder ({exc.strerror or exc})", code="bad_outdir") from exc
        raise InputError(f"{root / LOCK_FILE}: is a symbolic link, not the lock file this folder's runs write; "
                         "remove it (nothing is written through it)", code="bad_outdir") from None
    held = False
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, _HOLDER_BYTES, 0).decode(errors="replace").strip() if marker else ""
            # the holder wrote its line when it took the folder (none: fleet workers, or another tool's flock)
            since = f"has held this folder for {max(time.time() - os.fstat(fd).st_mtime, 0):.0f} s" if holder else ""
            who = (f"another run {since} ({described_holder(holder)})" if holder else unrecorded_holder(fd)
                   if marker else "another run holds this folder (an export)")
            raise InputError(f"{root}: {who}; wait for it to finish or choose another {other}",
                             code="run_locked") from None
        held = True
        try:
            probe_writable(root)
            if exclusive and marker:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder_line().encode(), 0)
        except OSError as exc:
            raise InputError(f"{root}: not a usable output folder ({exc.strerror or exc})", code="bad_outdir") from exc
        if exclusive and sweep:
            # the one writer of the folder now: what writers killed here left (their temporary files, a set
            # replacement staged but not moved into place) is finished or removed, so crashes leave no junk.
            # Finishing a set takes the folder's commit lock: a writer stopped holding it (SIGSTOP, a hung network
            # write) kept this wait going for ever; now `folder_busy` after `lock_wait` (`default_lock_wait()`).
            # Without a marker our own flock on the folder itself is that lock (`held`: not taken again, a wait on
            # ourselves)
            wait = lock_wait or default_lock_wait()
            with busy_as_error("take", wait.seconds, wait.setting):
                sweep_stale_temps(root, timeout_s=wait.seconds, held=not marker)
        yield
    finally:
        # only the holder: a refused process emptied the holder's line, and the next one was told the folder was
        # held by "fleet workers" (what an empty file means), not by the run that holds it
        if exclusive and marker and held:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
        os.close(fd)
        if created and held:         # only the holder: a refused process must not remove the holder's folder
            _remove_if_unused(root, marker)


def _remove_if_unused(root: Path, marker: bool) -> None:
    try:
        if {p.name for p in root.iterdir()} <= ({LOCK_FILE} if marker else set()):
            (root / LOCK_FILE).unlink(missing_ok=True)
            root.rmdir()
    except OSError:
        pass
