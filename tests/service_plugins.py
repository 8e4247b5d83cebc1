"""Annotators that only the service's fault tests use, loaded by workers with `--plugin service_plugins`.

`slow-diff` is pixel-diff that takes `delay_ms` per batch, so a test can kill a worker while it holds
a batch; `poison-diff` raises on every pair whose instruction contains "poison", as a model that
crashes on one input would; `slow-load` takes `load_delay_ms` to build, as a large model takes to load (with
`swallow_exceptions`, an exception raised into its load does not stop it, as one raised inside C++ frames or
caught by a loader's bare `except` does not).
"""
from __future__ import annotations

import time

from pydantic import Field

from sigma.annotators.pixel_diff import PixelDiff, PixelDiffConfig
from sigma.registry import ANNOTATORS


class SlowDiffConfig(PixelDiffConfig):
    delay_ms: float = Field(400.0, ge=0)


class SlowDiff(PixelDiff):
    name = "slow-diff"
    config_cls = SlowDiffConfig

    def _predict_batch(self, pairs):
        time.sleep(self.config.delay_ms / 1000.0)
        return super()._predict_batch(pairs)


class PoisonDiff(PixelDiff):
    name = "poison-diff"

    def _predict_batch(self, pairs):
        for pair in pairs:
            if pair.instruction and "poison" in pair.instruction:
                raise RuntimeError(f"model crashed on {pair.pair_id}")
        return super()._predict_batch(pairs)


class SlowLoadConfig(PixelDiffConfig):
    load_delay_ms: float = Field(0.0, ge=0)
    swallow_exceptions: bool = False


class SlowLoad(PixelDiff):
    name = "slow-load"
    config_cls = SlowLoadConfig

    def __init__(self, **overrides):
        super().__init__(**overrides)
        until = time.monotonic() + self.config.load_delay_ms / 1000.0
        print("slow-load: building", flush=True)                  # tests wait for this line before signalling
        while time.monotonic() < until:
            try:
                time.sleep(min(0.05, max(0.0, until - time.monotonic())))
            except BaseException:
                if not self.config.swallow_exceptions:
                    raise


if "slow-load" not in ANNOTATORS:
    ANNOTATORS.register("slow-load", "test only: pixel-diff that takes load_delay_ms to build")(
        lambda **kw: SlowLoad(**kw))
if "slow-diff" not in ANNOTATORS:
    ANNOTATORS.register("slow-diff", "test only: pixel-diff with a delay per batch", config_cls=SlowDiffConfig)(
        lambda **kw: SlowDiff(**kw))
if "poison-diff" not in ANNOTATORS:
    ANNOTATORS.register("poison-diff", "test only: pixel-diff that raises on instructions with 'poison'",
                        config_cls=PixelDiffConfig)(
        lambda **kw: PoisonDiff(**kw))
