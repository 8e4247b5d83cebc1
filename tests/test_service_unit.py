"""Service parts without HTTP: settings and keys, the queue primitives on real Redis, the predictor,
the deployment files."""
from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from servicekit import make_pair, png_bytes, wait_until

from sigma import create_annotator
from sigma.errors import ConfigError
from sigma.io import decode_rle, pair_from_bytes
from sigma.service.predictor import Predictor
from sigma.service.queue import Heartbeat, StreamQueue
from sigma.service.settings import ServeConfig, hash_key, load_serve_config

ROOT = Path(__file__).resolve().parents[1]


# -- settings ---------------------------------------------------------------------------------
def test_env_overrides_yaml_and_keys_are_hashed(tmp_path):
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text("redis: {url: redis://yaml:1/0}\nqueue: {lease_ms: 5000}\n")
    env = {"SIGMA_REDIS_URL": "redis://env:2/0", "SIGMA__QUEUE__MAX_DELIVERIES": "7",
           "SIGMA__WORKER__OPTIONS__THRESHOLD": "0.2",
           "SIGMA_API_KEYS": "alpha, beta:metrics+admin", "SIGMA_API_KEY_HASHES": hash_key("gamma") + ":annotate"}
    cfg = load_serve_config(cfg_file, ["queue.block_ms=50"], env=env)
    assert cfg.redis.url == "redis://env:2/0"          # env beats YAML
    assert cfg.queue.lease_ms == 5000 and cfg.queue.max_deliveries == 7 and cfg.queue.block_ms == 50
    assert cfg.worker.options == {"threshold": 0.2}
    keys = {k.sha256: k.scopes for k in cfg.auth.keys}
    assert keys == {hash_key("alpha"): ["annotate", "metrics"], hash_key("beta"): ["metrics", "admin"],
                    hash_key("gamma"): ["annotate"]}
    assert "alpha" not in cfg.model_dump_json()        # only digests are kept


def test_keys_without_a_name_in_yaml_do_not_share_an_owner(tmp_path):
    """Every unnamed YAML key was named "key": the jobs' owner, so each could read and delete the others' jobs."""
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text(f"auth:\n  keys:\n    - sha256: {hash_key('alice')}\n    - sha256: {hash_key('bob')}\n"
                        f"    - {{name: team, sha256: {hash_key('old')}}}\n"
                        f"    - {{name: team, sha256: {hash_key('new')}}}\n")
    cfg = load_serve_config(cfg_file, env={"SIGMA_API_KEYS": "carol"})
    owners = {k.sha256: k.name for k in cfg.auth.keys}
    assert owners[hash_key("alice")] != owners[hash_key("bob")]
    assert owners[hash_key("alice")] == f"key-{hash_key('alice')[:12]}"       # as SIGMA_API_KEYS names its keys
    assert owners[hash_key("carol")] == f"key-{hash_key('carol')[:12]}"
    assert owners[hash_key("old")] == owners[hash_key("new")] == "team"         # one name given: shared on purpose
    from starlette.requests import Request

    from sigma.api.auth import KeyChecker

    def who(key: str) -> str:
        return KeyChecker(cfg.auth).identify(Request({"type": "http", "headers": [(b"x-api-key", key.encode())]})).name
    assert who("alice") != who("bob")


@pytest.mark.parametrize("env, overrides", [({"SIGMA_API_KEYS": "k:superuser"}, []),
                                            ({}, ["queue.lease_ms=-1"]), ({}, ["queue.nonsense=1"]),
                                            ({"SIGMA__LIMITS__MAX_PIXELS": "many"}, [])])
def test_bad_settings_are_config_errors(env, overrides):
    with pytest.raises(ConfigError):
        load_serve_config(None, overrides, env=env)


@pytest.mark.parametrize("sets, said", [
    (["queue.lease_ms=1000"], "queue.lease_ms=1000 must be at least twice queue.heartbeat_interval_ms=2000"),
    (["queue.heartbeat_interval_ms=20000"], "queue.lease_ms=30000 must be at least twice "
                                            "queue.heartbeat_interval_ms=20000"),
    (["queue.heartbeat_ttl_ms=2000"], "queue.heartbeat_ttl_ms=2000 must be above queue.heartbeat_interval_ms=2000")])
@pytest.mark.parametrize("command", [["worker", "--annotator", "pixel-diff"], ["worker", "--batch"],
                                     ["serve", "all", "--port", "0"]])
