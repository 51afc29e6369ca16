"""Device assignments follow their user's locations in the roster

Revision ID: 7e2c4b9d1a36
Revises: 9161fde1841f
Created: 2026-12-06 17:40:00.000000
"""
from alembic import op
import sqlalchemy as sa
import shared.storage


revision = '7e2c4b9d1a36'
down_revision = '9161fde1841f'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('device_assignments') as batch:
        batch.add_column(sa.Column('locations_at', shared.storage.UtcDateTime(timezone=True), nullable=True))
    # a user's locations were last read when the device was assigned
    op.execute("UPDATE device_assignments SET locations_at = assigned_at WHERE user_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('device_assignments') as batch:
        batch.drop_column('locations_at')
