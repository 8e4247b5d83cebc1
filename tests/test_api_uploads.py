"""Upload limits over real HTTP: a file part above limits.max_bytes is refused while the body is still arriving,
not after the API has taken all of it in (spooled to disk, then read into memory, then refused by the decoder)."""
from __future__ import annotations

import json
import re
import select
import socket
import time

import httpx
import pytest
from servicekit import make_pair, post_whole_body_first, running_service

MAX_IMAGE = 1_000_000                 # limits.max_bytes of this API
BODY = 60_000_000                     # under limits.max_request_bytes (64 MiB): only the image limit applies


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory):
    limits = [f"limits.max_bytes={MAX_IMAGE}", "limits.max_request_bytes=64000000"]
    with running_service(redis_server, tmp_path_factory.mktemp("uploads"), limits) as s:
        yield s


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return int(re.search(r"VmHWM:\s+(\d+)", handle.read()).group(1)) * 1024


def _stream_upload(port: int, total: int) -> tuple[int, bytes]:
    """POST a multipart body of `total` bytes whose 'original' part is all zeros, 64 KiB at a time, reading the
    answer as soon as one comes; (bytes sent by then, the answer)."""
    boundary = "b0und4ry"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="original"; filename="o.png"\r\n'
            "Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    request = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-user-key\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {total}\r\n\r\n"
               ).encode() + head
    filler = total - len(head) - len(tail)
    sent, answer = 0, b""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)   # `sent` follows what the API has read
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        chunk = b"\0" * 65536
        while sent < filler:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk[:filler - sent])
            except OSError:
                break
            sent += min(len(chunk), filler - sent)
        else:
            sock.sendall(tail)
        deadline = time.monotonic() + 30
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 20:
            if time.monotonic() > deadline:
                break
            try:
                got = sock.recv(65536)
            except OSError:
                break
            if not got:
                break
            answer += got
    return sent, answer


def test_a_file_part_above_the_image_limit_is_refused_while_it_streams(api):
    """A 60 MB 'original' part (the image limit: 1 MB) was spooled whole, read into memory and only then refused;
    now the API answers 413 file_too_large after about the limit, long before the client has sent it all, and
    its memory does not grow by the part's size."""
    before = _peak_rss(api.api.pid)
    sent, answer = _stream_upload(api.port, BODY)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:300]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "file_too_large" and "limits.max_bytes=1000000" in body["error"]["message"]
    assert sent < BODY // 3, f"the answer came after {sent} of {BODY} bytes"
    assert _peak_rss(api.api.pid) - before < 20_000_000
    ok = api.submit(*make_pair(seed=3))         # and it still takes a normal pair
    assert ok.status_code == 202, ok.text




@pytest.mark.parametrize("client", ["http.client", "httpx"])
def test_an_ordinary_client_uploading_a_file_a_little_over_the_limit_gets_the_413(api, client):
    """A 3 MB 'original' (limits.max_bytes: 1 MB) from a client that writes its whole body before it reads: the API
    answered 413 file_too_large and closed the socket with the rest unread, the kernel reset the connection and the
    client's next send failed (ECONNRESET / EPIPE): http.client (urllib.request) raised it and never read the 413.
    Now the server half-closes after its answer and discards what still comes (bounded: api.close_linger_bytes /
    api.close_linger_s): 20 in a row, each a 413 file_too_large with Connection: close, not one connection error."""
    original = b"\x89PNG\r\n\x1a\n" + b"\0" * 3_000_000
    encoded = httpx.Request("POST", api.url, files=api.files(original, make_pair(seed=4)[1]))
    body, ctype = encoded.read(), encoded.headers["content-type"]        # the multipart body httpx would send
    failures: list[str] = []
    for attempt in range(20):
        try:
            status, answer, connection = post_whole_body_first(api.url, "/v1/jobs", body, {
                **api.headers(), "Content-Type": ctype}, client)
        except (OSError, httpx.TransportError) as exc:
            failures.append(f"{attempt}: {exc!r}")
            continue
        assert (status, answer["error"]["code"], connection) == (413, "file_too_large", "close"), answer
    assert not failures, f"{len(failures)} of 20 got no answer: {failures[:3]}"


def _multipart(parts: list[tuple[bytes, bytes]], closed: bool = True) -> bytes:
    body = b"".join(b"--B\r\n" + head + b"\r\n\r\n" + data + b"\r\n" for head, data in parts)
    return body + (b"--B--\r\n" if closed else b"")


def _images() -> list[tuple[bytes, bytes]]:
    from servicekit import png_bytes
    o, e = make_pair(seed=5)
    return [(b'Content-Disposition: form-data; name="original"; filename="o.png"\r\nContent-Type: image/png',
             png_bytes(o)),
            (b'Content-Disposition: form-data; name="edited"; filename="e.png"\r\nContent-Type: image/png',
             png_bytes(e))]


def test_a_multipart_body_cut_before_its_closing_boundary_is_malformed_not_missing_a_field(api):
    """A multipart body that ends before its closing boundary (a proxy or client that cut it, Content-Length
    matching the cut) lost its last part without a word: 400 missing_field "'edited' file is required", though the
    client sent it. Now 400 malformed_multipart saying the body was cut; nothing is queued."""
    headers = {**api.headers(), "content-type": "multipart/form-data; boundary=B"}
    whole = _multipart(_images())
    for cut in (_multipart(_images(), closed=False), whole[:-4], whole[: len(whole) // 2]):
        resp = api.http.post("/v1/jobs", content=cut, headers=headers)
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["code"] == "malformed_multipart" and "closing boundary" in err["message"], err
    assert api.http.post("/v1/jobs", content=whole, headers=headers).status_code == 202


def test_an_image_sent_as_a_text_field_is_not_a_file_whatever_its_bytes(api):
    """`curl -F original=<o.png` sends the image as a text field (no filename): 400 not_a_file when its bytes
    happened to be UTF-8, but 422 invalid_text "'original' is not UTF-8 text" for a real PNG, blaming the encoding
    of what is no text. Now not_a_file either way."""
    headers = {**api.headers(), "content-type": "multipart/form-data; boundary=B"}
    original, edited = _images()
    for data in (original[1], b"plain ascii"):
        as_text = (b'Content-Disposition: form-data; name="original"', data)
        resp = api.http.post("/v1/jobs", content=_multipart([as_text, edited]), headers=headers)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "not_a_file" and "'original'" in resp.json()["error"]["message"]


def test_a_part_python_multipart_refuses_is_told_why(api):
    """A part with more header lines than python-multipart takes (8), or a header it cannot read: each was 400
    malformed_multipart "Invalid multipart data." (Starlette's words for every parse error); now the reason."""
    headers = {**api.headers(), "content-type": "multipart/form-data; boundary=B"}
    original, edited = _images()
    many = original[0] + b"".join(b"\r\nX-Extra-%d: 1" % i for i in range(9))
    bad = original[0] + b"\r\nX Bad: 1"
    for head, said in ((many, "more than 8 header lines"), (bad, "invalid character")):
        resp = api.http.post("/v1/jobs", content=_multipart([(head, original[1]), edited]), headers=headers)
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["code"] == "malformed_multipart" and said in err["message"], err
