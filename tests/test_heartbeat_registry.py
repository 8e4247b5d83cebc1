"""The heartbeat registry (`sigma.service.heartbeats`) against a real redis-server: readers of the heartbeats
(/metrics, /readyz, `sigma batch status`) cost the same round trips whatever else the keyspace holds, a killed
worker's entry goes by itself, and a worker of an earlier release (a hash, no registry entry) is still seen while
no worker of this release registers.
"""
from __future__ import annotations

import time

import pytest
from servicekit import running_service, wait_until

from sigma.service.fleet import queue_status
from sigma.service.heartbeats import live_heartbeat_keys
from sigma.service.keys import Keys
from sigma.service.queue import Heartbeat

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]  # a hang guard, not a race (60-240 s failed on load)


def beat(r, keys: Keys, name: str, ttl_ms: int = 60_000, batch: bool = False) -> Heartbeat:
    """One beat of a worker of this release (hash + registry entry), as `sigma worker` writes it."""
    key, registry = ((keys.batch_worker(name), keys.batch_worker_registry()) if batch
                     else (keys.worker(name), keys.worker_registry()))
    hb = Heartbeat(r, key, 1000, ttl_ms, lambda: {"annotator": "pixel-diff", "consumer": name, "model_loaded": "1"},
                   registry=registry)
    hb.beat()
    return hb


def calls(r) -> dict[str, int]:
    return {k: v["calls"] for k, v in r.info("commandstats").items() if k != "cmdstat_info"}


def cost(r, probe) -> dict[str, int]:
    """Commands Redis ran for `probe()` (INFO commandstats before and after), by command."""
    before = calls(r)
    probe()
    after = calls(r)
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def plant_unrelated(r, prefix: str, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"{prefix}:job:{i:032x}", "x", ex=600)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def test_probes_cost_the_same_whatever_the_keyspace_holds(redis_server, tmp_path):
    """Heartbeats were found by SCAN MATCH over every key: with 200 000 job keys beside 5 heartbeats, /readyz and
    /metrics ran 200 SCANs each (x20 the commands of an empty keyspace, x45 the time) and `sigma batch status` 400.
    Now the registry names the live heartbeat keys: the same commands with 30 000 unrelated keys as with none."""
    with running_service(redis_server, tmp_path) as s:
        r, keys = redis_server.client(), Keys(s.prefix)
        for i in range(5):
            beat(r, keys, f"w{i}")
            beat(r, keys, f"b{i}", batch=True)
        probes = {"readyz": lambda: s.http.get("/readyz").raise_for_status(),
                  "metrics": lambda: s.http.get("/metrics", headers=s.headers("metrics")).raise_for_status(),
                  "fleet": lambda: queue_status(redis_server.url, s.prefix)}
        for probe in probes.values():
            probe()                                 # connections made, scripts loaded
        empty = {name: cost(r, probe) for name, probe in probes.items()}
        plant_unrelated(r, s.prefix, 30_000)
        try:
            busy = {name: cost(r, probe) for name, probe in probes.items()}
        finally:        # the session's Redis is shared: later tests that SCAN must not walk them
            r.delete(*(f"{s.prefix}:job:{i:032x}" for i in range(30_000)))
        for name in probes:
            assert "cmdstat_scan" not in busy[name], (name, busy[name])
            assert sum(busy[name].values()) == sum(empty[name].values()), (name, empty[name], busy[name])
        assert s.http.get("/readyz").json()["checks"]["workers"]["alive"] == 5
        assert queue_status(redis_server.url, s.prefix)["live_workers"] == 5


def test_a_killed_worker_leaves_the_registry_by_itself(redis_server):
    """A worker killed (no clean stop: its hash expires after its TTL) is no longer read and its entry is pruned on
    the next read; one whose hash was deleted (a clean stop's DEL, `forget_worker_key`) too, at once."""
    import uuid

    r, keys = redis_server.client(), Keys(f"t{uuid.uuid4().hex[:10]}")
    registry, pattern = keys.worker_registry(), keys.worker_pattern()
    beat(r, keys, "alive")
    beat(r, keys, "killed", ttl_ms=300)
    beat(r, keys, "deleted")
    r.delete(keys.worker("deleted"))
    assert sorted(live_heartbeat_keys(r, registry, pattern)) == [keys.worker(n).encode() for n in ("alive", "killed")]
    assert r.zscore(registry, keys.worker("deleted")) is None
    wait_until(lambda: not r.exists(keys.worker("killed")), 30, "the killed worker's hash to expire")
    assert live_heartbeat_keys(r, registry, pattern) == [keys.worker("alive").encode()]
    assert r.zscore(registry, keys.worker("killed")) is None
    assert r.zrange(registry, 0, -1) == [keys.worker("alive").encode(), b""]    # the live one and the sentinel
    Heartbeat(r, keys.worker("alive"), 1000, 60_000, dict, registry=registry).stop()   # a clean stop
    assert live_heartbeat_keys(r, registry, pattern) == [] and r.zrange(registry, 0, -1) == [b""]
    assert 0 < r.pttl(registry) <= 86_400_000     # the registry goes a day after the last beat


def test_a_worker_of_an_earlier_release_is_seen_until_this_release_registers(redis_server, tmp_path):
    """Rolling upgrade: a worker of the earlier release writes its hash and no registry entry. While no worker of
    this release has registered, readers fall back to SCAN MATCH and count it (an API upgraded before its workers
    stays ready); once one has, the registry alone is read (docs/service.md: upgrade the workers first)."""
    with running_service(redis_server, tmp_path) as s:
        r, keys = redis_server.client(), Keys(s.prefix)
        r.hset(keys.worker("legacy"), mapping={"annotator": "pixel-diff", "model_loaded": "1",
                                               "last_beat": f"{time.time():.3f}"})
        r.expire(keys.worker("legacy"), 60)
        r.hset(keys.batch_worker("legacy"), mapping={"last_beat": f"{time.time():.3f}"})
        r.expire(keys.batch_worker("legacy"), 60)
        ready = s.http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["workers"]["alive"] == 1, ready.text
        assert queue_status(redis_server.url, s.prefix)["live_workers"] == 1
        beat(r, keys, "new")
        beat(r, keys, "new", batch=True)
        assert s.http.get("/readyz").json()["checks"]["workers"]["alive"] == 1
        text = s.http.get("/metrics", headers=s.headers("metrics")).text
        assert 'sigma_workers_alive{annotator="pixel-diff"} 1.0' in text
        assert queue_status(redis_server.url, s.prefix)["live_workers"] == 1
