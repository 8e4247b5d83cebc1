"""Hostile input and load over real HTTP: a hypothesis fuzz of >= 2000 requests, then concurrent clients.

Fuzz: malformed multipart and JSON bodies, wrong types, truncated / corrupted / huge / non-image
files, decompression bombs, mismatched sizes, missing and unknown fields, wrong keys, odd methods
and paths, JSON strings with lone surrogates and integers of more than 4300 digits (the two 500s of
issue 11), and every field of `POST /v1/batches` (NUL bytes, over-long components, files where folders
go, paths outside the root) and `GET /v1/batches/status` → no 5xx, every error is
`{"error": {"code", "message"}}` with a documented code, and the service is still healthy and correct
afterwards.
Load: concurrent clients against a small queue limit → only 202s and 429s (with Retry-After), no
timeouts, and every accepted job completes exactly once.
"""
from __future__ import annotations

import base64
import io
import json
import os
import struct
import threading
import time
import urllib.parse
import zlib
from collections import Counter

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from servicekit import KEYS, ServiceUnderTest, make_pair, png_bytes, running_service

from sigma.api.errors import KNOWN_CODES
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]  # a hang guard, not a race

FUZZ_EXAMPLES = 560            # per fuzz test of single pairs; with the batch fuzz → > 2000 requests
BATCH_EXAMPLES = 900
HUGE = "__huge_int__"          # replaced by an integer of 5000 digits in the JSON text (json.dumps refuses it)
HUGE_DIGITS = "7" * 5000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height and carries a little zlib stream: refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 65536, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def encoded(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


ORIGINAL, EDITED = make_pair(32, 40, seed=11, box=(4, 4, 12, 20))
VALID_O, VALID_E = png_bytes(ORIGINAL), png_bytes(EDITED)
PAYLOADS = {
    "valid_o": VALID_O, "valid_e": VALID_E,
    "smaller_same_aspect": png_bytes(EDITED[::2, ::2].copy()),
    "other_aspect": png_bytes(np.zeros((32, 12, 3), np.uint8)),
    "jpeg": encoded(EDITED, "JPEG", quality=80), "bmp": encoded(EDITED, "BMP"),
    "gif": encoded(EDITED, "GIF"), "rgba": png_bytes(np.dstack([ORIGINAL, np.full((32, 40), 128, np.uint8)])),
    "gray16": encoded(np.full((32, 40), 40000, np.uint16), "PNG"),
    "truncated": VALID_O[: len(VALID_O) // 2], "header_only": VALID_O[:33], "empty": b"",
    "text": b"hello, this is not an image", "random": bytes(np.random.default_rng(0).integers(0, 256, 700,
                                                                                              dtype=np.uint8)),
    "bomb_header": bomb_header(40_000, 40_000), "bomb_zero_size": bomb_header(0, 10),
    "bomb_real": encoded(np.zeros((1100, 1000), np.uint8), "PNG", optimize=True),
    "over_image_bytes": b"\x89PNG\r\n\x1a\n" + b"\0" * 2_000_100,
    "one_pixel": png_bytes(np.zeros((1, 1, 3), np.uint8)),
}
FIELD_NAMES = ["original", "edited", "instruction", "annotator", "threshold", "outputs", "wait", "extra", ""]
TEXT_VALUES = st.one_of(
    st.sampled_from(["remove the boat", "", " ", "x" * 1200, "pixel-diff", "sigma-xl", "0.5", "-1", "nan", "1e309",
                     "rle", "png,prob", "rle,banana", "null", "[]", "{}", "\x00", "ünïcödé ✓"]),
    st.text(max_size=40))
AUTH = st.sampled_from([{"Authorization": f"Bearer {KEYS['user']}"}] * 6 + [
    {}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEYS["metrics"]}, {"Authorization": "Basic abc"},
    {"X-API-Key": ""}])


def mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, val in flips:
        if buf:
            buf[pos % len(buf)] = val
    return bytes(buf)


FILE_BYTES = st.one_of(
    st.sampled_from(sorted(PAYLOADS)).map(PAYLOADS.__getitem__),
    st.tuples(st.sampled_from([VALID_O, PAYLOADS["jpeg"], PAYLOADS["bmp"]]),
              st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8)
              ).map(lambda t: mutate(*t)),
    st.binary(max_size=200))


