"""The vpp service's tables, in its own database."""
import sqlalchemy as sa

from shared.storage import UtcDateTime, add_kernel_tables

metadata = sa.MetaData()
add_kernel_tables(metadata)

content_tokens = sa.Table(
    "content_tokens", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("sealed_stoken", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(12), nullable=False),
    sa.Column("org_name", sa.String(200), nullable=False),
    sa.Column("location_uid", sa.String(64), nullable=False),
    sa.Column("location_name", sa.String(200), nullable=False),
    sa.Column("country", sa.String(8), nullable=True),
    sa.Column("default_platform", sa.String(20), nullable=True),  # client/config's store for metadata lookups
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("locations", sa.JSON, nullable=False),  # roster location ids; empty = every location
    sa.Column("allow_teacher_study_apps", sa.Boolean, nullable=False, default=False),
    sa.Column("auto_invite_method", sa.String(20), nullable=True),  # None = no auto-invite
    sa.Column("notification_auth_hash", sa.String(64), nullable=True),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("conflict_with", sa.String(200), nullable=True),  # the other MDM's name while in conflict
    sa.Column("added_by", sa.String(200), nullable=False),
    sa.Column("added_at", UtcDateTime, nullable=False),
    sa.Column("last_sync_at", UtcDateTime, nullable=True),
    sa.Column("sync_attempted_at", UtcDateTime, nullable=True),
    sa.Column("last_sync_error", sa.Text, nullable=True),
    sa.Column("users_version", sa.String(64), nullable=True),
    # registering queued invites failed for the token as a whole (Apple away, or refusing the token without saying it
    # is revoked or expired) this many times in a row: its invites wait until registration_retry_at; the others go on
    sa.Column("registration_attempts", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("registration_retry_at", UtcDateTime, nullable=True),
    sa.UniqueConstraint("location_uid", "location_name", name="uq_content_tokens_location"),
)

assets = sa.Table(
    "assets", metadata,
    sa.Column("token_id", sa.String(36), sa.ForeignKey("content_tokens.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("adam_id", sa.String(40), primary_key=True),
    sa.Column("pricing_param", sa.String(10), primary_key=True),
    sa.Column("product_type", sa.String(10), nullable=False),
    sa.Column("name", sa.String(300), nullable=True),  # from Apple's content metadata lookup, not the asset list
    sa.Column("kind", sa.String(40), nullable=True),
    sa.Column("artwork_url", sa.String(500), nullable=True),
    sa.Column("metadata_at", UtcDateTime, nullable=True),  # when the name was looked up; refreshed when stale
    sa.Column("total_count", sa.Integer, nullable=False),
    sa.Column("assigned_count", sa.Integer, nullable=False),
    sa.Column("available_count", sa.Integer, nullable=False),
    sa.Column("device_assignable", sa.Boolean, nullable=False),
    sa.Column("revocable", sa.Boolean, nullable=False),
    sa.Column("hidden", sa.Boolean, nullable=False, default=False),
    sa.Column("refused_for_licences", sa.Integer, nullable=False, default=0),  # assignments waiting for licences
    sa.Column("synced_at", UtcDateTime, nullable=False),
    # when a licence change here last wrote the asset's licences (the database's clock): a sync that read Apple
    # before then keeps what the change wrote
    sa.Column("licences_changed_at", UtcDateTime, nullable=True),
)

assignments = sa.Table(
    "assignments", metadata,
    sa.Column("token_id", sa.String(36), sa.ForeignKey("content_tokens.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("adam_id", sa.String(40), primary_key=True),
    sa.Column("pricing_param", sa.String(10), primary_key=True),
    sa.Column("holder_kind", sa.String(10), primary_key=True),  # "serial" | "user"
    sa.Column("holder", sa.String(200), primary_key=True),  # a serial number, or a user ID (see renamed_users)
)

invites = sa.Table(
    "invites", metadata,
    sa.Column("token_id", sa.String(36), sa.ForeignKey("content_tokens.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.String(200), primary_key=True),  # the roster's; Apple's clientUserId may differ (renamed_users)
    sa.Column("method", sa.String(20), nullable=False),
    sa.Column("name", sa.String(300), nullable=True),
    sa.Column("email", sa.String(300), nullable=True),
    sa.Column("managed_apple_id", sa.String(300), nullable=True),
    sa.Column("status", sa.String(10), nullable=False),  # pending | accepted | revoked | failed (Apple refused it)
    # where the registration with Apple stands: queued -> registered | failed; retiring -> retired (the roster deleted
    # the user); withdrawn: revoked before Apple registered it
    sa.Column("apple_state", sa.String(12), nullable=False),
    sa.Column("apple_error", sa.Text, nullable=True),
    sa.Column("invite_code", sa.String(100), nullable=True),
    sa.Column("invited_at", UtcDateTime, nullable=False),
    sa.Column("emailed_at", UtcDateTime, nullable=True),
    sa.Column("accepted_at", UtcDateTime, nullable=True),
    # why the invite e-mail did not go out; a refused address is not tried again until the invite is resent,
    # a relay that failed is tried again at mail_retry_at, later after every failure in a row (mail_attempts)
    sa.Column("mail_error", sa.Text, nullable=True),
    sa.Column("mail_refused_at", UtcDateTime, nullable=True),
    sa.Column("mail_attempts", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("mail_retry_at", UtcDateTime, nullable=True),
    sa.Index("ix_invites_user", "user_id"),
    # the registration queue in the order it is worked through, and the e-mails still to send: both are read
    # every second, and must not walk every registered invite to find the few (or none) that are waiting
    sa.Index("ix_invites_queue", "apple_state", "token_id", "invited_at"),
    sa.Index("ix_invites_mail", "method", "apple_state", "emailed_at"),
)

# who the roster told us about, so revoke_unknown can tell strangers from our own users
known_users = sa.Table(
    "known_users", metadata,
    sa.Column("user_id", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(300), nullable=True),
    sa.Column("email", sa.String(300), nullable=True),
    sa.Column("managed_apple_id", sa.String(300), nullable=True),
    sa.Column("locations", sa.JSON, nullable=False),
    # when the roster changed these details: a late, older event does not overwrite newer ones
    sa.Column("changed_at", UtcDateTime, nullable=True),
    # the roster deleted the user, or gave them a new user ID (the row stays, so a late, older event does not bring
    # them back)
    sa.Column("deleted_at", UtcDateTime, nullable=True),
    # the new user ID, when that is how the user went: a late rename to this ID follows them there
    sa.Column("renamed_to", sa.String(200), nullable=True),
)

# users the roster deleted, still to be retired at Apple for this token (their licences revoked first)
user_retirements = sa.Table(
    "user_retirements", metadata,
    sa.Column("token_id", sa.String(36), sa.ForeignKey("content_tokens.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.String(200), primary_key=True),
    sa.Column("requested_at", UtcDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False, index=True),
    sa.Column("last_error", sa.Text, nullable=True),
    # asked for because the roster deleted the user (a newer import calls it off), not because an invite was revoked
    sa.Column("roster_deleted", sa.Boolean, nullable=False, default=True, server_default=sa.true()),
    sa.Index("ix_user_retirements_user", "user_id"),
)

# users the roster gave a new user ID: Apple knows them by the clientUserId they had (registered, or queued to be), which
# cannot change; every other user's clientUserId is their user ID
renamed_users = sa.Table(
    "renamed_users", metadata,
    sa.Column("token_id", sa.String(36), sa.ForeignKey("content_tokens.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.String(200), primary_key=True),
    sa.Column("client_user_id", sa.String(200), nullable=False),
    sa.UniqueConstraint("token_id", "client_user_id", name="uq_renamed_users_client_user_id"),
)

# devices Apple School Manager gave our MDM servers (or that checked in), so revoke_unknown can tell strangers apart
known_devices = sa.Table(
    "known_devices", metadata,
    sa.Column("serial_number", sa.String(64), primary_key=True),
    # when the enrollment service last said the device came or went: a late, older event does not undo a newer one
    sa.Column("changed_at", UtcDateTime, nullable=True),
    sa.Column("removed_at", UtcDateTime, nullable=True),  # removed from our MDM servers (the row stays, as above)
)

apple_events = sa.Table(
    "apple_events", metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("token_id", sa.String(36), sa.ForeignKey("content_tokens.id", ondelete="CASCADE"), nullable=False),
    sa.Column("event_type", sa.String(20), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),  # PENDING | COMPLETE | FAILED
    sa.Column("failures", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("completed_at", UtcDateTime, nullable=True),
)

# Apple's notifications handled, by notificationId: one Apple sends again (our answer did not reach it) changes nothing
# more; kept two weeks
apple_notifications = sa.Table(
    "apple_notifications", metadata,
    sa.Column("token_id", sa.String(36), sa.ForeignKey("content_tokens.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("notification_id", sa.String(200), primary_key=True),
    sa.Column("received_at", UtcDateTime, nullable=False, index=True),
)
