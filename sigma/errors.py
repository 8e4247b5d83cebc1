"""Errors that carry a stable machine-readable code.

Every front end (CLI exit code 2, HTTP 4xx, batch manifests) maps these the same way, so a user
sees one vocabulary of failure whichever way they call SIGMA.
"""
from __future__ import annotations

import errno


class SigmaError(Exception):
    """Base class: `code` is stable and documented; `message` is for people."""

    code = "sigma_error"
    # errors said after this one, each on its own line (the CLI's `said_lines`): a command's config refused beside
    # its flags (`sigma.config.loader._flag_error`)
    also: tuple[SigmaError, ...] = ()

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


class InputError(SigmaError):
    """Bad input from the user: a file, an image, an instruction, an option."""

    code = "invalid_input"


class ImageError(InputError):
    code = "image_unreadable"


class LimitError(InputError):
    code = "limit_exceeded"


class OutOfMemoryError(SigmaError, MemoryError):
    """The system gave no more memory for a piece of work (a low `ulimit -v` / RLIMIT_AS, a container's limit): no
    fault of the input. Still a MemoryError, so code that stops on memory (a batch shard: sigma.batch.decode) does.
    The image reader wrapped the MemoryError of a decode as `image_unreadable`: `sigma annotate` blamed the file
    (exit 2) and the API answered a good upload 422 instead of a 503 to retry."""

    code = "out_of_memory"

    @classmethod
    def decoding(cls, name: str, exc: BaseException) -> OutOfMemoryError:
        """The error of an image `name` whose decode the system gave no memory for: said once, for the image reader
        (`sigma.io.images`) and a worker's decode outside it (`sigma.service.predictor`), which wrote it apart."""
        return cls(f"{name}: {no_memory(exc, 'to decode it')}; not the image's fault: retry with more memory free")


def no_memory(why: BaseException | str, doing: str = "") -> str:
    """"the system gave no more memory[ DOING] (WHY)": the one wording of memory refused, which each place said in
    its own copy (the CLI's `out_of_memory` line, the image reader, a worker's decode, a batch shard's failure). An
    exception as `why` is said by its one-line message, or its type's name when it has none (a bare MemoryError)."""
    if isinstance(why, BaseException):
        why = " ".join(str(why).split()) or type(why).__name__
    return f"the system gave no more memory{f' {doing}' if doing else ''} ({why})"


def loading_refused(exc: BaseException) -> str:
    """The line saying the system gave no memory to load a library, from an ImportError or one in its chain (a
    dlopen under a low `ulimit -v`: `libarrow.so.2600: failed to map segment from shared object`; numpy wraps its own
    in a page of advice ending "Original error was: ..."), or "" for an ImportError that says no such thing (a
    module not installed). One test for every caller: the CLI's `out_of_memory` line and its probe of the optional
    extras (`sigma.cli.common.missing_extras`), which called pyarrow refused its memory "not installed"."""
    seen: BaseException | None = exc
    while seen is not None:
        said = [line for line in str(seen).splitlines() if any(sign in line.lower() for sign in _NO_MEMORY_TO_LOAD)]
        if said:
            return " ".join(said[0].split())
        seen = seen.__cause__ or seen.__context__
    return ""


# the last three: an allocation refused inside a native library, said in its own error's text: ONNX Runtime's
# `Load model from X failed:std::bad_alloc` / `Exception during initialization: std::bad_alloc` and, running a graph,
# `BFCArena::AllocateRawInternal ... Failed to allocate memory for requested buffer` (Exceptions of its own), torch's
# `DefaultCPUAllocator: can't allocate memory` (a RuntimeError)
_NO_MEMORY_TO_LOAD = ("failed to map segment", "cannot allocate memory", "std::bad_alloc", "can't allocate memory",
                      "failed to allocate memory")


def memory_refused(exc: BaseException) -> bool:
    """The system gave no memory, said as an OSError (errno ENOMEM, "Cannot allocate memory") rather than a
    MemoryError: an `import` under a low `ulimit -v` whose directory listing (importlib's `os.listdir` of a folder on
    sys.path: opendir's buffer) was refused raised it, and `sigma serve api`, importing uvicorn, said
    `os_error: Cannot allocate memory` instead of `out_of_memory`. A MemoryError is one too, and OpenCV's own
    (`opencv_memory_refused`)."""
    return (isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
            or opencv_memory_refused(exc))


