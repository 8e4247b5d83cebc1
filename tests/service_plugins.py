"""Annotators that only the service's fault tests use, loaded by workers with `--plugin service_plugins`.

`slow-diff` is pixel-diff that takes `delay_ms` per batch, so a test can kill a worker while it holds
a batch (with $SIGMA_TEST_BUSY_DIR set, DIR/<pid> exists while it is inside one); `poison-diff` raises on every
pair whose instruction contains "poison", as a model that
crashes on one input would; `slow-load` takes `load_delay_ms` to build, as a large model takes to load (with
`swallow_exceptions`, an exception raised into its load does not stop it, as one raised inside C++ frames or
caught by a loader's bare `except` does not); `bad-output` breaks the output contract (`defect`: a 0-255 map, NaN, a
wrong size, too few results, ...) on the pairs whose id contains "bad", as a buggy plugin does (`predict-too-few`,
`predict-too-many`: from an overridden predict(), past the base class's checks); `hang-diff` never returns from a
pair whose instruction contains "hang" (blocked on a lock nobody releases, as a model deadlocked in native code);
`odd-extra` puts what JSON cannot hold (a set, bytes, an object, a map-sized array) in the extras of pairs whose
instruction contains "odd" (`odd-keys`: keys JSON cannot hold or sort, a __str__ that raises, sets, bytes, arrays;
on "loop" a dict that contains itself, on "deep" a list nested 100 000 deep, on "clash" keys 1 and "1", on "nested"
dicts 12 levels deep); `leak-diff` keeps `leak_mb` of memory it never frees per batch; `exit-diff` calls
sys.exit(3) on instructions with "exit", as a library that gives up does; `exit-jsonl` is a corpus reader (the
jsonl one) that calls sys.exit(4) while it reads a shard whose items include an instruction with "exit" (raises
KeyboardInterrupt on "interrupt"), as long as a file `exit-reader.stop` sits beside the manifest; `kill-diff`
SIGKILLs its own process on instructions with "die", as the OOM killer does (only for `--procs` children:
in-process it would kill the caller); `weights-diff` loads its saved model (`weights`, a folder) on pairs
whose instruction contains "weights", as a plugin that loads its model lazily does (a folder a stopped saver
holds fails them `weights_busy` after `$SIGMA_MODEL_LOCK_WAIT_S`); `native-slow` spends each batch in one native
call that releases the GIL and never returns to Python meanwhile (PBKDF2 with `iterations`), as a forward pass does;
`short-load`'s build is refused memory or a thread by the machine itself until a file (`lifted`) exists; `oom-diff`
is refused memory (a real MemoryError) on pairs whose instruction contains "oom".
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
from typing import Literal

import numpy as np
from pydantic import Field

from sigma.annotators.pixel_diff import PixelDiff, PixelDiffConfig
from sigma.io.corpora import CORPUS_READERS
from sigma.io.corpora.manifest import ManifestCorpus
from sigma.registry import ANNOTATORS


class SlowDiffConfig(PixelDiffConfig):
    delay_ms: float = Field(400.0, ge=0)


class SlowDiff(PixelDiff):
    name = "slow-diff"
    config_cls = SlowDiffConfig

    def _predict_batch(self, pairs):
        # $SIGMA_TEST_BUSY_DIR: DIR/<pid> exists while this process is inside a batch, so inside a shard it holds
        # and has not published; a test stops a process and finds it there to kill one that provably holds a shard
        busy = os.environ.get("SIGMA_TEST_BUSY_DIR")
        marker = os.path.join(busy, str(os.getpid())) if busy else None
        if marker:
            open(marker, "w").close()
        try:
            time.sleep(self.config.delay_ms / 1000.0)
            return super()._predict_batch(pairs)
        finally:
            if marker:
                os.unlink(marker)


class PoisonDiff(PixelDiff):
    name = "poison-diff"

    def _predict_batch(self, pairs):
        for pair in pairs:
            if pair.instruction and "poison" in pair.instruction:
                raise RuntimeError(f"model crashed on {pair.pair_id}")
        return super()._predict_batch(pairs)


class OomDiff(PixelDiff):
    """Pixel-diff the machine refuses memory on pairs whose instruction contains "oom": a real MemoryError from the
    allocator (2**60 bytes asked), as a model running out of memory mid-shard raises."""
    name = "oom-diff"

    def _predict_batch(self, pairs):
        if any(pair.instruction and "oom" in pair.instruction for pair in pairs):
            bytearray(1 << 60)
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


class ShortLoadConfig(PixelDiffConfig):
    refuse: Literal["memory", "threads"] = "memory"
    lifted: str = ""            # a file whose existence ends the refusals ("": never)


class ShortLoad(PixelDiff):
    """Pixel-diff whose build the machine really refuses (`refuse`) until the file `lifted` exists: memory (a
    bytearray of 2**60 bytes: MemoryError from the allocator), or a thread (one started with a 32 TiB stack:
    `RuntimeError: can't start new thread` from pthread_create), as a load under a low RLIMIT_AS or a pids limit is."""
    name = "short-load"
    config_cls = ShortLoadConfig

    def __init__(self, **overrides):
        super().__init__(**overrides)
        if self.config.lifted and os.path.exists(self.config.lifted):
            return
        if self.config.refuse == "memory":
            bytearray(1 << 60)
        else:
            threading.stack_size(1 << 45)
            try:
                threading.Thread(target=lambda: None).start()
            finally:
                threading.stack_size(0)


class BadOutputConfig(PixelDiffConfig):
    defect: Literal["scale-255-uint8", "scale-255-float", "nan", "inf", "negative", "wrong-size", "channels",
                    "int-0-1", "list", "extra-none", "not-a-tuple", "too-few", "slop", "predict-too-few",
                    "predict-too-many"] = "scale-255-uint8"


def broken_output(defect: str, prob: np.ndarray, extra: dict):
    """One pair's output with `defect`, as a buggy plugin returns it."""
    if defect == "scale-255-uint8":
        return np.round(prob * 255).astype(np.uint8), extra
    if defect == "scale-255-float":
        return prob * 255.0, extra
    if defect in ("nan", "inf", "slop"):
        value = {"nan": np.nan, "inf": np.inf, "slop": 1.0004}[defect]
        return np.where(prob > 0.5, np.float32(value), prob).astype(np.float32), extra
    if defect == "not-a-tuple":
        return prob
    return {"negative": lambda: (prob - 0.5, extra), "wrong-size": lambda: (prob[:-1], extra),
            "channels": lambda: (prob[..., None], extra), "int-0-1": lambda: ((prob > 0.5).astype(np.int64), extra),
            "list": lambda: (prob.tolist(), extra), "extra-none": lambda: (prob, None)}[defect]()


