"""The one training loop for Stage I and Stage II.

A run folder holds: `config.yaml` (the resolved TrainConfig), `checkpoint.pt` (model, optimiser, schedule,
EMA teacher, step; written atomically), `metrics.jsonl` (one JSON object per log/validation event),
`model/` (the latest weights as a `sigma.models.save_model` folder, what `sigma eval` loads) and, at the
end, `final/`. Batches are a pure function of (seed, step), so `--resume` continues the same stream.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from sigma.config.loader import config_hash, load_config, save_resolved
from sigma.errors import ConfigError, InputError, SigmaError

from . import losses as L
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import StepSampler, TrainDataset, fixed_val_set, to_float
from .validate import evaluate_real, validate_synthetic


def _worker_init(_: int) -> None:
    """Data workers do numpy/OpenCV work: one thread each, so they never oversubscribe the cores.
    Workers are *spawned*: a forked child of a process whose OpenMP pool is running can deadlock."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


class TrainingDiverged(SigmaError):
    code = "training_diverged"


def shared_eval_dir() -> Path:
    env = os.environ.get("SIGMA_SHARED")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"
    return root / "data" / "eval"


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine to min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _build_model(cfg: TrainConfig):
    from sigma.models import build_model, load_model

    if cfg.init_from:
        src = Path(cfg.init_from)
        for cand in (src / "final", src / "model", src):
            if (cand / "config.json").is_file() or cand.suffix == ".safetensors":
                return load_model(cand)
        raise ConfigError(f"init_from {src}: no saved model (looked for final/, model/ or config.json)")
    return build_model(cfg.model, pretrained=True)


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, log=print):
        self.cfg, self.run_dir, self.log = cfg, run_dir, log
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.use_bf16 = self.device.type == "cuda" and cfg.amp in ("auto", "bf16")
        torch.manual_seed(cfg.seed)
        self.model = _build_model(cfg).to(self.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.teacher = None
        if cfg.ema.enabled:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step = 0
        self.is_main = self.rank == 0
        self.metrics_path = run_dir / "metrics.jsonl"
        self.tb = None
        if cfg.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception:  # noqa: BLE001 - optional
                self.tb = None

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "teacher": self.teacher.state_dict() if self.teacher is not None else None,
                "torch_rng": torch.get_rng_state(), "config_hash": config_hash(self.cfg)}

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"], strict=True)
        self.opt.load_state_dict(ckpt["opt"])
        if self.teacher is not None and ckpt.get("teacher") is not None:
            self.teacher.load_state_dict(ckpt["teacher"], strict=True)
        torch.set_rng_state(ckpt["torch_rng"])
        self.step = int(ckpt["step"])

    def checkpoint(self) -> None:
        if not self.is_main:
            return
        from sigma.models import save_model

        save_checkpoint(self.run_dir, self.state())
        save_model(self.model, self.run_dir / "model")

    def emit(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = {"step": self.step, "time": round(time.time(), 2), **record}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record, default=float) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(k, v, self.step)
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, (int, float)):
                            self.tb.add_scalar(f"{k}/{kk}", vv, self.step)

    # ------------------------------------------------------------------ one step
    def _guidance(self, b: dict[str, torch.Tensor], gen: torch.Generator):
        """Edit-type ids for a fraction of samples; a box prior (sometimes a wrong box) for a fraction."""
        n = b["mask"].shape[0]
        tell = torch.rand(n, generator=gen) < self.cfg.edit_type_p
        ids = torch.where(tell, b["edit_type"].cpu(), torch.zeros_like(b["edit_type"].cpu())).to(self.device)
        prior = None
        if self.cfg.prior_p > 0:
            give = torch.rand(n, generator=gen) < self.cfg.prior_p
            if bool(give.any()):
                h, w = b["mask"].shape[-2:]
                prior = torch.full((n, 1, h, w), 0.5)
                for i in torch.nonzero(give).flatten().tolist():
                    m = b["mask"][i, 0].cpu()
                    wrong = bool(torch.rand(1, generator=gen) < 0.3) or not bool(m.any())
                    if wrong:
                        y0, x0 = (torch.rand(2, generator=gen) * torch.tensor([h * 0.7, w * 0.7])).long().tolist()
                        y1, x1 = y0 + int(h * 0.3), x0 + int(w * 0.3)
                    else:
                        ys, xs = torch.nonzero(m, as_tuple=True)
                        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
                    prior[i, 0] = 0.3
                    prior[i, 0, y0:y1, x0:x1] = 0.9
                prior = prior.to(self.device)
        return ids, prior

    def _strong_view(self, edited: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c = self.cfg.ema
        n = edited.shape[0]
        gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * c.strong_jitter
        bias = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * c.strong_jitter
        noise = torch.randn(edited.shape, generator=gen) * c.strong_noise
        return (edited * gain.to(edited) + bias.to(edited) + noise.to(edited)).clamp(0, 1)

    def train_step(self, b: dict[str, torch.Tensor]) -> dict[str, float] | None:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        net = self.ddp or self.model
        labelled = b["labelled"].float()
        unl = 1.0 - labelled
        ids, prior = self._guidance(b, gen)
        edited = b["edited"]
        use_ema = self.teacher is not None and bool(unl.sum() > 0)
        if use_ema:
            with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.use_bf16):
                t_prob = torch.sigmoid(self.teacher(b["original"], edited).logits.float())
            strong = self._strong_view(edited, gen)
            edited = torch.where(unl.bool()[:, None, None, None], strong, edited)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.use_bf16):
            out = net(b["original"], edited, prior=prior, edit_type=ids)
        terms: dict[str, torch.Tensor] = {}
        terms["sup"] = L.bce_dice(out.logits, b["mask"], labelled, cfg.loss.bce, cfg.loss.dice, cfg.loss.pos_weight)
        loss = terms["sup"]
        if use_ema:
            terms["ema"] = L.pseudo_label_loss(out.logits, t_prob, unl, cfg.ema.hi, cfg.ema.lo)
            loss = loss + cfg.ema.weight * terms["ema"]
        if cfg.disentangle.enabled:
            noise_only = (b["mask"].flatten(1).sum(1) == 0) & b["labelled"]
            d = L.disentangle_terms(out.edit_feat, out.noise_feat, out.noise_pred, b["noise"], noise_only,
                                    cfg.disentangle.noise_scale)
            terms.update({f"dis_{k}": v for k, v in d.items()})
            loss = loss + cfg.disentangle.zero * d["zero"] + cfg.disentangle.decorrelate * d["decor"] \
                + cfg.disentangle.noise * d["noise"]
        if not torch.isfinite(loss):
            self.opt.zero_grad(set_to_none=True)
            return None
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
        if not torch.isfinite(gnorm):
            self.opt.zero_grad(set_to_none=True)
            return None
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(self.step, cfg)
        self.opt.step()
        if self.teacher is not None:
            with torch.no_grad():
                m = cfg.ema.momentum
                for tp, sp in zip(self.teacher.parameters(), self.model.parameters()):
                    tp.mul_(m).add_(sp.detach(), alpha=1 - m)
                for tb, sb in zip(self.teacher.buffers(), self.model.buffers()):
                    tb.copy_(sb)
        res = {k: float(v.detach()) for k, v in terms.items()}
        res.update(loss=float(loss.detach()), grad_norm=float(gnorm), lr=self.opt.param_groups[0]["lr"])
        return res

    # ------------------------------------------------------------------ the loop
    def validate(self, val, final: bool = False) -> None:
        if not self.is_main:
            return
        rec: dict[str, Any] = {"event": "val"}
        if val:
            rec["synthetic"] = validate_synthetic(self.model, val, self.device)
        ev = self.cfg.eval
        real_due = ev.data and (final or (ev.data_every and self.step % ev.data_every == 0))
        if real_due:
            data = str(shared_eval_dir()) if ev.data == "shared" else ev.data
            if Path(data).is_dir():
                self.checkpoint()
                rec["real"] = evaluate_real(self.run_dir / "model", data, ev.perturb, ev.image_size, ev.limit)
            else:
                rec["real"] = f"skipped: {data} not found"
        self.emit(rec)
        self.log(f"[val step {self.step}] " + json.dumps(rec, default=lambda x: round(x, 4) if isinstance(x, float) else str(x)))

    def run(self) -> Path:
        cfg = self.cfg
        ckpt = load_checkpoint(self.run_dir)
        if ckpt is not None:
            self.restore(ckpt)
            self.log(f"resumed {self.run_dir} at step {self.step}")
        if self.step >= cfg.steps:
            self.log(f"{self.run_dir}: already at step {self.step} of {cfg.steps}")
            return self.run_dir
        ds = TrainDataset(cfg)
        val = fixed_val_set(cfg, cfg.eval.val_size) if self.is_main and cfg.eval.val_size else []
        sampler = StepSampler(self.step, cfg.steps, cfg.batch_size, self.rank, self.world)
        loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            persistent_workers=False, prefetch_factor=4 if cfg.num_workers else None,
                            worker_init_fn=_worker_init if cfg.num_workers else None,
                            multiprocessing_context="spawn" if cfg.num_workers else None)
        bad = 0
        t_data = t_model = 0.0
        n_pairs = 0
        t_last = time.perf_counter()
        window: dict[str, list[float]] = {}
        for batch in loader:
            t0 = time.perf_counter()
            t_data += t0 - t_last
            b = to_float(batch, self.device)
            res = self.train_step(b)
            t_last = time.perf_counter()
            t_model += t_last - t0
            if res is None:
                bad += 1
                self.emit({"event": "skipped_step", "reason": "non-finite loss or gradient"})
                if bad >= cfg.max_bad_steps:
                    self.checkpoint()
                    raise TrainingDiverged(f"{bad} non-finite steps in a row at step {self.step}; "
                                           "lower lr or check the data")
            else:
                bad = 0
                for k, v in res.items():
                    window.setdefault(k, []).append(v)
            self.step += 1
            n_pairs += cfg.batch_size * self.world
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                rec = {k: float(np.mean(v)) for k, v in window.items()}
                rec.update(event="train", pairs_per_s=n_pairs / max(t_data + t_model, 1e-9),
                           data_s=t_data, model_s=t_model)
                self.emit(rec)
                self.log(f"step {self.step}/{cfg.steps} loss {rec.get('loss', float('nan')):.4f} "
                         f"lr {rec.get('lr', 0):.2e} {rec['pairs_per_s']:.1f} pairs/s "
                         f"(data wait {t_data:.0f}s, model {t_model:.0f}s)")
                window = {}
            if self.step % cfg.ckpt_every == 0:
                self.checkpoint()
            if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.steps:
                self.validate(val)
        self.checkpoint()
        self.validate(val, final=True)
        if self.is_main:
            from sigma.models import save_model

            save_model(self.model, self.run_dir / "final")
        if self.tb is not None:
            self.tb.close()
        return self.run_dir


def start(config_path: str | None, overrides: list[str] | None = None, resume: str | None = None,
          log=print) -> Path:
    """`sigma train CONFIG [k=v ...]` or `sigma train --resume RUN_DIR`."""
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise InputError(f"{run_dir}: not a run folder (no config.yaml)", code="file_not_found")
        cfg = load_config(TrainConfig, run_dir / "config.yaml", overrides or [])
    else:
        if not config_path:
            raise ConfigError("give a config (sigma train configs/train/sigma-lite-stage1.yaml) or --resume RUN_DIR")
        cfg = load_config(TrainConfig, config_path, overrides or [])
        run_dir = Path(cfg.out_dir) / cfg.name
        if (run_dir / "checkpoint.pt").is_file():
            raise ConfigError(f"{run_dir} already holds a run; use `sigma train --resume {run_dir}` or name=...")
    run_dir.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        save_resolved(cfg, run_dir)
    return Trainer(cfg, run_dir, log=log).run()
