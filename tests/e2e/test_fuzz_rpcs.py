"""Random and malformed requests to every RPC of the running services (hypothesis).

Every answer is a valid result or a deliberate gRPC error: never INTERNAL or UNKNOWN (a bug
behind the API), never UNAVAILABLE (a crashed or wedged server). A rejected CreateJob writes
no row and no object. Going over each limit answers INVALID_ARGUMENT or RESOURCE_EXHAUSTED
naming it. The services are still healthy afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.services import health_serving
from media.v1 import (
    job_pb2,
    job_service_pb2,
    notifications_pb2,
    notifier_service_pb2,
    webhook_service_pb2,
    worker_service_pb2,
)
from services.common.config import DEFAULT_MAX_MESSAGE_BYTES
from services.common.errors import field_violations
from services.common.images import IMAGE_TYPES
from tests.conftest import workers_paused
from tests.unit.test_validation import png

pytestmark = pytest.mark.e2e

# Deliberate answers to a bad request; anything else is a bug or an outage.
EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,  # each run explores afresh; nothing is written into the repository
)
TIMEOUT = 30  # a guard against hanging, not a timing assertion

# (full method name, request class, who calls it, streaming)
METHODS = [
    ("/media.v1.JobService/CreateJob", job_service_pb2.CreateJobRequest, "user", False),
    ("/media.v1.JobService/GetJob", job_service_pb2.GetJobRequest, "user", False),
    ("/media.v1.JobService/ListJobs", job_service_pb2.ListJobsRequest, "user", False),
    ("/media.v1.JobService/CancelJob", job_service_pb2.CancelJobRequest, "user", False),
    (
        "/media.v1.JobService/CreateInputUpload",
        job_service_pb2.CreateInputUploadRequest,
        "user",
        False,
    ),
    ("/media.v1.WorkerService/ClaimJob", worker_service_pb2.ClaimJobRequest, "worker", False),
    (
        "/media.v1.WorkerService/ReportProgress",
        worker_service_pb2.ReportProgressRequest,
        "worker",
        False,
    ),
    ("/media.v1.WorkerService/CompleteJob", worker_service_pb2.CompleteJobRequest, "worker", False),
    ("/media.v1.NotifierService/WatchJob", notifier_service_pb2.WatchJobRequest, "user", True),
    ("/media.v1.NotifierService/WatchJobs", notifier_service_pb2.WatchJobsRequest, "user", True),
    *(
        (
            f"/media.v1.WebhookService/{name}",
            getattr(webhook_service_pb2, f"{name}Request"),
            "user",
            False,
        )
        for name in (
            "CreateWebhookEndpoint",
            "ListWebhookEndpoints",
            "GetWebhookEndpoint",
            "UpdateWebhookEndpoint",
            "DeleteWebhookEndpoint",
            "RotateWebhookSecret",
            "ListWebhookDeliveries",
            "RedeliverWebhook",
        )
    ),
    *(
        (
            f"/media.v1.NotificationService/{name}",
            getattr(notifications_pb2, f"{name}Request"),
            "user",
            False,
        )
        for name in ("ListNotifications", "MarkNotificationsRead")
    ),
]
FUZZ_USER = "fuzz-user"
UNKNOWN_JOB = "01a209ac-9f4e-7224-8e25-1337f2bc5bcc"
MAX_INPUT_IMAGE_BYTES = 10 * 2**20  # the session stack's default


# --- strategies -----------------------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
_HUGE = st.builds(
    lambda c, n: c * n,
    st.sampled_from(["a", "é", "\x00", "日", "🎞"]),
    st.sampled_from([10_000, 300_000]),
)
_STRINGS = st.one_of(_TEXT, _HUGE, st.uuids().map(str), st.just(""))
_BYTES = st.one_of(
    st.binary(max_size=512),
    st.just(png()),
    st.just(png()[:40]),  # a PNG cut short
    st.just(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
)


def _ints(low: int, high: int) -> st.SearchStrategy:
    # Hypothesis favours small numbers; the extremes are where overflows hide.
    return st.one_of(st.integers(low, high), st.sampled_from([low, low + 1, -1, 0, high - 1, high]))


_I32, _I64 = _ints(-(2**31), 2**31 - 1), _ints(-(2**63), 2**63 - 1)
_U32, _U64 = _ints(0, 2**32 - 1), _ints(0, 2**64 - 1)
_INTS = {
    FieldDescriptor.TYPE_INT32: _I32,
    FieldDescriptor.TYPE_SINT32: _I32,
    FieldDescriptor.TYPE_SFIXED32: _I32,
    FieldDescriptor.TYPE_INT64: _I64,
    FieldDescriptor.TYPE_SINT64: _I64,
    FieldDescriptor.TYPE_SFIXED64: _I64,
    FieldDescriptor.TYPE_UINT32: _U32,
    FieldDescriptor.TYPE_FIXED32: _U32,
    FieldDescriptor.TYPE_UINT64: _U64,
    FieldDescriptor.TYPE_FIXED64: _U64,
}


def _scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return messages(message_factory.GetMessageClass(field.message_type), depth + 1)
    if kind == FieldDescriptor.TYPE_STRING:
        return _STRINGS
    if kind == FieldDescriptor.TYPE_BYTES:
        return _BYTES
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_ENUM:
        # Known values, and numbers the schema has never heard of (proto3 enums keep them).
        return st.one_of(st.integers(-2, 12), _I32)
    return _INTS[kind]


def messages(cls: type[pb_message.Message], depth: int = 0) -> st.SearchStrategy:
    """Any message of `cls`: each field unset or random, nested messages a few levels deep."""
    if depth > 3:
        return st.just(cls())
    optional = {}
    for field in cls.DESCRIPTOR.fields:
        value = _scalar(field, depth)
        if field.is_repeated:
            value = st.lists(value, max_size=5 if depth == 0 else 3)
        optional[field.name] = value
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))


def _build(cls: type[pb_message.Message], values: dict) -> pb_message.Message:
    built = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(built, name) if field.type == FieldDescriptor.TYPE_MESSAGE else None
        if field.is_repeated:
            if target is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                getattr(built, name).extend(value)
        elif target is not None:
            target.CopyFrom(value)
        else:
            setattr(built, name, value)
    return built


async def run_property(
    given_: Callable, check: Callable[..., Awaitable[None]], examples: int = 40
) -> None:
    """Runs a hypothesis property whose body is async. Hypothesis drives it from a thread; each
    example runs on this event loop, where the session's channels live."""
    loop = asyncio.get_running_loop()

    @settings(FUZZ, max_examples=examples)
    @given_
    def property_(**example: object) -> None:
        asyncio.run_coroutine_threadsafe(check(**example), loop).result()

    await asyncio.to_thread(property_)


