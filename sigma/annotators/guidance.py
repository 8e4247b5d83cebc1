"""Instruction → (parse, spatial prior, regions) for the model annotators, through `sigma.parse` and
`sigma.grounding` (issue 4, items 3–4). Kept apart so the model never sees text or grounding models.

The grounding package is imported lazily; its result is read by duck typing (`prior`, `regions`/`boxes`
+ `scores`, `flag`) so this adapter is the one place that knows its shape.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sigma.errors import ConfigError
from sigma.types import Pair

UNINFORMATIVE = 0.5
# the same flag vocabulary as sigma.grounding.types (FLAG_*), so result.json reads one way
FLAG_NO_INSTRUCTION = "no_instruction"
FLAG_GLOBAL = "global_edit"
FLAG_NO_GROUNDING = "grounding_disabled"


@dataclass
class Guidance:
    """What the instruction says about one pair, at the pair's size."""

    parse: dict[str, Any] | None
    edit_type: str | None
    prior: np.ndarray                       # float32 [H, W] in [0, 1]
    informative: bool                       # False: π carries no information (0.5 everywhere)
    flag: str | None                        # None = grounded; else one of the FLAG_* names
    regions: list[dict[str, Any]] = field(default_factory=list)   # box xyxy px, score, image, concept
    backend: str = "none"
    timings_ms: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready record for result.json (the dense prior itself is not serialised)."""
        return {"flag": self.flag, "backend": self.backend, "informative": self.informative,
                "mean": round(float(self.prior.mean()), 4),
                "regions": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                            for r in self.regions]}


def _make_parser(backend: str):
    try:
        from sigma.parse.registry import get_parser

        return get_parser(backend)
    except ImportError as exc:
        raise ConfigError(f"instruction parser {backend!r} unavailable ({exc}); set parser=null to ignore "
                          "instructions") from exc


def _as_dict(parsed: Any) -> dict[str, Any] | None:
    if parsed is None:
        return None
    if hasattr(parsed, "to_json_dict"):
        return parsed.to_json_dict()
    if hasattr(parsed, "model_dump"):
        return parsed.model_dump(mode="json")
    return dict(parsed)


class Guide:
    """Built once per annotator (loads the parser's and grounder's weights once), called per pair."""

    def __init__(self, parser: str | None = "rules", grounding: str = "none",
                 grounding_options: dict[str, Any] | None = None):
        self.parser_name = parser
        self.grounding_name = grounding
        self.parser = _make_parser(parser) if parser else None
        self.grounder = None
        if grounding != "none":
            try:
                from sigma.grounding import get_grounder
            except ImportError as exc:
                raise ConfigError(f"grounding backend {grounding!r} unavailable: sigma.grounding is not "
                                  "installed or has no get_grounder") from exc
            self.grounder = get_grounder(grounding, **(grounding_options or {}))

    def __call__(self, pair: Pair) -> Guidance:
        h, w = pair.size
        timings: dict[str, float] = {}
        text = (pair.instruction or "").strip()
        parsed = None
        if self.parser is not None and text:
            t0 = time.perf_counter()
            parsed = self.parser(text)
            timings["parse"] = (time.perf_counter() - t0) * 1000.0
        pd = _as_dict(parsed)
        edit_type = pd.get("edit_type") if pd else None
        if edit_type is None:
            return Guidance(pd, None, np.full((h, w), UNINFORMATIVE, np.float32), False, FLAG_NO_INSTRUCTION,
                            backend=self.grounding_name, timings_ms=timings)
        if edit_type == "global":
            return Guidance(pd, edit_type, np.ones((h, w), np.float32), True, FLAG_GLOBAL,
                            backend=self.grounding_name, timings_ms=timings)
        if self.grounder is None:
            return Guidance(pd, edit_type, np.full((h, w), UNINFORMATIVE, np.float32), False, FLAG_NO_GROUNDING,
                            backend="none", timings_ms=timings)
        t0 = time.perf_counter()
        result = self.grounder(pair, parsed)
        timings["ground"] = (time.perf_counter() - t0) * 1000.0
        return self._read(result, pd, edit_type, (h, w), timings)

    def _read(self, result: Any, pd: dict[str, Any] | None, edit_type: str | None,
              size: tuple[int, int], timings: dict[str, float]) -> Guidance:
        get = (lambda k, d=None: result.get(k, d)) if isinstance(result, dict) else \
            (lambda k, d=None: getattr(result, k, d))
        prior = np.asarray(get("prior"), dtype=np.float32)
        if prior.shape != size:
            raise RuntimeError(f"grounding returned a {prior.shape} prior for a {size} pair")
        flag = get("flag")
        regions = []
        for reg in get("regions", None) or []:
            r = reg if isinstance(reg, dict) else (reg.model_dump() if hasattr(reg, "model_dump") else vars(reg))
            regions.append({"box": [float(v) for v in r["box"]], "score": float(r.get("score", 1.0)),
                            "image": r.get("image", "original"), "concept": r.get("concept")})
        informative = flag == FLAG_GLOBAL or (flag is None and bool(regions or prior.min() != prior.max()))
        return Guidance(pd, edit_type, np.clip(prior, 0.0, 1.0), informative, flag, regions,
                        backend=self.grounding_name, timings_ms=timings)


def normalised_regions(regions: list[dict[str, Any]], size: tuple[int, int]) -> list[dict[str, Any]]:
    """Pixel boxes at the pair's size → boxes in [0, 1], what the network's region tokens take."""
    h, w = size
    out = []
    for r in regions:
        x0, y0, x1, y1 = r["box"]
        out.append({"box": [x0 / w, y0 / h, x1 / w, y1 / h], "score": r["score"], "image": r["image"]})
    return out
