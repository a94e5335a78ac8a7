"""A stack hardened the way production runs it, seen from outside: TLS on every gRPC server with
mutual TLS between the services, per-user rate limit and active-job cap on CreateJob, presigned
URLs with a configured lifetime, object keys without user identity, and logs free of secrets.

One stack serves the whole module: its own NATS and database (so the shared stack's worker
cannot take its jobs), the shared S3 with a bucket of its own, and known secret values.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.deps import Dependencies, NatsServer
from devstack.services import Services, start_services
from media.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.common.auth import bearer_metadata, mint_token
from services.common.config import TlsSettings
from services.common.errors import details_of
from services.common.tls import aio_channel
from tests.conftest import workers_paused
from tests.e2e.certs import Authority, Pair
from tests.e2e.helpers import WAIT_SECONDS
from tests.servers import own_dependencies
from tests.unit.test_validation import png

pytestmark = pytest.mark.e2e

BUCKET = "media-secure-stack"
RATE_PER_MINUTE = 6
RATE_BURST = 12
ACTIVE_CAP = 2
PRESIGN_TTL_SECONDS = 90


@dataclass
class Secure:
    services: Services
    deps: Dependencies
    secret: str
    secrets: dict[str, str]  # name -> a value that must never be logged
    run_dir: Path
    ca: Authority
    client: Pair
    s3: object

    def tls(self, client: Pair | None = None, ca: Path | None = None) -> TlsSettings:
        pair = client or self.client
        return TlsSettings(
            ca_file=str(ca or self.ca.cert),
            client_cert_file=str(pair.cert) if pair else "",
            client_key_file=str(pair.key) if pair else "",
        )

    def user(self, subject: str) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(mint_token(self.secret, subject))

    def input_objects(self) -> int:
        listed = self.s3.list_objects_v2(Bucket=BUCKET)  # type: ignore[attr-defined]
        return sum(1 for o in listed.get("Contents", []) if o["Key"].endswith("/input"))


@pytest_asyncio.fixture(scope="module")
async def secure(
    deps: Dependencies, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Secure]:
    root = tmp_path_factory.mktemp("secure-stack")
    (root / "logs").mkdir()
    ca = Authority(root, "ca")
    server = ca.issue("localhost", server=True)
    client = ca.issue("media-service", server=False)
    secret = "jwt-secret-" + secrets.token_hex(24)
    known = {
        "AUTH_JWT_SECRET": secret,
        "AWS_SECRET_ACCESS_KEY": "aws-secret-" + secrets.token_hex(16),
        "GEMINI_API_KEY": "gemini-key-" + secrets.token_hex(16),
    }
    nats = NatsServer(root / "nats", root / "logs")
    services = None
    try:
        own, env = await own_dependencies(deps, nats, "secure")
        env |= {
            "AWS_SECRET_ACCESS_KEY": known["AWS_SECRET_ACCESS_KEY"],
            "GEMINI_API_KEY": known["GEMINI_API_KEY"],
            "GENERATOR": "local",  # the key is configured but unused: it must not leak anyway
            "S3_BUCKET": BUCKET,
            "LOG_LEVEL": "DEBUG",  # the most a log can say
            # Every server speaks TLS and wants a client certificate; every service presents
            # one (the same for all here) and trusts the test CA.
            "TLS_CERT_FILE": str(server.cert),
            "TLS_KEY_FILE": str(server.key),
            "TLS_CLIENT_CA_FILE": str(ca.cert),
            "TLS_CA_FILE": str(ca.cert),
            "TLS_CLIENT_CERT_FILE": str(client.cert),
            "TLS_CLIENT_KEY_FILE": str(client.key),
            "RATE_LIMIT_PER_MINUTE": str(RATE_PER_MINUTE),
            "RATE_LIMIT_BURST": str(RATE_BURST),
            "MAX_ACTIVE_JOBS_PER_USER": str(ACTIVE_CAP),
            "PRESIGN_TTL_SECONDS": str(PRESIGN_TTL_SECONDS),
            "SWEEP_INTERVAL_SECONDS": "0",  # the cap test counts stored inputs before and after
        }
        services = await asyncio.to_thread(
            start_services, root / "run", own, secret, workers=1, extra_env=env
        )
        known["WORKER_TOKEN"] = services.workers[0].env["WORKER_TOKEN"]
        known["TLS_KEY"] = _key_body(server.key)
        known["TLS_CLIENT_KEY"] = _key_body(client.key)
        yield Secure(services, own, secret, known, root / "run", ca, client, deps.s3_client())
    finally:
        if services is not None:
            await asyncio.to_thread(services.stop, 10)
        await asyncio.to_thread(nats.stop)


def _key_body(path: Path) -> str:
    """The base64 body of a PEM private key (what a leak of the key would contain)."""
    lines = path.read_text().splitlines()
    return "".join(line for line in lines if not line.startswith("-----"))


class Calls:
    """Stubs on TLS channels to the secure stack."""

    def __init__(self, secure: Secure, tls: TlsSettings) -> None:
        self.job_channel = aio_channel(secure.services.job_service_addr, tls)
        self.notifier_channel = aio_channel(secure.services.notifier_addr, tls)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.job_channel)
        self.notifier = notifier_service_pb2_grpc.NotifierServiceStub(self.notifier_channel)

    async def close(self) -> None:
        await self.job_channel.close()
        await self.notifier_channel.close()


@pytest_asyncio.fixture(scope="module")
async def calls(secure: Secure) -> AsyncIterator[Calls]:
    made = Calls(secure, secure.tls())
    try:
        yield made
    finally:
        await made.close()


async def _watch(calls: Calls, metadata: tuple[tuple[str, str], ...], job_id: str) -> job_pb2.Job:
    async def last() -> job_pb2.Job:
        final = None
        async for message in calls.notifier.WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=job_id), metadata=metadata
        ):
            final = message.job
        assert final is not None
        return final

    return await asyncio.wait_for(last(), WAIT_SECONDS)


def _retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    for info in details_of(error, error_details_pb2.RetryInfo):
        return info.retry_delay.ToNanoseconds() / 1e9
    return None


# --- TLS ---------------------------------------------------------------------------------


async def test_a_job_runs_to_success_over_mutual_tls(secure: Secure, calls: Calls) -> None:
    """Client -> job_service, worker -> job_service, notifier -> job_service and the watch all
    go over TLS with client certificates (the servers accept nothing else)."""
    who = secure.user("tls-user")
    job = (
        await calls.jobs.CreateJob(
            job_service_pb2.CreateJobRequest(
                image=job_pb2.ImageParams(prompt="over tls", size="256x256")
            ),
            metadata=who,
        )
    ).job
    done = await _watch(calls, who, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    assert done.outputs and done.outputs[0].url


async def _refused(addr: str, channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    try:
        await stub.ListJobs(job_service_pb2.ListJobsRequest(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()
    raise AssertionError(f"{addr} answered a call it should have refused")


async def test_the_mutual_tls_listener_refuses_clients_without_a_trusted_certificate(
    secure: Secure, tmp_path: Path
) -> None:
    addr = secure.services.job_service_addr
    # TLS that trusts the server, but no client certificate.
    no_cert = TlsSettings(ca_file=str(secure.ca.cert))
    assert await _refused(addr, aio_channel(addr, no_cert)) == grpc.StatusCode.UNAVAILABLE
    # A client certificate from another authority.
    stranger = Authority(tmp_path, "other-ca").issue("intruder", server=False)
    foreign = secure.tls(client=stranger)
    assert await _refused(addr, aio_channel(addr, foreign)) == grpc.StatusCode.UNAVAILABLE
    # A client that does not trust the server's authority.
    other_ca = Authority(tmp_path, "roots-ca").cert
    distrust = secure.tls(ca=other_ca)
    assert await _refused(addr, aio_channel(addr, distrust)) == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_to_a_tls_port_fails(secure: Secure) -> None:
    for addr in (
        secure.services.job_service_addr,
        secure.services.notifier_addr,
        *secure.services.worker_addrs(),
    ):
        channel = grpc.aio.insecure_channel(addr)
        assert await _refused(addr, channel) == grpc.StatusCode.UNAVAILABLE


async def test_probes_get_plaintext_health_checks_and_nothing_else(secure: Secure) -> None:
    """Kubernetes' native gRPC probes cannot speak TLS, so every server also answers health
    checks, and only those, in plaintext on HEALTH_LISTEN_ADDR."""
    for process in secure.services.procs:
        async with grpc.aio.insecure_channel(process.health_addr) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "liveness"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, process.name
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await jobs.ListJobs(job_service_pb2.ListJobsRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, process.name


# --- rate limit and active cap -----------------------------------------------------------


async def test_create_job_is_rate_limited_per_user_with_retry_info(
    secure: Secure, calls: Calls
) -> None:
    hasty = secure.user("hasty")
    invalid = job_service_pb2.CreateJobRequest(image=job_pb2.ImageParams(prompt=""))
    # Every call counts, even one that is invalid (and so creates nothing).
    for _ in range(RATE_BURST):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await calls.jobs.CreateJob(invalid, metadata=hasty)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await calls.jobs.CreateJob(invalid, metadata=hasty)
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "RATE_LIMIT_PER_MINUTE" in error.details() and str(RATE_PER_MINUTE) in error.details()
    delay = _retry_delay(error)
    assert delay is not None and 0 < delay <= 60 / RATE_PER_MINUTE
    # Another user is not affected, and reads are not limited.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await calls.jobs.CreateJob(invalid, metadata=secure.user("patient"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await calls.jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=hasty)


async def test_input_uploads_are_rate_limited_per_user_apart_from_creates(
    secure: Secure, calls: Calls
) -> None:
    uploader = secure.user("uploader")
    request = job_service_pb2.CreateInputUploadRequest(mime_type="image/png", byte_size=1024)
    for _ in range(RATE_BURST):
        await calls.jobs.CreateInputUpload(request, metadata=uploader)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await calls.jobs.CreateInputUpload(request, metadata=uploader)
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "CreateInputUpload" in error.details() and "RATE_LIMIT_PER_MINUTE" in error.details()
    assert _retry_delay(error) is not None
    # The creates' budget is a separate one.
    invalid = job_service_pb2.CreateJobRequest(image=job_pb2.ImageParams(prompt=""))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await calls.jobs.CreateJob(invalid, metadata=uploader)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_active_jobs_are_capped_per_user_and_a_refused_create_stores_nothing(
    secure: Secure, calls: Calls
) -> None:
    busy = secure.user("busy")
    request = job_service_pb2.CreateJobRequest(
        image=job_pb2.ImageParams(prompt="capped", size="256x256")
    )
    with_image = job_service_pb2.CreateJobRequest(
        image=job_pb2.ImageParams(
            prompt="capped", size="256x256", input_image=job_pb2.InputImage(data=png())
        )
    )
    with workers_paused(secure.services):  # the jobs stay queued
        first = [
            (await calls.jobs.CreateJob(request, metadata=busy)).job for _ in range(ACTIVE_CAP)
        ]
        inputs_before = secure.input_objects()
        for over in (request, with_image):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await calls.jobs.CreateJob(over, metadata=busy)
            error = caught.value
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "MAX_ACTIVE_JOBS_PER_USER" in error.details()
            assert str(ACTIVE_CAP) in error.details()
            assert _retry_delay(error)
        assert secure.input_objects() == inputs_before  # the refused image was not kept
        # A repeat of a create that succeeded is still answered, cap or not.
        replay = job_service_pb2.CreateJobRequest()
        replay.CopyFrom(request)
        replay.request_id = "busy-1"
        # Ending a job frees a slot.
        await calls.jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=first[0].id), metadata=busy
        )
        made = await calls.jobs.CreateJob(replay, metadata=busy)
        assert made.created
        again = await calls.jobs.CreateJob(replay, metadata=busy)
        assert not again.created and again.job.id == made.job.id
        for job_id in (first[1].id, made.job.id):
            await calls.jobs.CancelJob(
                job_service_pb2.CancelJobRequest(job_id=job_id), metadata=busy
            )


async def test_concurrent_creates_cannot_pass_the_cap(secure: Secure, calls: Calls) -> None:
    crowd = secure.user("crowd")
    request = job_service_pb2.CreateJobRequest(
        image=job_pb2.ImageParams(prompt="crowd", size="256x256")
    )
    with workers_paused(secure.services):
        results = await asyncio.gather(
            *(calls.jobs.CreateJob(request, metadata=crowd) for _ in range(8)),
            return_exceptions=True,
        )
        created = [r.job for r in results if isinstance(r, job_service_pb2.CreateJobResponse)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(created) == ACTIVE_CAP, results
        assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused), refused
        listed = await calls.jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=crowd)
        assert len(listed.jobs) == ACTIVE_CAP
        for job in created:
            await calls.jobs.CancelJob(
                job_service_pb2.CancelJobRequest(job_id=job.id), metadata=crowd
            )


# --- URLs and keys -----------------------------------------------------------------------


async def test_presigned_urls_carry_the_configured_lifetime_and_keys_hide_the_user(
    secure: Secure, calls: Calls
) -> None:
    subject = "user-with-a-recognizable-name@example.com"
    who = secure.user(subject)
    job = (
        await calls.jobs.CreateJob(
            job_service_pb2.CreateJobRequest(
                image=job_pb2.ImageParams(
                    prompt="keys",
                    size="256x256",
                    number_of_images=2,
                    input_image=job_pb2.InputImage(data=png()),
                )
            ),
            metadata=who,
        )
    ).job
    done = await _watch(calls, who, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    fresh = (
        await calls.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job.id), metadata=who)
    ).job
    keys = [o.key for o in fresh.outputs] + [done.image.input_image.key]
    for output in fresh.outputs:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(output.url).query)
        # moto does not enforce the expiry, so the signed lifetime is checked instead.
        assert query["X-Amz-Expires"] == [str(PRESIGN_TTL_SECONDS)]
        assert query["X-Amz-Signature"]
        lifetime = output.url_expire_time.seconds - int(
            _amz_date(query["X-Amz-Date"][0]).timestamp()
        )
        assert abs(lifetime - PRESIGN_TTL_SECONDS) <= 5
    for key in keys:
        if not key:
            continue
        assert re.fullmatch(rf"jobs/{job.id}/(\d+/output-\d+\.png|input)", key), key
    for text in [*keys, *(o.url for o in fresh.outputs)]:
        assert subject not in text and urllib.parse.quote(subject) not in text


def _amz_date(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)


# --- secrets in logs (last: it reads the logs of everything above) --------------------------


async def test_no_secret_reaches_any_log(secure: Secure, calls: Calls) -> None:
    who = secure.user("log-reader")
    job = (
        await calls.jobs.CreateJob(
            job_service_pb2.CreateJobRequest(
                video=job_pb2.VideoParams(prompt="secrets", duration_seconds=4)
            ),
            metadata=who,
        )
    ).job
    done = await _watch(calls, who, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    # Refused tokens are a classic way into logs.
    wrong_key = mint_token("x" * 40, "intruder")
    expired = mint_token(secure.secret, "late", ttl_seconds=-600)
    for token in (wrong_key, expired):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await calls.jobs.GetJob(
                job_service_pb2.GetJobRequest(job_id=job.id), metadata=bearer_metadata(token)
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Stop the stack so that shutdown logging is included too.
    await asyncio.to_thread(secure.services.stop, 10)
    forbidden = dict(secure.secrets)
    for name, token in (
        ("client token", who[0][1].removeprefix("Bearer ")),
        ("wrong-key token", wrong_key),
        ("expired token", expired),
    ):
        forbidden[name] = token
        forbidden[f"{name} signature"] = token.rsplit(".", 1)[1]
    forbidden["worker token signature"] = forbidden["WORKER_TOKEN"].rsplit(".", 1)[1]
    logs = sorted(secure.run_dir.rglob("*.log"))
    assert {p.stem for p in logs} >= {"job_service", "notifier", "media_worker-1"}, logs
    total = 0
    for path in logs:
        text = path.read_text(errors="replace")
        total += len(text)
        for name, value in forbidden.items():
            assert value not in text, f"{name} appears in {path.name}"
    assert total > 0
