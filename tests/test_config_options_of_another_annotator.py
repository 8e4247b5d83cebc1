"""A config file's `options` (and `threshold`) are written for the annotator it names: a command line that runs
another one (`--annotator`, `--set annotator=`, `SIGMA__WORKER__ANNOTATOR`, `sigma worker --annotator`) is refused,
`invalid_config` naming the file's annotator, the one run and the values, unless it sets those values itself.

Before: `annotator: pixel-diff` + `options: {threshold: 0.2}` and `--annotator sigma-lite` ran sigma-lite at a
probability threshold of 0.2 (pixel-diff's threshold is a pixel difference), exit 0; an option sigma-lite has and
pixel-diff lacks was "options.image_size: Extra inputs are not permitted", which did not say why. Runs the real CLI.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import sigma.cli
from sigma.errors import ConfigError
from sigma.service.settings import load_serve_config


def run(capsys, tmp_path: Path, config: str, *args: str) -> tuple[int, str]:
    path = tmp_path / "c.yaml"
    path.write_text(config)
    code = sigma.cli.main(["annotate", "--example", "-o", str(tmp_path / "out"), "--config", str(path), *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("config", "args", "said"), [
    ("annotator: pixel-diff\noptions: {threshold: 0.2}\n", ["--annotator", "sigma-lite"],
     "options.threshold is written for annotator 'pixel-diff', and the command line runs 'sigma-lite'"),
    ("annotator: sigma-lite\noptions: {image_size: 256}\n", ["--set", "annotator=pixel-diff"],
     "options.image_size is written for annotator 'sigma-lite', and the command line runs 'pixel-diff'"),
    ("annotator: pixel-diff\nthreshold: 0.3\n", ["--annotator", "sigma-lite"],
     "threshold is written for annotator 'pixel-diff', and the command line runs 'sigma-lite'"),
])
def test_the_files_options_for_another_annotator_are_refused(capsys, tmp_path, config, args, said):
    code, err = run(capsys, tmp_path, config, *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("sigma: error [invalid_config]"), (code, err)
    assert said in err and "c.yaml: " in err and "Extra inputs" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [
    ["--annotator", "pixel-diff"],                                  # the file's own annotator
    ["--annotator", "sigma-lite", "--set", "options={}"],           # the command line sets the options whole
    ["--annotator", "sigma-lite", "--set", "options.threshold=0.5"],
])
def test_the_same_annotator_or_options_given_here_run(capsys, tmp_path, args):
    code, err = run(capsys, tmp_path, "annotator: pixel-diff\noptions: {threshold: 0.2}\n", *args)
    assert code == 0, err


def test_a_worker_is_refused_the_same_naming_where_its_annotator_came_from(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("worker:\n  annotator: pixel-diff\n  options: {threshold: 0.2}\n")
    with pytest.raises(ConfigError) as exc:
        load_serve_config(path, [], env={"SIGMA__WORKER__ANNOTATOR": "sigma-lite"})
    assert ("worker.options.threshold is written for annotator 'pixel-diff', and SIGMA__WORKER__ANNOTATOR runs "
            "'sigma-lite'") in exc.value.message
    cfg = load_serve_config(path, ["worker.options={}"], env={"SIGMA__WORKER__ANNOTATOR": "sigma-lite"})
    assert cfg.worker.annotator == "sigma-lite" and cfg.worker.options == {}
