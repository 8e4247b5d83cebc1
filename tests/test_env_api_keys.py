"""`$SIGMA_API_KEYS` / `$SIGMA_API_KEY_HASHES` holding bytes that are not UTF-8, as `sigma worker` reads them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("name", ["SIGMA_API_KEYS", "SIGMA_API_KEY_HASHES"])
def test_a_key_that_is_not_utf8_is_refused_naming_the_variable(name):
    """`SIGMA_API_KEYS=$'ok,\\xff' sigma worker` was `invalid_text: '\\udcff' holds '\\udcff', which this system's
    utf-8 encoding cannot write (its locale ...)`: the locale blamed, the variable not named. Now one
    `invalid_config` line naming the variable and the entry, exit 2, before any Redis is reached."""
    env = {k.encode(): v.encode() for k, v in os.environ.items()}
    env[name.encode()] = b"ok," + b"\xff" * 3
    env[b"SIGMA_REDIS_URL"] = b"redis://127.0.0.1:1/0"          # never reached: the config is refused first
    proc = subprocess.run([sys.executable, "-m", "sigma", "worker"], env=env, capture_output=True, timeout=120,
                          check=False)
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    assert proc.returncode == 2, err
    assert err == [f"sigma: error [invalid_config]: {name}: entry 2 holds bytes that are not UTF-8 text; a key is "
                   "UTF-8 text"], err


def _worker(**env: str) -> tuple[int, list[str]]:
    """`sigma worker` as a deployment starts it, with `env` over this process's environment (the real CLI)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SIGMA")}
    proc = subprocess.run([sys.executable, "-m", "sigma", "worker"], env={**full, **env}, capture_output=True,
                          text=True, timeout=120, check=False)
    return proc.returncode, proc.stderr.strip().splitlines()


@pytest.mark.parametrize(("env", "said"), [
    ({"SIGMA_API_KEYS": "k:bogus+admin"},
     "SIGMA_API_KEYS: entry 1 names unknown scope(s) bogus; known: annotate, metrics, admin"),
    ({"SIGMA_REDIS_URL": "redis://[::1"}, "SIGMA_REDIS_URL: redis.url: Value error, not a Redis URL"),
    ({"SIGMA__QUEUE__LEASE_MS": "abc"},
     "SIGMA__QUEUE__LEASE_MS: queue.lease_ms: Input should be a whole number of milliseconds"),
    ({"SIGMA_SERVE_CONFIG": "/dev/zero"}, "SIGMA_SERVE_CONFIG: /dev/zero: not a regular file"),
    ({"SIGMA_SERVE_CONFIG": "/nonexistent/serve.yaml"}, "SIGMA_SERVE_CONFIG: /nonexistent/serve.yaml: config file"),
])
def test_a_bad_environment_variable_is_named_in_its_one_line(env, said):
    """`SIGMA_API_KEYS=k:bogus` printed pydantic's whole ValidationError (its URL included), naming no variable;
    `SIGMA_REDIS_URL=redis://[::1` and `SIGMA__QUEUE__LEASE_MS=abc` said `redis.url:` / `queue.lease_ms:`, which
    sent the user to a config file that did not set them; a bad `SIGMA_SERVE_CONFIG` said only its path. Each now
    starts with the variable, in one `invalid_config` line, before Redis is reached."""
    rc, err = _worker(**{"SIGMA_REDIS_URL": "redis://127.0.0.1:1/0", **env})
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("sigma: error [invalid_config]: ") and said in err[0], err
    assert "pydantic.dev" not in err[0]


def test_blank_settings_variables_count_as_unset():
    """`SIGMA_SERVE_CONFIG=' '` was "': config file not found" (naming neither the variable nor the value) and
    `SIGMA_REDIS_URL=' '` was refused as `redis.url`, while an empty value of either counted as unset. A blank one
    is now unset too, as a blank `SIGMA_CACHE_DIR` or `RANK` is."""
    from sigma.service.settings import load_serve_config

    cfg = load_serve_config(None, [], env={"SIGMA_SERVE_CONFIG": "  ", "SIGMA_REDIS_URL": " \t"})
    assert cfg.redis.url == "redis://127.0.0.1:6379/0"
    assert load_serve_config(None, [], env={"SIGMA_REDIS_URL": "redis://h:1/0"}).redis.url == "redis://h:1/0"
