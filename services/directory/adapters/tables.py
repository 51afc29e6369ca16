"""The directory service's tables, in its own database."""
import sqlalchemy as sa

from shared.storage import UtcDateTime, add_kernel_tables

metadata = sa.MetaData()
add_kernel_tables(metadata)

ldap_profiles = sa.Table(
    "ldap_profiles", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("settings", sa.JSON, nullable=False),  # the profile as callers see it (no password)
    sa.Column("sealed_bind_password", sa.Text, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("last_sync_at", UtcDateTime, nullable=True),
    sa.Column("last_sync_outcome", sa.String(20), nullable=True),  # previewed | applied | failed
    sa.Column("last_sync_message", sa.Text, nullable=True),
    sa.Column("last_scheduled_on", sa.String(10), nullable=True),  # UTC date (YYYY-MM-DD) of the last daily sync
    sa.Column("certificate_not_after", UtcDateTime, nullable=True),  # the server's, when last connected
    # an id names its users' source in the roster: SQLite must never hand a deleted profile's id out again
    sqlite_autoincrement=True,
)

# failed sign-ins per limiter key, kept for the limiter's window only
sign_in_failures = sa.Table(
    "sign_in_failures", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(320), nullable=False),  # the key: "username:" or "account:" + SHA-256 hex
    sa.Column("at", sa.Float, nullable=False, index=True),  # Unix time
    sa.Index("ix_sign_in_failures_username_at", "username", "at"),
)
