"""The API over real HTTP (uvicorn) with a real worker and Redis: round trips, auth, errors, health."""
from __future__ import annotations

import base64
import io
import signal

import numpy as np
import pytest
from PIL import Image
from servicekit import KEYS, ServiceUnderTest, make_pair, png_bytes, running_service
from test_io_images import jpeg_scan_bomb

from sigma import create_annotator
from sigma.io import decode_rle, pair_from_bytes

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]  # a hang guard, not a race (60-240 s failed on load)


@pytest.fixture(scope="module")
def svc(redis_server, tmp_path_factory):
    with running_service(redis_server, tmp_path_factory.mktemp("svc-api"), workers=[("pixel-diff", None)]) as s:
        yield s


def reference_mask(original: np.ndarray, edited: np.ndarray, threshold: float | None = None) -> np.ndarray:
    pair = pair_from_bytes(png_bytes(original), png_bytes(edited))
    ann = create_annotator("pixel-diff").predict([pair])[0]
    return ann.mask if threshold is None else ann.prob > threshold


def test_round_trip_multipart_matches_in_process_annotator(svc):
    original, edited = make_pair(seed=1)
    resp = svc.submit(original, edited, {"instruction": "invert the box", "outputs": "rle,png,prob"},
                      path="/v1/annotate")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "done" and body["attempts"] == 1
    result = body["result"]
    expected = reference_mask(original, edited)
    assert np.array_equal(decode_rle(result["segmentation"]), expected)
    assert result["area"] == int(expected.sum()) and result["bbox"] == [10, 8, 20, 12]
    assert result["instruction"] == "invert the box" and result["annotator"] == "pixel-diff"
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask_png_base64"]))))
    assert np.array_equal(png > 127, expected)
    prob = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["prob_png_base64"]))))
    assert prob.shape == expected.shape and prob[9, 11] > 0
    assert {"queued_ms", "total_ms", "api_ms"} <= set(body["timings_ms"])
    mask = svc.http.get(f"/v1/jobs/{body['id']}/mask.png", headers=svc.headers())
    assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(mask.content))) > 127, expected)


def test_a_phone_tiff_and_its_upright_export_come_back_with_the_mask_where_the_edit_is_seen(svc):
    """A TIFF stored landscape with EXIF orientation 6 (shown portrait) and its edit exported upright: the API's
    header check turned the TIFF's size twice and answered 422 aspect_mismatch; now the job is done and the mask
    has the shown picture's size and lies on the edit."""
    stored = make_pair(seed=3)[0][:40, :56]
    exif = Image.Exif()
    exif[0x0112] = 6
    tiff = io.BytesIO()
    Image.fromarray(stored).save(tiff, format="TIFF", exif=exif.tobytes())
    upright = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270)).copy()
    upright[5:15, 8:20] = 255 - upright[5:15, 8:20]
    resp = svc.submit(tiff.getvalue(), upright, path="/v1/annotate")
    assert resp.status_code == 200, resp.text
    mask = decode_rle(resp.json()["result"]["segmentation"])
    assert mask.shape == (56, 40)
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 14, 8, 19)


def test_round_trip_json_base64_with_threshold(svc):
    original, edited = make_pair(seed=2)
    payload = {"original": base64.b64encode(png_bytes(original)).decode(),
               "edited": base64.b64encode(png_bytes(edited)).decode(), "threshold": 0.01}
    resp = svc.http.post("/v1/annotate", json=payload, headers=svc.headers())
    assert resp.status_code == 200, resp.text
    result = resp.json()["result"]
    assert result["threshold"] == 0.01
    got = decode_rle(result["segmentation"])
    assert np.array_equal(got, reference_mask(original, edited, 0.01))
    assert got[0, 0] and not reference_mask(original, edited)[0, 0]   # the threshold really changed the mask


