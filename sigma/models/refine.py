"""Bidirectional cross-modal refinement (METHOD §4).

Visual tokens = the edit part of the fused difference grid with the pooled prior π as an extra channel,
plus 2-D sin-cos positions. Instruction tokens = one per grounded region, one for the edit type and one
always-present null token (so attention is defined when nothing was grounded). Each block: visual queries
attend to instruction tokens, then instruction queries attend to visual tokens; residual + FFN + LayerNorm.
Every path into the visual stream is additive (residuals, a concatenated channel): the prior modulates
the response, it never multiplies it, so a change outside the prior can still reach the output.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EDIT_TYPES: tuple[str, ...] = ("none", "add", "remove", "replace", "attribute", "background", "global")
IMAGE_INDEX = {"original": 0, "edited": 1}


def edit_type_ids(edit_type: Any, batch: int, device: torch.device) -> torch.Tensor:
    """None, a name, a list of names/None, or an id tensor → LongTensor [B]."""
    if edit_type is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    if isinstance(edit_type, torch.Tensor):
        return edit_type.to(device=device, dtype=torch.long).reshape(batch)
    names = [edit_type] * batch if isinstance(edit_type, str) else list(edit_type)
    if len(names) != batch:
        raise ValueError(f"edit_type has {len(names)} entries for a batch of {batch}")
    ids = []
    for name in names:
        key = "none" if name is None else str(name).lower()
        if key not in EDIT_TYPES:
            raise ValueError(f"unknown edit type {name!r}; known: {', '.join(EDIT_TYPES)}")
        ids.append(EDIT_TYPES.index(key))
    return torch.tensor(ids, dtype=torch.long, device=device)


@dataclass
class Regions:
    """Grounded regions of a batch, padded to R: boxes are normalised (x0, y0, x1, y1) in [0, 1]."""

    boxes: torch.Tensor     # [B, R, 4] float
    scores: torch.Tensor    # [B, R] float
    image: torch.Tensor     # [B, R] long: 0 = found in the original, 1 = in the edited image
    valid: torch.Tensor     # [B, R] bool

    @classmethod
    def from_lists(cls, items: Sequence[Sequence[dict]], max_regions: int,
                   device: torch.device | str = "cpu") -> Regions:
        """Per pair a list of {"box": normalised xyxy, "score": float, "image": "original"|"edited"};
        keeps the `max_regions` best-scored per pair."""
        batch = len(items)
        r = max(1, min(max_regions, max((len(x) for x in items), default=0)))
        boxes = torch.zeros(batch, r, 4)
        scores = torch.zeros(batch, r)
        image = torch.zeros(batch, r, dtype=torch.long)
        valid = torch.zeros(batch, r, dtype=torch.bool)
        for i, regs in enumerate(items):
            best = sorted(regs, key=lambda d: -float(d.get("score", 1.0)))[:r]
            for j, reg in enumerate(best):
                box = [float(v) for v in reg["box"]]
                if len(box) != 4:
                    raise ValueError(f"region box must have 4 numbers, got {reg['box']!r}")
                boxes[i, j] = torch.tensor(box).clamp(0.0, 1.0)
                scores[i, j] = float(reg.get("score", 1.0))
                img = reg.get("image", "original")
                image[i, j] = IMAGE_INDEX[img] if isinstance(img, str) else int(img)
                valid[i, j] = True
        return cls(boxes.to(device), scores.to(device), image.to(device), valid.to(device))


def sincos_2d(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[h*w, dim] fixed 2-D positions; works at any grid size (working sizes vary with aspect)."""
    quarter = dim // 4
    freq = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freq[None]
    xs = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freq[None]
    pos = torch.cat([torch.sin(ys)[:, None].expand(h, w, quarter), torch.cos(ys)[:, None].expand(h, w, quarter),
                     torch.sin(xs)[None].expand(h, w, quarter), torch.cos(xs)[None].expand(h, w, quarter)], -1)
    pos = pos.reshape(h * w, 4 * quarter)
    if pos.shape[1] < dim:
        pos = F.pad(pos, (0, dim - pos.shape[1]))
    return pos.to(dtype)


