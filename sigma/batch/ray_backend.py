"""`--backend ray`: the same shards, run by actors spread over a Ray cluster.

Each actor holds one `ShardRunner` (the annotator loaded once, the ordinary pipeline) and is handed whole
shard descriptors by this driver, so every shard's output is the file the local backend writes, byte for
byte, status file included, and `--resume` (with either backend), exports and the review page work
unchanged. The driver, not Ray, owns retries: an actor that dies (killed, out of memory, its node gone)
loses only its shard, which goes to the front of the queue for another actor, and the run summary says
which shards were retried and why. Ray Core actors rather than a Ray Data `map_batches` graph: a shard is
already the unit of work, and owning the queue is what makes retries, per-pair progress and error counts
exact. Optional: `pip install 'sigma-masks[ray]'`.

Resources are configuration (`ray.*` in the batch config, `--actors`, `--actor-cpus`, `--actor-gpus`,
`--threads`): by default one actor per GPU, or on a CPU-only cluster one actor per CPU with one torch thread.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from sigma.batch.config import BatchConfig, RayConfig
from sigma.batch.dispatch import ShardLedger
from sigma.batch.layout import RunDir
from sigma.batch.shard_runner import Progress, ShardOutcome, ShardRunner, absolute_config
from sigma.errors import ConfigError, SigmaError, error_record, raise_error_record
from sigma.io.corpora.base import Shard, planned_pairs
from sigma.text import env_text

NAMESPACE = "sigma"
POLL_S = 1.0                       # progress questions to busy actors, and the driver's wake-up period
LOCAL_OBJECT_STORE = 128 << 20     # shard descriptors and outcomes are tiny; Ray's minimum is 75 MiB


class ShardActor:
    """One per actor process: builds the annotator once, then runs whole shards. A threaded actor
    (max_concurrency=2) so `progress` answers while `run` works. Never raises from __init__: a failure to
    build is reported by `ready()`, so the driver can show the real error (e.g. missing weights) and stop."""

    def __init__(self, config: dict[str, Any], run_dir: str, run_hash: str, threads: int | None,
                 workers: int | None):
        import ray

        node = ray.get_runtime_context().get_node_id()[:8]
        self.name = f"actor pid {os.getpid()} on node {node}"
        self.error: dict[str, Any] | None = None
        self.runner: ShardRunner | None = None
        try:
            self.runner = ShardRunner(config, run_dir, run_hash, threads=threads, workers=workers,
                                      worker_name=self.name)
        except Exception as exc:  # noqa: BLE001 - reported through ready()
            self.error = error_record(exc)

    def ready(self) -> dict[str, Any]:
        return {"worker": self.name, "error": self.error, "pid": os.getpid()}

    def run(self, shard: dict[str, Any]) -> dict[str, Any]:
        self.runner.progress = Progress()
        return self.runner.run(shard).to_dict()

    def progress(self) -> dict[str, Any]:
        runner = self.runner
        if runner is None:
            return {"shard": None, "pairs": 0, "errors": 0, "worker": self.name}
        pairs, errors = runner.progress.take()
        return {"shard": runner.current, "pairs": pairs, "errors": errors, "worker": self.name}


# --- connecting -----------------------------------------------------------------------------------
def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--backend ray needs Ray: pip install 'sigma-masks[ray]' (or use the local backend, or "
                          "fleet mode: sigma batch submit + sigma worker --batch)") from exc
    return ray


def _host_port(address: str, source: str = "--ray-address") -> tuple[str, int]:
    """(host, port) as the socket will take them: a port past 65535 (OverflowError) or a host IDNA cannot encode
    (UnicodeError, `--ray-address $'\\xff'`) was a traceback from the probe's connect. `source`: where the address
    was given (`address_given`), named in the refusal."""
    bare = address.split("://", 1)[-1].rstrip("/")
    host, _, port = bare.rpartition(":")
    if not host:
        host, port = bare, "6379"   # `ray start --head`'s default port
    try:
        number = int(port)
        host.strip("[]").encode("idna")
        if not 0 < number < 65536:
            raise ValueError(f"port {number}")
    except (ValueError, UnicodeError) as exc:      # UnicodeError is a ValueError; named for the reader
        raise ConfigError(f"Ray address {address!r} ({source}) is not host:port, 'auto' or ray://host:port") from exc
    return host.strip("[]"), number


def probe_grpc(host: str, port: int, timeout: float) -> None:
    """Raise OSError unless host:port answers as a gRPC (HTTP/2) server: a Ray head's GCS or Ray Client
    server does; a dead port, a firewall or another kind of service does not. Bounded by `timeout`
    (ray.init itself would retry an unreachable address for minutes)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        # the HTTP/2 client preface and an empty SETTINGS frame; a server answers with its own SETTINGS
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        header = b""
        while len(header) < 9:
            chunk = sock.recv(9 - len(header))
            if not chunk:
                raise OSError("the connection was closed without an HTTP/2 answer (not a Ray cluster?)")
            header += chunk
        if header[3] != 0x04:
            raise OSError(f"it answered {header!r}, not HTTP/2 (not a Ray cluster?)")


