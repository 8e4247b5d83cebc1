"""The stage config: one pydantic tree drives Stage I and Stage II (every Stage II term is a switch)."""
from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails

from sigma.config.schema import (
    MAX_BATCH_SIZE,
    MAX_PROCESSES,
    MAX_THREADS,
    MAX_WORKING_SIZE,
    Minutes,
    Strict,
    errors_within,
)
from sigma.data.synth.engine import SynthConfig


class Section(Strict):
    """A training config section: no float may be NaN or infinite. `lr=inf` trained a model of NaN weights into
    final/ (exit 0), `loss.bce=nan` skipped every step of a short run without a word; a budget without limit is
    `max_minutes=null`, not inf. (`Strict`'s rule, every config section's since: `allow_inf_nan=False`.)"""


# Seeds feed numpy (non-negative only: a ValueError traceback for -1) and torch.Generator().manual_seed(seed * 1000003
# + step) (a 64-bit integer: 10^30 was an OverflowError traceback).
MAX_SEED = 2**32 - 1
# the longest file or folder name Linux's file systems take, in bytes (NAME_MAX)
NAME_MAX = 255


class SourceConfig(Section):
    """A folder in the pairs.jsonl layout mixed into training (labelled corpus or unlabelled pairs)."""

    path: str
    weight: float = Field(0.1, ge=0, allow_inf_nan=False,
                          description="probability mass relative to synthetic pairs (1.0)")
    labelled: bool = True


class LossConfig(Section):
    bce: float = Field(1.0, ge=0)     # a negative weight maximises its loss: the run diverges, unsaid
    dice: float = Field(1.0, ge=0)
    pos_weight: float = Field(1.0, gt=0)


class VaeCalibConfig(Section):
    """Stage II: more VAE-roundtripped pairs, and noise-only pairs labelled empty."""

    enabled: bool = False
    vae_p: float = Field(0.7, ge=0, le=1)
    none_p: float = Field(0.15, ge=0, le=1)


class EmaConfig(Section):
    """Stage II: EMA teacher → confident pseudo-labels on unlabelled pairs for a strong-view student."""

    enabled: bool = False
    momentum: float = Field(0.999, ge=0, lt=1)
    hi: float = Field(0.7, ge=0, le=1, description="teacher probability above which a pixel is a confident edit")
    lo: float = Field(0.3, ge=0, le=1, description="teacher probability below which a pixel is confidently unedited")
    weight: float = Field(1.0, ge=0)
    withhold_latent_labels: bool = Field(True, description="latent-edit pairs become unlabelled pairs")
    strong_noise: float = Field(0.02, ge=0, description="σ of Gaussian noise on the student's edited view")
    strong_jitter: float = Field(0.05, ge=0, description="brightness/contrast jitter of the student view")

    @field_validator("lo")
    @classmethod
    def _lo_not_above_hi(cls, lo: float, info: ValidationInfo) -> float:
        """A pixel is a confident edit above `hi` and confidently unedited below `lo`: with lo above hi the pixels
        between were both, and labelled edits (`pseudo_label_loss`), unsaid. (`hi` is checked first: declared
        before.)"""
        hi = info.data.get("hi")
        if hi is not None and lo > hi:
            raise ValueError(f"ema.lo {lo:g} is above ema.hi {hi:g}: a teacher probability between them would be both "
                             "a confident edit (above hi) and confidently unedited (below lo); keep lo <= hi")
        return lo


class DisentangleConfig(Section):
    """Stage II (METHOD §6): edit part → 0 on noise-only pairs, decorrelate, noise part regresses residual."""

    enabled: bool = False
    zero: float = Field(0.1, ge=0)
    decorrelate: float = Field(0.1, ge=0)
    noise: float = Field(1.0, ge=0)
    noise_scale: float = Field(10.0, gt=0, description="the residual target is multiplied by this")