def test_mask_mode_per_request(svc):
    """pixel-diff keeps its own mask unless a request asks for one: then the composite test runs and the
    result carries both masks, *the* mask being the one asked for."""
    from sigma.rle import decode_rle

    original, edited = make_pair(seed=12)
    box = np.zeros(original.shape[:2], bool)
    box[8:20, 10:30] = True
    plain = svc.submit(original, edited, path="/v1/annotate").json()["result"]
    assert "mask_source" not in plain
    for mode in ("semantic", "footprint", "auto"):
        resp = svc.submit(original, edited, {"mask_mode": mode}, path="/v1/annotate")
        assert resp.status_code == 200, resp.text
        result = resp.json()["result"]
        assert result["mask_mode"] == mode and result["composite"]["is_composite"] is True
        assert result["mask_source"] == ("semantic" if mode == "semantic" else "footprint")
        chosen = decode_rle(result["segmentation"])
        assert chosen[box].all(), "the edited box is inside whichever mask is chosen"
        assert np.array_equal(decode_rle(result["semantic_segmentation"]), decode_rle(plain["segmentation"]))
    bad = svc.submit(original, edited, {"mask_mode": "both"}, path="/v1/annotate")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    # the mode is part of what makes a request this request
    first = svc.submit(original, edited, {"mask_mode": "semantic"}, headers={"Idempotency-Key": "mm-1"})
    assert first.status_code == 202, first.text
    other = svc.submit(original, edited, {"mask_mode": "footprint"}, headers={"Idempotency-Key": "mm-1"})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_annotate_wait_zero_answers_202_then_job_finishes(svc):
    original, edited = make_pair(seed=6)
    # the workers are held still for the request: a 48x64 pixel-diff pair is done in ~10 ms, and a worker that
    # finished it before the API's one read of the job made the answer a (correct) 200 — a flaky test, not an
    # API fault
    for worker in svc.workers:
        worker.signal(signal.SIGSTOP)
    try:
        resp = svc.submit(original, edited, {"wait": "0"}, path="/v1/annotate")
    finally:
        for worker in svc.workers:
            worker.signal(signal.SIGCONT)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    assert resp.headers["location"] == f"/v1/jobs/{job_id}"
    assert svc.wait_jobs([job_id], 15)[job_id]["status"] == "done"


def test_job_lifecycle_idempotency_and_delete(svc):
    original, edited = make_pair(seed=3)
    first = svc.submit(original, edited, headers={"Idempotency-Key": "batch-7/item-1"})
    assert first.status_code == 202 and first.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    job_id = first.json()["id"]
    replay = svc.submit(original, edited, headers={"Idempotency-Key": "batch-7/item-1"})
    assert replay.status_code == 200 and replay.json()["id"] == job_id
    assert replay.headers["idempotent-replayed"] == "true"
    done = svc.wait_jobs([job_id], 15)[job_id]
    assert done["status"] == "done" and done["result"]["area"] > 0
    assert svc.raw_job(job_id)["completions"] == "1"
    # another key's owner cannot see it; an admin can
    assert svc.http.get(f"/v1/jobs/{job_id}", headers=svc.headers("other")).status_code == 404
    assert svc.http.get(f"/v1/jobs/{job_id}", headers=svc.headers("admin")).status_code == 200
    deleted = svc.http.delete(f"/v1/jobs/{job_id}", headers=svc.headers())
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    gone = svc.http.get(f"/v1/jobs/{job_id}", headers=svc.headers())
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found"
    # blobs were removed when the job finished: nothing of it is left in Redis
    assert not svc.redis_server.client().keys(f"{svc.prefix}:*{job_id}*")


