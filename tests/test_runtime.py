"""What runs the network (sigma.runtime): torch NCHW, torch channels-last and ONNX Runtime give the same
masks; the ONNX graph is exported once, verified against torch, cached, and rebuilt when damaged or stale;
the choice is a pure function (CUDA stays torch); a missing onnxruntime is a one-line error naming the extra.

Exports are the slow part (tens of seconds each on 2 shared cores): the shipped sigma-lite is exported once
per session (into the session cache of conftest.py) and tiny-lite once per module, plus the two rebuilds
the cache tests are about.
"""
from __future__ import annotations

import copy
import errno
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from killers import at_first_temp_rename

from sigma.annotators.model_annotator import embedded_status
from sigma.digest import sha256_file
from sigma.errors import ConfigError
from sigma.models import build_model
from sigma.runtime import MissingRuntimeError, RuntimeOptions, build_runner, choose_runtime
from sigma.runtime.cache import entry_is_valid
from sigma.types import Pair

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "sigma" / "assets" / "examples"
AGREEMENT = 0.9999

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def onnx_stack():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from sigma.runtime import ort_graph

    return ort_graph


# ------------------------------------------------------------------------------------------ the decision
@pytest.mark.parametrize("requested, device, installed, trained, expect", [
    ("auto", "cpu", True, True, "onnxruntime"),
    ("auto", "cpu", False, True, "torch"),          # not installed: torch, no error
    ("auto", "cpu", True, False, "torch"),          # random_init heads: not worth an export
    ("auto", "cuda", True, True, "torch"),          # the GPU path stays torch
    ("torch", "cpu", True, True, "torch"),
    ("onnxruntime", "cpu", True, False, "onnxruntime"),
])
def test_choose_runtime(requested, device, installed, trained, expect):
    assert choose_runtime(requested, device, ort_installed=installed, trained=trained).runtime == expect


def test_choose_runtime_refusals_name_the_fix():
    with pytest.raises(MissingRuntimeError, match=r"pip install 'sigma-masks\[onnx\]'") as err:
        choose_runtime("onnxruntime", "cpu", ort_installed=False, trained=True)
    assert err.value.code == "missing_dependency" and "\n" not in err.value.message
    with pytest.raises(ConfigError, match="CPU only"):
        choose_runtime("onnxruntime", "cuda", ort_installed=True, trained=True)


# --------------------------------------------------------------------- same masks with the shipped weights
def _example_pair() -> Pair:
    from sigma.io import load_pair

    return load_pair(EXAMPLES / "sigma_example_original.jpg", EXAMPLES / "sigma_example_edited.jpg",
                     "replace the space shuttle model with a cup of coffee", pair_id="example")


def _synthetic_pairs() -> list[Pair]:
    """8 synthetic splices of real photo content at 8 aspect ratios (portrait, landscape, square, strips)."""
    from sigma.data.synth import edits as E
    from sigma.data.synth import masks as M

    base = _example_pair()
    photo, donor = base.original, base.edited[::-1, ::-1].copy()
    out = []
    sizes = [(160, 320), (320, 160), (240, 240), (200, 300), (300, 200), (128, 384), (384, 128), (250, 330)]
    for i, (h, w) in enumerate(sizes):
        rng = np.random.default_rng(i)
        img = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        don = cv2.resize(donor, (w, h), interpolation=cv2.INTER_AREA)
        mask, _ = M.random_mask(rng, h, w, {"blob": 1.0, "ellipse": 1.0, "polygon": 1.0}, (0.03, 0.3))
        edited = E.apply_splice(img, don, mask, E.sample_splice(rng, h, w))
        out.append(Pair(img, edited, "add a cup" if i % 2 else None, f"synth{i}_{h}x{w}"))
    return out


@pytest.fixture(scope="module")
def lite_annotators(onnx_stack):
    if not embedded_status("sigma-lite"):
        pytest.skip("this install has no embedded sigma-lite weights")
    from sigma.registry import create_annotator

    ort_ann = create_annotator("sigma-lite", runtime="onnxruntime")   # exports once into the session cache
    nchw = create_annotator("sigma-lite", runtime="torch", channels_last=False)
    nhwc = create_annotator("sigma-lite", runtime="torch", channels_last=True)
    return {"onnxruntime": ort_ann, "torch": nchw, "torch-cl": nhwc}