class EvalConfig(Section):
    every: int = Field(200, ge=0, description="steps between validations (0 = only at the end)")
    # held in memory for the whole run (about 0.4 MB a pair at crop 192): val_size=10^8 generated pairs for as long
    # as the memory lasted, before the first step
    val_size: int = Field(64, ge=0, le=10_000, description="fixed synthetic validation pairs")
    val_seed: int = Field(12345, ge=0, le=MAX_SEED)
    val_dir: str = Field("", description="the fixed synthetic validation set as a pairs.jsonl folder; written "
                         "once (val_size pairs, val_seed, cached photos only) when missing, then only read, so "
                         "every run and every checkpoint is scored on the same pairs ('' = generate in memory)")
    at_start: bool = Field(True, description="validate before the first step of a fresh run (the init_from "
                           "baseline on the same pairs)")
    data: str = Field("", description="pairs.jsonl folder (or the set's pairs.jsonl) scored with sigma.eval "
                      "('' = none); 'shared' = $SIGMA_SHARED/data/eval")
    data_every: int = Field(0, ge=0, description="steps between real-set evaluations (0 = only at the end)")
    perturb: list[str] = Field(default_factory=lambda: ["none"])
    image_size: int | None = Field(None, ge=0, le=MAX_WORKING_SIZE,
                                   description="working size for the real set (None = the model's)")
    limit: int | None = Field(None, ge=1, description="score the first N pairs of the real set (None = all)")

    # Checked when the config is read: the real set is scored at the end of the run, and an unknown perturbation
    # or a working size the annotator refuses ended hours of training there, with no final/.
    @field_validator("perturb")
    @classmethod
    def _known_perturbations(cls, names: list[str]) -> list[str]:
        from sigma.errors import ConfigError
        from sigma.eval.perturb import expand

        try:
            expand(names)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return names

    @field_validator("image_size")
    @classmethod
    def _working_size(cls, size: int | None) -> int | None:
        if size and size < 28:
            raise ValueError(f"the real set's working size is at least 28 px (or null: the model's), got {size}")
        return size


