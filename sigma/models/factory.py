"""Build, save and load SigmaNets. A saved model is a folder: `config.json` (the SigmaNetConfig) +
`model.safetensors` (every tensor, backbone included), loaded strictly."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from pydantic import ValidationError

from sigma.errors import ConfigError, WeightsBusyError, WeightsNotFoundError, error_text, first_line
from sigma.folderlock import WAIT_RULE, busy_message, held_for
from sigma.models.config import Dinov2BackboneConfig, SigmaNetConfig
from sigma.models.presets import PRESETS
from sigma.models.sigma_net import SigmaNet
from sigma.models.size import check_model_size
from sigma.models.weightfile import write_safetensors
from sigma.models.weights import (
    WeightsUnreadableError,
    check_state,
    load_safetensors,
    lookup_error,
    strict_load,
)
from sigma.regular import NotRegularFile, open_regular
from sigma.tempfiles import (
    FolderBusy,
    finish_replacements,
    has_staged_set,
    reading_lock,
    replace_together,
    staged_set_writers,
    time_left,
)
from sigma.text import MAX_DURATION_S, positive_int_env, shown_path
from sigma.text import loads as load_json

FORMAT = "sigma-net"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# the two forms `model_files` reads, as a refusal names them (a load's, and a submission's `check_model_files`)
_SAVED_FORMS = f"a saved model is a folder with {CONFIG_NAME} + {WEIGHTS_NAME}, or X.safetensors beside X.json"
# how long a load or a save waits for another process's hold on a saved model's folder (seconds)
ENV_LOCK_WAIT = "SIGMA_MODEL_LOCK_WAIT_S"
DEFAULT_LOCK_WAIT_S = 120


def preset_config(name: str, **overrides: Any) -> SigmaNetConfig:
    if name not in PRESETS:
        import difflib
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model preset {name!r}.{hint} Known: {', '.join(sorted(PRESETS))}")
    return make_config({**PRESETS[name], "name": name, **overrides})


def make_config(data: dict[str, Any] | SigmaNetConfig) -> SigmaNetConfig:
    if isinstance(data, SigmaNetConfig):
        return data
    try:
        return SigmaNetConfig.model_validate(data)
    except ValidationError as exc:  # → one line naming each bad key, as a config file's errors read
        raise ConfigError(f"invalid SigmaNet config: {'; '.join(error_text(e) for e in exc.errors())}") from exc
    except Exception as exc:  # a SIGMA error with the reason
        raise ConfigError(f"invalid SigmaNet config: {exc}") from exc


def _net(cfg: SigmaNetConfig, **kwargs: Any) -> SigmaNet:
    """SigmaNet(cfg): an architecture the config's own checks let through but the network cannot be built from
    (no backbone tap as coarse as token_stride, fewer skip_dims than fine taps) is a ConfigError naming it —
    from a training `model=` or a saved config.json it was a ValueError traceback."""
    check_model_size(cfg)    # arithmetic on the config: an absurd size is refused before a tensor exists
    try:
        return SigmaNet(cfg, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"SigmaNet {cfg.name}: the architecture cannot be built ({exc})") from exc


def build_model(config: SigmaNetConfig | str | dict[str, Any], *, pretrained: bool = True,
                state_dict: dict[str, torch.Tensor] | None = None, allow_download: bool = False) -> SigmaNet:
    """Build the architecture. `pretrained` loads the backbone's pretrained weights where it has any
    (DINOv2; the compact backbone has none: it is trained from scratch). An explicit `state_dict` wins
    over every other source and is loaded strictly into the whole network."""
    cfg = preset_config(config) if isinstance(config, str) else make_config(config)
    model = _net(cfg, pretrained=pretrained and state_dict is None, allow_download=allow_download)
    if state_dict is not None:
        strict_load(model, state_dict, f"SigmaNet {cfg.name}")
    return model


def _self_contained(cfg: SigmaNetConfig, model: SigmaNet) -> SigmaNetConfig:
    """Record the DINOv2 architecture in the saved config so loading needs no backbone config.json."""
    if isinstance(cfg.backbone, Dinov2BackboneConfig) and cfg.backbone.hf_config is None:
        hf = model.backbone.model.config.to_dict()
        keep = {k: v for k, v in hf.items() if k not in {"architectures", "transformers_version", "torch_dtype",
                                                           "dtype", "_name_or_path", "id2label", "label2id"}}
        backbone = cfg.backbone.model_copy(update={"hf_config": keep})
        cfg = cfg.model_copy(update={"backbone": backbone})
    return cfg


BACKBONE_PREFIX = "backbone.model."


def save_model(model: SigmaNet, path: str | Path, *, include_frozen_backbone: bool = True,
               dtype: torch.dtype | None = None) -> Path:
    """Write `path/config.json` + `path/model.safetensors`, or, for a path ending in `.safetensors`,
    that file + the same name with `.json` (the embedded layout: sigma/weights/sigma-lite.safetensors).

    `include_frozen_backbone=False` leaves a frozen pretrained backbone out (sigma-b: 3.5 M trained
    parameters instead of 90 M); `load_model` then resolves it from `backbone.weights` (local path >
    HF cache > download if allowed). Atomic as a pair (`sigma.tempfiles.replace_together`, config last): a kill at
    any point leaves the old model or the new one — a kill mid-commit, a folder without its config until the next
    save or load finishes it from the journal — and two savers at once leave one saver's whole model, never one's
    weights beside the other's config; a saver killed mid-write leaves temporary files the next save removes.
    `dtype` (e.g. torch.float16) stores the floating-point tensors in that
    precision (the embedded sigma-lite: half the bytes; BatchNorm statistics stay fp32); `load_model` casts
    them back to the model's."""
    path = Path(path)
    cfg_path, weights_path = model_files(path) if path.suffix == ".safetensors" else \
        (path / CONFIG_NAME, path / WEIGHTS_NAME)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    cfg = _self_contained(model.config, model)
    skip_backbone = not include_frozen_backbone and getattr(model.backbone, "frozen", False) \
        and isinstance(cfg.backbone, Dinov2BackboneConfig)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
             if not (skip_backbone and k.startswith(BACKBONE_PREFIX))}
    if dtype is not None:   # BatchNorm running statistics keep fp32: a variance can exceed fp16's range
        state = {k: v.to(dtype) if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))
                 else v for k, v in state.items()}
    meta = {"format": FORMAT, "version": 1, "backbone_in_file": not skip_backbone}
    if dtype is not None:
        meta["stored_dtype"] = str(dtype).removeprefix("torch.")
    write_model_files(state, weights_path, cfg_path, {**meta, "config": cfg.model_dump(mode="json")},
                      metadata={"format": FORMAT})
    return path