def test_auth_401_403_and_scopes(svc):
    original, edited = make_pair(seed=4)
    none = svc.http.post("/v1/jobs", files=svc.files(original, edited))
    assert none.status_code == 401 and none.json()["error"]["code"] == "missing_api_key"
    wrong = svc.http.post("/v1/jobs", files=svc.files(original, edited), headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    scope = svc.http.post("/v1/jobs", files=svc.files(original, edited), headers=svc.headers("metrics"))
    assert scope.status_code == 403 and scope.json()["error"]["code"] == "insufficient_scope"
    assert svc.http.get("/metrics").status_code == 401
    assert svc.http.get("/metrics", headers={"X-API-Key": KEYS["metrics"]}).status_code == 200
    assert svc.http.get("/v1/jobs/" + "0" * 32).status_code == 401
    assert svc.http.get("/healthz").status_code == 200     # health needs no key
    assert svc.http.get("/readyz").status_code == 200


@pytest.mark.parametrize("case", ["unknown_route", "method", "bad_json", "media_type", "missing_field", "not_a_file",
                                  "unknown_field", "bad_threshold", "bad_base64", "unreadable", "too_many_pixels",
                                  "too_long", "aspect", "unknown_annotator", "huge_body", "bad_job_id", "jpeg_scans",
                                  "bool_threshold", "long_job_id", "empty_annotator", "no_words"])
def test_errors_are_json_with_stable_codes(svc, case):
    o, e = make_pair(seed=5)
    h = svc.headers()
    http = svc.http
    expected = {
        "unknown_route": (404, "not_found", lambda: http.get("/v2/nothing", headers=h)),
        "method": (405, "method_not_allowed", lambda: http.put("/v1/jobs", headers=h)),
        "bad_json": (400, "bad_json", lambda: http.post("/v1/annotate", content=b"{oops",
                                                         headers={**h, "content-type": "application/json"})),
        "media_type": (415, "unsupported_media_type", lambda: http.post("/v1/jobs", content=b"hi",
                                                                        headers={**h, "content-type": "text/plain"})),
        "missing_field": (400, "missing_field", lambda: http.post(
            "/v1/jobs", files={"original": ("o.png", png_bytes(o))}, headers=h)),
        "not_a_file": (400, "not_a_file", lambda: http.post(
            "/v1/jobs", files={"original": ("o.png", png_bytes(o))}, data={"edited": "text"}, headers=h)),
        "unknown_field": (422, "invalid_request", lambda: svc.submit(o, e, {"colour": "red"})),
        "bad_threshold": (422, "invalid_request", lambda: svc.submit(o, e, {"threshold": "2"})),
        "bad_base64": (400, "invalid_base64", lambda: http.post("/v1/jobs", json={"original": "@@", "edited": "@@"},
                                                                 headers=h)),
        "unreadable": (422, "image_unreadable", lambda: svc.submit(b"not an image at all", e)),
        "too_many_pixels": (413, "too_many_pixels", lambda: svc.submit(
            np.zeros((1100, 1000, 3), np.uint8), np.zeros((1100, 1000, 3), np.uint8))),
        "too_long": (422, "instruction_too_long", lambda: svc.submit(o, e, {"instruction": "x" * 1001})),
        # no letter or digit: every parser reads it as no edit; it was queued and annotated without one
        "no_words": (422, "empty_instruction", lambda: svc.submit(o, e, {"instruction": "\U0001F436\U0001F431"})),
        "aspect": (422, "aspect_mismatch", lambda: svc.submit(o, np.zeros((48, 20, 3), np.uint8))),
        "unknown_annotator": (422, "unknown_annotator", lambda: svc.submit(o, e, {"annotator": "sigma-xl"})),
        # "" ran the first of api.annotators, as if no name had been given (a client's unset variable)
        "empty_annotator": (422, "invalid_request", lambda: svc.submit(o, e, {"annotator": ""})),
        "huge_body": (413, "request_too_large", lambda: http.post(
            "/v1/jobs", files={"original": ("o.png", b"\0" * 4_600_000), "edited": ("e.png", b"x")}, headers=h)),
        "bad_job_id": (404, "job_not_found", lambda: http.get("/v1/jobs/NOT-A-JOB", headers=h)),
        "long_job_id": (404, "job_not_found", lambda: http.get("/v1/jobs/" + "a" * 10_000, headers=h)),
        # JSON values keep their type: `true` is not the threshold 1.0 (which would be an empty mask)
        "bool_threshold": (422, "invalid_request", lambda: http.post("/v1/jobs", headers=h, json={
            "original": base64.b64encode(png_bytes(o)).decode(), "edited": base64.b64encode(png_bytes(e)).decode(),
            "threshold": True})),
        # headers within every limit, 3000 scans: refused at the door, not queued for a worker to grind through
        "jpeg_scans": (413, "decompression_bomb", lambda: svc.submit(jpeg_scan_bomb(1000, 3000),
                                                                     jpeg_scan_bomb(1000, 3000))),
    }[case]
    status, code, call = expected
    resp = call()
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == code and err["message"]
    if case == "long_job_id":                 # what the client sent is not echoed back whole
        assert len(err["message"]) < 200 and "10000 characters" in err["message"]


def test_readyz_metrics_and_openapi(svc):
    # one annotation of its own: the worker histograms exist once a batch ran (not only after other tests)
    done = svc.submit(*make_pair(seed=9), path="/v1/annotate")
    assert done.status_code == 200 and done.json()["status"] == "done", done.text
    ready = svc.http.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["checks"]["redis"]["ok"] and ready["checks"]["workers"]["alive"] >= 1
    assert ready["checks"]["model"]["loaded"] == ["pixel-diff"]
    text = svc.http.get("/metrics", headers=svc.headers()).text
    for family in ("sigma_http_requests_total", "sigma_http_request_duration_seconds_bucket",
                   "sigma_queue_depth", "sigma_queue_pending", "sigma_dead_letters", "sigma_workers_alive",
                   "sigma_worker_batch_size_bucket", "sigma_inference_seconds_bucket", "sigma_redis_up 1.0"):
        assert family in text, family
    assert 'route="/v1/annotate",status="200"' in text
    spec = svc.http.get("/openapi.json").json()
    assert {"/v1/annotate", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/mask.png", "/healthz", "/readyz",
            "/metrics"} <= set(spec["paths"])
    content = spec["paths"]["/v1/annotate"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)


def test_sigma_serve_all_runs_api_and_one_worker(redis_server, tmp_path):
    from servicekit import STARTUP_S, GaveUp, Proc, wait_until

    s = ServiceUnderTest(redis_server, tmp_path)
    proc = Proc(["serve", "all", "--port", str(s.port), "--log-level", "warning", *s.sets()], s.env,
                tmp_path / "all.log")

    def ready() -> bool:
        if not proc.alive():
            raise GaveUp(f"serve all exited: {proc.output()}")
        return s.http.get("/readyz").status_code == 200
    try:
        wait_until(ready, STARTUP_S, "serve all ready (an API and its worker: 30 s was too short on a loaded machine)")
        original, edited = make_pair(seed=9)
        resp = s.submit(original, edited, path="/v1/annotate")
        assert resp.status_code == 200 and resp.json()["status"] == "done"
    finally:
        assert proc.stop(timeout=20) == 0, proc.output()
        s.http.close()
    assert not redis_server.client().keys(f"{s.prefix}:worker:*")     # its worker exited cleanly too


def test_damage_only_a_decode_finds_fails_the_job_with_the_same_code(svc):
    original, edited = make_pair(seed=10)
    buf = io.BytesIO()
    Image.fromarray(edited).save(buf, format="JPEG", quality=90)
    cut = buf.getvalue()[: len(buf.getvalue()) * 2 // 3]           # header intact, scan data cut short
    resp = svc.submit(original, cut, path="/v1/annotate")
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "image_unreadable" and err["job_id"]
    job = svc.job(err["job_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "image_unreadable" and job["attempts"] == 1


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_job_id_with_a_trailing_newline_is_not_a_job_id(svc, method):
    """`/v1/jobs/<32 hex>%0A` reaches the route as the id plus "\\n", and JOB_ID (`^...$` with `.match`) took it for a
    job id: Redis was asked for the key `...:job:<id>\\n` and the answer was the lookup's `no job <id>\\n (finished
    jobs are kept ...)`, for a real job's id too. Now the id is matched whole: `not a job id`, nothing looked up."""
    original, edited = make_pair(seed=11)
    job_id = svc.submit(original, edited).json()["id"]
    resp = svc.http.request(method, f"/v1/jobs/{job_id}%0A", headers=svc.headers())
    assert resp.status_code == 404, resp.text
    err = resp.json()["error"]
    assert err["code"] == "job_not_found" and "job ids are 32 hex digits" in err["message"], err
    assert svc.http.get(f"/v1/jobs/{job_id}", headers=svc.headers()).status_code == 200   # still there


def test_a_job_id_in_capitals_is_told_ids_are_lower_case(svc):
    # it was told "job ids are 32 hex digits", which `ABCD...` is
    job_id = svc.submit(*make_pair(seed=12)).json()["id"]
    resp = svc.http.get(f"/v1/jobs/{job_id.upper()}", headers=svc.headers())
    assert resp.status_code == 404 and "in lower case" in resp.json()["error"]["message"], resp.text
