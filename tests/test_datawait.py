"""`sigma.training.datawait`: the wait for a batch is cut by a real SIGTERM or the deadline, and nothing else is.
The whole run (a data worker stuck on a FIFO) is in tests/test_training_signals.py; these pin the edges fast."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from sigma.lifeline import signal_noted
from sigma.training.datawait import DataWait, DataWaitCut


def _stuck() -> Iterator[int]:
    """A loader whose batch never comes, waking as torch's does (in slices) so that handlers run."""
    while True:
        time.sleep(0.05)
        yield from ()


def _sigterm_in(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()
    return timer


def test_a_sigterm_while_waiting_cuts_the_wait_and_one_elsewhere_is_only_noted():
    """Inside `next`: `DataWaitCut("sigterm")`, within a fraction of a second. Outside it (the step's work): only
    noted, no exception — then the next wait is cut at once, before it blocks. The handlers are put back."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)
    with signal_noted(signal.SIGTERM) as noted:
        wait = DataWait(noted, None, timed=lambda: True)
        with wait.armed():
            assert wait.next(iter([7])) == 7
            _sigterm_in(0.2).join()
            deadline = time.monotonic() + 5
            while not noted and time.monotonic() < deadline:    # "a step": the handler runs, raises nothing
                time.sleep(0.01)
            assert noted
            with pytest.raises(DataWaitCut) as cut:
                wait.next(_stuck())
            assert cut.value.reason == "sigterm"
        noted.arrived = False
        with DataWait(noted, None, timed=lambda: True).armed() as wait:
            _sigterm_in(0.3)
            started = time.monotonic()
            with pytest.raises(DataWaitCut) as cut:
                wait.next(_stuck())
            assert cut.value.reason == "sigterm" and time.monotonic() - started < 3
            _sigterm_in(0.0).join()                   # a second one while the trainer pauses: noted only
            time.sleep(0.2)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)) == before


def test_the_deadline_cuts_a_timed_wait_only():
    """Past the deadline, a wait the deadline counts for (`timed`) is cut with "max_minutes"; a wait it does not
    count for (the stretch's first batch, the end of the run) ends as the iterator says."""
    with signal_noted(signal.SIGTERM) as noted:
        timed = [False]
        with DataWait(noted, time.monotonic() + 0.3, timed=lambda: timed[0]).armed() as wait:
            assert wait.next(iter([1])) == 1
            time.sleep(0.5)
            assert wait.next(iter([2])) == 2          # past the deadline, but not timed
            timed[0] = True
            with pytest.raises(DataWaitCut) as cut:
                wait.next(iter([3]))                  # past it before the wait began: cut at once
            assert cut.value.reason == "max_minutes"
        with DataWait(noted, time.monotonic() + 0.3, timed=lambda: True).armed() as wait:
            started = time.monotonic()
            with pytest.raises(DataWaitCut) as cut:
                wait.next(_stuck())                   # the deadline passes while it waits
            assert cut.value.reason == "max_minutes" and 0.3 <= time.monotonic() - started < 3
    assert not noted


def test_outside_the_main_thread_nothing_is_armed():
    """Only the main thread may set handlers: elsewhere `next` is plain `next`."""
    got: list = []

    def run() -> None:
        with DataWait(True, time.monotonic() - 1, timed=lambda: True).armed() as wait:
            got.append(list(wait.around(iter([1, 2]))))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert got == [[1, 2]]
