"""The pydantic models of sigma's, found by walking the package, for the guard tests that must cover a model added
later (every float finite, every time bounded) without anyone listing it."""
from __future__ import annotations

import importlib
import pkgutil

from pydantic import BaseModel

import sigma


def sigma_models(root: type[BaseModel] = BaseModel) -> list[type[BaseModel]]:
    """Every subclass of `root` defined in sigma (configs, settings, the API's bodies, parse results), each module
    imported first so that none is missed (but `__main__`; the API's, `sigma.api`, installed from `api/`, by name)."""
    for module in pkgutil.walk_packages(sigma.__path__, "sigma."):
        if not module.name.endswith("__main__") and not module.name.startswith("sigma.api"):
            importlib.import_module(module.name)
    importlib.import_module("sigma.api.requests")
    importlib.import_module("sigma.api.batches")
    seen: list[type[BaseModel]] = []
    stack: list[type[BaseModel]] = [root]
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        if cls not in seen and cls.__module__.startswith("sigma."):
            seen.append(cls)
    return seen
