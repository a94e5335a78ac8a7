"""The worker's own Prometheus metrics (deploy/prometheus/metrics.yaml)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# From a quick local image to a long Veo video.
GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

GENERATION_SECONDS = Histogram(
    "media_generation_seconds",
    "Time the generator took for one job (all outputs), successful or not.",
    ["kind", "model"],
    buckets=GENERATION_BUCKETS,
)
UPLOAD_BYTES = Counter("media_upload_bytes_total", "Bytes of outputs uploaded to S3.", ["kind"])
for _kind in ("image", "video"):
    UPLOAD_BYTES.labels(_kind)  # present at 0 from the start, so rate() sees the first upload


def observe_generation(kind: str, model: str, seconds: float) -> None:
    GENERATION_SECONDS.labels(kind, model).observe(seconds)
