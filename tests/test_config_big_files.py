"""A config file of many values, through the real CLI and the real loader: a 1 MB file of 150000 values took 19 s to
be parsed by PyYAML's own (Python) parser and refused only then. Now libyaml parses it and the values are counted as
they are made, so the file is refused on reaching the bound, wherever the rest of it goes."""
from __future__ import annotations

import sys

import pytest
import yaml

import sigma.cli
from sigma.config.loader import MAX_CONFIG_VALUES, load_yaml, parse_value
from sigma.errors import ConfigError


def test_a_file_of_more_values_than_the_bound_is_refused_on_reaching_it(capsys, tmp_path):
    """The file ends in a syntax error that a parser reading the whole file meets first ("not valid YAML"): it is
    refused for its values, so the parser stopped at the bound and never read that far."""
    config = tmp_path / "big.yaml"
    config.write_text("options:\n  x: [" + ",".join(map(str, range(MAX_CONFIG_VALUES + 10))) + "]\n  y: [\n: : :\n")
    code = sigma.cli.main(["annotate", "--example", "-o", str(tmp_path / "out"), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"sigma: error [invalid_config]: {config}: expands to more than {MAX_CONFIG_VALUES} "
                          "values"), err
    assert not (tmp_path / "out").exists()


def test_a_mapping_of_many_keys_counts_its_values_not_its_keys():
    """The bound is on values, as before (a mapping's keys are not counted): a mapping of exactly that many is read."""
    text = "".join(f"k{i}: {i}\n" for i in range(MAX_CONFIG_VALUES - 1))     # the root is a value too
    assert len(load_yaml(text, "t.yaml")) == MAX_CONFIG_VALUES - 1
    with pytest.raises(ConfigError, match="expands to more than"):
        load_yaml(text + "one: more\n", "t.yaml")


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
def test_a_valid_config_is_not_scanned_by_the_python_parser():
    """What took the time: PyYAML's scanner in Python (cProfile: 23 of 26 s in yaml/scanner.py and parser.py)."""
    called: set[str] = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.endswith(("yaml/scanner.py", "yaml/parser.py")):
            called.add(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        data = load_yaml("a: &x [1, 2]\nb: {<<: {c: 0x10}, d: *x}\ne: 1:00\n", "t.yaml")
    finally:
        sys.setprofile(None)
    assert data == {"a": [1, 2], "b": {"c": 16, "d": [1, 2]}, "e": "1:00"}      # the loader's own rules still hold
    assert not called, sorted(called)


@pytest.mark.parametrize(("text", "said"), [
    ("a: [1,\n", "not valid YAML at line 2, column 1 (expected the node content, but found '<stream end>')"),
    ("a: 1\na: 2\n", "not valid YAML at line 2, column 1 (found duplicate key 'a')"),
    ("a: \"x\x07\"\n", "not valid YAML at line 1, column 6 (unacceptable character #x0007: special characters are "
                        "not allowed)"),
])
def test_an_error_is_still_said_as_pythons_parser_says_it(tmp_path, capsys, text, said):
    """libyaml words its errors its own way (`did not find expected node content`): a text it refuses is parsed again
    by PyYAML's, whose line is the one said, as before."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code = sigma.cli.main(["annotate", "--example", "-o", str(tmp_path / "out"), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and f"[invalid_config]: {config}: {said}" in err, err


def test_a_set_value_of_bytes_that_are_not_utf8_is_still_read():
    """libyaml takes UTF-8 only; a lone surrogate (a non-UTF-8 byte of an argument) is parsed by PyYAML's parser."""
    assert parse_value("a\udcffb") == "a\udcffb"


@pytest.mark.parametrize("text", ["a:\tb\n", "a: b\t\n"])
def test_a_text_with_a_tab_is_read_as_before(text):
    """libyaml takes a tab after `key:` or after a value; PyYAML's parser refused both, and still does."""
    with pytest.raises(yaml.YAMLError, match="found character '\\\\t' that cannot start any token"):
        load_yaml(text, "t.yaml")
    assert parse_value("run\t") == "run\t"


@pytest.mark.parametrize(("text", "data"), [("a: !\n", {"a": None}), ("a: ! #c\n", {"a": None}),
                                            ("a: ! x\n", {"a": "x"}), ("a: [!\n, b]\n", {"a": [None, "b"]})])
def test_a_bare_tag_is_read_as_before(text, data):
    """YAML's non-specific tag `!` on an empty value: libyaml reads '', PyYAML's parser null, as it did."""
    assert load_yaml(text, "t.yaml") == data
