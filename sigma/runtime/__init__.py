"""How a SigmaNet is executed: eager torch (NCHW or channels-last) or ONNX Runtime, chosen once.

`choose_runtime` is the decision as a pure function (tested directly); `build_runner` applies it to a
loaded model and returns the one callable every model annotator's forward goes through, so
`sigma annotate`, `sigma eval`, `sigma batch run` and `sigma worker` all get the same runtime.

Decision (`runtime: auto`):
  * CUDA → torch, always (bf16 autocast; ONNX Runtime's CPU provider would be slower, and the GPU path
    stays exactly as it was);
  * CPU with onnxruntime installed and trained weights → ONNX Runtime, exporting the graph once per
    weights/version key (cached; see `sigma.runtime.ort_graph`); a model that does not export, or whose
    graph disagrees with torch by more than 1e-4, runs on torch after one warning;
  * otherwise (onnxruntime missing, `random_init` heads) → torch, channels-last on the CPU.
`runtime: onnxruntime` insists: a missing package is a one-line error naming the extra.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

from sigma.errors import ConfigError

Runtime = Literal["auto", "torch", "onnxruntime"]
EXTRA = "sigma-masks[onnx]"
#: how a runner's `reason` starts when ONNX Runtime was chosen but its graph could not be had (`sigma models --prepare`
#: then fails)
FALLBACK = "fallback: "


class MissingRuntimeError(ConfigError):
    code = "missing_dependency"


def onnxruntime_installed() -> bool:
    """Importable, not merely present (a broken install, or one blocked in sys.modules, counts as absent)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Choice:
    runtime: Literal["torch", "onnxruntime"]
    reason: str


def choose_runtime(requested: Runtime, device_type: str, *, ort_installed: bool, trained: bool) -> Choice:
    """Which runtime runs the network. Pure: every input is an argument."""
    if requested == "torch":
        return Choice("torch", "runtime=torch")
    if device_type != "cpu":
        if requested == "onnxruntime":
            raise ConfigError(f"runtime=onnxruntime runs on the CPU only; the device is {device_type} "
                              "(use runtime=auto or torch there, or device=cpu)")
        return Choice("torch", f"{device_type}: torch (bf16 autocast), never ONNX Runtime")
    if requested == "onnxruntime":
        if not ort_installed:
            raise MissingRuntimeError(f"runtime=onnxruntime needs the onnxruntime package, which is not "
                                      f"installed: pip install '{EXTRA}' (or use runtime=auto / torch)")
        return Choice("onnxruntime", "runtime=onnxruntime")
    if not ort_installed:
        return Choice("torch", f"onnxruntime is not installed (pip install '{EXTRA}' for ~2x on the CPU)")
    if not trained:
        return Choice("torch", "random_init heads: not worth an export")
    return Choice("onnxruntime", "cpu + onnxruntime installed")


@dataclass
class RuntimeOptions:
    runtime: Runtime = "auto"
    channels_last: bool | None = None    # None: on for the CPU torch path, off on CUDA
    cpu_threads: int | None = None
    build_graph: bool = True             # auto may export now; False: a cached graph or torch (a few pairs)


def build_runner(model, options: RuntimeOptions, *, device, use_bf16: bool, trained: bool, label: str,
                 working: tuple[int, int] | None = None):
    """The runner for a loaded, eval-mode model already on `device`. `working` is the fixed working size
    of a non-keep-aspect model (its graph is exported at that size)."""
    from sigma.runtime.runners import OrtRunner, TorchRunner

    choice = choose_runtime(options.runtime, device.type, ort_installed=onnxruntime_installed(),
                            trained=trained)
    channels_last = options.channels_last if options.channels_last is not None else device.type == "cpu"
    if choice.runtime == "torch":
        return TorchRunner(model, device, use_bf16, channels_last, reason=choice.reason)
    from sigma.runtime.cache import cache_root
    from sigma.runtime.ort_graph import GraphUnavailable, NotBuilt, ensure_graph

    try:   # export before TorchRunner converts the weights to channels-last
        session, graph = ensure_graph(model, label, working, options.cpu_threads,
                                      honour_failure=options.runtime == "auto",
                                      build=options.build_graph or options.runtime == "onnxruntime")
    except NotBuilt as exc:
        return TorchRunner(model, device, use_bf16, channels_last, reason=f"torch until then: {exc}")
    except (GraphUnavailable, OSError) as exc:
        why = str(exc) if isinstance(exc, GraphUnavailable) else (
            f"the graph cache {cache_root()} is not usable ({exc.__class__.__name__}: {exc}); set "
            "SIGMA_CACHE_DIR to a writable folder")
        warnings.warn(f"sigma: {label} runs on torch instead of ONNX Runtime: {why}", RuntimeWarning,
                      stacklevel=2)
        return TorchRunner(model, device, use_bf16, channels_last, reason=f"{FALLBACK}{why}")
    info: dict[str, Any] = {"graph": str(graph.path), "max_abs_diff": graph.manifest.get("max_abs_diff"),
                            "cached": not graph.built, "threads": options.cpu_threads or "onnxruntime default",
                            "reason": choice.reason}
    return OrtRunner(session, TorchRunner(model, device, use_bf16, channels_last, reason="grounded regions"),
                     info)


__all__ = ["FALLBACK", "Choice", "MissingRuntimeError", "RuntimeOptions", "build_runner", "choose_runtime",
           "onnxruntime_installed"]
