"""Hostile config input, through the real CLI and the real loader on real files: each case was a traceback or a
misleading line before its fix, and is now one `invalid_config` line (or is read as the user meant)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError
from servicekit import base_env

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


@pytest.mark.parametrize("setting, takes", [
    ("queue.lease_ms=30s", "queue.lease_ms: Input should be a whole number of milliseconds (e.g. 30000 for 30 s), got "
                           "'30s': the number alone, without a unit or h:m:s"),
    ("api.wait_timeout_s=30s", "api.wait_timeout_s: Input should be a number of seconds (e.g. 30, or 0.5 for half a "
                               "second), got '30s'"),
    ("queue.job_ttl_s=1h", "queue.job_ttl_s: Input should be a whole number of seconds (e.g. 3600 for an hour), got "
                           "'1h'"),
])
def test_a_time_given_with_a_unit_is_told_the_unit_the_setting_takes_with_an_example(capsys, setting, takes):
    """`--set queue.lease_ms=30s` said "unable to parse string as an integer": neither that a unit is not read nor
    which unit the setting is in."""
    err = refused(capsys, "serve", "api", "--set", "auth.allow_anonymous=true", "--set", setting)
    assert takes in err and "unable to parse" not in err, err


def test_training_minutes_given_as_text_say_minutes():
    from sigma.training.config import TrainConfig

    with pytest.raises(ValidationError) as caught:
        TrainConfig.model_validate({"max_minutes": "5 min"})
    assert "a number of minutes (e.g. 90 for an hour and a half), got '5 min'" in str(caught.value)


def test_a_plain_colon_number_is_text_not_yaml_1_1_base_60(tmp_path):
    """YAML 1.1 reads `1:00` as 60: `queue.lease_ms: 1:00` was a 60 ms lease taken without a word, and a text setting
    `worker.consumer: 10:30` the number 630 ("Input should be a valid string"). Read as text, as YAML 1.2 does."""
    config = tmp_path / "serve.yaml"
    config.write_text("worker:\n  consumer: 10:30\nqueue:\n  lease_ms: 1:00\n")
    with pytest.raises(ConfigError) as caught:
        load_serve_config(config, env={})
    assert "queue.lease_ms: Input should be a whole number of milliseconds" in caught.value.message
    assert "got '1:00'" in caught.value.message and "consumer" not in caught.value.message, caught.value.message
    config.write_text("worker:\n  consumer: 10:30\n")
    assert load_serve_config(config, env={}).worker.consumer == "10:30"
    for given in (["queue.lease_ms=1:00"], ["queue.max_deliveries=1:30"]):
        with pytest.raises(ConfigError) as caught:
            load_serve_config(overrides=given, env={})
        assert "1:" in caught.value.message, caught.value.message
    with pytest.raises(ConfigError) as caught:
        load_serve_config(env={"SIGMA__QUEUE__MAX_DELIVERIES": "1:00"})
    assert caught.value.message.endswith("unable to parse string as an integer ('1:00' is not read as YAML 1.1's "
                                         "base 60, h:m:s; write the number itself)"), caught.value.message


ALIAS_PLUGIN = """
from pydantic import Field

from sigma.annotators.pixel_diff import PixelDiff, PixelDiffConfig
from sigma.registry import ANNOTATORS


class CamelConfig(PixelDiffConfig):
    image_size: int = Field(64, alias="imageSize")
    k_value: int = Field(64, alias="K")


class Camel(PixelDiff):
    name = "camel-config"
    config_cls = CamelConfig


