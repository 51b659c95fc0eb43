"""Initial schema: documents, deliveries, events, audit log and its checkpoints.

Revision ID: 0001
Revises:
Create Date: 2024-11-23

Written out as autogenerate renders it (never ``metadata.create_all``): a migration describes
the schema as it was when it shipped, whatever ``gateway.storage.tables`` says later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.types.TypeEngine[int]:
    """BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("seq", _id(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("sender", sa.String(length=32), nullable=False),
        sa.Column("document_id", sa.String(length=255), nullable=True),
        sa.Column("dedup_key", sa.String(length=320), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("status_code", sa.String(length=2), nullable=True),
        sa.Column("about_seq", _id(), nullable=True),
        sa.Column("signer", sa.Text(), nullable=False),
        sa.Column("signing_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_from", sa.String(length=128), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["about_seq"], ["documents.seq"], name=op.f("fk_documents_about_seq_documents")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_documents")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_documents_dedup_key")),
        sa.UniqueConstraint("id", name=op.f("uq_documents_id")),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("document_seq", _id(), nullable=False),
        sa.Column("recipient", sa.String(length=32), nullable=False),
        sa.Column("next_hop", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("leased_by", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["document_seq"],
            ["documents.seq"],
            name=op.f("fk_deliveries_document_seq_documents"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint(
            "document_seq", "recipient", name=op.f("uq_deliveries_document_seq_recipient")
        ),
    )
    op.create_index(
        op.f("ix_deliveries_next_hop_state_next_attempt_at"),
        "deliveries",
        ["next_hop", "state", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_deliveries_recipient_state_document_seq"),
        "deliveries",
        ["recipient", "state", "document_seq"],
        unique=False,
    )
    op.create_table(
        "events",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("document_seq", _id(), nullable=False),
        sa.Column("recipient", sa.String(length=32), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status_seq", _id(), nullable=True),
        sa.ForeignKeyConstraint(
            ["document_seq"], ["documents.seq"], name=op.f("fk_events_document_seq_documents")
        ),
        sa.ForeignKeyConstraint(
            ["status_seq"], ["documents.seq"], name=op.f("fk_events_status_seq_documents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_document_seq_id"), "events", ["document_seq", "id"])
    op.create_table(
        "audit_log",
        sa.Column("seq", _id(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("seq", _id(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("certificate", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_events_document_seq_id"), table_name="events")
    op.drop_table("events")
    op.drop_index(op.f("ix_deliveries_recipient_state_document_seq"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_next_hop_state_next_attempt_at"), table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_table("documents")
