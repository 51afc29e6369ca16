"""The push service's tables, in its own database.

Devices belong to a certificate through its topic (the one thing a device knows about
it), so a device announced before its certificate is uploaded is counted as soon as it is.
"""
import sqlalchemy as sa

from shared.storage import UtcDateTime, add_kernel_tables

metadata = sa.MetaData()
add_kernel_tables(metadata)

certificates = sa.Table(
    "push_certificates", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(200), nullable=False, unique=True),
    sa.Column("serial_number", sa.String(80), nullable=False),
    sa.Column("not_before", UtcDateTime, nullable=False),
    sa.Column("not_after", UtcDateTime, nullable=False),
    sa.Column("issuer", sa.String(500), nullable=False),
    sa.Column("common_name", sa.String(200), nullable=True),
    sa.Column("apple_id", sa.String(200), nullable=True),
    sa.Column("certificate_pem", sa.Text, nullable=False),
    sa.Column("sealed_private_key", sa.Text, nullable=False),
    sa.Column("uploaded_at", UtcDateTime, nullable=False),
    sa.Column("renewed_at", UtcDateTime, nullable=True),
)

# keys made for vendor-signed requests, waiting for the certificate Apple issues for them
signing_keys = sa.Table(
    "push_signing_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("public_key_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("sealed_private_key", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("used_at", UtcDateTime, nullable=True),
)

devices = sa.Table(
    "push_devices", metadata,
    sa.Column("udid", sa.String(100), primary_key=True),
    sa.Column("topic", sa.String(200), nullable=False, index=True),
    sa.Column("serial_number", sa.String(64), nullable=True),
    sa.Column("push_token", sa.String(200), nullable=False),
    sa.Column("push_magic", sa.String(200), nullable=False),
    sa.Column("enrolled_at", UtcDateTime, nullable=False),
    sa.Column("last_push_at", UtcDateTime, nullable=True),
    sa.Column("last_push_result", sa.String(100), nullable=True),
    # set when APNs says the token will never work again; cleared by the next enrollment
    sa.Column("push_disabled_reason", sa.String(100), nullable=True),
)

# when each device last checked out: an enrollment older than its check-out, delivered late, is ignored
device_removals = sa.Table(
    "push_device_removals", metadata,
    sa.Column("udid", sa.String(100), primary_key=True),
    sa.Column("removed_at", UtcDateTime, nullable=False),
)
