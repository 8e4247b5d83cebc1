"""A hostile client at the door, over real HTTP (real uvicorn via `sigma serve api`, real redis-server): bodies
that are small but cost the API far more than their size, nesting the routes' own code cannot walk, and requests
framed two ways at once. Each answer is a 4xx with a code, never a 500, a dead API or an unbounded allocation.
"""
from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servicekit import ServiceUnderTest, make_pair, png_bytes, read_until_closed, running_service

from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]  # a hang guard, not a race (60-240 s failed on load)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("ingress") / "root"
    write_pairs_jsonl(base / "corpus", synthetic_pairs(2, size=32))
    return base


@pytest.fixture(scope="module")
def svc(redis_server, root, tmp_path_factory):
    with running_service(redis_server, tmp_path_factory.mktemp("svc-ingress"), [f"api.batch_root={root}"]) as s:
        yield s


def reset_peak_rss(pid: int) -> None:
    """The process's peak RSS (VmHWM) set back to its RSS now (proc(5), clear_refs 5): each test its own peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def long_keys_over_a_wide_list(key_chars: int, depth: int, width: int) -> bytes:
    """`depth` objects, each under one key of `key_chars` characters, around a list of `width` zeros: the place of
    each zero (`kkk….kkk….l[n]`) is depth * key_chars characters long."""
    data: dict = {}
    cur = data
    for level in range(depth):
        cur[f"{level}" + "k" * key_chars] = cur = {}
    cur["l"] = [0] * width
    return json.dumps(data).encode()


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_a_small_body_of_long_keys_over_a_wide_list_costs_the_api_no_more_than_its_size(svc, path):
    # 206 KB of JSON: the surrogate check spelt the place of every value in full before looking at it, 2000 places of
    # 200 000 characters each: the API's peak memory rose by ~400 MB (a 4.5 MB body asked for terabytes)
    body = long_keys_over_a_wide_list(20_000, 10, 2000)
    assert svc.api is not None
    reset_peak_rss(svc.api.pid)
    before = peak_rss_kib(svc.api.pid)
    resp = svc.http.post(path, content=body, headers={**svc.headers(), "content-type": "application/json"})
    assert resp.status_code in (400, 422), resp.text
    assert resp.json()["error"]["code"] in ("missing_field", "invalid_request")
    grown_mib = (peak_rss_kib(svc.api.pid) - before) / 1024
    assert grown_mib < 60, f"the API's peak memory grew {grown_mib:.0f} MiB for a {len(body)}-byte body"


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a": ' * depth + leaf + "}" * depth


@pytest.mark.parametrize("path, field", [("/v1/batches", "options"), ("/v1/batches", "columns"),
                                         ("/v1/jobs", "outputs"), ("/v1/annotate", "instruction")])
def test_a_body_nested_hundreds_of_levels_is_bad_json_not_a_recursion_error(svc, path, field):
    # 600 levels parse (json's own limit is ~950, its caller's frames included), but copying the batch's options
    # (deepcopy, two frames a level) ended in RecursionError: 500 internal_error
    fields = '"input": "corpus", "out": "runs/deep"' if path == "/v1/batches" else \
        '"original": "AA==", "edited": "AA=="'
    body = "{" + f'{fields}, "{field}": {nested(600)}' + "}"
    resp = svc.http.post(path, content=body.encode(), headers={**svc.headers(), "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "bad_json" and "nested more than 64 levels" in error["message"], error


def test_a_body_nested_within_the_limit_is_read(svc):
    body = {"input": "corpus", "out": "runs/shallow", "options": json.loads(nested(62))}
    resp = svc.http.post("/v1/batches", json=body, headers=svc.headers())
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_config", resp.text


def raw_request(svc: ServiceUnderTest, head: str, body: bytes, then: bytes = b"") -> bytes:
    """`head` + `body` (+ `then`, a second request on the same connection) on one socket; all the server answers
    until it closes or goes quiet for 3 s."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=3) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body + then)
        return read_until_closed(sock, TimeoutError)


