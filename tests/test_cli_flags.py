"""Command-line flags that did nothing, or took any number: each now does what it says or is one line, refused.

Through the real CLI in subprocesses (and real Redis and HTTP where a server runs): `sigma serve api --annotator`
started an API as if the flag were not there; `sigma worker --batch --annotator/--max-batch-size` consumed batch
tasks with the run's own settings (and so did its --set worker.*); `sigma synth` ignored the flags of its other
mode; integer flags no config field bounds (`sigma report --limit`, `sigma synth -n`) took `-5` or `1e30`; an
annotator option spelt two ways (`2.24e2`, `224`) made two batch runs, and `sigma annotate` / `sigma eval` recorded it
as typed; every service mode took the worker.* settings it never reads (and the batch worker ignored worker.consumer).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servicekit import TESTS, base_env, free_port

ONE_LINE = "sigma: error [bad_arguments]: "
# How long a started `sigma` may take to say what a test waits for. Each wait ends on its condition, so this costs a
# passing run nothing; it was 60 s, and on a loaded machine (2 cores, a CI run and others' tests beside) a worker's
# imports alone took longer: the shared-limits test and its neighbours failed now and then with nothing wrong.
STARTUP_S = 300


def sigma_cli(*args: str, timeout: float = STARTUP_S,
              redis_url: str = "redis://127.0.0.1:1/0") -> subprocess.CompletedProcess:
    """The real CLI; an unreachable Redis by default (a command that waits for it instead of refusing times out)."""
    return subprocess.run([sys.executable, "-m", "sigma", *args], capture_output=True, text=True, timeout=timeout,
                          env=base_env(redis_url), cwd=str(TESTS.parent), check=False)


def assert_refused(proc: subprocess.CompletedProcess, *needles: str, code: str = "bad_arguments") -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    assert proc.stderr.startswith(f"sigma: error [{code}]: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and all(n in proc.stderr for n in needles), (needles, proc.stderr)


@pytest.mark.parametrize("args, needles", [
    (["serve", "api", "--annotator", "pixel-diff"], ["--annotator goes with `sigma serve all`", "api.annotators"]),
    (["worker", "--batch", "--annotator", "pixel-diff"], ["--annotator: not with --batch"]),
    (["worker", "--batch", "--max-batch-size", "4"], ["--max-batch-size: not with --batch"]),
    (["worker", "--batch", "--annotator", "sigma-lite", "--max-batch-size", "4"],
     ["--annotator and --max-batch-size: not with --batch"]),
    (["worker", "--batch", "--set", "worker.annotator=sigma-lite"], ["--set worker.annotator: not with --batch"]),
    (["worker", "--batch", "--set", "worker.max_batch_size=4", "--set", "worker.options.threshold=0.1"],
     ["--set worker.max_batch_size and --set worker.options.threshold: not with --batch", "sigma batch submit"]),
    # (the dotted and the whole form of one section in one command line are two sets of one place: invalid_config)
    (["worker", "--batch", "--set", "worker.max_wait_ms=50", "--set", "worker.max_rss_mb=500",
      "--set", "worker.restart_window_s=5"],
     ["--set worker.max_wait_ms and --set worker.restart_window_s: not with --batch",
      "gathers no API jobs",
      "only `sigma serve all` restarts"]),
    (["worker", "--batch", "--set", "worker.max_restarts=3"], ["--set worker.max_restarts: not with --batch",
                                                               "only `sigma serve all` restarts"]),
    (["worker", "--set", "worker.run_read_retry_s=1", "--set", "worker.restart_window_s=5"],
     ["--set worker.run_read_retry_s and --set worker.restart_window_s: not with `sigma worker`",
      "only `sigma worker --batch` reads a run's run.json", "only `sigma serve all` restarts"]),
    (["serve", "api", "--set", "worker.max_batch_size=16"],
     ["--set worker.max_batch_size: not with `sigma serve api`: it starts no worker"]),
    (["serve", "all", "--set", "worker.run_read_retry_s=1"],
     ["--set worker.run_read_retry_s: not with `sigma serve all`: only `sigma worker --batch`"]),
    (["worker", "--set", "api.max_batch_tasks=5"],
     ["--set api.max_batch_tasks: not with `sigma worker`: api.* and auth.* are the API's settings, read by "
      "`sigma serve api` and `sigma serve all` only"]),
    (["worker", "--set", "auth.allow_anonymous=true", "--set", "api={wait_timeout_s: 5}"],
     ["--set auth.allow_anonymous and --set api: not with `sigma worker`: api.* and auth.* are the API's"]),
    (["worker", "--batch", "--set", "api.upload_check=full", "--set", "api.align=true"],
     ["--set api.upload_check and --set api.align: not with --batch: api.* and auth.* are the API's",
      "each run's own config names io.align"]),
    (["worker", "--set", "limits.max_queue_length=5", "--set", "limits.retry_after_s=3"],
     ["--set limits.max_queue_length and --set limits.retry_after_s: not with `sigma worker`: "
      "limits.max_request_bytes, "
      "max_queue_length, retry_after_s and max_bytes_in_flight bound what the API admits, read by `sigma serve api` "
      "and `sigma serve all` only"]),
    (["worker", "--batch", "--set", "limits.max_pixels=100", "--set", "limits.max_image_bytes=5"],
     ["--set limits.max_pixels and --set limits.max_image_bytes: not with --batch: each run's own config names its "
      "limits (`sigma batch submit --set io.limits.KEY=VALUE`)"]),
    (["serve", "api", "--set", "limits.max_json_depth=50"],
     ["--set limits.max_json_depth: not with `sigma serve api`: limits.max_json_depth bounds the results a worker "
      "writes, read by `sigma worker` and `sigma serve all` only"]),
], ids=["serve-api-annotator", "worker-batch-annotator", "worker-batch-max-batch-size", "worker-batch-both",
        "worker-batch-set-annotator", "worker-batch-set-batch-size-options", "worker-batch-set-wait-restart",
        "worker-batch-set-restarts", "worker-set-batch-and-restart", "serve-api-set-worker", "serve-all-set-run-read",
        "worker-set-api", "worker-set-auth-and-api-section", "worker-batch-set-api-align", "worker-set-api-limits",
        "worker-batch-set-limits", "serve-api-set-worker-limit"])
def test_a_serve_flag_the_mode_does_not_use_is_refused_not_ignored(args, needles):
    """`sigma serve api --annotator X` served as if it were not given (the API starts no worker; what requests may
    name is api.annotators), and `sigma worker --batch` took --annotator / --max-batch-size, and --set worker.annotator
    / worker.max_batch_size / worker.options, and consumed batch tasks with each run's own (it waited for Redis here,
    so without the refusal the command times out). So did every other worker.* setting a mode never reads: the batch
    worker's max_wait_ms and restart_* (only `sigma serve all` restarts a worker), `sigma worker`'s
    run_read_retry_s and restart_*, any worker.* on `sigma serve api`, run_read_retry_s on `sigma serve all`; and
    a worker's api.* and auth.* (the API's settings: `sigma worker --set api.max_batch_tasks=5` looked as if it took
    effect), but for the api.align `sigma worker` reads (the batch worker aligns as each run says); and the limits.*
    one side only reads: a worker's --set limits.max_queue_length (what the API admits), a batch worker's any limits.*
    (each run's own io.limits; an alias as its field), `sigma serve api`'s limits.max_json_depth (a worker's)."""
    port = ["--port", "1"] if args[0] == "serve" else []
    try:
        proc = sigma_cli(*args, *port)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sigma {' '.join(args)} ran for {STARTUP_S} s instead of refusing the flag")
    assert_refused(proc, *needles)


def test_a_batch_worker_says_once_which_shared_worker_settings_it_does_not_use(redis_server, tmp_path):
    """A config file or SIGMA__WORKER__* shared by both worker kinds may set worker.annotator / max_batch_size /
    options for `sigma worker`; `sigma worker --batch` started and said nothing while each run's own config picked
    them. It now starts (those settings are not wrong) and says once on stderr which it does not use; the documented
    configs/serve.yaml (defaults there) says nothing."""
    from servicekit import Proc, base_env, wait_until

    env = {**base_env(redis_server.url), "SIGMA__WORKER__ANNOTATOR": "sigma-lite",
           "SIGMA__WORKER__MAX_BATCH_SIZE": "4", "SIGMA__REDIS__KEY_PREFIX": "unused-settings"}
    for name, args, proc_env in (("shared", [], env),
                                 ("example", ["--config", "configs/serve.yaml"], base_env(redis_server.url))):
        proc = Proc(["worker", "--batch", "--set", "queue.block_ms=100", *args], proc_env, tmp_path / f"{name}.log")
        try:
            wait_until(lambda p=proc: "consuming" in p.output() or not p.alive(), STARTUP_S, f"{name} worker up", 0.1)
        finally:
            status = proc.stop(timeout=20)
        out = proc.output()
        assert status == 0 and "Traceback" not in out, out
        warnings = [line for line in out.splitlines() if line.startswith("sigma: warning:")]
        if name == "shared":
            assert len(warnings) == 1, out
            assert "does not use worker.annotator='sigma-lite', worker.max_batch_size=4" in warnings[0], out
            assert "each run's own config names its annotator" in warnings[0], out
        else:
            assert warnings == [], out


def test_each_service_mode_says_once_which_worker_settings_it_does_not_use(redis_server, tmp_path):
    """A config file or SIGMA__WORKER__* shared by a deployment may set worker settings one process reads and another
    never does: `sigma worker` started and said nothing of worker.run_read_retry_s (only the batch worker reads it) or
    worker.max_restarts (only `sigma serve all` does), `sigma worker --batch` of worker.max_wait_ms (max_rss_mb it
    reads: it recycles itself between shards), and `sigma serve api` of any worker.* (it starts no worker). Each now
    starts and says once on stderr which it does not use. `sigma serve all` passes its --set worker.restart_* to its
    worker, which neither refuses nor repeats them.
    The batch worker ignored worker.consumer too (it named itself <host>-<pid>): it is now its consumer name."""
    import httpx
    from servicekit import Proc, ServiceUnderTest, base_env, wait_until

    prefix = "unused-modes"
    env = {**base_env(redis_server.url), "SIGMA__REDIS__KEY_PREFIX": prefix, "SIGMA__WORKER__MAX_RESTARTS": "2",
           "SIGMA__WORKER__RUN_READ_RETRY_S": "1", "SIGMA__WORKER__MAX_WAIT_MS": "5",
           "SIGMA__WORKER__MAX_RSS_MB": "900", "SIGMA__WORKER__CONSUMER": "named-by-env"}
    r = redis_server.client()

    def started(args: list[str], up, name: str) -> list[str]:
        proc = Proc([*args, "--set", "queue.block_ms=100"], env, tmp_path / f"{name}.log")
        try:
            wait_until(lambda: up(proc) or not proc.alive(), STARTUP_S, f"{name} up\n{proc.output()}", 0.1)
            assert proc.alive(), proc.output()
        finally:
            status = proc.stop(timeout=20)
        out = proc.output()
        assert status == 0 and "Traceback" not in out and "sigma: error" not in out, out
        return [line for line in out.splitlines() if line.startswith("sigma: warning:")]

    batch = started(["worker", "--batch"], lambda p: r.exists(f"{prefix}:batch:tasks:worker:named-by-env"), "batch")
    assert len(batch) == 1 and batch[0].startswith("sigma: warning: sigma worker --batch does not use "
                                                   "worker.max_wait_ms=5, worker.max_restarts=2 "
                                                   "(from SIGMA__WORKER__MAX_WAIT_MS and "
                                                   "SIGMA__WORKER__MAX_RESTARTS): "), batch
    online = started(["worker", "--annotator", "pixel-diff"], lambda p: r.hget(f"{prefix}:worker:named-by-env",
                                                                               "model_loaded") == b"1", "online")
    assert len(online) == 1 and "sigma worker does not use worker.run_read_retry_s=1.0, worker.max_restarts=2 " \
        "(from SIGMA__WORKER__RUN_READ_RETRY_S and SIGMA__WORKER__MAX_RESTARTS): only `sigma worker --batch` reads a " \
        "run's run.json" in online[0]
    def healthy(s: ServiceUnderTest) -> bool:
        try:
            return s.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    s = ServiceUnderTest(redis_server, tmp_path)
    api = started(["serve", "api", "--port", str(s.port), "--log-level", "warning"], lambda p: healthy(s), "api")
    s.http.close()
    assert len(api) == 1 and "sigma serve api does not use worker.max_wait_ms=5, worker.consumer='named-by-env', " \
        "worker.run_read_retry_s=1.0, worker.max_rss_mb=900, worker.max_restarts=2" in api[0], api
    assert "it starts no worker" in api[0]
    env.pop("SIGMA__WORKER__CONSUMER")
    s = ServiceUnderTest(redis_server, tmp_path)
    s.http.close()
    everything = started(["serve", "all", "--port", str(s.port), "--log-level", "warning", "--set",
                          "worker.restart_backoff_s=0.2", "--set", "worker.max_restarts=4"],
                         lambda p: any(r.hget(k, "model_loaded") == b"1" for k in r.scan_iter(f"{prefix}:worker:*")),
                         "all")
    assert everything == ["sigma: warning: sigma serve all does not use worker.run_read_retry_s=1.0 (from "
                          "SIGMA__WORKER__RUN_READ_RETRY_S): only `sigma worker --batch` reads a run's run.json"], \
        everything


def test_the_unused_worker_settings_warning_cuts_each_value(tmp_path):
    """The warning of a mode's unused worker settings wrote each value whole: a deployment's worker.options (a
    prompt list, a config file of megabytes) made `sigma worker --batch` print it all in one stderr line. Each
    value is now cut to a few dozen characters, its full length said."""
    env = {**base_env("redis://127.0.0.1:1/0"), "SIGMA__WORKER__OPTIONS__PROMPT": "x" * 100_000}
    with open(tmp_path / "err", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sigma", "worker", "--batch"], stdout=subprocess.DEVNULL,
                                stderr=err, env=env, cwd=str(TESTS.parent))
        try:
            deadline = time.monotonic() + STARTUP_S    # the warning first; then it waits for the unreachable Redis
            while "\n" not in (tmp_path / "err").read_text() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    warning = (tmp_path / "err").read_text().splitlines()[0]
    assert warning.startswith("sigma: warning: sigma worker --batch does not use worker.options={'prompt': 'xxx"), \
        warning[:300]
    assert "(100014 characters) (from SIGMA__WORKER__OPTIONS__PROMPT)" in warning and len(warning) < 600, \
        warning[:300]


def stderr_until_it_waits_for_redis(args: list[str], env: dict[str, str], path,
                                    marker: str = "cannot reach Redis") -> list[str]:
    """The stderr lines of `sigma ARGS` up to its whole `marker` line (by default 'cannot reach Redis': it started
    and waits), then stopped."""
    def seen() -> bool:
        text = path.read_text()
        return marker in text and "\n" in text[text.index(marker):]

    with open(path, "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sigma", *args], stdout=subprocess.DEVNULL, stderr=err,
                                env=env, cwd=str(TESTS.parent))
        try:
            deadline = time.monotonic() + STARTUP_S
            while not seen() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    lines = path.read_text().splitlines()
    assert any(marker in line for line in lines), (
        f"sigma {' '.join(args)}: {'exited' if proc.returncode not in (None, -signal.SIGTERM) else 'still starting'} "
        f"without {marker!r} (returncode {proc.returncode})", lines)
    return lines


def test_a_worker_takes_the_api_align_it_reads_and_says_which_shared_api_settings_it_does_not_use(tmp_path):
    """The worker's side of `sigma serve api` warning of a shared worker.*: api.* from a config file or SIGMA__API__*
    (one file may serve every process) starts the worker and is said once, on its own line; auth.* (keys, one
    environment for all) is not said. `--set api.align=true` is not refused: `sigma worker` decodes with it."""
    env = {**base_env("redis://127.0.0.1:1/0"), "SIGMA__API__PORT": "9000", "SIGMA__AUTH__ALLOW_ANONYMOUS": "true"}
    online = stderr_until_it_waits_for_redis(["worker", "--set", "api.align=true"], env, tmp_path / "online")
    warnings = [line for line in online if line.startswith("sigma:")]
    assert warnings == ["sigma: warning: sigma worker does not use api.port=9000 (from "
                        "SIGMA__API__PORT): api.* and auth.* are the API's settings, read by `sigma serve api` and "
                        "`sigma serve all` only"], online
    env["SIGMA__API__ALIGN"] = "true"
    batch = stderr_until_it_waits_for_redis(["worker", "--batch"], env, tmp_path / "batch")
    warnings = [line for line in batch if line.startswith("sigma:")]
    assert len(warnings) == 1 and warnings[0].startswith("sigma: warning: sigma worker --batch does not use "
                                                         "api.port=9000, api.align=True (from "
                                                         "SIGMA__API__PORT and SIGMA__API__ALIGN)"), batch
    assert "each run's own config names io.align" in warnings[0] and "auth" not in warnings[0].split("(")[0], batch


@pytest.mark.parametrize("how", ["--config", "SIGMA_SERVE_CONFIG"])
def test_the_unused_settings_warning_names_the_file_and_the_variables_they_came_from(tmp_path, how):
    """The warning said "(from the config file or SIGMA__WORKER__*)" whatever gave the values: neither the file's name
    (a --config, or $SIGMA_SERVE_CONFIG's) nor the variable. Now each line names the file and the variables its values
    came from; a variable that gives a whole section replaces the file's, which is then not named."""
    config = tmp_path / "prod-serve.yaml"
    config.write_text("worker:\n  max_wait_ms: 7\n  options: {threshold: 0.3}\napi:\n  port: 9001\n")
    env = {**base_env("redis://127.0.0.1:1/0"), "SIGMA__WORKER__MAX_RESTARTS": "2", "SIGMA__WORKER__OPTIONS__FOO": "1"}
    args, named = ["worker", "--batch", "--config", str(config)], str(config)
    if how == "SIGMA_SERVE_CONFIG":
        args, named = args[:2], f"{config} (SIGMA_SERVE_CONFIG)"
        env[how] = str(config)
    lines = stderr_until_it_waits_for_redis(args, env, tmp_path / "err")
    warnings = [line.split(": each run")[0].split(": api.* and")[0] for line in lines
                if line.startswith("sigma: warning:")]
    assert warnings == [
        "sigma: warning: sigma worker --batch does not use worker.options={'threshold': 0.3, 'foo': 1}, "
        f"worker.max_wait_ms=7, worker.max_restarts=2 (from {named}, SIGMA__WORKER__OPTIONS__FOO and "
        "SIGMA__WORKER__MAX_RESTARTS)",
        f"sigma: warning: sigma worker --batch does not use api.port=9001 (from {named})"], lines
    env = {key: value for key, value in env.items() if not key.startswith("SIGMA__WORKER__")}
    env["SIGMA__WORKER"] = "{max_restarts: 3}"       # the file's worker section replaced whole
    lines = stderr_until_it_waits_for_redis(args, env, tmp_path / "err2")
    assert any(line.startswith("sigma: warning: sigma worker --batch does not use worker.max_restarts=3 (from "
                               "SIGMA__WORKER):") for line in lines), lines


def test_shared_limits_only_the_other_side_reads_are_said_once_and_the_shared_image_limits_are_taken(tmp_path):
    """limits.* from a shared config file or SIGMA__LIMITS__* (one file for every process): a worker said nothing of
    the API's limits.max_queue_length / retry_after_s it never reads, nor `sigma serve api` of the worker's
    limits.max_json_depth. Each now starts and says them once, on a line of their own; the image limits both read
    (limits.max_pixels) are not said by `sigma worker` and are taken from its --set, and the batch worker (each run's
    own io.limits) says every one."""
    env = {**base_env("redis://127.0.0.1:1/0"), "SIGMA__LIMITS__MAX_QUEUE_LENGTH": "5",
           "SIGMA__LIMITS__RETRY_AFTER_S": "3", "SIGMA__LIMITS__MAX_PIXELS": "1000000",
           "SIGMA__LIMITS__MAX_JSON_DEPTH": "50"}
    online = stderr_until_it_waits_for_redis(["worker", "--set", "limits.max_pixels=2000000"], env, tmp_path / "on")
    warnings = [line for line in online if line.startswith("sigma:")]
    assert warnings == ["sigma: warning: sigma worker does not use limits.max_queue_length=5, limits.retry_after_s=3 "
                        "(from SIGMA__LIMITS__MAX_QUEUE_LENGTH and SIGMA__LIMITS__RETRY_AFTER_S): "
                        "limits.max_request_bytes, max_queue_length, retry_after_s and max_bytes_in_flight bound what "
                        "the API admits, read by `sigma serve api` and `sigma serve all` only"], online
    batch = stderr_until_it_waits_for_redis(["worker", "--batch"], env, tmp_path / "batch")
    warnings = [line for line in batch if line.startswith("sigma:")]
    assert len(warnings) == 1 and warnings[0].startswith(
        "sigma: warning: sigma worker --batch does not use limits.max_queue_length=5, limits.retry_after_s=3, "
        "limits.max_pixels=1000000, limits.max_json_depth=50 (from SIGMA__LIMITS__MAX_QUEUE_LENGTH, "
        "SIGMA__LIMITS__RETRY_AFTER_S, SIGMA__LIMITS__MAX_PIXELS and SIGMA__LIMITS__MAX_JSON_DEPTH): each run's own "
        "config names its limits"), batch
    api = stderr_until_it_waits_for_redis(["serve", "api", "--port", str(free_port()), "--log-level", "warning"], env,
                                          tmp_path / "api", marker="sigma serve api does not use")
    warnings = [line for line in api if line.startswith("sigma:")]
    assert warnings == ["sigma: warning: sigma serve api does not use limits.max_json_depth=50 (from "
                        "SIGMA__LIMITS__MAX_JSON_DEPTH): limits.max_json_depth bounds the results a worker writes, "
                        "read by `sigma worker` and `sigma serve all` only"], api


def test_serve_all_serves_its_workers_annotator_or_says_the_settings_disagree(redis_server, tmp_path):
    """`sigma serve all --annotator odd-keys` started an odd-keys worker behind an API that refused odd-keys (422
    unknown_annotator: api.annotators was [pixel-diff]) and queued the default's jobs for no worker. The API now
    serves the worker's annotator when api.annotators is not set, and a set api.annotators without it is refused."""
    from servicekit import Proc, ServiceUnderTest, make_pair, wait_until

    s = ServiceUnderTest(redis_server, tmp_path)
    s.overrides = [o for o in s.overrides if not o.startswith("api.annotators=")]
    proc = Proc(["serve", "all", "--port", str(s.port), "--log-level", "warning", "--plugin", "service_plugins",
                 "--annotator", "odd-keys", *s.sets()], s.env, tmp_path / "all.log")
    try:
        wait_until(lambda: s.http.get("/healthz").status_code == 200, STARTUP_S, f"serve all up\n{proc.output()}", 0.2)
        original, edited = make_pair(seed=4)
        resp = s.submit(original, edited, data={"instruction": "an odd one"}, path="/v1/annotate")
        assert resp.status_code == 200 and resp.json()["result"]["annotator"] == "odd-keys", resp.text
    finally:
        assert proc.stop(timeout=20) == 0, proc.output()
        s.http.close()
    disagree = sigma_cli("serve", "all", "--port", "1", "--annotator", "pixel-diff", "--set",
                         "api.annotators=[slow-diff]", redis_url=redis_server.url)
    assert_refused(disagree, "its worker serves 'pixel-diff'", "api.annotators ['slow-diff']", code="invalid_config")


def test_a_synth_flag_the_mode_does_not_use_is_refused_not_ignored(tmp_path):
    """`sigma synth --out DIR --max-side 64 --scales 2 --latent-edits 3 --no-vae` wrote pairs as if those cache
    flags were not there, and `sigma synth --build-cache DIR -n 5 --out X --cache C data.crop=256` built the cache
    and wrote no pairs: each is now one bad_arguments line naming the flags, nothing written. What a mode uses is
    taken: the cache flags with --build-cache (index.json), and --photos beside --cache (it was dropped)."""
    import json

    from test_synth import make_photos

    photos = make_photos(tmp_path / "photos")
    out, cache, other = tmp_path / "pairs", tmp_path / "cache", tmp_path / "other"
    for args, needle in (
            (["--out", str(out), "--max-side", "64", "--scales", "2", "--latent-edits", "3", "--no-vae"],
             "--max-side, --scales, --latent-edits and --no-vae: only with --build-cache DIR"),
            (["--out", str(out), "--no-vae"], "--no-vae: only with --build-cache DIR"),
            (["--out", str(out), "--device", "cpu"], "--device: only with --build-cache DIR"),
            (["--build-cache", str(cache), "--no-vae", "-n", "5", "--out", str(out), "--cache", str(other),
              "data.crop=256"],
             "--out, -n, --cache and data.crop=256: not with --build-cache DIR"),
            (["--build-cache", str(cache), "--no-vae", "-n", "16"], "-n: not with --build-cache DIR")):
        proc = sigma_cli("synth", "--photos", str(photos), *args)
        assert_refused(proc, needle)
        assert not out.exists() and not cache.exists() and not other.exists(), args
    # where TAEF2 runs: a name torch does not know is refused before any photo is read or file written
    proc = sigma_cli("synth", "--photos", str(photos), "--build-cache", str(cache), "--device", "tpu0")
    assert_refused(proc, "device 'tpu0' is not a torch device", code="invalid_config")
    proc = sigma_cli("synth", "--photos", str(photos), "--build-cache", str(cache), "--no-vae", "--device", "cpu")
    assert_refused(proc, "--device: not with --no-vae")
    assert not cache.exists()
    proc = sigma_cli("synth", "--build-cache", str(cache), "--photos", str(photos), "--no-vae", "--max-side", "48",
                     "--latent-edits", "0", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((cache / "index.json").read_text())
    assert index["max_side"] == 48 and index["seed"] == 3 and len(index["files"]) >= 2, index
    # a progress bar over the photos (k/N), which --no-progress turns off; the build's last line stays
    n_photos = len(index["files"])
    assert f"{n_photos}/{n_photos}" in proc.stderr and "photo" in proc.stderr, proc.stderr[-500:]
    quiet = sigma_cli("synth", "--build-cache", str(tmp_path / "quiet"), "--photos", str(photos), "--no-vae",
                      "--max-side", "48", "--latent-edits", "0", "--no-progress")
    assert quiet.returncode == 0, quiet.stderr
    assert f"/{n_photos}" not in quiet.stderr and "cache done" in quiet.stderr, quiet.stderr[-500:]
    proc = sigma_cli("synth", "--out", str(out), "-n", "2", "--cache", str(cache), "--photos", str(photos),
                     "crop=32", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    written = (out / "synth_config.yaml").read_text()
    assert f"cache: {cache}" in written and f"photos: {photos}" in written, written
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 2


def test_a_cache_build_counts_what_it_cached_and_shows_no_bar_before_an_error(tmp_path):
    """The build's last line said "cache done: N photos" with N the photos found, the unreadable ones (left out of
    the index) included; and the bar was drawn ("0photo [00:00, ?photo/s]") before a folder-not-found error."""
    import json

    from test_synth import make_photos

    photos = make_photos(tmp_path / "photos")
    found = len([p for p in photos.iterdir() if p.is_file()]) + 1
    (photos / "zz_broken.png").write_bytes(b"not a png at all")
    proc = sigma_cli("synth", "--build-cache", str(tmp_path / "cache"), "--photos", str(photos), "--no-vae",
                     "--max-side", "48", "--latent-edits", "0")
    assert proc.returncode == 0, proc.stderr
    cached = len(json.loads((tmp_path / "cache" / "index.json").read_text())["files"])
    assert cached == found - 1
    assert f"cache done: {cached} photos" in proc.stderr and "1 unreadable left out" in proc.stderr, proc.stderr
    missing = sigma_cli("synth", "--build-cache", str(tmp_path / "cache2"), "--photos", str(tmp_path / "nowhere"),
                        "--no-vae")
    assert missing.returncode == 2 and "photo folder not found" in missing.stderr
    assert "photo/s" not in missing.stderr and "it/s" not in missing.stderr, missing.stderr


def test_one_option_spelt_two_ways_is_one_batch_run_recorded_as_the_annotator_reads_it(tmp_path):
    """`--set options.image_size=2.24e2` and `=224` ran the same annotator (its config converts the text), but run.json,
    config.yaml and the run hash took the options as written: two identical runs had two hashes, and a --resume with
    the other spelling was refused as another run. The options are now what the annotator's own config reads (only
    the keys given), before the run is hashed and recorded."""
    import json

    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))

    def batch_run(out: str, *sets: str, resume: bool = False) -> dict:
        args = [arg for item in sets for arg in ("--set", item)] + (["--resume"] if resume else [])
        proc = sigma_cli("batch", "run", str(tmp_path / "set"), "--out", str(tmp_path / out), "--workers", "0",
                         "--no-progress", *args, timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((tmp_path / out / "run.json").read_text())

    for annotator, spellings, recorded, yaml_lines in (
            ("sigma-lite", ("options.image_size=2.24e2", "options.image_size=224"), {"image_size": 224},
             "options:\n  image_size: 224\n"),
            ("pixel-diff", ("options.threshold=5e-2", "options.threshold=0.05"), {"threshold": 0.05},
             "options:\n  threshold: 0.05\n")):
        one, other = (batch_run(f"{annotator}-{i}", f"annotator={annotator}", spelt)
                      for i, spelt in enumerate(spellings))
        assert one["run_hash"] == other["run_hash"], (one["run_hash"], other["run_hash"])
        assert one["config"]["options"] == other["config"]["options"] == recorded, one["config"]["options"]
        assert yaml_lines in (tmp_path / f"{annotator}-0" / "config.yaml").read_text()
        again = batch_run(f"{annotator}-1", f"annotator={annotator}", spellings[0], resume=True)
        assert again["run_hash"] == other["run_hash"]


def test_annotate_and_eval_record_the_options_as_the_annotator_read_them(tmp_path):
    """`sigma annotate` and `sigma eval` ran sigma-lite at 224 for `--set options.image_size=2.24e2` (its config
    converts the text) but wrote '2.24e2' in config.yaml and in result.json's / metrics.json's config: the record said
    what was typed, not what ran. They now record the options as the annotator's own config reads them (only the
    keys given), as a batch run does; a bad option is still one error line, and nothing is written."""
    import json

    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))
    out = tmp_path / "annotated"
    proc = sigma_cli("annotate", "--example", "-o", str(out), "--annotator", "sigma-lite", "--set",
                     "options.image_size=2.24e2", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "options:\n  image_size: 224\n" in (out / "config.yaml").read_text()
    assert json.loads((out / "result.json").read_text())["config"]["options"]["image_size"] == 224

    ev = tmp_path / "eval"
    proc = sigma_cli("eval", "--data", str(tmp_path / "set"), "--out", str(ev), "--annotator", "pixel-diff",
                     "--set", "options.threshold=5e-2", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "options:\n  threshold: 0.05\n" in (ev / "config.yaml").read_text()
    assert json.loads((ev / "metrics.json").read_text())["config"]["options"] == {"threshold": 0.05}

    for args in (["annotate", "--example", "-o", str(tmp_path / "bad-a"), "--annotator", "sigma-lite"],
                 ["eval", "--data", str(tmp_path / "set"), "--out", str(tmp_path / "bad-e"), "--annotator",
                  "sigma-lite"]):
        proc = sigma_cli(*args, "--set", "options.image_size=2.5e0x", timeout=240)
        # validated with the rest of the config, named by its key there (`AnnotatorSpec.options_model`)
        assert_refused(proc, "options.image_size: Input should be a valid integer", code="invalid_config")
        assert not (tmp_path / "bad-a").exists() and not (tmp_path / "bad-e").exists()


def test_integer_lists_take_exponent_notation_as_integer_fields_do(tmp_path):
    """`--set quality=1e1` was 10, but `perturb.jpeg_quality=[1e1, 95]` was "unable to parse string as an integer"
    (YAML 1.1 reads 1e1 as text, and only scalar integer fields were converted), in a YAML file too, and an
    annotator's options (a free mapping its own config validates later: `options.image_size=2.24e2`,
    `options.taps=[1e1]`) took no exponent at all. Lists, tuples and typed mappings of integers now take whole
    exponent notation, with a scalar's limits: not whole, or more than 4300 digits, is one line naming the item."""
    from test_synth import make_photos

    from sigma.config.loader import load_config
    from sigma.data.synth.engine import SynthConfig
    from sigma.errors import ConfigError
    from sigma.models.factory import make_config

    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "synth"
    proc = sigma_cli("synth", "--out", str(out), "-n", "1", "--photos", str(photos), "crop=48",
                     "perturb.jpeg_quality=[1e1, 9.5E+1]", "perturb.stack=[1e0, 3]", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    written = (out / "synth_config.yaml").read_text()
    assert "jpeg_quality:\n  - 10\n  - 95" in written and "stack:\n  - 1\n  - 3" in written, written
    for value, needle in (("[1.55e1, 95]", "perturb.jpeg_quality[0]=1.55e1: not a whole number, and "
                                           "perturb.jpeg_quality holds integers"),
                          ("[10, 1e5000]", "perturb.jpeg_quality[1]=1e5000: more than 4300 digits")):
        bad = tmp_path / f"bad{len(value)}"
        proc = sigma_cli("synth", "--out", str(bad), "-n", "1", "--photos", str(photos),
                         f"perturb.jpeg_quality={value}")
        assert_refused(proc, f"override {needle}", code="invalid_config")
        assert not bad.exists()
    # a YAML file, and an item that is a tuple's second element
    (tmp_path / "synth.yaml").write_text("perturb:\n  webp_quality: [3e1, 9e1]\n  stack: [1, 3.5e0]\n")
    with pytest.raises(ConfigError, match=r"synth.yaml: perturb.stack\[1\]=3.5e0: not a whole number"):
        load_config(SynthConfig, tmp_path / "synth.yaml")
    (tmp_path / "synth.yaml").write_text("perturb:\n  webp_quality: [3e1, 9e1]\n")
    assert load_config(SynthConfig, tmp_path / "synth.yaml").perturb.webp_quality == (30, 90)
    # the free mappings validated later: an annotator's options, a training config's model
    assert make_config({"backbone": {"kind": "dinov2", "taps": ["3e0", 6, "1.2e1"]}}).backbone.taps == [3, 6, 12]
    refused = sigma_cli("annotate", "--example", "--annotator", "feature-diff", "-o", str(tmp_path / "fd"),
                        "--set", "options.taps=[1e1, 1.5e0]")
    assert_refused(refused, "options.taps[1]=1.5e0: not a whole number, and options.taps holds integers",
                   code="invalid_config")
    (tmp_path / "annotate.yaml").write_text("annotator: sigma-lite\noptions: {image_size: 2.24e2}\n")
    done = sigma_cli("annotate", "--example", "-o", str(tmp_path / "lite"), "--config", str(tmp_path / "annotate.yaml"),
                     timeout=180)
    assert done.returncode == 0, done.stderr
    assert "image_size: 224" in (tmp_path / "lite" / "config.yaml").read_text()


def _integer_flags(parser):
    import argparse

    from sigma.cli.common import integer

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {where}", a) for where, a in _integer_flags(sub))
        elif action.type is integer:
            yield "/".join(action.option_strings), action


# integer flags whose value goes into a config field, which bounds it (`--set` and YAML say the same)
CONFIG_BACKED = {"batch run --shard-size", "batch run --batch-size", "batch run --workers", "batch run --procs",
                 "batch run --threads", "batch run --actors", "batch submit --shard-size", "batch submit --batch-size",
                 "batch submit --workers", "serve --port", "worker --max-batch-size"}


def test_every_integer_flag_no_config_field_bounds_has_a_stated_range(tmp_path):
    """`sigma report --limit 1e30` / `-5` and `sigma synth -n 1e30` were taken (the page, the pairs written until
    the disk was full; `-5` a config error far from the flag, or none); the range of a flag no config field bounds
    now lives on the flag: its --help states it, and a value outside is one bad_arguments line naming the flag."""
    import sigma.cli

    unbounded = []
    for name, action in _integer_flags(sigma.cli.build_parser()):
        if name in CONFIG_BACKED:
            continue
        bounds = getattr(action, "bounds", None)
        if bounds is None:
            unbounded.append(name)
        else:
            assert f"{bounds[0]} .. {bounds[1]}" in action.help or "2^63-1" in action.help, (name, action.help)
    assert not unbounded, unbounded
    run = tmp_path / "run"             # a real run folder: the report would be written, the synth pairs too
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))
    assert sigma_cli("batch", "run", str(tmp_path / "set"), "--out", str(run), "--annotator", "pixel-diff",
                     "--workers", "0", "--no-progress").returncode == 0
    for args, needle in ((["report", str(run), "--limit", "-5"], "argument --limit: -5: must be in 1 .. 10000"),
                         (["report", str(run), "--limit", "1e30"], "argument --limit: a number of 31 digits: must be "
                                                                   "in 1 .. 10000"),
                         (["report", str(run), "--thumb", "1e5"], "argument --thumb: 100000: must be in 16 .. 4096"),
                         (["batch", "status", str(run), "--failed-limit", "1e30"], "argument --failed-limit: a number"),
                         (["synth", "--out", str(tmp_path / "syn"), "-n", "1e30"], "argument -n: a number of 31 "
                                                                                    "digits: must be in 1 .. 100000"),
                         (["synth", "--out", str(tmp_path / "syn"), "-n", "-5"], "argument -n: -5: must be in 1"),
                         (["synth", "--build-cache", str(tmp_path / "cache"), "--latent-edits", "1e9"],
                          "argument --latent-edits: 1000000000: must be in 0 .. 16")):
        try:
            proc = sigma_cli(*args)
        except subprocess.TimeoutExpired:
            pytest.fail(f"sigma {' '.join(args)} ran instead of refusing the value")
        assert_refused(proc, needle)
    assert not (run / "report.html").exists() and not (tmp_path / "syn").exists() and not (tmp_path / "cache").exists()
    done = sigma_cli("report", str(run), "--limit", "1e1", "--thumb", "6.4e1")      # whole numbers in range: taken
    assert done.returncode == 0 and (run / "report.html").is_file(), done.stderr


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds a socket listening on TCP `port` (its own: another test's server on a port
    reused since `free_port` is not it)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":     # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    try:
        return any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def _children_of_serve(marker: bytes) -> list[int]:
    """The processes whose environment holds `marker` (`sigma serve all`'s worker children carry its pid)."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _environ_has(int(p.name), marker)]


def _environ_has(pid: int, entry: bytes) -> bool:
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


@pytest.mark.parametrize("bad, needles, code", [
    (["--set", "worker.options.dilate=2"], ["worker.options.dilate: Extra inputs"], "invalid_config"),
    (["--set", "worker.options.threshold=7"], ["worker.options.threshold: Input should be"], "invalid_config"),
    (["--set", "worker.annotator=nope"], ["its worker could not start", "'nope'"], "unknown_name"),
    (["--annotator=-x"], ["its worker could not start", "'-x'"], "unknown_name"),
    (["--set", "worker.plugins=[no_such_plugin_mod]"], ["worker.plugins", "no_such_plugin_mod"], "invalid_config"),
], ids=["option_removed", "option_out_of_range", "unknown_annotator", "dash_value", "plugin"])
def test_serve_all_refuses_what_its_worker_would_die_of_before_any_child_starts(bad, needles, code, tmp_path):
    """`sigma serve all` passed its worker's annotator, options and plugins on unchecked: the API came up, the child
    died of them (`dilate: Extra inputs are not permitted`, `Unknown annotator`, `--annotator -x`: expected one
    argument) and was restarted until worker.max_restarts. Now the server refuses them first: one stderr line,
    exit 2, no worker child started, none left behind."""
    from sigma.cli.serve import PARENT_ENV

    port = free_port()
    with open(tmp_path / "out", "w+") as out_fh, open(tmp_path / "err", "w+") as err_fh:
        proc = subprocess.Popen([sys.executable, "-m", "sigma", "serve", "all", "--port", str(port), "--set",
                                 "auth.allow_anonymous=true", *bad], env=base_env("redis://127.0.0.1:1/0"),
                                cwd=str(TESTS.parent), stdout=out_fh, stderr=err_fh, text=True,
                                start_new_session=True)
    # Decided on what the server does, not on how long it takes (it was `communicate(timeout=40)`: a refusal that
    # took longer to import on a loaded machine failed): it exits (the refusal, read below), or it serves (it listens
    # on its port, or a worker child of it runs), which is the bug; the deadline is only a backstop.
    marker = f"{PARENT_ENV}={proc.pid}".encode()
    served = ""
    deadline = time.monotonic() + STARTUP_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _children_of_serve(marker):
                served = "it started its worker"
            elif _listens(proc.pid, port):
                served = f"it listens on port {port}"
            if served:
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    out, err = (tmp_path / "out").read_text(errors="replace"), (tmp_path / "err").read_text(errors="replace")
    assert not served and proc.returncode is not None, (
        f"sigma serve all {' '.join(bad)} served instead of refusing: {served or f'still running after {STARTUP_S} s'}",
        err[-2000:])
    left = _children_of_serve(marker)
    assert_refused(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), *needles, code=code)
    assert "the worker (pid" not in err and left == [], (err, left)


def test_serve_all_hands_its_worker_values_that_start_with_a_dash():
    """The worker child's command line was rebuilt as `--config FILE --set ITEM`: a value starting with `-` (a config
    file `-serve.yaml`, `--set=-k=1`) was another flag to the child (`expected one argument`). Each now goes as
    `--flag=VALUE`, and the worker's parser reads back what the server's read."""
    from sigma.cli import build_parser
    from sigma.cli.serve import worker_argv

    parser = build_parser()
    served = parser.parse_args(["serve", "all", "--config=-serve.yaml", "--set=-k=1", "--set", "worker.consumer=a",
                                "--annotator=-odd", "--plugin=p.q"])
    worker = parser.parse_args(["worker", *worker_argv(served)])
    assert (worker.config, worker.overrides, worker.annotator, worker.plugin) == (
        "-serve.yaml", ["-k=1", "worker.consumer=a"], "-odd", ["p.q"])
