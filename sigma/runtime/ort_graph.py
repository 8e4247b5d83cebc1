"""A SigmaNet as an ONNX Runtime session: exported once from the loaded weights, verified, cached.

Export uses `torch.onnx.export(..., dynamo=True)` (the TorchScript exporter cannot trace the refinement's
adaptive pooling to a size that depends on the input). Keep-aspect models (sigma-lite) get one graph
with dynamic batch, height and width, so every working size shares it; fixed-size models (DINOv2, 518²)
get a graph with only the batch dynamic. The graph takes `(original, edited, prior, edit_type)` and
returns the logits: grounded regions are a variable-length structure the graph does not take (the
caller runs torch for batches that have them).

The cache key is the sha256 of the fields below — the weights as loaded (after BatchNorm folding), the
architecture, the network's source code, the package, torch and onnxruntime versions, the shape mode — so
new weights, new code, a new release or a new runtime never reuse an old graph; every load also re-checks
the graph against torch on one small probe (milliseconds) before trusting it. A build is checked against torch
on fixed inputs (max |Δ logit| ≤ `TOLERANCE`); a graph that fails is never cached as good: a `.failed.json`
marker records why, so the next process falls back at once instead of exporting again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sigma.runtime.cache import (
    cache_root,
    entry_is_valid,
    entry_lock,
    key_digest,
    read_manifest,
    temp_path_beside,
)
from sigma.tempfiles import replace_atomically, sweep_dead_writers_of

log = logging.getLogger("sigma.runtime")

FORMAT_VERSION = 1          # bump when the graph's inputs/outputs or the export recipe change
TOLERANCE = 1e-4
KEEP_PER_LABEL = 4          # graphs kept per model name (newest first): new weights must not fill the disk
INPUT_NAMES = ("original", "edited", "prior", "edit_type")


class NotBuilt(Exception):
    """No cached graph, and the caller asked not to export one now."""


class GraphUnavailable(RuntimeError):
    """The model could not be exported, or its graph disagrees with torch: run it with torch instead."""


class LogitsOnly(nn.Module):
    """The exported signature: tensors in, logits out (no optional arguments, no dataclass output)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, original: torch.Tensor, edited: torch.Tensor, prior: torch.Tensor,
                edit_type: torch.Tensor) -> torch.Tensor:
        return self.net(original, edited, prior=prior, edit_type=edit_type).logits


