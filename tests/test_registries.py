"""Registries are the extension point: config fields that name a grounder, a segmenter, a corpus reader or a
model preset validate against their registry, so a plugin's entry is valid config and a typo says did-you-mean."""
from __future__ import annotations

import json
import os

import pytest
from pydantic import ValidationError

from sigma.batch.config import BatchConfig, InputConfig
from sigma.grounding.config import GroundingConfig, SegmenterConfig
from sigma.grounding.registry import GROUNDERS, SEGMENTERS
from sigma.io.corpora import CORPUS_READERS
from sigma.models.presets import PRESETS, PRETRAINED
from sigma.models.weights import file_sha256


@pytest.mark.parametrize("model, field, value, hint", [
    (GroundingConfig, "backend", "gdino-sam", "gdino-sam2"),
    (SegmenterConfig, "kind", "sam3", "sam2"),
    (InputConfig, "format", "parquett", "parquet"),
])
def test_unknown_names_say_did_you_mean(model, field, value, hint):
    extra = {"path": "x"} if model is InputConfig else {}
    with pytest.raises(ValidationError) as err:
        model(**{field: value, **extra})
    assert f"Did you mean {hint!r}" in str(err.value)


def test_a_plugin_entry_is_valid_config_without_editing_a_literal():
    name = "test-plugin-grounder"
    if name not in GROUNDERS:
        GROUNDERS.register(name, "a plugin's grounder")(lambda config=None, **_: None)
    assert GroundingConfig(backend=name).backend == name
    seg = "test-plugin-segmenter"
    if seg not in SEGMENTERS:
        SEGMENTERS.register(seg, "a plugin's segmenter")(lambda config, **_: None)
    assert SegmenterConfig(kind=seg).kind == seg
    fmt = "test-plugin-format"
    if fmt not in CORPUS_READERS:
        CORPUS_READERS.register(fmt, "a plugin's reader")(object)
    cfg = BatchConfig.model_validate({"input": {"path": "x", "format": fmt}})
    assert cfg.input.format == fmt and InputConfig(path="x").format == "auto"


def test_model_preset_names_are_validated():
    from sigma.annotators.model_annotator import ModelAnnotatorConfig

    assert ModelAnnotatorConfig(model="tiny-lite").model == "tiny-lite"
    with pytest.raises(ValidationError) as err:
        ModelAnnotatorConfig(model="sigma-lit")
    assert "Did you mean 'sigma-lite'" in str(err.value)


def test_pretrained_configs_name_real_presets_and_the_shipped_file():
    from sigma.annotators.model_annotator import WEIGHTS_DIR

    assert set(PRETRAINED) <= set(PRESETS)
    lite = PRETRAINED["sigma-lite"]
    assert lite.input_size == PRESETS["sigma-lite"]["image_size"]
    shipped = WEIGHTS_DIR / lite.file
    assert shipped.is_file() and shipped.with_suffix(".json").is_file()
    assert file_sha256(shipped) == lite.sha256, "sigma/weights changed: update PRETRAINED['sigma-lite'].sha256"
    # the shipped config and the preset agree on the working size cap (the preset is what training builds)
    shipped_cfg = json.loads(shipped.with_suffix(".json").read_text())["config"]
    assert shipped_cfg["image_size"] == PRESETS["sigma-lite"]["image_size"] == lite.input_size


