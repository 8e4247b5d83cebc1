"""Scoring during training, with the one metrics module (`sigma.eval.metrics`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sigma.data.synth.engine import SynthSample
from sigma.eval.metrics import MetricAccumulator


class ValidationAbandoned(Exception):
    """A validation given up between two batches because the run is stopping (a SIGTERM noted): `scored` of `total`
    pairs of `what` were scored, and nothing of them is kept (a score on part of the set is no score of the set)."""

    def __init__(self, what: str, scored: int, total: int):
        super().__init__(f"{what}: {scored} of {total} pairs scored")
        self.what, self.scored, self.total = what, scored, total


def _check(stop: Callable[[], bool] | None, what: str, scored: int, total: int) -> None:
    if stop is not None and stop():
        raise ValidationAbandoned(what, scored, total)


@torch.no_grad()
def validate_synthetic(model: torch.nn.Module, samples: list[SynthSample], device: torch.device,
                       batch: int = 16, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """F1/IoU at 0.5 on the fixed synthetic set; also the false-positive rate on its no-edit pairs. `stop` is asked
    before each batch: true, the validation is abandoned (`ValidationAbandoned`), the model's mode put back."""
    was = model.training
    model.eval()
    acc, empty_fp = MetricAccumulator(), []
    try:
        for start in range(0, len(samples), batch):
            _check(stop, "the synthetic set", start, len(samples))
            chunk = samples[start:start + batch]
            o = torch.from_numpy(np.stack([s.original for s in chunk])).permute(0, 3, 1, 2).float().div(255).to(device)
            e = torch.from_numpy(np.stack([s.edited for s in chunk])).permute(0, 3, 1, 2).float().div(255).to(device)
            prob = torch.sigmoid(model(o, e).logits.float())[:, 0].cpu().numpy()
            for i, s in enumerate(chunk):
                score = acc.update(str(start + i), prob[i] > 0.5, prob[i], s.mask)
                if not s.mask.any():
                    empty_fp.append(score.pred_fraction)
    finally:
        model.train(was)
    summ = acc.summary()
    return {"f1": summ["f1"], "iou": summ["iou"], "auc": summ["auc"], "pairs": summ["pairs"],
            "empty_fp": float(np.mean(empty_fp)) if empty_fp else None}


def evaluate_real(model_dir: Path, data: str, perturbations: list[str], image_size: int | None,
                  limit: int | None = None, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """`sigma eval` on a pairs.jsonl folder through the real annotator, from the saved model folder. `stop` is asked
    before the perturbations' models load and after each batch (`evaluate`'s progress): true, `ValidationAbandoned`."""
    from sigma.eval.runner import evaluate
    from sigma.registry import create_annotator

    # torch: each checkpoint is new weights, an ONNX export per validation would cost about what it saves
    opts: dict[str, Any] = {"weights": str(model_dir), "parser": None, "runtime": "torch"}
    if image_size:
        opts["image_size"] = image_size
    ann = create_annotator("sigma-lite", **opts)
    result = evaluate(ann, data, perturbations, limit=limit,
                      progress=lambda done, total: _check(stop, f"the real set {data}", done, total))
    tables = result.tables()
    out = {}
    for p, table in tables.items():
        for group, row in table.items():
            key = "editing" if group.startswith("editing") else group
            out[f"{p}/{key}"] = {"f1": row["f1"], "iou": row["iou"], "manipulated": row["manipulated"]}
    return out
