"""Where built artefacts (ONNX graphs) live on the user's machine, and how an entry is written safely.

An entry is `<stem>.onnx` + `<stem>.json` (its manifest: the key's fields, the file's sha256 and size,
how it was verified). The manifest is written last, so an entry without one — or whose file does not
hash to what the manifest says — is incomplete or damaged and gets rebuilt, never loaded. Writers go
through a temporary name and `os.replace`, and hold a per-entry file lock while building, so two
processes that need the same entry build it once and never see half a file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sigma.digest import sha256_file
from sigma.tempfiles import temp_name

ENV_CACHE_DIR = "SIGMA_CACHE_DIR"


def cache_root() -> Path:
    """`$SIGMA_CACHE_DIR`, else `$XDG_CACHE_HOME/sigma`, else `~/.cache/sigma` (read at call time), absolute.

    A value of only spaces is unset, as the numeric variables read it (`sigma.text.positive_int_env`): it was a
    folder named `   ` made in whatever folder the command ran from, a cache nobody would find again. A relative
    `$XDG_CACHE_HOME` is ignored, as the XDG Base Directory spec says it must be (it was a `sigma/` folder under
    the working folder of each process); a relative `$SIGMA_CACHE_DIR` is the user's own choice and is read against
    the working folder once, here, so messages name the folder written."""
    own = os.environ.get(ENV_CACHE_DIR, "")
    if own.strip():
        return Path(os.path.abspath(os.path.expanduser(own)))
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if xdg.strip() and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sigma"


def key_digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def temp_path_beside(path: Path) -> Path:
    """A unique, not yet existing name in `path`'s folder (for writers that want a file name: the ONNX exporter),
    created empty (owner-only, as `mkstemp` made it) so no other writer takes it; `temp_name`'s form, which the
    sweeps know, instead of `mkstemp`'s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temp_name(path)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:      # the same 32 random bits twice in one process: draw again
            continue
        return tmp


@contextlib.contextmanager
def entry_lock(path: Path, timeout_s: float = 900.0) -> Iterator[bool]:
    """Exclusive advisory lock on `path` (fcntl). Yields True when held; after `timeout_s` (a builder that
    hangs) or where fcntl does not exist, yields False and the caller proceeds unlocked — the atomic
    rename still keeps readers from ever seeing a partial file."""
    try:
        import fcntl
    except ImportError:          # pragma: no cover - Windows: no advisory locks here
        yield False
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout_s
        held = False
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        try:
            yield held
        finally:
            if held:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def entry_is_valid(artefact: Path, manifest: dict[str, Any] | None, key: str) -> str | None:
    """None when `artefact` is the complete file the manifest describes for `key`; else why not."""
    if manifest is None:
        return "no manifest (never built, or the build was interrupted)"
    if manifest.get("key") != key:
        return "manifest is for another key (stale)"
    try:
        size = artefact.stat().st_size
    except OSError:
        return "file missing"
    recorded = manifest.get("bytes")
    if isinstance(recorded, bool) or size != recorded:     # `true` is 1 to Python: no size we wrote
        return f"size {size} != {manifest.get('bytes')} (truncated or replaced)"
    if sha256_file(artefact) != manifest.get("sha256"):
        return "sha256 mismatch (corrupt)"
    return None