# --- calling ---------------------------------------------------------------------------------


def _channel(clients, method: str) -> grpc.aio.Channel:  # type: ignore[no-untyped-def]
    if "NotifierService" in method:
        return clients.notifier_channel
    # WorkerService has a listener of its own (WORKER_LISTEN_ADDR).
    return clients.worker_channel if "WorkerService" in method else clients.job_channel


def _metadata(clients, who: str):  # type: ignore[no-untyped-def]
    return clients.worker if who == "worker" else clients.user(FUZZ_USER)


async def _send(clients, method: str, streaming: bool, body: bytes, metadata) -> tuple:  # type: ignore[no-untyped-def]
    """Sends `body` as the request, as it is (raw bytes need not be a valid message); returns
    (status code, the decoded replies' bytes)."""
    channel = _channel(clients, method)
    identity = {"request_serializer": None, "response_deserializer": None}
    try:
        if streaming:
            call = channel.unary_stream(method, **identity)(
                body, metadata=metadata, timeout=TIMEOUT
            )
            replies = []
            async for reply in call:
                replies.append(reply)
                if method.endswith("/WatchJobs") and _snapshot_done(reply):
                    call.cancel()  # a feed stays open: its opening snapshot is the answer
                    break
        else:
            replies = [
                await channel.unary_unary(method, **identity)(
                    body, metadata=metadata, timeout=TIMEOUT
                )
            ]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, replies


def _snapshot_done(reply: bytes) -> bool:
    message = notifier_service_pb2.WatchJobsResponse.FromString(reply)
    return message.WhichOneof("event") == "snapshot_done"


def _check(code: grpc.StatusCode, details, what: str) -> None:  # type: ignore[no-untyped-def]
    assert code in EXPECTED, f"{what} answered {code.name}: {details!r}"


def _is_job_id(text: str) -> bool:
    """A canonical UUID, the only spelling of a job ID the API takes."""
    try:
        return len(text) == 36 and str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


