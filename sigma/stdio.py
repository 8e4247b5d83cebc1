"""The program's standard streams when its caller closed them (`>&-`, `2>&-`, `<&-`, a supervisor that starts it
with no fd 0-2).

Python then sets `sys.stdout` / `sys.stderr` / `sys.stdin` to None and leaves the descriptor number free, and both
hurt:
- `sys.stderr` None: the progress bar's `sys.stderr.isatty()` was an AttributeError that nothing showed (its
  traceback had nowhere to go): `sigma eval`, `sigma batch run` and `sigma synth` with `2>&-` ended with status 1,
  silent, having done nothing; and `print(..., file=sys.stderr)` with a None file writes to *stdout*, so warnings and
  error lines landed in the command's product (`sigma eval ... 2>&- > table.txt`).
- the free number: the next file the program opened took it (a run's `.lock`, a shard being read, a temporary
  file), so `--out /dev/stdout` (→ `/proc/self/fd/1`) named one of the program's own files, or nothing: the export
  then wrote its JSON beside `/dev/stdout` and renamed it over the link (as root: `/dev/stdout` became a regular
  file for every later program in the container). Native code writing to fd 1 or 2, and children inheriting them,
  wrote into that file.

`hold_closed_streams` (the CLI's first step, for the program itself only) opens /dev/null on each closed descriptor,
so no file of the program ever takes 0-2, and gives the program's `sys.stdout` / `sys.stderr` a writer there
(nothing crashes on None). `sys.stdin` stays None (`sigma annotate -` says `no_pairs`). An output that names a
closed stream (`--out /dev/stdout` after `>&-`) is refused by the writers (`closed_stream_named`): nothing would
read it.

What a command prints to a closed stdout is counted (`lost_output`): Python drops it without a word and ends 0, so
`sigma batch status RUN --json >&-` (or `sigma parse ...`, `sigma report ...`) looked like a success whose result
nobody got. coreutils and git call a stdout they cannot write an error (`ls >&-`: "write error: Bad file
descriptor", status 2), and so does the CLI now, once the command is done (its files are kept): `out_no_reader`,
exit 2. A closed stderr stays silent: there is nowhere to say anything, and the status says it.

A pipe whose reader left (`sigma report RUN | head -1`) is the other case: the reader chose to stop, so the program
stops quietly with 141 (128 + SIGPIPE), what the shell reports for coreutils and git, which SIGPIPE kills there
(`reader_left`); a program's own clean-up still runs, which being killed by the signal would skip."""
from __future__ import annotations

import errno
import io
import os
import re
import select
import stat
import sys

#: the standard descriptors that were closed when the program started (set by `hold_closed_streams`)
CLOSED: set[int] = set()

_NAMES = {0: "standard input", 1: "standard output", 2: "standard error"}


def hold_closed_streams() -> frozenset[int]:
    """/dev/null opened on each of fd 0, 1, 2 that is closed (inheritable: children get it too), and a writer on it
    for a None `sys.stdout` / `sys.stderr`. Returns the descriptors it held (also kept in `CLOSED`)."""
    held = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError as exc:
            if exc.errno != errno.EBADF:
                continue
        opened = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if opened != fd:          # the lowest free number is fd itself (the ones below are open): a guard only
            os.dup2(opened, fd)
            os.close(opened)
        os.set_inheritable(fd, True)
        held.add(fd)
    if 1 in held and sys.stdout is None:
        sys.stdout = _LostWriter()
    if 2 in held and sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    CLOSED.update(held)
    return frozenset(held)


class _LostWriter(io.TextIOBase):
    """`sys.stdout` in place of a closed one: takes every write (nothing crashes) and counts the lines, for
    `lost_output`. Its `fileno` is 1, held on /dev/null (a child or native code writing there loses it likewise)."""

    def __init__(self) -> None:
        super().__init__()
        self.chars = 0
        self.lines = 0

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.chars += len(text)
        self.lines += text.count("\n")
        return len(text)

    def fileno(self) -> int:
        return 1


def log_to_stderr() -> bool:
    """For a command whose stdout is its log, not its result (`stdout_is_a_log`: `sigma train`, `batch run`,
    `annotate`, `eval`, `synth`, `export`, the services): a stdout closed when the program started (`>&-`) is made
    a copy of stderr (fd 1 too, `dup2`, so native code and children log there alike), with one line saying so.
    Returns whether it did: not where stderr is closed too (nowhere to log; the status says how it went).

    Such a command ran on with its log dropped and ended 0: `sigma train --resume RUN >&-` lost the line saying
    that `checkpoint.pt` was damaged and the run went back to `checkpoint.prev.pt` (a checkpoint interval of work
    redone, written in no file), and `sigma batch run ... >&-` its summary of the shards written. Its files are its
    result and it finishes (an `out_no_reader` status 2 read as a failed run), so the log goes where the caller still
    reads. An output naming the closed stream (`--out /dev/stdout`) is still refused (`closed_stream_named`)."""
    if 1 not in CLOSED or 2 in CLOSED:
        return False
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                      closefd=False)
    if os.environ.get("RANK", "").strip() in ("", "0"):     # under torchrun by rank 0 alone, as the log is
        print("sigma: note: standard output was closed (`>&-`): this command's log goes to standard error",
              file=sys.stderr, flush=True)
    return True


def lost_output() -> int:
    """How many lines (at least 1 when anything) the program printed to a stdout closed when it started; 0 when
    stdout was open or nothing was printed."""
    out = sys.stdout
    if not isinstance(out, _LostWriter) or not out.chars:
        return 0
    return max(out.lines, 1)


def reader_left(fd: int = 1) -> bool:
    """True when `fd` is a pipe (or FIFO) whose every reader has closed it: a BrokenPipeError there is the reader's
    choice (`| head -1`), not a fault of a file the command was writing. Linux and the BSDs say so by POLLERR on
    the write end."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, AttributeError, ValueError):     # no poll() (Windows): a pipe that broke is taken as the reader's
        return True


_OWN_FDS = re.compile(r"/proc/(\d+)(?:/task/\d+)?/fd")


def closed_stream_named(path: str | os.PathLike[str]) -> str | None:
    """"standard output" (or input, error) when `path` leads, through links, to a standard descriptor of this
    program that was closed when it started (`/dev/stdout`, `/dev/fd/1`, `/proc/self/fd/1`, a link of the user's to
    one of them), else None. The links are read one by one: following them whole (`realpath`) would end at the
    /dev/null held in its place."""
    if not CLOSED:
        return None
    current = os.path.abspath(os.fspath(path))
    for _ in range(40):                              # a loop of links: no standard stream
        folder, name = os.path.split(current)
        folder = os.path.realpath(folder)
        own = _OWN_FDS.fullmatch(folder)
        if own and int(own.group(1)) == os.getpid() and name.isdigit():
            return _NAMES.get(int(name)) if int(name) in CLOSED else None
        here = os.path.join(folder, name)
        if not os.path.islink(here):
            return None
        current = os.path.normpath(os.path.join(folder, os.readlink(here)))
    return None
