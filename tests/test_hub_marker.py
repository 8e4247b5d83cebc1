"""`hf://owner/name`: a Hugging Face hub id and never a local path, in every loader that takes hub ids
(`sigma.models.weights.resolve_hf_reference` and its callers) and in the submit check (`check_weights_reference`).
A bare `owner/name` is tried as a folder of the working directory first, so the service's API refuses it; the marker
is how a caller names a hub model. Real tiny DINOv2 models, saved to disk and laid out as a real offline hub cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from sigma.errors import WeightsNotFoundError
from sigma.models import build_model, preset_config, save_model
from sigma.models.factory import load_model
from sigma.models.presets import TINY_DINOV2
from sigma.models.weights import check_weights_reference, resolve_hf_reference
from sigma.registry import check_annotator_files

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _dino(seed: int) -> transformers.Dinov2Model:
    torch.manual_seed(seed)
    return transformers.Dinov2Model(transformers.Dinov2Config(**TINY_DINOV2))


@pytest.fixture
def cached(tmp_path, monkeypatch) -> transformers.Dinov2Model:
    """A tiny DINOv2 in an offline hub cache as `a/b`, and other weights at `a/b` and `hf:/a/b` (what `Path` makes
    of `hf://a/b`) in the working directory: what a bare id, or the marker read as a path, would load instead."""
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = hub / "models--a--b"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    model = _dino(0)
    model.save_pretrained(repo / "snapshots" / COMMIT)
    cwd = tmp_path / "cwd"
    for local in (cwd / "a" / "b", cwd / "hf:" / "a" / "b"):
        _dino(1).save_pretrained(local)
    monkeypatch.chdir(cwd)
    return model


def _same(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    got = other.state_dict()
    return all(torch.equal(v, got[k]) for k, v in model.state_dict().items())


def test_the_hub_marker_loads_from_the_cache_never_a_folder_of_the_working_directory(cached, tmp_path):
    """`hf://a/b` was read as the relative path `hf:/a/b` and loaded from the working directory; a bare `a/b` loads
    the folder `a/b` there (kept: the CLI's local paths). Now the marker resolves in the hub cache only."""
    resolved = resolve_hf_reference("hf://a/b")
    assert resolved.kind == "hf_cache" and resolved.location.startswith(str(tmp_path / "hf" / "hub")), resolved
    assert resolve_hf_reference("a/b").kind == "local_path"
    cfg = preset_config("tiny-dinov2")
    net = build_model(cfg.model_copy(update={"backbone": cfg.backbone.model_copy(
        update={"weights": "hf://a/b", "hf_config": None})}))
    assert net.backbone.resolved.kind == "hf_cache" and _same(cached, net.backbone.model)


def test_the_hub_marker_not_in_the_cache_is_a_where_i_looked_error_without_a_local_look(cached, tmp_path):
    (tmp_path / "cwd" / "hf:" / "a" / "absent").mkdir()
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_hf_reference("hf://a/absent", allow_download=True, what="DINOv2 backbone")
    message = info.value.message
    assert "no snapshot of a/absent" in message and "HF_HUB_OFFLINE" in message, message
    assert "local path hf:" not in message and "no local path" in message, message


@pytest.mark.parametrize("ref", ["hf://../x", "hf:///etc", "hf://", "hf:/a/b", "hf://a/b@main", "hf://a/b/c"])
def test_a_malformed_hub_marker_is_refused_from_the_text(cached, ref):
    """huggingface_hub's own `validate_repo_id` decides (no revision: the loaders read the default branch)."""
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_hf_reference(ref, what="DINOv2 backbone")
    assert info.value.code == "weights_not_found" and "DINOv2 backbone" in info.value.message, info.value.message
    with pytest.raises(WeightsNotFoundError):
        check_weights_reference(ref, "options.backbone_weights")


def test_submit_check_passes_a_well_formed_hub_marker_without_a_local_look(tmp_path, monkeypatch):
    """The worker's cache is its own: `hf://owner/name` passes whether or not this machine has it, and an empty
    folder `hf:/facebook/dinov2-small` here (which the check read as the path before) is not looked at."""
    from sigma.models.weights import hub_repo_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "hf:" / "facebook" / "dinov2-small").mkdir(parents=True)
    assert hub_repo_id("hf://facebook/dinov2-small") == "facebook/dinov2-small" and hub_repo_id("a/b") is None
    check_annotator_files("feature-diff", {"backbone_weights": "hf://facebook/dinov2-small"})
    check_annotator_files("grounding-only", {"grounding": "gdino-sam2", "grounding_options": {
        "detector": {"weights": "hf://IDEA-Research/grounding-dino-tiny"},
        "segmenter": {"weights": "hf://facebook/sam2.1-hiera-tiny"}}})


def test_a_saved_sigma_model_is_a_local_path_only(tmp_path, monkeypatch):
    """`options.weights` (`load_model`) takes no hub id: `hf://x/y` is weights_not_found saying so, at submit and at
    load, even with a saved model at `hf:/x/y` in the working directory (what the path reading found)."""
    monkeypatch.chdir(tmp_path)
    save_model(build_model(preset_config("tiny-dinov2"), pretrained=False), tmp_path / "hf:" / "x" / "y")
    for act in (lambda: check_annotator_files("sigma-b", {"weights": "hf://x/y"}), lambda: load_model("hf://x/y")):
        with pytest.raises(WeightsNotFoundError) as info:
            act()
        assert info.value.code == "weights_not_found" and "local path" in info.value.message, info.value.message


def test_native_sam2_refuses_the_hub_marker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hf:" / "a").mkdir(parents=True)
    Path(tmp_path / "hf:" / "a" / "b.pt").write_bytes(b"\0")
    with pytest.raises(WeightsNotFoundError):
        check_annotator_files("grounding-only", {"grounding": "gdino-sam2", "grounding_options": {
            "segmenter": {"kind": "native-sam2", "weights": "hf://a/b.pt"}}})


def test_the_llm_parser_reads_the_hub_marker_from_the_cache_only(tmp_path, monkeypatch):
    """The `llm` parser's `model=` takes the same syntax: `hf://a/b` was read as the local folder `hf:/a/b`; now a
    tiny chat LM from the offline hub cache is loaded, not the other one in the working directory."""
    from sigma.parse import get_parser
    from sigma.parse.tiny import tiny_causal_lm

    repo = tmp_path / "hf" / "hub" / "models--a--b"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    cached, _ = tiny_causal_lm(repo / "snapshots" / COMMIT, seed=0)
    tiny_causal_lm(tmp_path / "cwd" / "hf:" / "a" / "b", seed=1)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path / "cwd")
    parser = get_parser("llm", model="hf://a/b", max_new_tokens=4, device="cpu")
    assert _same(cached, parser.model)
