"""A package's names imported on first use (PEP 562 module `__getattr__` / `__dir__`), said once.

`sigma` and `sigma.models` each keep a table of name → submodule so that importing the package stays cheap (no
numpy for `sigma`, no torch for `sigma.models`: every `sigma` command imports both before it can take a Ctrl-C or
refuse an argument). Each package keeps its own table where it is; this module holds only the mechanism, at the
bottom layer (it imports nothing from sigma), so any layer may use it.

    _LAZY = {"SigmaNet": "sigma.models.sigma_net", ...}
    __getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, str],
                    namespace: MutableMapping[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's `__getattr__` and `__dir__`: a name in `table` is imported from its submodule on first use and
    cached in `namespace` (the package's globals), so later reads never come here; any other name is the
    AttributeError Python itself would raise (`hasattr` False); a name the package already has is that value, also
    for a direct call (it said the package had no `__path__`). A submodule that fails to import is an ImportError
    that says why, never an AttributeError. `__dir__` lists the table's names beside what is
    already defined (`dir`, tab completion, `inspect.getmembers`, pydoc).

    The two functions carry the package's `__module__`, so pydoc shows them as the package's own and pickle finds
    them by name. The import lock makes a first use from two threads at once safe: both get the one object."""

    def __getattr__(name: str) -> Any:
        if name in namespace:  # only a direct call comes here with it (`sigma.models.__getattr__("__path__")`)
            return namespace[name]
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            module = importlib.import_module(table[name])
        except AttributeError as exc:
            # raised inside the submodule's import (a torch or numpy without an attribute it uses): as an
            # AttributeError here it would say the package lacks the name (`from sigma.models import SigmaNet`:
            # "cannot import name 'SigmaNet'", the cause dropped; `hasattr` a quiet False)
            raise ImportError(f"{package}.{name}: importing {table[name]} failed: {type(exc).__name__}: {exc}",
                              name=table[name]) from exc
        value = getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())) | set(table))

    for function in (__getattr__, __dir__):
        function.__module__ = package
        function.__qualname__ = function.__name__
    return __getattr__, __dir__
