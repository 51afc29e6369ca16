"""user locations only in roster_user_locations, serial numbers as text, fewer indexes

Revision ID: 67a41508a9ad
Revises: 4692a592bc41
Created: 2026-11-26 11:31:17.787514
"""
from alembic import op
import sqlalchemy as sa

revision = '67a41508a9ad'
down_revision = '4692a592bc41'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # roster_user_locations already held every user's locations; serial numbers were
    # only pre-assignments, so the column is recreated rather than converted
    with op.batch_alter_table('roster_users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_roster_users_email'))
        batch_op.drop_index(batch_op.f('ix_roster_users_user_type'))
        batch_op.drop_column('locations')
        batch_op.drop_column('serial_numbers')
    with op.batch_alter_table('roster_users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('serial_numbers', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('roster_users', schema=None) as batch_op:
        batch_op.drop_column('serial_numbers')
    with op.batch_alter_table('roster_users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('serial_numbers', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('locations', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.create_index(batch_op.f('ix_roster_users_user_type'), ['user_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_roster_users_email'), ['email'], unique=False)
