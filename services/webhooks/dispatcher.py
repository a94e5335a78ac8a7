"""Sending deliveries: at most WEBHOOK_MAX_IN_FLIGHT attempts at once (sending or being
recorded), and at most WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT open requests per endpoint and
WEBHOOK_MAX_IN_FLIGHT_PER_USER per user, so a slow receiver holds its own slots only, and one
user's receivers (however many endpoints and one-off job webhooks they have) never hold another
user's deliveries back.

A delivery is sent only once a slot is reserved for it: the fan-out reserves before it inserts
(what finds no slot is inserted due now, for the poll), and the poll claims no more than the
free slots, per endpoint too. Each batch reads the fresh output URLs of its succeeded jobs in
one ReadJobs call; then every delivery is signed, POSTed and recorded on its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from media.v1 import events_pb2, job_pb2
from services.common import lifecycle, webhook_signing
from services.common.job_reader import JobReader
from services.webhooks import metrics, outcome, payload
from services.webhooks.delivery_store import Delivery, DeliveryStore, Endpoint
from services.webhooks.http import Answer, Sender
from services.webhooks.outcome import Decision, Result, Schedule
from services.webhooks.recorder import Attempt, Recorder
from services.webhooks.settings import WebhookSettings

log = logging.getLogger(__name__)

_K = TypeVar("_K")

READ_BATCH = 500  # job_service's ReadJobs takes at most 500 IDs
READ_FAILED = "could not read the job's output URLs from the job service"
NO_SUCH_JOB = "the job service does not know the job"
SECRET_UNSEALABLE = "the endpoint's signing secret cannot be opened: see WEBHOOK_SECRETS_KEYS"


class Dispatcher:
    def __init__(
        self,
        store: DeliveryStore,
        recorder: Recorder,
        sender: Sender,
        reader: JobReader,
        settings: WebhookSettings,
        *,
        spread: Callable[[], float] = lambda: random.uniform(-1.0, 1.0),
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._sender = sender
        self._reader = reader
        self._schedule = Schedule(settings.retry_schedule, settings.retry_jitter)
        self._disable_after = settings.disable_after_seconds
        self._max = settings.max_in_flight
        self._per_endpoint = settings.max_in_flight_per_endpoint
        self._per_user = settings.max_in_flight_per_user
        self._poll_seconds = settings.poll_seconds
        self._claim_at = max(1, settings.max_in_flight // 4)
        self.lease_seconds = settings.lease_seconds
        self._spread = spread
        self._busy: dict[uuid.UUID, int] = {}  # deliveries in flight (or reserved) per endpoint
        self._busy_users: dict[str, int] = {}  # and per owner
        self._in_flight = 0
        self._sending: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._requesting: set[uuid.UUID] = set()  # of those, the ones whose request is open
        self._batches: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._backlog = False  # deliveries may be due beyond the free slots
        # Endpoints and users that were full at the last claim: their due deliveries were passed
        # over, so a slot freed on one of them is worth another claim.
        self._passed_over: set[uuid.UUID | str] = set()
        self._poller: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # --- slots -------------------------------------------------------------------------------

    def reserve(self, endpoint: Endpoint) -> bool:
        """Takes a slot for a delivery to `endpoint`; False when none is free."""
        if self._stopping or self._in_flight >= self._max:
            return False
        if self._busy.get(endpoint.id, 0) >= self._per_endpoint:
            return False
        if self._busy_users.get(endpoint.owner, 0) >= self._per_user:
            return False
        self._busy[endpoint.id] = self._busy.get(endpoint.id, 0) + 1
        self._busy_users[endpoint.owner] = self._busy_users.get(endpoint.owner, 0) + 1
        self._in_flight += 1
        return True

    def note_backlog(self) -> None:
        """Deliveries were left due for want of a slot: poll again as soon as one frees."""
        self._backlog = True

    def unreserve(self, endpoint: Endpoint) -> None:
        self._release_receiver(endpoint)
        self._release_slot()

    def _release_receiver(self, endpoint: Endpoint) -> None:
        """The endpoint's and its user's share of a slot: held while the request is open."""
        _take_one(self._busy, endpoint.id)
        _take_one(self._busy_users, endpoint.owner)
        if endpoint.id in self._passed_over or endpoint.owner in self._passed_over:
            self._passed_over.clear()
            self._wake.set()

    def _release_slot(self) -> None:
        """The overall share: held until the attempt is recorded."""
        self._in_flight -= 1
        # With deliveries left due, claim again once a quarter of the slots are free: a claim
        # per freed slot would cost a query per delivery.
        if self._backlog and self._max - self._in_flight >= self._claim_at:
            self._wake.set()

    # --- sending -----------------------------------------------------------------------------

    def start(self, deliveries: Sequence[Delivery]) -> None:
        """Sends deliveries whose slots are reserved."""
        task = asyncio.get_running_loop().create_task(self._batch(list(deliveries)))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _batch(self, deliveries: list[Delivery]) -> None:
        started: set[uuid.UUID] = set()
        try:
            events = {d.id: events_pb2.JobEvent.FromString(d.event) for d in deliveries}
            wanted = {e.job.id for e in events.values() if e.job.status == lifecycle.SUCCEEDED}
            fresh = await self._read(sorted(wanted))
            for delivery in deliveries:
                coroutine = self._deliver(delivery, events[delivery.id], fresh)
                self._spawn(delivery, coroutine)
                started.add(delivery.id)
        finally:
            for delivery in deliveries:
                if delivery.id not in started:
                    self.unreserve(delivery.endpoint)

    def _spawn(self, delivery: Delivery, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._sending[delivery.id] = task
        self._requesting.add(delivery.id)

        def done(_: asyncio.Task[None]) -> None:
            self._sending.pop(delivery.id, None)
            self._answered(delivery)  # if it ended before its answer (a stop)
            self._release_slot()

        task.add_done_callback(done)

    def _answered(self, delivery: Delivery) -> None:
        """The request is over: its endpoint's and user's slot frees now, before the attempt is
        recorded, so that those limits bound open requests and recording does not slow a user
        down (recording is bounded by the overall limit)."""
        if delivery.id in self._requesting:
            self._requesting.discard(delivery.id)
            self._release_receiver(delivery.endpoint)

    async def _read(self, job_ids: list[str]) -> dict[str, job_pb2.Job] | None:
        """The succeeded jobs with fresh output URLs (None: the read failed)."""
        found: dict[str, job_pb2.Job] = {}
        try:
            for start in range(0, len(job_ids), READ_BATCH):
                for owned in await self._reader.read(job_ids[start : start + READ_BATCH]):
                    found[owned.job.id] = owned.job
        except Exception as exc:
            log.warning("reading jobs for webhooks failed: %s", exc)
            return None
        return found

    async def _deliver(
        self,
        delivery: Delivery,
        event: events_pb2.JobEvent,
        fresh: dict[str, job_pb2.Job] | None,
    ) -> None:
        started_at = datetime.now(UTC)
        answer = await self._attempt(delivery, event, fresh)
        self._answered(delivery)
        try:
            attempt = Attempt(
                delivery,
                answer.result,
                started_at,
                round(answer.seconds * 1000),
                answer.response_head,
            )
            recorded = await self._recorder.record(attempt, self._decide)
        except Exception as exc:
            # Its claim lapses and it is sent again, with the same webhook-id.
            log.warning(
                "recording a webhook attempt failed: %r",
                exc,
                extra={"delivery_id": str(delivery.id)},
            )
            return
        self._observe(delivery, event, answer, recorded.decision)
        if recorded.disabled_now and recorded.decision.disable is not None:
            metrics.ENDPOINTS_DISABLED.labels(recorded.decision.disable.value).inc()
            log.warning(
                "webhook endpoint disabled: %s",
                recorded.decision.disabled_reason,
                extra={"endpoint_id": str(delivery.endpoint.id)},
            )

    async def _attempt(
        self,
        delivery: Delivery,
        event: events_pb2.JobEvent,
        fresh: dict[str, job_pb2.Job] | None,
    ) -> Answer:
        if not delivery.endpoint.enabled:
            return _not_sent(outcome.ENDPOINT_DISABLED)
        if not delivery.endpoint.secrets:
            return _not_sent(SECRET_UNSEALABLE)
        job = event.job
        if job.status == lifecycle.SUCCEEDED:
            if fresh is None:
                return _not_sent(READ_FAILED)
            read = fresh.get(job.id)
            if read is None:
                return _not_sent(NO_SUCH_JOB)
            job = payload.with_outputs(job, read)
        body = payload.body(delivery.event_type, job)
        headers = webhook_signing.headers(
            delivery.endpoint.secrets, str(delivery.id), int(time.time()), body
        )
        headers["content-type"] = payload.CONTENT_TYPE
        headers["user-agent"] = payload.USER_AGENT
        return await self._sender.post(delivery.endpoint.url, body, headers)

    def _decide(
        self,
        delivery: Delivery,
        result: Result,
        failing_since: datetime | None,
        now: datetime,
    ) -> Decision:
        in_schedule = not delivery.manual or outcome.still_scheduled(
            delivery.attempts, delivery.last_status, delivery.last_error, self._schedule
        )
        return outcome.decide(
            result,
            attempts=delivery.attempts,
            manual=delivery.manual,
            in_schedule=in_schedule,
            endpoint_enabled=delivery.endpoint.enabled,
            failing_since=failing_since,
            now=now,
            schedule=self._schedule,
            disable_after_seconds=self._disable_after,
            spread=self._spread(),
        )

    def _observe(
        self,
        delivery: Delivery,
        event: events_pb2.JobEvent,
        answer: Answer,
        decision: Decision,
    ) -> None:
        metrics.DELIVERIES.labels(decision.outcome.value, delivery.event_type).inc()
        if answer.attempted:
            metrics.ATTEMPT_DURATION.observe(answer.seconds)
        fields = {
            "delivery_id": str(delivery.id),
            "endpoint_id": str(delivery.endpoint.id),
            "job_id": event.job.id,
        }
        if decision.outcome is outcome.Outcome.SUCCEEDED:
            if not delivery.manual and event.job.HasField("update_time"):
                changed = event.job.update_time.ToNanoseconds() / 1e9
                metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - changed))
            log.debug("webhook delivered", extra=fields)
        else:
            log.info(
                "webhook attempt failed (%s): %s",
                decision.outcome.value,
                answer.result.error or f"HTTP {answer.result.status_code}",
                extra=fields,
            )

    # --- the poll: retries, and claims that lapsed -----------------------------------------

    def run(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll_loop(), name="poll")

    async def _poll_loop(self) -> None:
        failing = False
        while True:
            self._wake.clear()  # before the poll: a slot freed during it wakes the next one
            try:
                await self.poll()
                if failing:
                    log.info("claiming due webhooks recovered")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("claiming due webhooks failed: %r", exc)
                failing = True
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
            except TimeoutError:
                pass

    async def poll(self) -> int:
        """Claims and starts the due deliveries there are slots for; returns how many."""
        room = self._max - self._in_flight
        if room <= 0 or self._stopping:
            self._backlog = True
            return 0
        self._passed_over = {e for e, n in self._busy.items() if n >= self._per_endpoint}
        self._passed_over.update(u for u, n in self._busy_users.items() if n >= self._per_user)
        claimed = await self._store.claim(
            room,
            self._per_endpoint,
            self._per_user,
            self._busy,
            self._busy_users,
            self.lease_seconds,
        )
        # More may be due (the claim was bounded by the room, per endpoint too): claim again as
        # slots free. Nothing claimed: nothing due that may go now, until the next poll.
        self._backlog = bool(claimed)
        take: list[Delivery] = []
        give_back: list[uuid.UUID] = []
        for delivery in claimed:
            if delivery.id in self._sending:
                continue  # still being sent here: the claim just renewed its lease
            if self.reserve(delivery.endpoint):
                take.append(delivery)
            else:  # the fan-out took the slot meanwhile
                give_back.append(delivery.id)
        if take:
            self.start(take)
        await self._store.release(give_back)
        return len(take)

    async def stop(self, grace_seconds: float) -> None:
        """Lets deliveries in flight finish for up to `grace_seconds`; the rest are cancelled and
        given back (due at once, for another replica)."""
        self._stopping = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._batches:
            await asyncio.wait(set(self._batches), timeout=grace_seconds)
        sending = dict(self._sending)
        if sending:
            _, pending = await asyncio.wait(set(sending.values()), timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            unsent = [i for i, task in sending.items() if task in pending]
            if unsent:
                log.warning("%d webhook delivery(ies) cut short; given back", len(unsent))
                try:
                    await self._store.release(unsent)
                except Exception as exc:
                    log.warning("giving back deliveries failed (their claims lapse): %r", exc)


def _take_one(counts: dict[_K, int], key: _K) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


def _not_sent(error: str) -> Answer:
    """An attempt that made no request, for a reason of the sender's (the endpoint is not
    blamed)."""
    return Answer(Result(error=error, receiver_fault=False), 0.0, attempted=False)