ANNOTATORS.register("camel-config", "test only", config_cls=CamelConfig)(lambda **options: Camel(**options))
"""


def test_an_environment_variable_sets_an_option_whose_name_has_capitals():
    """Every part of a `SIGMA__...` name was lowered: `SIGMA__WORKER__OPTIONS__imageSize` set `imagesize`, so an option
    spelt with capitals (a plugin's alias) could not be set from the environment at all."""
    cfg = load_serve_config(env={"SIGMA__WORKER__OPTIONS__imageSize": "32", "SIGMA__QUEUE__LEASE_MS": "5000",
                                 "SIGMA__worker__max_batch_size": "3"})
    assert cfg.worker.options == {"imageSize": 32} and cfg.queue.lease_ms == 5000 and cfg.worker.max_batch_size == 3


@pytest.mark.parametrize("variable, said", [
    ("SIGMA__WORKER__OPTIONS__imageSize", "worker.options.imageSize: Input should be a valid integer"),
    ("SIGMA__WORKER__OPTIONS__IMAGESIZE", "worker.options.imagesize: Extra inputs are not permitted (did you mean "
     "'worker.options.imageSize'? A variable's part in capitals is read in lower case: write the key's own capitals, "
     "SIGMA__WORKER__OPTIONS__imageSize)"),
    # an option all in capitals: its variable's part was read in lower case ('k', unknown), and the did-you-mean told
    # the user to write SIGMA__WORKER__OPTIONS__K, what they had written; it is now the key the plugin knows
    ("SIGMA__WORKER__OPTIONS__K", "worker.options.K: Input should be a valid integer"),
])
def test_a_worker_reads_a_plugins_option_with_capitals_from_the_environment(tmp_path, variable, said):
    """The real `sigma worker` with a plugin whose options are `imageSize` and `K`, Redis unreachable: the option is
    checked against the plugin's config before any connection."""
    (tmp_path / "camel_plugin.py").write_text(ALIAS_PLUGIN)
    env = {**base_env("redis://127.0.0.1:1/0"), variable: "abc"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "sigma", "worker", "--plugin", "camel_plugin", "--annotator",
                           "camel-config"], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"sigma: error [invalid_config]: invalid ServeConfig: {variable}: {said}"), \
        proc.stderr


@pytest.mark.parametrize("how", ["--config", "SIGMA_SERVE_CONFIG"])
def test_a_serve_config_files_worker_section_error_names_the_file(capsys, tmp_path, monkeypatch, how):
    """The service reads its file itself and hands the loader its values: the loader's errors about what the file
    says ("options written for another annotator", an exponent that is no whole number) said "the config file"."""
    config = tmp_path / "prod-serve.yaml"
    config.write_text("worker:\n  annotator: pixel-diff\n  options: {threshold: 0.2}\n  max_batch_size: 1.5e0\n"
                      "auth: {allow_anonymous: true}\n")
    given = ["--config", str(config)]
    if how == "SIGMA_SERVE_CONFIG":
        monkeypatch.setenv("SIGMA_SERVE_CONFIG", str(config))
        given = []
    named = f"{config}: " if how == "--config" else f"{config} (SIGMA_SERVE_CONFIG): "
    err = refused(capsys, "serve", "all", "--port", "0", "--annotator", "sigma-lite", *given)
    assert f"{named}worker.max_batch_size=1.5e0: not a whole number" in err, err
    assert f"{named}worker.options.threshold is written for annotator 'pixel-diff'" in err, err
    assert "the config file" not in err, err


@pytest.mark.parametrize("file, overrides, env, first, second", [
    ("limits:\n  max_bytes: 1000\n", ["limits.max_image_bytes=2000"], {}, "FILE", "command line"),
    ("limits:\n  max_bytes: 1000\n", [], {"SIGMA__LIMITS__MAX_IMAGE_BYTES": "5"}, "FILE",
     "SIGMA__LIMITS__MAX_IMAGE_BYTES"),
    ("limits:\n  max_bytes: 1000\n  max_image_bytes: 2000\n", [], {}, "FILE", "FILE"),
    ("", ["limits.max_bytes=1", "limits.max_image_bytes=2"], {}, "command line", "command line"),
])
def test_two_spellings_of_one_setting_are_one_line_naming_both_and_where(tmp_path, file, overrides, env, first,
                                                                         second):
    """`limits.max_image_bytes` is another name of `limits.max_bytes`; given both (a file's max_bytes under `--set
    limits.max_image_bytes=...`), pydantic took one and said of the other "Extra inputs are not permitted (did you
    mean 'limits.max_bytes'?)", which named neither the clash nor where each came from."""
    config = tmp_path / "serve.yaml"
    config.write_text(file)
    with pytest.raises(ConfigError) as caught:
        load_serve_config(config, overrides, env=env)
    where = {"FILE": str(config)}
    assert caught.value.message == (
        f"limits.max_bytes ({where.get(first, first)}) and limits.max_image_bytes ({where.get(second, second)}) are "
        "two spellings of one setting, limits.max_bytes: give it once, in one spelling (limits.max_bytes in each "
        "place, so that a later layer overrides an earlier one: file < environment < command line)")
    config.write_text("limits:\n  max_image_bytes: 1000\n")          # one spelling: read, and overridden as any
    assert load_serve_config(config, env={}).limits.max_bytes == 1000
    assert load_serve_config(config, ["limits.max_image_bytes=7"], env={}).limits.max_bytes == 7


