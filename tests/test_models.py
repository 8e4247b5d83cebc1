"""SigmaNet: every preset family on tiny configs — shapes, NaN, gradients, frozen backbone, strict
save/load, weight resolution (local folder, offline HF cache), and the prior-never-gates invariant."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from killers import at_first_temp_rename
from modelsavers import SAVER

from sigma.errors import ConfigError, WeightsNotFoundError
from sigma.models import (
    PRESETS,
    Regions,
    SigmaNetConfig,
    WeightsMismatchError,
    build_model,
    load_model,
    preset_config,
    resolve_hf_reference,
    save_model,
)
from sigma.models.presets import TINY_DINOV2

transformers = pytest.importorskip("transformers")


# Tiny tensors: one intra-op thread (the shared fixture in conftest.py says why).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["tiny-lite", "tiny-dinov2"]
SIZES = {"tiny-lite": (64, 96), "tiny-dinov2": (56, 84)}


def _inputs(name: str, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = SIZES[name]
    a = torch.rand(batch, 3, h, w, generator=g)
    b = torch.rand(batch, 3, h, w, generator=g)
    prior = torch.rand(batch, 1, h, w, generator=g)
    regions = [[{"box": [0.1, 0.1, 0.6, 0.5], "score": 0.9, "image": "edited"},
                {"box": [0.5, 0.5, 0.52, 0.52], "score": 0.4, "image": "original"}]] + [[]] * (batch - 1)
    return a, b, prior, regions


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    torch.manual_seed(0)
    return request.param, build_model(request.param, pretrained=False)


def test_forward_shapes_and_finite(tiny):
    name, model = tiny
    model.eval()
    a, b, prior, regions = _inputs(name)
    with torch.no_grad():
        out = model(a, b, prior=prior, edit_type=["add", None], regions=regions)
    d = model.config.dim
    assert out.logits.shape == (2, 1, *SIZES[name])
    assert out.edit_feat.shape[:2] == (2, d) and out.noise_feat.shape == out.edit_feat.shape
    assert out.noise_pred.shape == (2, 1, *out.edit_feat.shape[-2:])
    for t in (out.logits, out.edit_feat, out.noise_feat, out.noise_pred):
        assert torch.isfinite(t).all()
    with torch.no_grad():   # no prior, no instruction: still defined (null token, uninformative prior)
        bare = model(a, b)
    assert bare.logits.shape == out.logits.shape and torch.isfinite(bare.logits).all()


def test_backward_reaches_every_trainable_parameter_and_frozen_stays_frozen(tiny):
    name, model = tiny
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    a, b, prior, regions = _inputs(name, seed=1)
    out = model(a, b, prior=prior, edit_type=["remove", "replace"], regions=regions)
    loss = (out.logits.sigmoid().mean() + out.noise_pred.abs().mean() + out.edit_feat.pow(2).mean()
            + out.noise_feat.pow(2).mean())
    loss.backward()
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert not dead, f"no gradient reaches {dead}"
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    if name == "tiny-dinov2":
        assert before, "the DINOv2 backbone must be frozen"
        assert all(n.startswith("backbone.") for n in before)
        assert not model.backbone.model.training, "a frozen backbone stays in eval mode under model.train()"
    for n, p in model.named_parameters():
        if n in before:
            assert p.grad is None and torch.equal(p, before[n]), f"frozen {n} changed"
    model.zero_grad(set_to_none=True)


def test_bf16_autocast_forward_and_backward(tiny):
    """The GPU path runs under bf16 autocast; CPU autocast exercises the same dtype plumbing."""
    name, model = tiny
    a, b, prior, regions = _inputs(name, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.train()(a, b, prior=prior, edit_type="attribute", regions=regions)
    assert torch.isfinite(out.logits.float()).all()
    out.logits.float().mean().backward()
    model.zero_grad(set_to_none=True)


def test_save_load_roundtrip_is_exact(tiny, tmp_path):
    name, model = tiny
    model.eval()
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    a, b, prior, regions = _inputs(name)
    with torch.no_grad():
        assert torch.equal(model(a, b, prior, "add", regions).logits, loaded.eval()(a, b, prior, "add", regions).logits)
    # the shipped layout: X.safetensors beside X.json
    (tmp_path / "m" / "model.safetensors").rename(tmp_path / "x.safetensors")
    (tmp_path / "m" / "config.json").rename(tmp_path / "x.json")
    again = load_model(tmp_path / "x.safetensors")
    assert all(torch.equal(ref[k], v) for k, v in again.state_dict().items())
    save_model(model, tmp_path / "w" / "sigma-x.safetensors")       # written straight in that layout
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["sigma-x.json", "sigma-x.safetensors"]
    assert all(torch.equal(ref[k], v) for k, v in load_model(tmp_path / "w" / "sigma-x.safetensors")
               .state_dict().items())


# A real saver that stops (SIGSTOP) or dies (SIGKILL) at its first rename: its temporary files written, none
# renamed into place yet. An audit hook on `os.rename` (what os.replace raises), not a mock: the real save_model.
_SAVER = at_first_temp_rename("getattr(signal, sys.argv[2])") + """import torch
from sigma.models import build_model, save_model
torch.manual_seed(1)
model = build_model("tiny-lite")
save_model(model, sys.argv[1])
torch.save(model.state_dict(), Path(sys.argv[1]).parent / "saved_state.pt")
"""


def test_savers_into_one_folder_never_share_a_temporary_file_and_a_killed_ones_is_swept(tmp_path):
    """save_model wrote the fixed `model.safetensors.tmp`: a second saver into the folder (a run's model/ saved
    while another process saved there) truncated the first's file and renamed it away, and the first then failed
    (FileNotFoundError) — or, killed, left a name no sweep knew. Each saver now writes names of its own
    (`.NAME.PID.RANDOM.tmp`): a saver stopped mid-save finishes its save after another one saved over it, and what
    a SIGKILLed saver left goes with the next save into the folder; a live saver's temporary file stays."""
    import os
    import signal
    import subprocess
    import sys

    from sigma.models.factory import CONFIG_NAME, WEIGHTS_NAME
    from sigma.tempfiles import pid_alive

    folder = tmp_path / "m"
    stopped = subprocess.Popen([sys.executable, "-c", _SAVER, str(folder), "SIGSTOP"], stdout=subprocess.PIPE,
                               text=True)
    try:
        left = stopped.stdout.readline().strip()
        assert os.waitpid(stopped.pid, os.WUNTRACED)[1] and left.endswith(".tmp"), left    # stopped at its rename
        other = build_model("tiny-lite")
        save_model(other, folder)                  # another saver, while the first is between its write and rename
        assert (folder / left).is_file()           # the stopped saver's file was neither truncated nor taken
        os.kill(stopped.pid, signal.SIGCONT)
        assert stopped.wait(timeout=120) == 0      # it finishes: its save is the one in the folder now
    finally:
        if stopped.poll() is None:
            stopped.kill()
            stopped.wait()
    want = torch.load(tmp_path / "saved_state.pt")
    got = load_model(folder).state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]

    killed = subprocess.run([sys.executable, "-c", _SAVER, str(folder), "SIGKILL"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    dead = killed.stdout.strip()         # its journal's temporary file, beside the weights and config it staged
    assert dead.startswith(f"..{CONFIG_NAME}.") and not pid_alive(int(dead.split(".")[-3]))   # .NAME.PID.RANDOM.tmp
    assert (folder / dead).is_file()
    assert len([p for p in folder.iterdir() if p.name.startswith(f".{WEIGHTS_NAME}.")]) == 1
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        in_progress = folder / f".{WEIGHTS_NAME}.{live.pid}.0badf00d.tmp"
        in_progress.write_bytes(b"a live saver's")
        save_model(other, folder)
        assert not (folder / dead).exists()        # the dead saver's file is gone
        assert in_progress.read_bytes() == b"a live saver's"
        assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, in_progress.name])
    finally:
        live.kill()
        live.wait()


