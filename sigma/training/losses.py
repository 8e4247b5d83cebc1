"""Training losses. Per-sample weights let one batch mix labelled and unlabelled pairs."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bce_w: float = 1.0,
             dice_w: float = 1.0, pos_weight: float = 1.0, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BCE + per-sample soft Dice (smoothed, so an empty target pushes the prediction to empty).

    `weight` [B] selects/weights samples; `valid` [B,1,H,W] masks ignored pixels (pseudo-labels)."""
    if float(weight.sum()) <= 0:
        return logits.sum() * 0.0
    logits = logits.float()
    valid = torch.ones_like(target) if valid is None else valid
    pw = torch.tensor(pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw)
    bce = (bce * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1.0)
    p = torch.sigmoid(logits) * valid
    t = target * valid
    inter = (p * t).flatten(1).sum(1)
    dice = 1.0 - (2 * inter + 1.0) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1.0)
    per = bce_w * bce + dice_w * dice
    return (per * weight).sum() / weight.sum().clamp_min(1e-6)


def pseudo_label_loss(student_logits: torch.Tensor, teacher_prob: torch.Tensor, weight: torch.Tensor,
                      hi: float = 0.7, lo: float = 0.3) -> torch.Tensor:
    """Teacher p > hi → 1, p < lo → 0, the rest ignored; on the samples `weight` selects."""
    target = (teacher_prob > hi).float()
    valid = ((teacher_prob > hi) | (teacher_prob < lo)).float()
    return bce_dice(student_logits, target, weight, valid=valid)


def disentangle_terms(edit_feat: torch.Tensor, noise_feat: torch.Tensor, noise_pred: torch.Tensor,
                      noise_target: torch.Tensor, noise_only: torch.Tensor, noise_scale: float
                      ) -> dict[str, torch.Tensor]:
    """METHOD §6: edit part → 0 on noise-only pairs; squared cosine between the parts; the noise part
    regresses the low-passed perturbation residual (target resized to the feature grid)."""
    ef, nf = edit_feat.float(), noise_feat.float()
    zero_w = noise_only.float()
    zero = (ef.pow(2).mean(dim=(1, 2, 3)) * zero_w).sum() / zero_w.sum().clamp_min(1.0)
    cos = F.cosine_similarity(ef, nf, dim=1, eps=1e-6)
    decor = cos.pow(2).mean()
    tgt = F.adaptive_avg_pool2d(noise_target.float(), noise_pred.shape[-2:]) * noise_scale
    noise = F.smooth_l1_loss(noise_pred.float(), tgt, beta=0.1)
    return {"zero": zero, "decor": decor, "noise": noise}
