"""The notifier's own Prometheus metrics (deploy/prometheus/metrics.yaml)."""

from __future__ import annotations

from prometheus_client import Gauge

ACTIVE_WATCH_STREAMS = Gauge(
    "media_active_watch_streams", "WatchJob and WatchJobs streams open on this notifier."
)