def _agreement(a, b) -> float:
    return float((a.mask == b.mask).mean())


def test_channels_last_option_is_what_the_torch_path_runs(lite_annotators):
    """`channels_last=False` keeps NCHW weights (the runner alone decides the layout)."""
    import torch

    def conv_layouts(ann) -> set[bool]:
        return {m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
                for m in ann.model.modules()    # layouts differ only with > 1 input channel and a k x k kernel
                if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[-1] > 1}

    assert conv_layouts(lite_annotators["torch"]) == {False}
    assert conv_layouts(lite_annotators["torch-cl"]) == {True}


@pytest.mark.parametrize("which", ["example", "synthetic"])
def test_runtimes_give_the_same_masks(lite_annotators, which):
    pairs = [_example_pair()] if which == "example" else _synthetic_pairs()
    ref = lite_annotators["torch"].predict(pairs)
    assert len({tuple(p.size) for p in pairs}) == len(pairs)           # every pair its own working size
    for name in ("onnxruntime", "torch-cl"):
        got = lite_annotators[name].predict(pairs)
        for r, g in zip(ref, got, strict=True):
            assert _agreement(r, g) >= AGREEMENT, (name, r.pair_id, _agreement(r, g))
            assert np.abs(r.prob - g.prob).max() < 1e-3, (name, r.pair_id)
    assert any(r.mask.any() for r in ref), "a test where every mask is empty proves nothing"
    assert lite_annotators["onnxruntime"].runner.name == "onnxruntime"
    assert lite_annotators["torch"].runner.name == "torch"


def test_auto_is_onnxruntime_on_the_cpu_and_reuses_the_graph(lite_annotators):
    from sigma.registry import create_annotator

    ann = create_annotator("sigma-lite")                    # the default: runtime=auto
    info = ann.describe()["runtime"]
    assert info["runtime"] == "onnxruntime" and info["cached"] is True, info
    assert info["max_abs_diff"] <= 1e-4
    assert Path(info["graph"]).parent == Path(os.environ["SIGMA_CACHE_DIR"]) / "onnx"


# ------------------------------------------------------------------------------- the cache, on tiny-lite
def _tiny(seed: int):
    torch.manual_seed(seed)
    return build_model("tiny-lite").eval()


@pytest.fixture(scope="module")
def tiny(onnx_stack, tmp_path_factory):
    model = _tiny(3)
    root = tmp_path_factory.mktemp("graphs")
    session, graph = onnx_stack.ensure_graph(model, "tiny-lite", None, 1, root=root)
    return model, root, session, graph


def _logits(model, x):
    with torch.inference_mode():
        return model(*x[:2], prior=x[2], edit_type=x[3]).logits.numpy()


def _inputs(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g),
            torch.rand(b, 1, h, w, generator=g), torch.randint(0, 7, (b,), generator=g))


def test_graph_is_verified_and_dynamic(tiny, onnx_stack):
    model, root, session, graph = tiny
    assert graph.built and graph.manifest["max_abs_diff"] <= 1e-4
    assert graph.manifest["sha256"] == sha256_file(graph.path)
    assert graph.manifest["weights_sha256"] == onnx_stack.weights_digest(model)
    for b, h, w in [(1, 64, 96), (3, 96, 32), (2, 160, 128)]:         # shapes it was not traced at
        x = _inputs(b, h, w)
        got = onnx_stack.run_session(session, *(t.numpy() for t in x))
        assert np.abs(got - _logits(model, x)).max() <= 1e-4
    _again, cached = onnx_stack.ensure_graph(model, "tiny-lite", None, 1, root=root)
    assert not cached.built and cached.path == graph.path


def test_manifest_checks(tmp_path):
    f = tmp_path / "g.onnx"
    f.write_bytes(b"0123456789")
    good = {"key": "k", "bytes": 10, "sha256": sha256_file(f)}
    assert entry_is_valid(f, good, "k") is None
    assert "no manifest" in entry_is_valid(f, None, "k")
    assert "stale" in entry_is_valid(f, good, "other")
    assert "truncated" in entry_is_valid(f, {**good, "bytes": 11}, "k")
    f.write_bytes(b"0123456780")
    assert "corrupt" in entry_is_valid(f, good, "k")