def resolve_address(address: str) -> str:
    """'auto' → the address `ray start` recorded on this machine; anything else as given."""
    if address != "auto":
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # pragma: no cover - Ray moved it; let ray.init resolve it
        return address
    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError) as exc:
        raise SigmaError(f"no running Ray cluster found for address 'auto' ({exc}); start one with "
                         "`ray start --head`, or pass --ray-address HOST:PORT", code="ray_unreachable") from exc
    if not found:
        raise SigmaError("no running Ray cluster found for address 'auto' (nothing started with `ray start` on this "
                         "machine); start one with `ray start --head`, or pass --ray-address HOST:PORT",
                         code="ray_unreachable")
    return found


@contextlib.contextmanager
def _quiet_auth_notice():
    """Ray >= 2.59 logs a warning whenever it turns token authentication on; the run's output is not the place."""
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def address_given(ray_cfg: RayConfig) -> tuple[str | None, str]:
    """(the cluster's address or None for a Ray of our own, where it was given: `--ray-address` or `$RAY_ADDRESS`).

    A blank `$RAY_ADDRESS` counts as unset, as blank `SIGMA_*` variables do (`sigma.service.settings`): `RAY_ADDRESS=
    ' '` was probed as the host ' ' and said "cannot reach the Ray cluster at : ...", naming an empty address and
    no variable. A blank `--ray-address` (`ray.address`) is a mistake, not a request for a local Ray: refused."""
    if ray_cfg.address is not None:
        if not ray_cfg.address.strip():
            raise ConfigError(f"Ray address {ray_cfg.address!r} (--ray-address / ray.address) is blank; give "
                              "host:port, 'auto', ray://host:port or 'local', or leave it out")
        return ray_cfg.address, "--ray-address"
    return env_text("RAY_ADDRESS") or None, "$RAY_ADDRESS"