VALID_OPTIONS = st.fixed_dictionaries({}, optional={
    "instruction": st.sampled_from(["remove the boat", "make it red", " add a hat "]),
    "threshold": st.sampled_from(["0", "0.05", "0.5", "1"]), "outputs": st.sampled_from(["rle", "png,prob"]),
    "annotator": st.just("pixel-diff")})


@st.composite
def multipart_request(draw):
    parts: list[tuple[str, tuple]] = []
    data: list[tuple[str, str]] = []
    if draw(st.integers(0, 3)) == 0:      # a valid request, so the fuzz also runs the success path
        edited = draw(st.sampled_from(["valid_e", "smaller_same_aspect", "jpeg", "bmp", "rgba", "valid_o"]))
        parts = [("original", ("o.png", VALID_O, "image/png")), ("edited", ("e", PAYLOADS[edited], "image/png"))]
        return parts, sorted(draw(VALID_OPTIONS).items())
    names = draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=7))
    if draw(st.booleans()):
        names = ["original", "edited", *names]
    for name in names:
        if draw(st.integers(0, 3)) > 0 and name in ("original", "edited", "extra", ""):
            parts.append((name, (draw(st.sampled_from(["a.png", "b.jpg", "", "x"])), draw(FILE_BYTES),
                                 draw(st.sampled_from(["image/png", "application/octet-stream", "text/plain"])))))
        else:
            data.append((name, draw(TEXT_VALUES)))
    return parts, data


SURROGATE_TEXT = st.tuples(st.text(max_size=6), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                           st.text(max_size=6)).map("".join)      # json.dumps writes them as \\udXXX escapes
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False),
                         st.text(max_size=20), SURROGATE_TEXT, st.just(HUGE))


def dumps(value) -> bytes:
    """JSON text, with the huge-integer marker turned into the real thing."""
    return json.dumps(value).replace(f'"{HUGE}"', HUGE_DIGITS).encode()
JSON_ANY = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                              st.dictionaries(st.text(max_size=8), inner,
                                                                              max_size=4)), max_leaves=12)
B64 = st.one_of(FILE_BYTES.map(lambda b: base64.b64encode(b).decode()),
                st.sampled_from(["", "@@@", "aGVsbG8", "===="]), JSON_ANY)


@st.composite
def json_body(draw):
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return dumps(draw(JSON_ANY))
    if kind == 1:
        return draw(st.binary(max_size=80))          # not JSON at all
    body = {}
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=6)):
        body[name] = draw(B64) if name in ("original", "edited") else draw(st.one_of(TEXT_VALUES, JSON_ANY))
    if kind >= 3:
        body.setdefault("original", base64.b64encode(draw(FILE_BYTES)).decode())
        body.setdefault("edited", base64.b64encode(draw(FILE_BYTES)).decode())
    return dumps(body)


class Tally:
    def __init__(self):
        self.statuses: Counter = Counter()
        self.codes: Counter = Counter()
        self.batches: Counter = Counter()        # outcomes of the /v1/batches requests alone
        self.lock = threading.Lock()

    def check(self, resp: httpx.Response) -> None:
        with self.lock:
            self.statuses[resp.status_code] += 1
        assert resp.status_code < 500, f"{resp.status_code}: {resp.text[:500]}"
        if resp.status_code >= 400 and resp.request.method != "HEAD":     # HEAD answers carry no body
            assert resp.headers.get("content-type", "").startswith("application/json"), resp.text[:200]
            err = resp.json()["error"]
            assert isinstance(err["message"], str) and err["message"]
            assert err["code"] in KNOWN_CODES, err
            with self.lock:
                self.codes[err["code"]] += 1

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


@pytest.fixture(scope="module")
def batch_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-batches")
    write_pairs_jsonl(base / "root" / "corpus", synthetic_pairs(4, size=32))
    (base / "root" / "weird").mkdir()
    (base / "root" / "weird" / "notes.xyz").write_text("not a corpus")
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_text("secret")
    os.symlink(base / "outside", base / "root" / "escape")
    return base / "root"


@pytest.fixture(scope="module")
def fuzz_svc(redis_server, batch_root, tmp_path_factory):
    with running_service(redis_server, tmp_path_factory.mktemp("svc-fuzz"),
                         ["api.wait_timeout_s=3", "limits.max_queue_length=400", "queue.job_ttl_s=120",
                          f"api.batch_root={batch_root}"],
                         workers=[("pixel-diff", ["worker.max_batch_size=16"])]) as s:
        yield s


@pytest.fixture(scope="module")
def tally():
    return Tally()


FUZZ_SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))


