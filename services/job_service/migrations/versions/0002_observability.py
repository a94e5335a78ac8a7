"""outbox.headers (trace context) and an index on active jobs (metrics sampler)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable without a default: a catalog-only change, no table rewrite.
    op.add_column("outbox", sa.Column("headers", sa.JSON(none_as_null=True)))
    # Built concurrently so that migrating a live database never blocks job writes (this runs
    # before the rolling update, while the old release still serves).
    with op.get_context().autocommit_block():
        op.create_index(
            "jobs_active",
            "jobs",
            ["kind", "status"],
            postgresql_where=sa.text("status IN (1, 2)"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("jobs_active", "jobs", postgresql_concurrently=True, if_exists=True)
    op.drop_column("outbox", "headers")
