"""One registry: the only way to build an annotator from a name.

Entries hold the factory, a one-line description and a weights probe, kept apart so that
`sigma models` can report what is installed without building anything.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sigma.errors import (
    ConfigError,
    OutOfMemoryError,
    SigmaError,
    UnknownNameError,
    loading_refused,
    memory_refusal,
    memory_refused,
    no_memory,
    threads_refused,
)
from sigma.text import nearest, shown


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str
    weights_status: Callable[[], str]   # "embedded", "none needed", "found at ...", "missing: ..."
    # options -> sha256 of the weights file those options would load, without loading it (None: no weights)
    weights_digest: Callable[[dict[str, Any]], str | None] | None = None
    # the pydantic model the entry's options are validated with (None: found from the factory's return type)
    config_cls: type | None = None


class Registry:
    """Names to entries. `builtins` imports the modules that register the built-in entries: it runs before the first
    registration made from outside the `sigma` package (a plugin's), so a plugin that registers a built-in's name
    fails at its own import (`--plugin`'s one invalid_config line). A plugin imported before the built-ins
    (`sigma batch run --plugin X`) took the name, and the built-in's own registration later died as a traceback
    ("annotator 'pixel-diff' registered twice"). Registrations from `sigma` itself never run it: a built-in module
    registering itself mid-import would import its siblings half-made."""

    def __init__(self, kind: str, builtins: Callable[[], Any] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._builtins = builtins

    def register(self, name: str, description: str, weights_status: Callable[[], str] | None = None,
                 weights_digest: Callable[[dict[str, Any]], str | None] | None = None,
                 config_cls: type | None = None) -> Callable:
        if self._builtins is not None and not _registering_module().startswith("sigma."):
            builtins, self._builtins = self._builtins, None
            builtins()

        def deco(factory: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, factory, description, weights_status or (lambda: "none needed"),
                                        weights_digest, config_cls)
            return factory
        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise UnknownNameError(did_you_mean(self.kind, name, self.names()))
        return self._entries[name]

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def import_plugins(modules: Iterable[str], where: str = "plugins") -> None:
    """Plugin modules register their annotators (readers, backends) on import; every process that plans or
    builds one imports them first. `where` names the setting in the error (`worker.plugins`, `plugins`). Each module
    once, whichever list named it twice."""
    for module in dict.fromkeys(modules):
        try:
            importlib.import_module(module)
        except (Exception, SystemExit) as exc:
            raise _import_failed(module, where, exc) from exc


def _import_failed(module: str, where: str, exc: BaseException) -> SigmaError:
    """Why importing plugin `module` failed, as the error said for it. Memory the system refused (a MemoryError, an
    ENOMEM OSError, an ImportError whose chain says a library could not be mapped: `loading_refused`) is
    `out_of_memory`, as every other such refusal is: it was `invalid_config`, telling the user to fix a config that
    was fine, where the CLI says `out_of_memory` and the API answers 503 to retry. Anything else is the plugin's:
    not importable (`cannot import`), or its own bug at import (a RuntimeError or SyntaxError in the module, a name
    registered twice, a sys.exit() at import), said in one line, no traceback."""
    refused = loading_refused(exc) if isinstance(exc, ImportError) else exc if memory_refused(exc) else ""
    if refused:
        return OutOfMemoryError(f"{where}: importing {module!r}: {no_memory(refused)}; not the plugin's fault: raise "
                                "the limit (`ulimit -v`, the container's memory) or free memory and retry")
    if isinstance(exc, ImportError):
        return ConfigError(f"{where}: cannot import {module!r} ({exc})")
    return ConfigError(f"{where}: importing {module!r} failed: {type(exc).__name__}: {exc}")


def _build_failed(name: str, exc: Exception) -> SigmaError:
    """Why building annotator `name` failed. The machine refusing memory (a MemoryError loading the weights under a
    low `ulimit -v`, a library it could not map) is `out_of_memory`, and refusing a thread `out_of_threads`: no fault
    of the annotator, and a shortage that passes. Both were `annotator_failed`, the annotator's own fault, so a
    `sigma worker` started while memory was short exited 2 instead of loading again once it was back
    (`sigma.workers.lifecycle.load_waiting_out_transient_faults`). A native library's own error saying so counts
    too (`memory_refusal`): torch's RuntimeError `DefaultCPUAllocator: can't allocate memory` while sigma-lite's
    load-time probe ran was `annotator_failed` under `prlimit --as` ~890 MB. Anything else stays `annotator_failed`."""
    refused = loading_refused(exc) if isinstance(exc, ImportError) else memory_refusal(exc)
    if refused:
        return OutOfMemoryError(f"annotator {name!r} could not be built: {no_memory(refused, 'to load it')}; not "
                                "the annotator's fault: raise the limit (`ulimit -v`, the container's memory) or free "
                                "memory and retry")
    if threads_refused(exc):
        return SigmaError(f"annotator {name!r} could not be built: the system started no more threads ({exc}); not "
                          "the annotator's fault: raise the limit (`ulimit -u`, the pids limit) and retry",
                          code="out_of_threads")
    return SigmaError(f"annotator {name!r} could not be built: {type(exc).__name__}: {exc}", code="annotator_failed")


def did_you_mean(kind: str, name: str, known: list[str]) -> str:
    close = nearest(name, known)
    hint = f" Did you mean {close!r}?" if close else ""
    return f"Unknown {kind} {shown(name)!r}.{hint} Known: {', '.join(sorted(known))}."


def registered(registry: Registry | Callable[[], list[str]], ensure: Callable[[], Any] | None = None,
               also: tuple[str, ...] = ()) -> Any:
    """A pydantic validator for a config field that names a registry entry: the registry is the extension
    point (a plugin that registers a grounder or a reader is valid config without editing a Literal), and a
    typo is an error with a did-you-mean. `ensure` imports the built-ins first; `also`: accepted extras."""
    from pydantic import AfterValidator

    def check(name: str | None) -> str | None:
        if name is None or name in also:
            return name
        if ensure is not None:
            ensure()
        known = registry.names() if isinstance(registry, Registry) else list(registry())
        if name not in known:
            raise ValueError(did_you_mean(registry.kind if isinstance(registry, Registry) else "name", name,
                                          [*known, *also]))
        return name
    return AfterValidator(check)


def _registering_module() -> str:
    """The module a registration comes from: the first caller outside the registries' own modules (a helper such as
    `register_parser` registers for its caller)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").rpartition(".")[2] == "registry":
        frame = frame.f_back
    return "" if frame is None else str(frame.f_globals.get("__name__", ""))


ANNOTATORS = Registry("annotator", builtins=lambda: _ensure_builtins())


def _ensure_builtins() -> None:
    import sigma.annotators  # noqa: F401  (registers the built-in annotators on import)


def default_annotator_name() -> str:
    """The policy every front end shares: the embedded sigma-lite when its weights ship with this install,
    else the pixel-diff baseline (said on stderr by the CLI, so nobody mistakes one for the other)."""
    _ensure_builtins()
    if "sigma-lite" in ANNOTATORS and ANNOTATORS.get("sigma-lite").weights_status().startswith("embedded"):
        return "sigma-lite"
    return "pixel-diff"


def create_annotator(name: str | None = None, **overrides: Any):
    """Build a registered annotator (None: `default_annotator_name()`); `overrides` are validated by the
    annotator's config model."""
    _ensure_builtins()
    entry = ANNOTATORS.get(name or default_annotator_name())
    try:
        annotator = entry.factory(**overrides)
    except SigmaError:
        raise
    except Exception as exc:   # a plugin's constructor failing is said, not a traceback
        raise _build_failed(entry.name, exc) from exc
    if not callable(getattr(annotator, "predict", None)):
        # a plugin factory returning None (a missing `return`): every pair of a run failed with an AttributeError
        raise SigmaError(f"annotator {entry.name!r} could not be built: its factory returned a "
                         f"{type(annotator).__name__}, not an annotator (subclass sigma.annotators.base.Annotator)",
                         code="annotator_failed")
    return annotator


def annotator_identity(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `annotator.identity()` will say, without building the annotator (run hashes are planned before
    any model loads): the name, the digest of the weights these options load, the package version."""
    from sigma.version import model_identity

    _ensure_builtins()
    entry = ANNOTATORS.get(name)
    digest = entry.weights_digest(dict(options or {})) if entry.weights_digest else None
    return model_identity(name, digest)


def annotator_config_cls(name: str) -> type | None:
    """The config model an annotator validates its options with, found without building it: the entry's
    `config_cls`, else the `config_cls` of the class its factory is annotated to return; None when neither
    says (a plugin registered with a bare lambda), and then only building the annotator can tell."""
    import typing

    _ensure_builtins()
    entry = ANNOTATORS.get(name)
    if entry.config_cls is not None:
        return entry.config_cls
    try:
        returned = typing.get_type_hints(entry.factory).get("return")
    except Exception:  # noqa: BLE001 - an unresolvable annotation is "unknown", not an error
        return None
    return getattr(returned, "config_cls", None)


def options_model(name: str | None) -> type | None:
    """The config model the annotator `name` (None: the default one) validates its options with, for a config that
    validates them with its other fields (`sigma.config.schema.AnnotatorSpec.options_model`); None when the name is
    not registered (yet: a plugin the command imports later) or its model is unknown."""
    _ensure_builtins()
    name = name or default_annotator_name()
    if name not in ANNOTATORS:
        return None
    return annotator_config_cls(name)


def validate_annotator_options(name: str, options: dict[str, Any]) -> Any:
    """Validate `options` as `create_annotator(name, **options)` would, but load nothing (no weights, no
    model): a front end refuses bad options at the door. Returns the config, or None when the annotator's
    config model is unknown; raises ConfigError naming each bad key."""
    from pydantic import ValidationError

    from sigma.errors import ConfigError, error_text

    cls = annotator_config_cls(name)
    if cls is None:
        return None
    try:
        return cls(**options)
    except ValidationError as exc:
        problems = "; ".join(error_text(e) for e in exc.errors())
        raise ConfigError(f"{name}: {problems}") from exc
    except TypeError as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    except SigmaError:         # said already (an exponent that is no whole number: `sigma.config.loader`)
        raise
    except Exception as exc:   # a plugin's validator raising RuntimeError: said as building it would, no traceback
        raise SigmaError(f"annotator {name!r} could not read its options: {type(exc).__name__}: {exc}",
                         code="annotator_failed") from exc


def check_annotator_files(name: str, options: dict[str, Any]) -> None:
    """The files `options` name are there, of the kind the annotator reads (a saved model's folder or .safetensors
    file) and readable, nothing loaded: the annotator config's own `check_files()` when it has one (a plugin's may
    too). One check for `sigma batch submit` and `POST /v1/batches` (`sigma.service.fleet.submit_run`): a run naming
    missing weights was queued and every shard dead-lettered by the workers. Raises as the load would
    (`weights_not_found`, `weights_unreadable`); the workers keep their own checks (a file can vanish later)."""
    config = validate_annotator_options(name, options) if options else None
    check = getattr(config, "check_files", None)
    if callable(check):
        check(**_annotator_named(check, name))


def _annotator_named(check: Any, name: str) -> dict[str, str]:
    """`annotator=name` for a `check_files` that takes it (a config shared by annotators of different presets,
    `ModelAnnotatorConfig`); nothing for one that does not (a plugin's written without it)."""
    import inspect

    try:
        return {"annotator": name} if "annotator" in inspect.signature(check).parameters else {}
    except (TypeError, ValueError):
        return {}


def normalised_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` as the annotator's own config reads them, the keys given only: `image_size: 2.24e2` (YAML 1.1 reads
    it as text) is 224, `threshold: '5e-2'` is 0.05. What a run records and hashes: the two spellings ran the same
    annotator and were two runs, and a --resume with the other spelling was refused as another run. Raises
    ConfigError as `validate_annotator_options`; unchanged when the config model is unknown (a bare-lambda plugin)."""
    config = validate_annotator_options(name, options) if options else None
    if config is None:
        return dict(options)
    normal = config.model_dump(mode="json", exclude_unset=True, by_alias=True)
    # only when it reads back as the same config: a plugin's field known by an alias its dump does not write
    # (`validation_alias`), or a validator that changes what it reads (percent to fraction), would make the
    # annotator refuse, or run with other values than, the options it was given; those are kept as given
    try:
        same = type(config)(**normal).model_dump() == config.model_dump()
    except Exception:  # noqa: BLE001 - any failure to read it back means "keep the options as given"
        same = False
    return normal if same else dict(options)


def named_annotator(name: str | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The annotator a front end runs and records: `name`, or the default when None, with its options as its own
    config reads them (`normalised_options`). One place for `sigma annotate`, `sigma eval` and batch runs, so what
    their config.yaml / result.json / run.json say is what ran."""
    name = name or default_annotator_name()
    return name, normalised_options(name, options)


def list_annotators() -> list[Entry]:
    _ensure_builtins()
    return ANNOTATORS.entries()


def build_annotator(spec: Any):
    """An `AnnotatorSpec` (annotator, options, threshold) → the annotator; the threshold is validated by the
    annotator's own config like every other option."""
    options = dict(spec.options)
    if spec.threshold is not None:
        options["threshold"] = spec.threshold
    return create_annotator(spec.annotator or default_annotator_name(), **options)
