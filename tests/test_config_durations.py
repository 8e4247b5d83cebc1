"""Times no process can wait: a finite timeout, lease, TTL, backoff or budget past 30 days, in every config.

Before: NaN and infinity were refused, but a huge finite time was taken and met the code that used it.
`SIGMA__REDIS__SOCKET_TIMEOUT_S=1e308` (or `queue.block_ms` near 2**63) was an OverflowError traceback from
socket.settimeout as `sigma worker` connected (exit 1); `queue.heartbeat_ttl_ms` a Redis error at every heartbeat
("invalid expire time in 'pexpire'"), `queue.heartbeat_interval_ms` an OverflowError in the heartbeat thread,
`api.wait_timeout_s=1e308` a Redis error that answered POST /v1/annotate 202 at once. Now every such field is at most
30 days (`MAX_DURATION_S`) and one past it is one `invalid_config` line naming the field and the bound (exit 2).

The fields are found by walking every config model and taking those named like a time (`*_s`, `*_ms`, `*minutes`),
so a time field added later without the bound (one of `Seconds`, `WholeSeconds`, `Millis`, `Minutes`) fails here.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from sigmamodels import sigma_models

from sigma.config.schema import MAX_CONFIG_INT, MAX_DURATION_S, Strict
from sigma.errors import ConfigError
from sigma.service.settings import ServeConfig, load_serve_config

REPO = Path(__file__).resolve().parents[1]
TIME_NAME = re.compile(r"(_s|_ms|minutes)$")
# the bound of a field by the unit its name says
BOUNDS = {"_ms": MAX_DURATION_S * 1000, "minutes": MAX_DURATION_S // 60, "_s": MAX_DURATION_S}


def _config_models() -> list[type[BaseModel]]:
    """Every config section of sigma's (`Strict` subclasses: configs, settings, the API's bodies)."""
    return sigma_models(Strict)


def _bound(name: str) -> int:
    return next(bound for suffix, bound in BOUNDS.items() if name.endswith(suffix))


def time_fields() -> list[tuple[type[BaseModel], str]]:
    """(model, field name) of every field named like a time, in every config model."""
    return [(model, name) for model in _config_models() for name in model.model_fields if TIME_NAME.search(name)]


def _assign(model: type[BaseModel], name: str, value: object) -> None:
    """Validate `value` for the field `name` of `model` alone (the field's own checks)."""
    model.__pydantic_validator__.validate_assignment(model.model_construct(), name, value)


def test_the_walk_finds_the_fields_the_failures_were_seen_in():
    found = {f"{model.__name__}.{name}" for model, name in time_fields()}
    assert {"RedisSettings.socket_timeout_s", "RedisSettings.connect_timeout_s", "QueueSettings.lease_ms",
            "QueueSettings.block_ms", "QueueSettings.heartbeat_ttl_ms", "QueueSettings.job_ttl_s",
            "ApiSettings.wait_timeout_s", "ApiSettings.close_linger_s", "WorkerSettings.batch_timeout_s",
            "WorkerSettings.max_defer_s", "BatchConfig.stall_s", "RayConfig.actor_timeout_s",
            "TrainConfig.max_minutes"} <= found


# a time named without its unit: the walk (TIME_NAME) would not see it, so its bound would go unchecked
UNITLESS_TIME = re.compile(r"(^|_)(timeout|ttl|interval|delay|backoff|deadline|duration)$|_(seconds?|secs?|millis|"
                           r"milliseconds|hours?|days?)$")


def test_every_built_in_plugins_option_model_is_walked():
    """The option models of the annotators sigma registers (the plugin registry's built-in entries: the config an
    annotator validates its `options` with) are config models the walk finds, so a time option one of them gains is
    checked above; the other registries (grounders, segmenters, parsers, corpus readers) take no option model of
    their own (their settings are `GroundingConfig`'s sections, walked too). A plugin's own model, outside sigma, is
    its author's: docs/ARCHITECTURE.md tells them to use the shared types."""
    from sigma.grounding.registry import GROUNDERS, SEGMENTERS
    from sigma.io.corpora import CORPUS_READERS
    from sigma.parse.registry import PARSERS
    from sigma.registry import ANNOTATORS, annotator_config_cls

    walked = set(_config_models())
    # sigma's own option models: tests register plugins of their own (tests/service_plugins.py) in the same process
    models = {name: cls for name in ANNOTATORS.names()
              if getattr(cls := annotator_config_cls(name), "__module__", "").partition(".")[0] == "sigma"}
    assert {"pixel-diff", "feature-diff", "grounding-only", "sigma-lite", "sigma-b", "sigma-s"} <= set(models), models
    assert all(model in walked for model in models.values()), models
    others = [(r.kind, e.name) for r in (GROUNDERS, SEGMENTERS, PARSERS, CORPUS_READERS) for e in r.entries()
              if e.config_cls is not None and e.config_cls not in walked]
    assert not others, others


def test_no_config_field_names_a_time_without_its_unit():
    """A time field named `timeout`, `ttl` or `*_seconds` would escape the walk (it finds `*_s`, `*_ms`,
    `*minutes`) and with it the 30-day bound: every such name says its unit the way the walk reads it."""
    unitless = [f"{model.__name__}.{name}" for model in _config_models() for name in model.model_fields
                if UNITLESS_TIME.search(name)]
    assert not unitless, f"name these *_s, *_ms or *_minutes and type them Seconds/Millis/...: {unitless}"


@pytest.mark.parametrize(("model", "name"), time_fields(), ids=lambda x: getattr(x, "__name__", x))
def test_every_time_field_refuses_a_time_past_30_days_naming_the_bound(model, name):
    """One past the bound (and a time near 2**63, and 1e300) is `duration_too_long` at the field, saying the bound;
    the bound itself is taken, so every default and documented value (all far below it) still is."""
    bound = _bound(name)
    for over in (bound + 1, MAX_CONFIG_INT - 1000, 1e300):
        with pytest.raises(ValidationError) as caught:
            _assign(model, name, over)
        errors = caught.value.errors()
        assert [(e["loc"], e["type"]) for e in errors] == [((name,), "duration_too_long")], errors
        assert f"Input should be at most {bound} " in errors[0]["msg"] and "30 days" in errors[0]["msg"]
    _assign(model, name, bound)


def _serve_time_keys() -> list[str]:
    """The dotted keys of the service's time settings (`queue.lease_ms`)."""
    return [f"{section}.{name}" for section, field in ServeConfig.model_fields.items()
            for name in field.annotation.model_fields if TIME_NAME.search(name)]


@pytest.mark.parametrize("key", _serve_time_keys())
def test_the_settings_loader_names_each_time_setting_past_the_bound(key):
    """Through `SIGMA__SECTION__FIELD` as a deployment sets it: one message naming the key and the bound."""
    variable = "SIGMA__" + key.upper().replace(".", "__")
    with pytest.raises(ConfigError) as caught:
        load_serve_config(env={variable: "1e300"})
    assert re.search(rf"(?<![\w.]){re.escape(key)}: Input should be at most {_bound(key)} ", caught.value.message), \
        caught.value.message


def test_a_worker_with_a_socket_timeout_of_1e308_exits_2_before_connecting(redis_server, tmp_path):
    """The real `sigma worker`, a real redis-server: `SIGMA__REDIS__SOCKET_TIMEOUT_S=1e308` was an OverflowError
    traceback from socket.settimeout ("timestamp out of range for platform time_t"), exit 1; now invalid_config,
    exit 2, the key and the bound said."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGMA__") and k != "SIGMA_SERVE_CONFIG"}
    env.update({"SIGMA_REDIS_URL": redis_server.url, "SIGMA__REDIS__SOCKET_TIMEOUT_S": "1e308",
                "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    proc = subprocess.run([sys.executable, "-m", "sigma", "worker"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "[invalid_config]" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"redis.socket_timeout_s: Input should be at most {MAX_DURATION_S} s (30 days" in proc.stderr
