"""The four-tier network: hop records and receipts, the directory of peers, the outbox index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.types.TypeEngine[int]:
    """BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hops",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("document_seq", _id(), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("from_node", sa.String(length=128), nullable=False),
        sa.Column("to_node", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_seq"], ["documents.seq"], name=op.f("fk_hops_document_seq_documents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hops")),
        sa.UniqueConstraint("document_seq", "digest", name=op.f("uq_hops_document_seq_digest")),
    )
    op.create_index(
        op.f("ix_hops_document_seq_position"), "hops", ["document_seq", "position"], unique=False
    )
    op.create_table(
        "peers",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("serves", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_peers")),
    )
    op.create_index(
        "ix_deliveries_pending",
        "deliveries",
        ["next_hop", "document_seq", "id"],
        unique=False,
        sqlite_where=sa.text("next_attempt_at IS NOT NULL"),
        postgresql_where=sa.text("next_attempt_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_pending", table_name="deliveries")
    op.drop_table("peers")
    op.drop_index(op.f("ix_hops_document_seq_position"), table_name="hops")
    op.drop_table("hops")
