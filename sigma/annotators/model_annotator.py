"""The SigmaNet annotators: `sigma-lite`, `sigma-b`, `sigma-s` (device, batching, resizing: `torch_base.py`).

Per batch: parse + ground each pair (when configured), run the network at each pair's working size, then
the per-pair extras (parse, prior flag, confidence, intended/side-effect split).

Working size: sigma-lite keeps the aspect ratio (both sides multiples of 32) and runs each pair at its own
resolution up to a long side of 512 (the preset's `image_size` is a cap; `options.image_size` moves it).
The model is trained on undistorted crops, so squashing a 2:1 photo into a square would halve every
object's width and show it shapes it never saw; keeping aspect costs only that pairs of different shapes
batch apart. Why 512 and not the native resolution of large pairs: below 512 resolution pays (the synthetic
native-resolution check, `scripts/write_hires_check.py`: 448 px pairs at 224 / 320 / 448 px score 78.9 /
82.3 / 84.1 F1), above it the gain is gone while the cost grows with the pixels (docs/training.md,
"Resolution"). The DINOv2 models use the paper's fixed 518x518 square.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from sigma.annotators.base import Prediction
from sigma.annotators.guidance import Guidance, Guide, normalised_regions, resized_prior
from sigma.annotators.mask_extras import confidence, split_components
from sigma.annotators.torch_base import TorchAnnotator, TorchAnnotatorConfig
from sigma.config.schema import MAX_WORKING_SIZE, errors_placed
from sigma.errors import WeightsNotFoundError
from sigma.registry import ANNOTATORS, registered
from sigma.types import Pair

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def _preset_names() -> list[str]:
    from sigma.models.presets import preset_names

    return preset_names()


class ModelAnnotatorConfig(TorchAnnotatorConfig):
    model: Annotated[str | None, registered(_preset_names)] = Field(
        None, description="model preset name; None = the annotator's own")
    weights: str | None = Field(None, description="trained SigmaNet: a save_model folder or X.safetensors "
                                "beside X.json; None = the weights embedded in the package")
    backbone_weights: str | None = Field(None, description="DINOv2 weights (local path or HF repo id) for "
                                         "random_init=true and for trained files saved without their frozen "
                                         "backbone")
    allow_download: bool = Field(False, description="let a missing backbone be downloaded from the Hub")
    random_init: bool = Field(False, description="explicit opt-in to random heads: tests and training only")
    runtime: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="what runs the network: auto = ONNX Runtime on the CPU when installed and the "
        "model exports (graph built once, verified, cached; ~2x), torch otherwise and always on CUDA")
    channels_last: bool | None = Field(None, description="torch path: NHWC weights and inputs; None = on "
                                       "for the CPU (~1.6x), off on CUDA")
    build_graph: bool = Field(True, description="runtime=auto may export the ONNX graph now when none is cached "
                              "(tens of seconds, once per machine and weights); false: use a cached graph, else "
                              "torch — what `sigma annotate` does for a handful of pairs, where the export would "
                              "cost more than it saves")
    tta: Literal["none", "flip"] = Field("none", description="flip: average the logits of the pair and of its "
                                         "mirror (2x the network time; sigma.runtime.tta). Off by default: on "
                                         "the shipped file's check sets it gains on VAE-regenerated pairs "
                                         "(+0.9 F1) and loses on box-sized inpaints (-0.8), docs/training.md")
    fuse_batchnorm: bool = Field(True, description="fold BatchNorm into the convolutions (inference only)")
    image_size: int | None = Field(None, ge=28, le=MAX_WORKING_SIZE, description="working size cap (long "
                                     "side); None = the model's (sigma-lite: 512; pairs below it run at their "
                                     "own size)")
    upscale: bool = Field(False, description="enlarge pairs smaller than the working size (keep-aspect "
                          "models); off: small pairs run at their own size, rounded to the size multiple")
    parser: str | None = Field("rules", description="instruction parser backend; None = ignore instructions")
    grounding: str = Field("none", description="grounding backend; none = uninformative prior")
    grounding_options: dict[str, Any] = Field(default_factory=dict)
    intended_overlap: float = Field(0.1, ge=0.0, le=1.0, description="a mask component is intended when "
                                    "this fraction of it lies where the prior is >= 0.5")
    max_components: int = Field(64, ge=0)

    @model_validator(mode="after")
    def _grounding_options_are_a_grounding_config(self) -> ModelAnnotatorConfig:
        """Checked with the rest, not when the grounder is built: a batch submitted through the API is
        validated here without loading anything, and a bad (or huge: a 10^6 px detector size) grounding
        option would otherwise reach the worker."""
        from sigma.grounding.config import GroundingConfig

        data = {k: v for k, v in self.grounding_options.items() if not k.endswith("_obj")}   # handed-in models
        try:
            GroundingConfig(**{"backend": self.grounding, **data})   # as build_grounder merges them
        except ValidationError as exc:
            # placed where they were written: `options.detector.box_threshold` named no key a user had set
            errors = errors_placed(exc, "grounding_options")
            for error in errors:
                if error["loc"][1:2] == ("backend",):
                    error["loc"] = ("grounding", *error["loc"][2:])
            raise ValidationError.from_exception_data(type(self).__name__, errors) from None
        return self

    def check_files(self, annotator: str | None = None) -> None:
        """The saved model `weights` names is there, of the form `load_model` opens, readable; nothing read
        (`sigma.models.factory.check_model_files`). Called at a fleet submission (`sigma.registry
        .check_annotator_files`): a missing file was found only by the workers, every shard dead-lettered. So are
        `backbone_weights` when a load reads it and the grounding checkpoints (`check_weights_reference`): a
        missing path there was queued too. `annotator`: the registered name, whose preset says the backbone."""
        if self.weights:
            from sigma.models.factory import check_model_files

            check_model_files(self.weights, "options.weights")
        if self.backbone_weights and (needs_config := self._backbone_read(annotator)) is not None:
            from sigma.models.weights import check_weights_reference

            check_weights_reference(self.backbone_weights, "options.backbone_weights", files=(".safetensors",),
                                    config_beside=needs_config)
        check_grounding_files(self.grounding, self.grounding_options)

    def _backbone_read(self, annotator: str | None) -> bool | None:
        """Whether a load reads `backbone_weights` (None: it does not), and if so whether it needs the DINOv2
        architecture beside a bare file (True) or has it from the saved config (False). Read by a heads-only saved
        file (`backbone_in_file` false in its config.json) and by random_init on a DINOv2 preset; ignored beside a
        file that holds its backbone, which a worker loads whatever the option says, so it is not refused."""
        preset = self.model or _ANNOTATOR_PRESETS.get(annotator or "")
        saved = Path(self.weights) if self.weights else \
            (embedded_weights(preset) if preset and embedded_status(preset) else None)
        if saved is not None:
            from sigma.errors import SigmaError
            from sigma.models.factory import read_saved_meta

            try:
                mcfg, in_file = read_saved_meta(saved)
            except SigmaError:       # a config the load refuses on its own (check_model_files passed its files)
                return None
            backbone = mcfg.backbone
            return None if in_file or getattr(backbone, "kind", "") != "dinov2" else backbone.hf_config is None
        if self.random_init and preset:
            from sigma.models import preset_config

            return True if getattr(preset_config(preset).backbone, "kind", "") == "dinov2" else None
        return None


def embedded_weights(preset: str) -> Path | None:
    """The file the preset's pretrained config ships in the package (None: it ships none)."""
    from sigma.models.presets import PRETRAINED

    entry = PRETRAINED.get(preset)
    return WEIGHTS_DIR / entry.file if entry is not None and entry.file else None


