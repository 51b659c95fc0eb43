"""Webhook notifications: one row per package delivered to a hosted agency whose DMS has a URL,
with the signed JSON body and its retry schedule.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-14
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: BIGINT on PostgreSQL, INTEGER (the rowid alias, autoincrementing) on SQLite
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("document_seq", _Id, nullable=False),
        sa.Column("agency", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("leased_by", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["document_seq"], ["documents.seq"], name=op.f("fk_webhooks_document_seq_documents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
        sa.UniqueConstraint("message_id", name=op.f("uq_webhooks_message_id")),
        sa.UniqueConstraint("document_seq", "agency", name=op.f("uq_webhooks_document_seq_agency")),
    )
    op.create_index(
        op.f("ix_webhooks_agency_state_next_attempt_at"),
        "webhooks",
        ["agency", "state", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhooks_agency_state_next_attempt_at"), table_name="webhooks")
    op.drop_table("webhooks")
