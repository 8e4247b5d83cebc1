"""Settings of the annotation service (API and workers): one pydantic model, 12-factor overrides.

Precedence, lowest first: the model's defaults < a YAML file (`configs/serve.yaml`) < environment
variables < `--set key=value`. Environment variables:

- `SIGMA_REDIS_URL`                → `redis.url`
- `SIGMA_API_KEYS`                 → extra API keys, `KEY[:scope+scope],...` (hashed at once, never kept)
- `SIGMA_API_KEY_HASHES`           → extra keys given as SHA-256 hex digests, `HEX[:scope+scope],...`
- `SIGMA__SECTION__FIELD=value`    → any other field, e.g. `SIGMA__QUEUE__LEASE_MS=5000`
  (`SIGMA__WORKER__OPTIONS__TAU=0.1` reaches nested dicts; values are YAML scalars; a part in capitals is read
  in lower case, one with a lower-case letter as written: `SIGMA__WORKER__OPTIONS__imageSize`, `env_key`; one the
  config knows in capitals only, an option `K`, in capitals: `sigma.config.loader._capitals_as_known`).

The API and the workers load the same model so a deployment has one place that says how long a
lease lasts or how large an upload may be; each process reads only the sections it needs.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, ConfigDict, Field, field_validator, model_validator

from sigma.config.loader import Override, OverrideKeys, load_config
from sigma.config.schema import (
    MAX_BATCH_SIZE,
    IOConfig,
    LimitsConfig,
    Millis,
    Modules,
    NamesAnnotator,
    Seconds,
    Strict,
    WholeSeconds,
)
from sigma.errors import ConfigError
from sigma.registry import options_model
from sigma.text import env_text, shown

SCOPES = ("annotate", "metrics", "admin")
DEFAULT_SCOPES = ["annotate", "metrics"]


class RedisSettings(Strict):
    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or unix:// URL (env SIGMA_REDIS_URL)")
    key_prefix: str = Field("sigma", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$",
                            description="every key and stream the service uses starts with this")
    connect_timeout_s: Seconds = Field(1.0, gt=0, description="a down Redis must fail fast, not hang requests")
    socket_timeout_s: Seconds = Field(5.0, gt=0)
    max_connections: int = Field(512, ge=4, description="API pool size; each waiting request holds one")

    @field_validator("url")
    @classmethod
    def _a_redis_url(cls, url: str) -> str:
        """Parsed as the client will parse it, when the settings load: a URL it refuses (no scheme, a port past
        65535, a host IDNA cannot encode) was a ValueError traceback from the first connection instead
        (`sigma batch status --redis localhost`)."""
        try:
            from redis.connection import parse_url
        except ImportError:      # no redis client here: the command that needs one says so (`check_extras`)
            return url
        try:
            str(parse_url(url).get("host") or "").encode("idna")     # what the connection does with the host
        except (ValueError, UnicodeError) as exc:
            raise ValueError(f"not a Redis URL ({exc}); e.g. redis://HOST:6379/0 or unix:///path/redis.sock") \
                from None
        return url


class QueueSettings(Strict):
    group: str = Field("sigma-workers", min_length=1, description="consumer group shared by all workers")
    lease_ms: Millis = Field(30_000, ge=50, description="a pending entry idle this long is reclaimed by XAUTOCLAIM; "
                          "workers extend the lease of what they are working on with every heartbeat")
    block_ms: Millis = Field(1000, ge=1, description="XREADGROUP BLOCK: also the longest a SIGTERM waits")
    max_deliveries: int = Field(3, ge=1, description="an entry delivered this many times without success goes "
                                "to the dead-letter stream and its job fails")
    reclaim_interval_ms: Millis = Field(2000, ge=10, description="how often each worker runs the reaper")
    heartbeat_interval_ms: Millis = Field(2000, ge=10)
    heartbeat_ttl_ms: Millis = Field(10_000, ge=20, description="a worker whose key is older is not counted alive")
    dead_letter_maxlen: int = Field(10_000, ge=1, description="dead letters are copies; only they are trimmed")
    job_ttl_s: WholeSeconds = Field(86_400, ge=1, description="life of a queued job's data (images, status)")
    result_ttl_s: WholeSeconds = Field(3_600, ge=1, description="life of a finished job's result")


def check_heartbeat_fits(queue: QueueSettings) -> None:
    """For a process that runs a worker (`sigma worker [--batch]`, `sigma serve all`), before Redis: its heartbeat
    extends the leases of the work in hand, and with `--set queue.lease_ms=1000` and the default beat (2 s) every job
    longer than a second was reclaimed by each idle worker in turn while its first worker was on it (worked on by all
    at once, a delivery spent each time: dead-lettered, its job failed, past max_deliveries though no worker died). So a
    lease holds at least two beats (one late or lost beat hands nothing over), and a heartbeat key outlives the gap
    between two beats (or a live worker looks dead between them: /readyz 503, the fleet's live workers miscounted).
    Not a check of the model's own: a section with a check across fields adds a note to each of its field errors."""
    beat = queue.heartbeat_interval_ms
    if 2 * beat > queue.lease_ms:
        raise ConfigError(f"queue.lease_ms={queue.lease_ms} must be at least twice queue.heartbeat_interval_ms={beat}: "
                          "a worker's heartbeat extends the lease of the work in hand, and a shorter lease hands work "
                          "in progress to other workers; raise queue.lease_ms or lower queue.heartbeat_interval_ms")
    if queue.heartbeat_ttl_ms <= beat:
        raise ConfigError(f"queue.heartbeat_ttl_ms={queue.heartbeat_ttl_ms} must be above "
                          f"queue.heartbeat_interval_ms={beat}: a worker's heartbeat key would expire between two "
                          "beats, and a live worker look dead")


class ServiceLimits(LimitsConfig):
    """The library's image limits (`LimitsConfig`: max_pixels, max_bytes, max_instruction_chars,
    max_aspect_change) with a service's tighter defaults, plus the limits only a service has."""

    max_pixels: int = Field(16_000_000, gt=0, description="width*height of one image (a worker must survive a "
                            "batch of max-size pairs)")
    max_bytes: int = Field(25 * 1024 * 1024, gt=0, description="one encoded image",
                           validation_alias=AliasChoices("max_bytes", "max_image_bytes"))
    max_request_bytes: int = Field(64 * 1024 * 1024, gt=0, description="whole HTTP body; 413 above it")
    max_queue_length: int = Field(1000, ge=1, description="entries waiting or in flight per annotator "
                                  "stream; above it the API answers 429 + Retry-After and enqueues nothing")
    retry_after_s: WholeSeconds = Field(2, ge=1, description="the Retry-After of a 429; also how long an upload "
                                        "waits for room in max_bytes_in_flight before its 429")
    max_bytes_in_flight: int = Field(128 * 1024 * 1024, gt=0, description="request bytes the API parses and "
                                     "decodes at once, summed over concurrent submissions (each body's bytes as "
                                     "they arrive, not its declared length); a Content-Length or a chunk that "
                                     "does not fit: 429 server_busy + Retry-After (a chunk after waiting up to "
                                     "retry_after_s for room). A request may always grow when no other holds bytes")

    def io_config(self, align: bool = False) -> IOConfig:
        return IOConfig(limits=LimitsConfig(**self.model_dump(include=set(LimitsConfig.model_fields))), align=align)


class ApiKey(Strict):
    name: str = Field(description="shown in logs and stored as the job's owner; never the key. Default "
                      "key-<first 12 hex digits of sha256>, as for SIGMA_API_KEYS: keys without a name never share "
                      "jobs (give two keys one name to let them, e.g. while rotating a key)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    scopes: list[str] = Field(default_factory=lambda: list(DEFAULT_SCOPES))

    @model_validator(mode="before")
    @classmethod
    def _name_from_digest(cls, data: Any) -> Any:
        """An unnamed key was named "key", like every other unnamed key: each could read and delete the others'
        jobs and replay their Idempotency-Keys."""
        if isinstance(data, dict) and data.get("name") is None and isinstance(data.get("sha256"), str):
            data = {**data, "name": f"key-{data['sha256'][:12]}"}
        return data

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scope(s) {unknown}; known: {list(SCOPES)}")
        return value


class AuthSettings(Strict):
    keys: list[ApiKey] = Field(default_factory=list)
    allow_anonymous: bool = Field(False, description="serve without keys (local use only); every caller "
                                  "then has all scopes")


class ApiSettings(Strict):
    # a name or address: `--host ''` (or `api.host: ""`) bound every interface (uvicorn's '' is INADDR_ANY), the API
    # open to the network instead of the loopback default; `--host ' '` died at bind, "Name or service not known"
    host: str = Field("127.0.0.1", min_length=1, pattern=r"^\S+$",
                      description="bind address; 0.0.0.0 for every interface (never empty)")
    port: int = Field(8000, ge=0, le=65535)
    annotators: list[str] = Field(default_factory=lambda: ["pixel-diff"], min_length=1,
                                  description="annotators a request may name; the first is the default")
    wait_timeout_s: Seconds = Field(30.0, ge=0, description="POST /v1/annotate waits this long, then answers 202")
    max_wait_timeout_s: Seconds = Field(120.0, ge=0)
    align: bool = Field(False, description="io.align for every pair (undo a small translation)")
    upload_check: Literal["header", "full"] = Field(
        "header", description="header: limits, format and aspect from the image headers "
        "(fast; the worker decodes); full: also decode both images in the API before queueing")
    batch_root: str | None = Field(
        None, description="folder on the server (shared with the batch workers) that POST /v1/batches may read "
        "corpora from and write runs to; every path is resolved (symlinks, ..) and must stay under it. "
        "None: the batch routes answer 404 batches_disabled")
    max_batch_shards: int = Field(100_000, ge=1, description="POST /v1/batches refuses to plan a run of more "
                                  "shards (422 too_many_shards: raise shard_size): each is a task on Redis and "
                                  "a record the API builds while planning")
    max_batch_tasks: int = Field(1_000_000, ge=1, description="POST /v1/batches queues no task past this many on "
                                 "the batch stream (every run's, waiting or in progress): 429 queue_full, nothing "
                                 "queued; each task is ~250 bytes of Redis memory the online service shares")
    lock_wait_s: Seconds = Field(5.0, gt=0, description="POST /v1/batches waits at most this long for a new run "
                                 "folder's commit lock (a writer stopped mid-commit there holds it), then answers "
                                 "409 folder_busy with Retry-After; the request waited all of "
                                 "$SIGMA_FOLDER_LOCK_WAIT_S (120 s), the commands' wait")
    metrics_timeout_s: Seconds = Field(5.0, gt=0, description="the Redis reads of one /metrics scrape "
                                     "(queue depths, worker histograms, heartbeats) stop after this long: the scrape "
                                     "then answers with what was read and sigma_metrics_snapshot_complete 0 "
                                     "(sigma_redis_up 0 when nothing came back). Keep it below Prometheus' "
                                     "scrape_timeout (10 s default)")
    readyz_timeout_s: Seconds = Field(2.0, gt=0, description="the Redis reads of one /readyz (PING, the write "
                                    "probe, the heartbeats) stop after this long: /readyz then answers 503 "
                                    "not_ready, naming what was not read in time. Keep it below the load "
                                    "balancer's (or Kubernetes') probe timeout")
    public_docs: bool = Field(True, description="serve /docs, /redoc and /openapi.json without an API key; "
                              "false: they need a valid key (any scope)")
    header_timeout_s: Seconds = Field(10.0, gt=0, description="a request's line and headers must arrive within "
                                    "this long of its first byte (or of the connection); else 408 and close")
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024, description="a request's line and header "
                                  "fields may be at most this many bytes, however they arrive; over it 431 "
                                  "headers_too_large and close (a cookie or token that grew)")
    body_timeout_s: Seconds = Field(60.0, gt=0, description="reading a request body may take this long from the "
                                  "first read; else 408 request_timeout and close (also bounds an unread body "
                                  "still arriving after the answer)")
    body_idle_timeout_s: Seconds = Field(10.0, gt=0, description="reading a request body may wait this long for "
                                       "its next bytes; else 408 request_timeout and close, and the bytes it held of "
                                       "limits.max_bytes_in_flight are given back (a body sent fast that then stalled "
                                       "held them for all of body_timeout_s). At or above body_timeout_s: no effect")
    min_body_rate: int = Field(1024, ge=0, description="bytes a second: a request body must bring at least this "
                               "many, measured over each body_rate_window_s of waiting on it; else 408 "
                               "request_timeout and close, its bytes of limits.max_bytes_in_flight given back (a body "
                               "sent fast that then trickled a byte every few seconds, under body_idle_timeout_s, "
                               "held them for all of body_timeout_s). 0: no bound")
    body_rate_window_s: Seconds = Field(10.0, gt=0, description="the window of min_body_rate: each this "
                                        "long of waiting on a body must bring rate x window bytes")
    close_linger_s: Seconds = Field(2.0, ge=0, description="after an answer that closes the connection before the "
                                  "body was read (413 request_too_large / file_too_large), the rest of the body is "
                                  "read and discarded for up to this long, so that a client that writes its whole "
                                  "body before reading gets the answer instead of a connection reset; 0: close at "
                                  "once")
    close_linger_bytes: int = Field(8 * 1024 * 1024, ge=0, description="... and for up to this many bytes, "
                                    "whichever comes first; a body still arriving then is cut (0: close at once)")
    max_connections: int = Field(1000, ge=1, le=1_000_000, description="client connections the API holds open at "
                                 "once (idle, slow or busy); one more is answered 503 too_many_connections and closed "
                                 "at once. Lowered at start-up to what the open-file limit (RLIMIT_NOFILE, raised to "
                                 "its hard limit where needed) leaves: 4 file descriptors a connection and 64 spare")
    keep_alive_timeout_s: Seconds = Field(5.0, gt=0, description="an idle keep-alive connection is closed after "
                                        "this long (uvicorn timeout_keep_alive)")
    send_timeout_s: Seconds = Field(30.0, gt=0, description="an answer whose bytes the client stops taking (it "
                                  "reads nothing while the server's send buffer is full) for this long: the connection "
                                  "is cut, freeing its place among max_connections (a client that asks and never reads "
                                  "held it for good)")
    multipart_spool_bytes: int = Field(1024 * 1024, ge=0, description="a multipart file part larger than this "
                                       "is spooled to a temporary file while the body streams in")
    plugins: Modules = Field(default_factory=list, description="modules the API process imports at start-up "
                               "(`sigma serve api --plugin MODULE` adds to it), so a request may name the annotators "
                               "(and corpus readers) they register: POST /v1/batches checks a run's annotator and "
                               "options against the registry. The workers import theirs: worker.plugins")


class WorkerSettings(NamesAnnotator):
    """`worker:`. Its options are checked against its annotator where a worker runs (`WorkerServeConfig`), not where
    the settings are only shared (`sigma serve api`, `sigma worker --batch`: each warns of what it does not use)."""

    annotator: str = "pixel-diff"
    options: dict[str, Any] = Field(default_factory=dict, description="annotator config overrides")
    max_batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE)
    max_wait_ms: Millis = Field(0, ge=0, description="after the first entry, wait this long for more; 0: take "
                             "what is queued (under load batches fill while the previous batch runs)")
    consumer: str | None = Field(None, description="consumer name; default <host>-<pid>")
    plugins: Modules = Field(default_factory=list, description="modules imported before building the "
                               "annotator, so third-party annotators can register themselves")
    run_read_retry_s: Seconds = Field(5.0, ge=0, description="`sigma worker --batch`: a run.json found unreadable "
                                    "(being replaced, half seen over NFS, a passing EACCES) is read again with "
                                    "backoff for this long before the task goes back through its lease")
    max_defer_s: Seconds = Field(86_400.0, ge=1, description="`sigma worker --batch`: a shard task "
                               "whose run folder another process holds (a local `sigma batch run`: run_locked) is "
                               "handed back without spending a delivery while that process writes shards there; once "
                               "none has been written for this long (a holder stopped, hung, or gone with its host) "
                               "it is dead-lettered, run_locked_too_long. 1 s to 30 days")
    batch_timeout_s: Seconds = Field(600.0, ge=0, description="a batch (decode, model, encode) still running after "
                                   "this long means the model hangs: the jobs get `worker_hung` as their last error "
                                   "and the worker exits with status 1 for its supervisor to restart it (the entries "
                                   "are redelivered, and dead-lettered after queue.max_deliveries); `--batch`: a shard "
                                   "with no pair done for this long, the same, and it must be above "
                                   "worker.run_read_retry_s + $SIGMA_MODEL_LOCK_WAIT_S (5 + 120 s: the longest a "
                                   "task waits before its first pair), or the worker is refused at start-up "
                                   "(invalid_config); 0: no limit")
    max_rss_mb: int = Field(0, ge=0, description="after a batch (`--batch`: a shard) is stored and acknowledged, a "
                            "worker whose resident memory exceeds this many MiB stops (status 75) for its supervisor "
                            "to start a fresh one: a model or plugin that leaks is recycled between batches, not "
                            "killed by the OOM killer mid-batch (which costs the batch a delivery); 0: no limit "
                            "(Linux: /proc/self/statm)")
    decode_pool_retry_s: Seconds = Field(60.0, gt=0, description="`sigma worker`: an image decode pool whose threads "
                                       "the machine would not start (a pids limit, no memory for their stacks) is "
                                       "given up, images decoded in the worker's own thread, and tried again this "
                                       "long after; doubled after each refusal in a row, up to 16 times it")
    load_retry_s: Seconds = Field(600.0, ge=0, description="`sigma worker`: a model load the machine refused memory "
                                "or threads for (out_of_memory, out_of_threads: a shortage that passes) is tried "
                                "again with backoff, a line on stderr per try, for this long; then the worker exits 2 "
                                "for its supervisor. 0: exit 2 on the first refusal")
    restart_backoff_s: Seconds = Field(1.0, gt=0, description="`sigma serve all`: wait before restarting a worker "
                                     "that died; doubled after each quick death, up to restart_max_backoff_s")
    restart_max_backoff_s: Seconds = Field(30.0, gt=0)
    max_restarts: int = Field(5, ge=0, description="`sigma serve all`: a worker that dies this many times within "
                              "restart_window_s is not restarted again; the server stops with exit status 1")
    restart_window_s: Seconds = Field(60.0, gt=0, description="deaths older than this are forgiven; a worker that "
                                    "ran this long counts as healthy again")

    @field_validator("consumer")
    @classmethod
    def _utf8_consumer(cls, name: str | None) -> str | None:
        """The name is written to Redis (the group's consumer, the heartbeat key) as UTF-8: one holding bytes that are
        not UTF-8 (`SIGMA__WORKER__CONSUMER=$'a\\xff'`, `--consumer`; Python reads them as surrogate escapes) was
        taken, the worker loaded its model, and its first heartbeat ended it with `invalid_text` blaming the locale."""
        if name is not None:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"holds bytes that are not UTF-8 text ({shown(ascii(name), 80)}); a consumer name is "
                                 "written to Redis as UTF-8") from None
        return name