OPENCV_NO_MEMORY = -4          # cv::Error::StsNoMem: "Insufficient memory"


def opencv_memory_refused(exc: BaseException) -> bool:
    """OpenCV's error for an allocation the system refused (`cv2.error`, code StsNoMem: "(-4:Insufficient memory)
    Failed to allocate N bytes"): an Exception, not a MemoryError, so it passed every handler of memory refused
    and was a traceback. Told by its type's module and code, without importing OpenCV here."""
    return type(exc).__module__ == "cv2" and getattr(exc, "code", None) == OPENCV_NO_MEMORY


ONEDNN_NO_PRIMITIVE = "could not create a primitive"
# address space left under RLIMIT_AS below which the system, not the model, is taken to have refused oneDNN: at its
# failures under `prlimit --as` 950-990 MB, sigma-lite's process had 0.2-0.3 MB left; a genuine oneDNN fault (a
# shape or a CPU it has no kernel for) happens with the space the limit leaves, or with none set
MEMORY_PRESSURE_MARGIN = 64 * 2**20


def address_space_left() -> int | None:
    """Bytes this process may still map under its RLIMIT_AS (the soft `ulimit -v`, `prlimit --as`) beside what it has
    mapped now (/proc/self/status VmSize), or None when it has no such limit or the numbers cannot be read."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return soft - size


def onednn_memory_refused(exc: BaseException) -> bool:
    """oneDNN's (torch's CPU convolutions) `RuntimeError: could not create a primitive` raised while this process is
    within `MEMORY_PRESSURE_MARGIN` of its address-space limit. oneDNN says the same words whatever its status was
    (out of memory among them), so the words alone are not enough: under `prlimit --as` 950-990 MB `sigma annotate
    --annotator sigma-lite` said `annotator_failed: ... RuntimeError: could not create a primitive`, the model's
    fault, and where the load had passed, a traceback. With room left, or no limit, it stays the model's error."""
    if not isinstance(exc, RuntimeError) or ONEDNN_NO_PRIMITIVE not in str(exc):
        return False
    left = address_space_left()
    return left is not None and left < MEMORY_PRESSURE_MARGIN


def memory_refusal(exc: BaseException) -> str:
    """How the system refused memory to `exc`'s work, in one line, or "" when it did not: a MemoryError or an ENOMEM
    OSError (`memory_refused`), or an error of a native reader whose text, or its cause's, says so (`loading_refused`:
    safetensors' mmap of a weights file under a low `ulimit -v` is a SafetensorError "unable to mmap ... Cannot
    allocate memory (12)"; ONNX Runtime's `std::bad_alloc` loading a cached graph). For wrappers that otherwise blame
    their input for it (a weights file "damaged", a cached ONNX graph "unusable"). oneDNN's "could not create a
    primitive" counts only under the pressure of an address-space limit (`onednn_memory_refused`)."""
    if memory_refused(exc):
        return " ".join(str(exc).split()) or type(exc).__name__
    if onednn_memory_refused(exc):
        return f"oneDNN: {ONEDNN_NO_PRIMITIVE}, with under {MEMORY_PRESSURE_MARGIN >> 20} MB of address space left"
    if system_error_under_pressure(exc):
        return (f"SystemError: {first_line(exc, 120)}, with under {MEMORY_PRESSURE_MARGIN >> 20} MB of address space "
                "left")
    return loading_refused(exc)


def system_error_under_pressure(exc: BaseException) -> bool:
    """CPython's SystemError (`error return without exception set`, `<function _find_and_load ...> returned a result
    with an exception set`) raised within `MEMORY_PRESSURE_MARGIN` of the address-space limit: an extension module
    whose allocation failed without saying MemoryError, in an import of torch's or the model's. Under `prlimit --as`
    860-865 MB `sigma annotate --annotator sigma-lite` said `annotator_failed: ... SystemError: ...`, the annotator's
    fault. With room left, or no limit, a SystemError stays a bug of its own."""
    if not isinstance(exc, SystemError):
        return False
    left = address_space_left()
    return left is not None and left < MEMORY_PRESSURE_MARGIN


