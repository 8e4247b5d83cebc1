"""Outputs are keyed by the weights that made them and the package version, not by a file name."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sigma
from sigma.batch import BatchConfig, run_batch
from sigma.cli import main
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl
from sigma.models import build_model, save_model
from sigma.models.weights import file_sha256
from sigma.registry import annotator_identity, create_annotator
from sigma.types import Pair

pytest.importorskip("pyarrow")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save_tiny(folder, seed: int) -> None:
    torch.manual_seed(seed)
    save_model(build_model("tiny-lite"), folder)


@pytest.fixture
def corpus(tmp_path):
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(6, size=40))
    return tmp_path / "set"


def test_results_name_the_weights_digest_and_version(tmp_path):
    _save_tiny(tmp_path / "m", 0)
    ann = create_annotator("sigma-lite", weights=str(tmp_path / "m"), runtime="torch")
    digest = file_sha256(tmp_path / "m" / "model.safetensors")
    assert ann.weights_sha256 == digest and ann.describe()["weights_sha256"] == digest
    assert annotator_identity("sigma-lite", {"weights": str(tmp_path / "m")}) == ann.identity()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    [record] = [a.to_dict() for a in ann.predict([Pair(img, 255 - img)])]
    assert record["weights_sha256"] == digest and record["sigma_version"] == sigma.__version__
    assert create_annotator("pixel-diff").identity()["weights_sha256"] is None


def test_config_hash_changes_with_the_weights_at_the_same_path(tmp_path):
    _save_tiny(tmp_path / "m", 0)
    first = create_annotator("sigma-lite", weights=str(tmp_path / "m"), runtime="torch").config_hash
    _save_tiny(tmp_path / "m", 1)
    assert create_annotator("sigma-lite", weights=str(tmp_path / "m"), runtime="torch").config_hash != first


def test_resume_with_other_weights_exits_2_and_says_why(tmp_path, corpus, capsys):
    _save_tiny(tmp_path / "m", 0)
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": 2}, "annotator": "sigma-lite",
                                      "options": {"weights": str(tmp_path / "m"), "runtime": "torch"}, "workers": 0})
    run_batch(cfg, tmp_path / "run", progress=False, max_shards=1)      # an unfinished run
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["model"]["weights_sha256"] == file_sha256(tmp_path / "m" / "model.safetensors")
    _save_tiny(tmp_path / "m", 1)                                         # the weights change under the same path
    argv = ["batch", "run", str(corpus), "--out", str(tmp_path / "run"), "--annotator", "sigma-lite",
            "--shard-size", "2", "--workers", "0", "--set", f"options.weights={tmp_path / 'm'}",
            "--set", "options.runtime=torch", "--resume", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "another model" in err and "weights_sha256" in err and err.count("\n") == 1
    # the same for a package upgrade with the same weights
    _save_tiny(tmp_path / "m", 0)
    assert main(argv) == 0
    run_batch(cfg, tmp_path / "run2", progress=False, max_shards=1)
    from sigma import version

    old, version.__version__ = version.__version__, "99.0"
    try:
        assert main([*argv[:3], "--out", str(tmp_path / "run2"), *argv[5:]]) == 2
    finally:
        version.__version__ = old
    assert "sigma_version" in capsys.readouterr().err