class ServeConfig(Strict):
    redis: RedisSettings = RedisSettings()
    queue: QueueSettings = QueueSettings()
    limits: ServiceLimits = ServiceLimits()
    auth: AuthSettings = AuthSettings()
    api: ApiSettings = ApiSettings()
    worker: WorkerSettings = WorkerSettings()


class RunningWorkerSettings(WorkerSettings):
    """The `worker:` section of a process that builds that annotator (`sigma worker`, `sigma serve all`): its options
    validated by the annotator's own config with the rest (`NamesAnnotator`), each error at its full key with the
    loader's did-you-mean (`worker.options.threshhold` ... did you mean 'worker.options.threshold'?), as `sigma
    annotate --set options.KEY` is. They were validated only where the annotator was built: `pixel-diff: bogus:
    Extra inputs are not permitted`, the key cut and no suggestion."""

    options_model = staticmethod(options_model)


class WorkerServeConfig(ServeConfig):
    """The settings as a process that runs the worker reads them (`load_serve_config(..., model=...)`)."""

    model_config = ConfigDict(title="ServeConfig")      # said as the settings they are: "invalid ServeConfig: ..."
    worker: RunningWorkerSettings = RunningWorkerSettings()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _parse_key_list(text: str, hashed: bool, source: str) -> list[dict]:
    """`KEY[:SCOPE+SCOPE],...` from `source` (`$SIGMA_API_KEYS`, `$SIGMA_API_KEY_HASHES`). An entry holding bytes that
    are not UTF-8 (Python reads them as surrogate escapes) is refused naming the variable: it was an `invalid_text`
    line quoting `'\\udcff'` and blaming the locale, naming neither the variable nor the entry."""
    keys = []
    for n, item in enumerate(part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{source}: entry {n + 1} holds bytes that are not UTF-8 text; a key is UTF-8 "
                              "text") from None
        secret, _, scopes = item.partition(":")
        if not secret:
            raise ConfigError(f"{source}: entry {n + 1} has an empty key")
        unknown = [s for s in scopes.split("+") if s and s not in SCOPES] if scopes else []
        if unknown:         # was pydantic's whole ValidationError text, with its URL, naming no variable
            raise ConfigError(f"{source}: entry {n + 1} names unknown scope(s) {', '.join(unknown)}; known: "
                              f"{', '.join(SCOPES)} (KEY:SCOPE+SCOPE)")
        digest = secret.lower() if hashed else hash_key(secret)
        # The name is the job owner: derived from the digest, so reordering the list keeps owners stable.
        entry: dict[str, Any] = {"name": f"key-{digest[:12]}", "sha256": digest}
        if scopes:
            entry["scopes"] = [s for s in scopes.split("+") if s]
        keys.append(entry)
    return keys


