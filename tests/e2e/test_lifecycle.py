"""Status streaming, the worker protocol, cancellation and failure, seen from outside."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from media.v1 import job_pb2, job_service_pb2, notifier_service_pb2, worker_service_pb2
from tests.conftest import workers_paused
from tests.e2e.helpers import create, wait_terminal, watch_all

pytestmark = pytest.mark.e2e


async def test_watcher_sees_queued_running_progress_succeeded_in_order(clients, stack) -> None:
    with workers_paused(stack):
        job = await create(
            clients, clients.alice, video=job_pb2.VideoParams(prompt="clouds", duration_seconds=4)
        )
        # Several watchers on one job; each must see every change.
        watchers = [
            asyncio.create_task(watch_all(clients, clients.alice, job.id)) for _ in range(3)
        ]
        await asyncio.sleep(0.5)  # let the watches open while nothing can move the job
    seen = await asyncio.gather(*watchers)
    for events in seen:
        statuses = [e.status for e in events]
        assert statuses[0] == job_pb2.JOB_STATUS_QUEUED
        assert statuses[-1] == job_pb2.JOB_STATUS_SUCCEEDED
        assert job_pb2.JOB_STATUS_RUNNING in statuses
        running = [e for e in events if e.status == job_pb2.JOB_STATUS_RUNNING]
        assert any(0 < e.progress < 100 for e in running), [e.progress for e in running]
        versions = [e.version for e in events]
        assert versions == sorted(set(versions)), versions  # in order, no repeats
        progress = [e.progress for e in running]
        assert progress == sorted(progress)
        assert events[-1].outputs and events[-1].outputs[0].url  # the final state has URLs
    assert (
        [e.version for e in seen[0]] == [e.version for e in seen[1]] == [e.version for e in seen[2]]
    )


async def test_watching_a_finished_job_sends_its_state_and_ends(clients) -> None:
    job = await create(
        clients, clients.alice, image=job_pb2.ImageParams(prompt="x", size="256x256")
    )
    await wait_terminal(clients, clients.alice, job.id)
    events = await watch_all(clients, clients.alice, job.id)
    assert [e.status for e in events] == [job_pb2.JOB_STATUS_SUCCEEDED]


async def test_a_duplicate_complete_changes_nothing(clients, stack) -> None:
    with workers_paused(stack):
        job = await create(
            clients, clients.alice, image=job_pb2.ImageParams(prompt="dup", size="256x256")
        )
        claimed = (
            await clients.workers.ClaimJob(
                worker_service_pb2.ClaimJobRequest(job_id=job.id), metadata=clients.worker
            )
        ).job
        assert claimed.status == job_pb2.JOB_STATUS_RUNNING and claimed.attempt == 1
        output = job_pb2.Output(
            index=0,
            bucket="media",
            key=f"jobs/{job.id}/1/output-0.png",
            content_type="image/png",
            byte_size=123,
            width=256,
            height=256,
            sha256="ab" * 32,
        )
        complete = worker_service_pb2.CompleteJobRequest(
            job_id=job.id,
            attempt=1,
            success=worker_service_pb2.JobSuccess(outputs=[output], model="local"),
        )
        first = (await clients.workers.CompleteJob(complete, metadata=clients.worker)).job
        second = (await clients.workers.CompleteJob(complete, metadata=clients.worker)).job
        assert first.status == second.status == job_pb2.JOB_STATUS_SUCCEEDED
        assert first.version == second.version
        assert len(second.outputs) == 1
        different = worker_service_pb2.CompleteJobRequest(
            job_id=job.id, attempt=1, failure=worker_service_pb2.JobFailure(code=2, message="no")
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clients.workers.CompleteJob(different, metadata=clients.worker)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # A stale or repeated claim is refused too.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clients.workers.ClaimJob(
                worker_service_pb2.ClaimJobRequest(job_id=job.id), metadata=clients.worker
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The real worker then receives the dispatch, is refused, and leaves the job alone.
    await asyncio.sleep(1)
    got = (
        await clients.jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id=job.id), metadata=clients.alice
        )
    ).job
    assert got.version == first.version and len(got.outputs) == 1


async def test_a_stale_attempt_is_refused(clients, stack) -> None:
    with workers_paused(stack):
        job = await create(
            clients, clients.alice, image=job_pb2.ImageParams(prompt="s", size="256x256")
        )
        claim = worker_service_pb2.ClaimJobRequest(job_id=job.id)
        await clients.workers.ClaimJob(claim, metadata=clients.worker)
        # A second claim (JetStream redelivered after a worker went silent) takes attempt 2.
        # Here the first attempt is still RUNNING, so the claim is a takeover.
        second = (await clients.workers.ClaimJob(claim, metadata=clients.worker)).job
        assert second.attempt == 2
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clients.workers.ReportProgress(
                worker_service_pb2.ReportProgressRequest(job_id=job.id, attempt=1, progress=10),
                metadata=clients.worker,
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await clients.jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=job.id), metadata=clients.alice
        )


async def test_another_users_job_is_not_found(clients) -> None:
    job = await create(
        clients, clients.alice, image=job_pb2.ImageParams(prompt="mine", size="256x256")
    )
    for call in (
        clients.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job.id), metadata=clients.bob),
        clients.jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=job.id), metadata=clients.bob
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch_all(clients, clients.bob, job.id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await clients.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(page_size=100), metadata=clients.bob
    )
    assert job.id not in {j.id for j in listed.jobs}
    await wait_terminal(clients, clients.alice, job.id)


async def test_calls_without_a_valid_token_are_unauthenticated(clients) -> None:
    bad = (("authorization", "Bearer not-a-jwt"),)
    for metadata in ((), bad):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clients.jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch_all(clients, metadata, "01a209ac-9f4e-7224-8e25-1337f2bc5bcc")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_client_tokens_cannot_call_the_worker_service(clients) -> None:
    job = await create(
        clients, clients.alice, image=job_pb2.ImageParams(prompt="w", size="256x256")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.workers.ClaimJob(
            worker_service_pb2.ClaimJobRequest(job_id=job.id), metadata=clients.alice
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await wait_terminal(clients, clients.alice, job.id)


async def test_a_canceled_queued_job_is_never_started(clients, stack) -> None:
    with workers_paused(stack):
        job = await create(
            clients, clients.alice, image=job_pb2.ImageParams(prompt="c", size="256x256")
        )
        canceled = (
            await clients.jobs.CancelJob(
                job_service_pb2.CancelJobRequest(job_id=job.id), metadata=clients.alice
            )
        ).job
        assert canceled.status == job_pb2.JOB_STATUS_CANCELED
    # Let the worker see the dispatch; it must refuse to start the job.
    follow = await create(
        clients, clients.alice, image=job_pb2.ImageParams(prompt="d", size="256x256")
    )
    await wait_terminal(clients, clients.alice, follow.id)
    got = (
        await clients.jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id=job.id), metadata=clients.alice
        )
    ).job
    assert got.status == job_pb2.JOB_STATUS_CANCELED and got.attempt == 0
    # Canceling again is harmless; canceling a finished job is refused.
    again = await clients.jobs.CancelJob(
        job_service_pb2.CancelJobRequest(job_id=job.id), metadata=clients.alice
    )
    assert again.job.version == got.version
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=follow.id), metadata=clients.alice
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_job_whose_generation_fails_ends_failed_and_the_worker_goes_on(
    clients, stack, deps
) -> None:
    from tests.unit.test_validation import png

    with workers_paused(stack):
        job = await create(
            clients,
            clients.alice,
            image=job_pb2.ImageParams(
                prompt="edit me", size="256x256", input_image=job_pb2.InputImage(data=png())
            ),
        )
        # Pull the input away from under the worker: its generation must fail, visibly.
        s3 = deps.s3_client()
        await asyncio.to_thread(
            s3.delete_object, Bucket=job.image.input_image.bucket, Key=job.image.input_image.key
        )
    failed = await wait_terminal(clients, clients.alice, job.id)
    assert failed.status == job_pb2.JOB_STATUS_FAILED
    assert failed.error.code != job_pb2.ERROR_CODE_UNSPECIFIED
    assert failed.error.message
    assert not failed.outputs
    after = await create(
        clients, clients.alice, image=job_pb2.ImageParams(prompt="ok", size="256x256")
    )
    assert (
        await wait_terminal(clients, clients.alice, after.id)
    ).status == job_pb2.JOB_STATUS_SUCCEEDED


async def test_an_input_image_reaches_the_worker(clients) -> None:
    from tests.unit.test_validation import png

    job = await create(
        clients,
        clients.alice,
        image=job_pb2.ImageParams(
            prompt="edit", size="512x512", input_image=job_pb2.InputImage(data=png(64, 48))
        ),
    )
    assert not job.image.input_image.data  # the bytes are not echoed back
    assert job.image.input_image.key == f"jobs/{job.id}/input"
    done = await wait_terminal(clients, clients.alice, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error


async def test_list_jobs_is_newest_first_and_pages(clients) -> None:
    carol = clients.user("carol-lists")
    made = []
    for i in range(7):
        made.append(
            await create(clients, carol, image=job_pb2.ImageParams(prompt=f"p{i}", size="256x256"))
        )
    seen, token = [], ""
    while True:
        page = await clients.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=3, page_token=token), metadata=carol
        )
        assert len(page.jobs) <= 3
        seen += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == [j.id for j in reversed(made)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_token="garbage!"), metadata=carol
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for job in made:
        await wait_terminal(clients, carol, job.id)


async def test_watch_of_a_malformed_id_is_invalid_argument(clients) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch_all(clients, clients.alice, "nope")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    call = clients.notifier.WatchJob(
        notifier_service_pb2.WatchJobRequest(job_id=""), metadata=clients.alice
    )
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in call:
            pass
