"""Hostile request inputs over real HTTP (uvicorn, a pixel-diff worker, the session's redis-server): control
characters in an instruction, compressed bodies, multi-frame and 16-bit images, readiness, a reset queue."""
from __future__ import annotations

import base64
import gzip
import json
import time

import pytest
from servicekit import make_pair, png_bytes, running_service, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]  # a hang guard, not a race (120 s failed on load)


@pytest.fixture(scope="module")
def svc(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc-inputs")
    (tmp / "batches").mkdir()
    with running_service(redis_server, tmp, overrides=[f"api.batch_root={tmp / 'batches'}"],
                         workers=[("pixel-diff", None)]) as s:
        yield s


@pytest.mark.parametrize("text,shown", [("remove\x00 the boat", "U+0000 at character 7"),
                                        ("replace the\x1b[2J dog with a cat", "U+001B at character 12"),
                                        ("add a \x7fhat", "U+007F at character 7"),
                                        ("add a hat\x9b", "U+009B at character 10")])
@pytest.mark.parametrize("how", ["multipart", "json"])
def test_a_control_character_in_the_instruction_is_refused_not_queued(svc, text, shown, how):
    """A NUL or an escape sequence in `instruction` was queued and annotated (200), the control characters stored in
    the job and the result, and the rules parser lost the source of "replace the\\x1b[2J dog" without a word; now 422
    invalid_instruction naming the character and where, nothing queued. Tabs and line breaks are still spaces."""
    o, e = make_pair(seed=2)
    before = svc.redis_server.client().xlen(f"{svc.prefix}:stream:pixel-diff")
    if how == "multipart":
        resp = svc.submit(o, e, {"instruction": text})
    else:
        resp = svc.http.post("/v1/jobs", headers=svc.headers(), json={
            "original": base64.b64encode(png_bytes(o)).decode(), "edited": base64.b64encode(png_bytes(e)).decode(),
            "instruction": text})
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "invalid_instruction" and shown in err["message"], err
    assert svc.redis_server.client().xlen(f"{svc.prefix}:stream:pixel-diff") == before


def test_tabs_and_line_breaks_in_an_instruction_are_still_words_apart(svc):
    o, e = make_pair(seed=2)
    resp = svc.submit(o, e, {"instruction": "remove\tthe\r\nboat\x85"}, path="/v1/annotate")
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["instruction"] == "remove the boat"


def _json_body(seed: int = 3) -> bytes:
    o, e = make_pair(seed=seed)
    return json.dumps({"original": base64.b64encode(png_bytes(o)).decode(),
                       "edited": base64.b64encode(png_bytes(e)).decode()}).encode()


@pytest.mark.parametrize("coding", ["gzip", "GZIP", "identity, gzip", "br"])
@pytest.mark.parametrize("body", ["gzip", "not_gzip", "bomb", "plain"])
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/annotate", "/v1/batches"])
def test_a_compressed_body_is_415_unsupported_content_encoding_never_inflated(svc, coding, body, path):
    """Content-Encoding was ignored: a gzip body was 400 bad_json "not UTF-8 text" (blaming the JSON), a plain body
    labelled gzip was queued as plain. Now 415 unsupported_content_encoding with Accept-Encoding: identity (RFC 9110
    15.5.16), before the body is read: a bomb (50 MB of JSON in 49 KB) is never inflated, nothing is queued, and the
    connection serves the next request."""
    content = {"gzip": lambda: gzip.compress(_json_body()), "not_gzip": lambda: b"\x1f\x8b not gzip at all",
               "bomb": lambda: gzip.compress(b"{" + b" " * 50_000_000 + b"}", compresslevel=1),
               "plain": _json_body}[body]()
    stream = svc.redis_server.client().xlen(f"{svc.prefix}:stream:pixel-diff")
    resp = svc.http.post(path, content=content, headers={**svc.headers(), "content-type": "application/json",
                                                         "content-encoding": coding})
    assert resp.status_code == 415, resp.text
    assert resp.json()["error"]["code"] == "unsupported_content_encoding"
    assert resp.headers["accept-encoding"] == "identity"
    assert svc.redis_server.client().xlen(f"{svc.prefix}:stream:pixel-diff") == stream
    assert svc.http.get("/healthz").status_code == 200


def test_identity_and_no_content_encoding_are_read_as_before(svc):
    for coding in ("identity", ""):
        resp = svc.http.post("/v1/annotate", content=_json_body(), headers={
            **svc.headers(), "content-type": "application/json", "content-encoding": coding})
        assert resp.status_code == 200 and resp.json()["status"] == "done", resp.text
    o, e = make_pair(seed=4)
    resp = svc.submit(o, e, headers={"Content-Encoding": "gzip"})      # multipart: the same refusal
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "unsupported_content_encoding", resp.text


def test_a_job_redis_lost_to_flushall_is_404_saying_so_and_the_service_goes_on(private_redis, tmp_path):
    """After FLUSHALL a job that existed is 404 job_not_found (no record is left to answer from), but the message said
    only "(finished jobs are kept 3600 s)", as if the job had expired; now it names a Redis that lost it too. Its
    mask and DELETE answer the same; the worker and /readyz recover by themselves and the next job is done."""
    with running_service(private_redis, tmp_path, workers=[("pixel-diff", None)]) as s:
        done = s.submit(*make_pair(seed=6), path="/v1/annotate")
        assert done.status_code == 200 and done.json()["status"] == "done", done.text
        job = done.json()["id"]
        private_redis.client().flushall()
        for resp in (s.http.get(f"/v1/jobs/{job}", headers=s.headers()),
                     s.http.get(f"/v1/jobs/{job}/mask.png", headers=s.headers()),
                     s.http.delete(f"/v1/jobs/{job}", headers=s.headers())):
            assert resp.status_code == 404, resp.text
            err = resp.json()["error"]
            assert err["code"] == "job_not_found" and job in err["message"], err
            assert "lost by the queue's Redis" in err["message"] and "expired" in err["message"], err
        wait_until(lambda: s.http.get("/readyz").status_code == 200, 20, "ready again after FLUSHALL")
        again = s.submit(*make_pair(seed=6), path="/v1/annotate")
        assert again.status_code == 200 and again.json()["status"] == "done", again.text


def test_readyz_stays_200_across_a_flushall_while_its_workers_live_and_not_after_a_clean_stop(private_redis,
                                                                                                tmp_path):
    """FLUSHALL takes the workers' heartbeats with it until their next beat: /readyz was 503 "no worker" meanwhile, on
    every API process at once (they read the same Redis), so a load balancer took the whole front end out while the
    workers were alive. Now the workers this process saw are counted until their heartbeats would have expired,
    named in checks.workers.remembered; a worker that stops (its key deleted) is still no worker at once."""
    interval_s = 4.0
    with running_service(private_redis, tmp_path, [f"queue.heartbeat_interval_ms={int(interval_s * 1000)}",
                                                   "queue.heartbeat_ttl_ms=12000",
                                                   f"queue.lease_ms={int(2 * interval_s * 1000)}"],
                         workers=[("pixel-diff", None)]) as s:
        assert s.http.get("/readyz").status_code == 200
        r, beat = private_redis.client(), f"{s.prefix}:worker:{s.workers[0].consumer}"
        # FLUSHALL just after a beat (its TTL fresh), so the next beat is seconds away when /readyz is first asked
        # (at a random moment, under load, the beat could land before the first answer: nothing to remember)
        wait_until(lambda: r.pttl(beat) > 12000 - 500, 30, "a fresh beat", 0.02)
        r.flushall()
        answers = []
        # until the worker has beaten again (read from Redis, nothing remembered), however late a loaded machine makes
        # it: a fixed interval + 1 s could end before it (remembered at the end); 30 s at most
        t_end = time.monotonic() + 30
        while time.monotonic() < t_end and (len(answers) < 2 or answers[-1][1].get("remembered")):
            resp = s.http.get("/readyz")
            answers.append((resp.status_code, resp.json()["checks"]["workers"]))
            time.sleep(0.1)
        assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
        assert answers[0][1]["remembered"] == [s.workers[0].consumer], answers[0]
        assert answers[-1][1]["remembered"] == [], answers[-1]          # it beat again: read from Redis
        done = s.submit(*make_pair(seed=7), path="/v1/annotate")
        assert done.status_code == 200 and done.json()["status"] == "done", done.text
        s.workers[0].stop()                                             # SIGTERM: it deletes its heartbeat
        ready = s.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["workers"]["alive"] == 0, ready.text


def test_readyz_is_200_with_one_served_annotator_alive_and_names_those_without_a_worker(svc):
    """api.annotators serves pixel-diff, slow-diff and poison-diff; only pixel-diff has a worker. Ready (documented:
    one served annotator with a live worker), but the degraded state was only a 0 in by_annotator; now the
    annotators without a worker are named in checks.workers.without_worker."""
    resp = svc.http.get("/readyz")
    assert resp.status_code == 200, resp.text
    workers = resp.json()["checks"]["workers"]
    assert workers["by_annotator"]["pixel-diff"] >= 1
    assert workers["without_worker"] == ["poison-diff", "slow-diff"], workers