# Calls whose whole request is a job ID: a non-ID is INVALID_ARGUMENT naming job_id, and an ID
# (random, so nobody's job) NOT_FOUND.
_BY_JOB_ID = {"GetJob", "CancelJob", "WatchJob", "ClaimJob"}


def _precise(method: str, request: pb_message.Message) -> grpc.StatusCode | None:
    """The one right answer to a random request, where the request alone decides it."""
    name = method.rsplit("/", 1)[1]
    if name == "WatchJob" and request.cursor:  # type: ignore[attr-defined]
        return grpc.StatusCode.INVALID_ARGUMENT  # random: never a cursor the notifier made
    if name in _BY_JOB_ID:
        job_id = request.job_id  # type: ignore[attr-defined]
        return grpc.StatusCode.NOT_FOUND if _is_job_id(job_id) else grpc.StatusCode.INVALID_ARGUMENT
    if name == "CreateInputUpload":
        ok = (
            request.mime_type in IMAGE_TYPES  # type: ignore[attr-defined]
            and 0 < request.byte_size <= MAX_INPUT_IMAGE_BYTES  # type: ignore[attr-defined]
        )
        return grpc.StatusCode.OK if ok else grpc.StatusCode.INVALID_ARGUMENT
    if name == "ListJobs":
        bad = (
            request.page_size < 0  # type: ignore[attr-defined]
            or request.kind not in job_pb2.MediaKind.values()  # type: ignore[attr-defined]
            or request.status not in job_pb2.JobStatus.values()  # type: ignore[attr-defined]
            or request.page_token != ""  # type: ignore[attr-defined]  (random: never a real one)
        )
        return grpc.StatusCode.INVALID_ARGUMENT if bad else grpc.StatusCode.OK
    return None


def _jobs_of(deps, owner: str) -> int:  # type: ignore[no-untyped-def]
    engine = sa.create_engine(deps.database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM jobs WHERE owner = :owner"), {"owner": owner}
            ).scalar_one()
    finally:
        engine.dispose()


def _input_objects(deps) -> int:  # type: ignore[no-untyped-def]
    s3 = deps.s3_client()
    found = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="media", Prefix="jobs/"):
        found += sum(1 for o in page.get("Contents", []) if o["Key"].endswith("/input"))
    return found


def _healthy(stack) -> None:  # type: ignore[no-untyped-def]
    for proc in stack.procs:
        assert proc.running, f"{proc.name} is not running"
        assert health_serving(proc.addr, timeout=10), f"{proc.name} is not SERVING"


# --- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "request_class", "who", "streaming"), METHODS)
async def test_random_messages_get_proper_answers(
    clients, stack, deps, method, request_class, who, streaming
) -> None:
    metadata = _metadata(clients, who)
    rows_before = _jobs_of(deps, FUZZ_USER)
    inputs_before = _input_objects(deps)
    created: list[job_pb2.Job] = []

    async def check(request: pb_message.Message) -> None:
        body = request.SerializeToString()
        code, details = await _send(clients, method, streaming, body, metadata)
        _check(code, details, f"{method}({request!r:.300})")
        # A few huge strings together can make a message over GRPC_MAX_MESSAGE_BYTES, which gRPC
        # refuses before any check of its fields.
        too_big = len(body) > DEFAULT_MAX_MESSAGE_BYTES
        precise = grpc.StatusCode.RESOURCE_EXHAUSTED if too_big else _precise(method, request)
        if precise is not None:
            assert code == precise, f"{method}({request!r:.300}) answered {code.name}: {details!r}"
        if code == grpc.StatusCode.INVALID_ARGUMENT and method.rsplit("/", 1)[1] in _BY_JOB_ID:
            assert "job_id" in details or "cursor" in details, details
        if method.endswith("CreateJob") and code == grpc.StatusCode.OK:
            response = job_service_pb2.CreateJobResponse.FromString(details[0])
            if response.created:
                created.append(response.job)
                # Valid by chance: cancel it so the shared worker does not render it.
                await clients.jobs.CancelJob(
                    job_service_pb2.CancelJobRequest(job_id=response.job.id), metadata=metadata
                )

    await run_property(given(request=messages(request_class)), check)
    # Only accepted creates wrote anything: one row each, and their input image if any.
    assert _jobs_of(deps, FUZZ_USER) - rows_before == len(created)
    with_input = sum(1 for job in created if job.WhichOneof("params") and _has_input(job))
    assert _input_objects(deps) - inputs_before == with_input
    _healthy(stack)