@FUZZ_SETTINGS
@given(req=multipart_request(), path=st.sampled_from(["/v1/jobs", "/v1/jobs", "/v1/annotate"]), auth=AUTH)
def test_fuzz_multipart(fuzz_svc, tally, req, path, auth):
    files, pairs = req
    data: dict[str, list[str]] = {}
    for name, value in pairs:
        data.setdefault(name, []).append(value)
    try:
        resp = fuzz_svc.http.post(path, files=files or None, data=data or None, headers=auth)
    except httpx.HTTPError as exc:
        raise AssertionError(f"transport error (the server dropped the request?): {exc!r}") from exc
    tally.check(resp)


@FUZZ_SETTINGS
@given(kind=st.integers(0, 9), body=json_body(), auth=AUTH,
       ctype=st.sampled_from(["application/json", "application/json", "text/plain", "", "multipart/form-data",
                              "multipart/form-data; boundary=xyz", "application/x-www-form-urlencoded"]),
       method=st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
       job=st.one_of(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
                     st.text(alphabet="abcXYZ-_.%20", min_size=1, max_size=40)))
def test_fuzz_json_raw_and_routes(fuzz_svc, tally, kind, body, auth, ctype, method, job):
    http = fuzz_svc.http
    headers = {**auth, **({"content-type": ctype} if ctype else {})}
    if kind < 6:
        resp = http.post(["/v1/jobs", "/v1/annotate"][kind % 2], content=body, headers=headers)
    elif kind == 6:
        resp = http.request(method, "/v1/jobs", headers=auth)
    elif kind == 7:
        resp = http.get(f"/v1/jobs/{job}", headers=auth)
    elif kind == 8:
        resp = http.request(["GET", "DELETE"][len(job) % 2], f"/v1/jobs/{job}/mask.png"
                            if len(job) % 3 else f"/v1/jobs/{job}", headers=auth)
    else:
        resp = http.request(method, ["/metrics", "/v2/annotate", "/", "/v1", "/healthz"][len(job) % 5],
                            headers=auth)
    tally.check(resp)


PATHS = st.one_of(
    st.sampled_from(["corpus", "corpus/pairs.jsonl", "corpus/", "./corpus", "corpus/../corpus", "weird", "nope",
                     "escape", "escape/secret.txt", "../outside", "../outside/secret.txt", "/etc", "/etc/passwd",
                     "runs/f1", "runs/f2", "runs/f1/../f3", "corpus/pairs.jsonl/run", ".", "", "/", "//", "..",
                     "corp\x00us", "runs/\x00", "a" * 300, "runs/" + "b" * 256, "/".join(["c" * 200] * 25),
                     "~/x", "runs/ünï", "runs/a b", "\\", HUGE]),
    st.text(max_size=30), SURROGATE_TEXT, JSON_ANY)
OPTIONS = st.one_of(st.dictionaries(st.sampled_from(["threshold", "evil", "tau", "weights", "model", "image_size",
                                                      ""]), JSON_ANY, max_size=3), JSON_ANY)
BATCH_FIELDS = {
    "input": PATHS, "out": PATHS,
    "preset": st.one_of(st.sampled_from(["magicbrush", "instructpix2pix", "nope", ""]), JSON_ANY),
    "format": st.one_of(st.sampled_from(["auto", "jsonl", "pairs_jsonl", "folder", "parquet", "zip", ""]), JSON_ANY),
    "columns": st.one_of(st.dictionaries(st.sampled_from(["original", "edited", "instruction", "x"]),
                                         st.one_of(st.text(max_size=8), SURROGATE_TEXT), max_size=3), JSON_ANY),
    "shard_size": st.one_of(st.integers(-3, 10**7), st.just(HUGE), JSON_ANY),
    "annotator": st.one_of(st.sampled_from(["pixel-diff", "sigma-xl", ""]), JSON_ANY),
    "options": OPTIONS,
    "threshold": st.one_of(st.floats(-1, 2), st.just(HUGE), JSON_ANY),
    "batch_size": st.one_of(st.integers(-3, 10**6), JSON_ANY),
    "unknown": JSON_ANY,
}


BATCH_AUTH = st.sampled_from([{"Authorization": f"Bearer {KEYS['user']}"}] * 12 + [
    {}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEYS["metrics"]}])