class BadOutput(PixelDiff):
    name = "bad-output"
    config_cls = BadOutputConfig

    def _predict_batch(self, pairs):
        out = list(super()._predict_batch(pairs))
        if self.config.defect == "too-few" and any("bad" in p.pair_id for p in pairs):
            return out[:-1]
        if self.config.defect.startswith("predict-"):
            return out
        return [broken_output(self.config.defect, *res) if "bad" in pair.pair_id else res
                for pair, res in zip(pairs, out, strict=True)]

    def predict(self, pairs, threshold=None, mask_mode=None):
        """`predict-too-few` / `predict-too-many`: a plugin that overrides predict() itself (its own batching or
        caching) and so passes the base class's count check by: one annotation fewer (the first pair's dropped:
        every later one would sit beside the wrong pair) or one more, for a batch with a pair named *bad*."""
        out = super().predict(pairs, threshold, mask_mode)
        if any("bad" in p.pair_id for p in pairs):
            if self.config.defect == "predict-too-few":
                return out[1:]
            if self.config.defect == "predict-too-many":
                return [*out, out[-1]]
        return out


class HangDiff(PixelDiff):
    name = "hang-diff"

    def _predict_batch(self, pairs):
        if any(pair.instruction and "hang" in pair.instruction for pair in pairs):
            print("hang-diff: hanging", flush=True)
            forever = threading.Lock()
            forever.acquire()
            forever.acquire()                 # never returns
        return super()._predict_batch(pairs)


class NativeSlowConfig(PixelDiffConfig):
    iterations: int = Field(40_000_000, ge=1)


class NativeSlow(PixelDiff):
    name = "native-slow"
    config_cls = NativeSlowConfig

    def _predict_batch(self, pairs):
        print("native-slow: in the native call", flush=True)
        hashlib.pbkdf2_hmac("sha256", b"password", b"salt", self.config.iterations)
        return super()._predict_batch(pairs)


