"""ADE devices without a foreign key to their token; only throttled assignments indexed

The key was checked for every device a sync inserted (a third of the database's time in a
full sync); TokenRepository.delete removes a token's devices itself.

Revision ID: 35a15199de86
Revises: 310a81b4a9ff
Created: 2026-12-03 21:11:49.690125
"""
from alembic import op
import sqlalchemy as sa


revision = '35a15199de86'
down_revision = '310a81b4a9ff'
branch_labels = None
depends_on = None

THROTTLED = sa.text("assign_result = 'THROTTLED'")
# SQLite's foreign keys have no name: batch mode finds this one through the naming convention
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
SQLITE_KEY = "fk_dep_devices_token_id_server_tokens"
POSTGRESQL_KEY = "dep_devices_token_id_fkey"


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("dep_devices", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(POSTGRESQL_KEY if postgresql else SQLITE_KEY, type_="foreignkey")
        batch_op.drop_index("ix_dep_devices_retry")
        batch_op.create_index("ix_dep_devices_throttled", ["token_id", "assign_retry_at"], unique=False,
                              postgresql_where=THROTTLED, sqlite_where=THROTTLED)


def downgrade() -> None:
    with op.batch_alter_table("dep_devices") as batch_op:
        batch_op.drop_index("ix_dep_devices_throttled")
        batch_op.create_index("ix_dep_devices_retry", ["token_id", "assign_result", "assign_retry_at"], unique=False)
        batch_op.create_foreign_key(POSTGRESQL_KEY, "server_tokens", ["token_id"], ["id"], ondelete="CASCADE")
