"""Issue 14, item 1: every part the model ships is trained, and DDP works on CPU.

- under each stage config, one real training step gives every trainable parameter a gradient
  (timm's habit), region tokens included;
- the shipped sigma-lite file has no parameter left at its initialisation;
- a grown architecture starts out computing exactly what the saved model did;
- a 2-process gloo run through torchrun (the real loop, 3 steps) ends with the same weights on both ranks,
  one log line per step and metrics written once.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from procfs import env as procfs_env
from procfs import rank_pid, takes_ctrl_c
from test_synth import make_photos

from sigma.config.loader import load_config
from sigma.models import build_model, load_model
from sigma.training.config import TrainConfig
from sigma.training.data import TrainDataset, to_float
from sigma.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "sigma" / "weights" / "sigma-lite.safetensors"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"), n=4, size=(80, 96))


@pytest.mark.parametrize("config", ["tiny-stage1.yaml", "tiny-stage2.yaml"])
def test_every_trainable_parameter_gets_a_gradient(config, photos, tmp_path, one_torch_thread):
    cfg = load_config(TrainConfig, ROOT / "configs" / "train" / config,
                      [f"data.photos={photos}", f"out_dir={tmp_path}", "region_p=1.0", "prior_p=1.0",
                       "edit_type_p=1.0", "batch_size=6", "eval.val_size=0", "eval.at_start=false"])
    trainer = Trainer(cfg, tmp_path, log=lambda *a: None)
    ds = TrainDataset(cfg)
    # a batch with an edit in it (region tokens come from the true boxes) and, for Stage II, a no-edit pair
    items = [ds[i] for i in range(40)]
    edited = [it for it in items if it["mask"].any()][:5]
    empty = [it for it in items if not it["mask"].any()][:1]
    batch = {k: torch.stack([it[k] for it in edited + empty]) for k in items[0]}
    res = trainer.train_step(to_float(batch, torch.device("cpu")))
    assert res is not None and math.isfinite(res["loss"])
    missing = [n for n, p in trainer.model.named_parameters()
               if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    assert not missing, f"{config}: parameters without a gradient: {missing}"
    assert any(n.startswith("refine.region_") for n, _ in trainer.model.named_parameters())


def _untouched(name: str, value: torch.Tensor, fresh: list[torch.Tensor], module: torch.nn.Module) -> bool:
    """True when `value` is still what initialisation gives: equal to a deterministic init (the same in
    two fresh builds: BN/LayerNorm 1 and 0, zero-initialised embeddings and tokens), or, for a random
    init, every entry still inside the init's range and the same spread (training with AdamW moves some entry
    out of it). Random-init tensors of fewer than 8 entries (the 1-channel output biases) cannot be judged."""
    if all(torch.equal(f, fresh[0]) for f in fresh[1:]):
        return torch.equal(value, fresh[0])
    if value.numel() < 8:   # a random scalar bias: a trained value can sit anywhere, no test can tell
        return False
    bound = max(float(f.abs().max()) for f in fresh)
    inside = bool(value.abs().max() <= bound * 1.001)
    return inside and abs(float(value.std()) - float(fresh[0].std())) < 0.05 * float(fresh[0].std())


def test_shipped_file_has_no_parameter_at_its_initialisation():
    shipped = load_model(SHIPPED)
    fresh = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        fresh.append(dict(build_model(shipped.config).named_parameters()))
    untouched = [n for n, p in shipped.named_parameters()
                 if _untouched(n, p.detach(), [f[n].detach() for f in fresh], shipped)]
    assert not untouched, f"shipped sigma-lite parameters still at their initialisation: {untouched}"


def test_a_grown_model_starts_out_computing_the_same(one_torch_thread):
    torch.manual_seed(0)
    small = build_model({"name": "a", **_tiny(depths=[0, 1, 0, 1, 1], full_res_head=0)}).eval()
    big = build_model({"name": "b", **_tiny(depths=[0, 1, 1, 2, 2], full_res_head=4)}).eval()
    from sigma.models.grow import load_matching

    rep = load_matching(big, small.state_dict())
    assert rep.loaded and not rep.dropped
    assert set(rep.identity) == {"backbone.stages.2.1", "backbone.stages.3.2", "backbone.stages.4.2", "decoder.full"}
    x = torch.rand(2, 3, 64, 96)
    y = x.clone()
    y[:, :, 10:30, 20:50] = torch.rand(2, 3, 20, 30)
    with torch.no_grad():
        assert torch.equal(small(x, y).logits, big(x, y).logits)
    small.train(), big.train()
    with torch.no_grad():
        assert torch.equal(small(x, y).logits, big(x, y).logits)


def _tiny(depths, full_res_head):
    from sigma.models.presets import PRESETS

    cfg = json.loads(json.dumps(PRESETS["tiny-lite"]))
    cfg["backbone"]["depths"] = depths
    cfg["full_res_head"] = full_res_head
    return cfg


def test_grow_refuses_a_wider_layer():
    from sigma.models.grow import load_matching
    from sigma.models.weights import WeightsMismatchError

    wide = _tiny([0, 1, 0, 1, 1], 0)
    wide["dim"] = 64
    with pytest.raises(WeightsMismatchError, match="another shape"):
        load_matching(build_model({"name": "t", **_tiny([0, 1, 0, 1, 1], 0)}),
                      build_model({"name": "w", **wide}).state_dict())


def torchrun_tiny(photos: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The real `sigma train` loop on 2 gloo ranks (tests/ddp_train_worker.py saves each rank's weights)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_train_worker.py"), str(tmp_path),
           str(ROOT / "configs" / "train" / "tiny-stage1.yaml"), f"data.photos={photos}",
           f"out_dir={tmp_path / 'runs'}", "name=ddp", *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_ddp_two_processes_on_cpu_keep_the_same_weights(photos, tmp_path):
    proc = torchrun_tiny(photos, tmp_path, "steps=3", "ckpt_every=2", "eval.every=2", "region_p=0.5",
                         "prior_p=0.5", "max_minutes=600")   # the budget check: one broadcast per step
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys()
    # parameters equal; BatchNorm running statistics are each rank's own (DDP broadcasts rank 0's at the
    # start of every forward, and rank 0 saves the model)
    params = {n for n, _ in load_model(tmp_path / "runs" / "ddp" / "final").named_parameters()}
    diverged = [k for k in params if not torch.equal(a[k], b[k])]
    assert not diverged, f"ranks diverged: {diverged[:5]}"
    run = tmp_path / "runs" / "ddp"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["event"] == "train"] == [1, 2, 3]      # once, by rank 0
    assert sum(r["event"] == "val" for r in rows) >= 2
    assert all(math.isfinite(r["loss"]) for r in rows if r["event"] == "train")
    assert proc.stdout.count("step 3/3") == 1
    assert proc.stdout.count("run folder: ") == 1, proc.stdout       # once, by rank 0 (it was once per rank)
    best = json.loads((run / "best.json").read_text())                           # selection on synthetic val
    # (of the trained weights: the at-start score of random weights, with no init_from, is no candidate)
    assert best["f1"] >= max(r["synthetic"]["f1"] for r in rows if r["event"] == "val" and r["step"] > 0) - 1e-12
    saved = load_model(run / "final")
    assert all(torch.equal(saved.state_dict()[k], a[k]) for k in a)


def test_ddp_ranks_pause_together_on_rank0s_clock(photos, tmp_path):
    """`max_minutes` under DDP: rank 0's clock decides for every rank (a rank stopping alone would leave the
    other blocked in the next all-reduce), so both end at the same step and the run can be resumed."""
    torchrun_tiny(photos, tmp_path, "steps=6", "log_every=2", "eval.every=0", "eval.at_start=false",
                  "max_minutes=1e-6")
    run = tmp_path / "runs" / "ddp"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reason"]) for r in rows if r["event"] == "paused"] == [(1, "max_minutes")]   # every step
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 1 and not (run / "final").exists()
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)


def test_ddp_user_error_is_one_line_and_torchruns_report_carries_it(tmp_path):
    """A user error under torchrun (here a photos folder that does not exist, met by both ranks at start-up): sigma's
    line was printed once per rank, torchrun's report said `error_file: <N/A>` and `traceback : To enable traceback
    see: ...`, and the rank torchrun stopped while it was on its way out with the same error ended `-15`. Now rank 0
    alone prints the line, every rank writes it to torchrun's error file (the report's `traceback` field) and ends
    with sigma's exit status 2. torchrun's own ChildFailedError traceback stays: it is the torchrun process's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sigma",
           "train", str(ROOT / "configs" / "train" / "tiny-stage1.yaml"), f"data.photos={tmp_path / 'nowhere'}",
           f"out_dir={tmp_path / 'runs'}", "name=ddp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    err = proc.stderr
    assert proc.returncode != 0, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("sigma: ")]
    assert said == [f"sigma: error [file_not_found]: {tmp_path / 'nowhere'}: photo folder not found"], err[-3000:]
    # torchrun's report: sigma's line as each failure's traceback, the root cause included, every rank ended 2
    report = err[err.index("Root Cause"):]
    assert f"traceback : {said[0]}" in report and "To enable traceback" not in err, err[-3000:]
    assert re.findall(r"^ +exitcode +: (-?\d+)", err, re.M) == ["2", "2"], err[-3000:]
    # the only Python traceback is torchrun's own (its frames are torch's and runpy's), none from sigma's code
    frames = [line for line in err.splitlines() if line.lstrip().startswith('File "')]
    assert all("torch" in f or "runpy" in f for f in frames), frames


@pytest.mark.parametrize("args", [("steps=abc", "--resume", ""), ("--bogus",)])
def test_ddp_an_error_of_several_lines_or_of_the_parser_is_said_whole_once(tmp_path, args):
    """An error said in several lines under torchrun (`--resume ''` beside a bad override: `empty_path`, then
    `invalid_config`): each line was written over the one before in torchrun's error file, so its report showed the
    last alone. A usage error (`--bogus`) was printed by every rank, and the report said `To enable traceback see:
    ...`. Now both are said once, by rank 0, and each rank's report carries every line; each rank ends 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sigma",
           "train", str(ROOT / "configs" / "train" / "tiny-stage1.yaml"), f"out_dir={tmp_path / 'runs'}", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    err = proc.stderr
    said = [line for line in err.splitlines() if line.startswith("sigma: ")]
    codes = ["empty_path", "invalid_config"] if "--resume" in args else ["bad_arguments"]
    assert [line.split("]")[0] for line in said] == [f"sigma: error [{code}" for code in codes], err[-3000:]
    # each rank's report: `traceback : LINE1`, then the next lines indented by torchrun under it
    report = "\n".join([f"  traceback : {said[0]}", *(f"  {line}" for line in said[1:])])
    assert err.count(report) == 2 and "To enable traceback" not in err, err[-3000:]
    assert re.findall(r"^ +exitcode +: (-?\d+)", err, re.M) == ["2", "2"], err[-3000:]
    assert not (tmp_path / "runs").exists()


def test_ddp_ctrl_c_says_interrupted_once(photos, tmp_path):
    """A Ctrl-C to a torchrun in a terminal reaches every rank (the terminal's process group, and torchrun passes
    it on): each rank printed `sigma: interrupted`. Now rank 0 alone says it; torchrun ends with its own report."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sigma",
           "train", str(ROOT / "configs" / "train" / "tiny-stage1.yaml"), f"data.photos={photos}",
           f"out_dir={tmp_path / 'runs'}", "name=ddp", "steps=400", "eval.at_start=false", "eval.val_size=0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=takes_ctrl_c)
    try:
        for line in proc.stdout:                      # the ranks train: both have passed their start-up
            if line.startswith("step 2/"):
                break
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert [line for line in err.splitlines() if line.startswith("sigma: ")] == ["sigma: interrupted"], err[-3000:]


def _torchrun_with_a_rank_killed(photos, tmp_path, ranks: int, killed: int,
                                 entry: tuple[str, ...] = ("-m", "sigma")) -> tuple[Path, int, str]:
    """(the run folder, torchrun's status, its stderr) of a tiny Stage I run under `torchrun --nproc_per_node=ranks`
    whose rank `killed` is SIGKILLed after the checkpoint of step 2 (ckpt_every=2); `entry`: what torchrun starts,
    `sigma`'s CLI or a script of the user's taking the same arguments after `train`."""
    run = tmp_path / "runs" / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *entry,
           *(["train"] if entry == ("-m", "sigma") else []), str(ROOT / "configs" / "train" / "tiny-stage1.yaml"),
           f"data.photos={photos}", f"out_dir={tmp_path / 'runs'}", "name=ddp", "steps=400", "eval.at_start=false",
           "eval.val_size=0"]
    proc = subprocess.Popen(cmd, env=procfs_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=tmp_path)
    try:
        for line in proc.stdout:          # rank 0's log: step 3 comes after the checkpoint of step 2
            if line.startswith("step 3/"):
                break
        os.kill(rank_pid(proc.pid, killed), signal.SIGKILL)
        _, err = proc.communicate(timeout=60)     # no hang: torchrun's own SIGKILL of a stuck rank waits 30 s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return run, proc.returncode, err


@pytest.mark.parametrize("killed", [1, 0])
def test_ddp_a_rank_killed_mid_run_is_one_line_on_the_rank_left(photos, tmp_path, killed):
    """One rank SIGKILLed mid-run (the OOM killer, a stray kill): the rank left printed gloo's `RuntimeError: ...
    Connection reset by peer` (or `closed by peer`) as a `[rank0]:` Python traceback from the collective it was in,
    or was ended -15 by torchrun's SIGTERM on its way out. Now it says one line — `rank_lost`, which rank, the last
    complete checkpoint's step, the --resume command — and ends with sigma's status 2 by itself (torchrun's SIGTERM
    may come before or after its collective fails), the checkpoint of that step whole in the run folder."""
    from sigma.training.checkpoint import load_checkpoint

    run, returncode, err = _torchrun_with_a_rank_killed(photos, tmp_path, ranks=2, killed=killed)
    assert returncode != 0
    step = load_checkpoint(run)["step"]             # whole, and the one the line names
    assert step >= 2 and step % 2 == 0
    said = [line for line in err.splitlines() if line.startswith("sigma: ")]
    assert len(said) == 1, err[-3000:]
    assert re.fullmatch(rf"sigma: error \[rank_lost\]: rank {killed} of 2 was lost \(connection (reset|closed) by "
                        rf"peer\); the run stopped; the last complete checkpoint \(step {step}\) is kept; continue "
                        rf"with: sigma train --resume {re.escape(str(run))} \(under torchrun, as it was started\)",
                        said[0]), said[0]
    # no traceback of a rank: the only one is torchrun's own (its frames are torch's and runpy's)
    assert not re.search(r"^\[rank\d\]:.*Traceback", err, re.M), err[-3000:]
    frames = [line for line in err.splitlines() if line.lstrip().startswith('File "')]
    assert all("torch" in f or "runpy" in f for f in frames), frames
    # the rank left ended with sigma's status by itself (not -15 from torchrun's SIGTERM, nor -9 after its 30 s)
    codes = dict(re.findall(r"^ +rank +: (\d).*\n +exitcode +: (-?\d+)", err, re.M))
    assert codes == {str(killed): "-9", str(1 - killed): "2"}, err[-3000:]


def test_ddp_with_three_ranks_a_rank_lost_is_named_and_said_once(photos, tmp_path):
    """With more than 2 ranks, every rank left printed `rank_lost`, and the line named none ("another rank of 3
    (torchrun's report names it)"). Now the first rank left says it alone, naming the rank whose process is dead
    (each rank's host and pid in the run's store), here rank 0 — the rank that would say it alone otherwise; the
    ranks left still end with sigma's status 2."""
    run, _, err = _torchrun_with_a_rank_killed(photos, tmp_path, ranks=3, killed=0)
    said = [line for line in err.splitlines() if line.startswith("sigma: ")]
    assert len(said) == 1, err[-3000:]
    assert re.match(rf"sigma: error \[rank_lost\]: rank 0 of 3 was lost \(connection (reset|closed) by peer\); the "
                    rf"run stopped; the last complete checkpoint \(step \d+\) is kept; continue with: sigma train "
                    rf"--resume {re.escape(str(run))} ", said[0]), said[0]
    codes = dict(re.findall(r"^ +rank +: (\d).*\n +exitcode +: (-?\d+)", err, re.M))
    assert codes == {"0": "-9", "1": "2", "2": "2"}, err[-3000:]


def test_ddp_in_a_group_the_users_script_started_names_the_rank_lost(photos, tmp_path):
    """A user's own DDP script that starts the process group itself, then calls `sigma train` (tests/
    ddp_own_group_worker.py): the ranks were never registered in the run's store (only a group sigma started
    was), so with 3 ranks a rank killed mid-run was said as `a rank of 3 on another host`. Now registered either
    way: the first rank left names it, once."""
    run, _, err = _torchrun_with_a_rank_killed(photos, tmp_path, ranks=3, killed=1,
                                               entry=(str(ROOT / "tests" / "ddp_own_group_worker.py"),))
    said = [line for line in err.splitlines() if line.startswith("sigma: ")]
    assert len(said) == 1, err[-3000:]
    assert re.match(rf"sigma: error \[rank_lost\]: rank 1 of 3 was lost \(connection (reset|closed) by peer\); the "
                    rf"run stopped; the last complete checkpoint \(step \d+\) is kept; continue with: sigma train "
                    rf"--resume {re.escape(str(run))} ", said[0]), said[0]


def _torchrun_on_a_held_folder(cmd: list[str], run: Path, cwd: Path) -> tuple[subprocess.CompletedProcess, float,
                                                                               dict[str, str]]:
    """(the run, how long it took, each rank's exit code from torchrun's report) of torchrun `cmd` while another
    process holds the run folder `run`'s lock, as `sigma train` takes it."""
    import fcntl
    import time

    with open(run / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        began = time.monotonic()
        proc = subprocess.run(cmd, env=procfs_env(), capture_output=True, text=True, timeout=120, cwd=cwd)
        took = time.monotonic() - began
    return proc, took, dict(re.findall(r"^ +rank +: (\d).*\n +exitcode +: (-?\d+)", proc.stderr, re.M))


def test_ddp_ranks_left_waiting_to_connect_end_at_torchruns_sigterm(photos, tmp_path):
    """Rank 0 refused before the ranks connect (its run folder held by another process: `run_locked`), with 3
    ranks: ranks 1 and 2 waited inside torch's C++ rendezvous, where the SIGTERM torchrun sent them was only noted
    (sigma's clean stop at the next step), so torchrun SIGKILLed them after its fixed 30 s grace (`-9`). Now SIGTERM
    ends a rank at once while it connects: torchrun ends within seconds, the report's root cause rank 0's line."""
    run = tmp_path / "runs" / "ddp"
    run.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "sigma", "train",
           str(ROOT / "configs" / "train" / "tiny-stage1.yaml"), f"data.photos={photos}",
           f"out_dir={tmp_path / 'runs'}", "name=ddp", "steps=3"]
    proc, took, codes = _torchrun_on_a_held_folder(cmd, run, tmp_path)
    assert codes == {"0": "2", "1": "-15", "2": "-15"}, proc.stderr[-3000:]
    assert "traceback : sigma: error [run_locked]: " in proc.stderr
    assert took < 30, took


def test_ddp_ranks_waiting_for_rank_0s_cache_snapshot_end_at_torchruns_sigterm(photos, tmp_path):
    """On `data.cache`, the ranks other than 0 wait (polling, before they connect) for the cache_index.json rank 0
    snapshots into the run folder; rank 0 refused first (`run_locked`) left rank 1 polling while torchrun's
    SIGTERM was only noted, SIGKILLed after 30 s (`-9`). Now the noted SIGTERM ends the wait: one line, 143."""
    from sigma.cli import main

    cache = tmp_path / "cache"
    assert main(["synth", "--build-cache", str(cache), "--photos", str(photos), "--no-vae", "--max-side", "96"]) == 0
    run = tmp_path / "runs" / "ddp"
    run.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sigma", "train",
           str(ROOT / "configs" / "train" / "tiny-stage1.yaml"), f"data.cache={cache}",
           f"out_dir={tmp_path / 'runs'}", "name=ddp", "steps=3"]
    proc, took, codes = _torchrun_on_a_held_folder(cmd, run, tmp_path)
    assert codes == {"0": "2", "1": "143"}, proc.stderr[-3000:]
    assert "traceback : sigma: terminated while waiting for rank 0's cache_index.json: no step was run" in proc.stderr
    assert took < 30, took
