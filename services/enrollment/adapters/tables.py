"""The enrollment service's tables, in its own database."""
import sqlalchemy as sa

from shared.storage import UtcDateTime, add_kernel_tables

metadata = sa.MetaData()
add_kernel_tables(metadata)

server_tokens = sa.Table(
    "server_tokens", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("locations", sa.JSON, nullable=True),  # None: every current and future location
    sa.Column("certificate_pem", sa.Text, nullable=False),
    sa.Column("sealed_private_key", sa.Text, nullable=False),
    sa.Column("sealed_credentials", sa.Text, nullable=True),  # None until the .p7m is uploaded
    sa.Column("consumer_key", sa.String(200), nullable=True),
    sa.Column("access_token_expiry", UtcDateTime, nullable=True),
    sa.Column("server_uuid", sa.String(64), nullable=True),
    sa.Column("server_name", sa.String(200), nullable=True),
    sa.Column("org_name", sa.String(200), nullable=True),
    sa.Column("apple_admin_id", sa.String(200), nullable=True),  # who created the MDM server in ASM
    sa.Column("integrated_by", sa.String(200), nullable=True),  # who completed the integration in Orchard
    sa.Column("integrated_at", UtcDateTime, nullable=True),
    sa.Column("apple_refusal", sa.String(40), nullable=True),  # terms_not_accepted | revoked_or_invalid
    sa.Column("profile", sa.JSON, nullable=True),
    sa.Column("default_profile_uuid", sa.String(64), nullable=True),
    sa.Column("cursor", sa.Text, nullable=True),
    sa.Column("cursor_phase", sa.String(10), nullable=True),
    sa.Column("cursor_generation", sa.String(32), nullable=True),
    sa.Column("last_sync_at", UtcDateTime, nullable=True),
    sa.Column("last_sync_result", sa.String(20), nullable=True),
    sa.Column("last_sync_error", sa.Text, nullable=True),
    sa.Column("last_successful_sync_at", UtcDateTime, nullable=True),
    sa.Column("next_sync_at", UtcDateTime, nullable=True),
    sa.Column("sync_holder", sa.String(64), nullable=True),  # one sync per token at a time, across replicas
    sa.Column("sync_lease_until", UtcDateTime, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
)

sync_runs = sa.Table(
    "sync_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_id", sa.String(36), sa.ForeignKey("server_tokens.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("trigger", sa.String(20), nullable=False),  # manual | scheduled | upload
    sa.Column("kind", sa.String(10), nullable=False),  # fetch | sync
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("pages", sa.Integer, nullable=False, default=0),
    sa.Column("added", sa.Integer, nullable=False, default=0),
    sa.Column("modified", sa.Integer, nullable=False, default=0),
    sa.Column("deleted", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text, nullable=True),
)

_WAITING_ASSIGN = sa.text("assign_result IN ('THROTTLED', 'QUEUED')")  # device_sync.WAITING_ASSIGN_RESULTS

# no foreign key to server_tokens: TokenRepository.delete removes a token's devices and a sync stops when
# its token is gone (hold_token, TokenCursorStore), while checking the key for every inserted row cost a third of
# the database's time in a full sync
dep_devices = sa.Table(
    "dep_devices", metadata,
    sa.Column("token_id", sa.String(36), primary_key=True),
    sa.Column("serial_number", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("description", sa.String(300), nullable=True),
    sa.Column("color", sa.String(100), nullable=True),
    sa.Column("asset_tag", sa.String(200), nullable=True),
    sa.Column("os", sa.String(40), nullable=True),
    sa.Column("device_family", sa.String(40), nullable=True),
    sa.Column("profile_status", sa.String(20), nullable=False),
    sa.Column("profile_uuid", sa.String(64), nullable=True),
    sa.Column("profile_assign_time", sa.String(40), nullable=True),
    sa.Column("device_assigned_date", sa.String(40), nullable=True),
    sa.Column("device_assigned_by", sa.String(200), nullable=True),
    sa.Column("op_date", sa.String(40), nullable=True),
    sa.Column("seen_generation", sa.String(32), nullable=True),
    sa.Column("assign_result", sa.String(20), nullable=True),  # SUCCESS | NOT_ACCESSIBLE | FAILED | THROTTLED
    sa.Column("assign_retry_at", UtcDateTime, nullable=True),
    sa.Column("assign_retry_profile_uuid", sa.String(64), nullable=True),  # the profile a THROTTLED device waits for
    sa.Column("assigned_by", sa.String(200), nullable=True),  # who assigned our profile (system for automatic)
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_dep_devices_token_status", "token_id", "profile_status"),
    # only throttled and queued assignments are asked again: the index leaves out every other device
    sa.Index("ix_dep_devices_waiting_assign", "token_id", "assign_retry_at", postgresql_where=_WAITING_ASSIGN,
             sqlite_where=_WAITING_ASSIGN),
)

checkins = sa.Table(
    "checkins", metadata,
    sa.Column("udid", sa.String(100), primary_key=True),
    sa.Column("serial_number", sa.String(64), nullable=True, index=True),
    sa.Column("topic", sa.String(200), nullable=True),
    sa.Column("enrolled", sa.Boolean, nullable=False, default=False),
    sa.Column("last_message", sa.String(40), nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

# Orchard's device CA: one row, made the first time a profile is served
device_ca = sa.Table(
    "device_ca", metadata,
    sa.Column("id", sa.String(20), primary_key=True),
    sa.Column("certificate_pem", sa.Text, nullable=False),
    sa.Column("sealed_private_key", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# the identity certificate each device authenticated with; its later check-ins must be signed by it
device_identities = sa.Table(
    "device_identities", metadata,
    sa.Column("udid", sa.String(100), primary_key=True),
    sa.Column("certificate_sha256", sa.String(64), nullable=False),
    sa.Column("bound_at", UtcDateTime, nullable=False),
)

# identities that may no longer sign check-ins: replaced by a newer one for the same device, or checked out
retired_identities = sa.Table(
    "retired_identities", metadata,
    sa.Column("certificate_sha256", sa.String(64), primary_key=True),
    sa.Column("udid", sa.String(100), nullable=False),
    sa.Column("reason", sa.String(20), nullable=False),  # superseded | checked_out
    sa.Column("retired_at", UtcDateTime, nullable=False),
)

shared_groups = sa.Table(
    "shared_groups", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("location_id", sa.String(128), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.UniqueConstraint("location_id", "name", name="uq_shared_groups_location_name"),
)

# a device is used by one user or one shared group: the serial is the key
device_assignments = sa.Table(
    "device_assignments", metadata,
    sa.Column("serial_number", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=True, index=True),
    sa.Column("group_id", sa.String(36), sa.ForeignKey("shared_groups.id", ondelete="CASCADE"), nullable=True,
              index=True),
    sa.Column("locations", sa.JSON, nullable=False),  # the user's (kept up to date from the roster), or the group's
    sa.Column("locations_at", UtcDateTime, nullable=True),  # when a user's locations were read: older events lose
    sa.Column("source", sa.String(20), nullable=False),  # admin | pairing | roster
    sa.Column("assigned_at", UtcDateTime, nullable=False),
    sa.Column("assigned_by", sa.String(200), nullable=False),
    sa.CheckConstraint("(user_id IS NULL) <> (group_id IS NULL)", name="ck_device_assignments_one_owner"),
)
