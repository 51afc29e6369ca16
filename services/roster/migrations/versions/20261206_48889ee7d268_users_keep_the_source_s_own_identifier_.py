"""users keep the source's own identifier of the person

Revision ID: 48889ee7d268
Revises: 5d0e7b2a9c41
Created: 2026-12-06 19:23:38.676971
"""
from alembic import op
import sqlalchemy as sa


revision = '48889ee7d268'
down_revision = '5d0e7b2a9c41'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # users imported before get theirs from the next Apple School Manager sync that lists them
    with op.batch_alter_table('roster_users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_identifier', sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f('ix_roster_users_source_identifier'), ['source_identifier'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('roster_users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_roster_users_source_identifier'))
        batch_op.drop_column('source_identifier')
