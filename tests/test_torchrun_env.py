"""torchrun's `$RANK` / `$WORLD_SIZE` / `$LOCAL_RANK` as `sigma train` reads them (`sigma.training.world`)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = str(ROOT / "configs/train/tiny-stage1.yaml")


@pytest.mark.parametrize("name,value", [("RANK", "abc"), ("RANK", "2.5"), ("RANK", "-1"), ("WORLD_SIZE", "0"),
                                        ("WORLD_SIZE", "x"), ("WORLD_SIZE", "9" * 500)])
def test_a_rank_that_is_no_rank_is_one_invalid_config_line(name, value, tmp_path):
    """`RANK=abc sigma train ...` was a ValueError traceback from `int(os.environ[...])`; `RANK=-1` and
    `WORLD_SIZE=0` were taken without a word. Now one line naming the variable, exit 2."""
    photos = tmp_path / "photos"
    photos.mkdir()
    env = {**os.environ, name: value}
    proc = subprocess.run([sys.executable, "-m", "sigma", "train", STAGE1, f"out_dir={tmp_path / 'runs'}",
                           f"data.photos={photos}", "steps=1"], capture_output=True, text=True, timeout=300,
                          env=env, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"sigma: error [invalid_config]: ${name}="), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_blank_rank_is_unset(tmp_path):
    """`RANK=` (a launcher exporting an empty value) is the single-process run, as blank limits are unset."""
    from sigma.training import world

    env = {**os.environ, "RANK": " ", "WORLD_SIZE": ""}
    code = "from sigma.training import world; print(world.rank(), world.world_size())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         timeout=60).stdout.split()
    assert out == ["0", "1"] and world.MOST_RANKS == 2 ** 31 - 1


def test_a_local_rank_that_is_no_rank_is_refused(monkeypatch):
    """`$LOCAL_RANK` picks the CUDA device (read only where CUDA is): the same parser, the same refusal."""
    from sigma.errors import ConfigError
    from sigma.training import world

    monkeypatch.setenv("LOCAL_RANK", "-3")
    with pytest.raises(ConfigError, match=r"\$LOCAL_RANK='-3'"):
        world.local_rank()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world.local_rank() == 1


def test_a_world_size_without_torchrun_is_one_invalid_config_line(tmp_path):
    """`WORLD_SIZE=2 sigma train ...` with no `$RANK` / `$MASTER_ADDR` / `$MASTER_PORT` (torchrun's other
    variables) ended in torch's ValueError traceback from init_process_group, exit 1. Now one line naming the
    variable, exit 2, before the run folder is made."""
    photos = tmp_path / "photos"
    photos.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "sigma", "train", STAGE1, f"out_dir={tmp_path / 'runs'}",
                           f"data.photos={photos}", "steps=1"], capture_output=True, text=True, timeout=300,
                          env={**env, "WORLD_SIZE": "2"}, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("sigma: error [invalid_config]: $RANK is not set"), proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("env,named", [
    ({"RANK": " "}, "$RANK is not set"), ({"RANK": "2"}, "$RANK=2: ranks of $WORLD_SIZE=2 are 0 to 1"),
    ({"RANK": "1", "MASTER_ADDR": ""}, "$MASTER_ADDR is not set"),
    ({"RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": " "}, "$MASTER_PORT is not set"),
    ({"RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1e3"}, "$MASTER_PORT='1e3'"),
    ({"RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "65536"}, "$MASTER_PORT='65536'"),
    ({"RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "0"}, "$MASTER_PORT='0'")])
def test_torchruns_rendezvous_variables_are_checked(env, named, monkeypatch):
    """Each of torch's env:// variables checked, blank = unset; `RANK=2 WORLD_SIZE=2` waited for a rank 2."""
    from sigma.errors import ConfigError
    from sigma.training import world

    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        world.rendezvous()
    assert str(caught.value).startswith(named)
    monkeypatch.setenv("MASTER_ADDR", "h")
    monkeypatch.setenv("MASTER_PORT", "29_500")    # torch reads it with int(), as Python writes numbers
    monkeypatch.setenv("RANK", "1")
    assert world.rendezvous() == (1, 2)


def test_one_rank_needs_no_rendezvous(monkeypatch):
    """`WORLD_SIZE=1` (or unset) is the single-process run: none of torchrun's other variables is asked for."""
    from sigma.training import world

    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert world.rendezvous() == (0, 1)
    monkeypatch.delenv("WORLD_SIZE")
    assert world.rendezvous() == (0, 1)


