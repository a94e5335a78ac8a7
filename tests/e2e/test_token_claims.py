"""Signed tokens whose claims have the wrong type or range are UNAUTHENTICATED on every service,
never INTERNAL (an `exp` of 10**400 used to overflow converting the claim)."""

from __future__ import annotations

import time

import grpc
import jwt
import pytest

from media.v1 import job_service_pb2, notifier_service_pb2, worker_service_pb2
from services.common.auth import bearer_metadata

pytestmark = pytest.mark.e2e

UNKNOWN_JOB = "01a209ac-9f4e-7224-8e25-1337f2bc5bcc"
SOON = int(time.time()) + 600
BAD_CLAIMS = [
    {"exp": 10**400},
    {"exp": -(10**400)},
    {"exp": float("inf")},
    {"exp": float("nan")},
    {"exp": "tomorrow"},
    {"exp": [SOON]},
    {"exp": SOON, "nbf": 10**400},
    {"exp": SOON, "nbf": float("-inf")},
    {"exp": SOON, "iat": 10**400},
    {"exp": SOON, "iat": {"when": "now"}},
    {"exp": SOON, "roles": "worker"},
    {"exp": SOON, "sub": 12345},
]


def _token(secret: str, claims: dict[str, object]) -> tuple[tuple[str, str], ...]:
    payload = {"sub": "claims-attacker", "aud": "media", "roles": ["worker"], **claims}
    return bearer_metadata(jwt.encode(payload, secret, algorithm="HS256"))


@pytest.mark.parametrize("claims", BAD_CLAIMS, ids=lambda c: repr(c)[:40])
async def test_claims_of_the_wrong_type_or_range_are_unauthenticated(clients, claims) -> None:
    metadata = _token(clients.secret, claims)
    calls = [
        clients.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=UNKNOWN_JOB), metadata=metadata),
        clients.workers.ClaimJob(
            worker_service_pb2.ClaimJobRequest(job_id=UNKNOWN_JOB), metadata=metadata
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value.details()
    stream = clients.notifier.WatchJob(
        notifier_service_pb2.WatchJobRequest(job_id=UNKNOWN_JOB), metadata=metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value.details()
