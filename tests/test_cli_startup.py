"""`sigma` commands that run no network never import torch (1.5 s of every command's start-up).

`sigma.annotators` registers the built-ins, among them the torch-backed ones, whose modules import `sigma.models`
for the device policy, presets and configs; the package's `__init__` imported every network, so a pixel-diff run, an
unknown annotator's refusal and `sigma models` each paid for torch. Each command here runs as the program does
(`python -m sigma`, through runpy in a fresh interpreter, the worktree's code on PYTHONPATH), and an exit hook says
whether torch was imported by then.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from servicekit import TESTS, base_env

# the real `python -m sigma ARGS`, then one last stderr line saying whether torch was imported
RUN_SIGMA = r"""
import atexit, runpy, sys
atexit.register(lambda: print(f"torch imported: {'torch' in sys.modules}", file=sys.stderr))
sys.argv = ["sigma", *sys.argv[1:]]
runpy.run_module("sigma", run_name="__main__", alter_sys=True)
"""


def sigma_cli(*args: str, cwd: Path) -> tuple[int, str, str, bool]:
    """(exit status, stdout, stderr without the last line, whether torch was imported)."""
    env = base_env("redis://127.0.0.1:1/0")           # tests/ on PYTHONPATH (the plugins); no Redis is reached
    proc = subprocess.run([sys.executable, "-c", RUN_SIGMA, *args], capture_output=True, text=True, timeout=180,
                          env=env, cwd=str(cwd), check=False)
    *said, last = proc.stderr.rstrip("\n").split("\n")
    assert last.startswith("torch imported: "), proc.stderr[-2000:]
    return proc.returncode, proc.stdout, "\n".join(said), last == "torch imported: True"


@pytest.fixture
def pngs(tmp_path: Path) -> tuple[str, str]:
    original = np.zeros((32, 32, 3), np.uint8)
    edited = original.copy()
    edited[4:12, 4:12] = 255
    Image.fromarray(original).save(tmp_path / "o.png")
    Image.fromarray(edited).save(tmp_path / "e.png")
    return str(tmp_path / "o.png"), str(tmp_path / "e.png")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["annotate", "--help"], ["eval", "--help"],
                                  ["train", "--help"], ["models"]])
def test_help_version_and_the_models_listing_import_no_torch(args, tmp_path):
    code, out, err, torch = sigma_cli(*args, cwd=tmp_path)
    assert code == 0, err
    if args == ["models"]:          # the listing still reports every built-in, torch-backed ones included
        assert "pixel-diff" in out and "sigma-lite" in out and "feature-diff" in out, out
    assert not torch


def test_a_pixel_diff_annotate_imports_no_torch(pngs, tmp_path):
    code, out, err, torch = sigma_cli("annotate", *pngs, "-i", "add a square", "--annotator", "pixel-diff",
                                      "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert code == 0, err
    assert "marked by pixel-diff" in out and (tmp_path / "out" / "mask.png").is_file()
    assert not torch


def test_refusals_import_no_torch_and_keep_their_codes(pngs, tmp_path):
    """An unknown annotator (the registry's did-you-mean, which lists the torch-backed names too) and a config
    refusal for a torch-backed annotator are said before any network is needed."""
    code, _, err, torch = sigma_cli("annotate", *pngs, "--annotator", "sigma-lyte", "-o", str(tmp_path / "a"),
                                    cwd=tmp_path)
    assert code == 2 and err.startswith("sigma: error [unknown_name]: Unknown annotator 'sigma-lyte'. Did you mean "
                                        "'sigma-lite'?"), err
    assert "sigma-b" in err and not torch
    code, _, err, torch = sigma_cli("annotate", *pngs, "--annotator", "sigma-lite", "--set", "options.bogus=1",
                                    "-o", str(tmp_path / "b"), cwd=tmp_path)
    assert code == 2 and err.startswith("sigma: error [invalid_config]:") and "options.bogus" in err, err
    assert not torch


def test_a_batch_run_and_what_reads_it_import_no_torch(pngs, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, (original, edited) in enumerate([pngs, pngs[::-1]]):
        Path(corpus / f"p{i}_original.png").write_bytes(Path(original).read_bytes())
        Path(corpus / f"p{i}_edited.png").write_bytes(Path(edited).read_bytes())
    run = str(tmp_path / "run")
    for args in (["batch", "run", str(corpus), "--out", run, "--annotator", "pixel-diff", "--no-progress"],
                 ["batch", "status", run], ["report", run], ["export", "coco", run, "--out", str(tmp_path / "c.json")]):
        code, _, err, torch = sigma_cli(*args, cwd=tmp_path)
        assert code == 0, (args, err)
        assert not torch, args


def test_a_pixel_diff_eval_imports_no_torch(tmp_path):
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "set", list(synthetic_pairs(3, size=32)))
    code, _, err, torch = sigma_cli("eval", "--data", str(tmp_path / "set"), "--annotator", "pixel-diff",
                                    "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert code == 0 and (tmp_path / "eval" / "metrics.json").is_file(), err
    assert not torch


def test_a_plugins_torch_free_annotator_imports_no_torch(pngs, tmp_path):
    code, out, err, torch = sigma_cli("annotate", *pngs, "--plugin", "service_plugins", "--annotator", "odd-keys",
                                      "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert code == 0 and "marked by odd-keys" in out, err
    assert not torch


def test_the_check_sees_torch_when_a_network_is_named(tmp_path):
    """The exit hook is no constant: naming a network imports torch (the package's names resolve on first use)."""
    code, _, err, torch = sigma_cli("models", "--help", cwd=tmp_path)
    assert code == 0 and not torch, err
    proc = subprocess.run([sys.executable, "-c", "import sys, sigma.models; sigma.models.SigmaNet; "
                           "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=180,
                          env=base_env("redis://127.0.0.1:1/0"), cwd=str(TESTS.parent), check=False)
    assert proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_every_lazy_name_of_sigma_models_resolves():
    import sigma.models

    assert sorted(sigma.models.__all__) == sorted(sigma.models._LAZY)
    for name in sigma.models.__all__:
        assert getattr(sigma.models, name) is not None, name
    assert set(sigma.models.__all__) <= set(dir(sigma.models))
    with pytest.raises(AttributeError):
        sigma.models.no_such_name  # noqa: B018
    from sigma.models import presets  # a submodule still imports through `from sigma.models import`

    assert "sigma-lite" in presets.PRESETS
