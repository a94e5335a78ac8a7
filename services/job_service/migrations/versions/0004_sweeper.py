"""The sweeper's state: jobs.input_swept_at with an index on the finished jobs not yet swept, and
sweep_cursors

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable without a default: a catalog-only change, no table rewrite. Jobs that finished
    # before it start unswept, so the first rounds delete the input images they left behind.
    op.add_column("jobs", sa.Column("input_swept_at", sa.DateTime(timezone=True)))
    op.create_table(
        "sweep_cursors",
        sa.Column("prefix", sa.Text, primary_key=True),
        sa.Column("start_after", sa.Text, nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    # Built concurrently, like 0002's, so a live database keeps taking job writes meanwhile.
    with op.get_context().autocommit_block():
        op.create_index(
            "jobs_input_unswept",
            "jobs",
            ["finished_at"],
            postgresql_where=sa.text("finished_at IS NOT NULL AND input_swept_at IS NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("jobs_input_unswept", "jobs", postgresql_concurrently=True, if_exists=True)
    op.drop_table("sweep_cursors")
    op.drop_column("jobs", "input_swept_at")
