"""Instruction → (parse, spatial prior, regions) for the model annotators, through `sigma.parse` and
`sigma.grounding`. Kept apart so the network never sees text or grounding models, and so a batch is
grounded in one `ground_batch` call (the grounder batches detector and segmenter work itself)."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sigma.errors import ConfigError
from sigma.types import Pair


def edit_type_token(edit_types: list[str]) -> str | None:
    """The one edit-type token the network takes for an instruction with several edits.

    One kind of edit (or all edits of one kind) -> that type. Any global edit -> "global": the whole
    image changes, whatever else does. Local edits of different kinds ("make the sky purple and add
    a moon") -> None, the network's "not told" token (training withholds the type from most samples,
    so it is well practised): naming either type would bias it against the other edit's region.
    Each edit still reaches the network through its regions: the image a region was found in
    (original for remove, edited for add, both for replace/attribute) goes in with the region token.
    """
    kinds = list(dict.fromkeys(edit_types))
    if not kinds:
        return None
    if "global" in kinds:
        return "global"
    return kinds[0] if len(kinds) == 1 else None


@dataclass
class Guidance:
    """What the instruction says about one pair, at the pair's size."""

    edit_type: str | None                   # the network's edit-type token (edit_type_token of edit_types)
    prior: np.ndarray                       # float32 [H, W] in [0, 1]: the regions of every edit
    informative: bool                       # the prior locates something (grounded, partly found, or global)
    flag: str | None                        # sigma.grounding FLAG_* name; None = grounded
    regions: list[dict[str, Any]] = field(default_factory=list)   # box xyxy px, score, image
    extra: dict[str, Any] = field(default_factory=dict)           # parse + grounding summary for result.json
    timings_ms: dict[str, float] = field(default_factory=dict)
    edit_types: list[str] = field(default_factory=list)           # every edit's type, in instruction order


class Guide:
    """Built once per annotator (loads parser and grounder weights once), called per batch."""

    def __init__(self, parser: str | None = "rules", grounding: str = "none",
                 grounding_options: dict[str, Any] | None = None):
        try:
            from sigma.grounding import build_grounder
            from sigma.parse import get_parser
            from sigma.parse.types import ParsedInstruction
        except ImportError as exc:
            raise ConfigError(f"instruction parsing/grounding unavailable ({exc})") from exc
        self.parser_name = parser
        self.parser = get_parser(parser) if parser else None
        self.empty = ParsedInstruction
        self.grounder = build_grounder(grounding, **(grounding_options or {}))

    def _parse(self, pair: Pair):
        text = (pair.instruction or "").strip()
        if self.parser is None or not text:
            return self.empty(instruction=pair.instruction, backend=self.parser_name or "none")
        if self.parser_name == "qwen-vl":        # the VLM parser also looks at both images
            return self.parser(text, images=[pair.original, pair.edited])
        return self.parser(text)

    def __call__(self, pairs: list[Pair]) -> list[Guidance]:
        from sigma.grounding import FLAG_GLOBAL, FLAG_PARTLY_FOUND
        from sigma.grounding.prior import is_constant

        t0 = time.perf_counter()
        parses = [self._parse(p) for p in pairs]
        t1 = time.perf_counter()
        results = self.grounder.ground_batch([p.original for p in pairs], [p.edited for p in pairs], parses)
        t2 = time.perf_counter()
        n = max(1, len(pairs))
        out = []
        for parse, res in zip(parses, results, strict=True):
            regions = [{"box": [float(v) for v in r.box], "score": float(r.score), "image": r.image}
                       for r in res.regions]
            timings = {"parse": (t1 - t0) * 1000.0 / n, "ground": (t2 - t1) * 1000.0 / n,
                       **{f"ground_{k}": v for k, v in res.timings_ms.items()}}
            prior = res.prior if is_constant(res.prior) else np.clip(np.asarray(res.prior, np.float32), 0.0, 1.0)
            out.append(Guidance(edit_type_token(parse.edit_types), prior,
                                res.flag in (None, FLAG_GLOBAL, FLAG_PARTLY_FOUND), res.flag, regions, res.to_extra(),
                                timings,
                                edit_types=parse.edit_types))
        return out


def resized_prior(prior: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The prior at the network's working size `hw`. A constant prior (`sigma.grounding.prior.constant_prior`) is
    resized as the full map it stands for, once per (size, value, hw): the same floats, without a full-resolution
    map per pair (an area resize of a constant is not exactly that constant, so it is not written down instead)."""
    from sigma.annotators.torch_base import resize_image
    from sigma.grounding.prior import is_constant

    if is_constant(prior):
        return _resized_constant((prior.shape[0], prior.shape[1]), float(prior.flat[0]), (int(hw[0]), int(hw[1])))
    return resize_image(prior, hw)


@functools.lru_cache(maxsize=8)
def _resized_constant(size: tuple[int, int], value: float, hw: tuple[int, int]) -> np.ndarray:
    from sigma.annotators.torch_base import resize_image

    out = resize_image(np.full(size, value, np.float32), hw)
    out.flags.writeable = False     # shared by every pair of this size: callers copy (np.stack does)
    return out


def normalised_regions(regions: list[dict[str, Any]], size: tuple[int, int]) -> list[dict[str, Any]]:
    """Pixel boxes at the pair's size → boxes in [0, 1], what the network's region tokens take."""
    h, w = size
    return [{"box": [r["box"][0] / w, r["box"][1] / h, r["box"][2] / w, r["box"][3] / h], "score": r["score"],
             "image": r["image"]} for r in regions]
