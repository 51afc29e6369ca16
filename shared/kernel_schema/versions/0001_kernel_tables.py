"""The kernel's tables, in every service's database: outbox, inbox, audit log, leases.

Revision ID: kernel_0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

import shared.storage

revision = "kernel_0001"
down_revision = None
branch_labels = ("kernel",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", shared.storage.UtcDateTime, nullable=False),
    )
    op.create_table(
        "inbox",
        sa.Column("handler", sa.String(200), primary_key=True),
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("handled_at", shared.storage.UtcDateTime, nullable=False, index=True),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", shared.storage.UtcDateTime, nullable=False),
        sa.Column("actor_id", sa.String(200), nullable=False),
        sa.Column("actor_role", sa.String(40), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("target", sa.String(200), nullable=True, index=True),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires_at", shared.storage.UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("leases", "audit_log", "inbox", "outbox"):
        op.drop_table(table)
