import time

import grpc
import jwt
import pytest

from services.common.auth import AuthError, TokenVerifier, bearer_metadata, mint_token
from services.common.config import AuthSettings
from services.common.errors import RpcError

SECRET = "s" * 40
VERIFIER = TokenVerifier(AuthSettings(jwt_secret=SECRET, audience="media", issuer=""))


def test_a_minted_token_verifies_to_its_subject_and_roles() -> None:
    who = VERIFIER.from_metadata(bearer_metadata(mint_token(SECRET, "alice")))
    assert who.subject == "alice" and not who.is_worker
    worker = VERIFIER.verify(mint_token(SECRET, "w1", roles=("worker",)))
    assert worker.is_worker


@pytest.mark.parametrize(
    "token",
    [
        mint_token("x" * 40, "alice"),  # wrong key
        mint_token(SECRET, "alice", audience="other"),
        mint_token(SECRET, "alice", ttl_seconds=-60),  # expired
        jwt.encode(
            {"sub": "alice", "aud": "media", "exp": time.time() + 60}, None, algorithm="none"
        ),
        mint_token(SECRET, "alice")[:-3] + "abc",  # tampered signature
        "garbage",
    ],
)
def test_bad_tokens_are_unauthenticated(token: str) -> None:
    with pytest.raises(AuthError) as caught:
        VERIFIER.verify(token)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_missing_or_malformed_metadata_is_unauthenticated() -> None:
    for metadata in [None, (), (("authorization", "Basic abc"),), (("authorization", "Bearer "),)]:
        with pytest.raises(AuthError) as caught:
            VERIFIER.from_metadata(metadata)
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_require_lets_in_only_a_caller_with_the_role() -> None:
    notifier = bearer_metadata(mint_token(SECRET, "n", roles=("notifier",)))
    assert (await VERIFIER.require(notifier, "notifier", "JobReaderService")).subject == "n"
    with pytest.raises(RpcError) as refused:
        await VERIFIER.require(notifier, "worker", "WorkerService")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.message == "WorkerService needs a worker credential"
