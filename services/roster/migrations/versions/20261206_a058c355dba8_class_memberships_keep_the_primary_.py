"""class memberships keep the primary teacher first; failed ASM syncs are retried later

Revision ID: a058c355dba8
Revises: b3c9d2e41f07
Created: 2026-12-06 17:19:39.202923
"""
from alembic import op
import sqlalchemy as sa
import shared.storage


revision = 'a058c355dba8'
down_revision = 'b3c9d2e41f07'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('roster_asm_preferences', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failed_syncs', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('retry_at', shared.storage.UtcDateTime(timezone=True), nullable=True))

    # memberships written before keep position 0: their teachers read in user ID order, as they did
    with op.batch_alter_table('roster_memberships', schema=None) as batch_op:
        batch_op.add_column(sa.Column('position', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('roster_memberships', schema=None) as batch_op:
        batch_op.drop_column('position')

    with op.batch_alter_table('roster_asm_preferences', schema=None) as batch_op:
        batch_op.drop_column('retry_at')
        batch_op.drop_column('failed_syncs')
