"""`sigma train`: Stage I / Stage II training from a stage config, or resume a run folder."""
from __future__ import annotations

import argparse

from sigma.cli.common import path

HELP = """Train a SigmaNet with the one training loop (Stage I: BCE + Dice on synthetic edits; Stage II:
VAE-roundtrip calibration, EMA self-training, edit-noise disentanglement, each switchable).

The run folder (<out_dir>/<name>) receives config.yaml (resolved), checkpoint.pt (atomic), metrics.jsonl,
model/ (latest weights, loadable with --set options.weights=RUN/model) and final/.
Multi-GPU: torchrun --nproc_per_node N -m sigma train CONFIG.
"""

EXAMPLES = """examples:
  sigma train configs/train/sigma-lite-stage1.yaml
  sigma train configs/train/sigma-lite-stage2.yaml init_from=runs/sigma-lite-stage1 steps=300
  sigma train configs/train/tiny-stage1.yaml name=smoke steps=4 batch_size=2
  sigma train --resume runs/sigma-lite-stage1
"""


def register(sub: argparse._SubParsersAction) -> None:
    from sigma.cli.common import VALUE_RULE

    p = sub.add_parser("train", help="train a model (Stage I / Stage II) from a stage config",
                       description=HELP, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", type=path, help="stage config YAML (configs/train/...)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help=f"config overrides, e.g. steps=500 lr=1e-3. {VALUE_RULE}")
    p.add_argument("--resume", metavar="RUN_DIR", type=path, help="continue a run from its last checkpoint")
    # a SIGTERM while `sigma` starts, before `run`: one line and 143 (`sigma.cli._SigtermWhileStarting`)
    p.set_defaults(run=run, config_of=config_of, stops_on_sigterm=True, stdout_is_a_log=True)


def config_of(args: argparse.Namespace) -> None:
    """The stage config with the overrides, only read, for the parser's `refused_said`: `sigma train CONFIG steps=abc
    --resume ''` said the empty path alone, and the bad override only on the next run. Checked where the config is
    known: CONFIG given, or RUN's config.yaml under --resume; a refused CONFIG (`''`) leaves nothing to check them
    against. A `key=value` in CONFIG's place is the first override, as `run` takes it beside --resume."""
    from pathlib import Path

    from sigma.config.loader import load_config
    from sigma.training.config import TrainConfig

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and (args.resume or not Path(config).is_file()):
        overrides.insert(0, config)
        config = None
    if args.resume and not config and (Path(args.resume) / "config.yaml").is_file():
        config = str(Path(args.resume) / "config.yaml")
    if config:
        load_config(TrainConfig, config, overrides)


def run(args: argparse.Namespace) -> int:
    """A SIGTERM (a scheduler's stop) is noted from here on, through torch's import, the run folder taken, the model
    built and the validation set written, and obeyed by the trainer at its first safe point (`Trainer.run`):
    outside the training loop it used to kill the process at once, killed instead of 143 and without a word. One
    before this (the sub-commands' modules importing) was noted by `main`, which stops with one line and 143."""
    import signal

    from sigma.lifeline import signal_noted

    _quiet_torch_warnings()
    with signal_noted(signal.SIGTERM) as terminated:
        from sigma.errors import ConfigError
        from sigma.training.loop import start

        config, overrides = args.config, list(args.overrides)
        if args.resume and config and "=" in config:  # `sigma train --resume RUN k=v`: first override lands in config
            overrides.insert(0, config)
            config = None
        if args.resume and config:
            raise ConfigError("give either a config or --resume RUN_DIR, not both")
        run_dir = start(config, overrides, resume=args.resume, log=lambda m: print(m, flush=True),
                        terminated=terminated)
    from sigma.training import world

    if world.rank() == 0:     # under torchrun once, like the log: it was printed by every rank
        from sigma.text import printable

        print(f"run folder: {printable(run_dir)}")    # the run's name is the user's: a control character escaped
    return 0


def _quiet_torch_warnings() -> None:
    """torch's C++ log at ERROR unless the user chose a level (`$TORCH_CPP_LOG_LEVEL`): a rank whose rank 0 never
    answered printed c10d's connect-retry warnings (`[W ...TCPStore.cpp] ... retrying`, each with a page of C++
    frames) before sigma's own `rendezvous_failed` line. Errors are still printed, and the run's own failure is
    sigma's line. Read by torch's C++ library when it loads, so set before torch is imported (in-process callers that
    imported it already keep their level)."""
    import os
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
