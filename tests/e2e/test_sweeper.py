"""The sweeper, seen from the bucket: a finished job's input image goes and its outputs stay (and
still serve their bytes), the input of an unfinished job stays, objects no job record points to
go once older than the grace, so do presigned uploads left behind, and while another replica
holds the sweeper's lock nothing is swept.

One stack serves the module: its own NATS and database (so the shared stack's worker cannot take
its jobs), the shared S3 with a bucket of its own (so no other test's object is swept), and a
sweeper that runs every second with a two-second grace.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
import sqlalchemy as sa
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from devstack.deps import Dependencies, NatsServer
from devstack.services import Services, start_services
from media.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, notifier_service_pb2_grpc
from services.common import keys
from services.common.auth import bearer_metadata, mint_token
from services.common.ids import uuid7
from services.common.lifecycle import IMAGE, SUCCEEDED
from services.common.sealing import Sealer
from services.job_service import migrate
from services.job_service.schema import input_uploads, jobs, outputs, sweep_cursors
from services.job_service.settings import SweepSettings
from services.job_service.sweep_queries import LOCK_KEYS, sweeper_engine
from services.job_service.sweeper import Sweeper
from tests.conftest import workers_paused
from tests.e2e.helpers import WAIT_SECONDS, create, fetch, wait_terminal
from tests.servers import own_dependencies
from tests.unit.test_validation import png

pytestmark = pytest.mark.e2e

BUCKET = "media-sweeper-stack"
GRACE_SECONDS = 2.0
SEALER = Sealer([Sealer.new_key()])
# S3 keeps LastModified to the second: an object may look up to this much older than it is.
CLOCK_SLACK_SECONDS = 1.0

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Stack:
    services: Services
    deps: Dependencies
    s3: Any  # a boto3 S3 client of the test's own
    jobs: job_service_pb2_grpc.JobServiceStub
    notifier: notifier_service_pb2_grpc.NotifierServiceStub
    user: Metadata

    # --- the bucket, from outside ---

    async def put(self, key: str, body: bytes = b"left behind") -> float:
        """Stores an object; returns a time no later than its LastModified can be."""
        before = time.time() - CLOCK_SLACK_SECONDS
        await asyncio.to_thread(self.s3.put_object, Bucket=BUCKET, Key=key, Body=body)
        return before

    async def exists(self, key: str) -> bool:
        try:
            await asyncio.to_thread(self.s3.head_object, Bucket=BUCKET, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    async def gone(self, key: str) -> bool:
        return not await self.exists(key)

    async def a_round_past(self) -> None:
        """Returns once the sweeper has had a round in which every object stored before this call
        was past the grace: a marker stored now (under the prefix of no job) is gone."""
        marker = keys.output_key(str(uuid7()), 1, 0, "image/png")
        await self.put(marker)
        await eventually(lambda: self.gone(marker), f"the marker {marker} is swept")

    # --- job_service's metrics ---

    def counter(self, name: str, **labels: str) -> float:
        addr = self.services.job_service.metrics_addr
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
            text = response.read().decode()
        wanted = set(labels.items())
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and wanted <= set(sample.labels.items())
        )

    async def swept(self, reason: str) -> float:
        return await asyncio.to_thread(self.counter, "media_objects_swept_total", reason=reason)

    async def rounds(self, result: str) -> float:
        return await asyncio.to_thread(self.counter, "media_sweep_rounds_total", result=result)


async def eventually(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    """Polls until the probe holds; the deadline only guards against a hang."""

    async def loop() -> None:
        while True:
            if await probe():
                return
            await asyncio.sleep(0.2)

    try:
        await asyncio.wait_for(loop(), WAIT_SECONDS)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


@pytest_asyncio.fixture(scope="module")
async def stack(
    deps: Dependencies, secret: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("sweeper-stack")
    (root / "logs").mkdir()
    nats = NatsServer(root / "nats", root / "logs")
    services = None
    job_channel = notifier_channel = None
    try:
        own, env = await own_dependencies(deps, nats, "sweeper")
        env |= {
            "S3_BUCKET": BUCKET,
            "GENERATOR": "local",
            "SWEEP_INTERVAL_SECONDS": "1",
            "SWEEP_GRACE_SECONDS": str(GRACE_SECONDS),
            "INPUT_RETENTION_SECONDS": "0",
        }
        services = await asyncio.to_thread(
            start_services, root / "run", own, secret, workers=1, extra_env=env
        )
        job_channel = grpc.aio.insecure_channel(services.job_service_addr)
        notifier_channel = grpc.aio.insecure_channel(services.notifier_addr)
        yield Stack(
            services=services,
            deps=own,
            s3=deps.s3_client(),
            jobs=job_service_pb2_grpc.JobServiceStub(job_channel),
            notifier=notifier_service_pb2_grpc.NotifierServiceStub(notifier_channel),
            user=bearer_metadata(mint_token(secret, "sweeper-user")),
        )
    finally:
        for channel in (job_channel, notifier_channel):
            if channel is not None:
                await channel.close()
        if services is not None:
            await asyncio.to_thread(services.stop, 10)
        await asyncio.to_thread(nats.stop)


def image_with_input(prompt: str) -> job_pb2.ImageParams:
    return job_pb2.ImageParams(
        prompt=prompt, size="256x256", input_image=job_pb2.InputImage(data=png(32, 24))
    )


async def get(stack: Stack, job_id: str) -> job_pb2.Job:
    request = job_service_pb2.GetJobRequest(job_id=job_id)
    return (await stack.jobs.GetJob(request, metadata=stack.user)).job


async def assert_outputs_serve_their_bytes(stack: Stack, job_id: str) -> None:
    job = await get(stack, job_id)  # fresh presigned URLs
    assert job.outputs
    for output in job.outputs:
        assert await stack.exists(output.key), output.key
        data = await fetch(output.url)
        assert hashlib.sha256(data).hexdigest() == output.sha256, output.key


async def test_a_finished_jobs_input_goes_and_its_outputs_stay(stack: Stack) -> None:
    job = await create(stack, stack.user, image=image_with_input("edit me"))
    input_key = keys.input_key(job.id)
    assert job.image.input_image.key == input_key
    done = await wait_terminal(stack, stack.user, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    assert done.outputs
    await eventually(lambda: stack.gone(input_key), "the finished job's input is deleted")
    assert await stack.swept("input") >= 1
    # Rounds after the outputs were past the grace have seen them, and left them be.
    await stack.a_round_past()
    await assert_outputs_serve_their_bytes(stack, job.id)


async def test_an_unfinished_jobs_input_stays_and_goes_once_it_is_canceled(stack: Stack) -> None:
    with workers_paused(stack.services):
        canceled = await create(stack, stack.user, image=image_with_input("cancel me"))
        kept = await create(stack, stack.user, image=image_with_input("run me later"))
        await stack.a_round_past()
        # Queued, and past the grace in that round: both inputs stay.
        assert await stack.exists(keys.input_key(canceled.id))
        assert await stack.exists(keys.input_key(kept.id))
        await stack.jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=canceled.id), metadata=stack.user
        )
        await eventually(
            lambda: stack.gone(keys.input_key(canceled.id)), "the canceled job's input is deleted"
        )
        assert await stack.exists(keys.input_key(kept.id))
    # The input kept through those rounds is what the job is generated from, then it goes too.
    done = await wait_terminal(stack, stack.user, kept.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    await eventually(lambda: stack.gone(keys.input_key(kept.id)), "the input is deleted at the end")
    assert (await get(stack, canceled.id)).status == job_pb2.JOB_STATUS_CANCELED


async def test_objects_no_record_points_to_go_after_the_grace(stack: Stack) -> None:
    job = await create(stack, stack.user, image=job_pb2.ImageParams(prompt="keep", size="256x256"))
    done = await wait_terminal(stack, stack.user, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    orphans = [
        keys.output_key(job.id, 7, 0, "image/png"),  # an attempt the job never recorded
        keys.output_key(str(uuid7()), 1, 0, "image/png"),  # a job that does not exist
        keys.input_key(str(uuid7())),  # a create that failed after storing its image
        f"{keys.job_prefix(job.id)}notes.txt",  # no key of the layout
        f"{keys.JOBS_PREFIX}not-a-job/leftover",
    ]
    before = await stack.swept("orphan")
    stored = {key: await stack.put(key) for key in orphans}
    for key in orphans:
        await eventually(lambda key=key: stack.gone(key), f"{key} is deleted")
        # Never before the grace: the object was at least this old when it went.
        assert time.time() - stored[key] >= GRACE_SECONDS, key
    assert await stack.swept("orphan") >= before + len(orphans)
    await assert_outputs_serve_their_bytes(stack, job.id)


async def test_uploads_left_behind_go_after_the_grace(stack: Stack) -> None:
    before = await stack.swept("upload")
    upload = keys.upload_key(str(uuid7()))
    stored = await stack.put(upload, png())
    await eventually(lambda: stack.gone(upload), "the stale upload is deleted")
    assert time.time() - stored >= GRACE_SECONDS
    assert await stack.swept("upload") >= before + 1


async def test_upload_records_are_forgotten_after_the_grace(stack: Stack) -> None:
    upload = await stack.jobs.CreateInputUpload(
        job_service_pb2.CreateInputUploadRequest(mime_type="image/png", byte_size=100),
        metadata=stack.user,
    )
    created = time.time() - CLOCK_SLACK_SECONDS
    engine = sa.create_engine(stack.deps.database_url)

    def count() -> int:
        with engine.connect() as conn:
            query = sa.select(sa.func.count()).where(input_uploads.c.id == upload.upload_id)
            return int(conn.execute(query).scalar_one())

    async def forgotten() -> bool:
        return await asyncio.to_thread(count) == 0

    try:
        assert not await forgotten()
        await eventually(forgotten, "the upload's record is deleted")
        assert time.time() - created >= GRACE_SECONDS
    finally:
        engine.dispose()


@contextmanager
def sweeper_lock_held(database_url: str) -> Iterator[None]:
    """Holds the sweeper's advisory lock as another replica sweeping would."""
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_advisory_lock(:a, :b)"), {"a": LOCK_KEYS[0], "b": LOCK_KEYS[1]}
            )
            try:
                yield
            finally:
                conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:a, :b)"),
                    {"a": LOCK_KEYS[0], "b": LOCK_KEYS[1]},
                )
    finally:
        engine.dispose()