def threads_refused(exc: BaseException) -> bool:
    """The system would start no more threads: `threading`'s RuntimeError "can't start new thread" (pthread_create's
    EAGAIN: the limit on processes, `ulimit -u` / a container's pids limit, or no memory for the thread's stack under
    `ulimit -v`; Python does not say which). No fault of the input or the program: `sigma batch run`'s shard writer
    or reader, a worker's heartbeat, a decode pool failing so was a RuntimeError traceback, exit 1."""
    return isinstance(exc, RuntimeError) and "can't start new thread" in str(exc)


class ConfigError(SigmaError):
    code = "invalid_config"


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, at most `limit` characters; its type's name when the message is
    empty. `str(exc).splitlines()[0]` was an IndexError traceback for an exception with no message: torch.load's
    EOFError on a checkpoint.pt of zero bytes (a full disk) ended `sigma train --resume` with one, instead of going
    on from checkpoint.prev.pt."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def error_text(error: dict) -> str:
    """One of pydantic's errors (an item of `ValidationError.errors()`) as a config message says it: `key: message`;
    a problem whose message names its place already (`whole_number`, `sigma.config.schema.ReadsWholeNumbers`:
    `options.taps[1]=1.5e0: not a whole number ...`) as that message alone, and the note that a model's own checks
    across fields were not run (`checks_skipped`) as the config's. Here, below the config and the registry, which
    both join such errors."""
    if error["type"] == "whole_number":
        return error["msg"]
    if error["type"] == "checks_skipped" and not error["loc"]:       # the model validated itself: no key to name it
        return f"the config's {error['msg'].removeprefix('its ')}"
    return f"{'.'.join(str(p) for p in error['loc']) or '<root>'}: {error['msg']}"


class UnknownNameError(SigmaError, KeyError):
    code = "unknown_name"

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class WeightsNotFoundError(SigmaError):
    """Raised instead of ever falling back to random weights."""

    code = "weights_not_found"


class WeightsBusyError(SigmaError):
    """A saved model's folder held by another process (a saver stopped or hung mid-commit, a reader stopped
    mid-load) for longer than the wait allows: the load or save fails, saying who holds it, instead of hanging."""

    code = "weights_busy"


class FolderBusyError(SigmaError):
    """An output folder (`sigma eval --out`, `sigma annotate -o`, a run or export folder being taken) whose commit
    lock another process held for longer than `$SIGMA_FOLDER_LOCK_WAIT_S`: a writer stopped (Ctrl-Z, SIGSTOP) or
    hung mid-commit of a set of files there. The command waited for ever without a word; now it fails, saying who
    holds the folder. `weights_busy` is the same fault on a saved model's folder."""

    code = "folder_busy"


class Stopped(Exception):
    """A command stopped on request (a signal), its work saved: not an error. The CLI prints `message` (when
    there is one) on one line and exits with `exit_code`, 128 + the signal's number as a shell reports a process
    that signal ended, so a batch scheduler sees it was terminated and not that it finished."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


def error_record(exc: BaseException) -> dict:
    """An exception as plain data, to cross a process boundary (a `--procs` child, a Ray actor) and be raised
    again on the other side by `raise_error_record`, code and message intact."""
    if isinstance(exc, SigmaError):
        return {"type": type(exc).__name__, "code": exc.code, "message": exc.message}
    return {"type": type(exc).__name__, "code": None, "message": f"{type(exc).__name__}: {exc}"}


def raise_error_record(info: dict, what_failed: str) -> None:
    """Raise what `error_record` described: a SigmaError of this module as its own class (a missing weights
    file stays `weights_not_found`), anything else as `worker_failed` prefixed by `what_failed`."""
    cls = globals().get(info.get("type") or "")
    if isinstance(cls, type) and issubclass(cls, SigmaError):
        raise cls(info["message"], code=info.get("code"))
    raise SigmaError(f"{what_failed}: {info['message']}", code="worker_failed")