def _pair_saver(folder, stop: str, size: int, seed: int, **kw):
    """A real saver of a tiny-lite whose config says `image_size` SIZE (the weights alike: only the config tells two
    such models apart), stopped or killed (STOP) at its rename of config.json (`modelsavers.SAVER`), its state
    written beside the folder first (`state{seed}.pt`) for `_whole` to compare with."""
    from modelsavers import saver

    return saver(folder, stop, size, seed, state=folder.parent / f"state{seed}.pt", **kw)


def _whole(folder, tmp_path, size: int, seed: int) -> bool:
    """Whether `folder` loads as exactly the model saver `seed` saved: its config and its weights."""
    model = load_model(folder)
    want = torch.load(tmp_path / f"state{seed}.pt")
    got = model.state_dict()
    return model.config.image_size == size and all(torch.equal(want[k], got[k]) for k in want)


def test_a_saver_killed_between_its_weights_and_its_config_leaves_no_mixed_model(tmp_path):
    """save_model renamed the weights, then config.json: SIGKILLed between the two renames, it left its weights beside
    the old model's config, and the folder loaded as a model no one saved (here: the new weights with the old
    config's image_size). The two are one set now (`replace_together`, config last): the old config goes first, and
    the load that finds no config finishes the killed save from its journal — the new model whole, nothing left."""
    import signal

    from sigma.models.factory import CONFIG_NAME, WEIGHTS_NAME

    folder = tmp_path / "m"
    old = _pair_saver(folder, "none", 64, 0)
    assert old.wait(timeout=120) == 0, old.stderr.read()
    assert _whole(folder, tmp_path, 64, 0)
    killed = _pair_saver(folder, "SIGKILL", 96, 1)
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stderr.read()
    assert killed.stdout.read().strip() == "at the config's rename"
    assert _whole(folder, tmp_path, 96, 1)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_init_from_a_folder_a_killed_save_left_starts_from_that_save(tmp_path):
    """A save killed at its config's rename leaves the config's journal where config.json was; `load_model` finishes
    it, but training's `init_from` looked for config.json first and refused the folder (`invalid_config: no saved
    model`). Now it is taken, and the load gives the killed save's model whole."""
    import signal

    from sigma.models.factory import CONFIG_NAME
    from sigma.training.loop import init_source

    folder = tmp_path / "m"
    old = _pair_saver(folder, "none", 64, 0)
    assert old.wait(timeout=120) == 0, old.stderr.read()
    killed = _pair_saver(folder, "SIGKILL", 96, 1)
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stderr.read()
    assert not (folder / CONFIG_NAME).exists() and list(folder.glob(f".{CONFIG_NAME}.*.pending"))
    assert init_source(str(folder)) == folder
    assert _whole(folder, tmp_path, 96, 1)


def test_the_submit_check_of_a_saved_model_takes_what_load_model_opens_and_reads_nothing(tmp_path):
    """`check_model_files` (what `sigma batch submit` and POST /v1/batches check options.weights with): a saved
    folder passes, and so does a folder a save was killed in at its config's rename (its journal there, config.json
    not: the load finishes it); a missing path, a folder that is no saved model, a lone X.safetensors or a file of
    another kind are `weights_not_found` naming what is missing — before, the run was queued and every worker's load
    failed."""
    import signal

    from sigma.models.factory import CONFIG_NAME, WEIGHTS_NAME, check_model_files

    folder = tmp_path / "m"
    old = _pair_saver(folder, "none", 64, 0)
    assert old.wait(timeout=120) == 0, old.stderr.read()
    check_model_files(folder)
    killed = _pair_saver(folder, "SIGKILL", 96, 1)
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stderr.read()
    assert not (folder / CONFIG_NAME).exists() and list(folder.glob(f".{CONFIG_NAME}.*.pending"))
    check_model_files(folder)
    (tmp_path / "empty").mkdir()
    (tmp_path / "lone.safetensors").write_bytes((folder / WEIGHTS_NAME).read_bytes())
    (tmp_path / "notes.txt").write_text("not a model")
    for path, said in ((tmp_path / "gone", "does not exist"), (tmp_path / "empty", f"{WEIGHTS_NAME} is missing"),
                       (tmp_path / "lone.safetensors", "lone.json is missing"),
                       (tmp_path / "notes.txt", "is a file, not a saved model")):
        with pytest.raises(WeightsNotFoundError, match=said):
            check_model_files(path, "options.weights")


def test_two_savers_at_once_leave_one_whole_model(tmp_path):
    """Two savers into one folder at once: the first stopped (SIGSTOP) at its config's rename, its weights in place,
    while the second saved whole, then the first renamed its config over the second's — the second's weights
    beside the first's config. The moves of a set now hold an flock on the folder: the second stages its set and
    waits, then commits after the first; the folder holds the second's whole model."""
    import os
    import signal
    import time

    from sigma.models.factory import CONFIG_NAME, WEIGHTS_NAME

    folder = tmp_path / "m"
    first = _pair_saver(folder, "SIGSTOP", 96, 1)
    second = None
    try:
        assert first.stdout.readline().strip() == "at the config's rename"
        assert os.waitpid(first.pid, os.WUNTRACED)[1]                 # stopped, its weights renamed into place
        second = _pair_saver(folder, "none", 128, 2)
        deadline = time.monotonic() + 60
        while second.poll() is None and time.monotonic() < deadline and \
                len(list(folder.glob(f".{CONFIG_NAME}.*.pending"))) < 2:
            time.sleep(0.05)
        time.sleep(0.5)                          # time enough to commit, were it not to wait for the first
        assert second.poll() is None, second.stderr.read()          # waiting for the first's commit
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=120) == 0 and second.wait(timeout=120) == 0, second.stderr.read()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert _whole(folder, tmp_path, 128, 2)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


# A real loader in a process of its own: prints the loaded config's image_size and whether every weight equals the
# state saver SEED wrote (a mixed model — one saver's config, another's weights — prints False or fails the load).
_LOADER = """import sys
from pathlib import Path
import torch
from sigma.models import load_model
folder, seed = Path(sys.argv[1]), sys.argv[2]
model = load_model(folder)
want, got = torch.load(folder.parent / f"state{seed}.pt"), model.state_dict()
print(model.config.image_size, all(torch.equal(want[k], got[k]) for k in want), flush=True)
"""


