"""A saved model's folder held by a real saver stopped mid-commit, for the front ends that load it (a fleet worker
building a run's annotator, `sigma worker` at start-up): a real `save_model` in a process of its own, stopped
(SIGSTOP) by an audit hook at its rename of config.json — inside the commit, its exclusive flock on the folder held —
as Ctrl-Z or a hung network write leave one. It saves the model `save_tiny` saves (tiny-lite, seed 0: the same bytes),
so the folder's weights digest — what a batch run's hash names — is the same before, during and after."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

SEED = 0

# A real saver of a tiny-lite (its config's `image_size` SIZE; 0: the preset's own), seeded SEED, stopped or killed
# (STOP: a signal's name, or "none") by an audit hook at its rename of config.json — inside the commit, its weights
# already in place; its state dict written first to STATE ("-": not), for a test to compare with. Its stdout says
# "at the config's rename" there.
SAVER = """import os, signal, sys
from pathlib import Path
import torch
folder, stop, size, seed, state = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def hook(event, args):
    if stop != "none" and event == "os.rename" and Path(os.fspath(args[1])) == folder / "config.json":
        print("at the config's rename", flush=True)
        os.kill(os.getpid(), getattr(signal, stop))
sys.addaudithook(hook)
from sigma.models import build_model, preset_config, save_model
torch.manual_seed(seed)
model = build_model(preset_config("tiny-lite", image_size=size) if size else "tiny-lite")
if state != "-":
    torch.save(model.state_dict(), state)
save_model(model, folder)
"""


def saver(folder: Path, stop: str, size: int = 0, seed: int = SEED, state: Path | None = None,
          program: str = SAVER, **kw: Any) -> subprocess.Popen:
    """`SAVER` (or `program`, a wrapper of it) in a process of its own, its stdout and stderr piped as text."""
    return subprocess.Popen([sys.executable, "-c", program, str(folder), stop, str(size), str(seed),
                             str(state) if state is not None else "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def save_tiny(folder: Path) -> Path:
    """The model the stopped saver saves, saved whole into `folder` here."""
    from sigma.models import build_model, save_model

    torch.manual_seed(SEED)
    save_model(build_model("tiny-lite"), folder)
    return folder


def stopped_saver(folder: Path) -> subprocess.Popen:
    """A saver of `folder` stopped inside its commit (its exclusive flock held), once this returns. The caller
    resumes it (`os.kill(pid, SIGCONT)`) and must `end_saver` it in a `finally`."""
    stopped = saver(folder, "SIGSTOP")
    try:
        line = stopped.stdout.readline().strip()
        assert line == "at the config's rename", (line, stopped.stderr.read() if stopped.poll() is not None else "")
        assert os.waitpid(stopped.pid, os.WUNTRACED)[1]               # stopped, the commit's flock held
    except BaseException:
        end_saver(stopped)
        raise
    return stopped


def resume_saver(saver: subprocess.Popen) -> None:
    """SIGCONT: the saver finishes its commit and exits 0 (its folder then holds the same model, whole)."""
    os.kill(saver.pid, signal.SIGCONT)
    assert saver.wait(timeout=120) == 0, saver.stderr.read()


def end_saver(saver: subprocess.Popen) -> None:
    """A saver still there (a failed test) is killed: the kernel drops its flock."""
    if saver.poll() is None:
        os.kill(saver.pid, signal.SIGCONT)
        saver.kill()
        saver.wait(timeout=30)
