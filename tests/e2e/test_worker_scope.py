"""A worker can finish only the job and attempt it was given, with files of that job only; a
client credential cannot act as a worker at all."""

from __future__ import annotations

import grpc
import pytest

from media.v1 import job_pb2, job_service_pb2, worker_service_pb2
from services.common.errors import error_info, field_violations
from services.common.lifecycle import Reason
from tests.conftest import workers_paused
from tests.e2e.helpers import create

pytestmark = pytest.mark.e2e


def _success(job_id: str, attempt: int, **output: object) -> worker_service_pb2.CompleteJobRequest:
    fields: dict[str, object] = {
        "index": 0,
        "bucket": "media",
        "key": f"jobs/{job_id}/{attempt}/output-0.png",
        "content_type": "image/png",
        "byte_size": 10,
        "width": 256,
        "height": 256,
        "sha256": "ab" * 32,
    }
    fields.update(output)
    return worker_service_pb2.CompleteJobRequest(
        job_id=job_id,
        attempt=attempt,
        success=worker_service_pb2.JobSuccess(outputs=[job_pb2.Output(**fields)], model="local"),
    )


async def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


async def _refusal(call) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A FAILED_PRECONDITION's ErrorInfo: (reason, the job's status), what workers act on."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reason, metadata = error_info(caught.value)
    return reason, metadata.get("status", "")


async def test_only_the_current_attempt_of_a_claimed_job_can_complete_it(clients, stack) -> None:
    with workers_paused(stack):
        job = await create(
            clients, clients.alice, image=job_pb2.ImageParams(prompt="scope", size="256x256")
        )
        other = await create(
            clients, clients.alice, image=job_pb2.ImageParams(prompt="other", size="256x256")
        )
        workers = clients.workers
        # Not claimed yet: nothing can complete it.
        assert (
            await _code(workers.CompleteJob(_success(job.id, 1), metadata=clients.worker))
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        claim = worker_service_pb2.ClaimJobRequest(job_id=job.id)
        first = (await workers.ClaimJob(claim, metadata=clients.worker)).job
        assert (first.status, first.attempt) == (job_pb2.JOB_STATUS_RUNNING, 1)
        # Claiming is ClaimJob's alone: ReportProgress without an attempt is refused.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await workers.ReportProgress(
                worker_service_pb2.ReportProgressRequest(job_id=job.id), metadata=clients.worker
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(caught.value)] == ["attempt"]
        # A second claim (redelivery after the first worker went silent) takes attempt 2.
        second = (await workers.ClaimJob(claim, metadata=clients.worker)).job
        assert second.attempt == 2
        for attempt in (1, 3):  # the superseded attempt, and one never handed out
            assert await _refusal(
                workers.CompleteJob(_success(job.id, attempt), metadata=clients.worker)
            ) == (Reason.ATTEMPT_STALE, "RUNNING")
        failure = worker_service_pb2.CompleteJobRequest(
            job_id=job.id,
            attempt=1,
            failure=worker_service_pb2.JobFailure(code=job_pb2.ERROR_CODE_INTERNAL, message="x"),
        )
        assert (
            await _code(workers.CompleteJob(failure, metadata=clients.worker))
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        # Files of another job, outside the service's bucket, or under any other spelling than
        # the key layout's (a `..` that a browser would resolve to another job) are refused.
        for bad in (
            _success(job.id, 2, key=f"jobs/{other.id}/1/output-0.png"),
            _success(job.id, 2, key=f"jobs/{job.id}/../{other.id}/1/output-0.png"),
            _success(job.id, 2, key=f"jobs/{job.id}/2/../../{other.id}/1/output-0.png"),
            _success(job.id, 2, key=f"jobs/{job.id}//2/output-0.png"),
            _success(job.id, 2, key=f"jobs/{job.id}/1/output-0.png"),  # another attempt's
            _success(job.id, 2, key=f"jobs/{job.id}/2/output-0.jpg"),  # not its content type
            _success(job.id, 2, key="users/alice/output-0.png"),
            _success(job.id, 2, bucket="someone-elses-bucket"),
        ):
            assert (
                await _code(workers.CompleteJob(bad, metadata=clients.worker))
                == grpc.StatusCode.INVALID_ARGUMENT
            )
        # A client credential is refused before anything else is looked at.
        assert (
            await _code(workers.CompleteJob(_success(job.id, 2), metadata=clients.alice))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        # An unknown job is NOT_FOUND.
        assert (
            await _code(
                workers.CompleteJob(
                    _success("01a209ac-9f4e-7224-8e25-1337f2bc5bcc", 1), metadata=clients.worker
                )
            )
            == grpc.StatusCode.NOT_FOUND
        )
        # Nothing above changed the job; the current attempt completes it.
        current = (
            await clients.jobs.GetJob(
                job_service_pb2.GetJobRequest(job_id=job.id), metadata=clients.alice
            )
        ).job
        assert current.status == job_pb2.JOB_STATUS_RUNNING and not current.outputs
        assert current.version == second.version
        done = (await workers.CompleteJob(_success(job.id, 2), metadata=clients.worker)).job
        assert done.status == job_pb2.JOB_STATUS_SUCCEEDED and len(done.outputs) == 1
        await clients.jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=other.id), metadata=clients.alice
        )
        # A redelivered dispatch of a finished job is told how it ended: a worker deletes what
        # a dead attempt stored only when no outputs were recorded.
        for finished, status in ((job, "SUCCEEDED"), (other, "CANCELED")):
            claim = worker_service_pb2.ClaimJobRequest(job_id=finished.id)
            assert await _refusal(workers.ClaimJob(claim, metadata=clients.worker)) == (
                Reason.JOB_FINISHED,
                status,
            )