@pytest.mark.parametrize("how", ["--consumer", "SIGMA__WORKER__CONSUMER", "--batch --consumer"])
def test_a_consumer_name_that_is_not_utf8_is_refused_before_the_worker_starts(tmp_path, how):
    """`--consumer $'a\\xffb'` (or the variable) was taken: the worker loaded its annotator, reached Redis, and its
    first heartbeat ended it with `invalid_text` blaming the locale. Now refused with the settings (Redis unreachable
    here: a worker that got past its settings would wait for it)."""
    env = base_env("redis://127.0.0.1:1/0")
    args = ["worker", *(["--batch"] if how.startswith("--batch") else [])]
    if how.endswith("--consumer"):
        args += ["--consumer", "a\udcffb"]          # the byte 0xff on the command line (surrogateescape)
    else:
        env[how] = "a\udcffb"
    proc = subprocess.run([sys.executable, "-m", "sigma", *args], capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    # the flag is named as given (`bad_arguments`, 1f02aef), the variable's setting by its key (`invalid_config`)
    where = "[bad_arguments]: --consumer 'a\\udcffb': " if how.endswith("--consumer") else "worker.consumer: "
    assert where + "Value error, holds bytes that are not UTF-8 text ('a\\udcffb'); a consumer name is " \
           "written to Redis as UTF-8" in proc.stderr, proc.stderr


def test_a_setting_holding_bytes_that_are_not_utf8_says_so_and_shows_them():
    """`SIGMA__QUEUE__GROUP=$'a\\xff'` was "unable to parse raw data as a unicode string" alone."""
    with pytest.raises(ConfigError) as caught:
        load_serve_config(env={"SIGMA__QUEUE__GROUP": "a\udcff"})
    assert caught.value.message.endswith("SIGMA__QUEUE__GROUP: queue.group: Input should be a valid string, unable to "
                                         "parse raw data as a unicode string (it holds bytes that are not UTF-8 text: "
                                         "'a\\udcff')"), caught.value.message


@pytest.mark.parametrize("how", ["file", "--set", "top-level"])
def test_a_key_holding_bytes_that_are_not_utf8_is_named(capsys, tmp_path, how):
    """An options key `\\udcff` (the byte 0xff of a non-UTF-8 argument, variable name or YAML escape) was refused as
    "options: Input should be a valid string, unable to parse raw data as a unicode string", the key never named
    (`<root>:` for a top-level one). Now the key, escaped, alone."""
    config = tmp_path / "c.yaml"
    config.write_text('annotator: pixel-diff\n' + ('"\\udcff": 1\n' if how == "top-level" else
                                                   'options:\n  "\\udcff": 1\n' if how == "file" else ""))
    given = ["--set", "options.\udcff=1"] if how == "--set" else []
    err = refused(capsys, "annotate", "--example", "-o", str(tmp_path / "out"), "--config", str(config), *given)
    key = "'\\udcff'" if how == "top-level" else "'options.\\udcff'"
    # where it was written: the file and its line, or the argument (escaped as the key is)
    where = {"file": f"{config}, line 3: ", "top-level": f"{config}, line 2: ", "--set": "override options.\\udcff=1: "}
    assert err == f"sigma: error [invalid_config]: {where[how]}{key}: a key holding bytes that are not UTF-8 text", err


def test_an_environment_key_holding_bytes_that_are_not_utf8_is_named():
    with pytest.raises(ConfigError) as caught:
        load_serve_config(env={"SIGMA__WORKER__OPTIONS__\udcff": "1"})
    assert caught.value.message == ("SIGMA__WORKER__OPTIONS__\udcff: 'worker.options.\\udcff': a key holding bytes "
                                    "that are not UTF-8 text"), caught.value.message


@pytest.mark.parametrize("variable, value, said", [
    ("SIGMA__QUEUE__GROUP", "a\x00b", "SIGMA__QUEUE__GROUP: queue.group: holds a NUL byte"),
    ("SIGMA__WORKER__OPTIONS", '{a: "\\0"}', "SIGMA__WORKER__OPTIONS: worker.options.a: holds a NUL byte"),
    ("SIGMA__WORKER__OPTIONS__X", "\\ud800", None),        # text as written: no surrogate
    ("SIGMA__WORKER__OPTIONS__X", '"\\ud800"', "SIGMA__WORKER__OPTIONS__X: worker.options.x: holds a lone UTF-16 "
                                                "surrogate"),
])
def test_a_nul_or_surrogate_from_the_environment_names_the_variable(variable, value, said):
    """A NUL byte or a lone surrogate in a variable's value was said by its key alone (`queue.group: holds a NUL byte`),
    where every other error of a variable's value starts with the variable (`load_config`'s `sources`)."""
    if said is None:
        assert load_serve_config(env={variable: value}).worker.options == {"x": "\\ud800"}
        return
    with pytest.raises(ConfigError) as caught:
        load_serve_config(env={variable: value})
    assert caught.value.message.startswith(said), caught.value.message


@pytest.mark.parametrize("tail", ["/", "/x.yaml"])
def test_a_config_file_named_as_a_folder_is_refused_as_the_system_refuses_it(capsys, tmp_path, monkeypatch, tail):
    """`--config a.yaml/` read the file a.yaml (`Path` drops a trailing '/'), where `cat a.yaml/` says "Not a
    directory": a path that names a folder was taken for the file. Now refused, by `--config` and `SIGMA_SERVE_CONFIG`,
    the path named as given."""
    config = tmp_path / "a.yaml"
    config.write_text("annotator: pixel-diff\n")
    named = f"{config}{tail}"
    err = refused(capsys, "annotate", "--example", "-o", str(tmp_path / "out"), "--config", named)
    assert err == (f"sigma: error [invalid_config]: {named}: config file not found: a file is named as a folder there "
                   "(by a trailing '/', or a path that goes on past it)"), err
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("SIGMA_SERVE_CONFIG", named)
    with pytest.raises(ConfigError) as caught:
        load_serve_config()
    assert caught.value.message.startswith(f"SIGMA_SERVE_CONFIG: {named}: config file not found"), caught.value.message


def test_a_key_in_capitals_from_the_environment_takes_its_layer_s_place(tmp_path):
    """A key the config knows only in capitals (`K`), from a variable whose part is read in lower case: it overrides
    the file's `K` and is overridden by the command line's, as any key of its layer; a key known in lower case keeps
    it (`SIGMA__K` sets `k` where both are known)."""
    from sigma.config.loader import Override, load_config
    from sigma.config.schema import Strict

    class Capitals(Strict):
        K: int = 1
        TAU_MS: int = 1

    class Both(Capitals):
        k: int = 1

    config = tmp_path / "c.yaml"
    config.write_text("K: 5\nTAU_MS: 6\n")
    env = {"k": Override.read("7", "SIGMA__K"), "tau_ms": Override.read("1e1", "SIGMA__TAU_MS")}
    sources = {"k": "SIGMA__K", "tau_ms": "SIGMA__TAU_MS"}
    assert load_config(Capitals, config, env, sources=sources).model_dump() == {"K": 7, "TAU_MS": 10}
    given = {**env, "K": Override.read("3", "K")}
    assert load_config(Capitals, config, given, sources=sources).K == 3
    assert load_config(Both, config, env, sources=sources).model_dump() == {"K": 5, "TAU_MS": 10, "k": 7}
    with pytest.raises(ConfigError) as caught:
        load_config(Capitals, config, {"k": Override.read("x", "SIGMA__K")}, sources={"k": "SIGMA__K"})
    assert caught.value.message.endswith("SIGMA__K: K: Input should be a valid integer, unable to parse string as an "
                                         "integer, got 'x'"), caught.value.message


@pytest.mark.parametrize("text", [
    "<<: [{threshold: 0.1}, {threshold: 0.2}]\n",
    "<<: {threshold: 0.1}\n<<: {threshold: 0.2}\n",
    "a: &a {threshold: 0.1}\nb: &b {threshold: 0.2}\nc:\n  <<: [*a, *b]\n",
])
def test_a_key_two_merged_mappings_give_is_refused_not_picked_by_memory(capsys, tmp_path, text):
    """PyYAML tells merged keys apart by `id()` of their strings: `<<: [{t: 1}, {t: 2}]` gave t 1 and the same with
    `threshold` 0.2, the other value dropped without a word. Now refused with its line, as a key written twice is."""
    config = tmp_path / "c.yaml"
    config.write_text(f"annotator: pixel-diff\n{text}")
    err = refused(capsys, "annotate", "--example", "-o", str(tmp_path / "out"), "--config", str(config))
    assert f"{config}: not valid YAML at line" in err and "found key 'threshold' in two merged mappings" in err, err
    assert not (tmp_path / "out").exists()


def test_a_merge_reads_as_the_mapping_merged_reads():
    """`<<: *b` of `b: {<<: *a, t: 5}` took a's t (1), b's own 5 dropped; a mapping's own key still overrides a merged
    one, one mapping merged twice or two equal values are no clash."""
    from sigma.config.loader import load_yaml

    text = ("a: &a {t: 1, u: 2, threshold: 0.1}\nb: &b {<<: *a, t: 5, threshold: 0.3}\nc:\n  <<: *b\n  u: 3\n"
            "d: {<<: [*a, *a, {t: 1}], u: 4}\n")
    assert load_yaml(text, "x") == {"a": {"t": 1, "u": 2, "threshold": 0.1}, "b": {"t": 5, "u": 2, "threshold": 0.3},
                                    "c": {"t": 5, "u": 3, "threshold": 0.3}, "d": {"t": 1, "u": 4, "threshold": 0.1}}


@pytest.mark.parametrize("key, said", [("1.5", "io.1.5"), ("1.50", "io.1.50"), ("~", "io.~"), ("yes", "io.yes"),
                                       ("0x10", "io.0x10"), ("2026-01-01", "io.2026-01-01")])
def test_a_key_yaml_reads_as_a_number_a_date_or_null_is_named_as_written(capsys, tmp_path, key, said):
    """A key YAML reads as another type went through the merge's JSON: `1.50:` was named `io.1.5`, `~:` `io.null`,
    `yes:` `io.true`, `0x10:` `io.16` (none of them written so), and a date key (`2026-01-01:`) ended the command in
    a TypeError traceback. Every key is now its text as written."""
    (tmp_path / "c.yaml").write_text(f"io:\n  {key}: 3\n")
    err = refused(capsys, "eval", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path), "--annotator",
                  "pixel-diff", "--out", str(tmp_path / "out"))
    assert f"{said}: Extra inputs are not permitted" in err, err


