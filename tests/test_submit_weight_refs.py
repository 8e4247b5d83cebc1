"""The files annotator options name besides `options.weights`, checked at a fleet submission without loading them
(`sigma.registry.check_annotator_files` -> `check_weights_reference`): `options.backbone_weights` of feature-diff
and of the sigma models, the grounding checkpoints. Before, a missing path there was queued and every shard
dead-lettered by the workers. Real files and folders in tmp dirs, a real Hugging Face cache layout."""
from __future__ import annotations

from pathlib import Path

import pytest
import transformers

from sigma.errors import SigmaError, WeightsNotFoundError
from sigma.models import build_model, preset_config, save_model
from sigma.models.presets import TINY_DINOV2
from sigma.registry import check_annotator_files


def _dino_folder(folder: Path) -> Path:
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY_DINOV2)).save_pretrained(folder)
    return folder


def _refused(name: str, options: dict, said: str) -> SigmaError:
    with pytest.raises(WeightsNotFoundError) as info:
        check_annotator_files(name, options)
    assert info.value.code == "weights_not_found" and said in info.value.message, info.value.message
    return info.value


@pytest.mark.parametrize("ref", ["/nonexistent/dino", "./typo-dino", "../typo-dino", "~/typo-dino",
                                 "dinov2.safetensors", "models/dinov2-base.pth", "no-such-name"])
def test_feature_diff_backbone_path_that_is_not_there_is_refused(tmp_path, monkeypatch, ref):
    """A path (absolute, ./, ../, ~, a weights suffix) or a bare name that is neither there nor a repo id: the load
    looks nowhere else, so the submit refuses it naming the option."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    error = _refused("feature-diff", {"backbone_weights": ref}, "options.backbone_weights")
    assert f"{ref} does not exist" in error.message, error.message


def test_feature_diff_backbone_folder_must_be_a_save_pretrained_folder(tmp_path):
    """An existing folder without config.json or without weights, a file the loader does not read, a bare
    .safetensors without its architecture beside it: refused; a save_pretrained folder, and a bare file with
    config.json beside it, pass."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "cfg-only").mkdir()
    (tmp_path / "cfg-only" / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "w.safetensors").write_bytes(b"\0" * 8)
    _refused("feature-diff", {"backbone_weights": str(tmp_path / "empty")}, "is a folder without config.json")
    _refused("feature-diff", {"backbone_weights": str(tmp_path / "cfg-only")}, "is a folder without weights")
    _refused("feature-diff", {"backbone_weights": str(tmp_path / "notes.txt")}, "a file the loader does not read")
    _refused("feature-diff", {"backbone_weights": str(tmp_path / "bare" / "w.safetensors")},
             "without its architecture")
    dino = _dino_folder(tmp_path / "dino")
    check_annotator_files("feature-diff", {"backbone_weights": str(dino)})
    (tmp_path / "bare" / "config.json").write_text("{}")
    check_annotator_files("feature-diff", {"backbone_weights": str(tmp_path / "bare" / "w.safetensors")})
    # a random backbone of a given architecture reads no weights: not refused
    check_annotator_files("feature-diff", {"backbone_weights": "/nonexistent", "random_init": True,
                                           "hf_config": TINY_DINOV2})


def test_repo_ids_are_left_to_the_workers_cache_unless_the_hub_client_refuses_them(tmp_path, monkeypatch):
    """A well-formed repo id passes whether or not this machine's Hugging Face cache holds it (a worker's cache is
    its own, or it downloads with allow_download): only a malformed one, which every machine's load refuses, is
    refused. One in a real cache layout passes too."""
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / "models--sigma-test--tiny-dinov2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _dino_folder(repo / "snapshots" / commit)
    check_annotator_files("feature-diff", {"backbone_weights": "sigma-test/tiny-dinov2"})
    check_annotator_files("feature-diff", {"backbone_weights": "facebook/not-cached-here"})
    _refused("feature-diff", {"backbone_weights": "bad--name/x!"}, "is no Hugging Face repo id")


def test_sigma_backbone_weights_checked_only_where_a_load_reads_them(tmp_path):
    """A heads-only saved model (frozen backbone left out) resolves `backbone_weights` at its load: a missing path
    is refused. Beside a file that holds its backbone the option is ignored by the load, so it is not refused; nor
    with sigma-lite's random_init (a compact backbone), while sigma-b's random_init reads it."""
    net = build_model(preset_config("tiny-dinov2"), pretrained=False)
    heads = save_model(net, tmp_path / "heads", include_frozen_backbone=False)
    whole = save_model(net, tmp_path / "whole")
    missing = str(tmp_path / "gone" / "dino")
    _refused("sigma-b", {"weights": str(heads), "backbone_weights": missing}, f"{missing} does not exist")
    check_annotator_files("sigma-b", {"weights": str(whole), "backbone_weights": missing})
    check_annotator_files("sigma-b", {"weights": str(heads), "backbone_weights": str(_dino_folder(tmp_path / "d"))})
    check_annotator_files("sigma-lite", {"random_init": True, "backbone_weights": missing})
    _refused("sigma-b", {"random_init": True, "backbone_weights": missing}, "options.backbone_weights")


def test_grounding_checkpoint_paths_are_checked(tmp_path):
    """gdino-sam2's detector / SAM 2 folders and a native-sam2 .pt file, from the model annotators' and
    grounding-only's `grounding_options`: a missing path refused naming the option; repo ids (the defaults) pass."""
    gone = str(tmp_path / "gone")
    _refused("grounding-only", {"grounding_options": {"detector": {"weights": gone}}},
             "options.grounding_options.detector.weights")
    _refused("sigma-lite", {"grounding": "gdino-sam2", "grounding_options": {"segmenter": {"weights": gone}}},
             "options.grounding_options.segmenter.weights")
    _refused("grounding-only", {"grounding_options": {"segmenter": {"kind": "native-sam2",
                                                                    "weights": gone + ".pt"}}}, "is no file")
    check_annotator_files("grounding-only", {"grounding_options": {"detector": {"box_threshold": 0.3}}})
    check_annotator_files("sigma-lite", {"grounding_options": {"detector": {"weights": gone}}})  # grounding none
