"""Container health check for a worker: exit 0 when this host's worker has a fresh heartbeat.

`python -m sigma.workers.healthcheck` (Docker HEALTHCHECK): the worker writes `P:worker:<host>-<pid>` with a
TTL from before its model loads (`state: loading`, `model_loaded: 0`), so "a key for this host with `model_loaded` 1
exists" means alive, connected and ready. With
`worker.consumer` set the key is known and read directly; else this host's keys are looked for among the live
heartbeats of the registry (`sigma.service.heartbeats`), never by walking the keyspace (a SCAN MATCH of every key
per check, every few seconds per container), save while no worker of this release registers.
"""
from __future__ import annotations

import socket
import sys


def _glob_escape(text: str) -> str:
    """`text` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def main() -> int:
    import redis

    from sigma.service.connections import probe_client
    from sigma.service.heartbeats import live_heartbeat_keys
    from sigma.service.keys import Keys
    from sigma.service.settings import load_serve_config

    cfg = load_serve_config()
    client = probe_client(cfg.redis, timeout_s=2)
    # This host's worker only: `worker.consumer` exactly, else `<host>-<pid>`. A bare prefix (`gpu1*`) also
    # matched gpu10's workers (and `w1*` a worker named w10): a dead worker passed on another's heartbeat.
    consumer = cfg.worker.consumer
    keys = Keys(cfg.redis.key_prefix)
    wanted = keys.worker(consumer or f"{socket.gethostname()}-")
    pattern = _glob_escape(wanted) if consumer else _glob_escape(wanted) + "*"
    try:
        if consumer:
            found = [wanted.encode()]
        else:
            found = [key for key in live_heartbeat_keys(client, keys.worker_registry(), pattern)
                     if key.startswith(wanted.encode())]
        for key in found:
            pid = key.decode("utf-8", "replace")[len(wanted):]
            if (consumer or pid.isdigit()) and client.hget(key, "model_loaded") == b"1":
                return 0
    except redis.RedisError as exc:
        print(f"unhealthy: redis unreachable ({exc})", file=sys.stderr)
        return 1
    print(f"unhealthy: no fresh heartbeat matching {pattern}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
