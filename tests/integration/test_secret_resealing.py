"""Changing WEBHOOK_SECRETS_KEYS: the sweeper seals every endpoint's secrets again with the new
first key, so that the old key can be dropped and every endpoint still signs with the secret its
owner holds. On a Postgres database of the test's own, with endpoints written by job_service's
own store."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
import sqlalchemy as sa
from prometheus_client import REGISTRY

from devstack.deps import Dependencies
from services.common import webhook_signing
from services.common.ids import uuid7
from services.common.sealing import Sealer, Unsealable
from services.job_service import migrate
from services.job_service.schema import webhook_endpoints
from services.job_service.settings import SweepSettings
from services.job_service.sweep_queries import sweeper_engine
from services.job_service.sweeper import Sweeper
from services.job_service.webhook_store import NewEndpoint, WebhookStore

pytestmark = pytest.mark.integration

OLD, NEW = Sealer.new_key(), Sealer.new_key()
PER_ROUND = 2  # fewer than the endpoints: resealing goes on over rounds


@dataclass
class Rig:
    engine: sa.Engine
    sweeper: Sweeper

    def stored(self, endpoint_id: uuid.UUID) -> sa.Row[tuple[str, str | None, str | None]]:
        with self.engine.connect() as conn:
            e = webhook_endpoints.c
            return conn.execute(
                sa.select(e.secret, e.previous_secret, e.sealed_with).where(e.id == endpoint_id)
            ).one()


@pytest_asyncio.fixture
async def rig(deps: Dependencies, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    name = f"reseal_{os.urandom(4).hex()}"
    url = await asyncio.to_thread(deps.create_database, name)
    await asyncio.to_thread(migrate.upgrade, url)
    s3 = deps.s3_client()
    bucket = name.replace("_", "-")
    await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
    engine = sa.create_engine(url)
    # The keys as changed: the new one first, the old one still there to open.
    settings = SweepSettings(interval_seconds=1, max_per_round=PER_ROUND)
    sweeper = Sweeper(sweeper_engine(url), s3, bucket, settings, Sealer([NEW, OLD]))
    try:
        yield Rig(engine, sweeper)
    finally:
        await sweeper.stop()
        engine.dispose()


def create(store: WebhookStore, sealer: Sealer) -> tuple[uuid.UUID, str]:
    secret = webhook_signing.new_secret()
    new = NewEndpoint(
        id=uuid7(),
        owner="keeper",
        url="https://93.184.215.14/hook",
        event_types=("job.succeeded",),
        secret=secret,
        sealed_secret=sealer.seal(secret),
        sealed_with=sealer.key_id,
    )
    store.create(new)
    return new.id, secret


def rotate(store: WebhookStore, endpoint_id: uuid.UUID, sealer: Sealer) -> str:
    secret = webhook_signing.new_secret()
    assert store.rotate("keeper", endpoint_id, sealer.seal(secret), sealer.key_id) is not None
    return secret


def to_reseal() -> float | None:
    return REGISTRY.get_sample_value("media_webhook_secrets_to_reseal")


async def test_every_secret_is_sealed_again_with_the_new_first_key(rig: Rig) -> None:
    old, new = Sealer([OLD]), Sealer([NEW])
    store = WebhookStore(rig.engine, max_endpoints=20, overlap_seconds=3600)
    expired = WebhookStore(rig.engine, max_endpoints=20, overlap_seconds=0)

    plain = [create(store, old) for _ in range(3)]
    overlapping, before = create(store, old)
    current = rotate(store, overlapping, old)  # both under the old key, the old still signs
    lapsed, _ = create(store, old)
    lapsed_secret = rotate(expired, lapsed, old)  # its previous secret no longer signs
    mixed, mixed_previous = create(store, old)
    mixed_secret = rotate(store, mixed, new)  # rotated after the change: one of each key
    untouched, untouched_secret = create(store, new)
    untouched_row = rig.stored(untouched)
    foreign = create(store, Sealer([Sealer.new_key()]))[0]  # under a key no longer configured
    assert rig.stored(mixed).sealed_with is None

    for _ in range(5):  # 7 endpoints to reseal, PER_ROUND per round
        assert await rig.sweeper.sweep_once() is not None
    assert to_reseal() == 1  # the one no key opens

    # Only the new key is needed now, and every endpoint signs with what its owner holds.
    for endpoint_id, secret in plain:
        assert new.open(rig.stored(endpoint_id).secret) == secret
    row = rig.stored(overlapping)
    assert row.previous_secret is not None
    assert (new.open(row.secret), new.open(row.previous_secret)) == (current, before)
    row = rig.stored(lapsed)
    assert (new.open(row.secret), row.previous_secret) == (lapsed_secret, None)
    row = rig.stored(mixed)
    assert row.previous_secret is not None
    assert (new.open(row.secret), new.open(row.previous_secret)) == (mixed_secret, mixed_previous)
    assert {rig.stored(e).sealed_with for e, _ in [*plain, (overlapping, ""), (mixed, "")]} == {
        new.key_id
    }
    # Sealed with the new key already: not written again.
    assert rig.stored(untouched) == untouched_row
    assert new.open(untouched_row.secret) == untouched_secret
    # No key opens it: left as it was, and counted until rotated.
    row = rig.stored(foreign)
    with pytest.raises(Unsealable):
        Sealer([NEW, OLD]).open(row.secret)
    assert row.sealed_with not in {None, new.key_id}

    rotate(store, foreign, new)
    await rig.sweeper.sweep_once()
    assert to_reseal() == 0