def write_model_files(state: dict[str, torch.Tensor], weights_path: Path, cfg_path: Path, config: dict[str, Any],
                      metadata: dict[str, str] | None = None, beside: tuple[tuple[Path, bytes], ...] = ()) -> None:
    """`state` (contiguous CPU tensors) at `weights_path` and the `config` record at `cfg_path`, with the files of
    `beside` (in the config's folder), as one set: `save_model`'s writer, and `scripts/soup_weights.py`'s (which
    wrote with safetensors' `save_file`, then the config and its own record one after the other: a soup killed
    between left its weights beside the earlier soup's config and record, or `.tmpXXXXXX` junk mid-write)."""

    def write_weights(tmp: Path) -> None:          # streamed: no second copy of the weights in memory
        # into `tmp` itself: safetensors' save_file staged the bytes in a temporary file of its own (`.tmpXXXXXX`),
        # which a saver killed mid-write left in the folder for good (`sigma.models.weightfile`)
        write_safetensors(state, tmp, metadata=metadata)

    # one set, the config last (`replace_together`): the weights and config.json were renamed one after the other,
    # and a saver killed between the two renames left its weights beside the old config, two savers at once one's
    # weights beside the other's config. Staged under temporary names of this writer's own (`temp_name`), then a
    # journal; what savers killed here left goes first (a set they committed is finished, their staged files swept).
    wait_s = lock_wait_s()
    try:
        with _busy_as_error("save the model into", wait_s):
            replace_together([(weights_path, write_weights), *beside,
                              (cfg_path, json.dumps(config, indent=2).encode())], timeout_s=wait_s)
    except Exception as exc:
        if not isinstance(exc, (OSError, WeightsBusyError)):            # safetensors' own error type
            raise OSError(f"{weights_path}: cannot write the model ({first_line(exc)})") from exc
        raise