def test_runner_sends_grounded_batches_to_torch(tiny, monkeypatch):
    model, root, _, _ = tiny
    monkeypatch.setenv("SIGMA_CACHE_DIR", str(root))
    runner = build_runner(model, RuntimeOptions("onnxruntime", channels_last=False), device=torch.device("cpu"),
                          use_bf16=False, trained=True, label="tiny-lite")
    assert runner.name == "onnxruntime" and runner.describe()["cached"] is True
    x = _inputs(2, 64, 96, seed=5)
    plain = runner(*x).numpy()
    assert np.abs(plain - _logits(model, x)).max() <= 1e-4
    regions = [[{"box": [0.1, 0.1, 0.5, 0.6], "score": 0.9, "image": "original"}], []]
    grounded = runner(*x, regions=regions).numpy()
    with torch.inference_mode():
        ref = model(*x[:2], prior=x[2], edit_type=x[3], regions=regions).logits.numpy()
    np.testing.assert_allclose(grounded, ref, atol=1e-6)
    assert np.abs(grounded - plain).max() > 1e-6, "the region tokens must reach the output"


@pytest.fixture(scope="module")
def micro(onnx_stack, tmp_path_factory):
    """The smallest SigmaNet that exports, at a fixed 64x64 working size (a static graph exports ~4x faster
    than tiny-lite's dynamic one): for the tests that must rebuild."""
    from sigma.models import preset_config

    cfg = preset_config("tiny-lite", keep_aspect=False, dim=8, refine_blocks=0, refine_heads=1,
                        skip_dims=[4, 4, 4], backbone={"kind": "compact", "widths": [4, 4, 8, 8],
                                                       "depths": [0, 0, 0, 0], "expansion": 1})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    root = tmp_path_factory.mktemp("micro-graphs")
    session, graph = onnx_stack.ensure_graph(model, "micro", (64, 64), 1, root=root)
    return model, root, session, graph


def test_truncated_graph_is_rebuilt(micro, onnx_stack, caplog):
    model, root, _, graph = micro
    data = graph.path.read_bytes()
    graph.path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="sigma.runtime"):
        session, rebuilt = onnx_stack.ensure_graph(model, "micro", (64, 64), 1, root=root)
    assert rebuilt.built and "unusable" in caplog.text and "truncated" in caplog.text
    assert entry_is_valid(rebuilt.path, json.loads(rebuilt.path.with_suffix(".json").read_text()),
                          rebuilt.manifest["key"]) is None
    x = _inputs(1, 64, 64)
    assert np.abs(onnx_stack.run_session(session, *(t.numpy() for t in x)) - _logits(model, x)).max() <= 1e-4


