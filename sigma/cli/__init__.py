"""`sigma ...`: one entry point; each sub-command lives in its own module with `register` and `run`."""
from __future__ import annotations

import argparse
import errno
import importlib
import io
import os
import signal
import sys
import threading
import warnings

from sigma.cli import elastic  # here, not where an error is said: with no memory left, that import failed too
from sigma.cli.blas import one_blas_thread_under_an_address_limit, one_opencv_thread_under_a_limit
from sigma.errors import (
    SigmaError,
    Stopped,
    loading_refused,
    memory_refusal,
    memory_refused,
    no_memory,
    opencv_memory_refused,
    threads_refused,
)

one_blas_thread_under_an_address_limit()     # before any command's module imports numpy or OpenCV
one_opencv_thread_under_a_limit()     # the same for OpenCV's own pool (and a low `ulimit -u`)

# Each module defines register(subparsers) -> None and run(args) -> int.
COMMAND_MODULES = (
    "sigma.cli.annotate",
    "sigma.cli.eval",
    "sigma.cli.models",
    "sigma.cli.serve",
    "sigma.cli.batch",
    "sigma.cli.export",
    "sigma.cli.report",
    "sigma.cli.train",
    "sigma.cli.synth",
    "sigma.cli.parse",
)


def build_parser() -> argparse.ArgumentParser:
    from sigma import __version__
    from sigma.cli.common import SigmaArgumentParser

    parser = SigmaArgumentParser(
        prog="sigma",
        description="SIGMA turns (original, edited, instruction) image pairs into pixel-accurate "
                    "manipulation masks.",
        epilog="Start with: sigma annotate ORIGINAL EDITED -i 'remove the boat' -o out/   "
               "(sigma COMMAND --help for each command)",
    )
    parser.add_argument("--version", action="version", version=f"sigma {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _printable_names() -> None:
    """A file name that is not UTF-8 reaches Python with its bad bytes as surrogates (`\\udcff`); under a UTF-8
    locale stdout is strict, so the first line naming such a path (`run folder: ...` after a whole training run)
    was a UnicodeEncodeError traceback. stdout writes those bytes back as they were (what `ls` shows), stderr
    escapes them. Only the process's own console streams are changed, not a stream a caller put in their place."""
    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
        if type(stream) is io.TextIOWrapper and stream.errors == "strict":
            stream.reconfigure(errors=errors)


def _ignore_further_interrupts() -> None:
    """The program, interrupted, is on its way out with 130: a second Ctrl-C (a held key, a script's storm of
    SIGINTs) landed in this print, the interpreter's exit or an atexit hook (multiprocessing's, torch's) and
    printed a KeyboardInterrupt traceback, and the process ended killed by SIGINT instead of with 130. Likewise
    a second SIGTERM after a first one stopped the program (`Stopped`): it ended killed instead of with 143. Only
    for the program itself (`argv` None): a caller of `main([...])` keeps its own handlers."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _raise_once(signum: int, frame: object) -> None:
    """The program's SIGINT handler: the first Ctrl-C is the KeyboardInterrupt Python would raise, and every later
    one is ignored from that instant. A storm of them (a held key, a script's killpg loop) used to land while the
    first one unwound the stack: a multiprocessing lock's finalizer (`sem_unlink`) run by the garbage collector
    then printed `Exception ignored in: <Finalize object, dead>` with a traceback and leaked its semaphore (CI,
    stop 27). Ignoring from the handler itself closes the window between the raise and `_interrupted`. The cost: a
    clean-up that hangs after a Ctrl-C takes SIGTERM, SIGQUIT or SIGKILL, not a second Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _take_interrupts_once() -> None:
    """Only for the program itself, in its main thread, and only over Python's own handler: a caller of
    `main([...])`, or one that set its own, keeps theirs."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_once)


class _SigtermWhileStarting:
    """A SIGTERM while `sigma` starts — the sub-commands' modules importing (half a second, seconds on a busy
    machine), the command line parsed — killed the process by the default action: no line, status -15, `sigma train`
    too, whose own handler (`signal_noted`, in `sigma.cli.train.run`) comes only with its command. It is noted from
    the top of `main` instead, and answered once the command is known (`end`): a command that stops on SIGTERM with
    a line and 143 (`stops_on_sigterm`: `sigma train`) stops so, having done nothing; for the others the signal is
    raised again under the disposition put back, which ends them as it did (their own handling, e.g. a worker's exit
    0, starts only inside their command). Noted, not raised: an exception raised in the middle of an import is
    swallowed by an optional import's `except Exception`. Only for the program itself (`argv` None), in its main
    thread, over the default disposition (an ignored SIGTERM, or a caller's handler, is kept). Left as it was: the
    interpreter's own start-up and `import sigma.cli` (some 30 ms), before any of the package's code runs."""

    def __init__(self, argv: list[str] | None) -> None:
        self.noted = False
        self.old: object = None
        if argv is None and threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.old = signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.noted = True

    def forget(self) -> None:
        """Nothing to answer or put back: the process is leaving with its own error and has set its own rule."""
        self.old, self.noted = None, False

    def end(self, stops: bool = False) -> None:
        """The disposition put back, then a SIGTERM noted meanwhile answered: `Stopped` (one line, 143) when the
        command `stops` on SIGTERM, else the signal raised again (killed, as before)."""
        if self.old is None:
            return
        signal.signal(signal.SIGTERM, self.old)     # first: one arriving from here on meets the command's rule
        self.old = None
        if self.noted:
            if stops:
                raise Stopped("terminated while starting; nothing was done", 128 + signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)


def _interrupted(argv: list[str] | None) -> int:
    if argv is None:
        _ignore_further_interrupts()
    _say("sigma: interrupted")      # under torchrun once, by rank 0: a Ctrl-C reaches every rank
    return 130


def _say(line: str, said_here: bool | None = None) -> None:
    """A command's last line, on stderr; under torchrun once for all ranks (rank 0's, or the rank's the error names
    by `said_here`: a lost rank, which may be rank 0, is said by the first rank left), and in torchrun's report
    (`sigma.cli.elastic`)."""
    _say_lines([line], said_here)


def _say_lines(lines: list[str], said_here: bool | None = None) -> None:
    """`_say` for an error said in several lines, in order: torchrun's error file holds them all, as one report.
    Each line used to be written over the one before, so the report showed only the last (the config's problem,
    not the `empty_path` or `bad_arguments` lines before it)."""
    says = elastic.record("\n".join(lines))           # the error file written either way
    if said_here is not None:
        says = said_here
    if says:
        for line in lines:
            print(line, file=sys.stderr)


def _failed(line: str, argv: list[str] | None, said_here: bool | None = None) -> int:
    """An error's one line said (`_say`) and exit status 2; under torchrun the rank then keeps that status while
    torchrun stops the others with SIGTERM (it was killed in its exit: -15). Only for the program itself."""
    return _failed_lines([line], argv, said_here)


def _failed_lines(lines: list[str], argv: list[str] | None, said_here: bool | None = None) -> int:
    """`_failed` for an error said in several lines (a command's bad flags and its config's problems), in order."""
    _say_lines(lines, said_here)
    if argv is None:
        elastic.leaving_quietly()
    return 2


def main(argv: list[str] | None = None) -> int:
    starting = _SigtermWhileStarting(argv)     # first thing: the imports below take seconds
    if argv is None:
        from sigma.stdio import hold_closed_streams

        hold_closed_streams()      # before any file is opened: a closed fd 0-2 is never one of the program's files
        # tqdm's stall monitor is a thread: where the system starts no more, tqdm goes on without it (its own
        # fallback) but warned in three lines before the command's own `out_of_threads` line
        warnings.filterwarnings("ignore", message="tqdm:disabling monitor support")
    _printable_names()
    if argv is None:
        _take_interrupts_once()
    try:
        # the sub-commands' modules import for seconds (PIL, numpy, ...): a Ctrl-C in them was a traceback, -2
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: an exit code, also when called in-process
        if argv is None and exc.code == 2 and elastic.under_torchrun():
            # a usage error: the rank keeps its status (`_failed`), also when torchrun's SIGTERM (another rank failed
            # first) came while it parsed: noted, then raised again by `end`, it ended the rank -15
            elastic.leaving_quietly()
            starting.forget()
        starting.end()
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        starting.end()
        return _interrupted(argv)
    except (MemoryError, ImportError, OSError) as exc:      # the sub-commands' imports under a low `ulimit -v`
        starting.end()
        if not _out_of_memory(exc):
            raise
        return _failed(_out_of_memory(exc), argv)
    if not getattr(args, "run", None):
        starting.end()
        parser.print_help()
        return 2
    if argv is None and getattr(args, "stdout_is_a_log", False):
        from sigma.stdio import CLOSED, log_to_stderr

        if getattr(args, "json", False) and 1 in CLOSED:
            # `--json` makes stdout the command's result (`sigma batch run --json`): with the log sent to stderr, the
            # JSON went there too, mixed into the log where no reader of the JSON looks. Refused before any work
            starting.end()
            from sigma.cli.common import error_line

            return _failed(error_line("out_no_reader", "--json prints the result to standard output, which was "
                                      "closed (`>&-`): nothing would read it; give the stream back (`> FILE`) or "
                                      "drop --json (`sigma batch run` writes the same summary to OUT/summary.json)"),
                           argv)
        log_to_stderr()            # `>&-`: the log goes to stderr, not nowhere
    try:
        starting.end(stops=bool(getattr(args, "stops_on_sigterm", False)))
        if getattr(args, "refused_flags", None):   # bad flag values, said with the config's problems; no work
            from sigma.cli.common import refused_said

            return _failed_lines(refused_said(args), argv)
        if getattr(args, "needs", None):
            from sigma.cli.common import check_extras

            check_extras(" ".join(a for a in (argv if argv is not None else sys.argv[1:])[:2] if not a.startswith("-")),
                         args.needs)
        status = int(args.run(args) or 0)
    except SigmaError as exc:
        from sigma.cli.common import said_lines

        return _failed_lines(said_lines(exc), argv, getattr(exc, "said_here", None))
    except KeyboardInterrupt:
        return _interrupted(argv)
    except Stopped as exc:   # a SIGTERM obeyed, the work saved or none done (`sigma train`): one line, 128 + signal
        if argv is None:
            _ignore_further_interrupts()
        if exc.message:
            _say(f"sigma: {exc.message}")
        return exc.exit_code
    except BrokenPipeError as exc:
        from sigma.stdio import reader_left

        if not reader_left():   # a FIFO given as --out whose reader left: the command's output is lost, say so
            from sigma.cli.common import error_line

            where = f": {exc.filename}" if exc.filename else ""
            return _failed(error_line("out_no_reader", f"the reader of the output left before it was written"
                                                       f"{where}"), argv)
        # `sigma eval ... | head`: the reader of stdout left, by choice; stop quietly, as coreutils and git do
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return 128 + signal.SIGPIPE
    except OSError as exc:   # the machine refused (a name too long, no space, no permission): one line, no traceback
        if memory_refused(exc):      # ENOMEM: said before any import, as a MemoryError is
            return _failed(_out_of_memory(exc), argv)
        from sigma.cli.common import error_line

        where = f": {exc.filename}" if exc.filename else ""
        no_room = _out_of_space(exc)
        if no_room:
            return _failed(no_room, argv)
        if exc.errno == errno.ENAMETOOLONG and exc.filename:
            from sigma.cli.common import path_too_long

            return _failed(error_line("path_too_long", path_too_long(exc.filename)), argv)
        return _failed(error_line("os_error", f"{exc.strerror or exc}{where}"), argv)
    except UnicodeEncodeError as exc:
        return _failed(_unencodable(exc), argv)
    except (MemoryError, ImportError) as exc:
        if not _out_of_memory(exc):
            raise
        return _failed(_out_of_memory(exc), argv)
    except Exception as exc:   # the machine's shortage said by a library's own error, anywhere in a command's work
        if threads_refused(exc):
            return _failed(_out_of_threads(), argv)
        if not memory_refusal(exc):   # OpenCV's cv2.error StsNoMem, torch's `can't allocate memory`, ORT's bad_alloc
            raise
        return _failed(_out_of_memory(exc), argv)
    return _said_all(status, argv, bool(getattr(args, "stdout_is_a_log", False)))


def _out_of_space(exc: OSError) -> str:
    """The one line for a write a full disk or a quota refused (ENOSPC, EDQUOT; pyarrow's error says it in words
    only), naming the file or folder the write was for, or "" for another OSError. It was `os_error: No space left
    on device`, often with no path (a close on a full disk carries none): which of a command's outputs, on which
    disk, was left to guess. What the command had finished stays where it was (an eval's journal, a batch run's
    shards) and the same command run again once there is room continues it."""
    import errno

    from sigma.cli.common import error_line
    from sigma.tempfiles import room_refused

    refused = room_refused(exc)
    if refused not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    where = f": {os.fsdecode(exc.filename)}" if exc.filename else ""
    said = exc.strerror or os.strerror(refused)
    return error_line("out_of_space", f"{said}{where} (free room on that file system, or write elsewhere)")


def _said_all(status: int, argv: list[str] | None, stdout_is_a_log: bool = False) -> int:
    """`status`, unless the command printed to a stdout closed when it started (`sigma batch status RUN --json >&-`):
    then one `out_no_reader` line and 2, as coreutils and git fail on a stdout they cannot write (`sigma.stdio`).
    Python's own rule was silence and 0: a result nobody got, reported as a success. Said after the command, so
    what it wrote to files stays written; a command that failed keeps its own line. Not for a command whose stdout
    is a log (`stdout_is_a_log`): a long-running service (`sigma serve`, `sigma worker`: daemons are often started
    with stdout closed, and a clean stop on SIGTERM must stay 0 for their supervisor), and a command whose result is
    the files it writes (`annotate`, `eval`, `batch run`, `synth`, `train`, `export`): its lines report on them, and
    a night's `batch run ... >&-` that finished its work ended 2, which a script reads as the run failed."""
    from sigma.stdio import lost_output

    lines = lost_output() if argv is None and status == 0 and not stdout_is_a_log else 0
    if not lines:
        return status
    from sigma.cli.common import error_line

    return _failed(error_line("out_no_reader", f"standard output was closed (`>&-`): the command's output "
                              f"({lines} line{'s' if lines != 1 else ''}) was not shown; give the stream back "
                              "(e.g. `> FILE` or `> /dev/null` instead of `>&-`)"), argv)


def _out_of_memory(exc: BaseException) -> str:
    """The one line for memory the system would not give (a low `ulimit -v` / RLIMIT_AS, a container's limit), or
    "" for an ImportError that is no such refusal. Both were tracebacks, exit 1: a MemoryError reading an image or
    importing a module, and a library whose dlopen could not map it (`libtorch_cpu.so: failed to map segment from
    shared object`; numpy wraps its own in an ImportError of its advice). Made without importing anything: with no
    memory, the import of the usual line's helpers (`error_line`) failed in its turn. An OSError counts when it is
    ENOMEM (`memory_refused`: an import's folder listing refused), else it is ""; so is OpenCV's `cv2.error` of
    memory refused (`opencv_memory_refused`), which the finalising steps (the footprint's `residual_map`, the mask
    extras, resizing the probability map) raised as a traceback, exit 1, under a `prlimit --as` of ~1.6 GB, and torch's
    RuntimeError `DefaultCPUAllocator: can't allocate memory` (`memory_refusal`), a traceback at ~0.9 GB."""
    why = "MemoryError"
    if opencv_memory_refused(exc):
        why = " ".join(str(exc).split()).partition("error: ")[2][:300] or "cv2.error"
    elif not isinstance(exc, MemoryError | OSError | ImportError):   # a native library's own error (memory_refusal)
        why = memory_refusal(exc)[:300]
        if not why:
            return ""
    elif isinstance(exc, OSError):
        if not memory_refused(exc):
            return ""
        why = exc.strerror or "Cannot allocate memory"
    elif isinstance(exc, ImportError):
        said = loading_refused(exc)
        if not said:
            return ""
        why = f"loading a library: {said[:300]}"
    error = SigmaError(f"{no_memory(why)}; raise the limit (`ulimit -v`, the container's "
                       "memory) or ask for less (--batch-size, --workers, --procs, smaller images)",
                       code="out_of_memory")
    return f"sigma: error [{error.code}]: {error.message}"


def _out_of_threads() -> str:
    """The one line for threads the system would not start (`threads_refused`), made without imports as
    `_out_of_memory`'s is: the cause is often memory too. What a command had finished is kept (`sigma batch run`'s
    published shards: `--resume` goes on from them)."""
    error = SigmaError("the system started no more threads (can't start new thread): its limit on processes and "
                       "threads (`ulimit -u`, the container's pids limit) or the memory for their stacks (`ulimit -v`, "
                       "`ulimit -s`) is reached; raise it or ask for less (--workers, --procs), then run the command "
                       "again (`sigma batch run ... --resume` goes on from the shards done)", code="out_of_threads")
    return f"sigma: error [{error.code}]: {error.message}"


def _unencodable(exc: UnicodeEncodeError) -> str:
    """A text the system cannot store (a `name: café-run` of a config made into a folder under LC_ALL=C, whose
    file-name encoding is ASCII) was a traceback from deep in pathlib: one line naming the text and the way out."""
    from sigma.cli.common import error_line

    text = exc.object if isinstance(exc.object, str) else repr(exc.object)
    return error_line("invalid_text", f"{text[:200]!r} holds {text[exc.start:exc.end]!r}, which this system's "
                      f"{exc.encoding} encoding cannot write (its locale: LANG / LC_ALL); use a UTF-8 locale "
                      "(LC_ALL=C.UTF-8) or PYTHONUTF8=1, or ASCII names")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
