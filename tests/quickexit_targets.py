"""Targets of `QuickExitSpawnProcess` children for tests/test_training_signals.py (a small module: the spawned child
imports it by name, not the whole test module)."""
from __future__ import annotations

import atexit
from pathlib import Path


def hand_back_then_return(queue, marker: str) -> None:
    """Hands a value back through a multiprocessing queue, registers an interpreter exit hook that would leave
    `marker`, and returns normally."""
    atexit.register(Path(marker).write_text, "finalised")
    queue.put("handed back")


def fail(marker: str) -> None:
    atexit.register(Path(marker).write_text, "finalised")
    raise RuntimeError("the target failed")
