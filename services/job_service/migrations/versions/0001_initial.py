"""jobs, outputs and outbox

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text),
        sa.Column("request_digest", sa.LargeBinary),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("progress", sa.SmallInteger, nullable=False, server_default="0"),
        sa.Column("status_message", sa.Text, nullable=False, server_default=""),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("params", sa.LargeBinary, nullable=False),
        sa.Column("model", sa.Text, nullable=False, server_default=""),
        sa.Column("error_code", sa.SmallInteger, nullable=False, server_default="0"),
        sa.Column("error_message", sa.Text, nullable=False, server_default=""),
        sa.Column("result_digest", sa.LargeBinary),
        sa.Column("generation_ms", sa.BigInteger),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("jobs_owner_id", "jobs", ["owner", sa.text("id DESC")])
    op.create_index(
        "jobs_owner_request_id",
        "jobs",
        ["owner", "request_id"],
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )
    op.create_table(
        "outputs",
        sa.Column(
            "job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("idx", sa.SmallInteger, primary_key=True),
        sa.Column("bucket", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("byte_size", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("duration_seconds", sa.Double, nullable=False, server_default="0"),
        sa.Column("sha256", sa.Text, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("outputs")
    op.drop_table("jobs")
