"""`sigma` and `sigma.models` import their names on first use (PEP 562, `sigma.lazyattrs`): each name of each
table imports, `dir` lists them, an unknown name is an AttributeError (`hasattr` False), a submodule that cannot be
imported says why, two threads' first use gets one object, and pickle, reload and pydoc keep working."""
from __future__ import annotations

import ast
import importlib
import inspect
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from servicekit import TESTS, base_env

import sigma
import sigma.models

PACKAGES = [sigma, sigma.models]


def _python(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (the worktree's sigma on PYTHONPATH), so first use is really first."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=180,
                          env=base_env("redis://127.0.0.1:1/0"), cwd=str(TESTS.parent), check=False)


def _package(tmp_path: Path, name: str, submodule: str) -> object:
    """A real package NAME on sys.path whose one lazy name `X` lives in NAME.sub (source `submodule`)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "__init__.py").write_text(
        "from sigma.lazyattrs import lazy_attributes\n"
        f"_LAZY = {{'X': '{name}.sub'}}\n"
        "__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())\n")
    (folder / "sub.py").write_text(textwrap.dedent(submodule))
    sys.path.insert(0, str(tmp_path))
    return importlib.import_module(name)


@pytest.fixture
def forget(tmp_path):
    """Packages made by `_package` leave sys.path and sys.modules after the test."""
    yield
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("lazyprobe_")]:
        del sys.modules[name]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_name_of_each_table_imports_through_from_import(package):
    """A typo in a table (a name its submodule does not define, a submodule that is not there) fails here: each name
    is forgotten, then imported as users write it, through the package's `__getattr__`."""
    assert set(package._LAZY) <= set(package.__all__), "a lazy name missing from __all__"
    for name, module in package._LAZY.items():
        vars(package).pop(name, None)
        namespace: dict = {}
        exec(f"from {package.__name__} import {name}", namespace)
        assert namespace[name] is getattr(importlib.import_module(module), name), name
        assert vars(package)[name] is namespace[name], f"{name} is not cached in {package.__name__}"

    star: dict = {}
    exec(f"from {package.__name__} import *", star)
    assert set(package.__all__) <= set(star)


def test_the_names_static_tools_see_are_the_names_sigma_models_resolves():
    """The TYPE_CHECKING block (what mypy, IDEs and pydoc's readers are told) and the table say the same names from
    the same submodules: a name added to one only is caught here."""
    seen = {}
    for node in ast.walk(ast.parse(Path(sigma.models.__file__).read_text())):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            seen.update({alias.asname or alias.name: imp.module for imp in node.body for alias in imp.names})
    assert seen == sigma.models._LAZY

@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_dir_lists_the_lazy_names_and_an_unknown_name_is_an_attribute_error(package):
    for name in package._LAZY:
        vars(package).pop(name, None)
    assert set(package._LAZY) | set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match=rf"^module '{package.__name__}' has no attribute 'no_such_name'$"):
        package.no_such_name  # noqa: B018
    assert not hasattr(package, "no_such_name")
    with pytest.raises(ImportError, match="cannot import name 'no_such_name'"):
        exec(f"from {package.__name__} import no_such_name", {})


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_a_direct_call_of_getattr_with_a_name_the_package_has_returns_it(package):
    """`sigma.models.__getattr__("__path__")` said `module 'sigma.models' has no attribute '__path__'`."""
    for name in ("__path__", "__name__", "__all__", "_LAZY"):
        assert package.__getattr__(name) is getattr(package, name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        package.__getattr__("no_such_name")

def test_first_use_of_sigma_models_imports_torch_and_not_before():
    proc = _python("""
        import sys, sigma, sigma.models
        assert "torch" not in sys.modules and "numpy" not in sys.modules
        dir(sigma.models); hasattr(sigma.models, "nope"); sigma.models.PRESETS
        assert "torch" not in sys.modules, "dir, an unknown name or a torch-free name imported torch"
        sigma.models.SigmaNet
        print("torch" in sys.modules)
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_a_submodule_that_cannot_be_imported_says_why():
    """Torch missing: the ImportError naming torch, from `from ... import`, attribute access and `hasattr` alike,
    not `cannot import name 'SigmaNet'` nor a quiet False."""
    proc = _python("""
        import sys
        sys.modules["torch"] = None         # torch not installed
        import sigma.models
        for attempt in ("from sigma.models import SigmaNet", "sigma.models.SigmaNet",
                        "hasattr(sigma.models, 'SigmaNet')"):
            try:
                exec(attempt)
            except ImportError as exc:
                print(type(exc).__name__, exc.name)
            else:
                print("no error")
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == ["ModuleNotFoundError torch"] * 3, proc.stdout


def test_an_attribute_error_inside_a_submodules_import_is_an_import_error_that_says_it(tmp_path, forget):
    """A broken torch (`module 'torch' has no attribute '_C'` at its import) was `cannot import name 'SigmaNet'
    from 'sigma.models'`, the cause dropped, and `hasattr` a quiet False."""
    package = _package(tmp_path, "lazyprobe_broken", """
        import os
        os.no_such_attribute
    """)
    with pytest.raises(ImportError, match="importing lazyprobe_broken.sub failed: AttributeError: .*no_such_attr"):
        exec("from lazyprobe_broken import X", {})
    with pytest.raises(ImportError) as caught:
        hasattr(package, "X")
    assert isinstance(caught.value.__cause__, AttributeError)
    broken = tmp_path / "broken" / "torch"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise AttributeError(\"module 'torch' has no attribute '_C'\")\n")
    env = base_env("redis://127.0.0.1:1/0")
    env["PYTHONPATH"] = f"{broken.parent}:{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-c", "from sigma.models import build_model"], capture_output=True,
                          text=True, timeout=180, env=env, cwd=str(TESTS.parent), check=False)
    last = proc.stderr.strip().split("\n")[-1]
    assert last == ("ImportError: sigma.models.build_model: importing sigma.models.factory failed: AttributeError: "
                    "module 'torch' has no attribute '_C'"), proc.stderr[-2000:]