def _has_input(job: job_pb2.Job) -> bool:
    params = getattr(job, job.WhichOneof("params"))
    return params.HasField("input_image")


@pytest.mark.parametrize(("method", "request_class", "who", "streaming"), METHODS)
async def test_undecodable_bodies_are_invalid_argument(
    clients, stack, method, request_class, who, streaming
) -> None:
    metadata = _metadata(clients, who)

    async def check(body: bytes) -> None:
        code, details = await _send(clients, method, streaming, body, metadata)
        _check(code, details, f"{method} with body {body!r:.200}")
        try:
            request_class.FromString(body)
        except pb_message.DecodeError:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)

    await run_property(given(body=st.binary(min_size=1, max_size=256)), check)
    # Invalid UTF-8 in a string field: well-formed on the wire, but it does not decode.
    number = next(
        f.number for f in request_class.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_STRING
    )
    bad_utf8 = bytes([number << 3 | 2, 4]) + b"\xff\xfe\xfd\xfc"
    code, details = await _send(clients, method, streaming, bad_utf8, metadata)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    _healthy(stack)


async def test_random_bearer_tokens_are_unauthenticated(clients) -> None:
    async def check(token: str) -> None:
        for method, request_class, _, streaming in METHODS:
            # A job ID that parses: the notifier checks the request before it asks job_service
            # (which checks the token) about the job.
            fields = (
                {"job_id": UNKNOWN_JOB}
                if "job_id" in request_class.DESCRIPTOR.fields_by_name
                else {}
            )
            code, details = await _send(
                clients,
                method,
                streaming,
                request_class(**fields).SerializeToString(),
                (("authorization", f"Bearer {token}"),),
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, code, details)

    printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
    await run_property(given(token=st.text(alphabet=printable, min_size=1, max_size=300)), check)


async def test_random_results_for_a_claimed_job_get_proper_answers(clients, stack) -> None:
    """CompleteJob and ReportProgress for a job really claimed, with the right job ID and
    attempt, so that random results get past the ID checks to validation and the database."""
    metadata = clients.worker
    owner = clients.user(FUZZ_USER)
    current: dict[str, job_pb2.Job] = {}

    async def claimed() -> job_pb2.Job:
        if "job" not in current:
            job = (
                await clients.jobs.CreateJob(
                    job_service_pb2.CreateJobRequest(
                        image=job_pb2.ImageParams(prompt="fuzzed results", size="256x256")
                    ),
                    metadata=owner,
                )
            ).job
            claim = worker_service_pb2.ClaimJobRequest(job_id=job.id)
            current["job"] = (await clients.workers.ClaimJob(claim, metadata=metadata)).job
        return current["job"]

    async def check(
        result: worker_service_pb2.CompleteJobRequest,
        progress: worker_service_pb2.ReportProgressRequest,
        plausible: bool,
    ) -> None:
        job = await claimed()
        progress.job_id, progress.attempt = job.id, job.attempt
        code, details = await _send(
            clients,
            "/media.v1.WorkerService/ReportProgress",
            False,
            progress.SerializeToString(),
            metadata,
        )
        _check(code, details, f"ReportProgress({progress!r:.300})")
        result.job_id, result.attempt = job.id, job.attempt
        if plausible and result.HasField("success"):
            # Outputs and texts that pass their checks, so that the random numbers reach the
            # database.
            del result.success.outputs[4:]
            if not result.success.outputs:
                result.success.outputs.add()
            for index, output in enumerate(result.success.outputs):
                output.index, output.bucket = index, "media"
                output.key = f"jobs/{job.id}/{job.attempt}/output-{index}.png"
                output.content_type, output.sha256 = "image/png", "ab" * 32
                output.byte_size = abs(output.byte_size) % 2**40 + 1
                output.width = abs(output.width) % 10_000 + 1
                output.height = abs(output.height) % 10_000 + 1
                output.ClearField("url")
            for name in ("model", "status_message"):
                setattr(result.success, name, getattr(result.success, name)[:100].strip("\x00"))
        code, details = await _send(
            clients,
            "/media.v1.WorkerService/CompleteJob",
            False,
            result.SerializeToString(),
            metadata,
        )
        _check(code, details, f"CompleteJob({result!r:.300})")
        if code == grpc.StatusCode.OK:
            done = worker_service_pb2.CompleteJobResponse.FromString(details[0]).job
            if done.status == job_pb2.JOB_STATUS_QUEUED:  # a retry: keep the worker off it
                await clients.jobs.CancelJob(
                    job_service_pb2.CancelJobRequest(job_id=done.id), metadata=owner
                )
            del current["job"]

    with workers_paused(stack):
        await run_property(
            given(
                result=messages(worker_service_pb2.CompleteJobRequest),
                progress=messages(worker_service_pb2.ReportProgressRequest),
                plausible=st.booleans(),
            ),
            check,
            examples=100,
        )
        if "job" in current:
            await clients.jobs.CancelJob(
                job_service_pb2.CancelJobRequest(job_id=current["job"].id), metadata=owner
            )
    _healthy(stack)


