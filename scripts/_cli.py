"""The command line of a script from its `main`'s signature: parameters without a default are required
positionals (text), those with one are optional positionals of the default's type; --help prints the script's
docstring. One place, so the check-set writers take their arguments the same way."""
from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any


def run(main: Callable[..., Any], doc: str | None, helps: dict[str, str]) -> Any:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, param in inspect.signature(main).parameters.items():
        if param.default is inspect.Parameter.empty:
            ap.add_argument(name, help=helps.get(name))
        else:
            ap.add_argument(name, nargs="?", type=type(param.default), default=param.default,
                            help=f"{helps.get(name, name)} ({param.default})")
    return main(**vars(ap.parse_args()))