def connect(ray_cfg: RayConfig) -> tuple[bool, str]:
    """Join the configured cluster, or start a one-machine Ray; (started_here, address). An address that
    does not answer is a one-line error naming it (exit 2), never a hang."""
    ray = import_ray()
    if ray.is_initialized():
        return False, "(already connected)"
    address, source = address_given(ray_cfg)
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address in (None, "local"):
        from sigma.batch.procs import idle_cores

        with _quiet_auth_notice():   # as many CPUs as are idle, like the local backend's default processes
            ray.init(address="local", num_cpus=idle_cores(), include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE, **quiet)
        return True, "local"
    target = resolve_address(address)
    host, port = _host_port(target, source)
    try:
        probe_grpc(host, port, ray_cfg.connect_timeout_s)
    except OSError as exc:
        raise SigmaError(f"cannot reach the Ray cluster at {address}"
                         + (f" ({target})" if target != address else "") + f": {exc}. Is `ray start --head` "
                         f"running there, and the port open? (given by {source})",
                         code="ray_unreachable") from exc
    try:
        ray.init(address=target, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SigmaError(f"cannot join the Ray cluster at {address} (given by {source}): {exc}. If the cluster "
                         "uses token authentication (Ray >= 2.59 turns it on when ~/.ray/auth_token exists), set "
                         "RAY_AUTH_MODE=token here and give this machine the head's token (RAY_AUTH_TOKEN, or "
                         "~/.ray/auth_token; `ray get-auth-token` on the head prints it)",
                         code="ray_unreachable") from exc
    return False, target


# --- placement ------------------------------------------------------------------------------------
@dataclass
class ActorPlan:
    actors: int
    num_cpus: float
    num_gpus: float
    threads: int
    workers: int

    def to_dict(self) -> dict[str, Any]:
        return {"actors": self.actors, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                "threads": self.threads, "decode_workers": self.workers}


def plan_actors(cfg: BatchConfig, resources: dict[str, float], pending: int) -> ActorPlan:
    """One actor per GPU (or per `num_gpus` share of one); on a CPU-only cluster one per `num_cpus` CPUs,
    each with one torch thread per CPU it holds."""
    rc = cfg.ray
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    num_gpus = rc.num_gpus if rc.num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if rc.actors is not None:
        actors = rc.actors
    elif num_gpus > 0:
        actors = min(math.floor(gpus / num_gpus + 1e-9), math.floor(cpus / rc.num_cpus + 1e-9) or 1)
    else:
        actors = math.floor(cpus / rc.num_cpus + 1e-9)
    if num_gpus > 0 and gpus < num_gpus:
        raise ConfigError(f"each Ray actor would ask for {num_gpus} GPU but the cluster has {gpus:.15g}; set "
                          "--actor-gpus 0 (or ray.num_gpus=0) to run on its CPUs")
    if cpus < rc.num_cpus:
        raise ConfigError(f"each Ray actor would ask for {rc.num_cpus:.15g} CPU but the cluster has {cpus:.15g}")
    threads = cfg.threads or max(1, int(rc.num_cpus))
    workers = cfg.workers if cfg.workers is not None else 0   # one actor = one process: decode in its reader
    return ActorPlan(max(1, min(actors, pending)), rc.num_cpus, num_gpus, threads, workers)


# --- driving --------------------------------------------------------------------------------------
@dataclass
class _Slot:
    index: int
    handle: Any = None
    name: str = ""
    started: float = 0.0
    ready: bool = False
    worker: str = ""
    shard: Shard | None = None
    ticked: tuple[int, int] = (0, 0)
    heard: float = 0.0                   # monotonic time the shard was handed, or last moved on
    asking: bool = False                 # a progress() call is out
    generation: int = 0
    refs: dict[str, Any] = field(default_factory=dict)


class _Driver:
    def __init__(self, ray, cfg: BatchConfig, rundir: RunDir, plan: ActorPlan, ledger: ShardLedger):
        self.ray, self.cfg, self.plan, self.ledger = ray, cfg, plan, ledger
        self.actor_cls = ray.remote(ShardActor)
        self.config = absolute_config(cfg)
        self.run_dir = str(rundir.root.resolve())
        self.tag = f"sigma-{ledger.run_hash}-{os.getpid()}"
        self.slots = [_Slot(i) for i in range(plan.actors)]
        self.inflight: dict[Any, tuple[_Slot, str, int]] = {}    # ref → (slot, kind, generation)
        self.started = 0
        self.unready_deaths = 0
        for slot in self.slots:
            self.start(slot)

    def start(self, slot: _Slot) -> None:
        self.started += 1
        slot.generation += 1
        slot.name = f"{self.tag}-{slot.index}-{slot.generation}"
        slot.ready, slot.shard, slot.ticked, slot.asking, slot.worker = False, None, (0, 0), False, ""
        slot.started = time.monotonic()
        slot.handle = self.actor_cls.options(
            name=slot.name, namespace=NAMESPACE, num_cpus=self.plan.num_cpus, num_gpus=self.plan.num_gpus,
            max_restarts=0, max_task_retries=0, max_concurrency=2,
        ).remote(self.config, self.run_dir, self.ledger.run_hash, self.plan.threads, self.plan.workers)
        self.inflight[slot.handle.ready.remote()] = (slot, "ready", slot.generation)

    def kill(self, slot: _Slot) -> None:
        if slot.handle is not None:
            with contextlib.suppress(Exception):   # already gone
                self.ray.kill(slot.handle, no_restart=True)
        slot.handle, slot.ready = None, False
        slot.generation += 1                   # what the killed actor still answers is not news of the slot

    def assign(self) -> None:
        for slot in self.slots:
            if slot.ready and slot.shard is None and self.ledger.queue:
                slot.shard, slot.ticked, slot.heard = self.ledger.next(), (0, 0), time.monotonic()
                self.inflight[slot.handle.run.remote(slot.shard.to_dict())] = (slot, "run", slot.generation)

    def ask_progress(self) -> None:
        for slot in self.slots:
            if slot.ready and slot.shard is not None and not slot.asking:
                slot.asking = True
                self.inflight[slot.handle.progress.remote()] = (slot, "progress", slot.generation)

    def watch(self, now: float) -> None:
        """An actor that holds a shard and has moved on no pair for `stall_s` (a deadlock in native code, a
        stopped process, a GPU call that never returns) is taken as hung, as the local backend's processes are: a
        run only noticed dead actors, so one hung actor kept the whole run waiting for ever. It is killed and its
        shard goes to another actor."""
        for slot in self.slots:
            if slot.ready and slot.shard is not None and now - slot.heard > self.cfg.stall_s:
                self.lost(slot, f"{slot.worker or slot.name}: no progress for {self.cfg.stall_s:.15g} s "
                                "(taken as hung)")

    def lost(self, slot: _Slot, reason: str) -> None:
        """The slot's actor is dead or unusable: its shard goes back to the queue; a new actor takes the slot
        (Ray places it wherever resources are left; it may wait, the others go on)."""
        self.kill(slot)
        if slot.shard is not None:
            self.ledger.lost(slot.shard, reason, slot.worker or slot.name, slot.ticked)
            slot.shard, slot.ticked = None, (0, 0)
        if self.ledger.queue:
            self.start(slot)

    def handle(self, ref: Any) -> None:
        slot, kind, generation = self.inflight.pop(ref)
        if generation != slot.generation:      # an answer from a previous actor of this slot
            return
        ray = self.ray
        try:
            value = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if kind == "progress":
                slot.asking = False
                return                          # the run() call reports the death
            if not slot.ready:
                self.unready_deaths += 1
                if self.unready_deaths > 2 * len(self.slots) + self.cfg.attempts:
                    raise SigmaError(f"Ray actors keep dying before they are ready (last: {_first_line(exc)})",
                                     code="worker_failed") from exc
            self.lost(slot, f"actor died: {_first_line(exc)}")
            return
        except ray.exceptions.RayTaskError as exc:
            if kind == "run":                   # the shard raised (e.g. the writer failed): try elsewhere
                self.lost(slot, f"shard raised: {_first_line(exc)}")
            else:
                slot.asking = False
            return
        if kind == "ready":
            if value["error"]:
                raise_error_record(value["error"], "a Ray actor could not load the annotator")
            slot.ready, slot.worker = True, value["worker"]
        elif kind == "progress":
            slot.asking = False
            if slot.shard is not None and value["shard"] == slot.shard.key:
                delta = (value["pairs"] - slot.ticked[0], value["errors"] - slot.ticked[1])
                if delta[0] > 0 or delta[1] > 0:
                    slot.heard = time.monotonic()
                    self.ledger.tick(max(delta[0], 0), max(delta[1], 0))
                    slot.ticked = (max(value["pairs"], slot.ticked[0]), max(value["errors"], slot.ticked[1]))
        elif kind == "run":
            self.ledger.done(ShardOutcome(**value), slot.ticked)
            slot.shard, slot.ticked = None, (0, 0)

    def drive(self) -> None:
        ray = self.ray
        last_live = time.monotonic()
        next_poll = time.monotonic() + POLL_S
        while not self.ledger.finished:
            self.assign()
            now = time.monotonic()
            if any(s.ready for s in self.slots):
                last_live = now
            elif now - last_live > self.cfg.ray.actor_timeout_s:
                self.ledger.fail_remaining(
                    f"no Ray actor could be placed for {self.cfg.ray.actor_timeout_s:.0f} s (each asks for "
                    f"{self.plan.num_cpus} CPU, {self.plan.num_gpus} GPU; cluster: {ray.cluster_resources()})")
                break
            if now >= next_poll:
                self.ask_progress()
                self.watch(now)
                next_poll = now + POLL_S
            if not self.inflight:
                time.sleep(0.05)
                continue
            done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=POLL_S)
            for ref in done:
                self.handle(ref)
            while self.inflight:                # everything else that is already there
                more, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0)
                if not more:
                    break
                self.handle(more[0])

    def close(self) -> None:
        for slot in self.slots:
            self.kill(slot)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(text[0].split())[:300] if text else type(exc).__name__


def run_with_ray(cfg: BatchConfig, rundir: RunDir, run_hash: str, pending: list[Shard], total_shards: int,
                 progress: bool = True):
    from sigma.batch.runner import make_progress

    ray = import_ray()
    started_here, address = connect(cfg.ray)
    driver = None
    try:
        plan = plan_actors(cfg, ray.cluster_resources(), len(pending))
        total = planned_pairs(pending)
        with make_progress(total, progress) as bar:
            ledger = ShardLedger(rundir, run_hash, pending, cfg.attempts, bar)
            driver = _Driver(ray, cfg, rundir, plan, ledger)
            driver.drive()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return ledger.summary(total_shards, {"backend": "ray", "address": address, **plan.to_dict(),
                                             "actors_started": driver.started, "nodes": nodes})
    finally:
        if driver is not None:
            driver.close()
        if started_here:
            ray.shutdown()
