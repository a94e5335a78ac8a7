"""The tables job_service owns. Migrations under migrations/ create them; keep both in step."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
    func,
    text,
)

from media.v1 import webhook_service_pb2
from services.common.lifecycle import ACTIVE

# The SQL spelling of lifecycle.ACTIVE, for partial indexes and the queries that must match them
# (a literal list, so the planner can prove a query implies an index's predicate).
ACTIVE_PREDICATE = f"status IN ({', '.join(str(int(s)) for s in sorted(ACTIVE))})"

# The predicate of jobs_input_unswept, which the sweeper's query repeats to use it.
INPUT_UNSWEPT_PREDICATE = "finished_at IS NOT NULL AND input_swept_at IS NULL"

# webhook_deliveries.state of a delivery still to be sent (DELIVERY_STATE_PENDING), for the
# partial index the sender's query for due deliveries uses.
DELIVERY_PENDING = f"state = {webhook_service_pb2.DELIVERY_STATE_PENDING}"

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", Uuid, primary_key=True),  # UUIDv7: time-ordered
    Column("owner", Text, nullable=False),
    Column("request_id", Text),
    Column("request_digest", LargeBinary),  # sha256 of the parameters, to spot a reused request_id
    Column("kind", SmallInteger, nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("progress", SmallInteger, nullable=False, server_default="0"),
    Column("status_message", Text, nullable=False, server_default=""),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("params", LargeBinary, nullable=False),  # ImageParams or VideoParams, serialized
    Column("model", Text, nullable=False, server_default=""),
    Column("error_code", SmallInteger, nullable=False, server_default="0"),
    Column("error_message", Text, nullable=False, server_default=""),
    Column("result_digest", LargeBinary),  # sha256 of the CompleteJob result that finished it
    Column("generation_ms", BigInteger),
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    # When the sweeper (sweeper.py) dealt with a finished job's input image; NULL until then.
    Column("input_swept_at", DateTime(timezone=True)),
    Index("jobs_owner_id", "owner", text("id DESC")),
    Index(
        "jobs_owner_request_id",
        "owner",
        "request_id",
        unique=True,
        postgresql_where=text("request_id IS NOT NULL"),
    ),
    # Queued and running jobs only: keeps the metrics sampler's count of active jobs small
    # however many finished jobs the table holds.
    Index("jobs_active", "kind", "status", postgresql_where=text(ACTIVE_PREDICATE)),
    # The same rows by owner: CreateJob counts a user's active jobs against
    # MAX_ACTIVE_JOBS_PER_USER without reading their finished ones.
    Index("jobs_owner_active", "owner", postgresql_where=text(ACTIVE_PREDICATE)),
    # Finished jobs whose input the sweeper has not dealt with yet: each of its rounds reads these
    # alone, however many finished jobs the table holds.
    Index("jobs_input_unswept", "finished_at", postgresql_where=text(INPUT_UNSWEPT_PREDICATE)),
)

outputs = Table(
    "outputs",
    metadata,
    Column("job_id", Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", SmallInteger, primary_key=True),
    Column("bucket", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("byte_size", BigInteger, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("duration_seconds", Double, nullable=False, server_default="0"),
    Column("sha256", Text, nullable=False),
)

# Rows waiting to be published to JetStream; the relay deletes them once NATS acknowledged.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Uuid, primary_key=True),  # UUIDv7 minted by the writer; the Nats-Msg-Id
    Column("subject", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The W3C trace context of the transaction that wrote the row, published as NATS headers.
    Column("headers", JSON(none_as_null=True)),
)

# Where the sweeper's next round resumes each listing it pages through (a key: S3's StartAfter;
# empty: from the start), so that a bucket larger than one round is still covered, pass by pass.
sweep_cursors = Table(
    "sweep_cursors",
    metadata,
    Column("prefix", Text, primary_key=True),
    Column("start_after", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Images clients upload themselves (CreateInputUpload): who may use each, and which job did. The
# object is at keys.upload_key(id) until a CreateJob copies it to the job's input key.
input_uploads = Table(
    "input_uploads",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("mime_type", Text, nullable=False),  # declared, and signed into the PUT URL
    Column("byte_size", BigInteger, nullable=False),  # likewise
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The job that took it; set (with used_at) before the job's row exists, so no foreign key. A
    # claim whose job never came to be (a crash mid-create) is taken over after a while.
    Column("used_by", Uuid),
    Column("used_at", DateTime(timezone=True)),
)

# Where each user's webhooks go (WebhookService), and the one-off endpoints CreateJob makes for a
# single job (job_id set). The webhook sender reads them; job_service writes them.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Uuid, primary_key=True),  # UUIDv7
    Column("owner", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("event_types", ARRAY(Text), nullable=False),  # lifecycle.EventType values
    Column("kinds", ARRAY(SmallInteger), nullable=False, server_default="{}"),  # empty: all
    Column("job_id", Uuid),  # a one-off endpoint of this job (CreateJobRequest.webhook)
    # whsec_ secrets, as shown to the owner. During a rotation's overlap the previous one signs
    # too, until previous_secret_expires_at.
    Column("secret", Text, nullable=False),
    Column("previous_secret", Text),
    Column("previous_secret_expires_at", DateTime(timezone=True)),
    # The Sealer.key_id of the key that sealed secret and previous_secret; NULL when unknown or
    # not the same for both. The sweeper reseals the rows of any other key with the first one.
    Column("sealed_with", Text),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("disabled_reason", Text, nullable=False, server_default=""),
    Column("disabled_at", DateTime(timezone=True)),
    # The first failed attempt since the last success: disabled once this is too long ago.
    Column("failing_since", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("webhook_endpoints_owner_id", "owner", text("id DESC")),
    Index("webhook_endpoints_job", "job_id", postgresql_where=text("job_id IS NOT NULL")),
    Index("webhook_endpoints_sealed_with", "sealed_with"),
)

# One event for one endpoint: the sender's durable queue (state PENDING with next_attempt_at)
# and its history. Its id is the webhook-id header, the same for every attempt.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Uuid, primary_key=True),  # UUIDv7
    Column(
        "endpoint_id",
        Uuid,
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("event_id", Uuid, nullable=False),  # the event's Nats-Msg-Id (its outbox row's id)
    Column("event_type", Text, nullable=False),
    Column("job_id", Uuid, nullable=False),
    Column("job_version", BigInteger, nullable=False),
    Column("event", LargeBinary, nullable=False),  # the JobEvent: the job as the change left it
    Column("state", SmallInteger, nullable=False),  # webhook_service_pb2.DeliveryState
    Column("attempts", Integer, nullable=False, server_default="0"),  # scheduled attempts made
    # Pending: when the next attempt is due, or when a sender's claim on it lapses.
    Column("next_attempt_at", DateTime(timezone=True)),
    # The next attempt was asked for by RedeliverWebhook: it is recorded as manual, and its
    # failure ends the delivery instead of continuing the retry schedule.
    Column("manual", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # An event redelivered by NATS (a sender crashed before acking it) adds nothing.
    Index("webhook_deliveries_event", "endpoint_id", "event_id", unique=True),
    Index("webhook_deliveries_endpoint_id", "endpoint_id", text("id DESC")),
    Index("webhook_deliveries_due", "next_attempt_at", postgresql_where=text(DELIVERY_PENDING)),
    Index("webhook_deliveries_created", "created_at"),  # the sweeper's retention
)

# Every HTTP attempt of a delivery, as ListWebhookDeliveries shows it.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column(
        "delivery_id",
        Uuid,
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("number", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("status_code", Integer, nullable=False),  # 0: no HTTP answer
    Column("latency_ms", Integer, nullable=False),
    Column("response_head", Text, nullable=False, server_default=""),
    Column("error", Text, nullable=False, server_default=""),
    Column("manual", Boolean, nullable=False, server_default=text("false")),
    Index("webhook_attempts_delivery", "delivery_id", "id"),
)

# Each user's inbox: one row per finished job, written in the transaction that finished it.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Uuid, primary_key=True),  # UUIDv7
    Column("owner", Text, nullable=False),
    Column("job_id", Uuid, nullable=False),
    Column("type", Text, nullable=False),  # lifecycle.EventType
    Column("title", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("read_at", DateTime(timezone=True)),
    Index("notifications_owner_id", "owner", text("id DESC")),
    Index("notifications_owner_unread", "owner", postgresql_where=text("read_at IS NULL")),
    Index("notifications_created", "created_at"),  # the sweeper's retention
)