if "native-slow" not in ANNOTATORS:
    ANNOTATORS.register("native-slow", "test only: pixel-diff after one long native call per batch",
                        config_cls=NativeSlowConfig)(lambda **kw: NativeSlow(**kw))


class ExitDiff(PixelDiff):
    name = "exit-diff"

    def _predict_batch(self, pairs):
        if any(pair.instruction and "exit" in pair.instruction for pair in pairs):
            sys.exit(3)
        return super()._predict_batch(pairs)


if "exit-diff" not in ANNOTATORS:
    ANNOTATORS.register("exit-diff", "test only: pixel-diff that calls sys.exit(3) on instructions with 'exit'",
                        config_cls=PixelDiffConfig)(lambda **kw: ExitDiff(**kw))


class LeakDiffConfig(PixelDiffConfig):
    leak_mb: int = Field(100, ge=0)


LEAKED: list[np.ndarray] = []


class LeakDiff(PixelDiff):
    name = "leak-diff"
    config_cls = LeakDiffConfig

    def _predict_batch(self, pairs):
        LEAKED.append(np.ones(self.config.leak_mb * 1024 * 1024, np.uint8))     # touched: resident
        return super()._predict_batch(pairs)


if "leak-diff" not in ANNOTATORS:
    ANNOTATORS.register("leak-diff", "test only: pixel-diff that leaks leak_mb per batch",
                        config_cls=LeakDiffConfig)(lambda **kw: LeakDiff(**kw))


class OddExtra(PixelDiff):
    name = "odd-extra"

    def _predict_batch(self, pairs):
        out = super()._predict_batch(pairs)
        return [(prob, {**extra, "tags": {"b", "a"}, "blob": b"\x00" * 10, "when": OddThing(),
                        "map": np.zeros((100, 100), np.float32), "small": np.arange(3), "nan": float("nan")})
                if pair.instruction and "odd" in pair.instruction else (prob, extra)
                for pair, (prob, extra) in zip(pairs, out, strict=True)]


class OddThing:
    def __str__(self) -> str:
        return "an odd thing"


class Shy:
    """An object a plugin puts in its extras whose __str__ raises."""

    def __str__(self) -> str:
        raise RuntimeError("no words for it")


class OddKeys(PixelDiff):
    name = "odd-keys"

    def _predict_batch(self, pairs):
        out = []
        for pair, (prob, extra) in zip(pairs, super()._predict_batch(pairs), strict=True):
            if pair.instruction and "odd" in pair.instruction:
                extra = {**extra, "by_box": {(1, 2): 0.5}, "mixed": {1: "a", "b": 2}, "shy": Shy(),
                         "ints": {10, 9, 1}, "blob": b"abc", "tags": frozenset({"b", "a"}), "small": np.arange(3),
                         "map": np.zeros((10, 10), np.float32), "nan": float("nan"), "f32": np.float32(0.25),
                         "by_id": {10: "x", 9: "y"}, "nested": {"pair": (1, 2.5), "none": None}}
            if pair.instruction and "loop" in pair.instruction:
                loop: dict = {}
                loop["self"] = loop
                extra = {**extra, "loop": loop}
            if pair.instruction and "clash" in pair.instruction:
                # two keys JSON writes as the same text: a Python plugin or a parquet map column can give both
                extra = {**extra, "clash": {1: "a", "1": "b"}}
            if pair.instruction and "nested" in pair.instruction:
                nested: dict = {"leaf": 1}
                for _ in range(11):              # 12 levels: inside the default io.limits.max_json_depth (32)
                    nested = {"n": nested}
                extra = {**extra, "nested_12": nested}
            if pair.instruction and "deep" in pair.instruction:
                deep: list = []
                for _ in range(100_000):         # far past Python's recursion limit
                    deep = [deep]
                extra = {**extra, "deep": deep}
            out.append((prob, extra))
        return out


if "odd-keys" not in ANNOTATORS:
    ANNOTATORS.register("odd-keys", "test only: pixel-diff with extras no JSON holds as they are on 'odd' (tuple and "
                        "mixed keys, a raising __str__, sets, bytes, arrays) and 'loop' (a dict that contains itself), "
                        "'deep' (a list nested 100 000 deep), 'clash' (keys 1 and '1'), "
                        "'nested' (dicts 12 levels deep)",
                        config_cls=PixelDiffConfig)(lambda **kw: OddKeys(**kw))