def env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], list[dict]]:
    """Dotted overrides and extra API keys from the environment."""
    return env_sourced(env)[0], _env_keys(env)


def env_sourced(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Dotted overrides from the environment, and the variable each came from (for the errors: `SIGMA_REDIS_URL:
    redis.url: not a Redis URL`, where `redis.url:` alone sent the user to a config file that did not set it). A
    blank `SIGMA_REDIS_URL` is unset, as an empty one was (and as a blank `SIGMA_CACHE_DIR` is): `' '` was refused
    as `redis.url`."""
    overrides: dict[str, Any] = {}
    sources: dict[str, str] = {}
    taken = OverrideKeys("environment variables")
    if env_text("SIGMA_REDIS_URL", env):
        overrides["redis.url"], sources["redis.url"] = env["SIGMA_REDIS_URL"], "SIGMA_REDIS_URL"
        taken.add("redis.url", "SIGMA_REDIS_URL")
    for name, value in env.items():
        if name.startswith("SIGMA__") and len(name) > 7:
            dotted = env_key(name)
            # two variables for one place (SIGMA__WORKER__ANNOTATOR and SIGMA__worker__annotator, SIGMA__WORKER
            # and SIGMA__WORKER__OPTIONS__X, SIGMA_REDIS_URL and SIGMA__REDIS__URL): which won was the environment's
            # order. Named by the variables only: a value may be a credential (a Redis URL's password)
            taken.add(dotted, name)
            overrides[dotted], sources[dotted] = Override.read(value, name), name
    return overrides, sources


def env_key(name: str) -> str:
    """The dotted key a `SIGMA__SECTION__KEY` variable sets: each part written in capitals (or digits) is read in lower
    case (`SIGMA__QUEUE__LEASE_MS` → `queue.lease_ms`), a part with a lower-case letter as written
    (`SIGMA__WORKER__OPTIONS__imageSize` → `worker.options.imageSize`). Every part was lowered, so an option whose name
    has capitals (a plugin's `Field(alias="imageSize")`) could not be set from the environment at all: `imagesize`,
    an unknown key. A key the config knows in capitals only (an option `K`) is put back in capitals where the config is
    loaded, against the option's model (`sigma.config.loader._capitals_as_known`)."""
    return ".".join(part.lower() if part == part.upper() else part for part in name[7:].split("__"))


def _env_keys(env: Mapping[str, str]) -> list[dict]:
    keys = _parse_key_list(env.get("SIGMA_API_KEYS", ""), False, "SIGMA_API_KEYS")
    return keys + _parse_key_list(env.get("SIGMA_API_KEY_HASHES", ""), True, "SIGMA_API_KEY_HASHES")


SERVE_CONFIG_ENV = "SIGMA_SERVE_CONFIG"


def _serve_config_file(path: str | Path | None, env: Mapping[str, str]) -> dict:
    """The settings file's values: `path` (a command's --config), else `$SIGMA_SERVE_CONFIG` (blank = unset, as
    other variables), else none. A problem with the variable's file names the variable: `SIGMA_SERVE_CONFIG=' '` was
    "': config file not found", naming neither the variable nor the value."""
    from sigma.config.loader import read_yaml

    if path is not None:
        return read_yaml(path)
    if not env_text(SERVE_CONFIG_ENV, env):
        return {}
    named = env[SERVE_CONFIG_ENV]
    try:
        return read_yaml(named)
    except ConfigError as exc:
        raise ConfigError(f"{SERVE_CONFIG_ENV}: {exc.message}") from exc


def config_file_named(path: str | Path | None, env: Mapping[str, str]) -> str | None:
    """The settings file as messages name it: `path` (a command's --config), else `$SIGMA_SERVE_CONFIG`'s value with the
    variable, None for no file."""
    if path is not None:
        return str(path)
    return f"{env[SERVE_CONFIG_ENV]} ({SERVE_CONFIG_ENV})" if env_text(SERVE_CONFIG_ENV, env) else None


def setting_sources(path: str | Path | None = None,
                    env: Mapping[str, str] | None = None) -> Callable[[str], list[str]]:
    """Where the settings file and the environment give a setting, the file and the environment read once, here: the
    function returned answers for a setting `dotted` (`worker.max_wait_ms`, in any of its spellings:
    `limits.max_image_bytes` for `limits.max_bytes`) the variables that set it, it whole or a key under it
    (`SIGMA__WORKER__OPTIONS__TAU` for `worker.options`), and the file (`config_file_named`) unless a variable gives it
    or a mapping above it whole, replacing the file's. For a line that must say where a value came from (`sigma serve`'s
    settings it does not use): "(from the config file or SIGMA__WORKER__*)" sent the user looking through both. Asked
    once per setting, a one-setting `given_by` read the file (and walked the environment) again each time: seven opens
    of one file for six settings, each able to find another file than the one loaded; it had no caller left and is
    gone."""
    env = os.environ if env is None else env
    sources = env_sourced(env)[1]
    try:
        tree = _serve_config_file(path, env)
    except ConfigError:         # read a moment ago; gone since: it is no longer where the value came from
        tree = {}
    named = config_file_named(path, env)

    def given(dotted: str) -> list[str]:
        places = _spellings(dotted)
        whole = [name for key, name in sources.items() for place in places
                 if place == key or place.startswith(f"{key}.")]
        if whole:
            return list(dict.fromkeys(whole))
        under = [name for key, name in sources.items() for place in places if key.startswith(f"{place}.")]
        in_file = any(_holds(tree, place.split(".")) for place in places)
        return list(dict.fromkeys([*([named] if in_file and named else []), *under]))

    return given


def _spellings(dotted: str) -> list[str]:
    """`dotted` and the other names of its field (`AliasChoices`: limits.max_bytes, limits.max_image_bytes)."""
    section, _, key = dotted.partition(".")
    info = ServeConfig.model_fields.get(section)
    field = getattr(info.annotation, "model_fields", {}).get(key) if info is not None and key else None
    alias = field.validation_alias if field is not None else None
    names = [name for name in alias.choices if isinstance(name, str)] if isinstance(alias, AliasChoices) else []
    return list(dict.fromkeys([dotted, *(f"{section}.{name}" for name in names)]))


def _holds(tree: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def load_serve_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None,
                      model: type[ServeConfig] = ServeConfig) -> ServeConfig:
    """defaults < YAML (`path`, else `$SIGMA_SERVE_CONFIG`) < environment < `overrides` (`--set`) < `flags` (a
    command's own options, dotted keys, None = not given); everything is validated once, at the end; errors name the
    key (ConfigError), and the environment variable a value came from. `model`: `WorkerServeConfig` where the
    worker's annotator is built (its options checked against it)."""
    env = os.environ if env is None else env
    env_set, sources = env_sourced(env)
    env_keys = _env_keys(env)
    from sigma.config.loader import flags_named, read_overrides

    base = _serve_config_file(path, env)
    # the file named in its errors, as `load_config(model, path)` names it: they said "the config file"
    base_from = config_file_named(path, env)
    given = {**read_overrides(overrides), **{k: v for k, v in (flags or {}).items() if v is not None}}
    # the command line's keys after every variable's, in the order of the layers: `{**env_set, **given}` kept a key
    # both give at the variable's place, so a mapping the command line gives whole, applied after it, replaced it
    # (SIGMA__WORKER__MAX_BATCH_SIZE=3, --set 'worker={...}', --max-batch-size 5: the worker took 8, the default)
    merged = {**{k: v for k, v in env_set.items() if k not in given}, **given}
    cfg = load_config(model, None, merged, base=base, base_from=base_from, flags=flags_named(dict(flags or {})),
                      sources={key: name for key, name in sources.items() if key not in given})
    if env_keys:
        try:
            extra = [ApiKey.model_validate(k) for k in env_keys]
        except Exception as exc:  # pydantic ValidationError → one line
            raise ConfigError(f"API keys from the environment: {exc}") from exc
        cfg.auth.keys = [*cfg.auth.keys, *extra]
    return cfg
