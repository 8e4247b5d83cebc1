"""`--backend ray` on a real Ray cluster of two nodes on this machine (`ray.cluster_utils.Cluster`: a head and a
second node, one CPU each, small object stores), shared by every test here:

- shard manifests and status files byte-identical (sha256) to the local backend's, bad pairs counted;
- an actor killed mid-shard, and the second node removed mid-shard: the shard is retried elsewhere, same bytes;
- a driver SIGKILLed mid-run, resumed by the local backend; a local run resumed on Ray (`--ray-address auto`);
- RAY_ADDRESS, an unreachable address (one line, exit 2, naming it), a port that is not Ray, a broken annotator.

With SIGMA_CI=1 (set by .ci/run) a missing Ray fails this module instead of skipping it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:
    if os.environ.get("SIGMA_CI") == "1":
        raise
    pytest.skip("Ray is optional: pip install 'sigma-masks[ray]'", allow_module_level=True)

from sigma.batch import BatchConfig, run_batch
from sigma.batch.ray_backend import NAMESPACE, probe_grpc
from sigma.errors import ConfigError
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
STORE = 80 << 20          # bytes of object store per node: shard descriptors only, and CI has 24 GiB


@pytest.fixture(scope="module")
def cluster():
    """Head + one worker node. PYTHONPATH is set before the nodes start, so their workers import this
    checkout's `sigma` and the tests' `service_plugins` (slow-diff)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), *([old] if old else [])])
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE,
                                                      "include_dashboard": False})
    c.worker = c.add_node(num_cpus=1, object_store_memory=STORE)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    yield c
    ray.shutdown()
    c.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def cfg_for(path: Path, **kw) -> BatchConfig:
    base = {"input": {"path": str(path), "shard_size": 3}, "annotator": "pixel-diff", "workers": 0}
    return BatchConfig.model_validate({**base, **kw})


SLOW = {"annotator": "slow-diff", "options": {"delay_ms": 250}, "batch_size": 1, "plugins": ["service_plugins"]}


