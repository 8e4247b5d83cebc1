"""A `--procs` plugin for inference processes that fail to start, on a test's word: with $SIGMA_TEST_START_FAILS
naming a folder, each inference process that imports it takes the next number (`DIR/start-N`, made exclusively),
and one that finds a `DIR/fail-*` file claims it (renamed to `DIR/failed-N`, atomic: each file fails one start) and
raises at import, as a start that ran out of memory or met a file system briefly gone does. A test drops `fail-*`
files to fail the next starts (the replacements of a child it killed). In the driver it does nothing."""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

_folder = os.environ.get("SIGMA_TEST_START_FAILS")
if _folder and multiprocessing.parent_process() is not None:
    folder = Path(_folder)
    number = 1
    while True:
        try:
            fd = os.open(folder / f"start-{number}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            number += 1
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        break
    for ticket in sorted(folder.glob("fail-*")):
        try:
            ticket.rename(folder / f"failed-{number}")
        except OSError:         # another start claimed it first
            continue
        raise RuntimeError(f"test: inference process start {number} fails at import")
