"""A key that names no setting is refused, at any depth, whichever way it was given (`--set`, a YAML file, the
environment), named in full, with the known key nearest to it.

Before: `sigma annotate ... --annotator pixel-diff --set annotator.options.bogus=1` ran as if the option had not been
given (`annotator` was made the mapping {options: {bogus: 1}}, which the `--annotator` flag then replaced), and `sigma
train tiny-stage1.yaml model.dim=32` trained the default architecture with dim 32 instead of tiny-lite's (the preset
name replaced by {dim: 32}). Each runs the real CLI in-process or the real loader on real files.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import sigma.cli
from sigma.config.loader import load_config
from sigma.errors import ConfigError, InputError
from sigma.service.settings import load_serve_config
from sigma.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def refused(capsys, *args: str) -> str:
    """Run `sigma ARGS`; it must fail with one `invalid_config` line, which is returned."""
    code = sigma.cli.main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sigma: error [invalid_config]"), (code, err)
    return lines[0]


@pytest.mark.parametrize("flag", [[], ["--annotator", "pixel-diff"]])
def test_a_key_under_a_setting_that_has_no_keys_is_refused_with_the_key_meant(capsys, tmp_path, flag):
    err = refused(capsys, "annotate", "--example", "-o", str(tmp_path / "out"), *flag,
                  "--set", "annotator.options.bogus=1")
    assert "annotator.options.bogus: annotator is a setting of its own" in err, err
    assert "did you mean 'options.bogus'?" in err, err
    assert not (tmp_path / "out").exists()


def test_an_unknown_nested_key_names_the_nearest_known_one_in_full(capsys, tmp_path):
    err = refused(capsys, "annotate", "--example", "-o", str(tmp_path / "out"), "--annotator", "pixel-diff",
                  "--set", "io.limits.max_pixel=5")
    assert "io.limits.max_pixel: Extra inputs are not permitted (did you mean 'io.limits.max_pixels'?)" in err, err
    config = tmp_path / "a.yaml"
    config.write_text("annotator: sigma-lite\noptions:\n  image_sise: 224\n")
    err = refused(capsys, "annotate", "--example", "-o", str(tmp_path / "out"), "--config", str(config))
    assert "options.image_sise: Extra inputs are not permitted (did you mean 'options.image_size'?)" in err, err


def test_an_override_through_a_preset_name_or_a_list_is_refused_not_replacing_it():
    stage1 = REPO / "configs" / "train" / "tiny-stage1.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(TrainConfig, stage1, ["model.dim=32"])
    assert 'override model.dim: model is "tiny-lite" here, not a mapping' in exc.value.message
    with pytest.raises(ConfigError) as exc:
        load_config(TrainConfig, stage1, ["sources.0.path=x"])
    assert "override sources.0.path: sources is a list, with no keys" in exc.value.message


def test_sigma_train_is_told_a_form_it_takes_to_set_a_preset_whole(capsys):
    """`sigma train tiny-stage1.yaml model.dim=32` said to set the model `(--set 'model=...')`, which `sigma train`
    (its overrides are plain KEY=VALUE) refuses as an unrecognized argument; now the form every command takes, and
    that a preset name stands for all its settings."""
    stage1 = str(REPO / "configs" / "train" / "tiny-stage1.yaml")
    for key, said in (("model.dim=32", "set model as a whole (model=...); a name stands for all its settings"),
                      ("sources.0.path=x", "set it whole (sources=[...])")):
        assert sigma.cli.main(["train", stage1, key]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err and "--set" not in err, err


def test_the_environment_is_refused_the_same_naming_the_variable():
    with pytest.raises(ConfigError) as exc:
        load_serve_config(None, [], env={"SIGMA__WORKER__ANNOTATOR__X": "1"})
    assert "SIGMA__WORKER__ANNOTATOR__X: worker.annotator.x: worker.annotator is a setting" in exc.value.message
    with pytest.raises(ConfigError) as exc:
        load_serve_config(None, [], env={"SIGMA__QUEUE__LEASE": "1"})
    assert "queue.lease: Extra inputs are not permitted (did you mean 'queue.lease_ms'?)" in exc.value.message


@pytest.mark.parametrize("key", [".io.align", "io..align", "io.align."])
def test_a_key_with_an_empty_name_in_it_is_refused_as_such(capsys, tmp_path, key):
    err = refused(capsys, "annotate", "--example", "-o", str(tmp_path / "out"), "--annotator", "pixel-diff",
                  "--set", f"{key}=true")
    assert f"override {key!r}: a key with an empty name in it" in err, err
    with pytest.raises(ConfigError) as exc:
        load_serve_config(None, [], env={"SIGMA__QUEUE____LEASE_MS": "1"})
    assert "SIGMA__QUEUE____LEASE_MS: 'queue..lease_ms': a key with an empty name" in exc.value.message


@pytest.mark.parametrize("host", ["", " "])
def test_an_empty_host_is_refused_not_every_interface(host):
    """`sigma serve api --host ''` bound 0.0.0.0 (uvicorn's '' is every interface), not the loopback default. The
    flag's refusal names the flag (`bad_arguments`), the variable's the key (`invalid_config`)."""
    with pytest.raises(InputError) as exc:
        load_serve_config(None, [], env={}, flags={"api.host": host})
    assert exc.value.code == "bad_arguments" and exc.value.message.startswith(f"--host {host!r}: "), exc.value.message
    with pytest.raises(ConfigError):
        load_serve_config(None, [], env={"SIGMA__API__HOST": host})
    assert load_serve_config(None, [], env={}, flags={"api.host": "0.0.0.0"}).api.host == "0.0.0.0"


@pytest.mark.parametrize("given,said", [
    (["--set", "worker.options.threshhold=1"],
     "worker.options.threshhold: Extra inputs are not permitted (did you mean 'worker.options.threshold'?)"),
    (["--set", "worker.options.bogus=1"], "invalid ServeConfig: worker.options.bogus: Extra inputs are not permitted"),
    (["--annotator", "sigma-lite", "--set", "worker.options.image_sise=224"],
     "worker.options.image_sise: Extra inputs are not permitted (did you mean 'worker.options.image_size'?)")])
def test_a_workers_unknown_option_is_named_in_full_with_the_key_meant(capsys, given, said):
    """`sigma worker --set worker.options.bogus=1` said `pixel-diff: bogus: Extra inputs are not permitted` where the
    annotator was built: the key cut, no did-you-mean. Its options are now checked by the loader with the rest of the
    settings (`NamesAnnotator`, as `sigma annotate --set options.KEY`), before Redis is reached."""
    err = refused(capsys, "worker", "--set", "redis.url=redis://127.0.0.1:1/0", *given)
    assert said in err, err


def test_a_workers_options_are_checked_only_where_a_worker_runs():
    """The settings a deployment shares: `sigma serve api` and `sigma worker --batch` read no worker.options (each
    warns of them), so options meant for another annotator do not stop them; `sigma worker` is refused."""
    from sigma.service.settings import WorkerServeConfig

    env = {"SIGMA__WORKER__OPTIONS__PROMPT": "a cat"}
    assert load_serve_config(None, [], env=env).worker.options == {"prompt": "a cat"}
    with pytest.raises(ConfigError) as exc:
        load_serve_config(None, [], env=env, model=WorkerServeConfig)
    assert "SIGMA__WORKER__OPTIONS__PROMPT: worker.options.prompt: Extra inputs" in exc.value.message
    good = load_serve_config(None, ["worker.options.threshold=0.2"], env={}, model=WorkerServeConfig)
    assert good.worker.options == {"threshold": 0.2} and isinstance(good.worker.annotator, str)


@pytest.mark.parametrize(("args", "said"), [
    (["--annotator", "pixel-diff", "--set", "IO.align=true"],
     "IO: Extra inputs are not permitted (did you mean 'io'?)"),
    (["--annotator", "pixel-diff", "--set", "\uff49\uff4f.align=true"], "(did you mean 'io'?)"),     # full-width
    (["--annotator", "PIXEL-DIFF"], "Unknown annotator 'PIXEL-DIFF'. Did you mean 'pixel-diff'?"),
])
def test_a_name_that_differs_in_case_or_width_only_is_named(capsys, tmp_path, args, said):
    """difflib compares characters as written: 'IO' and 'io' share none, so a key or a name in capitals (or in an
    input method's full-width letters) had no did-you-mean at all."""
    code = sigma.cli.main(["annotate", "--example", "-o", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and said in err, (code, err)