def test_two_threads_first_use_of_one_name_get_one_object(tmp_path, forget):
    package = _package(tmp_path, "lazyprobe_threads", """
        import time
        time.sleep(0.5)                     # both threads are inside the first use at once
        X = object()
    """)
    start = threading.Barrier(2)
    got: list = []

    def use() -> None:
        start.wait()
        got.append(package.X)

    threads = [threading.Thread(target=use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(got) == 2 and got[0] is got[1] is sys.modules["lazyprobe_threads.sub"].X


def test_two_threads_first_use_of_sigma_net_get_one_class():
    proc = _python("""
        import threading, sigma.models
        start, got = threading.Barrier(2), []
        def use():
            start.wait(); got.append(sigma.models.SigmaNet)
        threads = [threading.Thread(target=use) for _ in range(2)]
        [t.start() for t in threads]; [t.join(120) for t in threads]
        from sigma.models.sigma_net import SigmaNet
        print(len(got), got[0] is got[1] is SigmaNet)
    """)
    assert proc.stdout.strip() == "2 True", proc.stderr[-2000:]


def test_pickle_reload_pydoc_and_getmembers_keep_working():
    config = sigma.models.preset_config("sigma-lite")
    assert pickle.loads(pickle.dumps(config)) == config
    for package in PACKAGES:                     # the package's own functions, found by name
        assert pickle.loads(pickle.dumps(package.__getattr__)) is package.__getattr__
        assert package.__getattr__.__module__ == package.__name__
    reloaded = importlib.reload(sigma.models)
    assert reloaded is sigma.models and sigma.models.SigmaNet is sys.modules["sigma.models.sigma_net"].SigmaNet
    assert importlib.reload(sigma).Pair is sys.modules["sigma.types"].Pair
    members = dict(inspect.getmembers(sigma.models))
    assert set(sigma.models._LAZY) <= set(members)
    proc = subprocess.run([sys.executable, "-m", "pydoc", "sigma.models"], capture_output=True, text=True,
                          timeout=180, env=base_env("redis://127.0.0.1:1/0"), cwd=str(TESTS.parent), check=False)
    assert proc.returncode == 0 and "class SigmaNet" in proc.stdout and "build_model(" in proc.stdout, proc.stderr