def digests(out: Path) -> dict[str, str]:
    """sha256 of every shard manifest and status file of a run."""
    files = sorted((out / "shards").glob("*.parquet")) + sorted((out / "status").glob("*.json"))
    return {f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """14 good pairs and 3 bad ones in 6 shards, and the local backend's run of it."""
    root = tmp_path_factory.mktemp("messy")
    write_pairs_jsonl(root / "set", synthetic_pairs(14, size=48))
    (root / "set" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    good = {"original": "p000000_original.png", "instruction": "x"}
    with open(root / "set" / "pairs.jsonl", "a") as handle:
        handle.write(json.dumps({**good, "id": "missing", "edited": "nope.png"}) + "\n")
        handle.write(json.dumps({**good, "id": "corrupt", "edited": "corrupt.png"}) + "\n")
        handle.write("{not json\n")
    local = run_batch(cfg_for(root / "set"), root / "local", progress=False)
    assert local.shards == 6 and local.errors == 3
    return root


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """4 shards of 3 pairs at 250 ms a pair (slow-diff), so a test can act while a shard is in progress."""
    root = tmp_path_factory.mktemp("slow")
    write_pairs_jsonl(root / "set", synthetic_pairs(12, size=40))
    import service_plugins  # noqa: F401 - registers slow-diff here too, for the local reference run

    run_batch(cfg_for(root / "set", **SLOW), root / "local", progress=False)
    return root


def run_in_thread(cfg: BatchConfig, out: Path, **kw):
    box: dict = {}

    def target():
        try:
            box["summary"] = run_batch(cfg, out, progress=False, **kw)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def busy_actor(node_prefix: str | None = None, timeout: float = 90.0):
    """A shard actor of ours that is part-way through a shard (at least one pair done), optionally on a node."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] != NAMESPACE:
                continue
            try:
                handle = ray.get_actor(entry["name"], namespace=NAMESPACE)
                info = ray.get(handle.progress.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - starting, or gone
                continue
            on_node = node_prefix is None or f"on node {node_prefix}" in info["worker"]
            if info["shard"] and info["pairs"] >= 1 and on_node:
                return handle, info
        time.sleep(0.05)
    raise AssertionError("no actor was seen part-way through a shard")


def finish(thread: threading.Thread, box: dict, timeout: float = 120.0):
    thread.join(timeout)
    assert not thread.is_alive(), "the Ray run did not finish"
    if "error" in box:
        raise box["error"]
    return box["summary"]


def sigma_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sigma", *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, check=False)


# --- the tests ------------------------------------------------------------------------------------
def test_same_bytes_as_local_and_errors_counted(cluster, messy):
    summary = run_batch(cfg_for(messy / "set", backend="ray"), messy / "ray", progress=False)
    assert summary.done_now == 6 and summary.failed_now == 0 and not summary.retried
    assert summary.errors == 3 and summary.pairs == 17      # bad pairs counted, not a hard-coded zero
    assert summary.status["error_codes"] == {"bad_record": 1, "file_not_found": 1, "image_unreadable": 1}
    assert summary.backend["nodes"] == 2 and summary.backend["actors"] == 2
    assert sum(summary.backend["shards_by_worker"].values()) == 6
    assert digests(messy / "ray") == digests(messy / "local") and len(digests(messy / "local")) == 12


def test_actor_killed_mid_shard_is_retried_elsewhere(cluster, slow):
    thread, box = run_in_thread(cfg_for(slow / "set", backend="ray", **SLOW), slow / "killed-actor")
    handle, info = busy_actor()
    ray.kill(handle, no_restart=True)
    summary = finish(thread, box)
    assert [r["shard"] for r in summary.retried] == [info["shard"]]
    assert summary.retried[0]["action"] == "retried" and "died" in summary.retried[0]["reason"]
    assert summary.done_now == 4 and summary.failed_now == 0 and summary.pairs == 12
    assert digests(slow / "killed-actor") == digests(slow / "local")


def test_a_stopped_actor_is_taken_as_hung_and_its_shard_runs_elsewhere(cluster, slow):
    """An actor that holds a shard and moves on no pair (SIGSTOP here; a deadlock in native code or a GPU call that
    never returns alike) kept the run waiting for ever: the driver noticed dead actors only, while the local
    backend's processes had the `stall_s` watchdog. After `stall_s` without progress it is killed and its shard
    goes to another actor: same bytes as the local run."""
    out = slow / "stopped-actor"
    thread, box = run_in_thread(cfg_for(slow / "set", backend="ray", stall_s=4, **SLOW), out)
    _, info = busy_actor()
    pid = int(info["worker"].split()[2])                   # "actor pid N on node X"
    os.kill(pid, signal.SIGSTOP)
    try:
        summary = finish(thread, box)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    hung = [r for r in summary.retried if "taken as hung" in r["reason"]]
    assert info["shard"] in [r["shard"] for r in hung], summary.retried
    assert f"pid {pid} " in next(r for r in hung if r["shard"] == info["shard"])["reason"]
    assert summary.done_now == 4 and summary.failed_now == 0 and summary.pairs == 12
    assert digests(out) == digests(slow / "local")


def test_driver_killed_then_resumed_by_the_local_backend(cluster, slow):
    out = slow / "killed-driver"
    args = ["batch", "run", str(slow / "set"), "--out", str(out), "--backend", "ray", "--shard-size", "3",
            "--annotator", "slow-diff", "--set", "options.delay_ms=250", "--batch-size", "1", "--workers", "0",
            "--plugin", "service_plugins", "--no-progress"]
    driver = subprocess.Popen([sys.executable, "-m", "sigma", *args],
                              env={**os.environ, "RAY_ADDRESS": cluster.address},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not list((out / "status").glob("*.json")):
        assert driver.poll() is None, driver.stderr.read().decode()
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=10)
    time.sleep(1.0)                  # Ray kills the dead driver's actors; let any last write land
    done_before = len(list((out / "status").glob("*.json")))
    assert 1 <= done_before < 4, "the run finished before it could be killed"
    resumed = run_batch(cfg_for(slow / "set", **SLOW), out, resume=True, progress=False)
    assert resumed.skipped >= done_before and resumed.skipped + resumed.done_now == 4 and resumed.done_now >= 1
    assert digests(out) == digests(slow / "local")


def test_local_run_resumed_on_ray_with_address_auto(cluster, messy):
    out = messy / "half-local"
    first = run_batch(cfg_for(messy / "set"), out, progress=False, max_shards=2)
    assert first.done_now == 2
    rc = sigma_cli("batch", "run", str(messy / "set"), "--out", str(out), "--annotator", "pixel-diff", "--workers", "0",
                   "--shard-size", "3", "--resume", "--ray-address", "auto", "--no-progress", "--json")
    assert rc.returncode == 0, rc.stderr
    summary = json.loads(rc.stdout)
    assert summary["backend"]["backend"] == "ray" and summary["backend"]["nodes"] == 2
    assert (summary["skipped"], summary["done_now"], summary["errors"]) == (2, 4, 3)
    assert digests(out) == digests(messy / "local")


def test_unreachable_cluster_is_one_line_and_exit_2(tmp_path, messy, unused_port):
    address = f"127.0.0.1:{unused_port}"
    start = time.monotonic()
    rc = sigma_cli("batch", "run", str(messy / "set"), "--out", str(tmp_path / "x"), "--annotator", "pixel-diff",
                   "--backend", "ray", "--no-progress", env={"RAY_ADDRESS": address}, timeout=60)
    assert rc.returncode == 2 and time.monotonic() - start < 40
    lines = rc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sigma: error [ray_unreachable]") and address in lines[0]


@pytest.mark.parametrize("address", ["\udcff:6379", "127.0.0.1:99999999", "ray://" + "a" * 70 + ".example:10001"])
def test_an_address_no_socket_can_take_is_invalid_config_not_a_traceback(tmp_path, messy, address):
    """`--ray-address $'\\xff'` (a host IDNA cannot encode) or a port past 65535: the probe's connect raised
    UnicodeError / OverflowError, a traceback with exit 1."""
    rc = sigma_cli("batch", "run", str(messy / "set"), "--out", str(tmp_path / "x"), "--annotator", "pixel-diff",
                   "--ray-address", address, "--no-progress", timeout=60)
    lines = rc.stderr.strip().splitlines()
    assert rc.returncode == 2 and len(lines) == 1, rc.stderr
    assert lines[0].startswith("sigma: error [invalid_config]: Ray address"), rc.stderr


@pytest.mark.parametrize("value", ["x:abc", "\x1b[2J"])
def test_a_junk_ray_address_variable_is_named_in_its_one_line(tmp_path, messy, value):
    """`RAY_ADDRESS=x:abc` was refused as "Ray address 'x:abc' is not host:port" without naming the variable (no
    --ray-address was given); an ESC sequence in it drove the terminal."""
    rc = sigma_cli("batch", "run", str(messy / "set"), "--out", str(tmp_path / "x"), "--annotator", "pixel-diff",
                   "--backend", "ray", "--no-progress", env={"RAY_ADDRESS": value}, timeout=60)
    lines = rc.stderr.strip().splitlines()
    assert rc.returncode == 2 and len(lines) == 1 and "\x1b" not in rc.stderr, rc.stderr
    assert "($RAY_ADDRESS)" in lines[0] or "(given by $RAY_ADDRESS)" in lines[0], rc.stderr


def test_a_blank_ray_address_variable_is_unset_and_a_blank_flag_refused(monkeypatch):
    """`RAY_ADDRESS=' '` was probed as the host ' ': "cannot reach the Ray cluster at : ..."; blank now counts as
    unset (a Ray of our own), as blank SIGMA_* variables do. `--ray-address ' '` is a slip: invalid_config."""
    from sigma.batch.config import RayConfig
    from sigma.batch.ray_backend import address_given

    monkeypatch.setenv("RAY_ADDRESS", " \t")
    assert address_given(RayConfig()) == (None, "$RAY_ADDRESS")
    monkeypatch.setenv("RAY_ADDRESS", " 10.0.0.1:6379 ")
    assert address_given(RayConfig()) == ("10.0.0.1:6379", "$RAY_ADDRESS")
    assert address_given(RayConfig(address="auto")) == ("auto", "--ray-address")
    with pytest.raises(ConfigError, match="--ray-address / ray.address.*blank"):
        address_given(RayConfig(address=" "))


def test_probe_tells_a_ray_head_from_another_service(cluster):
    host, port = cluster.address.rsplit(":", 1)
    probe_grpc(host, int(port), timeout=5)          # the head's GCS answers HTTP/2
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer():
            conn, _ = server.accept()
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        with pytest.raises(OSError, match="not HTTP/2"):
            probe_grpc("127.0.0.1", server.getsockname()[1], timeout=5)


def test_an_actor_that_cannot_build_the_annotator_stops_the_run(cluster, messy, tmp_path):
    """Options the annotator refuses are refused with the config now (`BatchConfig` validates them by the
    annotator's own model), so the build in the run is reached with a config whose options were not checked: what a run
    record holds (`RecordedConfig`)."""
    from pydantic import ValidationError

    from sigma.batch.record import RecordedConfig

    with pytest.raises(ValidationError, match="bogus"):
        cfg_for(messy / "set", backend="ray", options={"bogus": 1})
    base = {"input": {"path": str(messy / "set"), "shard_size": 3}, "annotator": "pixel-diff", "workers": 0}
    unchecked = RecordedConfig.model_validate({**base, "backend": "ray", "options": {"bogus": 1}})
    with pytest.raises(ConfigError, match="bogus"):
        run_batch(unchecked, tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match="GPU"):
        run_batch(cfg_for(messy / "set", backend="ray", ray={"num_gpus": 1}), tmp_path / "gpu", progress=False)


def test_node_removed_mid_shard(cluster, slow):
    """Last here: it takes the second node away."""
    out = slow / "lost-node"
    thread, box = run_in_thread(cfg_for(slow / "set", backend="ray", **SLOW), out)
    _, info = busy_actor(node_prefix=cluster.worker.node_id[:8])
    cluster.remove_node(cluster.worker)
    summary = finish(thread, box)
    assert info["shard"] in [r["shard"] for r in summary.retried]
    assert all(r["action"] == "retried" for r in summary.retried)
    assert summary.done_now == 4 and summary.failed_now == 0
    assert digests(out) == digests(slow / "local")