def test_a_swapped_embedded_file_is_refused(tmp_path, monkeypatch):
    from sigma.annotators import model_annotator
    from sigma.errors import SigmaError
    from sigma.registry import create_annotator

    (tmp_path / "sigma-lite.safetensors").write_bytes(b"not the released weights")
    (tmp_path / "sigma-lite.json").write_text("{}")
    monkeypatch.setattr(model_annotator, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(SigmaError) as err:
        create_annotator("sigma-lite")
    assert err.value.code == "weights_mismatch" and "corrupt or the file was replaced" in err.value.message


def test_a_plugin_whose_constructor_raises_is_one_error_line(tmp_path, monkeypatch, capsys):
    """A registered annotator whose constructor raised (a plugin's bug, a model that cannot load) came out of
    `sigma batch run --plugin ...` (and every front end) as a traceback; it is annotator_failed, exit 2."""
    import numpy as np

    from sigma.cli import main
    from sigma.errors import SigmaError
    from sigma.io import write_png
    from sigma.registry import ANNOTATORS, Entry, create_annotator

    def broken(**options):
        raise RuntimeError("boom in the constructor")

    monkeypatch.setitem(ANNOTATORS._entries, "ctor-fail", Entry("ctor-fail", broken, "test only", lambda: "none"))
    with pytest.raises(SigmaError) as err:
        create_annotator("ctor-fail")
    assert err.value.code == "annotator_failed" and "RuntimeError: boom in the constructor" in err.value.message
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_png(np.zeros((8, 8, 3), np.uint8), corpus / "a_original.png")
    write_png(np.full((8, 8, 3), 9, np.uint8), corpus / "a_edited.png")
    capsys.readouterr()
    assert main(["batch", "run", str(corpus), "--out", str(tmp_path / "run"), "--annotator", "ctor-fail",
                 "--no-progress"]) == 2
    err_text = capsys.readouterr().err
    assert "sigma: error [annotator_failed]: annotator 'ctor-fail' could not be built" in err_text
    assert "Traceback" not in err_text


def test_an_annotator_whose_load_torch_refused_memory_is_out_of_memory(monkeypatch):
    """torch's own refusal of an allocation (RuntimeError `DefaultCPUAllocator: can't allocate memory`) while an
    annotator was built (sigma-lite's load-time probe under `prlimit --as` ~890 MB) was `annotator_failed`, the
    annotator's fault, where the CLI's top level and the API say `out_of_memory` for it. Here torch really refuses:
    a tensor larger than any machine's memory."""
    import torch

    from sigma.errors import SigmaError
    from sigma.registry import ANNOTATORS, Entry, create_annotator

    def greedy(**options):
        return torch.empty(2 ** 52, dtype=torch.uint8)

    monkeypatch.setitem(ANNOTATORS._entries, "greedy", Entry("greedy", greedy, "test only", lambda: "none"))
    with pytest.raises(SigmaError) as err:
        create_annotator("greedy")
    assert err.value.code == "out_of_memory", err.value.message
    assert "annotator 'greedy' could not be built: the system gave no more memory to load it (" in err.value.message
    assert "can't allocate memory" in err.value.message


def _batch_run_with_plugin(source: str, tmp_path, monkeypatch, capsys) -> tuple[str, str]:
    """(the plugin module's name, stderr) of `sigma batch run` in this process with a plugin module of `source`,
    asserting it ended 2."""
    import uuid

    from sigma.cli import main

    module = f"plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    capsys.readouterr()
    assert main(["batch", "run", str(corpus), "--out", str(tmp_path / "run"), "--plugin", module,
                 "--no-progress"]) == 2
    return module, capsys.readouterr().err


@pytest.mark.parametrize("source, said", [
    ('raise RuntimeError("boom at import")\n', "failed: RuntimeError: boom at import"),
    ("def f(:\n", "failed: SyntaxError: "),
    ("import sys\nsys.exit(3)\n", "failed: SystemExit: 3"),
    ('from sigma.registry import ANNOTATORS\nANNOTATORS.register("pixel-diff", "again")(lambda **kw: None)\n',
     "failed: ValueError: annotator 'pixel-diff' registered twice"),
])
def test_a_plugin_module_that_fails_on_import_is_one_error_line(tmp_path, monkeypatch, capsys, source, said):
    """Only ImportError was caught: a plugin module raising anything else at import (its own bug, a syntax error,
    a name registered twice) came out of `--plugin` as a traceback (exit 1), and one calling sys.exit() ended the
    command with its status and no word. Each is now invalid_config naming the module and the flag that named it
    (`--plugin:`, as every command says it: `sigma batch run` imports --plugin before its config), exit 2."""
    module, err = _batch_run_with_plugin(source, tmp_path, monkeypatch, capsys)
    assert f"sigma: error [invalid_config]: --plugin: importing '{module}' {said}" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("source, said", [
    ("raise MemoryError\n", "(MemoryError)"),
    ("import errno\nraise OSError(errno.ENOMEM, 'Cannot allocate memory')\n", "Cannot allocate memory"),
    # what a dlopen under a low `ulimit -v` raises, chained as an extension module's import says it
    ("try:\n    import no_such_native_lib_here\nexcept ImportError as exc:\n"
     "    raise ImportError('libx.so: failed to map segment from shared object') from exc\n",
     "(libx.so: failed to map segment from shared object)"),
])
def test_a_plugin_whose_import_is_refused_memory_is_out_of_memory(tmp_path, monkeypatch, capsys, source, said):
    """A `--plugin` module whose import the system gave no memory for was `invalid_config` ("importing 'X' failed:
    MemoryError:", "cannot import 'X' (libx.so: failed to map segment ...)"), telling the user to fix a config that
    was fine: the loader wrapped every error. It is `out_of_memory`, the line of every other memory refusal, on the
    command line, and an OutOfMemoryError (a MemoryError with that code) for the worker and a batch shard."""
    from sigma.errors import SigmaError
    from sigma.registry import import_plugins

    module, err = _batch_run_with_plugin(source, tmp_path, monkeypatch, capsys)
    assert err.startswith(f"sigma: error [out_of_memory]: --plugin: importing '{module}': the system gave no more "
                          "memory"), err
    assert said in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(MemoryError) as raised:
        import_plugins([module], "worker.plugins")
    assert isinstance(raised.value, SigmaError) and raised.value.code == "out_of_memory", raised.value


def test_a_plugin_factory_that_returns_no_annotator_is_refused_when_built(tmp_path, monkeypatch, capsys):
    """A factory without its `return` gave None: a batch run went through every pair, each `annotator_failed:
    AttributeError: 'NoneType' object has no attribute 'predict'`, and exited 0. It is refused before any work."""
    from sigma.cli import main
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl
    from sigma.registry import ANNOTATORS, Entry

    monkeypatch.setitem(ANNOTATORS._entries, "no-return", Entry("no-return", lambda **kw: None, "test only",
                                                                 lambda: "none"))
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))
    capsys.readouterr()
    assert main(["batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--annotator", "no-return",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "sigma: error [annotator_failed]: annotator 'no-return' could not be built: its factory returned a " \
           "NoneType, not an annotator" in err, err


@pytest.mark.parametrize("source, said", [
    ('from sigma.registry import ANNOTATORS\nANNOTATORS.register("pixel-diff", "again")(lambda **kw: None)\n',
     "annotator 'pixel-diff' registered twice"),
    ('from sigma.parse.registry import register_parser\nregister_parser("rules", "again")(lambda **kw: None)\n',
     "parser backend 'rules' registered twice"),
    ('from sigma.grounding.registry import GROUNDERS\nGROUNDERS.register("none", "again")(lambda **kw: None)\n',
     "grounding backend 'none' registered twice"),
])
def test_a_plugin_taking_a_built_in_name_fails_at_its_own_import_in_a_fresh_process(tmp_path, source, said):
    """In a fresh `sigma` process the plugin is imported before the built-ins: it took the name, and the built-in's
    own registration died later as a traceback, exit 1. Each registry now imports its built-ins before a plugin's
    first registration, so the plugin's own import fails: one invalid_config line, exit 2."""
    import subprocess
    import sys

    (tmp_path / "taker.py").write_text(source)
    (tmp_path / "corpus").mkdir()
    proc = subprocess.run([sys.executable, "-m", "sigma", "batch", "run", str(tmp_path / "corpus"), "--out",
                           str(tmp_path / "run"), "--plugin", "taker", "--no-progress"], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"sigma: error [invalid_config]: --plugin: importing 'taker' failed: ValueError: {said}\n"