def model_files(path: str | Path) -> tuple[Path, Path]:
    """(config, weights) for a saved folder, or for `X.safetensors` with `X.json` beside it."""
    path = Path(path)
    if path.is_dir():
        return path / CONFIG_NAME, path / WEIGHTS_NAME
    if path.suffix == ".safetensors":
        return path.with_suffix(".json"), path
    if path.suffix == ".json":
        return path, path.with_suffix(".safetensors")
    return path / CONFIG_NAME, path / WEIGHTS_NAME


def _refuse_hub_reference(path: str | Path, what: str) -> None:
    """A saved SIGMA model is a local path only: `hf://owner/name` (the hub marker of backbone and grounding weights)
    is refused as weights_not_found, never read as the relative folder `hf:/owner/name` (what Path makes of it)."""
    if str(path).startswith("hf:"):
        raise WeightsNotFoundError(f"{what}: {path}: a saved SIGMA model is a local path ({_SAVED_FORMS}); "
                                   "hf://owner/name names a Hugging Face hub model, taken by backbone_weights "
                                   "and the grounding weights only")


def check_model_files(path: str | Path, what: str = "weights") -> None:
    """That `path` names a saved model `load_model` can open — a folder with config.json + model.safetensors, or
    X.safetensors beside X.json — both files there and readable, without reading them (no tensor, no JSON): what a
    fleet submission checks (`sigma.service.fleet.submit_run`). Before, a run naming a missing file (a typo, a folder
    not yet copied) was planned and queued, and every shard failed on the workers into dead letters; now it is
    refused at submit, `weights_not_found` (`weights_unreadable`: there but not readable), also where the lookup itself
    fails (a 5000-character name: ENAMETOOLONG escaped as `os_error`, the path whole). A save killed mid-commit
    (its journal there, the config not yet renamed) passes: the load finishes it. `what`: the option it came from."""
    _refuse_hub_reference(path, what)
    try:
        _check_saved_model(Path(path), what)
    except OSError as exc:      # ENAMETOOLONG, ELOOP, EACCES on a folder above it (`lookup_error`)
        raise lookup_error(exc, what, path) from None


def _check_saved_model(given: Path, what: str) -> None:
    """`check_model_files` past the hub marker; a lookup's OSError left to it. Paths shown cut (`shown_path`)."""
    if not given.exists():
        raise WeightsNotFoundError(f"{what}: {shown_path(given)} does not exist ({_SAVED_FORMS})")
    cfg_path, weights_path = model_files(given)
    if given.is_file() and given.suffix not in (".safetensors", ".json"):
        raise WeightsNotFoundError(f"{what}: {shown_path(given)} is a file, not a saved model ({_SAVED_FORMS})")
    for needed in (weights_path, cfg_path):
        if needed == cfg_path and _staged_config(cfg_path):
            continue
        if not needed.is_file():
            # a live saver's commit may have removed the config after the look above and put it back since
            if needed == cfg_path and (_staged_config(cfg_path) or cfg_path.is_file()):
                continue
            state = "is not a file" if needed.exists() else "is missing"
            raise WeightsNotFoundError(f"{what}: {shown_path(needed)} {state} ({_SAVED_FORMS})")
        try:
            with open_regular(needed):      # a FIFO put there after the check: refused, not waited on
                pass
        except FileNotFoundError as exc:
            if needed == cfg_path and _staged_config(cfg_path):     # removed by a saver's commit since the look
                continue
            raise WeightsUnreadableError(f"{what}: {shown_path(needed)} cannot be read "
                                         f"({exc.strerror or exc})") from exc
        except OSError as exc:
            raise WeightsUnreadableError(f"{what}: {shown_path(needed)} cannot be read "
                                         f"({exc.strerror or exc})") from exc



