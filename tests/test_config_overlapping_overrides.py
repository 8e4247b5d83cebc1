"""One layer of overrides sets each place once: the command line's `--set`s (and `sigma train`'s KEY=VALUE), and
the environment's `SIGMA__...` variables. A key given twice, or a key under one given whole (in either order), is
`invalid_config` naming both as written, exit 2.

Before: `--set threshold=0.1 --set threshold=0.2` ran at 0.2, `--set 'io={align: true}' --set io.align=false` merged
the two, `--set io.align=false --set 'io={align: true}'` dropped the first, all without a word; and of two variables
for one setting (`SIGMA__WORKER__ANNOTATOR`, `SIGMA__worker__annotator`) the environment's order picked one. Runs
the real CLI in-process and the real settings loader.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import sigma.cli
from sigma.errors import ConfigError
from sigma.service.settings import load_serve_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("first", "second", "said"), [
    ("threshold=0.1", "threshold=0.2", "threshold is given twice"),
    ("io={align: true}", "io.align=false", "io.align is under io, given whole"),
    ("io.align=false", "io={align: true}", "io is given whole, and io.align under it"),
    ("options.mask_mode=semantic", "options.mask_mode=footprint", "options.mask_mode is given twice"),
])
def test_two_sets_of_one_place_are_refused_naming_both(capsys, tmp_path, first, second, said):
    code = sigma.cli.main(["annotate", "--example", "-o", str(tmp_path / "out"), "--annotator", "pixel-diff",
                           "--set", first, "--set", second])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("sigma: error [invalid_config]"), (code, err)
    assert f"override {first!r}, then {second!r}: {said}; give each setting once" in err, err
    assert not (tmp_path / "out").exists()


def test_neighbouring_keys_are_no_overlap(capsys, tmp_path):
    """`io.align` and `io.align_min_response` share a prefix, not a place."""
    code = sigma.cli.main(["annotate", "--example", "-o", str(tmp_path / "out"), "--annotator", "pixel-diff",
                           "--set", "io.align=false", "--set", "io.align_min_response=0.2",
                           "--set", "io.limits.max_pixels=1e7"])
    assert code == 0, capsys.readouterr().err


def test_sigma_train_key_values_are_refused_the_same(capsys):
    stage1 = str(REPO / "configs" / "train" / "tiny-stage1.yaml")
    assert sigma.cli.main(["train", stage1, "model={dim: 8}", "model.dim=16"]) == 2
    err = capsys.readouterr().err
    assert "override 'model={dim: 8}', then 'model.dim=16': model.dim is under model, given whole" in err, err


@pytest.mark.parametrize(("env", "said"), [
    ({"SIGMA__WORKER__ANNOTATOR": "pixel-diff", "SIGMA__worker__annotator": "sigma-lite"},
     "'SIGMA__WORKER__ANNOTATOR', then 'SIGMA__worker__annotator': worker.annotator is given twice"),
    ({"SIGMA__WORKER": "{annotator: pixel-diff}", "SIGMA__WORKER__MAX_BATCH_SIZE": "3"},
     "'SIGMA__WORKER', then 'SIGMA__WORKER__MAX_BATCH_SIZE': worker.max_batch_size is under worker, given whole"),
    ({"SIGMA_REDIS_URL": "redis://a:secret@h:1/0", "SIGMA__REDIS__URL": "redis://b:1/0"},
     "'SIGMA_REDIS_URL', then 'SIGMA__REDIS__URL': redis.url is given twice"),
])
def test_two_variables_for_one_place_are_refused_by_name(env, said):
    with pytest.raises(ConfigError) as exc:
        load_serve_config(None, [], env=env)
    assert f"environment variables {said}" in exc.value.message, exc.value.message
    assert "secret" not in exc.value.message          # named by the variables: a value may be a credential


def test_the_command_line_still_overrides_the_environment():
    """Layers are not one layer: `--set` over a variable for the same key is the documented order."""
    cfg = load_serve_config(None, ["worker.max_batch_size=5"], env={"SIGMA__WORKER__MAX_BATCH_SIZE": "3"})
    assert cfg.worker.max_batch_size == 5


def test_a_flag_over_a_variable_of_its_key_survives_a_section_set_whole():
    """`SIGMA__WORKER__MAX_BATCH_SIZE=3`, `--set 'worker={annotator: pixel-diff}'`, `--max-batch-size 5`: the flag's
    key kept the variable's place among the overrides, so the whole `worker` of `--set`, applied after it, replaced
    it: the worker took 8, the default, where flags > `--set` > environment says 5."""
    cfg = load_serve_config(None, ["worker={annotator: pixel-diff}"], env={"SIGMA__WORKER__MAX_BATCH_SIZE": "3"},
                            flags={"worker.max_batch_size": 5})
    assert cfg.worker.max_batch_size == 5
    cfg = load_serve_config(None, ["worker={annotator: pixel-diff}"], env={"SIGMA__WORKER__MAX_BATCH_SIZE": "3"})
    assert cfg.worker.max_batch_size == 8            # the command line's whole section over the variable


def test_many_overrides_are_checked_in_linear_time():
    """Each key is checked against prefixes, not against every key before it: 20000 `--set options.kN=1` (440 KB of
    command line, well inside ARG_MAX) took about a minute compared in pairs; about a second now."""
    import time

    from sigma.config.loader import read_overrides

    start = time.monotonic()
    assert len(read_overrides([f"options.k{i}=1" for i in range(20000)])) == 20000
    assert time.monotonic() - start < 20