def test_a_lease_or_heartbeat_key_shorter_than_the_beats_that_keep_it_is_refused_at_start_up(command, sets, said):
    """`sigma worker --set queue.lease_ms=1000` (the default beat is 2 s) was taken: every job longer than a second was
    reclaimed by each idle worker in turn while its first worker was on it (3 workers, a 10 s job: attempts 3, done
    by all three at once; a 4th worker dead-letters it, its job failed though no worker died). Now one `invalid_config`
    line naming both settings, exit 2, before any Redis is tried (none runs at this URL: a worker that took the
    settings would wait for it, and is killed after 60 s); `sigma serve all` too, before its API or worker starts."""
    import os
    import sys

    env = {**os.environ, "SIGMA_REDIS_URL": "redis://127.0.0.1:1/0", "PYTHONPATH": str(ROOT), "SIGMA_API_KEYS": "k"}
    try:
        done = subprocess.run([sys.executable, "-m", "sigma", *command, *[a for item in sets for a in ("--set", item)]],
                              env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker took the settings and waited for Redis")
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, (done.returncode, err)
    assert err[0].startswith("sigma: error [invalid_config]: ") and said in err[0], err


def test_shipped_yaml_documents_the_defaults():
    assert load_serve_config(ROOT / "configs" / "serve.yaml", env={}) == ServeConfig()


def undocumented(model: type, section: dict, where: str = "") -> list[str]:
    """Dotted names of `model`'s fields that `section` (a mapping from YAML) does not name, and of names in it
    that are no field; a field whose type is itself a settings model is walked into."""
    from pydantic import BaseModel

    missing = [f"{where}{name} (not in the file)" for name in model.model_fields if name not in section]
    missing += [f"{where}{name} (no such setting)" for name in section if name not in model.model_fields]
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(section.get(name), dict):
            missing += undocumented(kind, section[name], f"{where}{name}.")
    return missing


def test_shipped_yaml_lists_every_setting():
    """configs/serve.yaml says it lists every setting with its default, but `worker.batch_timeout_s` had been
    added to the model and not to the file; the defaults test above cannot see a setting left out (a missing key
    takes its default). The keys of the file and the fields of the model must be the same, section by section."""
    shipped = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    assert undocumented(ServeConfig, shipped) == []


def test_api_refuses_to_start_without_keys():
    from sigma.api.app import create_app

    with pytest.raises(ConfigError, match="SIGMA_API_KEYS"):
        create_app(load_serve_config(None, env={}))


# -- queue primitives on real Redis -----------------------------------------------------------
@pytest.fixture
def queue_factory(redis_server):
    client = redis_server.client()
    prefix = f"uq{uuid.uuid4().hex[:8]}"

    def make(consumer: str = "c1", lease_ms: int = 200, max_deliveries: int = 2) -> StreamQueue:
        q = StreamQueue(redis_server.client(), f"{prefix}:s", "g", consumer, lease_ms=lease_ms,
                        max_deliveries=max_deliveries, dead_stream=f"{prefix}:dead")
        q.ensure_group()
        return q
    yield make
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@pytest.mark.redis
def test_add_refuses_past_max_len_and_never_trims(queue_factory):
    q = queue_factory()
    ids = [q.add({"job": str(i)}, max_len=3) for i in range(5)]
    assert all(ids[:3]) and ids[3:] == [None, None]
    got = q.read_batch(8, block_ms=10, max_wait_ms=0)
    assert [e.fields["job"] for e in got] == ["0", "1", "2"] and all(e.deliveries == 1 for e in got)
    assert q.add({"job": "x"}, max_len=3) is None       # in-flight entries still count
    q.ack([got[0].id])
    assert q.depth() == 2 and q.pending_count() == 2 and q.add({"job": "y"}, max_len=3)
    q.ensure_group()                                     # idempotent


@pytest.mark.redis
def test_micro_batch_waits_for_more_entries_up_to_max_wait(queue_factory):
    q = queue_factory()
    q.add({"job": "a"})
    t0 = time.monotonic()
    assert len(q.read_batch(4, block_ms=10, max_wait_ms=150)) == 1
    assert time.monotonic() - t0 >= 0.14                 # waited to fill the batch
    for i in range(6):
        q.add({"job": str(i)})
    t0 = time.monotonic()
    assert len(q.read_batch(4, block_ms=10, max_wait_ms=60000)) == 4
    assert time.monotonic() - t0 < 30                    # full batch: no waiting (a loaded machine may stall seconds)


@pytest.mark.redis
def test_reclaim_counts_deliveries_and_dead_letters(queue_factory):
    dead_worker, reaper = queue_factory("dead"), queue_factory("reaper")
    dead_worker.add({"job": "j1"})
    assert len(dead_worker.read(1, None)) == 1            # delivered, never acked (the worker "died")
    # not idle long enough yet: asked with a lease no stall of a loaded machine outlasts (at 200 ms this failed when
    # the test was descheduled for 200 ms between the read and the reclaim)
    assert queue_factory("early", lease_ms=60000).reclaim() == ([], [])
    time.sleep(0.25)
    live, exhausted = reaper.reclaim()
    assert [(e.fields["job"], e.deliveries, e.claimed) for e in live] == [("j1", 2, True)] and not exhausted
    time.sleep(0.25)
    live, exhausted = reaper.reclaim()
    assert not live and [e.deliveries for e in exhausted] == [3]
    assert reaper.dead_letter(exhausted[0], "boom") is not None
    assert reaper.dead_letter(exhausted[0], "boom") is None  # sent again after a lost reply: one record, not two
    assert reaper.depth() == 0 and reaper.pending_count() == 0 and reaper.dead_count() == 1
    dead = reaper.dead_entries()[0].fields
    assert dead["job"] == "j1" and dead["error"] == "boom" and dead["deliveries"] == "3"


@pytest.mark.redis
def test_a_dead_workers_entries_among_many_a_live_worker_holds_are_reclaimed_not_dead_lettered(queue_factory,
                                                                                             redis_server):
    """A worker killed holding two entries, with 100 entries a live worker holds (its heartbeat keeping their leases)
    between them in the stream: the reclaim read the delivery counters with one XPENDING from the lowest claimed id to
    the highest, cut at 64 rows, so the second entry's counter was not among them, and it was taken for delivered too
    often: dead-lettered (its job failed `worker_lost`) on its second delivery, with max_deliveries 3."""
    dead, live, reaper = (queue_factory(name, lease_ms=1000, max_deliveries=3) for name in ("dead", "live", "reaper"))
    for n in range(102):
        dead.add({"job": str(n)})
    assert len(dead.read(1, None)) == 1                  # entry 0: the dead worker's
    held = live.read(100, None)                          # entries 1..100: the live worker's
    assert len(held) == 100 and len(dead.read(1, None)) == 1       # entry 101: the dead worker's
    hb = Heartbeat(redis_server.client(), f"{live.stream}:hb", interval_ms=100, ttl_ms=2000, info=lambda: {},
                   queue=live)
    hb.track([e.id for e in held])
    hb.start()
    reclaimed: list = []
    try:
        deadline = time.monotonic() + 30
        while len(reclaimed) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            got, exhausted = reaper.reclaim(count=16)
            assert not exhausted, [(e.fields["job"], e.deliveries) for e in exhausted]
            reclaimed += got
    finally:
        hb.stop()
    assert sorted((e.fields["job"], e.deliveries) for e in reclaimed) == [("0", 2), ("101", 2)]


@pytest.mark.redis
def test_worker_healthcheck_counts_only_this_hosts_worker(redis_server):
    """`python -m sigma.workers.healthcheck` matched `P:worker:<consumer or host>*`: a worker named w1 (or on host
    gpu1) was healthy while only w10 (gpu10-…, gpu1-b-…) had a heartbeat."""
    import os
    import socket
    import subprocess
    import sys
    import uuid

    prefix, host = f"t{uuid.uuid4().hex[:10]}", socket.gethostname()
    r = redis_server.client()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGMA")}
    env.update(SIGMA_REDIS_URL=redis_server.url, SIGMA__REDIS__KEY_PREFIX=prefix)

    def healthy(consumer: str | None = None) -> bool:
        extra = {"SIGMA__WORKER__CONSUMER": consumer} if consumer else {}
        return subprocess.run([sys.executable, "-m", "sigma.workers.healthcheck"], env={**env, **extra},
                              capture_output=True, timeout=60).returncode == 0

    for other in ("w10", f"{host}0-123", f"{host}-b-123"):
        r.hset(f"{prefix}:worker:{other}", "model_loaded", "1")
    assert not healthy("w1") and not healthy()
    r.hset(f"{prefix}:worker:w1", "model_loaded", "1")
    r.hset(f"{prefix}:worker:{host}-4242", "model_loaded", "1")
    assert healthy("w1") and healthy()


@pytest.mark.redis
def test_heartbeat_writes_ttl_key_and_extends_leases(queue_factory, redis_server):
    # a lease of 1.5 s, beats every 50 ms: at 300 ms a heartbeat thread held off the CPU for a quarter of a second
    # (a loaded machine) let the lease run out, and the reaper took the entry the test said was kept
    worker, reaper = queue_factory("busy", lease_ms=1500), queue_factory("reaper", lease_ms=1500)
    worker.add({"job": "long"})
    entry = worker.read(1, None)[0]
    key = f"{worker.stream}:hb"
    hb = Heartbeat(redis_server.client(), key, interval_ms=50, ttl_ms=500, info=lambda: {"annotator": "x"},
                   queue=worker)
    hb.track([entry.id])
    hb.start()
    try:
        time.sleep(2.0)                                   # longer than the lease
        assert reaper.reclaim() == ([], [])               # ...but the heartbeat kept it
        r = redis_server.client()
        assert r.hget(key, "annotator") == b"x" and 0 < r.pttl(key) <= 500
        hb.untrack([entry.id])
        live = wait_until(lambda: reaper.reclaim()[0], 30, "the untracked entry reclaimed once its lease ran out")
        assert [e.id for e in live] == [entry.id]
    finally:
        hb.stop()
    assert not redis_server.client().exists(key)


@pytest.mark.redis
def test_heartbeat_goes_on_when_the_stream_of_the_work_in_hand_is_gone(queue_factory, redis_server):
    """FLUSHALL (or Redis restarted without its data) while a worker holds an entry: the lease extension fails
    with NOGROUP, and the heartbeat write after it was skipped every beat until the batch ended — a fleet worker
    on a long shard vanished from `live_workers` (an annotation worker from /readyz) while it worked."""
    worker = queue_factory("busy")
    worker.add({"job": "long"})
    entry = worker.read(1, None)[0]
    key = f"{worker.stream}:hb"
    r = redis_server.client()
    hb = Heartbeat(r, key, interval_ms=50, ttl_ms=500, info=lambda: {"annotator": "x"}, queue=worker)
    hb.track([entry.id])
    r.delete(worker.stream)                               # the stream and its group are gone
    try:
        hb.beat()
        assert r.hget(key, "annotator") == b"x" and 0 < r.pttl(key) <= 500
    finally:
        hb.stop()


# -- predictor ----------------------------------------------------------------------------------
def test_predictor_matches_in_process_annotator_and_reports_bad_items():
    original, edited = make_pair(seed=3)
    o, e = png_bytes(original), png_bytes(edited)
    pred = Predictor("pixel-diff")
    pred.setup()
    out = pred([{"id": "a", "original": o, "edited": e, "instruction": "invert", "outputs": ["rle", "png"]},
                {"id": "b", "original": b"junk", "edited": e},
                {"id": "c", "original": o, "edited": e, "threshold": 0.01}])
    ref = create_annotator("pixel-diff").predict([pair_from_bytes(o, e)])[0]
    assert out[0]["ok"] and np.array_equal(decode_rle(out[0]["result"]["segmentation"]), ref.mask)
    assert out[0]["result"]["instruction"] == "invert" and "mask_png_base64" in out[0]["result"]
    assert out[1]["ok"] is False and out[1]["error"]["code"] == "image_unreadable"
    assert out[1]["error"]["message"].startswith("original:")
    assert np.array_equal(decode_rle(out[2]["result"]["segmentation"]), ref.prob > 0.01)


# -- deployment files ---------------------------------------------------------------------------
def test_compose_file_structure():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "api", "worker"} <= set(services)
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"]) and "redis-data" in compose["volumes"]
    for name in ("redis", "api", "worker"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["SIGMA_REDIS_URL"] == "redis://redis:6379/0"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert (ROOT / services[name]["build"]["dockerfile"]).is_file()
    assert "SIGMA_API_KEYS" in services["api"]["environment"]
    # one compose variable names the plugins of both: the API validates a batch's annotator by registry name too
    assert services["api"]["environment"]["SIGMA__API__PLUGINS"] == "${SIGMA_PLUGINS:-[]}"
    assert services["worker"]["environment"]["SIGMA__WORKER__PLUGINS"] == "${SIGMA_PLUGINS:-[]}"
    device = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    worker_df = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert "FROM nvidia/cuda:" in worker_df and '"sigma.workers.healthcheck"]' in worker_df
    # the module as installed (docs/service.md): a top-level `workers` only resolved from the image's /app
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "python", "-m", "sigma.workers.healthcheck"]


