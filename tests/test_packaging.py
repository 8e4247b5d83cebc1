"""The installed layout: every package listed, and no top-level `api`/`workers` package in site-packages."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_every_package_is_declared():
    """Every folder of sigma/ that holds files (code or data: weights, example images) is listed."""
    found = sorted(".".join(d.relative_to(ROOT).parts) for d in [ROOT / "sigma", *(ROOT / "sigma").rglob("*")]
                   if d.is_dir() and "__pycache__" not in d.parts and any(f.is_file() for f in d.iterdir()))
    declared = _declared()
    assert set(found) <= set(declared), f"add to pyproject [tool.setuptools] packages: {set(found) - set(declared)}"
    assert "sigma.api" in declared and "sigma.workers" in declared
    assert not any(p.split(".")[0] in ("api", "workers") for p in declared)


def test_front_ends_import_under_the_sigma_namespace():
    import sigma.api.app
    import sigma.workers.worker  # noqa: F401

    assert Path(sys.modules["sigma.api.app"].__file__).parent == ROOT / "api"


@pytest.mark.slow
def test_wheel_installs_no_top_level_api_or_workers(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "setuptools" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    [wheel] = tmp_path.glob("sigma_masks-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "api" not in tops and "workers" not in tops
    names = zipfile.ZipFile(wheel).namelist()
    assert "sigma/api/app.py" in names and "sigma/workers/worker.py" in names
    assert "sigma/weights/sigma-lite.safetensors" in names


API_WITHOUT_TORCH = r"""
import sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
import base64, io, json
import numpy as np
from PIL import Image
from fastapi.testclient import TestClient
from sigma.api.app import create_app
from sigma.service.settings import load_serve_config

cfg = load_serve_config(None, [f"redis.url={sys.argv[1]}", "redis.key_prefix=notorch", "auth.allow_anonymous=true"],
                        env={})
def png(a):
    buf = io.BytesIO(); Image.fromarray(a).save(buf, format="PNG"); return base64.b64encode(buf.getvalue()).decode()
img = np.zeros((32, 32, 3), np.uint8)
with TestClient(create_app(cfg)) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    r = client.post("/v1/jobs", json={"original": png(img), "edited": png(img), "instruction": "add a cat"})
    assert r.status_code == 202, r.text
    r = client.post("/v1/jobs", json={"original": png(img), "edited": "bm90IGFuIGltYWdl"})
    assert r.status_code == 422, r.text
print("torch" in sys.modules and sys.modules["torch"] is not None)
"""


@pytest.mark.redis
def test_the_api_never_imports_torch(redis_server):
    """The API image installs without torch (docker/api.Dockerfile); this keeps that true."""
    proc = subprocess.run([sys.executable, "-c", API_WITHOUT_TORCH, redis_server.url], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"
