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