# --- limits --------------------------------------------------------------------------------------


async def test_a_message_over_the_size_limit_is_resource_exhausted(clients, stack, deps) -> None:
    limit = DEFAULT_MAX_MESSAGE_BYTES  # GRPC_MAX_MESSAGE_BYTES, the session stack's default
    rows_before = _jobs_of(deps, FUZZ_USER)
    inputs_before = _input_objects(deps)
    request = job_service_pb2.CreateJobRequest(
        image=job_pb2.ImageParams(
            prompt="big", input_image=job_pb2.InputImage(data=png() + b"\x00" * (limit + 1))
        )
    )
    for method, body in (
        ("/media.v1.JobService/CreateJob", request.SerializeToString()),
        ("/media.v1.JobService/GetJob", b"\x0a" + _varint(limit + 10) + b"a" * (limit + 10)),
    ):
        # With a token or without: gRPC refuses the message before any handler sees it.
        for metadata in (clients.user(FUZZ_USER), ()):
            code, details = await _send(clients, method, False, body, metadata)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            assert str(limit) in details  # names the limit: "larger than max (N vs. 2097152)"
    assert _jobs_of(deps, FUZZ_USER) == rows_before
    assert _input_objects(deps) == inputs_before
    _healthy(stack)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _image(**kw) -> job_service_pb2.CreateJobRequest:  # type: ignore[no-untyped-def]
    return job_service_pb2.CreateJobRequest(image=job_pb2.ImageParams(**kw))


def _video(**kw) -> job_service_pb2.CreateJobRequest:  # type: ignore[no-untyped-def]
    return job_service_pb2.CreateJobRequest(video=job_pb2.VideoParams(**kw))


# (request, field, text naming the limit) with the session stack's default settings.
OVER_LIMITS = [
    (_image(prompt="x" * 8001), "image.prompt", "at most 8000 characters"),  # MAX_PROMPT_CHARS
    (_video(prompt="a", negative_prompt="x" * 8001), "video.negative_prompt", "at most 8000"),
    (
        _image(prompt="a", input_image=job_pb2.InputImage(data=png() + b"\x00" * 2**20)),
        "image.input_image.data",
        f"at most {2**20} bytes inline",  # MAX_INLINE_IMAGE_BYTES (larger: CreateInputUpload)
    ),
    (_image(prompt="a", number_of_images=5), "image.number_of_images", "between 1 and 4"),
    (_video(prompt="a", number_of_videos=5), "video.number_of_videos", "between 1 and 4"),
    (_video(prompt="a", duration_seconds=9), "video.duration_seconds", "between 4 and 8"),
    (_video(prompt="a", duration_seconds=3), "video.duration_seconds", "between 4 and 8"),
    (
        job_service_pb2.CreateJobRequest(
            request_id="r" * 129, image=job_pb2.ImageParams(prompt="a")
        ),
        "request_id",
        "at most 128",
    ),
]


async def test_going_over_each_limit_names_it(clients, deps) -> None:
    metadata = clients.user(FUZZ_USER)
    rows_before = _jobs_of(deps, FUZZ_USER)
    for request, field, limit in OVER_LIMITS:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clients.jobs.CreateJob(request, metadata=metadata, timeout=TIMEOUT)
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        described = dict(field_violations(error))
        assert limit in described.get(field, ""), (field, described)
    assert _jobs_of(deps, FUZZ_USER) == rows_before
    # Page size over MAX_PAGE_SIZE (100) is coerced to it (AIP-158), not refused.
    listed = await clients.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(page_size=1_000_000), metadata=clients.alice
    )
    assert len(listed.jobs) <= 100
