"""A recipient's fetch and acknowledgement, owed to the sender's node: ``progress_due`` marks
the rows whose progress a ``progress`` notice has not carried back yet.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column("progress_due", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(
        "ix_deliveries_progress_due",
        "deliveries",
        ["document_seq"],
        sqlite_where=sa.text("progress_due"),
        postgresql_where=sa.text("progress_due"),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_progress_due", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("progress_due")
