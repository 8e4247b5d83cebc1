"""Every problem of a config file in one message, ordered by field, so a user fixes a config in one go.

Each test writes a real YAML file and runs the real loader, most through the real CLI (a subprocess), and checks the
exit code and the one line on stderr. Before: an annotator's `options` (and a training config's `model`) were
validated only once the rest was taken (a second round of errors); an exponent that is no whole number inside them
was raised alone; a section's checks across fields (`mode="after"`) were skipped without a word while a field of it
was wrong; and a plugin's corpus format read as unknown whenever a check before validation found something.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from pluginkit import FORMAT_PLUGIN, plugin_batch

from sigma.config.loader import load_config
from sigma.errors import ConfigError
from sigma.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CHECKS_SKIPPED = "its checks across fields were not run"     # sigma.config.schema.CHECKS_SKIPPED
BOOL_HINT = "(YAML reads yes/no, on/off and true/false as booleans)"


def sigma_cli(*args: str, cwd: Path, pythonpath: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, this checkout's package first on the path."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sigma", *args], capture_output=True, text=True, timeout=180,
                          cwd=cwd, env=env, check=False)


def refused(proc: subprocess.CompletedProcess, *in_order: str) -> str:
    """Exit 2, one `invalid_config` line without a traceback, holding each of `in_order` in that order."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    assert proc.stderr.startswith("sigma: error [invalid_config]: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    places = [proc.stderr.find(text) for text in in_order]
    assert -1 not in places and places == sorted(places), (in_order, places, proc.stderr)
    return proc.stderr


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    Image.new("RGB", (64, 64)).save(tmp_path / "o.png")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "e.png")
    return str(tmp_path / "o.png"), str(tmp_path / "e.png")


def test_annotator_options_are_validated_with_the_rest_of_the_config(pair, tmp_path):
    """An annotator's `options` were validated only once the rest of the config was taken: a file with errors in
    both said the others first, and the options' on the next run. Now one message, options in their field's place
    (AnnotatorSpec: annotator, options, threshold), then the command's own fields."""
    config = tmp_path / "c.yaml"
    config.write_text("annotator: pixel-diff\nthreshold: 2\nbatch_size: abc\n"
                      "options:\n  mask_mode: bogus\n  no_such_option: 1\n")
    err = refused(sigma_cli("annotate", *pair, "-o", str(tmp_path / "out"), "--config", str(config), cwd=tmp_path),
                  "options.mask_mode: Input should be", "options.no_such_option: Extra inputs",
                  "threshold: Input should be less than or equal to 1", "batch_size: Input should be a valid integer")
    assert err.startswith("sigma: error [invalid_config]: invalid AnnotateConfig: "), err
    assert not (tmp_path / "out").exists()


def test_whole_number_problems_in_options_come_with_their_other_errors(pair, tmp_path):
    """Inside `options` (a `ReadsWholeNumbers` section) `1.5e0` and `1e5000` for an integer were raised alone, on the
    first: a bool beside them, or a second exponent, was said on the next run. Now all at once, in field order; a
    `--set` is said as an override, a value of the file by the file's name."""
    config = tmp_path / "d.yaml"
    config.write_text("annotator: sigma-lite\noptions:\n  image_size: 1.5e0\n  intended_overlap: true\n"
                      "  max_components: 1e5000\n")
    proc = sigma_cli("annotate", *pair, "-o", str(tmp_path / "out"), "--config", str(config),
                     "--set", "options.max_regions_typo=1", cwd=tmp_path)
    err = refused(proc, f"{config}: options.image_size=1.5e0: not a whole number, and options.image_size is an "
                        "integer setting",
                  f"options.intended_overlap: Input should be a valid number, not the boolean True {BOOL_HINT}",
                  f"{config}: options.max_components=1e5000: more than 4300 digits, too large",
                  "options.max_regions_typo: Extra inputs are not permitted")
    assert "unable to parse string" not in err, err        # pydantic's own error for the same values, not said twice