class FFN(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = max(8, int(dim * ratio))
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class CrossBlock(nn.Module):
    """visual ← instruction, then instruction ← visual (pre-norm residuals, FFN on both streams).

    The last block is built without the instruction update: its result would feed nothing, and
    parameters that never get a gradient are dead weight (and fail the backward-reaches-all test).
    """

    def __init__(self, dim: int, heads: int, ffn_ratio: float, update_instruction: bool = True):
        super().__init__()
        self.norm_v = nn.LayerNorm(dim)
        self.norm_t = nn.LayerNorm(dim)
        self.v_from_t = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_v_ffn = nn.LayerNorm(dim)
        self.ffn_v = FFN(dim, ffn_ratio)
        self.update_instruction = update_instruction
        if update_instruction:
            self.norm_t2 = nn.LayerNorm(dim)
            self.norm_v2 = nn.LayerNorm(dim)
            self.t_from_v = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm_t_ffn = nn.LayerNorm(dim)
            self.ffn_t = FFN(dim, ffn_ratio)

    def forward(self, v: torch.Tensor, t: torch.Tensor, t_pad: torch.Tensor, pos: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        kt = self.norm_t(t)
        v = v + self.v_from_t(self.norm_v(v) + pos, kt, kt, key_padding_mask=t_pad, need_weights=False)[0]
        v = v + self.ffn_v(self.norm_v_ffn(v))
        if self.update_instruction:
            kv = self.norm_v2(v)
            t = t + self.t_from_v(self.norm_t2(t), kv + pos, kv, need_weights=False)[0]
            t = t + self.ffn_t(self.norm_t_ffn(t))
        return v, t


class Refinement(nn.Module):
    def __init__(self, dim: int, blocks: int, heads: int, ffn_ratio: float, max_regions: int):
        super().__init__()
        self.dim = dim
        self.max_regions = max_regions
        self.prior_in = nn.Conv2d(dim + 1, dim, 1)       # π as an extra channel, additive by construction
        self.type_embed = nn.Embedding(len(EDIT_TYPES), dim)
        self.type_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.null_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        if max_regions > 0:
            self.region_pool = nn.Linear(dim, dim)
            self.region_geom = nn.Linear(5, dim)          # cx, cy, w, h, score
            self.region_image = nn.Embedding(2, dim)
        # Zero-initialised embeddings: an edit type (or image tag) never seen in training then adds
        # nothing, instead of an N(0, 1) vector the network never learned to read.
        nn.init.zeros_(self.type_embed.weight)
        if max_regions > 0:
            nn.init.zeros_(self.region_image.weight)
        self.blocks = nn.ModuleList(CrossBlock(dim, heads, ffn_ratio, update_instruction=i < blocks - 1)
                                    for i in range(blocks))
        self.out_norm = nn.LayerNorm(dim) if blocks else nn.Identity()

    def _region_tokens(self, feat: torch.Tensor, regions: Regions, type_emb: torch.Tensor) -> torch.Tensor:
        h, w = feat.shape[-2:]
        boxes = regions.boxes.to(feat.dtype)
        ys = (torch.arange(h, device=feat.device, dtype=feat.dtype) + 0.5) / h
        xs = (torch.arange(w, device=feat.device, dtype=feat.dtype) + 0.5) / w
        # a cell belongs to a box if its centre is inside; widen tiny boxes to their nearest cell
        x0, y0, x1, y1 = boxes.unbind(-1)
        half_w = torch.clamp((x1 - x0) / 2, min=0.5 / w)
        half_h = torch.clamp((y1 - y0) / 2, min=0.5 / h)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        inside_x = (xs[None, None, :] - cx[..., None]).abs() <= half_w[..., None]
        inside_y = (ys[None, None, :] - cy[..., None]).abs() <= half_h[..., None]
        cover = (inside_y[..., :, None] & inside_x[..., None, :]).to(feat.dtype)        # [B, R, h, w]
        pooled = torch.einsum("brhw,bdhw->brd", cover, feat) / cover.sum((-1, -2)).clamp(min=1.0)[..., None]
        geom = torch.stack([cx, cy, x1 - x0, y1 - y0, regions.scores.to(feat.dtype)], -1)
        return (self.region_pool(pooled) + self.region_geom(geom) + self.region_image(regions.image)
                + type_emb[:, None, :])

    def forward(self, edit_feat: torch.Tensor, prior: torch.Tensor, type_ids: torch.Tensor,
                regions: Regions | None) -> torch.Tensor:
        b, d, h, w = edit_feat.shape
        x = self.prior_in(torch.cat([edit_feat, prior.to(edit_feat.dtype)], dim=1))
        if not self.blocks:
            return x
        type_emb = self.type_embed(type_ids)
        tokens = [self.null_token.expand(b, 1, d), self.type_token + type_emb[:, None, :]]
        pads = [torch.zeros(b, 2, dtype=torch.bool, device=x.device)]
        if regions is not None and self.max_regions > 0:
            keep = min(self.max_regions, regions.boxes.shape[1])
            regions = Regions(regions.boxes[:, :keep], regions.scores[:, :keep], regions.image[:, :keep],
                              regions.valid[:, :keep])
            tokens.append(self._region_tokens(edit_feat, regions, type_emb))
            pads.append(~regions.valid.to(x.device))
        t = torch.cat(tokens, dim=1)
        t_pad = torch.cat(pads, dim=1)
        v = x.flatten(2).transpose(1, 2)                                                  # [B, N, d]
        pos = sincos_2d(h, w, d, x.device, v.dtype)[None]
        for block in self.blocks:
            v, t = block(v, t, t_pad, pos)
        v = self.out_norm(v)
        return v.transpose(1, 2).reshape(b, d, h, w)
