"""`threshold` over real HTTP (uvicorn, redis-server): a number that is not finite is told what a threshold must be.

JSON's NaN / Infinity literals are no JSON (400 bad_json, before any field is read), but `1e400` is JSON, which Python
reads as inf, and a form field is text (`nan`, `inf`): each said "less than or equal to 1" (NaN fails every
comparison), or "greater than or equal to 0" for -inf. `true` stays a 422 (strict JSON types), 2 is out of range."""
from __future__ import annotations

import base64
import json

import pytest
from servicekit import make_pair, png_bytes, running_service

from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]  # a hang guard, not a race (60 s failed on load)

NOT_FINITE = "finite number in [0, 1]"


@pytest.fixture(scope="module")
def svc(redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("threshold-root")
    write_pairs_jsonl(root / "corpus", synthetic_pairs(2, size=32))
    with running_service(redis_server, tmp_path_factory.mktemp("svc-threshold"), [f"api.batch_root={root}"]) as s:
        yield s


@pytest.fixture(scope="module")
def pair():
    original, edited = make_pair()
    return png_bytes(original), png_bytes(edited)


def _error(resp) -> tuple[int, str, str]:
    body = resp.json()
    return resp.status_code, body["error"]["code"], body["error"]["message"]


# (threshold as JSON text, what the message says); every one a 422 invalid_request naming `threshold`
JSON_WRONG = [("1e400", NOT_FINITE), ("-1e400", NOT_FINITE), ("true", "valid number"), ("2", "less than or equal")]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/annotate"])
@pytest.mark.parametrize("text, says", JSON_WRONG)
def test_json_annotate_threshold(svc, pair, path, text, says):
    body = (f'{{"original": "{base64.b64encode(pair[0]).decode()}", '
            f'"edited": "{base64.b64encode(pair[1]).decode()}", "threshold": {text}}}')
    resp = svc.http.post(path, content=body, headers={**svc.headers(), "Content-Type": "application/json"})
    status, code, message = _error(resp)
    assert (status, code) == (422, "invalid_request"), resp.text
    assert message.startswith("threshold: ") and says in message, message


@pytest.mark.parametrize("text, says", [("nan", NOT_FINITE), ("inf", NOT_FINITE), ("-Infinity", NOT_FINITE),
                                        ("1e400", NOT_FINITE), ("true", "valid number"), ("2", "less than or equal")])
def test_form_threshold(svc, pair, text, says):
    status, code, message = _error(svc.submit(*pair, {"threshold": text}))
    assert (status, code) == (422, "invalid_request")
    assert message.startswith("threshold: ") and says in message, message


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_literals_are_no_json(svc, pair, text):
    body = f'{{"original": "", "edited": "", "threshold": {text}}}'
    resp = svc.http.post("/v1/jobs", content=body, headers={**svc.headers(), "Content-Type": "application/json"})
    status, code, message = _error(resp)
    assert (status, code) == (400, "bad_json") and text in message, message


@pytest.mark.parametrize("text, says", JSON_WRONG)
def test_batch_threshold(svc, text, says):
    body = f'{{"input": "corpus", "out": "runs/t", "threshold": {text}}}'
    resp = svc.http.post("/v1/batches", content=body, headers={**svc.headers(), "Content-Type": "application/json"})
    status, code, message = _error(resp)
    assert (status, code) == (422, "invalid_request"), resp.text
    assert message.startswith("threshold: ") and says in message, message


def test_a_threshold_in_range_is_taken(svc, pair):
    resp = svc.submit(*pair, {"threshold": "0.5"})
    assert resp.status_code == 202, resp.text
    resp = svc.http.post("/v1/jobs", headers=svc.headers(), json={
        "original": base64.b64encode(pair[0]).decode(), "edited": base64.b64encode(pair[1]).decode(),
        "threshold": 0.5})
    assert resp.status_code == 202, resp.text
    resp = svc.http.post("/v1/batches", headers=svc.headers(), content=json.dumps(
        {"input": "corpus", "out": "runs/ok", "threshold": 0.5}))
    assert resp.status_code == 202, resp.text


# `wait`, the other float option of a submission: NaN said "greater than or equal to 0" (NaN fails every comparison),
# inf was taken as a wait; both are told what a wait must be
WAIT_NOT_FINITE = "finite number >= 0"


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/annotate"])
@pytest.mark.parametrize("text, says", [("nan", WAIT_NOT_FINITE), ("NaN", WAIT_NOT_FINITE), ("inf", WAIT_NOT_FINITE),
                                        ("-inf", WAIT_NOT_FINITE), ("-1", "greater than or equal to 0")])
def test_form_wait(svc, pair, path, text, says):
    status, code, message = _error(svc.submit(*pair, {"wait": text}, path=path))
    assert (status, code) == (422, "invalid_request"), message
    assert message.startswith("wait: ") and says in message, message
    if says == WAIT_NOT_FINITE:
        assert "greater than" not in message, message


@pytest.mark.parametrize("text, says", [("1e400", WAIT_NOT_FINITE), ("-1e400", WAIT_NOT_FINITE),
                                        ("true", "valid number")])
def test_json_wait(svc, pair, text, says):
    body = (f'{{"original": "{base64.b64encode(pair[0]).decode()}", '
            f'"edited": "{base64.b64encode(pair[1]).decode()}", "wait": {text}}}')
    resp = svc.http.post("/v1/annotate", content=body, headers={**svc.headers(), "Content-Type": "application/json"})
    status, code, message = _error(resp)
    assert (status, code) == (422, "invalid_request"), resp.text
    assert message.startswith("wait: ") and says in message, message


def test_a_finite_wait_is_taken(svc, pair):
    resp = svc.submit(*pair, {"wait": "0"}, path="/v1/annotate")
    assert resp.status_code in (200, 202), resp.text


# a form field is text, which pydantic parsed with Python's rules: `wait=0_5` waited 5 s, `threshold=0.1_0` was 0.1
PYTHON_ONLY = ["0_5", "0.1_0", "+0.5", " 0.5", "0.5 ", "\uff10.\uff15", "\u0660", "0x1", "1_000", ""]


@pytest.mark.parametrize("field", ["threshold", "wait"])
@pytest.mark.parametrize("text", PYTHON_ONLY)
def test_form_numbers_are_plain_decimal(svc, pair, field, text):
    status, code, message = _error(svc.submit(*pair, {field: text}))
    assert (status, code) == (422, "invalid_request")
    assert message.startswith(f"{field}: ") and "plain decimal" in message, message


@pytest.mark.parametrize("text", ["0.5", ".5", "1.", "5e-1", "0", "1E-3"])
def test_plain_decimal_form_numbers_are_taken(svc, pair, text):
    resp = svc.submit(*pair, {"threshold": text, "wait": text})
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize("text", ["1_0", "+5", " 5", "\uff15", "5.0", "0x5"])
def test_batch_status_limits_are_decimal_digits(svc, text):
    resp = svc.http.get("/v1/batches/status", params={"failed_limit": text}, headers=svc.headers())
    status, code, message = _error(resp)
    assert (status, code) == (422, "invalid_request"), resp.text
    assert message.startswith("failed_limit: ") and "decimal digits" in message, message
    assert svc.http.get("/v1/batches/status", params={"task_limit": "5"}, headers=svc.headers()).status_code == 200


@pytest.mark.parametrize("path, query", [("/v1/jobs", {"threshold": "0.9"}), ("/v1/annotate", {"wait": "30"}),
                                         ("/v1/jobs", {"x": "1", "y": "2"})])
def test_a_submission_with_a_query_string_is_refused_not_ignored(svc, pair, path, query):
    # the options are read from the body: `POST /v1/jobs?threshold=0.9` queued the job at the annotator's threshold
    resp = svc.http.post(path, params=query, files=svc.files(*pair), headers=svc.headers())
    status, code, message = _error(resp)
    assert (status, code) == (422, "invalid_request"), resp.text
    assert "takes no query parameters" in message and all(repr(name) in message for name in query), message


def test_a_batch_with_a_query_string_is_refused_not_ignored(svc):
    resp = svc.http.post("/v1/batches", params={"shard_size": "5"}, headers=svc.headers(),
                         json={"input": "corpus", "out": "runs/query"})
    status, code, message = _error(resp)
    assert (status, code) == (422, "invalid_request"), resp.text
    assert "takes no query parameters" in message and "'shard_size'" in message, message
