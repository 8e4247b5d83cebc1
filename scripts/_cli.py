"""The command line of a script from its `main`'s signature: parameters without a default are required
positionals (text), those with one are optional positionals of the default's type; --help prints the script's
docstring. One place, so the check-set writers take their arguments the same way; `write_check_set` is the
recipe they share."""
from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

# what every check-set writer's arguments mean (each adds its own)
CHECK_SET_HELPS = {
    "config": "a training config or a run's config.yaml (its data section is used)",
    "out": "the folder to write",
    "n": "pairs",
    "seed": "seed",
}


def run(main: Callable[..., Any], doc: str | None, helps: dict[str, str]) -> Any:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, param in inspect.signature(main).parameters.items():
        if param.default is inspect.Parameter.empty:
            ap.add_argument(name, help=helps.get(name))
        else:
            ap.add_argument(name, nargs="?", type=type(param.default), default=param.default,
                            help=f"{helps.get(name, name)} ({param.default})")
    return main(**vars(ap.parse_args()))


def write_check_set(config: str, out: str | Path, n: int, seed: int,
                    change: Callable[[Any], dict[str, Any]]) -> None:
    """A synthetic check set: a training config's data section with `change(data)`'s fields replaced, written as
    `n` pairs drawn with seed `seed` (`write_val_dir`, the validation set's writer). Each check-set script says
    only what its family changes."""
    from sigma.config.loader import load_config
    from sigma.training.config import TrainConfig
    from sigma.training.data import write_val_dir

    cfg = load_config(TrainConfig, config, [])
    data = cfg.data.model_copy(update=change(cfg.data))
    cfg = cfg.model_copy(update={"data": data, "eval": cfg.eval.model_copy(update={"val_seed": seed})})
    write_val_dir(cfg, Path(out), n)