@pytest.mark.parametrize("text", ["io:\n  1: 3\n  '1': 4\n", "io:\n  yes: 3\n  'yes': 4\n",
                                  "options:\n  0x10: 3\n  '0x10': 4\n"])
def test_a_key_written_once_plain_and_once_quoted_is_a_duplicate(capsys, tmp_path, text):
    """`1:` and `'1':` in one mapping were two keys to YAML (a number and a text), one after the merge: the first
    value was dropped without a word. The same key written twice is refused, as any duplicate key is."""
    (tmp_path / "c.yaml").write_text(text)
    err = refused(capsys, "eval", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path), "--annotator",
                  "pixel-diff", "--out", str(tmp_path / "out"))
    assert "not valid YAML at line 3, column 3 (found duplicate key" in err, err


def test_a_free_mapping_with_number_keys_keeps_them_as_the_same_text(tmp_path):
    """A free mapping whose keys are numbers (an HF config's `id2label: {0: a}`) has the text keys it had."""
    from sigma.config.loader import load_yaml

    assert load_yaml("a: {0: x, 1: y, '2': z}", "t") == {"a": {"0": "x", "1": "y", "2": "z"}}
    assert load_yaml("b: &m {0: x}\nc: {<<: *m, 1: y}", "t") == {"b": {"0": "x"}, "c": {"0": "x", "1": "y"}}