def test_a_training_models_mapping_is_validated_with_the_rest_of_the_config(tmp_path):
    """`model:` (SigmaNetConfig fields) was validated when the run was set up, after the config was taken: `steps:
    abc` first, the model's errors on the next run, and those as pydantic's multi-line dump. Now with the rest."""
    config = tmp_path / "t.yaml"
    config.write_text("steps: abc\nmodel:\n  dim: 1.5e0\n  refine_heads: true\n")
    err = refused(sigma_cli("train", str(config), cwd=tmp_path),
                  f"{config}: model.dim=1.5e0: not a whole number, and model.dim is an integer setting",
                  f"model.refine_heads: Input should be a valid number, not the boolean True {BOOL_HINT}",
                  f"model: {CHECKS_SKIPPED}", "steps: Input should be a valid integer")
    assert "validation error" not in err and not (tmp_path / "runs").exists(), err


def test_a_sections_checks_across_fields_are_said_to_be_skipped(tmp_path):
    """pydantic runs a section's `mode="after"` checks only when every field of it is valid: `crop: true` beside a
    reversed `area_range` said only `crop`, and the fixed file then failed on `area_range`. The checks are not run
    on a stand-in for the bad field (a default would invent errors or hide them); the message says they were not
    run, at the section, after its errors. With the fields fixed, the check speaks."""
    config = tmp_path / "a.yaml"
    config.write_text("data:\n  crop: true\n  area_range: [0.9, 0.1]\n")
    refused(sigma_cli("train", str(config), cwd=tmp_path),
            f"data.crop: Input should be a valid number, not the boolean True {BOOL_HINT}", f"data: {CHECKS_SKIPPED}")
    config.write_text("data:\n  crop: abc\n  area_range: [0.9, 0.1]\n")       # any field error, not a bool only
    skipped = re.escape(CHECKS_SKIPPED)
    with pytest.raises(ConfigError, match=f"data.crop: Input should be a valid integer.*; data: {skipped}"):
        load_config(TrainConfig, config)
    config.write_text("data:\n  crop: 64\n  area_range: [0.9, 0.1]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(TrainConfig, config)
    assert "area_range must be (low, high)" in caught.value.message and CHECKS_SKIPPED not in caught.value.message


def test_a_plugins_format_is_not_unknown_beside_a_problem_found_before_validation(tmp_path):
    """The config's plugins were imported (`before_validate`) only when the checks before validation found nothing:
    with a NUL byte or an exponent that is no whole number elsewhere in the file, the plugin's corpus format read
    as "Unknown corpus format" in the same message, a false error gone once the real ones were fixed. A plugin that
    cannot be imported is said with the checks' problems."""
    config = plugin_batch(tmp_path, {"tagged_format_plugin": FORMAT_PLUGIN},
                          'plugins: [tagged_format_plugin]\ninput:\n  format: tagged-jsonl\n  shard_size: 1.5e0\n'
                          'annotator: pixel-diff\nthreshold: "a\\0b"\n', pairs=2)
    args = ("batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "out"), "--config", str(config))
    err = refused(sigma_cli(*args, cwd=tmp_path, pythonpath=(tmp_path / "mods",)),
                  "threshold: holds a NUL byte", "input.shard_size=1.5e0: not a whole number")
    assert "Unknown corpus format" not in err and not (tmp_path / "out").exists(), err
    config.write_text(config.read_text().replace("[tagged_format_plugin]", "[no_such_all_errors_plugin]"))
    refused(sigma_cli(*args, cwd=tmp_path, pythonpath=(tmp_path / "mods",)),
            "threshold: holds a NUL byte", "input.shard_size=1.5e0: not a whole number",
            "plugins: cannot import 'no_such_all_errors_plugin'")


@pytest.mark.parametrize("options, needles", [
    ('{"a\\0b": 1, max_components: x}', ["'options.a\\x00b': a key holding",
                                         "options.max_components: Input should be a valid integer"]),
    ('{parser: "\\ud800", cpu_threads: 1e400}', ["options.parser: holds a lone UTF-16 surrogate",
                                                "options.cpu_threads: Input should be less than or equal to 256"]),
    ("{footprint: 3, max_components: [1]}", ["options.max_components: Input should be a valid integer",
                                   "options.footprint: Input should be a valid dictionary"]),
    ("[1, 2]", ["options: Input should be a valid dictionary"]),
])
def test_hostile_options_are_one_message(tmp_path, options, needles):
    """NUL bytes, lone surrogates, 1e400 and nested wrong types inside `options`: one invalid_config line naming
    each (a NUL key is not also an unknown option), never a traceback."""
    from sigma.cli.annotate import AnnotateConfig

    config = tmp_path / "h.yaml"
    config.write_text(f"annotator: sigma-lite\nbatch_size: 0\noptions: {options}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(AnnotateConfig, config)
    message = caught.value.message
    assert all(n in message for n in [*needles, "batch_size: Input should be greater than or equal to 1"]), message
    assert "Extra inputs" not in message, message


def test_an_annotators_own_message_names_its_skipped_checks_without_a_root_key():
    """Outside a config (the API's option check, an annotator built from keyword options) the note has no section
    key to stand at: it says `the config's checks ...`, not `<root>: its checks ...`; an exponent that is no whole
    number comes worded as the loader words it, with the other errors."""
    from sigma.registry import validate_annotator_options

    with pytest.raises(ConfigError) as caught:
        validate_annotator_options("sigma-lite", {"image_size": "2.5e0", "max_components": "x"})
    message = caught.value.message
    assert message.startswith("sigma-lite: options.image_size=2.5e0: not a whole number"), message
    assert "max_components: Input should be a valid integer" in message, message
    assert message.endswith("the config's checks across fields were not run: they run once the errors above are "
                            "fixed (pydantic runs them only on a section whose every field is valid)"), message
    assert "<root>" not in message, message


HUGE = "1" * 5000 + ".0"      # a float literal YAML reads as inf: past a float's range


@pytest.mark.parametrize("yaml_text, sets, needles", [
    (f"annotator: feature-diff\noptions:\n  hf_config: {{layer_norm_eps: .nan, sizes: [1, {HUGE}]}}\n", [],
     ["options.hf_config.layer_norm_eps: nan is no finite number", "options.hf_config.sizes[1]: inf is no finite"]),
    ("annotator: feature-diff\n", ["options.hf_config.eps=-.inf", "options.scale=1e400"],
     ["override options.hf_config.eps: -inf is no finite number", "options.scale: Input should be a finite number"]),
    ("annotator: feature-diff\noptions:\n  scale: .nan\n", [], ["options.scale: Input should be a finite number"]),
    ("annotator: sigma-lite\n", ["options.max_components=abc", "options.grounding_options.x=.inf"],
     ["override options.grounding_options.x: inf is no finite number", "options.max_components: Input should be a "
      "valid integer", "its checks across fields were not run"]),
    ("annotator: sigma-lite\n", ["options.grounding_options.detector.box_threshold=.inf"],
     ["options.grounding_options.detector.box_threshold: Input should be a finite number in [0, 1], got inf"]),
])
def test_options_that_are_no_finite_number_are_one_invalid_config_line(pair, tmp_path, yaml_text, sets, needles):
    """`.nan`, `-.inf` and a 5000-digit float literal (Python reads it as inf) in a free-form option (feature-diff's
    `hf_config`, handed to the model's config as they are) were taken, and `scale: .nan` / `--set options.scale=1e400`
    went through a field bounded below only (`gt=0`: NaN said "greater than 0", inf was taken). A grounding option's
    error was placed without `grounding_options` (`options.detector.box_threshold`, a key no one set), and beside
    another option's error the note that the options' checks across fields were not run hid a free option's inf.
    Now each is named at its place in one invalid_config line, exit 2, before anything is loaded."""
    config = tmp_path / "f.yaml"
    config.write_text(yaml_text)
    sets_args = [arg for item in sets for arg in ("--set", item)]
    message = refused(sigma_cli("annotate", *pair, "--config", str(config), *sets_args, "-o", str(tmp_path / "out"),
                                cwd=tmp_path), *needles)
    assert "Extra inputs" not in message and not (tmp_path / "out").exists(), message