def embedded_status(preset: str) -> str | None:
    path = embedded_weights(preset)
    if path is not None and path.is_file() and path.with_suffix(".json").is_file():
        return f"embedded (sigma/weights/{path.name})"
    return None


def verify_embedded(preset: str, path: Path) -> None:
    """The shipped file must be the one its pretrained config names: a corrupt or swapped file is refused."""
    from sigma.models.presets import PRETRAINED
    from sigma.models.weights import WeightsMismatchError, file_sha256

    expected = PRETRAINED[preset].sha256
    if expected is not None and file_sha256(path) != expected:
        raise WeightsMismatchError(
            f"{path}: sha256 {file_sha256(path)[:16]}… is not the {preset} weights this release ships "
            f"({expected[:16]}…): the install is corrupt or the file was replaced. Reinstall, or pass "
            "options.weights=PATH to run another file on purpose")


def trained_weights_file(cfg: ModelAnnotatorConfig, preset: str) -> Path | None:
    """The `.safetensors` file a config loads (options.weights > the embedded file), without loading it;
    None when it would run random heads or has nothing to load."""
    from sigma.models.factory import model_files

    if cfg.weights:
        return model_files(cfg.weights)[1]
    if embedded_status(preset):
        return embedded_weights(preset)
    return None


def weights_digest(cfg: ModelAnnotatorConfig, preset: str) -> str | None:
    from sigma.models.weights import file_sha256

    path = trained_weights_file(cfg, preset)
    return file_sha256(path) if path is not None and path.is_file() else None


def backbone_status(ref: str) -> str:
    from sigma.models.weights import resolve_hf_reference

    try:
        res = resolve_hf_reference(ref)
    except WeightsNotFoundError:
        return f"backbone {ref}: missing (not a local path, not in the Hugging Face cache)"
    except Exception as exc:  # noqa: BLE001 - a status line must never raise
        return f"backbone {ref}: unknown ({exc.__class__.__name__})"
    return f"backbone {ref}: found at {res.location}"