@pytest.mark.parametrize("value, what", [("!!binary MC41", "!!binary data (bytes)"), ("!!set {a, b}", "a !!set")])
def test_binary_data_or_a_set_in_a_config_file_is_refused_at_its_line(capsys, tmp_path, value, what):
    """`threshold: !!binary MC41` went on as the bytes' Python repr: "threshold: ... got "b'0.5'"", a text nobody
    wrote; a `!!set` as `{'a', 'b'}`. Now the file's line and column say what it is."""
    (tmp_path / "c.yaml").write_text(f"annotator: pixel-diff\nthreshold: {value}\n")
    err = refused(capsys, "eval", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path), "--out",
                  str(tmp_path / "out"))
    assert f"c.yaml: not valid YAML at line 2, column 12 ({what} is no config value" in err, err
    assert "b'" not in err


@pytest.mark.parametrize("item, said", [
    (" threshold =0.3", "override ' threshold =0.3': space around its key; write threshold=0.3"),
    ("threshold =0.3", "override 'threshold =0.3': space around its key; write threshold=0.3"),
    ("data= DIR", "override 'data= DIR': space around its value; write data=DIR"),
    ("data=DIR ", "override 'data=DIR ': space around its value; write data=DIR"),
    ("threshold = 0.3", "override 'threshold = 0.3': space around its key and its value; write threshold=0.3"),
    ("threshold=\t0.3", "override 'threshold=\\t0.3': space around its value; write threshold=0.3")])