def test_a_rebuild_sweeps_what_killed_builders_of_its_entry_left(micro, onnx_stack):
    """A `sigma batch run` killed while it exported sigma-lite's graph (SIGKILL, the OOM killer) left
    `.NAME.onnx.PID.RANDOM.tmp` in the cache folder, up to the graph's size, and nothing ever swept that folder:
    one such file per kill, for good. The next builder of the entry (under its lock) now removes those of dead
    writers; a live process's file, and another entry's, stay."""
    model, root, _, graph = micro
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    manifest = graph.path.with_suffix(".json")
    killed = [graph.path.with_name(f".{graph.path.name}.{dead_pid}.0a1b2c3d.tmp"),
              manifest.with_name(f".{manifest.name}.{dead_pid}.0a1b2c3e.tmp")]
    kept = [graph.path.with_name(f".{graph.path.name}.{os.getpid()}.0a1b2c3f.tmp"),
            graph.path.with_name(f".micro-other.onnx.{dead_pid}.0a1b2c40.tmp")]
    for path in killed + kept:
        path.write_bytes(b"half a graph")
    data = graph.path.read_bytes()
    graph.path.write_bytes(data[: len(data) // 2])         # the entry needs building again
    _session, rebuilt = onnx_stack.ensure_graph(model, "micro", (64, 64), 1, root=root)
    assert rebuilt.built
    assert not any(path.exists() for path in killed)
    assert all(path.exists() for path in kept)
    for path in kept:
        path.unlink()


def test_new_weights_build_a_new_entry_once_with_two_concurrent_builders(micro, onnx_stack, monkeypatch):
    model, root, _, graph = micro
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.decoder.out.bias.add_(0.05)
    exports = []
    real_export = onnx_stack.export_graph
    monkeypatch.setattr(onnx_stack, "export_graph", lambda *a, **k: (exports.append(1), real_export(*a, **k)))
    results, errors = [], []

    def build():
        try:
            results.append(onnx_stack.ensure_graph(changed, "micro", (64, 64), 1, root=root))
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and len(results) == 2
    assert len(exports) == 1, "the second builder must wait for the first and load its graph"
    assert sorted(r[1].built for r in results) == [False, True]
    new_path = results[0][1].path
    assert new_path != graph.path and graph.path.exists(), "new weights, new key; the old entry stays"
    x = _inputs(1, 64, 64)
    for session, _ in results:
        assert np.abs(onnx_stack.run_session(session, *(t.numpy() for t in x)) - _logits(changed, x)).max() <= 1e-4
    assert not list(root.glob("onnx/*.tmp")), "no temporary files left behind"


def test_a_consistent_entry_that_disagrees_with_torch_is_not_trusted(micro, onnx_stack, caplog):
    """A graph whose manifest matches it but whose numbers are not this model's (stale code, a swapped
    file with its manifest rewritten): the load-time probe refuses it."""
    model, root, _, graph = micro
    others = [p for p in (root / "onnx").glob("micro-*.onnx") if p != graph.path]
    assert others, "the concurrency test above leaves a graph of other weights here"
    manifest_path = graph.path.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    graph.path.write_bytes(others[0].read_bytes())
    manifest_path.write_text(json.dumps({**manifest, "sha256": sha256_file(graph.path),
                                         "bytes": graph.path.stat().st_size}))
    shapes = onnx_stack.shape_mode(model, (64, 64))
    with caplog.at_level(logging.WARNING, logger="sigma.runtime"):
        assert onnx_stack._load_valid(model, shapes, graph.path, manifest_path, manifest["key"], 1) is None
    assert "differs from torch" in caplog.text


def test_a_graph_that_disagrees_with_torch_falls_back_with_one_warning(tiny, onnx_stack, monkeypatch, tmp_path):
    _model, _, _, graph = tiny
    other = _tiny(11)                       # different weights, same architecture
    good_graph = graph.path.read_bytes()
    # an "export" that yields a valid graph of the wrong weights: verification must catch it
    monkeypatch.setattr(onnx_stack, "export_graph", lambda m, s, path: Path(path).write_bytes(good_graph))
    monkeypatch.setenv("SIGMA_CACHE_DIR", str(tmp_path))
    opts = RuntimeOptions("auto", channels_last=False)
    with pytest.warns(RuntimeWarning) as caught:
        runner = build_runner(other, opts, device=torch.device("cpu"), use_bf16=False, trained=True,
                              label="tiny-lite")
    assert len([w for w in caught if "runs on torch" in str(w.message)]) == 1
    assert runner.name == "torch" and "differs from torch" in runner.describe()["reason"]
    assert not list(tmp_path.glob("onnx/*.onnx")), "a graph that failed verification is never cached"
    assert list(tmp_path.glob("onnx/*.failed.json"))
    # the next process does not export again: it reads the recorded failure
    monkeypatch.setattr(onnx_stack, "export_graph", lambda *a, **k: pytest.fail("exported again"))
    with pytest.warns(RuntimeWarning, match="delete it to retry"):
        again = build_runner(other, opts, device=torch.device("cpu"), use_bf16=False, trained=True,
                             label="tiny-lite")
    assert again.name == "torch"


def test_an_unusable_cache_folder_means_torch_with_one_warning(tiny, onnx_stack, monkeypatch, tmp_path):
    model = tiny[0]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SIGMA_CACHE_DIR", str(not_a_dir))
    monkeypatch.setattr(onnx_stack, "export_graph", lambda *a, **k: pytest.fail("no export without a cache"))
    with pytest.warns(RuntimeWarning, match="SIGMA_CACHE_DIR") as caught:
        runner = build_runner(copy.deepcopy(model), RuntimeOptions("auto"), device=torch.device("cpu"),
                              use_bf16=False, trained=True, label="tiny-lite")
    assert len(caught) == 1 and runner.name == "torch" and runner.channels_last


def test_a_graph_the_disk_refused_is_not_recorded_as_a_model_that_does_not_export(micro, onnx_stack, tmp_path):
    """A cache on a full disk (or under a quota, `ulimit -f`): the graph's write failed with ENOSPC / EFBIG, and that
    OSError was recorded in `.failed.json` as "micro does not export to ONNX": every later process, space long back,
    read the marker and ran torch, twice as slow, until someone deleted it. Now nothing is recorded (the caller says
    the cache is not usable) and the next build, with room, exports. RLIMIT_FSIZE is the refusal here: real, and
    needs no root; the marker (~200 bytes) fits under it, the graph does not."""
    import resource

    model = copy.deepcopy(micro[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as info:
            onnx_stack.ensure_graph(model, "micro", (64, 64), 1, root=tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert info.value.errno == errno.EFBIG
    assert sorted(p.suffix for p in (tmp_path / "onnx").iterdir()) == [".lock"], "no marker, no partial graph"
    _session, graph = onnx_stack.ensure_graph(model, "micro", (64, 64), 1, root=tmp_path)
    assert graph.built


def test_prune_keeps_the_newest_graphs_of_a_label(tmp_path, onnx_stack):
    for i in range(6):
        for suffix in (".onnx", ".json"):
            p = tmp_path / f"tiny-lite-{i:024x}{suffix}"
            p.write_text("x")
            os.utime(p, (1000 + i, 1000 + i))
    (tmp_path / f"tiny-lite-x-{0:024x}.onnx").write_text("another label")
    removed = onnx_stack.prune(tmp_path, "tiny-lite", keep=4)
    assert sorted(p.name for p in removed) == [f"tiny-lite-{i:024x}.onnx" for i in (0, 1)]
    assert len(list(tmp_path.glob("tiny-lite-*.json"))) == 4
    assert (tmp_path / f"tiny-lite-x-{0:024x}.onnx").exists()


# ------------------------------------------------------------------------- without the onnxruntime package
def _cli_without_onnxruntime(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    """`sigma ...` in a fresh interpreter where `import onnxruntime` fails (sys.modules block)."""
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from sigma.cli import main\n"
            f"sys.exit(main({list(args)!r}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp, check=False)


def test_runtime_onnxruntime_without_the_package_is_one_line_naming_the_extra(tmp_path):
    if not embedded_status("sigma-lite"):
        pytest.skip("this install has no embedded sigma-lite weights")
    proc = _cli_without_onnxruntime("annotate", "--example", "-o", str(tmp_path / "o"),
                                    "--set", "options.runtime=onnxruntime", tmp=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sigma: error [missing_dependency]:"), proc.stderr
    assert "pip install 'sigma-masks[onnx]'" in lines[0]
    # auto without the package: torch, and the job still gets done
    proc = _cli_without_onnxruntime("annotate", "--example", "-o", str(tmp_path / "auto"), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "auto" / "result.json").read_text())
    runtime = record["config"]["annotator_config"]["runtime"]
    assert runtime["runtime"] == "torch" and "not installed" in runtime["reason"]


def test_models_prepare_that_builds_no_graph_fails_in_one_line(tmp_path):
    """`sigma models --prepare` whose cache is not usable (read-only, full, a file in its place) printed `ready ... runs
    on torch (fallback: ...)` above the RuntimeWarning and exited 0: a `sigma models --prepare && ...` (an image
    build) went on with no graph. Now `graph_unavailable` in one line, exit 2."""
    if not embedded_status("sigma-lite"):
        pytest.skip("this install has no embedded sigma-lite weights")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("a file where the cache folder should be")
    proc = subprocess.run([sys.executable, "-m", "sigma", "models", "--prepare"], capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "SIGMA_CACHE_DIR": str(not_a_dir)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sigma: error [graph_unavailable]: sigma-lite:"), proc.stderr
    assert "SIGMA_CACHE_DIR" in lines[0] and proc.stdout == ""
    proc = subprocess.run([sys.executable, "-m", "sigma", "models", "--prepare", "pixel-diff"], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, "SIGMA_CACHE_DIR": str(not_a_dir)})
    assert proc.returncode == 0 and "ready" in proc.stdout, proc.stderr     # nothing to build: nothing failed


def test_models_prepare_of_an_empty_name_is_refused_not_a_listing():
    """`sigma models --prepare "$MODEL"` with the variable unset listed the zoo and exited 0 (an empty name read as no
    `--prepare`): an image build went on with no graph. Now the registry's `unknown_name`, exit 2, nothing listed."""
    proc = subprocess.run([sys.executable, "-m", "sigma", "models", "--prepare", ""], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.startswith("sigma: error [unknown_name]: Unknown annotator ''"), proc.stderr


def test_a_handful_of_pairs_never_waits_for_an_export(tmp_path):
    """`sigma annotate` on a few pairs runs on a cached graph or on torch: the README's first command must not
    spend a minute exporting on a fresh machine (`sigma models --prepare` builds the graph on purpose)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "SIGMA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "sigma", "annotate", "--example", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    runtime = json.loads((tmp_path / "out" / "result.json").read_text())["config"]["annotator_config"]["runtime"]
    assert runtime["runtime"] == "torch" and "no ONNX graph cached" in runtime["reason"]
    assert not list((tmp_path / "cache").rglob("*.onnx")), "a one-pair annotate must not export"


# A real cache writer SIGKILLed at its rename (an audit hook on `os.rename`, what os.replace raises): its temporary
# file written and synced, never renamed into place.
_KILLED_CACHE_WRITER = at_first_temp_rename() + """from sigma.runtime.cache import temp_path_beside
from sigma.tempfiles import replace_atomically
print(temp_path_beside(Path(sys.argv[1]).with_suffix(".onnx")).name, flush=True)
replace_atomically(Path(sys.argv[1]), b'{"key": "half"}', durable=True)
"""


def test_a_killed_cache_writer_leaves_a_temporary_name_the_sweeps_know(tmp_path):
    """The artefact cache wrote through its own `mkstemp` twin of replace_atomically: a builder killed between
    the write and the rename left `NAME.XXXXXXXX.tmp`, a form no sweep recognises, so it stayed for good. The
    manifest writer (`replace_atomically`) and the graph's temporary name (`temp_path_beside`) now use the shared
    `.NAME.PID.RANDOM.tmp`, which `sweep_stale_temps` removes once the writer is dead."""
    import signal

    from sigma.tempfiles import replace_atomically, sweep_stale_temps

    manifest = tmp_path / "cache" / "tiny-lite-0123.json"
    proc = subprocess.run([sys.executable, "-c", _KILLED_CACHE_WRITER, str(manifest)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    graph_tmp, manifest_tmp = proc.stdout.split()
    assert graph_tmp.startswith(".tiny-lite-0123.onnx.") and manifest_tmp.startswith(".tiny-lite-0123.json.")
    assert json.loads((manifest.parent / manifest_tmp).read_text()) == {"key": "half"} and not manifest.exists()
    removed = sweep_stale_temps(manifest.parent)
    assert sorted(p.name for p in removed) == sorted([graph_tmp, manifest_tmp])
    assert list(manifest.parent.iterdir()) == []
    replace_atomically(manifest, b"{}", durable=True)      # unchanged otherwise: the whole file, nothing beside it
    assert manifest.read_bytes() == b"{}" and os.listdir(manifest.parent) == [manifest.name]


def test_a_manifest_giving_its_size_as_true_is_not_a_size(tmp_path):
    """A manifest's `"bytes": true` (a bool is an int to Python: 1) matched a one-byte file: a size we never wrote
    was taken as one. Now the entry is rebuilt, as for any size that does not match."""
    f = tmp_path / "g.onnx"
    f.write_bytes(b"0")
    manifest = {"key": "k", "bytes": 1, "sha256": sha256_file(f)}
    assert entry_is_valid(f, manifest, "k") is None
    assert "truncated" in entry_is_valid(f, {**manifest, "bytes": True}, "k")