class TrainConfig(Section):
    name: str = "run"
    stage: Literal["I", "II"] = "I"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    out_dir: str = Field("runs", description="the run folder is <out_dir>/<name>")
    workdir: str = Field("", description="the folder the relative paths of this config (data.photos, data.cache, "
                         "data.cache_index, sources, eval.val_dir, eval.data, init_from) are read from; `sigma "
                         "train` records the folder a run starts in, so `--resume` from another folder reads the "
                         "same files ('' = the current folder)")
    model: str | dict[str, Any] = Field("sigma-lite", description="preset name or SigmaNetConfig fields")
    init_from: str | None = Field(None, description="a saved model folder or a run folder to start from")
    data: SynthConfig = Field(default_factory=SynthConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    steps: int = Field(1000, ge=1)
    # bounded like every other command's: num_workers=100000 started that many data processes, batch_size=10^6
    # asked one data worker for a million crops in memory
    batch_size: int = Field(16, ge=1, le=MAX_BATCH_SIZE)
    num_workers: int = Field(1, ge=0, le=MAX_PROCESSES)
    lr: float = Field(2e-3, gt=0, le=10, description="peak learning rate (AdamW); above 10 is a typo, not a choice")
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)
    max_bad_steps: int = Field(20, ge=1, description="NaN guard: abort after this many skipped steps in a row")
    threads: int | None = Field(None, ge=1, le=MAX_THREADS,
                                description="torch.set_num_threads (None = torch's default)")
    channels_last: bool = Field(True, description="on a CPU, keep convolution weights in NHWC (faster oneDNN kernels)")
    amp: Literal["auto", "bf16", "fp32"] = "auto"
    edit_type_p: float = Field(0.3, ge=0, le=1, description="fraction of samples told their edit type")
    prior_p: float = Field(0.15, ge=0, le=1, description="fraction of samples given a box prior (30 % wrong)")
    region_p: float = Field(0.3, ge=0, le=1, description="fraction of samples given region tokens: jittered "
                            "true boxes (from the original, the edited image or both, by edit type), wrong "
                            "boxes, or true plus wrong (trains refine.region_*)")
    freeze: list[str] = Field(default_factory=list, description="parameter-name prefixes held fixed (e.g. "
                              "`backbone.`): no gradient, their BatchNorm statistics kept, so a fine-tune moves "
                              "only the rest (a decoder on a new label convention without drifting the "
                              "features). Each prefix must name at least one parameter")
    loss: LossConfig = Field(default_factory=LossConfig)
    vae_calibration: VaeCalibConfig = Field(default_factory=VaeCalibConfig)
    ema: EmaConfig = Field(default_factory=EmaConfig)
    disentangle: DisentangleConfig = Field(default_factory=DisentangleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log_every: int = Field(10, ge=1)
    ckpt_every: int = Field(100, ge=1)
    max_minutes: Minutes | None = Field(None, gt=0, description="wall-clock budget of this stretch: at the end of "
                                      "the first step past it the run checkpoints, validates and stops cleanly "
                                      "(exit 0); `sigma train --resume RUN` continues the same schedule. "
                                      "For a shared machine or a time-limited device slot")
    tensorboard: bool = True

    @classmethod
    def _found_beside(cls, data: dict) -> list[InitErrorDetails]:
        """A `model:` mapping's errors (SigmaNetConfig's), with the rest of the config's: it was validated only
        once the config was taken (`sigma.training.loop`), so a config with errors in both took two runs."""
        from sigma.models.config import SigmaNetConfig

        model = data.get("model")
        return errors_within(SigmaNetConfig, model, "model") if isinstance(model, dict) else []

    @classmethod
    def mapping_model(cls, key: str, data: dict) -> type[BaseModel] | None:
        from sigma.models.config import SigmaNetConfig

        return SigmaNetConfig if key == "model" and isinstance(data.get("model"), dict) else None

    @field_validator("sources")
    @classmethod
    def _source_weights_sum(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        """weight inf (or two of 1e308, summing to inf) made the sampling probabilities NaN: a ValueError traceback
        in the data loader after the run had started."""
        if not math.isfinite(1.0 + sum(s.weight for s in sources)):
            raise ValueError("the sources' weights must add up to a finite number")
        return sources

    @field_validator("weight_decay")
    @classmethod
    def _decay_below_one(cls, weight_decay: float, info: ValidationInfo) -> float:
        """AdamW's decoupled decay multiplies every weight by (1 - lr x weight_decay) each step: at 1 it zeroed them at
        the peak learning rate, above 1 it flipped their sign every step. `lr=1 weight_decay=1` trained so to exit 0
        with a final/ of zeros; now refused before anything runs. (`lr` is checked first: declared before.)"""
        lr = info.data.get("lr")
        if lr is not None and lr * weight_decay >= 1:
            raise ValueError(f"lr x weight_decay is {lr * weight_decay:.6g} (lr {lr:g}, weight_decay "
                             f"{weight_decay:g}): AdamW multiplies every weight by (1 - lr x weight_decay) each "
                             "step, so at 1 or more it zeroes or flips the weights; keep the product below 1 "
                             "(weight_decay is usually 0.01 to 0.1)")
        return weight_decay

    @field_validator("name")
    @classmethod
    def _name_inside_out_dir(cls, name: str) -> str:
        """`<out_dir>/<name>` must be a folder under out_dir: `name=/` made the run folder `/` (the run wrote its
        checkpoints there), `name=../x` one outside out_dir, `name=.` out_dir itself, among the other runs."""
        from sigma.text import printable, shown

        parts = PurePosixPath(name).parts
        if not parts or parts == (".",) or PurePosixPath(name).is_absolute() or ".." in parts:
            raise ValueError(f"the run folder is <out_dir>/<name>: name must be a relative folder name inside "
                             f"out_dir (no leading /, no '..', not '.'), got {shown(repr(name), 120)}")
        # bytes that are not UTF-8 (`name=$'\xff'`: argv's surrogate escapes) made a folder no UTF-8 terminal or tool
        # shows, whose `run folder:` line wrote the raw byte back
        if not _is_utf8(name):
            said = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise ValueError(f"name '{shown(printable(said), 120)}' holds bytes that are not UTF-8 text; a run "
                             "folder's name is UTF-8 text")
        # a line break, a tab, ESC or a bidi override in the name made a folder no `ls` shows as typed and every line
        # naming it escaped (`printable`): `name=$'run\n'` trained into `runs/run?` beside `runs/run`
        if printable(name) != name:
            raise ValueError(f"name '{shown(printable(name), 120)}' holds a control character, line break or "
                             "invisible format character; a run folder's name is one visible line")
        longest = max(len(part.encode("utf-8", "surrogateescape")) for part in parts)
        if longest > NAME_MAX:      # the run folder was made only after the data was read: `os_error` then
            raise ValueError(f"name '{shown(name, 80)}': a folder name of {longest} bytes; each part of the name is "
                             f"at most {NAME_MAX} bytes (the file system's limit)")
        return name


def _is_utf8(text: str) -> bool:
    """Whether `text` is UTF-8 text: no lone surrogate, which is how Python carries bytes from argv that are not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def effective_synth(cfg: TrainConfig) -> SynthConfig:
    """The synthetic distribution this stage trains on: VAE calibration reshapes the base recipe."""
    data = cfg.data
    if cfg.vae_calibration.enabled:
        mix = dict(data.mix)
        rest = sum(v for k, v in mix.items() if k != "none")
        p_none = cfg.vae_calibration.none_p
        mix = {k: (p_none if k == "none" else v / max(rest, 1e-9) * (1 - p_none)) for k, v in mix.items()}
        mix.setdefault("none", p_none)
        data = data.model_copy(update={"mix": mix, "perturb": data.perturb.model_copy(
            update={"vae": cfg.vae_calibration.vae_p})})
    return data