def test_compose_restarts_a_worker_however_it_exits_and_a_recycle_is_a_failure_for_on_failure_policies():
    """A worker recycling itself past worker.max_rss_mb exited 0, which `restart: on-failure` (and systemd's
    Restart=on-failure) leaves stopped: the fleet lost a worker at each recycle. It now exits 75; compose's worker
    policy restarts any status but a `docker compose stop` (docker's policies: 'no', on-failure[:N], always,
    unless-stopped), and 75 is a failure to every on-failure policy, distinct from a crash (1) and a config error
    (2)."""
    from sigma.workers.lifecycle import RECYCLE_EXIT_STATUS

    def restarts(policy: str, status: int) -> bool:
        return policy in ("always", "unless-stopped") or (policy.startswith("on-failure") and status != 0)

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    workers = [name for name, service in services.items() if "worker" in service["image"]]
    assert workers == ["worker"], workers
    for name in workers:
        policy = services[name]["restart"]
        assert all(restarts(policy, status) for status in (0, 1, RECYCLE_EXIT_STATUS)), (name, policy)
    assert RECYCLE_EXIT_STATUS not in (0, 1, 2) and restarts("on-failure", RECYCLE_EXIT_STATUS)


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose (v1) not installed")
def test_docker_compose_config_validates():
    out = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], check=False,
                         env={"SIGMA_API_KEYS": "x", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr


# -- the API's header check agrees with the library's full decode -------------------------------
def _jpeg_rotated(h: int, w: int) -> bytes:
    import io

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6                                      # stored sideways: turned 90 degrees on decode
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_header_check_gives_the_library_error_codes():
    from sigma.api.probe import check_pair
    from sigma.errors import SigmaError

    io_cfg = ServeConfig().limits.io_config()
    io_cfg.limits.max_pixels = 100_000
    o, e = (png_bytes(a) for a in make_pair(48, 64, seed=1))
    cases = {
        "ok": (o, e, None), "truncated_png": (o, e[: len(e) // 2], None), "junk": (b"junk", e, None),
        "empty": (o, b"", None), "too_many_pixels": (png_bytes(np.zeros((400, 400, 3), np.uint8)), e, None),
        "aspect": (o, png_bytes(np.zeros((48, 20, 3), np.uint8)), None),
        "rotated_exif": (_jpeg_rotated(64, 48), e, None),       # upright it is 48 x 64 like the edited
        "instruction": (o, e, "x" * 1001),
    }
    for name, (a, b, instr) in cases.items():
        want = got = None
        try:
            pair_from_bytes(a, b, instr, io_cfg)
        except SigmaError as exc:
            want = exc.code
        try:
            check_pair(a, b, instr, io_cfg)
        except SigmaError as exc:
            got = exc.code
        assert got == want, (name, got, want)
    assert check_pair(o, e, None, io_cfg) is None


def test_idempotency_records_of_two_owners_never_share_a_key():
    from sigma.service.keys import Keys

    keys = Keys("sigma")
    assert keys.idem("a", "b:c") != keys.idem("a:b", "c")
    assert keys.idem("a", "b") == keys.idem("a", "b")


def test_a_held_folder_s_error_escaping_to_the_api_s_handler_names_no_pid_host_or_path(tmp_path):
    """The API's handler of any SigmaError (api/errors.py `install`) answered `exc.message` whole, with the status
    map's default: a `folder_busy` (or `weights_busy`) reaching it on a path other than POST /v1/batches (which
    scrubs its own) would have been a 422 naming the server's folder and the holder's pid. Now 409 with Retry-After,
    the holder `another process` and the folder `<server path>`. The remedy, ``resume it (`fg`, `kill -CONT PID`) or
    end it, then try again ($SIGMA_..._WAIT_S sets the wait ...)``, was for a shell on the server, which an HTTP
    caller has not: it is said `try again later`."""
    import os
    import socket

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from sigma.api.errors import install
    from sigma.errors import WeightsBusyError
    from sigma.folderlock import busy_as_error, busy_message, described_holder, holder_line
    from sigma.tempfiles import FolderBusy

    folder = tmp_path / "server-only" / "out"
    holder = 4242424
    app = FastAPI()
    install(app)

    @app.get("/folder")
    def _folder() -> None:
        with busy_as_error("take", 2):
            raise FolderBusy(folder, 2.0, [(holder, "WRITE")])

    @app.get("/api-wait")                  # the API's own wait (`api.lock_wait_s`), under a second
    def _api_wait() -> None:
        with busy_as_error("take", 0.5, "api.lock_wait_s"):
            raise FolderBusy(folder, 0.5, [(holder, "WRITE")])

    @app.get("/weights")
    def _weights() -> None:
        raise WeightsBusyError(busy_message(FolderBusy(folder, 2.0, [(holder, "WRITE")]), "load the model from",
                                            "SIGMA_MODEL_LOCK_WAIT_S", 2, ("saving", "loading"))
                               + f" ({described_holder(holder_line())})")

    with TestClient(app) as client:
        for route, code, start in (("/folder", "folder_busy", "<server path>: cannot take "),
                                   ("/api-wait", "folder_busy", "<server path>: cannot take "),
                                   ("/weights", "weights_busy", "<server path>: cannot load ")):
            resp = client.get(route)
            assert resp.status_code == 409 and resp.json()["error"]["code"] == code, resp.text
            assert resp.headers.get("Retry-After") == "5", resp.headers
            message = resp.json()["error"]["message"]
            assert message.startswith(start) and "; try again later" in message, message
            assert "another process" in message, message
            for leak in (str(tmp_path), str(holder), str(os.getpid()), socket.gethostname(), "kill -CONT", "`fg`",
                         "_LOCK_WAIT_S", "sets the wait"):
                assert leak not in resp.text, (leak, resp.text)


def test_every_library_error_reaching_the_api_s_handler_names_no_server_path(tmp_path):
    """The API's handler of any SigmaError scrubbed only the busy codes (`RETRY_AFTER_S`): any other library
    message reaching it was answered whole, and the library names the server's folders in most of them — the real
    `hold_folder` refusals here: `bad_outdir` (`/srv/.../out/.lock: is a symbolic link ...`) and `out_not_a_folder`
    (`/srv/.../file: exists and is not a folder`). POST /v1/batches scrubs its own, so no route answers these today
    through the handler; one that ever did told any caller the server's layout. Now every code's message is scrubbed
    there, its code and status unchanged."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from sigma.api.errors import install
    from sigma.folderlock import hold_folder

    server = tmp_path / "server-only"
    (server / "linked").mkdir(parents=True)
    (server / "linked" / ".lock").symlink_to(server / "elsewhere")
    (server / "a-file").write_text("not a folder")
    app = FastAPI()
    install(app)

    @app.get("/hold/{name}")
    def _hold(name: str) -> None:
        with hold_folder(server / name):
            pass

    with TestClient(app) as client:
        for name, code, said in (("linked", "bad_outdir", "<server path>: is a symbolic link"),
                                 ("a-file", "out_not_a_folder", "<server path>: exists and is not a folder")):
            resp = client.get(f"/hold/{name}")
            assert resp.status_code == 409 and resp.json()["error"]["code"] == code, resp.text
            assert resp.json()["error"]["message"].startswith(said), resp.text
            assert str(tmp_path) not in resp.text and "server-only" not in resp.text, resp.text


BATCH_SCRUBS = [
    # (message, as POST /v1/batches and GET /v1/batches/status say it, the batch root /srv/batches)
    ("/srv/batches/runs/x: held", "runs/x: held"),
    ("/srv/batches: gone", ".: gone"),
    ("at /srv/batches. Or (/srv/batches)", "at .. Or (.)"),
    ("'/srv/batches/my runs/x' is held", "'my runs/x' is held"),
    # a folder beside the root whose name begins with the root's: `.-private/model.pt`, `.2/x` were answered
    ("/srv/batches-private/model.pt: not found", "<server path>: not found"),
    ("cannot read /srv/batches2/x, /srv/batches.old", "cannot read <server path>, <server path>"),
]


@pytest.mark.parametrize(("message", "said"), BATCH_SCRUBS, ids=[m for m, _ in BATCH_SCRUBS])
def test_a_batch_message_makes_only_the_root_s_own_paths_relative(message, said):
    """`batches.scrub` replaced the batch root's name wherever it began a longer name: a folder beside the root,
    `/srv/batches-private/model.pt` beside the root `/srv/batches`, was answered `.-private/model.pt`, its name
    and file told to the caller. Now only the root itself, ended by a slash or by no more of a name, is made
    relative; any other absolute path is `<server path>`."""
    from sigma.api.batches import scrub

    assert scrub(message, "/srv/batches") == said


def test_a_server_folder_with_a_space_in_its_name_is_hidden_whole_in_answers(tmp_path):
    """An operator's folder with a space in its name (`/srv/my models/...`) was hidden only up to the space: the
    handler of library errors answered `hold_folder`'s `<server path> models/a-file: exists and is not a folder` and
    `read_yaml`'s `<server path> models/cfg.yaml: config file not found`, and a job error's OSError text (Python's
    repr of the path, `'/srv/my models/x.pt'`) `'<server path> models/x.pt'`: the folders after the space, to any
    caller. Now each path is hidden whole, over real HTTP (the real library refusals, a real OSError's text)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from sigma.api.errors import install, public_job_error
    from sigma.config.loader import read_yaml
    from sigma.folderlock import hold_folder

    server = tmp_path / "server only" / "my models"
    server.mkdir(parents=True)
    (server / "a-file").write_text("not a folder")
    app = FastAPI()
    install(app)

    @app.get("/hold")
    def _hold() -> None:
        with hold_folder(server / "a-file"):
            pass

    @app.get("/config")
    def _config() -> None:
        read_yaml(server / "cfg.yaml")

    @app.get("/job")
    def _job() -> dict:
        try:
            (server / "x.pt").read_bytes()
        except OSError as exc:
            return public_job_error({"code": "model_error", "message": f"{type(exc).__name__}: {exc}"})
        raise AssertionError("x.pt exists")

    with TestClient(app) as client:
        for route, said in (("/hold", "<server path>: exists and is not a folder"),
                            ("/config", "<server path>: config file not found"),
                            ("/job", "FileNotFoundError: [Errno 2] No such file or directory: '<server path>'")):
            resp = client.get(route)
            message = resp.json()["message"] if route == "/job" else resp.json()["error"]["message"]
            assert message.startswith(said), resp.text
            for leak in (str(tmp_path), "only", "models", "a-file", "cfg.yaml", "x.pt"):
                assert leak not in resp.text, (leak, resp.text)


def test_a_run_too_large_dead_letter_is_answered_without_the_workers_names():
    """A shard dead-lettered `run_too_large` names the batch workers it was offered to, by consumer name: by default
    `HOST-PID` (`default_consumer`, what `sigma worker --batch` calls itself), which a run's status passed on whole
    to any caller. `scrubbed` leaves the names out and keeps the count and the time; the operator's own record (the
    dead letter on Redis, `sigma batch status`) still names them."""
    from sigma.api.errors import scrubbed
    from sigma.service.consumer import default_consumer
    from sigma.service.deferral import refused_by_text

    names = [default_consumer(), "gpu-node-7.internal-4242 (spare)"]
    message = (f"dead-lettered after 1 deliveries: [run_too_large] runs/x: shard s1 was not run: its run.json is over "
               f"the run size limit of every batch worker it was offered to: {refused_by_text(names, 12.4)}, "
               "deferred 3 times; given up")
    assert default_consumer() in message and "gpu-node-7" in message
    said = scrubbed(message)
    assert said == message.replace(" (" + ", ".join(names) + ")", ""), said
    assert "refused by 2 worker(s) over 12 s, deferred 3 times" in said, said



def test_a_given_up_tasks_deferral_start_is_said_in_utc_whatever_the_workers_zone(monkeypatch, tmp_path):
    """A dead letter given up after its deferrals (`run_locked_too_long`, `weights_busy`, `run_too_large`) said when
    they began in the writing worker's local time with its zone's name (`2027-01-15 13:45:00 XYZ` on a worker 5:45
    east of UTC): a fleet's workers in different zones wrote different names, and the API's status passed on the
    server's. Now it is UTC ISO 8601, whichever zone the worker is in."""
    import time

    from sigma.service.deferral import Deferral
    from sigma.service.fleet import ModelBusy, RunBusy, RunTooLarge

    monkeypatch.setenv("TZ", "XYZ-5:45")
    time.tzset()
    try:
        assert time.localtime(1_800_000_000).tm_hour == 13            # the zone is in force
        deferral = Deferral(since=1_800_000_000.4, count=3, mark=0, progress_at=1_800_000_000.4,
                            last=1_800_000_100.4, refused_by=["w1"])
        fields = {"run_dir": str(tmp_path), "shard": "s1"}
        for busy in (RunBusy("held", tmp_path), ModelBusy("held", tmp_path), RunTooLarge("too large", tmp_path)):
            _, message = busy.given_up(fields, deferral, 100.0)
            assert "since 2027-01-15T08:00:00Z," in message and "XYZ" not in message, (type(busy), message)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


SCRUBS = [
    # (message, as an answer says it): the punctuation after a path is the message's, kept
    ("cannot open /srv/data/x.png: permission denied", "cannot open <server path>: permission denied"),
    ("read /srv/a, /srv/b and /srv/c.", "read <server path>, <server path> and <server path>."),
    ("the run (at /srv/runs/mb) is held", "the run (at <server path>) is held"),
    ("in /srv/x; then /srv/y! or /srv/z?", "in <server path>; then <server path>! or <server path>?"),
    ("'/srv/q.png' and \"/srv/r.png\" are gone", "'<server path>' and \"<server path>\" are gone"),
    ("see `/srv/x/run.json`.", "see `<server path>`."),
    ("[/srv/a] {/srv/b}", "[<server path>] {<server path>}"),
    # a colon, a parenthesis or a dot inside a path is the path's: hidden whole
    ("/srv/a:b/c.png: gone", "<server path>: gone"),
    ("/srv/set(1)/x.tar.gz), then", "<server path>), then"),
    ("/srv/data/ is empty", "<server path> is empty"),
    # no absolute path of this (POSIX) server: left as written, no part of it scrubbed
    ("C:\\Users\\me\\x.png: not found", "C:\\Users\\me\\x.png: not found"),
    ("C:/Users/me/x.png: not found", "C:/Users/me/x.png: not found"),
    ("4/36 shards, a/b, redis://h:1/0: down", "4/36 shards, a/b, redis://h:1/0: down"),
    ("a / b, /: and /.", "a / b, /: and /."),
    # this API's routes, named as the way to go on, with the punctuation after them
    ("or POST /v1/batches) to queue them", "or POST /v1/batches) to queue them"),
    ("POST /v1/batches: refused", "POST /v1/batches: refused"),
    ("see GET /v1/batches/status.", "see GET /v1/batches/status."),
    ("(GET /v1/jobs, /v1/jobs/status)", "(GET /v1/jobs, /v1/jobs/status)"),
    ("/v1/batches/x: no such route", "<server path>: no such route"),
]
# gaps of the rewrite above: each left part of a server path visible (the comment says what leaked before)
SCRUB_GAPS = [
    # a file URL, or any URL without a host (`scheme:/path`, `scheme:///path`): the whole path was answered
    ("file:///srv/secret/x.png: gone", "file://<server path>: gone"),
    ("file:/srv/secret/x.png: gone", "file:<server path>: gone"),
    ("file://localhost/srv/secret/x.png", "file://localhost<server path>"),
    ("redis unix:///var/run/redis.sock: refused", "redis unix://<server path>: refused"),
    ("out:/srv/x: exists", "out:<server path>: exists"),
    # a home folder (`~/x`, `~user/x`): answered whole, the user's name with it
    ("~/models/x.pt: not found", "<server path>: not found"),
    ("cannot read ~svc/models/x.pt.", "cannot read <server path>."),
    # a quoted path with a space (Python's `repr` of a path, an OSError's text): ` photos/x.png'` was left
    ("[Errno 2] No such file or directory: '/srv/my photos/x.png'",
     "[Errno 2] No such file or directory: '<server path>'"),
    ("PosixPath('/srv/my photos/x.png')", "PosixPath('<server path>')"),
    ("['/srv/a b', \"/srv/it's here\"]", "['<server path>', \"<server path>\"]"),
    ("see `/srv/my run/run.json`.", "see `<server path>`."),
    ("'/srv/it's.png' is gone", "'<server path>' is gone"),
    ('"/srv/a\\"b c": gone', '"<server path>": gone'),
    ("'file:///srv/my photos/x.png'", "'file://<server path>'"),
    # an unquoted path whose folders have a space (`{path}: ...`, the library's way): ` photos/x.png` was left
    ("cannot open /srv/my photos/x.png: permission denied", "cannot open <server path>: permission denied"),
    ("/srv/my models/v 2/config.yaml: config file not found", "<server path>: config file not found"),
    # ... but not over punctuation, a ratio or a word without a slash: the message's own
    ("read /srv/a, b/c and /srv/d 4/36 km/h", "read <server path>, b/c and <server path> 4/36 km/h"),
]
# what is not a server path, and stays as written
NOT_SCRUBBED = [
    "redis://h:1/0 is down", "http://example.com/srv/x", "s3://bucket/key", "C:/x.png and C:\\x.png",
    "4/36 shards at 5 km/h", "~4/36", "POST /v1/batches: refused", "a/b and c/d",
    "'a/b c' and 'runs/x'", "'/' is the root, \"/\" and `/` too", "see `/v1/batches` or '/v1/jobs/status'",
]


@pytest.mark.parametrize(("message", "said"), SCRUBS, ids=[m for m, _ in SCRUBS])
def test_a_scrubbed_message_hides_each_server_path_and_keeps_the_punctuation_after_it(message, said):
    """`sigma.api.errors.SERVER_PATH` ran a path to the next space: `cannot open /srv/x.png: permission denied`
    was answered `cannot open <server path> permission denied`, and a comma, a period ending the sentence, a closing
    parenthesis or backtick after a path went with it. Now the path ends before that punctuation, a colon or a
    parenthesis inside a path is still hidden with it, and the API's routes are still said."""
    from sigma.api.errors import scrubbed

    assert scrubbed(message) == said


@pytest.mark.parametrize(("message", "said"), SCRUB_GAPS, ids=[m for m, _ in SCRUB_GAPS])
def test_a_scrubbed_message_hides_file_urls_home_folders_and_paths_with_spaces(message, said):
    """`SERVER_PATH` began a path only at a `/` after no colon or slash and ended it at the first space: a file URL
    (`file:///srv/x`), a home folder (`~user/x`) were answered whole, and a path with a space in a folder's name
    kept all after the space (`'/srv/my photos/x.png'` answered `'<server path> photos/x.png'`), quoted or not.
    Now a URL without a host keeps its scheme and hides its path, a home folder is hidden with its user, a quoted
    path is hidden to its closing quote and an unquoted one over each following word that holds a slash."""
    from sigma.api.errors import scrubbed

    assert scrubbed(message) == said


@pytest.mark.parametrize("message", NOT_SCRUBBED)
def test_what_is_not_a_server_path_is_not_scrubbed(message):
    """A URL with a host names another machine's path (a Redis database's number), a Windows path none of this
    POSIX server's, `4/36`, `km/h` and the caller's relative names no folder of the server: all left as written."""
    from sigma.api.errors import scrubbed

    assert scrubbed(message) == message


def test_a_config_value_of_30_days_is_said_whole_in_a_refusal_not_in_exponent_form(monkeypatch):
    """`{x:g}` said a configured 30 days (2,592,000 s, the most a duration may be) as `2.592e+06`, which reads as
    another number and is no value one would write back into the config. Config values in messages are now said
    with all their digits (`:.15g`): `worker.batch_timeout_s=2592000`."""
    from sigma.service.fleet import check_batch_timeout

    monkeypatch.setenv("SIGMA_MODEL_LOCK_WAIT_S", "1")
    with pytest.raises(ConfigError) as refused:
        check_batch_timeout(2_592_000.0, 2_592_000.0)
    message = str(refused.value)
    assert "worker.batch_timeout_s=2592000 is not above worker.run_read_retry_s=2592000" in message, message
    assert "= 2592001 s" in message and "e+06" not in message, message


@pytest.mark.parametrize("root_path", ["", "/api"])
def test_options_asterisk_is_recognised_behind_a_root_path(root_path):
    # uvicorn --root-path /api hands `OPTIONS *` on as raw_path b"/api*": it must still be the server-wide OPTIONS,
    # and a route's path behind the root must still reach the app
    import asyncio

    from sigma.api.middleware import ServerTargets

    sent: list[dict] = []

    async def inner(scope: dict, receive, send) -> None:
        await send({"type": "inner"})

    async def send(message: dict) -> None:
        sent.append(message)

    async def call(method: str, target: str) -> dict:
        sent.clear()
        scope = {"type": "http", "method": method, "raw_path": (root_path + target).encode(), "root_path": root_path}
        await ServerTargets(inner)(scope, None, send)
        return sent[0]

    assert asyncio.run(call("OPTIONS", "*"))["status"] == 200
    assert asyncio.run(call("GET", "*"))["status"] == 400
    assert asyncio.run(call("OPTIONS", "/healthz")) == {"type": "inner"}


@pytest.mark.parametrize("field, value", [("progress_at", True), ("since", True), ("count", True), ("last", "NaN"),
                                          ("progress_at", "-Infinity"), ("count", 1.5), ("mark", "3")])
def test_a_deferral_record_holding_a_bool_or_no_finite_number_is_counted_afresh(redis_server, tmp_path, field,
                                                                                 value):
    """A task's deferral record (in real Redis) with `true` for a time was read as 1.0 (a bool is an int to Python):
    the first deferral at 1970-01-01, the task idle for decades and dead-lettered `run_locked_too_long` at its next
    deferral; `NaN` made an idle time no cap is ever below. Such a record is no record of ours: counted afresh."""
    import json

    from sigma.service.deferral import note_deferral
    from sigma.service.keys import Keys

    client = redis_server.client()
    keys = Keys(f"defer-{field}-{abs(hash(str(value)))}")
    entry = "1-0"
    first = note_deferral(client, keys, entry, tmp_path, "held", 3600.0, worker="w1")
    assert first.count == 1 and first.idle_s == 0
    raw = client.get(keys.batch_task_deferred(entry)).decode()
    text = raw.replace(f'"{field}": {json.dumps(json.loads(raw)[field])}', f'"{field}": {json.dumps(value)}'
                       if not (isinstance(value, str) and value in ("NaN", "-Infinity")) else f'"{field}": {value}')
    assert text != raw
    client.set(keys.batch_task_deferred(entry), text)
    record = note_deferral(client, keys, entry, tmp_path, "held", 3600.0, worker="w1")
    assert record.count == 1 and record.idle_s == 0 and record.since == record.last, record
