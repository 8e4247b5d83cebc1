"""Options every command shares: a config file, `--set key=value` overrides, the annotator name."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from sigma.errors import ConfigError


class SigmaArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line in the same `sigma: error [code]: ...` form as every
    other error (argparse's default prints the whole usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"sigma: error [bad_arguments]: {self.prog}: {message} (see `{self.prog} --help`)\n")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set io.align=true --set io.limits.max_pixels=10000000 "
                             "(repeatable; applied after --config)")


def default_annotator_name() -> str:
    """The embedded sigma-lite when its weights ship with the package, else the pixel-diff baseline."""
    from sigma.registry import list_annotators

    for entry in list_annotators():
        if entry.name == "sigma-lite" and entry.weights_status().startswith("embedded"):
            return "sigma-lite"
    return "pixel-diff"


def build_annotator(name: str, options: dict[str, Any], threshold: float | None):
    from sigma.registry import create_annotator

    options = dict(options)
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"--threshold must be in [0, 1], got {threshold}")
        options["threshold"] = threshold
    return create_annotator(name, **options)


def progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pair", file=sys.stderr, disable=not sys.stderr.isatty() and total < 2)