@pytest.mark.parametrize("local,count,visible,said", [
    (2, 2, "", r"\$LOCAL_RANK=2: this machine has 2 CUDA devices, numbered 0 to 1: start at most 2 ranks per machine "
               r"\(torchrun --nproc_per_node 2\)$"),
    (1, 1, "3", r"\$LOCAL_RANK=1: this machine has 1 CUDA device \(\$CUDA_VISIBLE_DEVICES='3'\), numbered 0 to 0"),
    (0, 0, "", r"\$LOCAL_RANK=0: this machine has no CUDA device visible$")])
def test_a_local_rank_past_the_last_cuda_device_is_no_such_device(local, count, visible, said, monkeypatch):
    """`torchrun --nproc_per_node 4` on a 2-GPU machine: ranks 2 and 3 met CUDA's `invalid device ordinal`
    traceback in `torch.cuda.set_device`. The device is now chosen by `world.cuda_device` (local rank, devices
    visible), before the ranks connect, and a rank with none is one `no_such_device` line."""
    from sigma.training import world

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert world.cuda_device(0, 2) == 0 and world.cuda_device(1, 2) == 1
    with pytest.raises(world.NoSuchDevice, match=said) as caught:
        world.cuda_device(local, count)
    assert caught.value.code == "no_such_device"


@pytest.mark.parametrize("env,said", [
    ({}, "rank 0 of 1) but $RANK=0 and $WORLD_SIZE=2"), ({"WORLD_SIZE": ""}, None)])
def test_a_process_group_already_started_must_be_the_environments(env, said, tmp_path):
    """A user's script that started its own process group (here one rank, by a file store) and then calls sigma's
    training: its rank and size are the ones every part of the run reads from the environment, so a group that
    is not the environment's is one invalid_config line (two processes of a `tcp://` group with no `$RANK` each
    took itself for rank 0 of 1); the environment's own checks (`$MASTER_ADDR`...) are the group's business."""
    code = ("import torch.distributed as d, sys; d.init_process_group('gloo', init_method='file://' + sys.argv[1], "
            "rank=0, world_size=1)\nfrom sigma.training import world\nfrom sigma.errors import ConfigError\n"
            "try:\n    print(world.rendezvous())\nexcept ConfigError as e:\n    print('refused:', e)")
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")], capture_output=True, text=True,
                         env={**base, "WORLD_SIZE": "2", "RANK": "0", **env}, check=True, timeout=120).stdout
    if said:
        assert out.startswith("refused: a torch process group is already started (") and said in out, out
    else:
        assert out.strip() == "(0, 1)", out


@pytest.mark.parametrize("env,said", [
    ({"RANK": "1", "WORLD_SIZE": "1"}, "$RANK=1: ranks of $WORLD_SIZE=1 are 0 to 0"),
    ({"RANK": "3"}, "$RANK=3 but $WORLD_SIZE is not set: a run of one process is rank 0")])
def test_a_rank_past_a_world_of_one_is_refused(env, said, tmp_path):
    """`RANK=1 WORLD_SIZE=1 sigma train ...` (or `RANK=1` alone: a variable left over from another job) trained
    as a rank other than 0, which writes nothing: no run folder, no log, no checkpoint, and exit 0 — every step
    lost. Now one invalid_config line, exit 2, before anything is read."""
    from test_synth import make_photos

    photos = make_photos(tmp_path / "photos", n=4, size=(80, 96))
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "sigma", "train", STAGE1, f"out_dir={tmp_path / 'runs'}",
                           f"data.photos={photos}", "steps=1", "eval.val_size=0", "eval.at_start=false"],
                          capture_output=True, text=True, timeout=300, env={**base, **env}, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"sigma: error [invalid_config]: {said}" + (
        " (unset $RANK, or start the ranks with torchrun --nproc_per_node N -m sigma train CONFIG)"
        if "not set" in said else ""), proc.stderr


