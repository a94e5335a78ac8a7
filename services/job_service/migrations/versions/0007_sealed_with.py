"""webhook_endpoints.sealed_with: which key sealed an endpoint's secrets, so that the sweeper
can seal again, with the first key of WEBHOOK_SECRETS_KEYS, those another key sealed

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: no table rewrite. Existing rows are NULL (unknown),
    # which the sweeper reseals once.
    op.add_column("webhook_endpoints", sa.Column("sealed_with", sa.Text))
    # Built concurrently, like 0002's, so a live database keeps taking endpoint writes meanwhile.
    with op.get_context().autocommit_block():
        op.create_index(
            "webhook_endpoints_sealed_with",
            "webhook_endpoints",
            ["sealed_with"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "webhook_endpoints_sealed_with",
            "webhook_endpoints",
            postgresql_concurrently=True,
            if_exists=True,
        )
    op.drop_column("webhook_endpoints", "sealed_with")
