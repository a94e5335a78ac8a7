"""The services as child processes (job_service, the notifier, the workers and the webhook
sender), wired to the dependencies, each on a free local port and ready once its gRPC health
check answers SERVING."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.deps import HOST, Dependencies
from devstack.procs import (
    ManagedProcess,
    StartupError,
    free_port,
    reap_stale,
    stop_all,
    wait_until,
)
from devstack.state import REPO_ROOT
from services.common.auth import NOTIFIER_ROLE, WEBHOOKS_ROLE, WORKER_ROLE, mint_token
from services.common.config import TlsSettings
from services.common.sealing import Sealer
from services.common.tls import sync_channel

log = logging.getLogger(__name__)

WORKER_SUBJECT = "media-worker"
WORKER_TOKEN_TTL_SECONDS = 30 * 24 * 3600  # a long-lived `make up` stack must not lose its worker
NOTIFIER_SUBJECT = "media-notifier"
WEBHOOKS_SUBJECT = "media-webhooks"
DEFAULT_START_TIMEOUT = 60.0
# job_service's per-user limits of CreateJob turned off, for stacks that create many jobs quickly
# as one user (the services' defaults are on).
USER_LIMITS_OFF = {"RATE_LIMIT_PER_MINUTE": "0", "MAX_ACTIVE_JOBS_PER_USER": "0"}
_PORT_ATTEMPTS = 3

# A fresh channel per probe would work too, but this keeps reconnects fast while the server boots.
_PROBE_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]


def health_serving(
    addr: str,
    timeout: float = 1.0,
    channel: grpc.Channel | None = None,
    tls: TlsSettings | None = None,
) -> bool:
    """True when the server at `addr` answers the standard health check with SERVING."""
    own = channel is None
    ch = channel or sync_channel(addr, tls or TlsSettings(), options=_PROBE_OPTIONS)
    try:
        response = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=True
        )
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        if own:
            ch.close()


@dataclass
class ServiceProcess:
    """One service: `python -m <module>` listening on `addr`."""

    name: str
    module: str
    env: dict[str, str]
    log_dir: Path
    addr: str = ""
    metrics_port: int = 0  # Prometheus /metrics (METRICS_PORT), picked at the first spawn
    health_port: int = 0  # plaintext health checks (HEALTH_LISTEN_ADDR), picked likewise
    # job_service: WorkerService on a port of its own (WORKER_LISTEN_ADDR), picked likewise.
    worker_listener: bool = False
    worker_port: int = 0
    pid_dir: Path | None = None
    process: ManagedProcess | None = field(default=None, repr=False)
    _ever_ready: bool = field(default=False, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def metrics_addr(self) -> str:
        return f"{HOST}:{self.metrics_port}" if self.metrics_port else ""

    @property
    def health_addr(self) -> str:
        return f"{HOST}:{self.health_port}" if self.health_port else ""

    @property
    def worker_addr(self) -> str:
        return f"{HOST}:{self.worker_port}" if self.worker_port else ""

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def spawn(self) -> None:
        if not self.addr:
            self.addr = f"{HOST}:{free_port(HOST)}"
        if not self.metrics_port:
            self.metrics_port = free_port(HOST)
        if not self.health_port:
            self.health_port = free_port(HOST)
        if self.worker_listener and not self.worker_port:
            self.worker_port = free_port(HOST)
        env = dict(self.env)
        # Set either way: empty (off) must not fall back to a value from the caller's environment.
        env["WORKER_LISTEN_ADDR"] = self.worker_addr
        env["LISTEN_ADDR"] = self.addr
        # Several services share this machine: each gets its own metrics and health ports, on
        # loopback.
        env["METRICS_PORT"] = str(self.metrics_port)
        env["METRICS_ADDR"] = HOST
        env["HEALTH_LISTEN_ADDR"] = self.health_addr
        self.process = ManagedProcess(
            name=self.name,
            argv=[sys.executable, "-m", self.module],
            log_path=self.log_path,
            env=env,
            cwd=REPO_ROOT,
            pid_path=self.pid_dir / f"{self.name}.pid" if self.pid_dir else None,
        )
        self.process.spawn()

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        assert self.process is not None
        for attempt in range(_PORT_ATTEMPTS):
            # The probe speaks TLS (with the service's own client certificate) when the
            # service's environment configures it.
            channel = sync_channel(
                self.addr, TlsSettings.from_env(self.env), options=_PROBE_OPTIONS
            )

            def serving(channel: grpc.Channel = channel) -> bool:
                return health_serving(self.addr, 0.5, channel)

            try:
                wait_until(self.process, serving, timeout, interval=0.05)
                self._ever_ready = True
                return
            except StartupError as exc:
                # Someone took the port since we checked it: move to another one, unless
                # clients already know this address (a restart).
                tail = exc.log_tail.lower()
                taken = "address already in use" in tail or "failed to bind" in tail
                if not taken or self._ever_ready or attempt + 1 == _PORT_ATTEMPTS:
                    raise
                self.process.stop(2)
                self.addr = ""
                self.metrics_port = self.health_port = self.worker_port = 0
                self.spawn()
            finally:
                channel.close()

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        self.spawn()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop(2)
            raise

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL, like a crash (fault tests)."""
        if self.process is not None:
            self.process.kill()

    def restart(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Stops and starts it again on the same address."""
        self.stop()
        self.start(timeout)


@dataclass
class Services:
    job_service: ServiceProcess
    notifier: ServiceProcess | None  # None only while start_services is still starting it
    workers: list[ServiceProcess]
    _worker_env: dict[str, str] = field(repr=False, default_factory=dict)
    _log_dir: Path = field(repr=False, default=Path("."))
    _pid_dir: Path | None = field(repr=False, default=None)
    _next_worker: int = field(repr=False, default=1)
    # More job_service processes on the same database and NATS (add_job_service), as when the
    # Deployment runs several replicas.
    job_service_replicas: list[ServiceProcess] = field(default_factory=list)
    # The webhook sender (None only while start_services is still starting it).
    webhooks: ServiceProcess | None = None

    @property
    def job_service_addr(self) -> str:
        return self.job_service.addr

    @property
    def worker_service_addr(self) -> str:
        """Where workers reach WorkerService: job_service's worker port when it has one."""
        return self.job_service.worker_addr or self.job_service.addr

    @property
    def notifier_addr(self) -> str:
        return self.notifier.addr if self.notifier else ""

    @property
    def procs(self) -> list[ServiceProcess]:
        servers = (self.job_service, *self.job_service_replicas)
        clients = (self.notifier, self.webhooks, *self.workers)
        return [p for p in (*servers, *clients) if p is not None]

    def worker_procs(self) -> list[ServiceProcess]:
        return list(self.workers)

    def worker_addrs(self) -> list[str]:
        """Each worker's health/reflection address."""
        return [w.addr for w in self.workers]

    @property
    def metrics_addrs(self) -> dict[str, str]:
        """Each process's Prometheus endpoint (http://ADDR/metrics), by process name."""
        return {p.name: p.metrics_addr for p in self.procs if p.metrics_addr}

    def env(self) -> dict[str, str]:
        """What a client (mediactl, tests, the benchmark) needs besides its token."""
        return {"JOB_SERVICE_ADDR": self.job_service_addr, "NOTIFIER_ADDR": self.notifier_addr}

    def _new_worker(self, extra_env: Mapping[str, str] | None) -> ServiceProcess:
        worker = ServiceProcess(
            name=f"media_worker-{self._next_worker}",
            module="services.media_worker",
            env={**self._worker_env, **(extra_env or {})},
            log_dir=self._log_dir,
            pid_dir=self._pid_dir,
        )
        self._next_worker += 1
        return worker

    def add_worker(
        self, extra_env: Mapping[str, str] | None = None, *, timeout: float = DEFAULT_START_TIMEOUT
    ) -> ServiceProcess:
        """Starts one more worker and waits until it is healthy."""
        worker = self._new_worker(extra_env)
        worker.start(timeout)
        self.workers.append(worker)
        return worker

    def add_job_service(
        self, extra_env: Mapping[str, str] | None = None, *, timeout: float = DEFAULT_START_TIMEOUT
    ) -> ServiceProcess:
        """Starts one more job_service replica with the first one's environment (its database,
        NATS and secret) on ports of its own, and waits until it is healthy."""
        replica = ServiceProcess(
            name=f"job_service-{len(self.job_service_replicas) + 2}",
            module="services.job_service",
            env={**self.job_service.env, **(extra_env or {})},
            log_dir=self._log_dir,
            pid_dir=self._pid_dir,
            worker_listener=self.job_service.worker_listener,
        )
        replica.start(timeout)
        self.job_service_replicas.append(replica)
        return replica

    def kill_worker(self, index: int = 0) -> ServiceProcess:
        worker = self.workers[index]
        worker.kill()
        return worker

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the workers, the notifier and the webhook sender together, then to
        job_service (which the workers still report to while they drain); SIGKILL to whatever
        outlasts `timeout`."""
        clients = [
            p.process for p in (self.notifier, self.webhooks, *self.workers) if p and p.process
        ]
        stop_all(clients, timeout)
        servers = [self.job_service, *self.job_service_replicas]
        stop_all([p.process for p in servers if p.process is not None], timeout)


def service_env(
    deps: Dependencies, *, log_level: str | None = None, extra_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment every service starts from: ours, the dependencies', local defaults."""
    env = dict(os.environ)
    env.update(deps.env())
    env.update(
        {
            "S3_BUCKET": "media",
            "S3_CREATE_BUCKET": "true",
            "LOG_LEVEL": log_level or os.environ.get("LOG_LEVEL", "INFO"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    # A local stop should not wait 20 s for a demo job to drain (and must stay well inside
    # Services.stop's timeout, after which everything is SIGKILLed).
    env.setdefault("SHUTDOWN_GRACE_SECONDS", "5")
    # The local stack is also the benchmark's (`make bench` creates hundreds of jobs as one user
    # in seconds): per-user limits off unless the environment sets them.
    for name, value in USER_LIMITS_OFF.items():
        env.setdefault(name, value)
    # Webhook receivers of a local stack (and of the tests) listen on loopback, over http.
    env.setdefault("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
    env.setdefault("WEBHOOK_ALLOW_HTTP", "true")
    # The key webhook secrets are sealed with, shared by job_service and the sender (a stack's
    # database starts empty, so a new key per stack loses nothing).
    env.setdefault("WEBHOOK_SECRETS_KEYS", Sealer.new_key())
    env.update(extra_env or {})
    return env


def start_services(
    run_dir: Path,
    deps: Dependencies,
    secret: str,
    *,
    workers: int = 1,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
    worker_listener: bool = True,
) -> Services:
    """Starts job_service, then the notifier, the webhook sender and `workers` workers in
    parallel; returns once every one of them reports SERVING. Logs go to
    run_dir/logs/<name>.log.

    worker_listener: job_service serves WorkerService on a port of its own, as deployed, and the
    workers call it there; False keeps it beside JobService on the public port."""
    started = time.monotonic()
    log_dir = run_dir.resolve() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pid_dir = run_dir.resolve() / "pids"
    pid_dir.mkdir(exist_ok=True)
    for stale in pid_dir.glob("*.pid"):
        reap_stale(stale)  # left by a run that died without stopping its services
    base = service_env(deps, extra_env=extra_env)
    audience = base.get("AUTH_AUDIENCE", "") or "media"
    issuer = base.get("AUTH_ISSUER", "")
    worker_token = mint_token(
        secret,
        WORKER_SUBJECT,
        roles=(WORKER_ROLE,),
        audience=audience,
        issuer=issuer,
        ttl_seconds=WORKER_TOKEN_TTL_SECONDS,
    )
    # The notifier reads jobs with a credential of its own (JobReaderService).
    notifier_token = mint_token(
        secret,
        NOTIFIER_SUBJECT,
        roles=(NOTIFIER_ROLE,),
        audience=audience,
        issuer=issuer,
        ttl_seconds=WORKER_TOKEN_TTL_SECONDS,
    )
    # So does the webhook sender, for fresh output URLs.
    webhooks_token = mint_token(
        secret,
        WEBHOOKS_SUBJECT,
        roles=(WEBHOOKS_ROLE,),
        audience=audience,
        issuer=issuer,
        ttl_seconds=WORKER_TOKEN_TTL_SECONDS,
    )
    job_service = ServiceProcess(
        name="job_service",
        module="services.job_service",
        env={**base, "AUTH_JWT_SECRET": secret},
        log_dir=log_dir,
        pid_dir=pid_dir,
        worker_listener=worker_listener,
    )
    services = Services(
        job_service=job_service, notifier=None, workers=[], _log_dir=log_dir, _pid_dir=pid_dir
    )
    try:
        # job_service first: it migrates the database and creates the streams the others use.
        job_service.start(timeout)
        # Clients of job_service never need the signing secret.
        client_env = {k: v for k, v in base.items() if k != "AUTH_JWT_SECRET"}
        client_env["JOB_SERVICE_ADDR"] = job_service.addr
        services.notifier = ServiceProcess(
            name="notifier",
            module="services.notifier",
            # It verifies its watchers' tokens itself (the secret), and reads jobs from
            # JobReaderService, which is served beside WorkerService.
            env={
                **client_env,
                "AUTH_JWT_SECRET": secret,
                "JOB_SERVICE_ADDR": services.worker_service_addr,
                "NOTIFIER_TOKEN": notifier_token,
            },
            log_dir=log_dir,
            pid_dir=pid_dir,
        )
        # It reads the database (endpoints, its delivery queue) and JetStream itself, and jobs
        # through JobReaderService.
        services.webhooks = ServiceProcess(
            name="webhooks",
            module="services.webhooks",
            env={
                **client_env,
                "JOB_SERVICE_ADDR": services.worker_service_addr,
                "WEBHOOKS_TOKEN": webhooks_token,
                "DATABASE_URL": deps.database_url,
                "NATS_URL": deps.nats_url,
            },
            log_dir=log_dir,
            pid_dir=pid_dir,
        )
        services._worker_env = {
            **client_env,
            "JOB_SERVICE_ADDR": services.worker_service_addr,
            "WORKER_TOKEN": worker_token,
        }
        services.workers = [services._new_worker(None) for _ in range(workers)]
        # Started together, waited for together.
        later = [services.notifier, services.webhooks, *services.workers]
        for proc in later:
            proc.spawn()
        for proc in later:
            proc.wait_ready(timeout)
    except BaseException:
        services.stop(5)
        raise
    log.info(
        "services ready in %.2f s: job_service %s (workers: %s), notifier %s, webhooks %s, "
        "%d worker(s)",
        time.monotonic() - started,
        services.job_service_addr,
        services.worker_service_addr,
        services.notifier_addr,
        services.webhooks.addr,
        len(services.workers),
    )
    return services
