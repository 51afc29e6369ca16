"""profile ids never handed out twice on SQLite

Revision ID: cf56081e27d9
Revises: 3e14a30f7c35
Created: 2026-12-07 01:00:00.000000

A profile's id names its users' source in the roster (``ldap:<id>``). SQLite hands the
highest id out again once its row is deleted, so a new profile would take over, and
delete, the users of one deleted before it. AUTOINCREMENT never reuses an id; the ids of
profiles deleted before this migration are read from the audit log. PostgreSQL's
sequence never reused one.
"""
from alembic import op
import sqlalchemy as sa


revision = 'cf56081e27d9'
down_revision = '3e14a30f7c35'
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        return
    with op.batch_alter_table('ldap_profiles', recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass
    if not sa.inspect(connection).has_table("audit_log"):  # a new database: no profile was ever deleted
        return
    audited = connection.execute(sa.text(
        "SELECT max(CAST(substr(target, length('ldap_profile:') + 1) AS INTEGER)) FROM audit_log "
        "WHERE target LIKE 'ldap_profile:%'")).scalar()
    if audited:
        connection.execute(sa.text(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'ldap_profiles', 0 "
            "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'ldap_profiles')"))
        connection.execute(sa.text("UPDATE sqlite_sequence SET seq = max(seq, :audited) WHERE name = 'ldap_profiles'"),
                           {"audited": audited})


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("ldap_profiles", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
        pass