def _staged_config(cfg_path: Path) -> bool:
    """`cfg_path` is missing and a save's journal stands for it (a saver mid-commit, or one killed there that the load
    finishes): what a submission passes. Looked at once, the config's absence and then the journal: a live saver's
    commit between a look that found the config and the open of it was `weights_not_found` ("is missing") or
    `weights_unreadable` ("No such file") at `sigma batch submit`, of a model being saved."""
    return not cfg_path.exists() and has_staged_set(cfg_path.parent, cfg_path.name)


def lock_wait_s() -> int:
    """How long a load or save of a saved model's folder waits for another process's hold on it
    (`$SIGMA_MODEL_LOCK_WAIT_S`, default 120 s): a live saver's commit or a live load holds it a moment; one stopped
    (Ctrl-Z, SIGSTOP) or hung (a stuck network write) while holding it kept every load and save there waiting for
    ever without a word — the kernel drops an flock when its holder dies, not when it stops."""
    return positive_int_env(ENV_LOCK_WAIT, DEFAULT_LOCK_WAIT_S, "how long a load or save of a saved model waits "
                            f"for another process's hold on its folder: {WAIT_RULE}", most=MAX_DURATION_S,
                            says_most=True)


@contextmanager
def _busy_as_error(action: str, wait_s: int) -> Iterator[None]:
    """A hold on the folder that outlasted `wait_s` (`FolderBusy`) as `weights_busy`: which folder, how long it
    waited, who holds it (best effort), what to do, and for a save what became of its files."""
    try:
        yield
    except FolderBusy as exc:
        raise WeightsBusyError(_busy_message(exc, action, wait_s)) from None


def _busy_message(exc: FolderBusy, action: str, wait_s: int) -> str:
    """One line for a person and a log (`sigma.folderlock.busy_message`: the folder, the wait, the holders, the
    remedy), and for a save what became of its files. A load's waits share one deadline (`_read_pair`), a save's
    too (`replace_together`): a wait refused with the rest of it is said as such (`held_for`)."""
    if exc.journal is not None:
        left = (f"; this save is staged whole (journal {exc.journal.name}) but not in place: the next save into the "
                "folder, or a load that finds its config gone, moves it into place")
    else:
        left = "; nothing of this save was written" if action.startswith("save") else ""
    held = held_for(exc, wait_s, "this load's" if action.startswith("load") else "this save's")
    return busy_message(exc, action, ENV_LOCK_WAIT, wait_s, ("saving", "loading"), "mid-save or mid-load", left,
                        held=held)


def _finish_save(cfg_path: Path, wait_s: int, left_s: float | None = None) -> None:
    """A save killed mid-commit (its journal written, the old config removed, the new one not yet renamed) left the
    folder without its config: the save is completed from its journal (`finish_replacements`), as the next save
    there would. Best effort: a folder that cannot be written (a read-only install) is read as it is; a folder
    another process holds for all of `wait_s` is `weights_busy` (it was swallowed as an OSError, and the load
    went on to wait again or to say no config was there). `left_s`: what is left of the load's wait (`wait_s`)."""
    try:
        with _busy_as_error("load the model from", wait_s):
            finish_replacements(cfg_path.parent, last=cfg_path.name, timeout_s=wait_s if left_s is None else left_s)
    except OSError:
        pass