@pytest.mark.parametrize("rank", [1, 0])
def test_ranks_that_never_all_connect_end_after_sigma_ddp_timeout_s(rank, tmp_path):
    """A rank whose rank 0 never answers (`$MASTER_ADDR:$MASTER_PORT` where nothing listens), or a rank 0 whose
    other ranks never come: torch's default 30-minute wait, with nothing to shorten it, then its DistNetworkError
    traceback. Now `$SIGMA_DDP_TIMEOUT_S` is the wait, and its end one `rendezvous_failed` line, exit 2."""
    import socket

    from test_synth import make_photos

    photos = make_photos(tmp_path / "photos", n=4, size=(80, 96))
    with socket.socket() as free:           # a port nothing listens on once closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "SIGMA_DDP_TIMEOUT_S": "2", "OMP_NUM_THREADS": "1"}
    env.pop("TORCHELASTIC_ERROR_FILE", None)
    proc = subprocess.run([sys.executable, "-m", "sigma", "train", STAGE1, f"out_dir={tmp_path / 'runs'}",
                           f"data.photos={photos}", "steps=1", "eval.val_size=0", "eval.at_start=false"],
                          capture_output=True, text=True, timeout=90, env=env, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last.startswith(f"sigma: error [rendezvous_failed]: rank {rank} of 2: the ranks could not connect "
                           f"(waited 2 s: $SIGMA_DDP_TIMEOUT_S); rank 0's store at 127.0.0.1:{port}: "), last
    assert "Traceback" not in proc.stderr
    # torch's C++ connect-retry warnings (a page of C++ frames each) no longer come before sigma's line: its C++ log
    # is at ERROR unless $TORCH_CPP_LOG_LEVEL says otherwise
    assert "retrying" not in proc.stderr and "[W" not in proc.stderr, proc.stderr[:2000]


def test_a_ddp_timeout_that_is_no_duration_is_refused(monkeypatch):
    from sigma.errors import ConfigError
    from sigma.training import world

    monkeypatch.setenv("SIGMA_DDP_TIMEOUT_S", "0")
    with pytest.raises(ConfigError, match=r"\$SIGMA_DDP_TIMEOUT_S='0'"):
        world.connect_timeout_s()
    monkeypatch.setenv("SIGMA_DDP_TIMEOUT_S", " ")
    assert world.connect_timeout_s() is None         # torch's default for the backend


def test_a_rank_0_whose_port_is_taken_is_one_rendezvous_failed_line(tmp_path):
    """`$MASTER_PORT` held by another process (another run's store): torch's DistNetworkError traceback; now one
    `rendezvous_failed` line with torch's reason (EADDRINUSE), said at once: no wait is named."""
    import socket

    from test_synth import make_photos

    photos = make_photos(tmp_path / "photos", n=4, size=(80, 96))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        env.pop("TORCHELASTIC_ERROR_FILE", None)
        env.pop("SIGMA_DDP_TIMEOUT_S", None)
        proc = subprocess.run([sys.executable, "-m", "sigma", "train", STAGE1, f"out_dir={tmp_path / 'runs'}",
                               f"data.photos={photos}", "steps=1", "eval.val_size=0", "eval.at_start=false"],
                              capture_output=True, text=True, timeout=90, env=env, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last.startswith(f"sigma: error [rendezvous_failed]: rank 0 of 2: the ranks could not connect; rank 0's "
                           f"store at 127.0.0.1:{port}: ") and "EADDRINUSE" in last, last
    assert "Traceback" not in proc.stderr


TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_a_resume_on_another_number_of_ranks_is_refused(tmp_path):
    """A run trained on 1 rank, resumed by `torchrun --nproc_per_node=2 -m sigma train --resume RUN`: taken without
    a word, though each step then took twice the examples and the examples numbered between step t x batch and
    step t x batch x 2 were never seen. Now one `invalid_config` line naming both counts, by rank 0 alone; the run
    folder is left as it was (config.yaml not rewritten, no step past the checkpoint's)."""
    from procfs import env
    from test_synth import make_photos

    from sigma.training.checkpoint import load_checkpoint

    photos = make_photos(tmp_path / "photos", n=4, size=(80, 96))
    run = tmp_path / "runs" / "one"
    first = subprocess.run([sys.executable, "-m", "sigma", "train", STAGE1, f"data.photos={photos}",
                            f"out_dir={tmp_path / 'runs'}", "name=one", "steps=1", "eval.at_start=false",
                            "eval.val_size=0"], capture_output=True, text=True, timeout=90, cwd=tmp_path, env=env())
    assert first.returncode == 0, first.stderr[-2000:]
    config, metrics = (run / "config.yaml").read_bytes(), (run / "metrics.jsonl").read_bytes()
    proc = subprocess.run([*TORCHRUN_2, "-m", "sigma", "train", "--resume", str(run), "steps=2"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=env())
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if line.startswith("sigma: ")]
    assert said == [f"sigma: error [invalid_config]: {run}: the run was trained on 1 rank (its checkpoint of step 1) "
                    "and this resume has 2 ranks: the examples of each step (batch_size per rank) and their order "
                    "depend on the number of ranks; resume it on 1 rank (without torchrun, or torchrun "
                    "--nproc_per_node 1), or start a new run from its model/ with init_from"], proc.stderr[-3000:]
    assert "step 2/2" not in proc.stdout and load_checkpoint(run)["step"] == 1
    assert (run / "config.yaml").read_bytes() == config and (run / "metrics.jsonl").read_bytes() == metrics


def test_a_checkpoint_says_how_many_ranks_wrote_it_and_one_of_an_older_sigma_is_resumed(tmp_path):
    """`world` in a checkpoint is checked like its other fields (a damaged one is passed over); a checkpoint
    without it (an older sigma's) is resumed on any number of ranks, as before."""
    import torch

    from sigma.errors import ConfigError
    from sigma.training.checkpoint import CKPT, latest_step, refuse_other_world

    state = {"step": 3, "model": {"w": torch.zeros(1)}, "opt": {"state": {}, "param_groups": []},
             "torch_rng": torch.get_rng_state()}
    torch.save(state, tmp_path / CKPT)
    refuse_other_world(tmp_path, 2)                       # an older sigma's: not known, not refused
    torch.save({**state, "world": 2}, tmp_path / CKPT)
    refuse_other_world(tmp_path, 2)
    with pytest.raises(ConfigError, match=r"trained on 2 ranks \(its checkpoint of step 3\) and this resume has 1 "
                                          r"rank: .* resume it on 2 ranks \(torchrun with 2 ranks in all\)"):
        refuse_other_world(tmp_path, 1)
    torch.save({**state, "world": 0}, tmp_path / CKPT)
    assert latest_step(tmp_path) is None                  # damaged: no number of ranks


def test_a_restart_whose_run_folder_holds_a_fifo_for_torchruns_mark_is_refused_not_held(tmp_path):
    """torchrun's restart (`$TORCHELASTIC_RESTART_COUNT` 1) of `sigma train CONFIG name=X` whose run folder holds a
    FIFO named `.torchrun` (where rank 0 marks which torchrun started the run): rank 0 opened it to compare, and
    waited in that open for ever, torchrun's SIGTERM only noted. Now it is not read (a regular file only) and the run
    folder is refused as holding a FIFO, at once."""
    from procfs import env
    from test_synth import make_photos

    photos = make_photos(tmp_path / "photos", n=4, size=(80, 96))
    args = [STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=r", "eval.at_start=false",
            "eval.val_size=0", "steps=1"]
    first = subprocess.run([sys.executable, "-m", "sigma", "train", *args], capture_output=True, text=True,
                           timeout=90, cwd=tmp_path, env=env())
    assert first.returncode == 0, first.stderr[-2000:]
    os.mkfifo(tmp_path / "runs" / "r" / ".torchrun")
    again = subprocess.run([sys.executable, "-m", "sigma", "train", *args], capture_output=True, text=True,
                           timeout=90, cwd=tmp_path,
                           env={**env(), "TORCHELASTIC_RESTART_COUNT": "1", "TORCHELASTIC_RUN_ID": "x"})
    assert again.returncode == 2, again.stderr[-2000:]
    assert again.stderr.startswith("sigma: error [bad_outdir]: ") and ".torchrun: a FIFO" in again.stderr, \
        again.stderr


def _restarted(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """(torchrun's status, its stdout, its stderr) of `torchrun --nproc_per_node=2 --max-restarts=1` running
    `sigma ARGS` (tests/ddp_restart_worker.py: rank 1 of the restart starts late), whose rank 1 is SIGKILLed once
    rank 0 has logged step 3 (after the checkpoint of step 2)."""
    import signal

    from procfs import env, rank_pid

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           str(ROOT / "tests" / "ddp_restart_worker.py"), *args]
    proc = subprocess.Popen(cmd, env={**env(), "SIGMA_DDP_TIMEOUT_S": "30"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=tmp_path)
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("step 3/"):
                os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
                break
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, "".join(out) + rest, err


def test_torchruns_restart_of_a_rank_lost_continues_a_resumed_run(tmp_path):
    """`torchrun --max-restarts=1 -m sigma train --resume RUN`, a rank SIGKILLed mid-run: torchrun restarts both
    ranks, but rank 0 of the restart, connecting first, read rank 1's address of the attempt before (torchrun's
    store outlives its restarts, gloo's keys are the same each attempt): `rendezvous_failed ... Connection
    refused`, and the run stopped for good. Now each attempt connects in a namespace of its own: the restart
    continues from the checkpoint to the last step."""
    from procfs import env
    from test_synth import make_photos

    from sigma.training.checkpoint import load_checkpoint

    photos = make_photos(tmp_path / "photos", n=4, size=(80, 96))
    run = tmp_path / "runs" / "ddp"
    # started on 2 ranks too: a resume on another number of ranks is refused (the test below)
    first = subprocess.run([*TORCHRUN_2, "-m", "sigma", "train", STAGE1, f"data.photos={photos}",
                            f"out_dir={tmp_path / 'runs'}", "name=ddp", "steps=1", "eval.at_start=false",
                            "eval.val_size=0"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env())
    assert first.returncode == 0, first.stderr[-2000:]
    status, out, err = _restarted(tmp_path, "train", "--resume", str(run), "steps=40")
    assert status == 0, err[-3000:]
    assert "rendezvous_failed" not in err and "Connection refused" not in err
    assert out.count(f"resumed {run} at step") == 2, out[-3000:]      # the command, then torchrun's restart
    assert "step 40/40" in out and load_checkpoint(run)["step"] == 40


def test_torchruns_restart_of_a_rank_lost_continues_the_run_it_started(tmp_path):
    """`torchrun --max-restarts=1 -m sigma train CONFIG ...`, a rank SIGKILLed mid-run: torchrun's restart runs the
    same command, which refused the run folder (`already holds a run; use --resume`), so the restart torchrun offers
    ended at once, a person had to continue it. Now the restart of the run that torchrun started there continues
    it from its checkpoint, to the last step."""
    from test_synth import make_photos

    from sigma.training.checkpoint import load_checkpoint

    photos = make_photos(tmp_path / "photos", n=4, size=(80, 96))
    run = tmp_path / "runs" / "ddp"
    status, out, err = _restarted(tmp_path, "train", STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}",
                                  "name=ddp", "steps=40", "eval.at_start=false", "eval.val_size=0")
    assert status == 0, err[-3000:]
    assert "already holds a run" not in err
    # the rank left said what torchrun does next, not "the run stopped; continue with: sigma train --resume"
    said = [line for line in err.splitlines() if line.startswith("sigma: ")]
    assert len(said) == 1 and re.fullmatch(r"sigma: error \[rank_lost\]: rank 1 of 2 was lost \(connection "
                                            r"(reset|closed) by peer\); torchrun restarts the ranks \(restart 1 of "
                                            r"1\): the run continues from step \d+", said[0]), err[-3000:]
    assert f"torchrun restart 1: continuing {run}" in out and f"resumed {run} at step" in out, out[-3000:]
    assert "step 40/40" in out and load_checkpoint(run)["step"] == 40


def test_torchruns_restart_does_not_continue_a_run_another_command_started(tmp_path):
    """The run folder held a run before torchrun started (`name=` of an earlier run): the first attempt refuses it,
    and so does torchrun's restart — it continues only a run its own first attempt started — leaving it as it was."""
    from test_synth import make_photos

    from sigma.training.checkpoint import load_checkpoint

    photos = make_photos(tmp_path / "photos", n=4, size=(80, 96))
    run = tmp_path / "runs" / "ddp"
    args = [STAGE1, f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=ddp", "eval.at_start=false",
            "eval.val_size=0"]
    first = subprocess.run([sys.executable, "-m", "sigma", "train", *args, "steps=1"], capture_output=True, text=True,
                           timeout=90, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert first.returncode == 0, first.stderr[-2000:]
    status, _, err = _restarted(tmp_path, "train", *args, "steps=40")
    assert status != 0
    said = [line for line in err.splitlines() if line.startswith("sigma: error")]    # rank 0's, each attempt
    assert len(said) == 2 and all("[invalid_config]" in s and "already holds a run" in s for s in said), err[-3000:]
    assert "torchrun restart" not in err and load_checkpoint(run)["step"] == 1
