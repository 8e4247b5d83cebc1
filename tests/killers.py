"""Python source for real subprocesses that stop or die at a chosen instant (an audit hook, not a mock): the real
writer runs, and the hook fires at its first rename of a temporary file — written (and synced, where the writer
syncs), never renamed into place — which is where a kill leaves the junk the sweeps must know. And one that records
the order of a real command's fsyncs and renames (`RECORD_SYNCS`), for what only a power cut would show."""


def at_first_temp_rename(signal_expr: str = "signal.SIGKILL", containing: str = "", into: str = "") -> str:
    """The prelude of a `python -c` program: at the first `os.rename` (what os.replace raises) or `os.link` (how a file
    is put in place without replacing one: `sigma.export.placing`) of a `*.tmp` file, print
    its name (the test reads which file was left) and send this process `signal_expr` (SIGKILL: dies; SIGSTOP: holds
    there for the test to act around it). `containing`: only a temporary file whose name holds it (the rename of
    the one output a test means, after others of the same writer). `into`: only a rename onto a file of that name
    (a file's own move into place, not the rename of a journal that names it). The writer's own code follows it."""
    return f"""import os, signal, sys
from pathlib import Path
_first = []
def _hook(event, args):
    if event in ("os.rename", "os.link") and not _first and str(args[0]).endswith(".tmp") \
            and {containing!r} in Path(args[0]).name and Path(args[1]).name == ({into!r} or Path(args[1]).name):
        _first.append(1)
        print(Path(args[0]).name, flush=True)
        os.kill(os.getpid(), {signal_expr})
sys.addaudithook(_hook)
"""


def record_syncs(body: str) -> str:
    """A program that runs `body` with every os.fsync recorded as ["fsync", path of the descriptor] (then made for
    real), every rename (os.replace, Path.replace) as ["rename", src, dst] and every hard link as ["link", src, dst],
    in the order they were made, from
    every thread; sys.argv[1] (EVENTS.json) gets the list at the end, and the exit status is `body`'s `rc` (0 when
    it sets none). A power cut cannot be staged in a test: the order of these calls is what decides what one could
    lose."""
    return r'''import json, os, sys
events = []
real_fsync = os.fsync
def fsync(fd):
    events.append(["fsync", os.readlink(f"/proc/self/fd/{fd}")])
    real_fsync(fd)
os.fsync = fsync                     # recorded, then the real one: the run's own calls, in their order
def hook(event, args):
    if event == "os.rename":
        events.append(["rename", os.fspath(args[0]), os.fspath(args[1])])
    elif event == "os.link":
        events.append(["link", os.fspath(args[0]), os.fspath(args[1])])
sys.addaudithook(hook)
rc = 0
''' + body + r'''
with open(sys.argv[1], "w") as handle:
    json.dump(events, handle)
sys.exit(rc)
'''


# `python RECORD_SYNCS_FILE EVENTS.json sigma-args...`: runs `sigma.cli.main(sigma-args)` under `record_syncs`.
RECORD_SYNCS = record_syncs("from sigma.cli import main\nrc = main(sys.argv[2:])")