def lock_deadline() -> float:
    """The instant (`time.monotonic()`) `lock_wait_s()` from now: one bound for the waits of several reads of one
    saved model (`read_config`, then `load_model`: training's `init_from`), passed to each as `deadline`."""
    return time.monotonic() + lock_wait_s()


def read_config(path: str | Path, *, deadline: float | None = None) -> SigmaNetConfig:
    """The SigmaNetConfig of a saved model, read under the folder's shared hold as `load_model` reads it
    (`_read_pair`); a save killed mid-commit there is finished first. It was read with no hold: a saver mid-commit
    (stopped there, or live: its config is missing between two renames) made `sigma train` with init_from say
    `weights_not_found` "no SigmaNet config", or a FileNotFoundError traceback, for a model being saved. `deadline`
    (`lock_deadline()`): its wait for the folder ends there, a bound shared with a `load_model` that follows;
    None: a bound of its own, `lock_wait_s()`."""
    return _read_pair(path, deadline, weights=False)[0]


def _read_saved(path: str | Path, finish: bool = True,
                deadline: float | None = None) -> tuple[SigmaNetConfig, bool]:
    """(config, whether the weights file holds the backbone). `finish`: a save killed mid-commit is completed first
    (`_finish_save`, waiting until `deadline`, or `lock_wait_s()` when None); False under `reading_lock`, where the
    exclusive lock it takes would wait on our own hold."""
    _refuse_hub_reference(path, "weights")
    cfg_path, _ = model_files(path)
    if finish and not cfg_path.is_file():
        _finish_save(cfg_path, lock_wait_s(), time_left(deadline))
    try:
        if not cfg_path.is_file():
            raise FileNotFoundError(cfg_path)
        with open_regular(cfg_path) as handle:       # a FIFO put there after the check: refused, not waited on
            data = load_json(handle.read())
    except FileNotFoundError:        # gone, or gone between the look and the open (a saver's commit)
        _refuse_mid_commit(cfg_path)
        raise WeightsNotFoundError(f"no SigmaNet config at {cfg_path} ({_SAVED_FORMS})") from None
    except NotRegularFile:
        raise WeightsNotFoundError(f"no SigmaNet config at {cfg_path}: not a regular file ({_SAVED_FORMS})") from None
    except ValueError as exc:
        raise ConfigError(f"{cfg_path}: not valid JSON ({exc})") from exc
    found = data.get("format") if isinstance(data, dict) else type(data).__name__
    if found != FORMAT or not isinstance(data.get("config"), dict):
        raise ConfigError(f"{cfg_path}: not a SigmaNet config (format {found!r}, want {FORMAT!r} with a "
                          "'config' object)")
    return make_config(data["config"]), bool(data.get("backbone_in_file", True))


def _refuse_mid_commit(cfg_path: Path) -> None:
    """`weights_busy` when `cfg_path` is missing because a live saver is mid-commit there (`staged_set_writers`: its
    journal is there, the old config removed, its own not yet renamed): the model is being saved, not missing. Said
    `weights_not_found` "no SigmaNet config" by every reader that looked without the folder's hold, or whose hold
    was not had (a folder flock refused: `reading_lock` is best effort), of a folder a stopped saver held."""
    writers = [pid for pid in staged_set_writers(cfg_path.parent, cfg_path.name) if pid != os.getpid()]
    if writers:
        who = ", ".join(f"pid {pid} (saving)" for pid in writers)
        raise WeightsBusyError(
            f"{cfg_path.parent}: cannot load the model from this folder: {who} is mid-commit of a save into it "
            f"(its {CONFIG_NAME} not yet in place) — running, or stopped (Ctrl-Z, SIGSTOP) or hung mid-save; "
            f"resume it (`fg`, `kill -CONT {' '.join(map(str, writers))}`) or let it finish, then try again")


