"""job_service's own Prometheus metrics (deploy/prometheus/metrics.yaml). The per-job counters
are bumped where the change happens; the gauges are set by the sampler (sampler.py)."""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import Counter, Gauge

from services.common import lifecycle
from services.common.lifecycle import KIND_NAMES, Kind, Status


def status_label(status: Status) -> str:
    """The `status` label value: "succeeded" for SUCCEEDED."""
    return lifecycle.status_name(status).lower()


JOBS_CREATED = Counter(
    "media_jobs_created_total",
    "Jobs created (a retried CreateJob with the same request_id is not counted again).",
    ["kind"],
)
JOBS_COMPLETED = Counter(
    "media_jobs_completed_total",
    "Jobs that reached a terminal status (succeeded, failed or canceled).",
    ["kind", "status"],
)
QUEUE_DEPTH = Gauge(
    "media_queue_depth",
    "Jobs in status queued, read from the database every few seconds.",
    ["kind"],
)
OLDEST_AGE = Gauge(
    "media_job_oldest_age_seconds",
    "Age of the oldest job in status queued or running (seconds since it entered that status), "
    "0 when there is none.",
    ["kind", "status"],
)
CONSUMER_PENDING = Gauge(
    "media_consumer_pending_messages",
    "Dispatch messages of the consumer worker-<kind> not yet delivered plus delivered and not "
    "yet acknowledged.",
    ["kind"],
)
# Sampled here rather than by the sender, so that it still reads when no sender runs.
WEBHOOK_EVENTS_PENDING = Gauge(
    "media_webhook_events_pending",
    "Events of MEDIA_WEBHOOK_EVENTS the webhook sender's consumer has not yet fanned out into "
    "deliveries (not delivered plus not acknowledged).",
)
SECRETS_TO_RESEAL = Gauge(
    "media_webhook_secrets_to_reseal",
    "Webhook endpoints whose secrets are not sealed with the first key of WEBHOOK_SECRETS_KEYS, "
    "as the sweeper's last round left them: 0 means the other keys can be dropped.",
)
OUTBOX_PENDING = Gauge("media_outbox_pending", "Outbox rows not yet published to JetStream.")
OUTBOX_LAG = Gauge(
    "media_outbox_lag_seconds",
    "Age of the oldest unpublished outbox row, 0 when the outbox is empty.",
)
OBJECTS_SWEPT = Counter(
    "media_objects_swept_total",
    "Objects the sweeper deleted from the bucket, by reason: input (the input image of a finished "
    "job), orphan (under jobs/, no job record points to it), upload (a presigned upload left "
    "behind).",
    ["reason"],
)
SWEEP_ROUNDS = Counter(
    "media_sweep_rounds_total",
    "Sweeper rounds of this replica, by result: swept, skipped (another replica was sweeping) or "
    "failed.",
    ["result"],
)
SweepReason = Literal["input", "orphan", "upload"]
SweepResult = Literal["swept", "skipped", "failed"]
SWEEP_REASONS: tuple[SweepReason, ...] = get_args(SweepReason)
SWEEP_RESULTS: tuple[SweepResult, ...] = get_args(SweepResult)

# Resolved once: these are bumped on the request path.
_created = {kind: JOBS_CREATED.labels(name) for kind, name in KIND_NAMES.items()}
_completed = {
    (kind, status): JOBS_COMPLETED.labels(kind_name, status_label(status))
    for kind, kind_name in KIND_NAMES.items()
    for status in lifecycle.FINISHED
}


# Every reason and result from the start, so a rate over them is defined before the first one.
_swept = {reason: OBJECTS_SWEPT.labels(reason) for reason in SWEEP_REASONS}
_rounds = {result: SWEEP_ROUNDS.labels(result) for result in SWEEP_RESULTS}


def job_created(kind: Kind) -> None:
    _created[kind].inc()


def job_finished(kind: Kind, status: Status) -> None:
    """Counts a transition into a terminal status (ignores any other status)."""
    counter = _completed.get((kind, status))
    if counter is not None:
        counter.inc()


def objects_swept(reason: SweepReason, count: int) -> None:
    _swept[reason].inc(count)


def sweep_round(result: SweepResult) -> None:
    _rounds[result].inc()
