"""Options every command shares: a config file, `--set key=value` overrides, the annotator name."""
from __future__ import annotations

import argparse
import sys
from typing import Any


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


def flag_overrides(overrides: list[str], **flags: Any) -> dict[str, Any]:
    """`--set key=value` items plus the command's own flags (None = not given) as dotted overrides: flags
    are applied before validation, like every other override, never by mutating a validated config."""
    from sigma.config.loader import parse_overrides

    merged = parse_overrides(overrides)
    merged.update({k: v for k, v in flags.items() if v is not None})
    return merged


def progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pair", file=sys.stderr, disable=not sys.stderr.isatty() and total < 2)