def read_weights(path: str | Path, *, deadline: float | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a saved model's weights file, read under the folder's shared hold with its config, as
    `load_model` reads them (`_read_pair`), without building a network (`sigma.models.grow`)."""
    return cast(dict[str, torch.Tensor], _read_pair(path, deadline)[2])


def read_saved_meta(path: str | Path) -> tuple[SigmaNetConfig, bool]:
    """(config, whether the weights file holds the backbone) of a saved model, its config.json read alone (no tensor,
    no lock, no save finished): what a fleet submission asks to know whether a load would resolve the backbone
    (`ModelAnnotatorConfig.check_files`). Raises as `read_config`."""
    return _read_saved(path, finish=False)


def _read_pair(path: str | Path, deadline: float | None = None,
               weights: bool = True) -> tuple[SigmaNetConfig, bool, dict[str, torch.Tensor] | None]:
    """(config, backbone in file, weights) of one save: both files read under a shared flock on their folder
    (`reading_lock`), so a live `save_model` there (whose renames hold it exclusively) commits before or after the
    two reads, never between them — a load gave one saver's config with another's weights, or found the config gone
    mid-commit (`weights_not_found`). A save killed mid-commit is finished first, outside the hold (finishing takes
    the exclusive lock: inside the shared hold it would wait on this process for good). A hold that outlasts
    `lock_wait_s()` (a saver stopped mid-commit) is `weights_busy`, not a load that waits for ever. The finish and
    the shared hold wait against one deadline, `lock_wait_s()` from the load's start: each had the whole bound, and
    a load that finished a killed save late in its wait then waited for the hold again, up to twice the bound — past
    a fleet worker's watchdog set just above it (`sigma.service.fleet.check_batch_timeout`). `deadline`: a caller's
    (`lock_deadline()`, shared with its `read_config` before), instead of one from here. `weights=False`: the config
    alone (`read_config`), its weights None."""
    _refuse_hub_reference(path, "weights")
    cfg_path, weights_path = model_files(path)
    wait_s = lock_wait_s()
    deadline = time.monotonic() + wait_s if deadline is None else deadline
    if not cfg_path.is_file():
        _finish_save(cfg_path, wait_s, time_left(deadline))
    with _busy_as_error("load the model from", wait_s), reading_lock(cfg_path.parent, time_left(deadline)):
        cfg, backbone_in_file = _read_saved(path, finish=False)
        if not weights:
            return cfg, backbone_in_file, None
        if not weights_path.is_file():
            raise WeightsNotFoundError(f"SigmaNet weights not found: {weights_path} (config at {cfg_path})")
        return cfg, backbone_in_file, load_safetensors(weights_path)


def load_model(path: str | Path, *, map_location: str | torch.device = "cpu", allow_download: bool = False,
               backbone_weights: str | None = None, deadline: float | None = None) -> SigmaNet:
    """Strict load. A file saved without its frozen backbone gets it from `backbone_weights` or the
    config's `backbone.weights`, through the usual resolution order. `deadline` (`lock_deadline()`): its waits for
    the folder end there, a bound shared with a `read_config` before it; None: `lock_wait_s()` from here."""
    cfg, backbone_in_file, read = _read_pair(path, deadline)
    state = cast(dict[str, torch.Tensor], read)
    _, weights_path = model_files(path)
    if backbone_in_file:
        # checked against a skeleton on the meta device first: a config.json that disagrees with its weights
        # (widths of 50000) allocated the network it describes — 20 GB, a MemoryError traceback or the OOM
        # killer — before the shapes were compared
        with torch.device("meta"):
            skeleton = _net(cfg, pretrained=False)
        check_state(skeleton, state, f"SigmaNet at {weights_path}")
        model = _net(cfg, pretrained=False)
    else:
        if backbone_weights:
            cfg = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"weights": backbone_weights})})
        model = _net(cfg, pretrained=True, allow_download=allow_download)
        state = {**{k: v for k, v in model.state_dict().items() if k.startswith(BACKBONE_PREFIX)}, **state}
    strict_load(model, state, f"SigmaNet at {weights_path}")
    return model.to(map_location)