@st.composite
def batch_body(draw):
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return dumps(draw(JSON_ANY))
    if kind == 1:
        return draw(st.binary(max_size=60))
    body: dict = {}
    if kind >= 3:           # mostly well-formed enough to reach the path checks, the planner and the queue
        body = {"input": draw(PATHS), "out": draw(PATHS)}
    if kind >= 7:
        body = {"input": "corpus", "out": draw(st.sampled_from(["runs/f1", "runs/f2", "runs/f3"]))}
    for name in draw(st.lists(st.sampled_from(sorted(BATCH_FIELDS)), max_size=4, unique=True)):
        body[name] = draw(BATCH_FIELDS[name])
    return dumps(body)


@settings(max_examples=BATCH_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(kind=st.integers(0, 5), body=batch_body(), out=PATHS, auth=BATCH_AUTH,
       ctype=st.sampled_from(["application/json"] * 4 + ["", "text/plain", "multipart/form-data"]))
def test_fuzz_batches(fuzz_svc, tally, kind, body, out, auth, ctype):
    http = fuzz_svc.http
    if kind < 4:
        headers = {**auth, **({"content-type": ctype} if ctype else {})}
        resp = http.post("/v1/batches", content=body, headers=headers)
    elif isinstance(out, str):     # the raw bytes, percent-encoded (a lone surrogate as its 3 UTF-8-ish bytes)
        value = HUGE_DIGITS if out == HUGE else out
        query = urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")
        resp = http.get(f"/v1/batches/status?out={query}", headers=auth)
    else:
        resp = http.get("/v1/batches/status", headers=auth)
    tally.check(resp)
    body_json = resp.json() if resp.content else {}
    tally.batches[body_json.get("error", {}).get("code") or resp.status_code] += 1


def test_fuzz_totals_and_still_healthy(fuzz_svc, tally):
    """Runs after the fuzz tests (file order): the figures for the report, then a clean round trip."""
    assert tally.total >= 2000, tally.statuses
    assert not [s for s in tally.statuses if s >= 500]
    assert tally.statuses[202] + tally.statuses[200] > 20, tally.statuses      # valid requests were in the mix
    assert len(tally.codes) >= 12, tally.codes                                 # many distinct failure modes
    print(f"\nfuzz: {tally.total} requests, statuses {dict(sorted(tally.statuses.items()))}, "
          f"codes {dict(tally.codes.most_common())}; batches: {dict(tally.batches.most_common())}")
    assert fuzz_svc.http.get("/healthz").status_code == 200
    assert fuzz_svc.http.get("/readyz").status_code == 200
    ok = fuzz_svc.submit(ORIGINAL, EDITED, path="/v1/annotate")
    assert ok.status_code == 200 and ok.json()["result"]["area"] == 8 * 16
    assert fuzz_svc.workers[0].alive() and fuzz_svc.api.alive()


def test_load_concurrent_clients_queue_limit_gives_429_not_timeouts(redis_server, tmp_path):
    s = ServiceUnderTest(redis_server, tmp_path, ["limits.max_queue_length=6", "limits.retry_after_s=1"])
    try:
        s.start_api()    # worker.* only to the worker: `sigma serve api --set worker.X` is refused (it runs none)
        s.start_worker("slow-diff", ["worker.options={delay_ms: 40}", "worker.max_batch_size=4"])
        accepted: list[str] = []
        statuses: Counter = Counter()
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + 3.0
        files = s.files(ORIGINAL, EDITED)

        def client() -> None:
            with httpx.Client(base_url=s.url, timeout=10.0) as http:
                while time.monotonic() < stop_at:
                    try:
                        resp = http.post("/v1/jobs", files=files, data={"annotator": "slow-diff"},
                                         headers=s.headers())
                    except httpx.HTTPError as exc:
                        with lock:
                            errors.append(repr(exc))
                        continue
                    with lock:
                        statuses[resp.status_code] += 1
                        if resp.status_code == 202:
                            accepted.append(resp.json()["id"])
                        elif resp.status_code == 429:
                            assert resp.headers["retry-after"] == "1"
                            assert resp.json()["error"]["code"] == "queue_full"

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors[:3]
        assert set(statuses) <= {202, 429}, statuses
        assert statuses[429] > 0 and statuses[202] > 0, statuses
        assert len(set(accepted)) == len(accepted)
        views = s.wait_jobs(accepted, 60)
        assert all(v["status"] == "done" for v in views.values())
        assert all(s.raw_job(j)["completions"] == "1" for j in accepted)
        print(f"\nload: 8 clients x 3 s: {dict(statuses)}; {len(accepted)} accepted, all done exactly once")
    finally:
        s.close()
