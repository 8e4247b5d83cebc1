"""Where weights come from, in one fixed order that is data, not code.

Order (first hit wins):
  1. an explicit state dict handed to the builder (training, tests, a checkpoint already in memory);
  2. a local file or directory (a `save_pretrained` folder, a `.safetensors` file); skipped for `hf://owner/name`,
     which names a hub id only (`resolve_hf_reference`);
  3. the Hugging Face cache with `local_files_only=True` (honours `HF_HOME`, `HF_HUB_CACHE`,
     `HF_HUB_OFFLINE`, resolved by huggingface_hub at call time, never cached by us);
  4. a download, only when the caller allows it.
Nothing found raises `WeightsNotFoundError` naming every place looked and what to do; nothing ever
falls back to random weights unless the caller opted in explicitly.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigma.errors import WeightsNotFoundError, first_line
from sigma.regular import open_regular
from sigma.text import shown_path


class WeightsMismatchError(WeightsNotFoundError):
    """Weights were found but their keys or shapes do not fit the architecture (strict loading)."""

    code = "weights_mismatch"


class WeightsUnreadableError(WeightsNotFoundError):
    """A weights file is there but cannot be read (truncated, not a safetensors / torch file, a disk fault):
    said with the path, never a traceback from the reader's internals."""

    code = "weights_unreadable"