def test_a_set_item_with_space_around_its_key_or_value_is_refused(capsys, tmp_path, monkeypatch, item, said):
    """`--set ' threshold =0.3'` had its key stripped without a word, while `--set 'data= DIR'` kept the space in the
    text (the folder ' DIR', not found). One rule now: an item is taken as written, and space around either part is
    refused naming the item; the eval never starts (no --out made)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR").mkdir()
    err = refused(capsys, "eval", "--data", "DIR", "--annotator", "pixel-diff", "--out", str(tmp_path / "out"),
                  "--set", item)
    assert said in err, err
    assert not (tmp_path / "out").exists()


def test_a_text_that_starts_with_a_space_is_given_quoted(tmp_path):
    """The way to a text with a leading space: YAML quotes, read as the text inside them."""
    from sigma.config.loader import read_overrides

    assert read_overrides(["name=' run'"])["name"].value == " run"
    assert read_overrides(["perturb=[jpeg75, none]"])["perturb"].value == ["jpeg75", "none"]


def test_an_alias_used_as_a_key_leaves_its_anchors_value_a_number():
    """An alias key is the very node its anchor's value is: made text as a key, its value stays what it was."""
    from sigma.config.loader import load_yaml

    assert load_yaml("t: &n 0.5\no: {*n : x}", "t") == {"t": 0.5, "o": {"0.5": "x"}}


def _merge_bomb(refs: int) -> str:
    """A mapping of 2000 keys merged `refs` times into one mapping (`<<: [*m, *m, …]`), as a flow mapping."""
    keys = ", ".join(f"k{i}: 1" for i in range(2000))
    return f"{{m: &m {{{keys}}}, x: {{<<: [{', '.join(['*m'] * refs)}]}}}}"


@pytest.mark.parametrize("how", ["file", "set"])
def test_a_mapping_merged_over_and_over_is_refused_by_the_values_it_costs(capsys, tmp_path, how):
    """`<<: [*m, *m, …]` 20000 times over a mapping of 2000 keys, a 99 KB file, took 100 s to be refused (every
    merge compared each key again: 40 million); a 4 MB one would run for hours. Each key merged now counts toward
    the values a config may expand to (MAX_CONFIG_VALUES): 60 merges of 2000 keys are 120000, refused at once."""
    text = _merge_bomb(60)
    args = ["eval", "--data", str(tmp_path), "--annotator", "pixel-diff", "--out", str(tmp_path / "out")]
    if how == "file":
        (tmp_path / "c.yaml").write_text(f"options: {text}\n")
        args += ["--config", str(tmp_path / "c.yaml")]
    else:
        args += ["--set", f"options={text}"]
    err = refused(capsys, *args)
    assert "expands to more than 100000 values" in err, err[:300]


def test_a_few_merges_of_small_mappings_still_read():
    from sigma.config.loader import load_yaml

    assert load_yaml("a: &a {x: 1}\nb: &b {y: 2}\nc: {<<: [*a, *b], z: 3}", "t")["c"] == {"x": 1, "y": 2, "z": 3}


@pytest.mark.parametrize("key, said", [("1.5", "io.1.5: Extra inputs are not permitted (one key, '1.5', with a dot"),
                                       ('"a.b"', "io.a.b: Extra inputs are not permitted (one key, 'a.b', with a dot")])
def test_an_unknown_key_with_a_dot_in_it_is_said_to_be_one_key(capsys, tmp_path, key, said):
    """`io: {1.5: 3}` was said `io.1.5: Extra inputs are not permitted`, a place that reads as a path of three keys
    (io, 1, 5): the key the user wrote, with its dot, is now named as one."""
    (tmp_path / "c.yaml").write_text(f"io:\n  {key}: 3\n")
    err = refused(capsys, "eval", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path), "--annotator",
                  "pixel-diff", "--out", str(tmp_path / "out"))
    assert said in err, err