async def test_no_round_while_another_replica_holds_the_lock(stack: Stack) -> None:
    orphan = keys.output_key(str(uuid7()), 1, 0, "image/png")
    lock = sweeper_lock_held(stack.deps.database_url)
    # Taken in a thread: it waits for a round in progress to end.
    await asyncio.to_thread(lock.__enter__)
    try:
        stored = await stack.put(orphan)

        async def past_the_grace() -> bool:
            return time.time() - stored > GRACE_SECONDS + CLOCK_SLACK_SECONDS

        await eventually(past_the_grace, "the orphan is past the grace")
        skipped = await stack.rounds("skipped")

        async def two_more_skipped() -> bool:
            return await stack.rounds("skipped") >= skipped + 2

        await eventually(two_more_skipped, "two more rounds are skipped")
        assert await stack.exists(orphan), "swept while another replica held the lock"
    finally:
        await asyncio.to_thread(lock.__exit__, None, None, None)
    await eventually(lambda: stack.gone(orphan), "the orphan is deleted once the lock is free")


async def test_rounds_are_bounded_and_resume_where_the_last_stopped(deps: Dependencies) -> None:
    """A Sweeper of the test's own, on a database and bucket of their own: each round lists one
    page of at most SWEEP_MAX_PER_ROUND keys, the next goes on from there, and past the end a
    round starts over."""
    name = f"sweeper_rounds_{os.urandom(4).hex()}"
    database_url = await asyncio.to_thread(deps.create_database, name)
    await asyncio.to_thread(migrate.upgrade, database_url)
    bucket = name.replace("_", "-")
    s3 = deps.s3_client()
    await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
    finished = [str(uuid7()) for _ in range(3)]
    recorded = keys.output_key(finished[0], 1, 0, "image/png")
    orphans = [keys.output_key(str(uuid7()), 1, 0, "image/png") for _ in range(7)]
    inputs = [keys.input_key(job_id) for job_id in finished]

    def setup() -> None:
        engine = sa.create_engine(database_url)
        try:
            with engine.begin() as conn:
                for job_id, key in zip(finished, inputs, strict=True):
                    params = job_pb2.ImageParams(
                        prompt="p", input_image=job_pb2.InputImage(bucket=bucket, key=key)
                    )
                    conn.execute(
                        sa.insert(jobs).values(
                            id=job_id,
                            owner="rounds",
                            kind=IMAGE,
                            status=SUCCEEDED,
                            attempt=1,
                            params=params.SerializeToString(),
                            finished_at=sa.func.now(),
                        )
                    )
                conn.execute(
                    sa.insert(outputs).values(
                        job_id=finished[0],
                        idx=0,
                        bucket=bucket,
                        key=recorded,
                        content_type="image/png",
                        byte_size=4,
                        width=1,
                        height=1,
                        sha256="",
                    )
                )
        finally:
            engine.dispose()
        for key in [*inputs, recorded, *orphans]:
            s3.put_object(Bucket=bucket, Key=key, Body=b"data")

    def cursor() -> str | None:
        engine = sa.create_engine(database_url)
        try:
            with engine.connect() as conn:
                return conn.execute(
                    sa.select(sweep_cursors.c.start_after).where(
                        sweep_cursors.c.prefix == keys.JOBS_PREFIX
                    )
                ).scalar_one_or_none()
        finally:
            engine.dispose()

    def stored() -> set[str]:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=keys.JOBS_PREFIX)
        return {item["Key"] for item in listed.get("Contents", [])}

    await asyncio.to_thread(setup)
    bound = 2
    settings = SweepSettings(interval_seconds=1, grace_seconds=0, max_per_round=bound)
    sweeper = Sweeper(sweeper_engine(database_url), s3, bucket, settings, SEALER)
    try:
        first = await sweeper.sweep_once()
        assert first is not None
        assert first.counts["input"] <= 2 * bound  # the inputs pass, then the listing's
        assert first.counts["orphan"] <= bound
        assert len(set(orphans) & await asyncio.to_thread(stored)) >= len(orphans) - bound
        assert await asyncio.to_thread(cursor)  # a listing left half-way
        rounds = 1
        while set(orphans) & await asyncio.to_thread(stored):
            swept = await sweeper.sweep_once()
            assert swept is not None and swept.counts["orphan"] <= bound
            rounds += 1
            assert rounds <= len(inputs) + len(orphans) + 1, "the rounds do not progress"
        assert rounds > 1
        assert await asyncio.to_thread(stored) == {recorded}  # the recorded output stays
        # Past the end of the listing a round starts over.
        await sweeper.sweep_once()
        await sweeper.sweep_once()
        assert await asyncio.to_thread(cursor) == ""
        assert await asyncio.to_thread(stored) == {recorded}
    finally:
        await sweeper.stop()