def _waits_on_folder(pid: int, folder: Path) -> bool:
    """Whether `pid` holds `folder` itself open — a load polling for its shared hold (`reading_lock` tries the
    flock without blocking until its bound, so /proc/locks shows no waiter): seen twice, 0.3 s apart, so a
    passing directory listing is not taken for it."""
    import os
    import time

    def open_now() -> bool:
        try:
            return any(Path(f"/proc/{pid}/fd/{fd}").readlink() == folder for fd in os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return False

    if not open_now():
        return False
    time.sleep(0.3)
    return open_now()


def test_a_load_during_a_live_save_waits_for_its_commit_and_gets_its_whole_model(tmp_path):
    """load_model read config.json and then the weights with nothing between it and a live save_model into the same
    folder: a save stopped mid-commit (here: SIGSTOP at its config's rename, its weights in place and the old config
    removed) made a load in another process fail (`weights_not_found`), and a commit between the two reads gave one
    saver's config beside another's weights. A load now reads both under a shared flock on the folder (the commit
    holds it exclusively): it waits for the stopped saver, and once the saver goes on (SIGCONT) it returns that
    saver's whole model. Every wait here has a timeout (a deadlock fails the test, never hangs it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from sigma.models.factory import CONFIG_NAME, WEIGHTS_NAME

    folder = tmp_path / "m"
    old = _pair_saver(folder, "none", 64, 0)
    assert old.wait(timeout=120) == 0, old.stderr.read()
    saver = _pair_saver(folder, "SIGSTOP", 96, 1)
    loader = None
    try:
        assert saver.stdout.readline().strip() == "at the config's rename"
        assert os.waitpid(saver.pid, os.WUNTRACED)[1]                 # stopped holding the commit lock
        loader = subprocess.Popen([sys.executable, "-c", _LOADER, str(folder), "1"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while loader.poll() is None and time.monotonic() < deadline and not _waits_on_folder(loader.pid, folder):
            time.sleep(0.05)
        assert loader.poll() is None, loader.communicate(timeout=30)     # waiting, not failed nor done
        assert _waits_on_folder(loader.pid, folder)
        os.kill(saver.pid, signal.SIGCONT)
        assert saver.wait(timeout=120) == 0, saver.stderr.read()
        out, err = loader.communicate(timeout=120)
        assert loader.returncode == 0, err
        assert out.split() == ["96", "True"]
    finally:
        for proc in (saver, loader):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=30)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def _reporting(program: str) -> str:
    """`program` (a `python -c` source) that prints a SigmaError's code and message and exits 3 on one: what a
    front end would say, read by the test."""
    import textwrap

    return ("import sys\nfrom sigma.errors import SigmaError\ntry:\n" + textwrap.indent(program, "    ")
            + "\nexcept SigmaError as exc:\n    print(exc.code, exc.message, flush=True)\n    sys.exit(3)\n")


def test_a_save_stopped_mid_commit_makes_loads_and_saves_fail_within_their_bound_not_hang(tmp_path):
    """A saver stopped mid-commit (Ctrl-Z, SIGSTOP, a hung network write) keeps its exclusive flock on the folder —
    the kernel drops it when the holder dies, not when it stops — and every load there (`sigma annotate`, `sigma
    serve`'s start-up, `sigma eval`, training's `init_from`) and every other save waited for ever without a word.
    Now each waits `$SIGMA_MODEL_LOCK_WAIT_S` at most (2 s here) and fails `weights_busy`, naming the folder, the
    wait and the holder's pid; the other save's set stays staged with its journal. Once the saver goes on (SIGCONT)
    a load gets its whole model, and finishing the folder's journals puts the later save's whole model in place.
    Every wait here has a timeout: without the bound the test fails, it does not hang."""
    import os
    import signal
    import subprocess
    import sys

    from modelsavers import SAVER

    from sigma.models.factory import CONFIG_NAME, WEIGHTS_NAME
    from sigma.tempfiles import finish_replacements

    folder = tmp_path / "m"
    old = _pair_saver(folder, "none", 64, 0)
    assert old.wait(timeout=120) == 0, old.stderr.read()
    saver = _pair_saver(folder, "SIGSTOP", 96, 1)
    env = {**os.environ, "SIGMA_MODEL_LOCK_WAIT_S": "2"}
    loader = other = None
    try:
        assert saver.stdout.readline().strip() == "at the config's rename"
        assert os.waitpid(saver.pid, os.WUNTRACED)[1]                 # stopped holding the commit lock
        loader = subprocess.Popen([sys.executable, "-c", _reporting(_LOADER), str(folder), "1"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        other = _pair_saver(folder, "none", 128, 2, program=_reporting(SAVER), env=env)
        out, err = loader.communicate(timeout=120)                    # without the bound: TimeoutExpired
        assert loader.returncode == 3, (out, err)
        code, message = out.split(" ", 1)
        assert code == "weights_busy", out
        assert str(folder) in message and "2 s" in message and f"pid {saver.pid} (saving)" in message, message
        assert "SIGMA_MODEL_LOCK_WAIT_S" in message and "kill -CONT" in message, message
        out, err = other.communicate(timeout=120)
        assert other.returncode == 3 and out.startswith("weights_busy ") and "journal" in out, (out, err)
        assert len(list(folder.glob(f".{CONFIG_NAME}.*.pending"))) == 2      # the stopped saver's and the other's
        os.kill(saver.pid, signal.SIGCONT)
        assert saver.wait(timeout=120) == 0, saver.stderr.read()
    finally:
        for proc in (saver, loader, other):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=30)
    assert _whole(folder, tmp_path, 96, 1)             # the resumed saver's whole model
    assert len(finish_replacements(folder)) == 1       # the other save, staged whole, is not lost
    assert _whole(folder, tmp_path, 128, 2)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def _paused_at_second_open(folder: str, second: str, body: str = "") -> str:
    """The prelude of a `python -c` program that says where it is in its waits on a folder (`folder`: an expression
    of sys.argv): at its first open of the folder (`_commit_lock`, finishing a killed save's journal) it prints "at
    the commit lock"; at its second `second`, and waits there for a line on stdin — the test puts a stopped saver in
    its way first. An audit hook, not a mock; `body` follows it."""
    return f"""import os, sys
from pathlib import Path
_paused_folder = {folder}
_opens = []
def _paused(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and Path(os.fspath(args[0])) == _paused_folder:
        _opens.append(1)
        print("at the commit lock" if len(_opens) == 1 else {second!r}, flush=True)
        if len(_opens) == 2:
            sys.stdin.readline()
sys.addaudithook(_paused)
""" + body


# A load (`load_model`) paused at its second wait, its shared hold (`reading_lock`)
_PAUSED_LOADER = _paused_at_second_open("Path(sys.argv[1])", "at the read lock", """
from sigma.models import load_model
load_model(Path(sys.argv[1]))
print("loaded", flush=True)
""")

# a saver ready to save (torch and sigma imported) once told to, by a line on its stdin
_SAVER_ON_CUE = "import sys\nimport torch\nimport sigma.models\nsys.stdin.readline()\n"


def _refused_with_the_rest_of_one_bound(folder, make_saver, start_subject, second: str, whose: str, bound: int = 4,
                                        d_size: int = 128) -> int:
    """The scenario of the one-bound tests, run with real processes. S1, a saver stopped mid-commit (the folder's
    commit lock held, its config removed); D, a save whose commit timed out behind S1 (its set staged, its journal
    written); the subject (`start_subject(env)`: a load, a save or a training start, given `bound` s of lock wait),
    which prints "at the commit lock" at its first wait (finishing D's set, behind S1) and `second` at its second,
    where it waits for a line on stdin. Half the bound is spent in the first wait, then S1 resumes; S2, a saver on
    cue, stops mid-commit in the subject's way; the subject goes on and must be refused `weights_busy` naming S2,
    with at most the rest of the one bound (`for the last X s of WHOSE N s wait`: before, `for all of N s`, a second
    bound). S2 is resumed at the end. `make_saver(stop, size, seed, program, **kw)` starts a saver of `folder`
    (`program`: a wrapper of its saver program, or None); D saves a model of `d_size`. Returns the journals in
    `folder` when the subject was refused (S2's, and a refused save's own)."""
    import os
    import re
    import signal
    import subprocess
    import time

    from modelsavers import end_saver, resume_saver

    first = make_saver("SIGSTOP", 0, 1, None)                         # S1: holds the commit lock, config removed
    later = subject = None
    try:
        assert first.stdout.readline().strip() == "at the config's rename"
        assert os.waitpid(first.pid, os.WUNTRACED)[1]
        killed = make_saver("none", d_size, 2, _reporting, env={**os.environ, "SIGMA_MODEL_LOCK_WAIT_S": "1"})
        out, err = killed.communicate(timeout=120)                    # D: staged, journal written, commit refused
        assert killed.returncode == 3 and out.startswith("weights_busy ") and "journal" in out, (out, err)
        later = make_saver("SIGSTOP", 96, 3, lambda program: _SAVER_ON_CUE + program, stdin=subprocess.PIPE)
        subject = start_subject({**os.environ, "SIGMA_MODEL_LOCK_WAIT_S": str(bound)})
        assert subject.stdout.readline().strip() == "at the commit lock"  # finishing D's journal, behind S1
        time.sleep(bound / 2)                                         # half the subject's bound spent on this wait
        resume_saver(first)                                           # S1 commits: the subject finishes D's set
        assert subject.stdout.readline().strip() == second
        later.stdin.write("go\n")
        later.stdin.flush()
        assert later.stdout.readline().strip() == "at the config's rename"
        assert os.waitpid(later.pid, os.WUNTRACED)[1]                 # S2 stopped holding the commit lock
        subject.stdin.write("go\n")
        subject.stdin.flush()
        out, err = subject.communicate(timeout=120)
        assert subject.returncode == 3, (out, err)
        code, message = out.splitlines()[-1].split(" ", 1)
        assert code == "weights_busy" and f"pid {later.pid} (saving)" in message, out
        left = re.search(rf"held it for the last ([0-9.]+) s of {whose} {bound} s wait", message)
        assert left is not None, message                              # before: "held it for all of 4 s"
        assert float(left[1]) <= bound / 2, message                   # the rest of one bound, not a second one
        journals = len(list(folder.glob(".*.pending")))
        resume_saver(later)
    finally:
        end_saver(first)
        for proc in (later, subject):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=30)
    return journals


def _folder_saver(folder):
    """`make_saver` for `_refused_with_the_rest_of_one_bound`: `_pair_saver`s of `folder` (program: a wrapper of
    `modelsavers.SAVER`, or None for it)."""
    from modelsavers import SAVER

    def make(stop, size, seed, program, **kw):
        return _pair_saver(folder, stop, size, seed, program=program(SAVER) if program else SAVER, **kw)
    return make


def test_a_load_that_finishes_a_killed_save_then_waits_for_its_hold_waits_one_bound_in_all(tmp_path):
    """A load finishes a killed save's journal under the folder's commit lock, then takes its shared hold: each wait
    had all of `$SIGMA_MODEL_LOCK_WAIT_S`, so a load that got the commit lock late in its wait (a saver stopped there
    and resumed) and then found another saver stopped mid-commit waited the bound again — twice it in all, past a
    fleet worker's watchdog set just above it (worker_hung instead of a deferral). Now both waits share one deadline:
    here (bound 4 s) the first wait took 2 s, and the load is refused `weights_busy` at the end of the same 4 s, its
    message naming the rest of the load's wait (at most 2 s) — before, `for all of 4 s`, 6 s in all."""
    import subprocess
    import sys

    folder = tmp_path / "m"
    old = _pair_saver(folder, "none", 64, 0)
    assert old.wait(timeout=120) == 0, old.stderr.read()
    journals = _refused_with_the_rest_of_one_bound(
        folder, _folder_saver(folder),
        lambda env: subprocess.Popen([sys.executable, "-c", _reporting(_PAUSED_LOADER), str(folder)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "at the read lock", "this load's")
    assert journals == 1                                              # S2's: D's set was finished by the load
    assert _whole(folder, tmp_path, 96, 3)                            # S2's whole model, once it went on


# A save (`modelsavers.SAVER`, not stopped, follows it) paused at its second open of the folder (`sync_folder`, its own
# set staged and its journal written, just before its commit)
_PAUSED_SAVER = _paused_at_second_open("Path(sys.argv[1])", "at its commit")


def test_a_save_that_finishes_a_killed_save_then_meets_a_holder_at_its_commit_waits_one_bound_in_all(tmp_path):
    """A save finishes the sets killed savers left (`replace_together`'s sweep, under the folder's commit lock), then
    commits its own under the same lock: each wait had all of `$SIGMA_MODEL_LOCK_WAIT_S`, so a save that got the
    lock late in its first wait (a saver stopped there and resumed) and then met another saver stopped mid-commit
    waited the bound again — twice it in all, and its `weights_busy` said `for all of 4 s` of a 6 s wait. Now both
    waits share one bound: here (4 s) the first wait took 2 s, and the commit is refused with the rest, its message
    naming it (at most 2 s of this save's 4 s wait); the save's own set then stays staged, and the next finish puts
    it in place."""
    import subprocess

    from modelsavers import SAVER

    from sigma.models.factory import CONFIG_NAME, WEIGHTS_NAME
    from sigma.tempfiles import finish_replacements

    folder = tmp_path / "m"
    old = _pair_saver(folder, "none", 64, 0)
    assert old.wait(timeout=120) == 0, old.stderr.read()
    journals = _refused_with_the_rest_of_one_bound(
        folder, _folder_saver(folder),
        lambda env: _pair_saver(folder, "none", 160, 4, program=_reporting(_PAUSED_SAVER + SAVER),
                                stdin=subprocess.PIPE, env=env),
        "at its commit", "this save's")
    assert journals == 2                                              # S2's and the save's: D's was finished
    assert _whole(folder, tmp_path, 96, 3)                            # S2's whole model, once it went on
    assert len(finish_replacements(folder)) == 1                      # the save's own set, staged whole, not lost
    assert _whole(folder, tmp_path, 160, 4)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


# a training run's start with `init_from` an `X.safetensors` (beside `X.json`) of its own architecture (`_build_model`:
# `read_config`, then `load_model`), paused at the load's shared hold
_PAUSED_INIT_FROM = _paused_at_second_open("Path(sys.argv[1]).parent", "at the read lock", """
from sigma.training.config import TrainConfig
from sigma.training.loop import _build_model
_build_model(TrainConfig(model="tiny-lite", init_from=sys.argv[1]), log=lambda *_: None)
print("loaded", flush=True)
""")

# `modelsavers.SAVER` saving the embedded layout (its argv's X.safetensors + X.json), stopped at its rename of X.json
_EMBEDDED_SAVER = SAVER.replace('folder / "config.json"', 'folder.with_suffix(".json")')


def test_init_from_reads_its_config_and_loads_its_model_within_one_bound(tmp_path):
    """Training's `init_from` read the saved config (`read_config`: a save killed mid-commit is finished first —
    reached for an `X.safetensors` whose `X.json` such a save removed) and then loaded the model (`load_model`), each
    with all of `$SIGMA_MODEL_LOCK_WAIT_S`: a start that finished a killed save late in the first wait (a saver
    stopped mid-commit there, then resumed) and met another saver stopped mid-commit at the second waited twice the
    bound. Now the two share one (`lock_deadline`, passed to both as `deadline`): here (4 s) the first wait took
    2 s, and the load is refused `weights_busy` with the rest of it (at most 2 s of the 4 s) — before, `for all of
    4 s`."""
    import subprocess
    import sys

    from modelsavers import saver

    target = tmp_path / "m" / "x.safetensors"
    old = saver(target, "none", program=_EMBEDDED_SAVER)
    assert old.wait(timeout=120) == 0, old.stderr.read()

    def make(stop, size, seed, program, **kw):
        return saver(target, stop, size, seed, program=program(_EMBEDDED_SAVER) if program else _EMBEDDED_SAVER, **kw)
    _refused_with_the_rest_of_one_bound(           # D: the architecture `model=` names (size 0), read_config's
        target.parent, make,
        lambda env: subprocess.Popen([sys.executable, "-c", _reporting(_PAUSED_INIT_FROM), str(target)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "at the read lock", "this load's", d_size=0)


def test_a_load_in_a_thread_beside_a_save_in_another_never_waits_on_itself(tmp_path):
    """The shared hold of a load and the exclusive one of a save's commit are flocks of separate descriptors: in one
    process (a server loading while it saves) they wait for each other as two processes would, never for good. A
    folder a killed save left (journal, no config) is finished before the hold is taken — finishing under it would
    wait on the load's own hold."""
    import threading

    folder = tmp_path / "m"
    save_model(build_model("tiny-lite"), folder)
    errors: list[BaseException] = []

    def saves() -> None:
        try:
            for _ in range(3):
                save_model(build_model("tiny-lite"), folder)
        except BaseException as exc:  # noqa: BLE001 - said by the test
            errors.append(exc)

    thread = threading.Thread(target=saves, daemon=True)
    thread.start()
    for _ in range(3):
        assert load_model(folder).config.name == "tiny-lite"
    thread.join(timeout=120)
    assert not thread.is_alive() and not errors


@pytest.mark.parametrize("config_text", ["{broken", "[1]", '{"format": "sigma-net"}',
                                         '{"format": "other", "config": {}}',
                                         '{"format": "sigma-net", "config": ' + "9" * 5000 + "}", "\xff\xfe"])
def test_a_damaged_saved_config_is_a_config_error(tmp_path, config_text):
    """A saved model's config.json that is not one (not JSON, a list, no config, a 5000-digit integer, not
    UTF-8) is a ConfigError naming the file, never an AttributeError / ValueError traceback."""
    save_model(build_model("tiny-lite"), tmp_path)
    (tmp_path / "config.json").write_bytes(config_text.encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_model(tmp_path)
    assert "config.json" in err.value.message


@pytest.mark.parametrize("arch", [{"backbone": {"kind": "compact", "widths": [8], "depths": [0]}, "skip_dims": []},
                                  {"backbone": {"kind": "compact", "widths": [8, 8, 8, 8, 8], "depths": [0] * 5},
                                   "skip_dims": [8]}])
def test_an_architecture_that_cannot_be_built_is_a_config_error(tmp_path, arch):
    """Configs that pass SigmaNetConfig's checks but no network can be built from (no tap as coarse as
    token_stride; fewer skip_dims than fine taps): a ValueError traceback from `sigma train model={...}` or a
    saved config.json. Now a ConfigError (invalid_config) saying why."""
    with pytest.raises(ConfigError, match="cannot be built"):
        build_model(arch)
    save_model(build_model("tiny-lite"), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"] = {**meta["config"], **arch}
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="cannot be built"):
        load_model(tmp_path)


@pytest.mark.parametrize("damage", ["rename", "extra", "drop", "shape"])
def test_strict_load_rejects_wrong_keys(tmp_path, damage):
    from safetensors.torch import load_file, save_file

    model = build_model("tiny-lite")
    save_model(model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    key = "decoder.out.weight"
    if damage == "rename":
        state["decoder.output.weight"] = state.pop(key)
    elif damage == "extra":
        state["bogus.weight"] = torch.zeros(1)
    elif damage == "drop":
        del state[key]
    else:
        state[key] = torch.zeros(1, 1, 1, 1)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsMismatchError) as err:
        load_model(tmp_path)
    assert ("bogus" in err.value.message) if damage == "extra" else ("decoder.out" in err.value.message)
    with pytest.raises(WeightsMismatchError):
        build_model("tiny-lite", state_dict=state)


@pytest.mark.parametrize("damage", ["nan", "inf", "int64", "bool", "complex"])
def test_weights_of_the_wrong_kind_or_not_finite_are_refused(tmp_path, capsys, damage):
    """load_state_dict copies across dtypes: an integer, bool or complex tensor became a float parameter
    without a word, and NaN / inf weights loaded as they were — `sigma annotate` then wrote a mask from NaN
    probabilities (a RuntimeWarning, exit 0). fp16 / fp64 files still load (cast back, as the embedded fp16
    file is)."""
    from safetensors.torch import load_file, save_file

    from sigma.assets import example_pair
    from sigma.cli import main
    from sigma.models.weights import WeightsUnreadableError

    save_model(build_model("tiny-lite"), tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    key = "decoder.out.weight"
    state[key] = {"nan": torch.full_like(state[key], float("nan")), "inf": state[key] / 0.0,
                  "int64": (state[key] * 100).long(), "bool": state[key] > 0,
                  "complex": state[key].to(torch.complex64)}[damage]
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    expected = WeightsUnreadableError if damage in ("nan", "inf") else WeightsMismatchError
    with pytest.raises(expected) as err:
        load_model(tmp_path / "m")
    assert key in err.value.message
    with pytest.raises(expected):
        build_model("tiny-lite", state_dict=state)
    pair = example_pair()
    capsys.readouterr()
    assert main(["annotate", pair["original"], pair["edited"], "--annotator", "sigma-lite", "-o", str(tmp_path / "o"),
                 "--set", f"options.weights={tmp_path / 'm'}", "--set", "options.cpu_threads=1"]) == 2
    assert f"[{expected.code}]" in capsys.readouterr().err
    assert not (tmp_path / "o" / "mask.png").exists()
    for dtype in (torch.float16, torch.float64):
        good = load_file(str(tmp_path / "m" / "model.safetensors"))
        good[key] = torch.zeros(good[key].shape, dtype=dtype)
        save_file(good, str(tmp_path / "m" / "model.safetensors"))
        assert load_model(tmp_path / "m").state_dict()[key].dtype == torch.float32


def test_a_config_that_disagrees_with_its_weights_is_refused_before_the_network_is_built(tmp_path):
    """The shapes are compared on a meta-device skeleton first: a config.json claiming 200000 channels
    (rewritten by hand, or another model's) allocated that network — 20 GB for widths of 50000, a MemoryError
    traceback or the OOM killer — before the weights were found not to fit."""
    import resource

    save_model(build_model("tiny-lite"), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["backbone"]["widths"][-1] = 5_000
    meta["config"]["dim"] = 5_000
    (tmp_path / "config.json").write_text(json.dumps(meta))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsMismatchError, match="shape mismatch"):
        load_model(tmp_path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000   # KiB: nothing of it was built
    meta["config"]["dim"] = 200_000             # above the size limit: refused by its count, before the skeleton
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="parameters") as info:
        load_model(tmp_path)
    assert info.value.code == "model_too_large"


def _meta_count(cfg: SigmaNetConfig) -> int:
    from sigma.models.sigma_net import SigmaNet

    with torch.device("meta"):
        return sum(p.numel() for p in SigmaNet(cfg, pretrained=False).parameters())


def test_the_parameter_count_is_computed_from_the_config_alone():
    """`estimate_parameters` is what `check_model_size` compares with the limit: it must be the count of the
    network the config builds, for every layer type (registers, SwiGLU, no qkv bias, pixel stem, no regions)."""
    from sigma.models.size import estimate_parameters

    dino = PRESETS["tiny-dinov2"]
    cases = [preset_config(n) for n in ("tiny-lite", "sigma-lite", "tiny-dinov2")] + [
        preset_config("tiny-dinov2", pixel_stem=False),
        preset_config("tiny-lite", max_regions=0, refine_blocks=0, full_res_head=0, ffn_ratio=0.1),
        preset_config("tiny-lite", refine_blocks=1, token_stride=8, skip_dims=[8, 8]),
        SigmaNetConfig.model_validate({**dino, "backbone": {"kind": "dinov2", "taps": [1], "hf_config": {
            **TINY_DINOV2, "model_type": "dinov2_with_registers", "num_register_tokens": 4, "use_swiglu_ffn": True,
            "qkv_bias": False}}}),
        SigmaNetConfig.model_validate({**PRESETS["sigma-b"], "backbone": {"kind": "dinov2", "hf_config": {
            "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 518}}}),
    ]
    for cfg in cases:
        assert estimate_parameters(cfg) == _meta_count(cfg), cfg


@pytest.mark.parametrize("change", ["hidden_1e6", "layers_1e5", "dim_1e6", "decoder_1e6", "full_res_1e7",
                                    "blocks_1e5", "hidden_negative", "hidden_text", "patch_0", "heads_3"])
def test_a_model_config_of_absurd_size_is_refused_before_anything_is_built(change, monkeypatch):
    """A DINOv2 hf_config with hidden_size 10^6 or 10^5 layers, a decoder 10^6 wide: the network was allocated as
    configured (gigabytes, minutes, the OOM killer; 10^5 small layers took 4 minutes and 10 GB). Now the count
    from the config is checked first, and sizes transformers would take and fail on later are config errors."""
    import resource
    import time

    dino, lite = dict(PRESETS["tiny-dinov2"]), dict(PRESETS["tiny-lite"])
    hf = {**TINY_DINOV2}
    code = "invalid_config"
    if change == "hidden_1e6":
        hf.update(hidden_size=10**6, num_attention_heads=1)
        code = "model_too_large"
    elif change == "layers_1e5":
        hf.update(num_hidden_layers=10**5)
    elif change == "hidden_negative":
        hf.update(hidden_size=-5)
    elif change == "hidden_text":
        hf.update(hidden_size="abc")
    elif change == "patch_0":
        hf.update(patch_size=0)
    elif change == "heads_3":
        hf.update(num_attention_heads=3)
    config = {**dino, "backbone": {"kind": "dinov2", "hf_config": hf, "taps": [1]}}
    if change in ("dim_1e6", "decoder_1e6", "full_res_1e7", "blocks_1e5"):
        key, value = {"dim_1e6": ("dim", 10**6), "decoder_1e6": ("skip_dims", [10**6, 16, 8]),
                      "full_res_1e7": ("full_res_head", 10**7), "blocks_1e5": ("refine_blocks", 10**5)}[change]
        config = {**lite, key: value, "refine_heads": 1}
        code = "invalid_config" if change == "blocks_1e5" else "model_too_large"
    before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    with pytest.raises(ConfigError) as info:
        build_model(config, pretrained=False)
    assert info.value.code == code, info.value.message
    assert time.monotonic() - started < 5 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000


def test_the_model_size_limit_is_configurable_and_said_before_a_training_run_folder_is_made(monkeypatch, tmp_path,
                                                                                             capsys):
    from sigma.cli import main
    from sigma.models.size import ENV_MAX_PARAMETERS, estimate_parameters

    assert estimate_parameters(preset_config("tiny-lite")) == 80143
    monkeypatch.setenv(ENV_MAX_PARAMETERS, "80000")
    with pytest.raises(ConfigError, match=ENV_MAX_PARAMETERS) as info:
        build_model("tiny-lite")
    assert info.value.code == "model_too_large" and "80,143" in info.value.message
    monkeypatch.setenv(ENV_MAX_PARAMETERS, "80143")
    build_model("tiny-lite")
    monkeypatch.setenv(ENV_MAX_PARAMETERS, "lots")
    with pytest.raises(ConfigError, match="positive whole number"):
        build_model("tiny-lite")
    monkeypatch.delenv(ENV_MAX_PARAMETERS)
    config = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-stage1.yaml"
    rc = main(["train", str(config), f"out_dir={tmp_path}", "name=big", "data.photos=nowhere",
               "model={backbone: {kind: compact, widths: [16, 32, 64, 128, 256], depths: [0, 1, 1, 2, 2]}, "
               "dim: 1000000, refine_heads: 1}"])
    err = capsys.readouterr().err
    assert rc == 2 and "[model_too_large]" in err and not (tmp_path / "big").exists()


def test_explicit_state_dict_wins():
    src = build_model("tiny-dinov2", pretrained=False)
    dst = build_model("tiny-dinov2", state_dict=src.state_dict())
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())


def test_missing_files_and_bad_config(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="config"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="Did you mean 'sigma-lite'"):
        preset_config("sigma-lit")
    with pytest.raises(ConfigError):
        build_model({"dim": 30, "refine_heads": 4})


def _response_outside_prior(model, size):
    """Logit response inside a changed square that the prior (1 everywhere else) leaves out."""
    h, w = size
    torch.manual_seed(3)
    a = torch.rand(1, 3, h, w)
    b = a.clone()
    ys, xs = slice(h // 4, h // 2), slice(w // 4, w // 2)
    b[..., ys, xs] = 1.0 - b[..., ys, xs]
    prior = torch.ones(1, 1, h, w)
    prior[..., ys, xs] = 0.0          # the change is a side effect: nothing grounded there
    with torch.no_grad():
        changed = model(a, b, prior=prior, edit_type="add").logits
        same = model(a, a, prior=prior, edit_type="add").logits
    return (changed - same)[..., ys, xs].abs().mean().item(), changed, same, prior, (ys, xs)


@pytest.mark.parametrize("name", TINY)
def test_prior_modulates_never_gates(name):
    torch.manual_seed(0)
    model = build_model(name, pretrained=False).eval()
    size = SIZES[name]
    response, changed, same, prior, (ys, xs) = _response_outside_prior(model, size)
    assert response > 1e-3, "a change outside the prior must reach the output"
    # the same assertion on a gated model (output multiplied by the prior) fails: the test can fail
    gated = ((changed * prior) - (same * prior))[..., ys, xs].abs().mean().item()
    assert gated == 0.0
    # and the prior is not ignored either: it changes the output
    a = torch.rand(1, 3, *size)
    with torch.no_grad():
        lo = model(a, a, prior=torch.zeros(1, 1, *size)).logits
        hi = model(a, a, prior=torch.ones(1, 1, *size)).logits
    assert (lo - hi).abs().mean().item() > 1e-6   # float noise is ~1e-8 here


def test_regions_and_edit_types_validated():
    r = Regions.from_lists([[{"box": [0, 0, 1, 1], "score": 0.2}, {"box": [0, 0, .5, .5], "score": 0.9}], []], 1)
    assert r.boxes.shape == (2, 1, 4) and r.valid.tolist() == [[True], [False]]
    assert r.scores[0, 0].item() == pytest.approx(0.9)   # the best-scored region is kept
    model = build_model("tiny-lite").eval()
    a = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="unknown edit type"):
        model(a, a, edit_type="teleport")
    with pytest.raises(ValueError, match="prior"):
        model(a, a, prior=torch.rand(2, 1, 64, 64))


def test_sigma_lite_budget():
    """The shipped compact model: <= 5 M parameters, <= 9.5 GFLOPs per 512x512 pair (issue 14 allows up to
    3x the first file's 6.2 GFLOPs while sigma-lite keeps >= 2 pairs/s on 2 cores; it uses 1.4x)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model("sigma-lite").eval()
    assert sum(p.numel() for p in model.parameters()) <= 5_000_000
    x = torch.rand(1, 3, 512, 512)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(x, x)
    assert out.logits.shape == (1, 1, 512, 512)
    assert counter.get_total_flops() <= 9.5e9


def test_presets_validate():
    for name in PRESETS:
        cfg = preset_config(name)
        assert isinstance(cfg, SigmaNetConfig) and cfg.name == name
    b = preset_config("sigma-b")
    assert b.backbone.taps == [3, 6, 12] and b.image_size == 518 and b.backbone.frozen


def _tiny_dinov2():
    torch.manual_seed(0)
    return transformers.Dinov2Model(transformers.Dinov2Config(**TINY_DINOV2))


def _with_backbone(ref: str) -> SigmaNetConfig:
    cfg = preset_config("tiny-dinov2")
    return cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"weights": ref, "hf_config": None})})


def test_dinov2_from_local_save_pretrained_folder(tmp_path):
    ref = _tiny_dinov2()
    ref.save_pretrained(tmp_path / "dino")
    net = build_model(_with_backbone(str(tmp_path / "dino")))
    assert net.backbone.resolved.kind == "local_path"
    got = net.backbone.model.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in ref.state_dict().items())


@pytest.mark.parametrize("change", [{"hidden_size": 10**6, "num_attention_heads": 1}, {"num_hidden_layers": 10**5}])
def test_a_dinov2_weights_config_of_absurd_size_is_refused_before_its_weights_load(tmp_path, change):
    """The architecture of a DINOv2 named by weights (no hf_config) comes from the weights' own config.json: a
    config.json claiming hidden_size 10^6 or 10^5 layers was built as claimed before its weights were compared."""
    _tiny_dinov2().save_pretrained(tmp_path / "dino")
    config = json.loads((tmp_path / "dino" / "config.json").read_text())
    (tmp_path / "dino" / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ConfigError) as info:
        build_model(_with_backbone(str(tmp_path / "dino")))
    assert info.value.code == ("model_too_large" if "hidden_size" in change else "invalid_config"), info.value.message


def test_dinov2_from_offline_hf_cache(tmp_path, monkeypatch):
    """A fake HF cache (HF_HOME/HF_HUB_CACHE) holding a tiny DINOv2 resolves with local_files_only."""
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / "models--sigma-test--tiny-dinov2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    ref = _tiny_dinov2()
    ref.save_pretrained(repo / "snapshots" / commit)
    net = build_model(_with_backbone("sigma-test/tiny-dinov2"))
    assert net.backbone.resolved.kind == "hf_cache"
    assert net.backbone.resolved.location.startswith(str(hub))
    got = net.backbone.model.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in ref.state_dict().items())
    # a repo that is not in the cache: a where-I-looked error, no download attempted
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_hf_reference("sigma-test/absent", allow_download=True)
    msg = err.value.message
    assert str(hub) in msg and "local path" in msg and "HF_HUB_OFFLINE" in msg


def _hub_snapshot(hub: Path) -> Path:
    """A tiny DINOv2 laid out as huggingface_hub does: blobs named by their sha256, the snapshot's files
    relative symlinks to them."""
    import hashlib
    import os

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / "models--sigma-test--tiny-dinov2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _tiny_dinov2().save_pretrained(hub / "plain")
    snap, blobs = repo / "snapshots" / commit, repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in (hub / "plain").iterdir():
        blob = blobs / hashlib.sha256(f.read_bytes()).hexdigest()
        f.replace(blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return snap


@pytest.mark.parametrize("damage", ["dangling_symlink", "weights_removed", "cut_short", "config_not_json"])
def test_a_damaged_hf_cache_snapshot_is_one_weights_error(tmp_path, monkeypatch, capsys, damage):
    """A snapshot whose weights blob is gone (a download cut short, a cache cleaned by hand) was transformers'
    OSError; a weights file cut short was safetensors' SafetensorError, a traceback; a config.json that is not
    JSON, transformers' OSError. Each is now the weights error of the model, naming the snapshot."""
    import os

    from sigma.assets import example_pair
    from sigma.cli import main
    from sigma.models.weights import WeightsUnreadableError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = _hub_snapshot(tmp_path / "hf" / "hub")
    weights, config = snap / "model.safetensors", snap / "config.json"
    if damage == "dangling_symlink":
        os.unlink(os.path.realpath(weights))
    elif damage == "weights_removed":
        weights.unlink()
    elif damage == "cut_short":
        Path(os.path.realpath(weights)).write_bytes(Path(os.path.realpath(weights)).read_bytes()[:1000])
    else:
        Path(os.path.realpath(config)).write_text("{not json")
    expected = WeightsNotFoundError if damage in ("dangling_symlink", "weights_removed") else WeightsUnreadableError
    with pytest.raises(WeightsNotFoundError) as err:
        build_model(_with_backbone("sigma-test/tiny-dinov2"))
    assert type(err.value) is expected and str(snap) in err.value.message
    capsys.readouterr()
    pair = example_pair()
    assert main(["annotate", pair["original"], pair["edited"], "--annotator", "feature-diff", "-o",
                 str(tmp_path / "out"), "--set", "options.backbone_weights=sigma-test/tiny-dinov2"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sigma: error")]
    assert len(lines) == 1 and f"[{expected.code}]" in lines[0], lines


def test_dinov2_bare_safetensors_with_wrong_key_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    _tiny_dinov2().save_pretrained(tmp_path / "dino")
    state = load_file(str(tmp_path / "dino" / "model.safetensors"))
    state["bogus.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "dino" / "model.safetensors"))
    with pytest.raises(WeightsMismatchError, match="bogus"):
        build_model(_with_backbone(str(tmp_path / "dino")))


def test_heads_only_file_gets_its_frozen_backbone_resolved(tmp_path):
    """sigma-b ships 3.5 M trained parameters, not 90 M: the frozen DINOv2 is resolved at load time."""
    from safetensors.torch import load_file

    _tiny_dinov2().save_pretrained(tmp_path / "dino")
    net = build_model(_with_backbone(str(tmp_path / "dino")))
    save_model(net, tmp_path / "heads", include_frozen_backbone=False)
    keys = load_file(str(tmp_path / "heads" / "model.safetensors")).keys()
    assert keys and not any(k.startswith("backbone.model.") for k in keys)
    loaded = load_model(tmp_path / "heads")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in net.state_dict().items())
    (tmp_path / "dino").rename(tmp_path / "moved")
    with pytest.raises(WeightsNotFoundError, match="dino"):
        load_model(tmp_path / "heads")
    again = load_model(tmp_path / "heads", backbone_weights=str(tmp_path / "moved"))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())


def test_fuse_batchnorm_keeps_outputs(tiny):
    import copy

    from sigma.models.fuse import fuse_batchnorm

    name, model = tiny
    model.train()
    a, b, prior, regions = _inputs(name, seed=4)
    with torch.no_grad():
        for _ in range(3):          # non-trivial running statistics
            model(a, b)
    model.eval()
    fused = fuse_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        ref = model(a, b, prior, "add", regions).logits
        got = fused(a, b, prior, "add", regions).logits
    assert torch.allclose(ref, got, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="eval"):
        fuse_batchnorm(copy.deepcopy(model).train())


def test_dinov2_with_registers_variant():
    """Register tokens sit between CLS and the patches; the backbone drops all of them."""
    cfg = preset_config("tiny-dinov2")
    hf = {**TINY_DINOV2, "model_type": "dinov2_with_registers", "num_register_tokens": 4}
    cfg = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"hf_config": hf})})
    net = build_model(cfg, pretrained=False).eval()
    assert type(net.backbone.model).__name__ == "Dinov2WithRegistersModel" and net.backbone.n_prefix == 5
    x = torch.rand(1, 3, 56, 84)
    feats = net.backbone.features(x)
    assert [tuple(f.shape) for f in feats] == [(1, 32, 4, 6)] * 3
    with torch.no_grad():
        hidden = net.backbone.model(pixel_values=(x - net.backbone.mean) / net.backbone.std,
                                    output_hidden_states=True).hidden_states
    assert torch.equal(feats[-1].flatten(2).transpose(1, 2), hidden[4][:, 5:])


def test_a_model_that_cannot_be_written_leaves_no_partial_file(tmp_path):
    """safetensors' own error type on a full disk ('No space left on device (os error 28)') was a traceback
    and left model.safetensors.tmp holding the space: now an OSError (the CLI's os_error line), no tmp file. A real
    failed write (a file-size limit: the write fails EFBIG past 64 KiB, as it fails ENOSPC on a full disk), since the
    weights are streamed by sigma itself (`sigma.models.weightfile`)."""
    import subprocess
    import sys

    child = """import errno, resource, sys
from pathlib import Path
from sigma.models import build_model, preset_config, save_model
net = build_model(preset_config("sigma-lite"), pretrained=False)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_model(net, Path(sys.argv[1]))
except OSError as exc:
    print(type(exc).__name__, exc.errno == errno.EFBIG, exc)
"""
    done = subprocess.run([sys.executable, "-c", child, str(tmp_path / "m")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.startswith("OSError True"), done.stdout + done.stderr
    assert list((tmp_path / "m").iterdir()) == []


@pytest.mark.timeout(300)
def test_a_model_lock_wait_in_the_environment_past_30_days_or_no_number_is_refused_in_one_line(tmp_path):
    """`$SIGMA_MODEL_LOCK_WAIT_S` had no upper bound: `1e300` was a load that could wait for ever, a 500-digit
    integer `annotator_failed: OverflowError: int too large to convert to float` where the load's deadline was
    computed. Every other time SIGMA takes is at most 30 days (MAX_DURATION_S). Now such a value, and NaN, infinity,
    0, a negative or no number, is `invalid_config` naming the variable and the bound, exit 2, from `sigma annotate`
    loading a saved model."""
    import os
    import subprocess
    import sys

    import numpy as np
    from envwaits import BAD_WAITS, refused_wait
    from PIL import Image

    image = np.zeros((48, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "o.png")
    image[10:30, 20:44] = 255
    Image.fromarray(image).save(tmp_path / "e.png")

    def annotate(value: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sigma", "annotate", str(tmp_path / "o.png"),
                               str(tmp_path / "e.png"), "--annotator", "sigma-lite", "--set",
                               f"options.weights={tmp_path / 'no-model'}", "-o", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "SIGMA_MODEL_LOCK_WAIT_S": value})

    for value in BAD_WAITS:
        refused_wait(annotate(value), "SIGMA_MODEL_LOCK_WAIT_S", value)
    missing = annotate("2592000")                                  # the bound itself is taken: the load goes on
    assert missing.returncode == 2 and "[weights_not_found]" in missing.stderr, missing.stderr[-2000:]


def test_saved_weights_are_the_bytes_safetensors_writes(tmp_path):
    """`save_model` streams the weights itself (`sigma.models.weightfile`: safetensors' own writer left a temporary
    file of its own behind when killed); the file is still byte for byte what `safetensors.torch.save_file` writes,
    for every dtype a model holds, an empty and a 0-d tensor and a name outside ASCII."""
    from safetensors.torch import save_file

    from sigma.models.weightfile import write_safetensors

    net = build_model("tiny-lite")
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    odd = {"é": torch.zeros(()), "b": torch.zeros(0), "c": torch.arange(5, dtype=torch.int8),
           "d": torch.ones(3, dtype=torch.bool), "e": torch.ones(2, dtype=torch.bfloat16),
           "f": torch.ones(2, dtype=torch.int16), "g": torch.ones(1, dtype=torch.float64),
           "h": torch.ones(1, dtype=torch.int32), "i": torch.ones(1, dtype=torch.uint8),
           "j": torch.ones(2, 2, dtype=torch.float16)}
    for each in (state, {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, odd):
        save_file(each, str(tmp_path / "theirs"), metadata={"format": "sigma-net"})
        write_safetensors(each, tmp_path / "ours", metadata={"format": "sigma-net"})
        assert (tmp_path / "ours").read_bytes() == (tmp_path / "theirs").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "theirs"]


def _run_on_folder(program: str, folder: Path):
    """`program` (one of the readers below) on the model folder `folder` in a process of its own, which waits at most
    1 s for a held folder ($SIGMA_MODEL_LOCK_WAIT_S): its `subprocess.CompletedProcess`, output as text."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", program, str(folder)], capture_output=True, text=True,
                          env={**os.environ, "SIGMA_MODEL_LOCK_WAIT_S": "1"}, timeout=120)


# what a reader of a saved model's folder makes of it, in a process of its own: `read_config` (training's init_from),
# `read_saved_meta` (a submission's look at its backbone) and `check_model_files` (a submission's check), each
# printing `ok` or the SigmaError's code and message
_READERS = """import sys
from sigma.errors import SigmaError
from sigma.models.factory import check_model_files, read_config, read_saved_meta
for name, read in (("config", read_config), ("meta", read_saved_meta), ("check", check_model_files)):
    try:
        read(sys.argv[1])
        print(name, "ok", flush=True)
    except SigmaError as exc:
        print(name, exc.code, exc.message, flush=True)
"""


def test_readers_of_a_folder_a_saver_holds_mid_commit_say_it_is_busy_never_missing(tmp_path):
    """A real saver stopped mid-commit (its old config.json removed, its own not yet renamed, its flock held):
    `read_config` (training's `init_from`) read the config with no hold and said `weights_not_found` "no SigmaNet
    config" of a model being saved (and, racing a live saver, a FileNotFoundError traceback); so did
    `read_saved_meta`. Now `read_config` reads under the folder's shared hold as `load_model` does (`weights_busy`
    after $SIGMA_MODEL_LOCK_WAIT_S), and a reader that finds the config missing while a live saver's journal stands
    for it says `weights_busy` naming the saver; the submission's check passes it. Once the saver goes on, each
    reads the saved model."""
    from modelsavers import end_saver, resume_saver, save_tiny, stopped_saver

    from sigma.folderlock import anonymised

    folder = save_tiny(tmp_path / "m")
    saver = stopped_saver(folder)
    try:
        run = _run_on_folder(_READERS, folder)
        said = {line.split(" ", 1)[0]: line.split(" ", 2)[1:] for line in run.stdout.splitlines()}
        assert run.returncode == 0 and set(said) == {"config", "meta", "check"}, (run.stdout, run.stderr)
        assert said["config"][0] == "weights_busy" and f"pid {saver.pid} (saving)" in said["config"][1], said
        assert said["meta"][0] == "weights_busy" and f"pid {saver.pid} (saving)" in said["meta"][1], said
        assert "mid-commit" in said["meta"][1] and f"kill -CONT {saver.pid}" in said["meta"][1], said
        # as an API caller is told it (a POST /v1/batches whose model is mid-save, a fleet task's status): the shell
        # remedy for the server was kept, `fg` and `kill -CONT PID`, as only busy_message's wording was anonymised
        shown = anonymised(said["meta"][1])
        assert "kill -CONT" not in shown and "`fg`" not in shown and "try again later" in shown, shown
        assert said["check"] == ["ok"], said
        resume_saver(saver)
    finally:
        end_saver(saver)
    run = _run_on_folder(_READERS, folder)
    assert run.stdout.split() == ["config", "ok", "meta", "ok", "check", "ok"], (run.stdout, run.stderr)


# `sigma.models.grow.grow_from` (training's init_from into another architecture) of the folder argv[1], in a process of
# its own: `ok` with the tensors it loaded, or the SigmaError's code and message
_GROWER = """import sys
from sigma.errors import SigmaError
from sigma.models import build_model
from sigma.models.grow import grow_from
try:
    print("ok", len(grow_from(build_model("tiny-lite"), sys.argv[1]).loaded), flush=True)
except SigmaError as exc:
    print(exc.code, exc.message, flush=True)
"""


def test_grow_from_a_folder_a_saver_holds_mid_commit_waits_for_the_hold_and_says_it_is_busy(tmp_path):
    """`grow_from` (training's init_from into a grown architecture) read the source's weights with no hold on its
    folder: with a real saver stopped mid-commit there (its flock held, its weights renamed, its config not), it read
    them at once, where `load_model` and `read_config` wait for the hold and say `weights_busy`. Now it reads under
    the same shared hold: `weights_busy` naming the saver after $SIGMA_MODEL_LOCK_WAIT_S, the model once it goes on."""
    from modelsavers import end_saver, resume_saver, save_tiny, stopped_saver

    folder = save_tiny(tmp_path / "m")
    saver = stopped_saver(folder)
    try:
        run = _run_on_folder(_GROWER, folder)
        assert run.returncode == 0 and run.stdout.startswith("weights_busy "), (run.stdout, run.stderr)
        assert f"pid {saver.pid}" in run.stdout, run.stdout
        resume_saver(saver)
    finally:
        end_saver(saver)
    run = _run_on_folder(_GROWER, folder)
    assert run.returncode == 0 and run.stdout.startswith("ok ") and int(run.stdout.split()[1]) > 0, \
        (run.stdout, run.stderr)


# a saver saving one model into a folder again and again for argv[2] seconds
_SAVING_LOOP = """import sys, time, torch
from sigma.models import build_model, save_model
torch.manual_seed(0)
model, end = build_model("tiny-lite"), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    save_model(model, sys.argv[1])
"""


def test_readers_racing_a_live_saver_never_find_its_model_missing(tmp_path):
    """`read_config` and a submission's `check_model_files` looped in this process while a real saver in another
    saves into the folder again and again: a commit between a reader's look at config.json and its open of it was
    `weights_not_found` ("is missing"), `weights_unreadable` ("No such file"), or a FileNotFoundError traceback. Now
    every read sees a whole model."""
    import subprocess
    import sys

    from modelsavers import save_tiny

    from sigma.errors import SigmaError
    from sigma.models.factory import check_model_files, read_config

    folder = save_tiny(tmp_path / "m")
    saver = subprocess.Popen([sys.executable, "-c", _SAVING_LOOP, str(folder), "8"], stderr=subprocess.PIPE, text=True)
    failures: dict[str, str] = {}
    reads = 0
    try:
        while saver.poll() is None:
            for name, read in (("config", read_config), ("check", check_model_files)):
                try:
                    read(folder)
                except (SigmaError, OSError) as exc:
                    failures[f"{name} {type(exc).__name__}"] = str(exc)
            reads += 1
        assert saver.wait(timeout=120) == 0, saver.stderr.read()
    finally:
        if saver.poll() is None:
            saver.kill()
            saver.wait(timeout=30)
    assert reads > 100 and not failures, (reads, failures)
