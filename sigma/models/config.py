"""The SigmaNet architecture as plain data: one pydantic tree per model, presets are instances of it.

Architecture arguments live here; where weights come from lives in `sigma.models.weights` (timm's split
between a model's arguments and its weights' provenance).
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from sigma.config.schema import ReadsWholeNumbers, Strict

# Blocks (a backbone stage's, the refinement's) and transformer layers one config may ask for: each is a Python
# module with its own tensors, and 10^5 small ones took 4 minutes and 10 GB to build while their parameter count
# (`sigma.models.size`) looked harmless. The largest model we use has 40 layers (DINOv2-giant).
MAX_BLOCKS = 256


class CompactBackboneConfig(Strict):
    """Siamese CNN trained from scratch: stage i has stride 2**(i+1) (2, 4, 8, 16, 32)."""

    kind: Literal["compact"] = "compact"
    widths: list[Annotated[int, Field(ge=1)]] = Field([16, 32, 64, 128, 256], min_length=1, max_length=5)
    depths: list[Annotated[int, Field(ge=0, le=MAX_BLOCKS)]] = Field(
        [0, 1, 1, 2, 2], description="inverted-residual blocks after each stage's strided conv; cheap (1x1 → "
        "depthwise 3x3 → 1x1) so 2 CPU cores keep up")
    expansion: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _check(self) -> CompactBackboneConfig:
        if len(self.depths) != len(self.widths):
            raise ValueError("compact backbone: depths and widths must have the same length")
        return self


class Dinov2BackboneConfig(Strict):
    """A frozen transformers `Dinov2Model`.

    `taps` index transformers' `hidden_states` tuple, whose element 0 is the patch-embedding output and
    element i (i >= 1) the output of block i-1. The paper's "layers 2, 5, 11" of ViT-B (blocks counted
    from 0) are therefore `hidden_states[3], [6], [12]`.
    """

    kind: Literal["dinov2"] = "dinov2"
    weights: str = Field("facebook/dinov2-base", description="Hugging Face repo id or local path")
    hf_config: dict[str, Any] | None = Field(
        None, description="build the architecture from these Dinov2Config fields instead of the "
        "weights' own config.json (tiny offline test models)")
    taps: list[int] = Field([3, 6, 12], min_length=1)
    frozen: bool = True


BackboneConfig = Annotated[CompactBackboneConfig | Dinov2BackboneConfig, Field(discriminator="kind")]


class SigmaNetConfig(ReadsWholeNumbers):
    exponent_prefix: ClassVar[str] = "model"       # a training config's `model` mapping
    name: str = "custom"
    backbone: BackboneConfig = CompactBackboneConfig()
    # working size: the network sees each pair at this size (long side), a multiple of `size_multiple`;
    # for keep_aspect models a cap (smaller pairs run at their own size unless the annotator upscales)
    image_size: int = Field(512, ge=28)
    size_multiple: int = Field(32, ge=1)
    keep_aspect: bool = Field(True, description="keep the pair's aspect ratio (long side = image_size) "
                              "instead of squashing it to a square")
    dim: int = Field(128, ge=8, description="width d of the fused difference tokens")
    token_stride: int = Field(16, description="taps at this stride or coarser are fused into the token grid "
                              "the refinement attends over; finer taps become decoder skips")
    skip_dims: list[Annotated[int, Field(ge=1)]] = Field([64, 32, 16], max_length=8,
                                                         description="widths of the decoder skips, coarse to fine")
    pixel_stem: bool = Field(False, description="add a few strided convs over (I_o, I_e, |I_o-I_e|) as "
                             "decoder skips at 1/8 and 1/4 (ViT backbones have no fine taps)")
    full_res_head: int = Field(0, ge=0, description="width of a residual head that refines the logits at the "
                               "full working resolution from the pair's own pixels (0 = none: logits at the "
                               "decoder's finest level, bilinearly upsampled)")
    refine_blocks: int = Field(2, ge=0, le=MAX_BLOCKS)
    refine_heads: int = Field(4, ge=1)
    ffn_ratio: float = Field(2.0, gt=0, le=64)
    max_regions: int = Field(8, ge=0, description="instruction tokens from at most this many regions")

    @model_validator(mode="after")
    def _check(self) -> SigmaNetConfig:
        if self.dim % self.refine_heads:
            raise ValueError(f"dim {self.dim} is not divisible by refine_heads {self.refine_heads}")
        return self