def test_content_length_and_chunked_together_are_refused(svc):
    # RFC 9112 6.3: the two framings disagree, so a proxy in front may read another request than the API does
    # (request smuggling); and the byte budget (limits.max_bytes_in_flight) took the Content-Length, 2 bytes, while
    # the chunked body could run to limits.max_request_bytes. It was read as chunked, queued a job (202) and kept
    # the connection for the next request
    original, edited = (base64.b64encode(png_bytes(a)).decode() for a in make_pair(16, 16))
    job = json.dumps({"original": original, "edited": edited}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(job), job)
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {svc.headers()['Authorization']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\nTransfer-Encoding: chunked")
    follow_up = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = raw_request(svc, head, chunked, follow_up)
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 400"), answer[:300]
    headers, _, text = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    assert json.loads(text)["error"]["code"] == "bad_request"
    assert answer.count(b"HTTP/1.1") == 1, "the connection carried another request after the refusal"


def answer_of(raw: bytes) -> tuple[int, bytes, dict]:
    """(status, the head's header lines lower-cased, the JSON body) of one raw HTTP/1.1 answer."""
    head, _, text = raw.partition(b"\r\n\r\n")
    lengths = [line.split(b":", 1)[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    assert lengths and head.startswith(b"HTTP/1.1 "), f"not an answer with a length: {raw[:300]!r}"
    return int(head.split(b" ", 2)[1]), head.lower(), json.loads(text[:int(lengths[0])])


@pytest.mark.parametrize("head, body", [
    ("GET /healthz HTTP/1.1\r\nHost: x\r\nthis line has no colon", b""),
    # a bad chunk size after the first chunk: the route is already reading the body
    ("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
     b"5\r\n{\"a\":\r\nzz\r\n"),
])
def test_a_request_that_is_not_http_gets_the_error_shape(svc, head, body):
    # uvicorn answered these with text/plain `Invalid HTTP request received.`: no code for a client to read
    if "/v1/jobs" in head:
        head += f"\r\nAuthorization: {svc.headers()['Authorization']}"
    status, headers, error = answer_of(raw_request(svc, head, body))
    assert status == 400 and b"content-type: application/json" in headers and b"connection: close" in headers
    assert error["error"]["code"] == "bad_request", error
    assert svc.http.get("/healthz").status_code == 200


@pytest.mark.parametrize("body, said", [(b"null", "got null"), (b"[1]", "got an array"), (b'"x"', "got a string"),
                                        (b"12", "got a number"), (b"true", "got a boolean")])
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_a_body_that_is_not_an_object_is_named_in_json_terms(svc, path, body, said):
    # the client wrote JSON; the answer said Python's names for it ("got NoneType", "got list")
    resp = svc.http.post(path, content=body, headers={**svc.headers(), "content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_request", resp.text
    assert said in resp.json()["error"]["message"], resp.text


@pytest.mark.parametrize("files", [
    [("original", ("o.png", b"x", "image/png")), ("original", ("o2.png", b"x", "image/png")),
     ("edited", ("e.png", b"x", "image/png"))],
    [("original", ("o.png", b"x", "image/png")), ("edited", ("e.png", b"x", "image/png")),
     ("instruction", ("i.txt", b"remove the cup", "text/plain"))]])
def test_a_third_file_part_is_told_which_parts_are_files(svc, files):
    # Starlette's file limit answers before the route's own checks: "Too many files. Maximum number of files is 2."
    # alone did not say that an instruction sent as a file, or an image sent twice, was the cause
    resp = svc.http.post("/v1/jobs", files=files, headers=svc.headers())
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "malformed_multipart", resp.text
    message = resp.json()["error"]["message"]
    assert "'original' and 'edited', each once" in message and "instruction" in message, message


# -- text encodings: multipart text fields and JSON bodies are UTF-8, as RFC 8259 asks of JSON ---------------------
def multipart_body(instruction: bytes, part_type: str | None = None, boundary: str = "t3xtb0undary") -> bytes:
    """The two images and an `instruction` text part holding exactly `instruction` (a raw multipart body: a client
    library would encode the text itself), with its own `Content-Type` header when `part_type` is given."""
    original, edited = (png_bytes(a) for a in make_pair(16, 16))
    body = b""
    for name, data in (("original", original), ("edited", edited)):
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                 "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="instruction"\r\n'
    head += f"Content-Type: {part_type}\r\n" if part_type else ""
    return body + (head + "\r\n").encode() + instruction + f"\r\n--{boundary}--\r\n".encode()


def post_multipart(svc: ServiceUnderTest, body: bytes, body_charset: str | None = None,
                   boundary: str = "t3xtb0undary"):
    ctype = f"multipart/form-data; boundary={boundary}" + (f"; charset={body_charset}" if body_charset else "")
    return svc.http.post("/v1/jobs", content=body, headers={**svc.headers(), "content-type": ctype})


@pytest.mark.parametrize("chars, status", [(256, 202), (257, 400), (5000, 400)])
def test_a_multipart_boundary_over_the_parsers_bound_is_said(svc, chars, status):
    # python-multipart refuses a boundary over 256 characters in its constructor, which Starlette answered with its
    # catch-all "Invalid multipart data."; RFC 2046 allows 70, and up to 256 is read as before
    boundary = "b" * chars
    resp = post_multipart(svc, multipart_body(b"add a sign", boundary=boundary), boundary=boundary)
    assert resp.status_code == status, resp.text
    if status == 400:
        error = resp.json()["error"]
        assert error["code"] == "malformed_multipart" and f"has {chars} characters" in error["message"], error


@pytest.mark.parametrize("instruction, part_type, body_charset", [
    (b"add a \xff\xfe sign", None, None),                           # queued as "add a ÿþ sign"
    (b"add a caf\xe9", None, None),                                 # Latin-1 bytes with no word about them
    (b"add a caf\xe9", "text/plain; charset=latin-1", None),        # declared: queued as "add a café" only by luck
    ("add a café".encode(), "text/plain; charset=latin-1", None),   # declared Latin-1, sent UTF-8: "add a cafÃ©"?
    (b"add a sign", "text/plain; charset=x-no-such-charset", None),
    (b"add a sign", None, "latin-1"),                               # the body's charset, Starlette's convention
    (b"add a sign", None, "x-no-such-charset"),                     # an unknown one was read as Latin-1
    ("add a 看板".encode("shift_jis"), "text/plain; charset=shift_jis", None),
    (b"add a \xed\xa0\x80 sign", None, None),                       # an encoded lone surrogate is no UTF-8 either
    (b"add a sign", "text/plain; charset=utf-8\x00", None),          # codecs.lookup's ValueError: 400 "(ValueError)"
], ids=["bad-bytes", "latin1-bytes", "declared-latin1", "declared-latin1-utf8-bytes", "unknown-part-charset",
        "body-latin1", "body-unknown", "shift-jis", "surrogate-bytes", "nul-in-charset"])
def test_a_multipart_text_field_that_is_not_utf8_is_invalid_text(svc, instruction, part_type, body_charset):
    # Starlette decodes a text field by the body's charset and, where that fails or names no codec, as Latin-1:
    # b"\xff\xfe" was queued as "ÿþ" (202), while a JSON body of the same bytes is refused. Text is UTF-8 either way
    resp = post_multipart(svc, multipart_body(instruction, part_type), body_charset)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_text" and "instruction" in error["message"] and "UTF-8" in error["message"], error


@pytest.mark.parametrize("part_type, body_charset", [
    (None, None), ("text/plain", None), ("text/plain; charset=UTF-8", None), ("text/plain; charset=utf8", None),
    (None, "utf-8")])
def test_a_multipart_utf8_text_field_is_queued_as_sent(svc, part_type, body_charset):
    text = "add a café sign「開店」 😀"
    resp = post_multipart(svc, multipart_body(text.encode(), part_type), body_charset)
    assert resp.status_code == 202, resp.text
    assert svc.job(resp.json()["id"])["instruction"] == text


def test_a_multipart_text_field_declared_us_ascii_is_ascii(svc):
    ok = post_multipart(svc, multipart_body(b"add a sign", "text/plain; charset=us-ascii"))
    assert ok.status_code == 202 and svc.job(ok.json()["id"])["instruction"] == "add a sign", ok.text
    bad = post_multipart(svc, multipart_body("add a café".encode(), "text/plain; charset=us-ascii"))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_text", bad.text


def json_job(instruction: str = "add a cat") -> str:
    original, edited = (base64.b64encode(png_bytes(a)).decode() for a in make_pair(16, 16))
    return json.dumps({"original": original, "edited": edited, "instruction": instruction}, ensure_ascii=False)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_a_json_body_in_utf16_or_utf32_is_bad_json(svc, path, encoding):
    # json.loads(bytes) guesses the encoding, so a UTF-16 body was queued (202) like a UTF-8 one; RFC 8259 8.1:
    # JSON exchanged between systems is UTF-8, and a multipart text field is held to the same
    text = json_job("add a café") if path == "/v1/jobs" else json.dumps({"input": "corpus", "out": "runs/u16"})
    resp = svc.http.post(path, content=text.encode(encoding),
                         headers={**svc.headers(), "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "bad_json" and "not UTF-8 text" in error["message"], error
    assert encoding.split("-")[0].upper() + "-" + encoding.split("-")[1] in error["message"].upper(), error


def test_a_json_body_with_a_utf8_byte_order_mark_is_read(svc):
    # RFC 8259 8.1: a parser MAY ignore a BOM; Windows tools (PowerShell 5's Out-File -Encoding utf8) write one
    body = b"\xef\xbb\xbf" + json_job("add a café").encode()
    resp = svc.http.post("/v1/jobs", content=body, headers={**svc.headers(), "content-type": "application/json"})
    assert resp.status_code == 202, resp.text
    assert svc.job(resp.json()["id"])["instruction"] == "add a café"


# -- a request head over api.max_header_bytes (16 KiB): 431, however it arrives, and read by the client -------------
def send_then_read(svc: ServiceUnderTest, request: bytes, segment: int | None) -> bytes:
    """`request` sent whole (`segment` None: one send, as loopback delivers it) or `segment` bytes at a time with a
    short pause (a real network's segments), then all the server answers until it closes. A reset or a broken pipe
    on the way propagates: a client that writes its request before reading met one instead of the answer."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=5) as sock:
        for start in range(0, len(request), segment or len(request)):
            sock.sendall(request[start:start + (segment or len(request))])
            if segment:
                time.sleep(0.001)
        return read_until_closed(sock)


@pytest.mark.parametrize("cookie_bytes, segment", [(20_000, 1024), (20_000, None), (200_000, None)],
                         ids=["20KB-in-1KB-segments", "20KB-at-once", "200KB-at-once"])
def test_a_request_head_over_the_limit_is_431_and_the_client_reads_it(svc, cookie_bytes, segment):
    # h11 bounds only a head still incomplete when it looks: a 20 KB cookie in 1 KB segments was a 400 "malformed"
    # and the client, still sending, met EPIPE / ECONNRESET; the same cookie (or a 200 KB one) in one read was served
    request = (f"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: {'a' * cookie_bytes}\r\n\r\n").encode()
    status, headers, error = answer_of(send_then_read(svc, request, segment))
    assert status == 431 and b"content-type: application/json" in headers and b"connection: close" in headers
    assert error["error"]["code"] == "headers_too_large", error
    assert "api.max_header_bytes=16384" in error["error"]["message"], error
    assert svc.http.get("/healthz").status_code == 200


def test_a_request_head_within_the_limit_is_served_whichever_way_it_arrives(svc):
    request = (f"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: {'a' * 15_000}\r\nConnection: close\r\n\r\n").encode()
    for segment in (1024, None):
        assert send_then_read(svc, request, segment).startswith(b"HTTP/1.1 200 "), segment


def test_a_stdlib_client_with_a_large_header_gets_the_431(svc):
    # urllib.request (http.client) writes the whole head before reading: it must meet the answer, not a reset
    request = urllib.request.Request(f"{svc.url}/healthz", headers={"X-Token": "t" * 40_000})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 431
    assert json.loads(refused.value.read())["error"]["code"] == "headers_too_large"


# -- JSON objects that name a key twice: which value was meant is ambiguous ----------------------------------------
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_a_json_body_that_names_a_key_twice_is_bad_json(svc, path):
    # Python keeps the last value silently: `{"instruction": "a", "instruction": "b"}` queued "b" (202), while a
    # proxy or client library that keeps the first would have meant "a"
    if path == "/v1/jobs":
        body = json_job("add a cat")[:-1] + ', "instruction": "remove the dog"}'
        key = "instruction"
    else:
        body = '{"input": "corpus", "out": "runs/dup", "options": {"threshold": 0.4, "threshold": 0.6}}'
        key = "threshold"
    resp = svc.http.post(path, content=body, headers={**svc.headers(), "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "bad_json" and f'"{key}" twice' in error["message"], error


# -- multipart part headers: a filename too long, a field name that is not UTF-8 ---------------------------------
def test_a_multipart_filename_too_long_is_said_with_the_limit(svc):
    # python-multipart refuses a part header line over 4224 bytes; Starlette said only "Invalid multipart data."
    from python_multipart.multipart import DEFAULT_MAX_HEADER_SIZE

    original, edited = (png_bytes(a) for a in make_pair(16, 16))
    files = [("original", ("o" * 10_000 + ".png", original, "image/png")), ("edited", ("e.png", edited, "image/png"))]
    resp = svc.http.post("/v1/jobs", files=files, headers=svc.headers())
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "malformed_multipart", error
    assert "filename of the part 'original' is too long" in error["message"], error
    assert f"at most {DEFAULT_MAX_HEADER_SIZE} bytes" in error["message"], error


def test_a_multipart_field_name_that_is_not_utf8_is_invalid_text(svc):
    # Starlette decoded it as Latin-1: the answer named an unknown field 'instrÿþ', which the client never sent
    body = multipart_body(b"add a sign").replace(b'name="instruction"', b'name="instr\xff\xfe"')
    resp = post_multipart(svc, body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_text" and "field name b'instr\\xff\\xfe' is not UTF-8" in error["message"], error


def test_each_request_head_on_a_keep_alive_connection_is_measured_alone(svc):
    # the head's size is counted from the end of the previous request: a body (or a head) before it on the
    # connection does not count against it
    job = json_job().encode()
    head = f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {svc.headers()['Authorization']}\r\n" \
           f"Content-Type: application/json\r\nContent-Length: {len(job)}\r\nX-Pad: {'p' * 12_000}\r\n\r\n"
    get = f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {'p' * 12_000}\r\nConnection: close\r\n\r\n"
    answer = send_then_read(svc, head.encode() + job + get.encode(), 4096)
    assert answer.startswith(b"HTTP/1.1 202 ") and answer.count(b"HTTP/1.1 200 OK") == 1, answer[:600]


# -- a multipart preamble (RFC 2046 5.1.1) --------------------------------------------------------------------------
@pytest.mark.parametrize("preamble", [b"This is a multi-part message in MIME format.\r\n", b"x" * 5000 + b"\r\n\r\n",
                                      b"\r\n"])
def test_a_multipart_preamble_before_the_first_boundary_is_ignored_and_not_logged(svc, preamble):
    # python-multipart skipped only blank lines there: any other byte was 400 malformed_multipart "Expected boundary
    # character 45, got 84 at index 2", and the same line went to the API's log as a warning for every such body
    resp = post_multipart(svc, preamble + multipart_body(b"add a sign"))
    assert resp.status_code == 202, resp.text
    assert svc.job(resp.json()["id"])["instruction"] == "add a sign"
    garbage = post_multipart(svc, b"no boundary anywhere " * 10)
    assert garbage.status_code == 400, garbage.text
    error = garbage.json()["error"]
    assert error["code"] == "malformed_multipart" and "no boundary delimiter" in error["message"], error
    bad = post_multipart(svc, b"--t3xtb0undaryX\r\n" + multipart_body(b"add a sign"))     # python-multipart's own error
    assert bad.status_code == 400 and "Did not find CR at end of boundary" in bad.json()["error"]["message"], bad.text
    assert svc.api is not None
    log = svc.api.output()
    assert "Expected boundary" not in log and "Did not find" not in log, log


def test_a_malformed_request_is_no_warning_in_the_api_log(svc):
    # uvicorn wrote "Invalid HTTP request received." as a warning for each one (and for a 413 or 431 it answered
    # for us): a line in the log, at the default level, per bad request any client sends
    for request in (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
                    b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 23 + b"\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 20_000 + b"\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as sock:
            sock.sendall(request)
            got = read_until_closed(sock, ConnectionResetError)
        assert got.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 413 ", b"HTTP/1.1 431 ")), got[:200]
    assert svc.api is not None
    assert "Invalid HTTP request received" not in svc.api.output(), svc.api.output()


# -- request targets and HTTP versions (RFC 9112 3.2, RFC 9110 2.5) --------------------------------------------------
@pytest.mark.parametrize("target, status, code", [
    ("http://127.0.0.1:{port}/healthz", 200, None),
    ("HTTP://example.test/v1/jobs/nosuchjob?x=1", 404, "job_not_found"),      # a route's own 404, not the router's
    ("http:///healthz", 400, "bad_request"),                                    # an http URI with no host
])
def test_an_absolute_form_target_is_served_as_its_path(svc, target, status, code):
    # RFC 9112 3.2.2: a server MUST accept the absolute form (a client set up for a forward proxy sends it); uvicorn
    # took the whole URL as the path, so every route was 404 not_found
    head = (f"GET {target.format(port=svc.port)} HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n"
            f"Authorization: {svc.headers()['Authorization']}")
    got, headers, body = answer_of(raw_request(svc, head, b""))
    assert got == status, body
    assert body == {"status": "ok"} if code is None else body["error"]["code"] == code, body


def test_an_http2_connection_preface_is_answered_once_with_505_and_closed(svc):
    # `curl --http2-prior-knowledge` (or a gRPC client) opens with PRI * HTTP/2.0, then SM and binary frames: h11 took
    # the PRI line for a request (404) and the SM line for a malformed one (400), two answers that named neither cause
    settings = bytes.fromhex("000012040000000000000300000064000400100000000600004000")     # a SETTINGS frame
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings
    with socket.create_connection(("127.0.0.1", svc.port), timeout=5) as sock:
        sock.sendall(preface)
        raw = read_until_closed(sock, ConnectionResetError)
    status, headers, body = answer_of(raw)
    assert raw.endswith(json.dumps(body).encode()), raw      # one answer, nothing after it
    assert status == 505 and b"connection: close" in headers, raw
    assert body["error"]["code"] == "http_version_not_supported" and "HTTP/2" in body["error"]["message"], body
    got, _, body = answer_of(raw_request(svc, "GET /healthz HTTP/3.0\r\nHost: x", b""))
    assert got == 505 and "HTTP/3.0" in body["error"]["message"], body
    got, _, body = answer_of(raw_request(svc, "GET /healthz HTTP/1.2\r\nHost: x\r\nConnection: close", b""))
    assert got == 200, body         # a higher minor version is served as 1.1 (RFC 9110 2.5)


def answer_then_close(svc: ServiceUnderTest, head: str, body: bytes = b"") -> bytes:
    """All the server answers to `head` + `body` until it closes the connection (each request here closes it: a
    refusal, or `Connection: close`), however long a loaded machine takes."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        return read_until_closed(sock, ConnectionResetError)


WEBSOCKET_HEAD = ("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13")


def test_a_websocket_upgrade_is_refused_at_its_head_and_closed(svc):
    # no route is a WebSocket: where `websockets` is installed (uvicorn[standard]) uvicorn handed the connection to its
    # WebSocket protocol, past the connection limit and header timeout and into the app as a `websocket` scope the HTTP
    # middleware does not check; where it is not, it served the request and logged two warnings each time
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"        # a masked text frame "Hello", as a client sends next
    raw = answer_then_close(svc, WEBSOCKET_HEAD, frame)
    status, headers, body = answer_of(raw)
    assert status == 400 and b"connection: close" in headers, raw
    assert body["error"]["code"] == "bad_request" and "WebSocket" in body["error"]["message"], body
    assert raw.endswith(json.dumps(body).encode()), raw      # one answer: the frame was not read as a request
    from sigma.api.server import uvicorn_options
    from sigma.service.settings import ServeConfig
    assert uvicorn_options(ServeConfig())["ws"] == "none"      # no WebSocket protocol loaded, whatever is installed


def test_another_upgrade_is_ignored_and_served_without_a_warning(svc):
    # `curl --http2` over http:// asks for h2c; RFC 9110 7.8 lets a server ignore it: served in HTTP/1.1, as before,
    # but uvicorn logged "Unsupported upgrade request." and advised installing uvicorn[standard], for each one
    head = ("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA")
    status, _, body = answer_of(answer_then_close(svc, head + "\r\nConnection: close"))
    assert status == 200 and body == {"status": "ok"}, body
    raw = answer_then_close(svc, head + "\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close")
    assert raw.count(b"HTTP/1.1 200 ") == 2, raw      # the keep-alive connection went on in HTTP/1.1
    assert svc.api is not None
    log = svc.api.output()
    assert "upgrade request" not in log and "WebSocket library" not in log, log


@pytest.mark.parametrize("target, said", [
    ("/healthz#x", "fragment"), ("/v1/jobs/0123#frag", "fragment"), ("http://127.0.0.1/healthz#x", "fragment"),
    ("/v1/jobs/%ff", "path"), ("/v1/jobs/%c3", "path"), ("/healthz?out=%ff%fe", "query"), ("/healthz?a=%e9+b", "query"),
])
def test_a_fragment_or_a_target_that_is_not_utf8_is_400(svc, target, said):
    # RFC 9112 3.2: a request target has no fragment (uvicorn kept it in the path: GET /healthz#x was 404 not_found);
    # percent-encoded bytes that are not UTF-8 became U+FFFD, so a route saw another name than the one sent
    head = f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {svc.headers()['Authorization']}"
    raw = answer_then_close(svc, head)
    status, headers, body = answer_of(raw)
    assert status == 400 and b"connection: close" in headers, raw
    assert body["error"]["code"] == "bad_request" and said in body["error"]["message"], body


def test_a_percent_encoded_slash_in_a_path_is_400_not_another_route(svc):
    # `%2F` was decoded to `/` before routing: `/v1/jobs/{id}%2Fmask.png` was served as the mask route (a 409
    # `mask_not_available` for a queued job), `/v1/jobs/a%2Fb` was a 404 `not_found` saying only "Not Found"
    resp = svc.submit(*make_pair(seed=21))
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    for method, target in [("GET", f"/v1/jobs/{job_id}%2Fmask.png"), ("GET", f"/v1/jobs/{job_id}%2fmask.png"),
                           ("GET", "/v1/jobs/a%2Fb"), ("DELETE", "/v1/jobs/a%2Fb"), ("GET", "/healthz%2F")]:
        head = (f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {svc.headers()['Authorization']}\r\n"
                "Connection: close")
        status, _, body = answer_of(answer_then_close(svc, head))
        assert status == 400 and body["error"]["code"] == "bad_request", (target, body)
        assert "%2F" in body["error"]["message"], body
    assert svc.job(job_id)["status"] in ("queued", "running", "done", "failed"), "the job is still there"


@pytest.mark.parametrize("target", ["/healthz?x=%C3%A9+a%2B&y=%e2%9c%93", "/healthz?a=b%2", "/heal%74hz"])
def test_a_utf8_or_plain_target_is_served(svc, target):
    status, _, body = answer_of(answer_then_close(svc, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close"))
    assert status == 200 and body == {"status": "ok"}, body


@pytest.mark.parametrize("method, path", [("GET", "/v1/jobs/"), ("POST", "/v1/jobs/"), ("GET", "/healthz/")])
def test_a_trailing_slash_is_a_404_that_names_the_path_not_a_redirect_to_the_clients_host(svc, method, path):
    # Starlette redirected it (307, no body) to a Location built from the client's Host header: `Host: evil.example`
    # sent the client to http://evil.example/v1/jobs (and to http:// behind a TLS proxy)
    head = (f"{method} {path} HTTP/1.1\r\nHost: evil.example\r\nAuthorization: {svc.headers()['Authorization']}\r\n"
            "Content-Length: 0\r\nConnection: close")
    status, headers, body = answer_of(answer_then_close(svc, head))
    assert status == 404 and b"location:" not in headers and b"evil.example" not in headers, headers
    assert body["error"]["code"] == "not_found" and f"({path.rstrip('/')!r})" in body["error"]["message"], body


def test_a_chunked_body_with_trailer_fields_over_the_head_bound_is_said_and_read(svc):
    # h11 bounds a trailer section still incomplete at max_header_bytes: that was the generic 400 "not valid HTTP/1.1"
    # and a close at once, so a client still sending met a reset (EPIPE) instead of the answer
    trailer = b"".join(b"X-T%d: %s\r\n" % (i, b"a" * 1000) for i in range(200)) + b"\r\n"
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {svc.headers()['Authorization']}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close")
    status, headers, body = answer_of(answer_then_close(svc, head, b"2\r\n{}\r\n0\r\n" + trailer))
    assert status == 400 and b"connection: close" in headers, body
    assert body["error"]["code"] == "bad_request" and "trailer" in body["error"]["message"], body


# -- methods (RFC 9110 9.1, 15.5.6) ---------------------------------------------------------------------------------
def test_head_is_served_on_every_get_route_without_a_body(svc):
    # a general-purpose server MUST support HEAD; FastAPI's routes took only GET, so HEAD /healthz (an uptime checker's
    # probe) and HEAD /v1/jobs/{id} were 405
    job_id = svc.http.post("/v1/jobs", content=json_job(), headers={**svc.headers(), "content-type":
                                                                    "application/json"}).json()["id"]
    for path, who in (("/healthz", "user"), ("/metrics", "metrics"), (f"/v1/jobs/{job_id}", "user")):
        got = svc.http.get(path, headers=svc.headers(who))
        head = raw_request(svc, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                f"Authorization: {svc.headers(who)['Authorization']}", b"")
        start, _, body = head.partition(b"\r\n\r\n")
        headers = start.lower() + b"\r\n"
        assert int(start.split(b" ", 2)[1]) == got.status_code == 200, head
        assert body == b"" and b"content-type: " + got.headers["content-type"].encode() in headers, head
        if path != "/metrics":       # the metrics grow between the two requests
            assert b"content-length: %d\r\n" % len(got.content) in headers, head
    missing = raw_request(svc, "HEAD /v1/jobs/nosuchjob HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               f"Authorization: {svc.headers()['Authorization']}", b"")
    assert missing.startswith(b"HTTP/1.1 404 ") and missing.endswith(b"\r\n\r\n"), missing


@pytest.mark.parametrize("method, path, allow", [("PUT", "/v1/jobs/abc", "DELETE, GET, HEAD"),
                                                 ("POST", "/healthz", "GET, HEAD"),
                                                 ("HEAD", "/v1/jobs", "POST"), ("OPTIONS", "/v1/batches", "POST")])
def test_a_405_allows_every_method_its_path_takes(svc, method, path, allow):
    # Starlette named the first matching route's methods only: PUT /v1/jobs/{id} said `Allow: GET`, not DELETE
    resp = svc.http.request(method, path, headers=svc.headers())
    assert resp.status_code == 405 and resp.headers["allow"] == allow, (resp.headers, resp.text)
    assert method == "HEAD" or resp.json()["error"]["code"] == "method_not_allowed"


SERVER_METHODS = "DELETE, GET, HEAD, OPTIONS, POST"


def test_options_asterisk_is_answered_about_the_server_and_the_connection_kept(svc):
    # RFC 9110 9.3.7: `OPTIONS *` asks about the server itself; the router took `*` for a path and answered 404
    # not_found, as an unknown one. Now 200 with every method some route takes, no body, no key needed
    raw = raw_request(svc, "OPTIONS * HTTP/1.1\r\nHost: x", b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                                                     b"Connection: close\r\n\r\n")
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 "), raw
    assert b"\r\nallow: " + SERVER_METHODS.lower().encode() + b"\r\n" in first.lower() + b"\r\n", raw
    assert b"\r\ncontent-length: 0\r\n" in first.lower() + b"\r\n", raw
    status, _, body = answer_of(rest)          # the connection carried the next request
    assert status == 200 and body == {"status": "ok"}, raw
    # RFC 9112 3.2.4: the absolute form with an empty path, as a forward proxy's client sends it, is `OPTIONS *`
    proxied = raw_request(svc, "OPTIONS http://example.test:8000 HTTP/1.1\r\nHost: x\r\nConnection: close", b"")
    assert proxied.startswith(b"HTTP/1.1 200 ") and b"allow: " + SERVER_METHODS.lower().encode() in proxied.lower(), \
        proxied


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_the_asterisk_target_with_another_method_is_bad_request(svc, method):
    # RFC 9112 3.2.4: the asterisk form is for OPTIONS only; `GET *` was a 404 not_found as an unknown path
    status, headers, body = answer_of(raw_request(svc, f"{method} * HTTP/1.1\r\nHost: x\r\nContent-Length: 0", b""))
    assert status == 400 and body["error"]["code"] == "bad_request", body
    assert "'*' is for OPTIONS only" in body["error"]["message"], body


def test_connect_is_405_with_the_servers_methods_and_the_connection_closed(svc):
    # CONNECT (authority form, a proxy's tunnel) was routed as the path `host:443`: 404 not_found, the connection kept,
    # and the TLS bytes a tunnelling client sends next would have been read as another request
    raw = raw_request(svc, "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443", b"",
                      b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")        # a TLS ClientHello's start
    status, headers, body = answer_of(raw)
    assert status == 405 and body["error"]["code"] == "method_not_allowed", raw
    assert b"\r\nallow: " + SERVER_METHODS.lower().encode() + b"\r\n" in headers + b"\r\n", raw
    assert b"connection: close" in headers and raw.count(b"HTTP/1.1 ") == 1, raw


# -- Expect: 100-continue answered before the body is asked for (RFC 9110 10.1.1) ------------------------------------
@pytest.mark.parametrize("then", [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"x" * 1000])
def test_a_final_answer_before_100_continue_closes_the_connection(svc, then):
    # the 401 went out with the connection kept for the 1000 declared bytes, which a client that saw the 401 need
    # not send: its next request on the connection was read as that body and got no answer until api.body_timeout_s.
    # Now the 401 says `connection: close` and a FIN follows it; a client that sends the body anyway reads it too
    with socket.create_connection(("127.0.0.1", svc.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        time.sleep(0.2)
        sock.sendall(then)
        started = time.monotonic()
        raw = read_until_closed(sock)
    status, headers, body = answer_of(raw)
    assert status == 401 and b"connection: close" in headers and body["error"]["code"] == "missing_api_key", raw
    assert time.monotonic() - started < 3, "the connection was kept open for a body the client did not send"
    assert not raw.startswith(b"HTTP/1.1 100"), raw


@pytest.mark.parametrize("expect", ["something-else", "100-continue, x-trace", "100-continue; a=1"])
def test_an_expectation_other_than_100_continue_is_417_before_the_body(svc, expect):
    # RFC 9110 10.1.1: an Expect the server cannot meet is 417; it was served as if absent (202: the job queued, the
    # client's condition ignored). Answered at the head, the body not read, the connection closed after it
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {svc.headers()['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 1000\r\nExpect: {expect}")
    raw = raw_request(svc, head, b"x" * 1000, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = answer_of(raw)
    assert status == 417 and body["error"]["code"] == "expectation_failed", raw
    assert expect.split(",")[-1].strip() in body["error"]["message"], body
    assert b"connection: close" in headers and raw.count(b"HTTP/1.1 ") == 1, raw


def test_expect_100_continue_still_gets_its_interim_answer_and_the_job_is_queued(svc):
    original, edited = (base64.b64encode(png_bytes(a)).decode() for a in make_pair(16, 16))
    job = json.dumps({"original": original, "edited": edited}).encode()
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {svc.headers()['Authorization']}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(job)}\r\nExpect: 100-Continue\r\n"
                     "Connection: close\r\n\r\n".encode())
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(4096)         # the body is sent only once the server asked for it
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(job)
        raw = interim.partition(b"\r\n\r\n")[2] + read_until_closed(sock)
    status, _, body = answer_of(raw)
    assert status == 202 and svc.job(body["id"])["status"] in ("queued", "running", "done"), body
    # an empty Expect, or 100-continue in HTTP/1.0 (which RFC 9110 says to ignore), is no expectation to refuse
    for head in ("GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: \r\nConnection: close",
                 "GET /healthz HTTP/1.0\r\nExpect: 100-continue"):
        assert answer_of(raw_request(svc, head, b""))[0] == 200, head


@pytest.mark.parametrize("name, scheme", [("Authorization", "Bearer "), ("X-API-Key", "")])
def test_an_api_key_field_sent_twice_with_different_values_is_refused(svc, name, scheme):
    # the first field was used: `Authorization: Bearer <valid>` then `Authorization: Bearer <other>` was served as the
    # valid key, where a proxy in front that adds its own key (or checks the last) reads the other one
    from servicekit import KEYS

    twice = [(name, scheme + KEYS["user"]), (name, scheme + "not-a-key")]
    resp = svc.http.get("/v1/jobs/nosuchjob", headers=twice)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_request", resp.text
    assert "sent 2 times" in resp.json()["error"]["message"] and KEYS["user"] not in resp.text, resp.text
    same = [(name, scheme + KEYS["user"]), (name, scheme + KEYS["user"])]
    assert svc.http.get("/v1/jobs/nosuchjob", headers=same).json()["error"]["code"] == "job_not_found"


# -- one Content-Type, one boundary -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path, types, code", [
    ("/v1/jobs", ["multipart/form-data; boundary=t3xtb0undary", "application/json"], "bad_request"),
    ("/v1/jobs", ["multipart/form-data; boundary=t3xtb0undary", "multipart/form-data; boundary=other"], "bad_request"),
    ("/v1/jobs", ["multipart/form-data; boundary=other; boundary=t3xtb0undary"], "malformed_multipart"),
    ("/v1/batches", ["application/json", "text/plain"], "bad_request"),
])
def test_a_content_type_sent_twice_or_a_boundary_named_twice_is_refused(svc, path, types, code):
    # the API read the first Content-Type field and the last boundary, where a proxy or filter in front may read the
    # other: `multipart` then `application/json` queued the multipart body (202), `boundary=other; boundary=B` used B
    body = multipart_body(b"add a sign")
    fields = "".join(f"\r\nContent-Type: {t}" for t in types)
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {svc.headers('admin')['Authorization']}{fields}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close")
    status, _, error = answer_of(raw_request(svc, head, body))
    assert status == 400 and error["error"]["code"] == code, error
    assert "Content-Type" in error["error"]["message"], error


def test_the_same_content_type_sent_twice_is_read(svc):
    body = multipart_body(b"add a sign")
    field = "\r\nContent-Type: multipart/form-data; boundary=t3xtb0undary"
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {svc.headers()['Authorization']}{field}{field}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close")
    status, _, answer = answer_of(raw_request(svc, head, body))
    assert status == 202, answer


# -- numbers a float cannot hold --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, said", [
    ("/v1/jobs", '{"threshold": -%s}', "threshold: Input should be a finite number in [0, 1], got an integer of 400"),
    ("/v1/annotate", '{"wait": %s}', "wait: Input should be a finite number >= 0, got an integer of 400 digits"),
    ("/v1/batches", '{"input": "corpus", "out": "o", "options": {"threshold": %s}}',
     "options.threshold: Input should be a finite number in [0, 1], got an integer of 400 digits"),
])
def test_a_400_digit_integer_is_said_to_be_too_large_not_not_a_number(svc, path, body, said):
    # JSON reads 400 digits as a Python int, which no float holds: pydantic said "Input should be a valid number"
    data = json.loads(body % ("9" * 400))
    if path != "/v1/batches":
        original, edited = (base64.b64encode(png_bytes(a)).decode() for a in make_pair(16, 16))
        data.update(original=original, edited=edited)
    text = json.dumps(data)
    resp = svc.http.post(path, content=text, headers={**svc.headers("admin"), "content-type": "application/json"})
    assert resp.status_code == 422 and said in resp.json()["error"]["message"], resp.text


@pytest.mark.parametrize("headers, said", [
    ('Content-Disposition: form-data; name="instruction"\r\nContent-Disposition: form-data; name="threshold"',
     "Content-Disposition header twice"),
    ('Content-Disposition: form-data; name="instruction"; name="threshold"', "names its name twice"),
    ('Content-Disposition: form-data; name="threshold"\r\nContent-Type: text/plain; charset=utf-8\r\n'
     "Content-Type: text/plain; charset=latin-1", "Content-Type header twice"),
])
def test_a_multipart_part_whose_headers_say_two_things_is_refused(svc, headers, said):
    # Starlette kept the last of each: a part headed name="instruction" then name="threshold" set the threshold
    # (queued 202 with threshold 0.5), where a proxy or filter in front may read the first
    body = multipart_body(b"add a sign").replace(b"--t3xtb0undary--\r\n", b"") + (
        f"--t3xtb0undary\r\n{headers}\r\n\r\n0.5\r\n--t3xtb0undary--\r\n").encode()
    resp = post_multipart(svc, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "malformed_multipart" and said in error["message"], error
    quoted = multipart_body(b"add a sign").replace(b'name="instruction"', b'name="instruction"; x="a;name=b"')
    assert post_multipart(svc, quoted).status_code == 202     # a name= inside a quoted value is no second name


def test_a_non_ascii_api_key_is_accepted_as_its_utf8_bytes(redis_server, tmp_path):
    # keys are UTF-8 text (SIGMA_API_KEYS), but header bytes reach the app read as Latin-1: `curl -H 'X-API-Key: clé'`
    # from a UTF-8 terminal sends cl\xc3\xa9, which was read as 'clÃ©' and refused 401 invalid_api_key; only the
    # key's Latin-1 bytes, which no UTF-8 terminal sends, were served (and still are)
    from servicekit import API_KEYS_ENV

    s = ServiceUnderTest(redis_server, tmp_path)
    s.env["SIGMA_API_KEYS"] = API_KEYS_ENV + ",clé-ü"
    try:
        s.start_api()
        for key in ("clé-ü".encode(), "clé-ü".encode("latin-1")):
            for field in (b"Authorization: Bearer ", b"X-API-Key: "):
                with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:    # the bytes as they are
                    sock.sendall(b"GET /v1/jobs/nosuchjob HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + field + key
                                 + b"\r\n\r\n")
                    status, _, body = answer_of(read_until_closed(sock))
                assert status == 404 and body["error"]["code"] == "job_not_found", (field, key, body)
        _, _, body = answer_of(raw_request(s, "GET /v1/jobs/nosuchjob HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                              "X-API-Key: cle-u", b""))
        assert body["error"]["code"] == "invalid_api_key", body
    finally:
        s.close()
