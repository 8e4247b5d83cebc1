"""Python source for real subprocesses that stop or die at a chosen instant (an audit hook, not a mock): the real
writer runs, and the hook fires at its first rename of a temporary file — written (and synced, where the writer
syncs), never renamed into place — which is where a kill leaves the junk the sweeps must know."""


def at_first_temp_rename(signal_expr: str = "signal.SIGKILL", containing: str = "") -> str:
    """The prelude of a `python -c` program: at the first `os.rename` (what os.replace raises) of a `*.tmp` file, print
    its name (the test reads which file was left) and send this process `signal_expr` (SIGKILL: dies; SIGSTOP: holds
    there for the test to act around it). `containing`: only a temporary file whose name holds it (the rename of
    the one output a test means, after others of the same writer). The writer's own code follows it."""
    return f"""import os, signal, sys
from pathlib import Path
_first = []
def _hook(event, args):
    if event == "os.rename" and not _first and str(args[0]).endswith(".tmp") and {containing!r} in Path(args[0]).name:
        _first.append(1)
        print(Path(args[0]).name, flush=True)
        os.kill(os.getpid(), {signal_expr})
sys.addaudithook(_hook)
"""
