"""`$SIGMA_CACHE_DIR` / `$XDG_CACHE_HOME` as `sigma models --prepare` reads them: where the graph cache goes."""
from __future__ import annotations

from pathlib import Path

import pytest

from sigma.runtime.cache import cache_root


@pytest.mark.parametrize("blank", ["   ", "\t", " \n "])
def test_a_blank_cache_dir_is_unset_not_a_folder_named_spaces(blank, tmp_path, monkeypatch):
    """`SIGMA_CACHE_DIR='   ' sigma models --prepare` wrote the graph to a folder named `   ` in the working folder
    (`cached in    /onnx`); a blank value is unset, as for the numeric variables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("SIGMA_CACHE_DIR", blank)
    assert cache_root() == tmp_path / "home" / ".cache" / "sigma"
    monkeypatch.setenv("XDG_CACHE_HOME", blank)
    assert cache_root() == tmp_path / "home" / ".cache" / "sigma"


def test_a_relative_xdg_cache_home_is_ignored_as_the_spec_says(tmp_path, monkeypatch):
    """The XDG Base Directory spec: a relative path in these variables is invalid and must be ignored. It was a
    `rel/sigma` under each process's working folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SIGMA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "rel")
    assert cache_root() == tmp_path / "home" / ".cache" / "sigma"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "sigma"


def test_a_relative_sigma_cache_dir_is_named_absolute(tmp_path, monkeypatch):
    """A relative `$SIGMA_CACHE_DIR` is the working folder's, said whole in the messages that name the cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGMA_CACHE_DIR", "cache")
    assert cache_root() == tmp_path / "cache" and cache_root().is_absolute()
    monkeypatch.setenv("SIGMA_CACHE_DIR", "~/c")
    assert cache_root() == Path("~/c").expanduser()
