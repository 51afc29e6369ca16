"""welcome e-mails to new users, sent after the apply that asked for them

Revision ID: 5d0e7b2a9c41
Revises: a058c355dba8
Created: 2026-12-06 17:50:00.000000
"""
from alembic import op
import sqlalchemy as sa
import shared.storage


revision = '5d0e7b2a9c41'
down_revision = 'a058c355dba8'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('roster_welcome_mails',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('to', sa.String(length=255), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('queued_at', shared.storage.UtcDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', shared.storage.UtcDateTime(timezone=True), nullable=True),
    sa.Column('refused_at', shared.storage.UtcDateTime(timezone=True), nullable=True),
    sa.Column('failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('retry_at', shared.storage.UtcDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('roster_welcome_mails', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_roster_welcome_mails_user_id'), ['user_id'], unique=False)
        batch_op.create_index('ix_roster_welcome_mails_due', ['sent_at', 'refused_at', 'retry_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('roster_welcome_mails', schema=None) as batch_op:
        batch_op.drop_index('ix_roster_welcome_mails_due')
        batch_op.drop_index(batch_op.f('ix_roster_welcome_mails_user_id'))
    op.drop_table('roster_welcome_mails')