# errnos of a path lookup that mean the path names no file it could read: too long (ENAMETOOLONG), a symlink loop
# (ELOOP), a file where a folder is needed (ENOTDIR), gone (ENOENT), refused as a name (EINVAL); the others
# (EACCES, EPERM on a folder above it, EIO) say it may be there and cannot be reached: weights_unreadable
NAMES_NO_FILE = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.EINVAL})
def lookup_error(exc: OSError, option: str, path: Any) -> WeightsNotFoundError:
    """An OSError of a path lookup (exists, is_file, stat, listdir) in a submit's weights check as the project's error:
    `weights_not_found` when the path cannot name a file (NAMES_NO_FILE), else `weights_unreadable`. Before, it
    escaped the check: `sigma batch submit` said `os_error` with the whole 5000-character path, the API 422
    `invalid_path` without naming the option."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in NAMES_NO_FILE:
        return WeightsNotFoundError(f"{option}: {shown_path(path)} cannot name a file ({reason})")
    return WeightsUnreadableError(f"{option}: {shown_path(path)} cannot be looked up ({reason})")


RESOLUTION_ORDER: tuple[str, ...] = ("state_dict", "local_path", "hf_cache", "download")


@dataclass
class ResolvedWeights:
    """How a weight reference was resolved: `kind` is one of RESOLUTION_ORDER (or "random_init")."""

    kind: str
    location: str
    state_dict: dict[str, Any] | None = None
    looked: list[str] = field(default_factory=list)


def hf_cache_dir() -> str:
    """The hub cache huggingface_hub would use right now (env vars read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def looks_like_repo_id(ref: str) -> bool:
    return ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not Path(ref).exists()


def downloads_allowed(allow_download: bool) -> bool:
    """A download needs the caller's yes and must not contradict HF_HUB_OFFLINE."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return allow_download and not offline


# the explicit Hugging Face marker: `hf://owner/name` is that hub id and never a path on this machine
HUB_PREFIX = "hf://"


def hub_reference_problem(ref: str) -> str | None:
    """Why `ref`, written with the `hf:` marker, names no Hugging Face hub repo (None: it does; also None for a value
    without the marker). The id after `hf://` is checked by huggingface_hub's own `validate_repo_id`, so
    `hf://../x`, `hf:///etc` and `hf://` are refused from the text alone; no revision (`@rev`): the loaders take the
    cached snapshot of the default branch only."""
    if not ref.startswith("hf:"):
        return None
    if not ref.startswith(HUB_PREFIX):
        return f"write a Hugging Face hub id as {HUB_PREFIX}owner/name"
    return _repo_id_problem(ref[len(HUB_PREFIX):])


def _repo_id_problem(repo_id: str, fallback: bool = True) -> str | None:
    """Why huggingface_hub's `validate_repo_id` refuses `repo_id` (None: it does not). Without the client: the same
    rule by hand (`fallback`), or None (the workers may have it; their load says so when they do not)."""
    shown_id = shown_path(repr(repo_id))
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:                  # the same rule, without the client: the load itself then says it is missing
        import re
        ok = not fallback or re.fullmatch(r"([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*", repo_id) \
            and ".." not in repo_id and "--" not in repo_id and not repo_id.endswith(".git")
        return None if ok else f"{shown_id} is no Hugging Face repo id"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        return f"{shown_id} is no Hugging Face repo id ({first_line(exc)})"
    return None


def hub_repo_id(ref: str, what: str = "weights") -> str | None:
    """The repo id of an `hf://owner/name` reference, None for any other value (a path, or a bare `owner/name` that
    the loaders try as a local path first). A malformed `hf:` value raises WeightsNotFoundError naming `what`."""
    problem = hub_reference_problem(ref)
    if problem:
        raise WeightsNotFoundError(f"{what}: {shown_path(repr(ref))}: {problem}")
    return ref[len(HUB_PREFIX):] if ref.startswith(HUB_PREFIX) else None


def resolve_hf_reference(ref: str, *, filename: str = "config.json", allow_download: bool = False,
                         what: str = "weights", hint: str = "") -> ResolvedWeights:
    """Resolve a local path or a Hugging Face repo id to a local directory (steps 2–4).

    `hf://owner/name` skips step 2: it is looked up in the hub cache (then downloaded when allowed) and never as a
    path. A bare `owner/name` is tried as a local folder first, so a worker started in a folder holding `a/b` loaded
    that for `a/b`; the marker is how a caller (the service's API included) names a hub model and only that.
    Returns the directory holding `filename`; the caller loads it strictly.
    """
    looked: list[str] = []
    repo_id = hub_repo_id(ref, what)
    if repo_id is not None:
        looked.append(f"no local path ({HUB_PREFIX} names a Hugging Face hub id only)")
        found = _from_hub(repo_id, filename, allow_download, looked)
    else:
        path = Path(os.path.expanduser(ref))
        if path.exists():
            if path.is_dir() and not (path / filename).is_file():
                looked.append(f"local directory {path} (no {filename} in it)")
            else:
                return ResolvedWeights("local_path", str(path), looked=looked)
        else:
            looked.append(f"local path {path} (does not exist)")
        found = _from_hub(ref, filename, allow_download, looked) if looks_like_repo_id(ref) else None
    if found is not None:
        return found
    raise WeightsNotFoundError(
        f"{what} {ref!r} not found. Looked at, in order: " + "; ".join(looked) + ". "
        + (hint or "Pass a local path (a save_pretrained folder or .safetensors file), put the files in "
           "the Hugging Face cache, or allow a download."))


def _from_hub(repo_id: str, filename: str, allow_download: bool, looked: list[str]) -> ResolvedWeights | None:
    """Steps 3–4 for `repo_id`: the cache with local_files_only, then a download when allowed; None (each miss
    appended to `looked`) when neither has it."""
    cache = hf_cache_dir()
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        looked.append("Hugging Face cache (huggingface_hub is not installed: pip install 'sigma-masks[hf]')")
        return None
    try:
        local = snapshot_download(repo_id, local_files_only=True, cache_dir=cache)
        if (Path(local) / filename).is_file():
            return ResolvedWeights("hf_cache", local, looked=looked)
        looked.append(f"Hugging Face cache {cache} (snapshot of {repo_id} lacks {filename})")
    except Exception:  # noqa: BLE001 - every miss is reported the same way below
        looked.append(f"Hugging Face cache {cache} (no snapshot of {repo_id}; HF_HOME/HF_HUB_CACHE "
                      "choose this folder)")
    if downloads_allowed(allow_download):
        try:
            return ResolvedWeights("download", snapshot_download(repo_id, cache_dir=cache), looked=looked)
        except Exception as exc:  # noqa: BLE001
            looked.append(f"download of {repo_id} from the Hugging Face Hub failed ({exc.__class__.__name__})")
    else:
        why = "HF_HUB_OFFLINE is set" if allow_download else "downloads are off (allow_download=false)"
        looked.append(f"download from the Hugging Face Hub ({why})")
    return None


def resolve_local(ref: str, *, what: str, allow_download: bool = False, hint: str = "",
                  filename: str = "config.json") -> str:
    """A local path or HF repo id -> a local folder (the resolution order above); WeightsNotFoundError
    names every place looked."""
    return resolve_hf_reference(ref, filename=filename, allow_download=allow_download, what=what, hint=hint).location


# suffixes of weights files: a reference ending in one is a file name, never a Hugging Face repo id
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# what `from_pretrained` reads in a save_pretrained folder beside its config.json (one of them)
PRETRAINED_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                      "pytorch_model.bin.index.json")


def looks_like_path(ref: str) -> bool:
    """`ref` is meant as a local path: absolute, `~`, `./` or `../`, or a weights file's name (`x.safetensors`)."""
    return ref.startswith(("/", "./", "../", "~")) or ref in (".", "..") or \
        Path(ref).suffix.lower() in WEIGHTS_SUFFIXES


def check_weights_reference(ref: str, option: str, *, files: tuple[str, ...] = (),
                            config_beside: bool = False) -> None:
    """What `resolve_hf_reference` would make of `ref` at a worker's load, said at a fleet submission without loading,
    reading or downloading anything (`sigma.registry.check_annotator_files`). Before, only `options.weights` was
    checked there: a run naming a missing DINOv2 / Grounding DINO / SAM 2 path was queued and every shard
    dead-lettered when the workers loaded it. Refused (`weights_not_found`, naming `option`):
      - a path that does not exist, when `ref` reads as a path (`looks_like_path`) or as no repo id either (the
        loader looks nowhere else);
      - an existing folder without config.json or the weights `from_pretrained` reads; an existing file whose suffix
        is not in `files` (none: the loader reads folders only), or, `config_beside`, without the config.json /
        X.json a bare DINOv2 file needs (`Dinov2Backbone._config_location`); `weights_unreadable` when unreadable;
      - a repo id huggingface_hub itself rejects (`validate_repo_id`: refused on every machine).
    A well-formed repo id passes, in this machine's Hugging Face cache or not: the cache is each worker's own
    (HF_HOME; the API and the workers are separate containers in docker-compose.yml) and a worker's may hold it,
    or download it with allow_download; its load says where it looked when it does not. `hf://owner/name` is
    checked as that id alone (never as a path): well-formed passes, else `weights_not_found`."""
    if hub_repo_id(ref, option) is not None:
        return
    path = Path(os.path.expanduser(ref))
    try:
        exists = path.exists()
        if exists:
            _check_local_weights(path, shown_path(ref), option, files, config_beside)
    except OSError as exc:      # ENAMETOOLONG, EACCES on a folder above it: not a file of the loader's (`lookup_error`)
        raise lookup_error(exc, option, ref) from None
    if exists:
        return
    if looks_like_path(ref) or not looks_like_repo_id(ref):
        raise WeightsNotFoundError(f"{option}: {shown_path(ref)} does not exist ({_forms(files)})")
    _check_repo_id(ref, option)


def _forms(files: tuple[str, ...]) -> str:
    folder = "a save_pretrained folder with config.json + its weights"
    hub = f"or a Hugging Face repo id ({HUB_PREFIX}owner/name: the hub only, never a local path)"
    return f"{folder}, a {' / '.join(files)} file, {hub}" if files else f"{folder}, {hub}"


def _check_local_weights(path: Path, ref: str, option: str, files: tuple[str, ...], config_beside: bool) -> None:
    """An existing `path` is of a form the loader reads, and readable (opened, not read). `ref`: as messages show it."""
    if path.is_dir():
        needed = [path / "config.json"]
        if not needed[0].is_file():
            raise WeightsNotFoundError(f"{option}: {ref} is a folder without config.json ({_forms(files)})")
        weights = [path / name for name in PRETRAINED_WEIGHTS if (path / name).is_file()]
        if not weights:
            raise WeightsNotFoundError(f"{option}: {ref} is a folder without weights (none of "
                                       f"{', '.join(PRETRAINED_WEIGHTS)})")
        needed.append(weights[0])
    elif path.suffix.lower() not in files:
        raise WeightsNotFoundError(f"{option}: {ref} is a file the loader does not read ({_forms(files)})")
    else:
        needed = [path]
        if config_beside:
            beside = [c for c in (path.parent / "config.json", path.with_suffix(".json")) if c.is_file()]
            if not beside:
                raise WeightsNotFoundError(f"{option}: {ref} is a bare weights file without its architecture "
                                           f"(config.json or {path.with_suffix('.json').name} beside it)")
            needed.append(beside[0])
    for file in needed:
        try:        # open_regular: a FIFO named x.safetensors held the submission in open() for ever
            with open_regular(file):
                pass
        except OSError as exc:
            raise WeightsUnreadableError(f"{option}: {ref}: {file.name} cannot be read "
                                         f"({exc.strerror or exc})") from exc


def _check_repo_id(ref: str, option: str) -> None:
    """A repo id the Hub's own client refuses to look up (`snapshot_download` raises the same on every machine)."""
    problem = _repo_id_problem(ref, fallback=False)
    if problem:
        raise WeightsNotFoundError(f"{option}: {problem}, and does not exist as a path")


def from_pretrained_or_error(load: Any, folder: str, *, what: str, where: str | None = None, **kwargs: Any) -> Any:
    """`load(folder, local_files_only=True, **kwargs)` (a transformers `from_pretrained`) with its failures said as
    SIGMA errors naming the folder. A Hugging Face snapshot whose weights file is missing or a dangling symlink (a
    download cut short, a blob cleaned away) was transformers' OSError; a weights file cut short or not what it
    is named was safetensors' SafetensorError, a traceback."""
    from sigma.errors import SigmaError

    where = where or folder
    try:
        return load(folder, local_files_only=True, **kwargs)
    except (SigmaError, ImportError):    # ours, or a missing package: said as they are
        raise
    except OSError as exc:
        text = " ".join(str(exc).split())[:300]
        if exc.errno is None and ("no file named" in text or "does not appear to have" in text):
            raise WeightsNotFoundError(f"{what} at {where}: the weights file is missing ({text}); copy the "
                                       "model again (a Hugging Face snapshot: download it again)") from exc
        raise WeightsUnreadableError(f"{what} at {where}: cannot read the model files ({text})") from exc
    except Exception as exc:   # SafetensorError (a Rust exception), a bad pickle, a broken JSON
        text = " ".join(str(exc).split())[:300]
        raise WeightsUnreadableError(f"{what} at {where}: the model files cannot be read ({type(exc).__name__}: "
                                     f"{text}); a file is damaged or not what it is named — copy the model "
                                     "again") from exc


def strict_from_pretrained(model_cls: Any, folder: str, *, what: str, **kwargs: Any):
    """`from_pretrained` from a local folder, refusing a partial load: transformers silently re-initialises
    weights it did not find, so a wrong checkpoint could otherwise pass for a detector or a parser."""
    model, info = from_pretrained_or_error(model_cls.from_pretrained, folder, what=what, output_loading_info=True,
                                           **kwargs)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
        raise WeightsMismatchError(f"{what} at {folder}: checkpoint does not match the architecture — {detail}")
    return model.eval()


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """Every tensor of a .safetensors file. Opened with `open_regular` first and read through that open file
    (`/proc/self/fd/N` where there is one): a FIFO (or a link to /dev/zero) given as the weights, or put there after
    a check, held the load (`init_from` of a grown model, a load) in safetensors' own open for ever."""
    from safetensors.torch import load_file

    try:
        with open_regular(path) as handle:
            opened = f"/proc/self/fd/{handle.fileno()}"
            return load_file(opened if os.path.exists(opened) else str(path))
    except Exception as exc:
        _unless_memory_refused(exc, f"{path}: reading the weights file")
        if isinstance(exc, OSError):
            raise WeightsUnreadableError(f"{path}: cannot read the weights file ({exc.strerror or exc})") from exc
        # SafetensorError (a Rust exception) and friends: a damaged file
        raise WeightsUnreadableError(f"{path}: not a readable safetensors file ({exc}); the file is damaged or "
                                     "not what it is named — write it again (save_model / the training run)") from exc


def _unless_memory_refused(exc: Exception, doing: str) -> None:
    """`out_of_memory` when the system refused the read its memory (`memory_refusal`): safetensors' mmap under a low
    `ulimit -v` was said `weights_unreadable`, "the file is damaged ... write it again", of a good file, and a
    `sigma worker` loading it gave up (exit 2) instead of loading again once memory was back."""
    from sigma.errors import OutOfMemoryError, memory_refusal, no_memory

    refused = memory_refusal(exc)
    if refused:
        raise OutOfMemoryError(f"{doing}: {no_memory(refused)}; not the file's fault: raise the limit (`ulimit -v`, "
                               "the container's memory) or free memory and retry") from exc


def check_state(module, state_dict: dict[str, Any], what: str) -> None:
    """The checks of `strict_load` without loading: every key there and no other, every shape, every dtype of
    the same kind (a float parameter from an integer, bool or complex tensor was cast without a word — load_state_dict
    copies across dtypes), and every value finite (NaN or inf weights gave NaN probabilities: masks of garbage,
    exit 0). `module` may live on the meta device (shapes and dtypes only)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    common = sorted(set(own) & set(state_dict))
    bad_shape = [k for k in common if tuple(own[k].shape) != tuple(state_dict[k].shape)]

    def kind(t: Any) -> str:
        return "complex" if t.is_complex() else "float" if t.is_floating_point() else "integer or bool"

    bad_dtype = [f"{k} ({kind(state_dict[k])}, not {kind(own[k])})" for k in common
                 if k not in bad_shape and kind(own[k]) != kind(state_dict[k])]
    if missing or unexpected or bad_shape or bad_dtype:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {show(unexpected)}")
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatch(es): {show(bad_shape)}")
        if bad_dtype:
            parts.append(f"{len(bad_dtype)} dtype mismatch(es): {show(bad_dtype)}")
        raise WeightsMismatchError(f"{what}: weights do not match the architecture — " + "; ".join(parts))
    import torch

    not_finite = [k for k in common if state_dict[k].is_floating_point()
                  and not bool(torch.isfinite(state_dict[k]).all())]
    if not_finite:
        raise WeightsUnreadableError(f"{what}: {len(not_finite)} tensor(s) hold NaN or infinite values "
                                     f"({', '.join(not_finite[:5])}): the file is damaged or was saved from a "
                                     "diverged training run")


def strict_load(module, state_dict: dict[str, Any], what: str) -> None:
    """load_state_dict(strict=True) after `check_state`, with an error that lists the offending keys, as a SIGMA
    error."""
    check_state(module, state_dict, what)
    module.load_state_dict(state_dict, strict=True)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a weights file, read once per process (keyed by path, size and mtime): outputs are
    keyed by the digest of the weights that made them, not by a file name."""
    from sigma.digest import sha256_file

    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(p)
    return _DIGESTS[key]
