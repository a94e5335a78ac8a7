"""An index on each owner's queued and running jobs (MAX_ACTIVE_JOBS_PER_USER)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Built concurrently, like 0002's, so a live database keeps taking job writes meanwhile.
    with op.get_context().autocommit_block():
        op.create_index(
            "jobs_owner_active",
            "jobs",
            ["owner"],
            postgresql_where=sa.text("status IN (1, 2)"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("jobs_owner_active", "jobs", postgresql_concurrently=True, if_exists=True)
