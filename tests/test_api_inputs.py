"""Hostile request inputs over real HTTP (uvicorn, a pixel-diff worker, the session's redis-server): control
characters in an instruction, compressed bodies, multi-frame and 16-bit images, readiness, a reset queue."""
from __future__ import annotations

import base64

import pytest
from servicekit import make_pair, png_bytes, running_service

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def svc(redis_server, tmp_path_factory):
    with running_service(redis_server, tmp_path_factory.mktemp("svc-inputs"), workers=[("pixel-diff", None)]) as s:
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
