"""Command-line flags that did nothing, or took any number: each now does what it says or is one line, refused.

Through the real CLI in subprocesses (and real Redis and HTTP where a server runs): `sigma serve api --annotator`
started an API as if the flag were not there; `sigma worker --batch --annotator/--max-batch-size` consumed batch
tasks with the run's own settings; integer flags no config field bounds (`sigma report --limit`, `sigma synth -n`)
took `-5` or `1e30`.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from servicekit import TESTS, base_env

ONE_LINE = "sigma: error [bad_arguments]: "


def sigma_cli(*args: str, timeout: float = 60, redis_url: str = "redis://127.0.0.1:1/0") -> subprocess.CompletedProcess:
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
], ids=["serve-api-annotator", "worker-batch-annotator", "worker-batch-max-batch-size", "worker-batch-both"])
def test_a_serve_flag_the_mode_does_not_use_is_refused_not_ignored(args, needles):
    """`sigma serve api --annotator X` served as if it were not given (the API starts no worker; what requests may
    name is api.annotators), and `sigma worker --batch` took --annotator / --max-batch-size and consumed batch tasks
    with each run's own (it waited for Redis here, so without the refusal the command times out)."""
    port = ["--port", "1"] if args[0] == "serve" else []
    try:
        proc = sigma_cli(*args, *port, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sigma {' '.join(args)} ran instead of refusing the flag")
    assert_refused(proc, *needles)


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
        wait_until(lambda: s.http.get("/healthz").status_code == 200, 60, f"serve all up\n{proc.output()}", 0.2)
        original, edited = make_pair(seed=4)
        resp = s.submit(original, edited, data={"instruction": "an odd one"}, path="/v1/annotate")
        assert resp.status_code == 200 and resp.json()["result"]["annotator"] == "odd-keys", resp.text
    finally:
        assert proc.stop(timeout=20) == 0, proc.output()
        s.http.close()
    disagree = sigma_cli("serve", "all", "--port", "1", "--annotator", "pixel-diff", "--set",
                         "api.annotators=[slow-diff]", redis_url=redis_server.url, timeout=30)
    assert_refused(disagree, "its worker serves 'pixel-diff'", "api.annotators ['slow-diff']", code="invalid_config")