def weights_digest(model: nn.Module) -> str:
    """sha256 over every tensor of the model as it will run (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def shape_mode(model: nn.Module, working: tuple[int, int] | None) -> dict[str, Any]:
    """Dynamic H/W for keep-aspect models; one fixed working size otherwise."""
    if model.config.keep_aspect or working is None:
        return {"hw": "dynamic", "multiple": model.config.size_multiple}
    return {"hw": list(working), "multiple": model.config.size_multiple}


def model_code_digest() -> str:
    """sha256 of the network's source (sigma/models/*.py): a change to the forward with the same weights and
    version number (a developer's checkout) must not reuse a graph traced from the old code."""
    import sigma.models

    h = hashlib.sha256()
    for path in sorted(Path(sigma.models.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def key_fields(model: nn.Module, shapes: dict[str, Any], ort_version: str) -> dict[str, Any]:
    from sigma.version import __version__

    return {"format": FORMAT_VERSION, "sigma": __version__, "torch": torch.__version__,
            "onnxruntime": ort_version, "weights_sha256": weights_digest(model), "model_code": model_code_digest(),
            "architecture": model.config.model_dump(mode="json"), "shapes": shapes}


def _sample_inputs(batch: int, hw: tuple[int, int], seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    original = torch.rand(batch, 3, h, w, generator=g)
    edited = original.clone()
    edited[:, :, h // 4:h // 2, w // 3:2 * w // 3] = torch.rand(batch, 3, h // 2 - h // 4,
                                                                 2 * w // 3 - w // 3, generator=g)
    prior = torch.rand(batch, 1, h, w, generator=g)
    edit_type = torch.randint(0, 7, (batch,), generator=g)
    return original, edited, prior, edit_type


def _probe_shapes(shapes: dict[str, Any]) -> list[tuple[int, tuple[int, int]]]:
    """(batch, hw) inputs for export and verification: batch 2 and distinct sides (export would
    specialise a dimension whose example value is 1, or two that are equal); verification adds a
    batch of 1 at a transposed aspect, so the dynamic graph is checked off its trace."""
    m = shapes["multiple"]
    if shapes["hw"] == "dynamic":
        return [(2, (4 * m, 6 * m)), (1, (5 * m, 3 * m))]
    hw = tuple(shapes["hw"])
    return [(2, hw), (1, hw)]


def export_graph(model: nn.Module, shapes: dict[str, Any], path: Path) -> None:
    """torch.onnx.export(dynamo=True) of `model` to `path` (the caller picks a temporary name)."""
    wrapper = LogitsOnly(model).eval()
    batch, hw = _probe_shapes(shapes)[0]
    example = _sample_inputs(batch, hw, seed=0)
    dim_b = torch.export.Dim("batch", min=1, max=4096)
    if shapes["hw"] == "dynamic":
        img = {0: dim_b, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    else:
        img = {0: dim_b}
    dynamic = (img, img, img, {0: dim_b})
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=dynamic,
                                    input_names=list(INPUT_NAMES), output_names=["logits"], verbose=False)
    program.save(str(path))


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's own warnings and log lines (torchvision ops skipped, constant folding skipped, ...)
    are about its internals, not the user's pair: hide them during the export only."""
    names = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo", "torch._export",
             "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def make_session(path: Path, threads: int | None):
    """An ORT session on `path`; its intra-op threads as `ort_threads_with_room` says, which under an address-space
    limit checks the room for them first: ORT hangs for ever when a thread of its pool is refused."""
    import onnxruntime as ort

    from sigma.runtime.threads import ort_threads_with_room

    threads = ort_threads_with_room(threads)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3          # errors only: ORT's warnings about unused initialisers are noise
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_session(session, original, edited, prior, edit_type) -> np.ndarray:
    feed = {"original": np.ascontiguousarray(original, dtype=np.float32),
            "edited": np.ascontiguousarray(edited, dtype=np.float32),
            "prior": np.ascontiguousarray(prior, dtype=np.float32),
            "edit_type": np.ascontiguousarray(edit_type, dtype=np.int64)}
    return session.run(["logits"], feed)[0]


def references(model: nn.Module, shapes: dict[str, Any], quick: bool = False) -> list[tuple[tuple, np.ndarray]]:
    """(probe inputs, torch's logits) for `verify` (`quick`: the smallest probe only, the check every load of a
    cached graph makes). Apart from the session's side, so that torch failing here (oneDNN's "could not create a
    primitive" under a low `ulimit -v`) is never taken for a fault of the cached graph."""
    wrapper = LogitsOnly(model).eval()
    probes = _probe_shapes(shapes)
    out = []
    for i, (batch, hw) in enumerate(probes[-1:] if quick else probes):
        x = _sample_inputs(batch, hw, seed=100 + i)
        with torch.inference_mode():
            out.append((x, wrapper(*x).float().numpy()))
    return out


def verify(model: nn.Module, session, shapes: dict[str, Any], quick: bool = False,
           refs: list[tuple[tuple, np.ndarray]] | None = None) -> float:
    """max |Δ logit| between torch and the session over the probe inputs (`quick`: the smallest one only,
    the check every load of a cached graph makes; `refs`: `references` already computed)."""
    worst = 0.0
    for x, ref in refs if refs is not None else references(model, shapes, quick):
        got = run_session(session, *(t.numpy() for t in x))
        if got.shape != ref.shape:
            raise GraphUnavailable(f"ONNX graph returned {got.shape}, torch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


@dataclass
class CachedGraph:
    path: Path
    manifest: dict[str, Any]
    built: bool            # True when this call exported it (False: loaded from the cache)


def graph_paths(label: str, key: str, root: Path | None = None) -> tuple[Path, Path, Path, Path]:
    """(graph, manifest, lock, failure marker) for an entry."""
    folder = (root or cache_root()) / "onnx"
    stem = f"{label}-{key[:24]}"
    return (folder / f"{stem}.onnx", folder / f"{stem}.json", folder / f"{stem}.lock",
            folder / f"{stem}.failed.json")


def ensure_graph(model: nn.Module, label: str, working: tuple[int, int] | None, threads: int | None, *,
                 honour_failure: bool = True, root: Path | None = None, build: bool = True):
    """Return (session, CachedGraph): from a valid cache entry, else exported, verified and cached
    (`build=False`: NotBuilt instead of an export, for callers with too few pairs to pay for one).

    Raises GraphUnavailable when the model does not export or disagrees with torch (and records it),
    or when a recorded failure for this key exists and `honour_failure` is set."""
    import onnxruntime as ort

    shapes = shape_mode(model, working)
    fields = key_fields(model, shapes, ort.__version__)
    key = key_digest(fields)
    graph, manifest_path, lock, failed = graph_paths(label, key, root)
    reason = _cached_failure(failed, key) if honour_failure else None
    if reason:
        raise GraphUnavailable(f"{reason} (recorded in {failed}; delete it to retry)")
    loaded = _load_valid(model, shapes, graph, manifest_path, key, threads)
    if loaded:
        return loaded
    if not build:
        raise NotBuilt("no ONNX graph cached for these weights yet (any sigma eval / batch / worker run, or "
                       "`sigma models --prepare`, builds it once)")
    with entry_lock(lock):
        loaded = _load_valid(model, shapes, graph, manifest_path, key, threads)   # another process may have built it
        if loaded:
            return loaded
        # what builders of this entry killed mid-write (SIGKILL, the OOM killer) left: nothing swept the cache
        # folder, so each kill during an export kept its temporary graph (up to the graph's size) for good. Only
        # this entry's names, only writers whose pid is no live process here (a live builder of another process
        # waits on this lock or writes another entry)
        sweep_dead_writers_of(graph.parent, names={graph.name, manifest_path.name, failed.name})
        return _build(model, label, shapes, fields, key, graph, manifest_path, failed, threads)


def _cached_failure(failed: Path, key: str) -> str | None:
    data = read_manifest(failed)
    if data and data.get("key") == key:
        return str(data.get("reason", "an earlier build failed"))
    return None


def _load_valid(model: nn.Module, shapes: dict[str, Any], graph: Path, manifest_path: Path, key: str,
                threads: int | None):
    """The cached session when the entry is complete, intact, for this key, and still agrees with torch on
    a small probe (milliseconds); None (rebuild) otherwise."""
    if not graph.exists() and not manifest_path.exists():
        return None
    manifest = read_manifest(manifest_path)
    problem = entry_is_valid(graph, manifest, key)
    if problem is None:
        refs = references(model, shapes, quick=True)    # torch's side: its failure is no fault of the graph
        try:
            session = make_session(graph, threads)
            delta = verify(model, session, shapes, quick=True, refs=refs)
        except Exception as exc:  # noqa: BLE001 - a file ORT cannot load or run is as bad as a corrupt one
            _unless_memory_refused(exc, f"loading the cached ONNX graph {graph.name}", "the graph is kept")
            problem = f"onnxruntime cannot load or run it ({exc.__class__.__name__})"
        else:
            if delta <= TOLERANCE:
                return session, CachedGraph(graph, manifest, built=False)
            problem = f"it differs from torch by {delta:.2e} on the load-time probe"
    log.warning("sigma: cached ONNX graph %s is unusable: %s; rebuilding it", graph.name, problem)
    return None


def _build(model, label, shapes, fields, key, graph, manifest_path, failed, threads):
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it; say so before a long trace
    except ImportError as exc:
        raise GraphUnavailable("exporting needs the onnx and onnxscript packages: "
                               "pip install 'sigma-masks[onnx]'") from exc
    log.warning("sigma: building the ONNX Runtime graph of %s once (tens of seconds); cached in %s",
                label, graph.parent)
    start = time.perf_counter()
    tmp = temp_path_beside(graph)
    try:
        try:
            export_graph(model, shapes, tmp)
            session = make_session(tmp, threads)
            delta = verify(model, session, shapes)
        except GraphUnavailable as exc:
            _record_failure(failed, key, str(exc))
            raise
        except OSError:
            # the disk said no while the graph was written (full, a quota, `ulimit -f`, read-only, EIO): a fault of
            # the cache, not of the model. Recorded as "does not export", every later process ran torch until
            # someone deleted the marker, space long back; unrecorded, `build_runner` says the cache is not usable
            # and the next process exports again
            raise
        except Exception as exc:  # any exporter/runtime failure means: run torch
            _unless_memory_refused(exc, f"exporting the ONNX graph of {label}", "nothing was recorded against it")
            msg = f"{label} does not export to ONNX ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})"
            _record_failure(failed, key, msg)
            raise GraphUnavailable(msg) from exc
        if not delta <= TOLERANCE:
            msg = f"ONNX graph of {label} differs from torch by {delta:.2e} > {TOLERANCE:.0e}"
            _record_failure(failed, key, msg)
            raise GraphUnavailable(msg)
        from sigma.digest import sha256_file

        manifest = {**fields, "key": key, "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size,
                    "max_abs_diff": delta, "tolerance": TOLERANCE, "export_s": round(time.perf_counter() - start, 2),
                    "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.replace(tmp, graph)
        replace_atomically(manifest_path, json.dumps(manifest, indent=1).encode(), durable=True)
    finally:
        if tmp.exists():
            tmp.unlink()
    if failed.exists():
        failed.unlink(missing_ok=True)
    prune(graph.parent, label, keep=KEEP_PER_LABEL)
    # the session was made from the temporary name, which is the same bytes: reuse it
    return session, CachedGraph(graph, manifest, built=True)


def prune(folder: Path, label: str, keep: int) -> list[Path]:
    """Delete all but the `keep` newest graphs (and their manifests) of `label`. A process still using a
    deleted graph is unaffected (its session holds the model in memory)."""
    prefix = f"{label}-"
    graphs = [p for p in folder.glob(f"{prefix}*.onnx") if "-" not in p.stem[len(prefix):]]  # not "label-x-..."
    graphs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for old in graphs[keep:]:
        for p in (old, old.with_suffix(".json"), old.with_suffix(".lock")):
            p.unlink(missing_ok=True)
        removed.append(old)
    return removed


def _unless_memory_refused(exc: BaseException, doing: str, kept: str) -> None:
    """OutOfMemoryError when the system refused memory to `exc`'s work (`memory_refusal`: ONNX Runtime's
    `std::bad_alloc`, torch's `can't allocate memory`, a MemoryError), else nothing. Under a low `ulimit -v` a good
    cached graph was declared "unusable ... rebuilding it" (`Fail`), and an export refused memory was recorded as
    "does not export", so every later run went on torch until someone deleted the marker: the machine's shortage,
    said as the cache's or the model's fault. `kept` says what was left as it was."""
    from sigma.errors import OutOfMemoryError, memory_refusal, no_memory

    if isinstance(exc, OutOfMemoryError):      # already said (the room for ORT's threads): not said twice
        raise exc
    refused = memory_refusal(exc)
    if refused:
        raise OutOfMemoryError(f"{doing}: {no_memory(refused[:300])}; not the graph's fault ({kept}): raise the limit "
                               "(`ulimit -v`, the container's memory) or run with less") from exc


def _record_failure(failed: Path, key: str, reason: str) -> None:
    try:
        replace_atomically(failed, json.dumps({"key": key, "reason": reason,
                                               "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode(),
                           durable=True)
    except OSError:          # a read-only cache must not turn a fallback into a crash
        pass
