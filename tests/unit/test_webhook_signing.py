"""Our Standard Webhooks signatures, verified by the reference implementation (standardwebhooks),
never by our own signer."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.common import webhook_signing

BODY = b'{"type":"job.succeeded","data":{"id":"x"}}'
MSG_ID = "0190b3a4-7e1d-7c3a-8f00-123456789abc"


def test_a_new_secret_has_the_standard_form() -> None:
    secret = webhook_signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(webhook_signing.secret_key(secret)) == webhook_signing.SECRET_BYTES
    assert webhook_signing.new_secret() != secret


def test_one_secret_verifies() -> None:
    secret = webhook_signing.new_secret()
    headers = webhook_signing.headers([secret], MSG_ID, int(time.time()), BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == MSG_ID
    assert Webhook(secret).verify(BODY, headers) == {"type": "job.succeeded", "data": {"id": "x"}}


def test_during_an_overlap_each_secret_verifies() -> None:
    new, old = webhook_signing.new_secret(), webhook_signing.new_secret()
    headers = webhook_signing.headers([new, old], MSG_ID, int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: ({**h, "webhook-id": "another"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
        lambda h, b: (h, b + b" "),
    ],
    ids=["id", "timestamp", "body"],
)
def test_a_changed_id_timestamp_or_body_does_not_verify(tamper) -> None:  # type: ignore[no-untyped-def]
    secret = webhook_signing.new_secret()
    headers, body = tamper(webhook_signing.headers([secret], MSG_ID, int(time.time()), BODY), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_another_secret_does_not_verify() -> None:
    headers = webhook_signing.headers(
        [webhook_signing.new_secret()], MSG_ID, int(time.time()), BODY
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook_signing.new_secret()).verify(BODY, headers)
