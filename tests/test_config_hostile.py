"""Hostile config input, through the real CLI and the real loader on real files: each case was a traceback or a
misleading line before its fix, and is now one `invalid_config` line (or is read as the user meant)."""
from __future__ import annotations

import pytest

import sigma.cli
from sigma.config.loader import MAX_CONFIG_DEPTH
from sigma.errors import ConfigError
from sigma.service.settings import load_serve_config


def refused(capsys, *args: str) -> str:
    """Run `sigma ARGS`; it must fail with one `invalid_config` line, which is returned."""
    code = sigma.cli.main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sigma: error [invalid_config]"), (code, err)
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("parts", [MAX_CONFIG_DEPTH + 1, 10_000])
def test_a_set_key_deeper_than_a_config_nests_is_one_line_not_a_recursion_error(capsys, tmp_path, parts):
    """`--set options.a.a.….a=1`, 10,000 parts: the key was built into the tree, and the walk for NaN options died in
    a RecursionError traceback (exit 1). Now refused by its depth, as a value that deep is."""
    key = "options." + ".".join(["a"] * (parts - 1))
    err = refused(capsys, "annotate", "--example", "-o", str(tmp_path / "out"), "--set", f"{key}=1")
    assert f"a key of {parts} dotted parts; a config is nested at most {MAX_CONFIG_DEPTH} levels deep" in err, err
    assert len(err) < 400 and not (tmp_path / "out").exists()


def test_an_environment_key_deeper_than_a_config_nests_names_the_variable():
    name = "SIGMA__WORKER__OPTIONS__" + "__".join(["A"] * 5000)
    with pytest.raises(ConfigError) as caught:
        load_serve_config(env={name: "1"})
    assert caught.value.message.startswith("SIGMA__WORKER__OPTIONS__A__A"), caught.value.message[:200]
    assert "a key of 5002 dotted parts" in caught.value.message