if "odd-extra" not in ANNOTATORS:
    ANNOTATORS.register("odd-extra", "test only: pixel-diff with extras JSON cannot hold on instructions with 'odd'",
                        config_cls=PixelDiffConfig)(lambda **kw: OddExtra(**kw))
if "hang-diff" not in ANNOTATORS:
    ANNOTATORS.register("hang-diff", "test only: pixel-diff that never returns on instructions with 'hang'",
                        config_cls=PixelDiffConfig)(lambda **kw: HangDiff(**kw))
if "bad-output" not in ANNOTATORS:
    ANNOTATORS.register("bad-output", "test only: pixel-diff that breaks the output contract on pairs named *bad*",
                        config_cls=BadOutputConfig)(lambda **kw: BadOutput(**kw))
if "short-load" not in ANNOTATORS:
    ANNOTATORS.register("short-load", "test only: pixel-diff whose build the machine refuses memory or a thread",
                        config_cls=ShortLoadConfig)(lambda **kw: ShortLoad(**kw))
if "slow-load" not in ANNOTATORS:
    ANNOTATORS.register("slow-load", "test only: pixel-diff that takes load_delay_ms to build")(
        lambda **kw: SlowLoad(**kw))
if "slow-diff" not in ANNOTATORS:
    ANNOTATORS.register("slow-diff", "test only: pixel-diff with a delay per batch", config_cls=SlowDiffConfig)(
        lambda **kw: SlowDiff(**kw))
if "oom-diff" not in ANNOTATORS:
    ANNOTATORS.register("oom-diff", "test only: pixel-diff refused memory on instructions with 'oom'",
                        config_cls=PixelDiffConfig)(lambda **kw: OomDiff(**kw))
if "poison-diff" not in ANNOTATORS:
    ANNOTATORS.register("poison-diff", "test only: pixel-diff that raises on instructions with 'poison'",
                        config_cls=PixelDiffConfig)(
        lambda **kw: PoisonDiff(**kw))


class ExitReader(ManifestCorpus):
    """A plugin's corpus reader that gives up mid-shard (in the pipeline's reading thread): sys.exit(4), or a
    KeyboardInterrupt of its own, which ends the reading of every shard after it too."""

    format = "exit-jsonl"

    def read(self, shard):
        stop = (self.path if self.path.is_dir() else self.path.parent) / "exit-reader.stop"
        for item in super().read(shard):
            if stop.exists() and item.instruction and "exit" in item.instruction:
                sys.exit(4)
            if stop.exists() and item.instruction and "interrupt" in item.instruction:
                raise KeyboardInterrupt("the reader's own")     # not Ctrl-C: signals reach the main thread only
            yield item


if "exit-jsonl" not in CORPUS_READERS:
    CORPUS_READERS.register("exit-jsonl", "test only: jsonl that calls sys.exit(4) on 'exit' while "
                            "exit-reader.stop exists")(ExitReader)



class KillDiff(PixelDiff):
    name = "kill-diff"

    def _predict_batch(self, pairs):
        if any(pair.instruction and "die" in pair.instruction for pair in pairs):
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._predict_batch(pairs)


if "kill-diff" not in ANNOTATORS:
    ANNOTATORS.register("kill-diff", "test only: pixel-diff that SIGKILLs its process on instructions with 'die'",
                        config_cls=PixelDiffConfig)(lambda **kw: KillDiff(**kw))


class WeightsDiffConfig(PixelDiffConfig):
    weights: str = ""


class WeightsDiff(PixelDiff):
    name = "weights-diff"
    config_cls = WeightsDiffConfig

    def _predict_batch(self, pairs):
        from sigma.models import load_model

        if any(pair.instruction and "weights" in pair.instruction for pair in pairs):
            load_model(self.config.weights)
        return super()._predict_batch(pairs)


if "weights-diff" not in ANNOTATORS:
    ANNOTATORS.register("weights-diff", "test only: pixel-diff that loads its saved model (weights) on instructions "
                        "with 'weights'", config_cls=WeightsDiffConfig)(lambda **kw: WeightsDiff(**kw))
