"""Container health check for a worker: exit 0 when a worker on this host has a fresh heartbeat.

`python -m sigma.workers.healthcheck` (Docker HEALTHCHECK): the worker writes `P:worker:<host>-<pid>` with a
TTL only after its model loaded, so "a key for this host exists" means alive, connected and ready.
"""
from __future__ import annotations

import os
import socket
import sys


def main() -> int:
    import redis

    from sigma.service.connections import probe_client
    from sigma.service.keys import Keys
    from sigma.service.settings import load_serve_config

    cfg = load_serve_config(os.environ.get("SIGMA_SERVE_CONFIG"))
    client = probe_client(cfg.redis, timeout_s=2)
    host = socket.gethostname()
    pattern = Keys(cfg.redis.key_prefix).worker(f"{cfg.worker.consumer or host}*")
    try:
        for key in client.scan_iter(match=pattern, count=100):
            if client.hget(key, "model_loaded") == b"1":
                return 0
    except redis.RedisError as exc:
        print(f"unhealthy: redis unreachable ({exc})", file=sys.stderr)
        return 1
    print(f"unhealthy: no fresh heartbeat matching {pattern}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