def working_size(h: int, w: int, size: int, multiple: int, keep_aspect: bool, upscale: bool) -> tuple[int, int]:
    def snap(v: float) -> int:
        return max(multiple, round(v / multiple) * multiple)

    if not keep_aspect:
        return snap(size), snap(size)
    long_side = max(h, w)
    target = size if (upscale or long_side > size) else long_side
    scale = target / long_side
    return snap(h * scale), snap(w * scale)


class SigmaAnnotator(TorchAnnotator):
    """Subclasses set `name` and `preset`; everything else is shared."""

    name: ClassVar[str] = "sigma"
    preset: ClassVar[str] = "sigma-lite"
    config_cls = ModelAnnotatorConfig
    default_mask_mode: ClassVar[str | None] = "auto"   # the footprint on composites (sigma.annotators.footprint)

    def __init__(self, config: ModelAnnotatorConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        cfg: ModelAnnotatorConfig = self.config
        self.model, self.weights_source = self._load_model(cfg)
        self.weights_sha256 = weights_digest(cfg, cfg.model or self.preset)
        self.model.eval()
        if cfg.fuse_batchnorm:
            from sigma.models.fuse import fuse_batchnorm

            fuse_batchnorm(self.model)
        self._setup_runtime()
        self.model.to(self.device)   # NHWC weights on CPUs: the runner's choice (options.channels_last)
        mcfg = self.model.config
        self.size = cfg.image_size or mcfg.image_size
        self.multiple = mcfg.size_multiple
        self.keep_aspect = mcfg.keep_aspect
        self.guide = Guide(cfg.parser, cfg.grounding, cfg.grounding_options)
        from sigma.runtime import RuntimeOptions, build_runner

        self.runner = build_runner(
            self.model, RuntimeOptions(cfg.runtime, cfg.channels_last, cfg.cpu_threads, cfg.build_graph),
            device=self.device, use_bf16=self.use_bf16, trained=not self.weights_source.startswith("random_init"),
            label=cfg.model or self.preset,
            working=None if self.keep_aspect else working_size(self.size, self.size, self.size, self.multiple,
                                                               False, cfg.upscale))
        if cfg.tta == "flip":
            from sigma.runtime.tta import FlipAveraged

            self.runner = FlipAveraged(self.runner)

    def _load_model(self, cfg: ModelAnnotatorConfig):
        """Trained weights: explicit path > embedded file; random heads only with random_init=true."""
        from sigma.models import build_model, load_model, preset_config

        preset = cfg.model or self.preset
        looked = []
        def load(path):   # a heads-only file resolves its frozen backbone (backbone_weights > its config)
            return load_model(path, allow_download=cfg.allow_download, backbone_weights=cfg.backbone_weights)

        if cfg.weights:
            return load(cfg.weights), f"file {cfg.weights}"
        looked.append("options.weights (not set)")
        embedded = embedded_weights(preset)
        if embedded is not None and embedded_status(preset):
            verify_embedded(preset, embedded)
            return load(embedded), f"embedded {embedded.name}"
        looked.append(f"embedded {embedded} + {embedded.with_suffix('.json').name} (not in this install)"
                      if embedded is not None else f"embedded weights (preset {preset!r} ships none)")
        if cfg.random_init:
            mcfg = preset_config(preset)
            if cfg.backbone_weights and getattr(mcfg.backbone, "kind", "") == "dinov2":
                mcfg = mcfg.model_copy(update={"backbone": mcfg.backbone.model_copy(
                    update={"weights": cfg.backbone_weights, "hf_config": None})})
            model = build_model(mcfg, pretrained=bool(cfg.backbone_weights), allow_download=cfg.allow_download)
            return model, "random_init (explicit opt-in)"
        raise WeightsNotFoundError(
            f"{self.name}: no trained weights for model {preset!r}. Looked at: " + "; ".join(looked) + ". "
            "Pass --set options.weights=PATH (a folder written by sigma.models.save_model, or X.safetensors "
            "beside X.json), train one (see docs/training.md), or use another annotator (`sigma models`).")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights": self.weights_source, "runtime": self.runner.describe()}

    def working_size(self, pair: Pair) -> tuple[int, int]:
        cfg: ModelAnnotatorConfig = self.config
        return working_size(*pair.size, self.size, self.multiple, self.keep_aspect, cfg.upscale)

    def _prepare(self, pairs: list[Pair]) -> list[Guidance]:
        return self.guide(pairs)

    def _forward(self, original, edited, pairs: list[Pair], guides: list[Guidance]):
        hw = tuple(original.shape[-2:])
        prior = self.torch.from_numpy(np.stack([resized_prior(g.prior, hw) for g in guides]))[:, None]
        regions = [normalised_regions(g.regions, p.size) for p, g in zip(pairs, guides, strict=True)]
        # torch (NCHW / channels-last) or ONNX Runtime, chosen once at load (sigma.runtime)
        return self.runner(original, edited, prior.to(self.device), [g.edit_type for g in guides],
                           regions if any(regions) else None)

    def _extra(self, pair: Pair, g: Guidance, hw: tuple[int, int], model_ms: float) -> Prediction:
        return Prediction(np.empty(0), {**g.extra, "working_size": list(hw),
                                        "timings_ms": {**g.timings_ms, "model": model_ms}},
                          # all the split needs is where the prior is >= 0.5: a bool map, not a 64 MB float one
                          {"prior": g.prior >= 0.5 if g.informative else None, "informative": g.informative})

    def mask_confidence(self, size: tuple[int, int], prob: np.ndarray, mask: np.ndarray, threshold: float,
                        context: dict[str, Any]) -> float:
        return confidence(prob, mask, threshold)

    def derive(self, pair_size: tuple[int, int], prob: np.ndarray, mask: np.ndarray, threshold: float,
               context: dict[str, Any]) -> dict[str, Any]:
        cfg: ModelAnnotatorConfig = self.config
        return {"confidence": self.mask_confidence(pair_size, prob, mask, threshold, context),
                "components": split_components(mask, context.get("prior"), bool(context.get("informative")),
                                               min_overlap=cfg.intended_overlap,
                                               max_components=cfg.max_components)}


def check_grounding_files(backend: str, options: dict[str, Any]) -> None:
    """The checkpoints a grounding backend would load (`GroundingConfig.check_files`), checked at a fleet
    submission as the annotator's own files: `options.grounding_options.detector.weights` naming a missing folder
    was queued and every shard dead-lettered when the workers built the grounder."""
    from sigma.grounding.config import GroundingConfig

    data = {k: v for k, v in options.items() if not k.endswith("_obj")}   # handed-in models: nothing to load
    GroundingConfig(**{"backend": backend, **data}).check_files(
        "options.grounding_options", skip={k.removesuffix("_obj") for k in options if k.endswith("_obj")})


class SigmaLite(SigmaAnnotator):
    name: ClassVar[str] = "sigma-lite"
    preset: ClassVar[str] = "sigma-lite"


class SigmaB(SigmaAnnotator):
    name: ClassVar[str] = "sigma-b"
    preset: ClassVar[str] = "sigma-b"


class SigmaS(SigmaAnnotator):
    name: ClassVar[str] = "sigma-s"
    preset: ClassVar[str] = "sigma-s"


def _lite_status() -> str:
    return embedded_status("sigma-lite") or (
        "missing: sigma/weights/sigma-lite.safetensors (+ .json) is not in this install; pass "
        "options.weights=PATH or train it (docs/training.md)")


def _dinov2_status(preset: str, backbone: str) -> Callable[[], str]:
    def status() -> str:
        found = embedded_status(preset)
        if found:
            return found
        return (f"missing: no trained {preset} weights (looked in sigma/weights/{preset}.safetensors; pass "
                f"options.weights=PATH); {backbone_status(backbone)}")
    return status


def _digest(preset: str) -> Callable[[dict[str, Any]], str | None]:
    def digest(options: dict[str, Any]) -> str | None:
        cfg = ModelAnnotatorConfig(**options)
        return weights_digest(cfg, cfg.model or preset)
    return digest


@ANNOTATORS.register("sigma-lite", "SIGMA heads on a compact CNN trained from scratch, 512 px, CPU-fast; "
                     "the embedded default", _lite_status, _digest("sigma-lite"))
def build_sigma_lite(**overrides: Any) -> SigmaLite:
    return SigmaLite(**overrides)


@ANNOTATORS.register("sigma-b", "SIGMA on frozen DINOv2-B/14 at 518 px (the paper's model)",
                     _dinov2_status("sigma-b", "facebook/dinov2-base"), _digest("sigma-b"))
def build_sigma_b(**overrides: Any) -> SigmaB:
    return SigmaB(**overrides)


@ANNOTATORS.register("sigma-s", "SIGMA on frozen DINOv2-S/14 at 518 px",
                     _dinov2_status("sigma-s", "facebook/dinov2-small"), _digest("sigma-s"))
def build_sigma_s(**overrides: Any) -> SigmaS:
    return SigmaS(**overrides)


# the preset each model annotator loads when options.model is not set (`ModelAnnotatorConfig.check_files`)
_ANNOTATOR_PRESETS: dict[str, str] = {cls.name: cls.preset for cls in (SigmaLite, SigmaB, SigmaS)}
