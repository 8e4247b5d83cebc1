"""A trainer's wait for its next batch, cut short by a stop: a SIGTERM, or the `max_minutes` deadline.

Both were acted on between steps only. A trainer waiting for a batch that a data worker stuck in a read (a hung
network mount) would never deliver waited for ever: a scheduler's SIGTERM grace period ran out and the run was
SIGKILLed, the steps since its last checkpoint lost, and `max_minutes` overshot without bound. Now the wait, and
nothing else, is cut: while the main thread is inside the data loader's `__next__` (`DataWait.next`), a SIGTERM's
handler, or the deadline (a watch thread asks the main thread to run the SIGALRM handler), raises `DataWaitCut`
there. The model then stands at the end of the last completed step, and the trainer pauses as between steps.

Without data workers (`num_workers=0`) the batch is built in the main thread, sample by sample, inside the
dataset's own code: a SIGTERM was only noted there, and one batch of 1024 crops at 192 px (minutes) outlasted a
scheduler's grace period. There the handler raises nothing (it would land anywhere in that code); the stop is looked
for between two samples (`DataWait.between_samples`, `in_process`), and the wait is cut there the same way.

Bounded: torch's loader waits on its result queue in slices of `MP_STATUS_CHECK_INTERVAL` (5 s), and Python runs a
signal's handler in the main thread at the latest when a slice ends (at once when the kernel hands the signal to the
main thread: its poll is interrupted).
"""
from __future__ import annotations

import _thread
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: how often the watch thread looks, once the deadline has passed, whether the main thread waits for data
WATCH_S = 0.5


class DataWaitCut(BaseException):
    """Raised into the main thread's wait for a batch, and only there. A BaseException, as KeyboardInterrupt: torch's
    loader catches `Exception` around its queue read (to look at its workers, then re-raise) and must let it pass
    untouched; nothing but the trainer's loop catches it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DataWait:
    """The cuttable wait. `terminated` (truthy once a SIGTERM was noted), `deadline` (a `time.monotonic()` value, or
    None) and `timed` (asked as each wait begins: whether the deadline counts for it) come from the trainer."""

    def __init__(self, terminated: Any, deadline: float | None, timed: Callable[[], bool],
                 in_process: bool = False) -> None:
        self.terminated, self.deadline, self._timed_now = terminated, deadline, timed
        self.in_process = in_process    # the batch is built in this thread: stops are looked for between samples
        self._waiting = False           # the main thread is inside the loader's __next__
        self._timed = False             # ... and the deadline counts for this wait
        self._enabled = False           # armed: the handlers are ours (main thread only)

    def _cut(self, reason: str) -> None:
        """One-shot: the flag is cleared before the raise, so a second signal while the trainer pauses only notes."""
        self._waiting = False
        raise DataWaitCut(reason)

    def _past_deadline(self) -> bool:
        return self.deadline is not None and self._timed and time.monotonic() >= self.deadline

    def _raise_if_due(self) -> None:
        if self.terminated:
            self._cut("sigterm")
        if self._past_deadline():
            self._cut("max_minutes")

    @contextmanager
    def armed(self) -> Iterator[DataWait]:
        """The SIGTERM handler chained (the trainer's own, which notes it, runs first), a SIGALRM handler and the
        deadline's watch thread, for the loop's time. Outside the main thread (only it may set handlers) or where
        SIGTERM is not handled in Python (ignored: the caller's choice), nothing is armed and `next` is plain."""
        term = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is not threading.main_thread() or not callable(term):
            yield self
            return
        if self.in_process:             # no handler raises: `between_samples` looks, at a sample's edge
            self._enabled = True
            try:
                yield self
            finally:
                self._enabled = self._waiting = False
            return

        def on_term(signum: int, frame: Any) -> None:
            term(signum, frame)
            if self._waiting:
                self._cut("sigterm")

        def on_alarm(_signum: int, _frame: Any) -> None:
            if self._waiting and self._past_deadline():
                self._cut("max_minutes")

        alarm = signal.signal(signal.SIGALRM, on_alarm)
        signal.signal(signal.SIGTERM, on_term)
        stop = threading.Event()
        watch = threading.Thread(target=self._watch, args=(stop,), name="sigma-data-deadline", daemon=True)
        self._enabled = True
        try:
            if self.deadline is not None:
                watch.start()
            yield self
        finally:
            self._enabled = self._waiting = False
            stop.set()
            if watch.is_alive():
                watch.join()
            signal.signal(signal.SIGTERM, term)
            signal.signal(signal.SIGALRM, alarm if alarm is not None else signal.SIG_DFL)

    def _watch(self, stop: threading.Event) -> None:
        """Asleep until the deadline; then, while the main thread waits for data the deadline counts for, it is asked
        to run the SIGALRM handler (`interrupt_main`: no real signal, so no other thread's system call is cut)."""
        if stop.wait(max(0.0, self.deadline - time.monotonic())):
            return
        while not stop.is_set():
            if self._waiting and self._timed:
                _thread.interrupt_main(signal.SIGALRM)
            stop.wait(WATCH_S)

    def next(self, iterator: Iterator[Any]) -> Any:
        """`next(iterator)` (the data loader's), cut short by `DataWaitCut` when a stop comes while it waits, or
        came before it began (a SIGTERM noted after the last between-steps check, the deadline passed: checked once
        the flag is up, so that nothing falls between the two). StopIteration passes through."""
        if not self._enabled:
            return next(iterator)
        self._timed = self._timed_now()
        self._waiting = True
        try:
            self._raise_if_due()
            batch = next(iterator)
            if self.in_process:         # a stop in the batch's last sample or its collation: the step is not run
                self._raise_if_due()
            return batch
        finally:
            self._waiting = False

    def between_samples(self) -> None:
        """Called before each sample of a batch built in this thread (`in_process`): `DataWaitCut` when a stop came
        while the batch was being built. Outside `next` (the batch of a validation, say) it does nothing."""
        if self._waiting:
            self._raise_if_due()

    def around(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """The batches of `iterator`, each waited for through `next`."""
        while True:
            try:
                batch = self.next(iterator)
            except StopIteration:
                return
            yield batch
