"""The webhook sender's metrics (deploy/prometheus/metrics.yaml is the contract)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.webhooks.outcome import DisableReason

DELIVERIES = Counter(
    "media_webhook_deliveries_total",
    "Webhook attempts by outcome: succeeded (a 2xx), retrying (failed, another attempt is "
    "scheduled) or failed (failed, and the delivery with it).",
    ["outcome", "event_type"],
)
ATTEMPT_DURATION = Histogram(
    "media_webhook_attempt_duration_seconds",
    "Time of one HTTP attempt, from connecting to the end of the answer (or the timeout).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0),
)
DELIVERY_LATENCY = Histogram(
    "media_webhook_delivery_latency_seconds",
    "Time from a job's change (its update_time) to the 2xx that delivered it, retries included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
RETRIES_PENDING = Gauge(
    "media_webhook_retries_pending",
    "Pending deliveries that have failed at least once (waiting for their next attempt).",
)
OLDEST_DUE = Gauge(
    "media_webhook_oldest_due_seconds",
    "Age of the oldest delivery that is due and not yet sent, 0 when none is: the backlog.",
)
ENDPOINTS_DISABLED = Counter(
    "media_webhook_endpoints_disabled_total",
    "Endpoints the sender disabled, by reason: gone (410 Gone) or failing (no success for "
    "WEBHOOK_DISABLE_AFTER_SECONDS).",
    ["reason"],
)

# Present from the start: the first disabling after a restart must be an increase Prometheus
# sees, not the birth of a series (which increase() reads as no change).
for _reason in DisableReason:
    ENDPOINTS_DISABLED.labels(_reason.value)
