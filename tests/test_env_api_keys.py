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
