"""Region tokens for training: what a grounding backend would hand the network, right and wrong.

Why: at inference a detector (+ SAM) gives boxes of the source concept in the original and of the target
concept in the edited image; they become instruction tokens (`refine.region_*`). Trained only on boxes
that are right, the network would learn to trust them; trained on none, those layers stay at their
initial values (the shipped file until issue 14). So a sample gets, with `region_p`: jittered boxes of the
true edit (from the original for a removal, the edited image for an addition, either or both otherwise),
boxes elsewhere (a detector's false positives), or both; the rest get none.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from sigma.models.refine import EDIT_TYPES

_SIDE = {"remove": ("original",), "add": ("edited",)}


def _jitter(box: tuple[float, float, float, float], gen: torch.Generator, amount: float):
    x0, y0, x1, y1 = box
    w, h = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
    d = (torch.rand(4, generator=gen) * 2 - 1) * amount
    return (x0 + float(d[0]) * w, y0 + float(d[1]) * h, x1 + float(d[2]) * w, y1 + float(d[3]) * h)


def _true_boxes(mask: np.ndarray, max_boxes: int) -> list[tuple[float, float, float, float]]:
    h, w = mask.shape
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, n), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))[:max_boxes]
    return [(stats[i, 0] / w, stats[i, 1] / h, (stats[i, 0] + stats[i, 2]) / w, (stats[i, 1] + stats[i, 3]) / h)
            for i in order]


def sample_regions(masks: torch.Tensor, edit_type: torch.Tensor, p: float, gen: torch.Generator,
                   max_regions: int) -> list[list[dict]] | None:
    """Per sample a list of {"box", "score", "image"} dicts (normalised xyxy), or None for a whole batch
    that drew none. Deterministic in `gen`."""
    n = masks.shape[0]
    if p <= 0 or max_regions <= 0:
        return None
    give = (torch.rand(n, generator=gen) < p).tolist()
    if not any(give):
        return None
    out: list[list[dict]] = []
    for i in range(n):
        if not give[i]:
            out.append([])
            continue
        m = masks[i, 0].detach().cpu().numpy() > 0.5
        mode = float(torch.rand(1, generator=gen))
        regs: list[dict] = []
        truth = _true_boxes(m, max(1, max_regions // 2)) if m.any() else []
        if truth and mode < 0.85:
            et = EDIT_TYPES[int(edit_type[i])]
            for box in truth[: 1 + int(torch.randint(0, len(truth), (1,), generator=gen))]:
                sides = _SIDE.get(et) or (("original", "edited") if float(torch.rand(1, generator=gen)) < 0.5
                                          else (("original",) if float(torch.rand(1, generator=gen)) < 0.5
                                                else ("edited",)))
                for side in sides:
                    regs.append({"box": _jitter(box, gen, 0.15),
                                 "score": 0.3 + 0.7 * float(torch.rand(1, generator=gen)), "image": side})
        if not truth or mode >= 0.6:   # wrong boxes: alone (no truth / mode >= 0.85) or as distractors
            for _ in range(1 + int(torch.randint(0, 2, (1,), generator=gen))):
                c = torch.rand(2, generator=gen).tolist()
                s = (0.05 + 0.4 * torch.rand(2, generator=gen)).tolist()
                regs.append({"box": (c[0] - s[0] / 2, c[1] - s[1] / 2, c[0] + s[0] / 2, c[1] + s[1] / 2),
                             "score": 0.2 + 0.7 * float(torch.rand(1, generator=gen)),
                             "image": "original" if float(torch.rand(1, generator=gen)) < 0.5 else "edited"})
        out.append([{**r, "box": [min(1.0, max(0.0, v)) for v in r["box"]]} for r in regs[:max_regions]])
    return out
