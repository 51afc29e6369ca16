"""The roster service's tables, in its own database."""
import sqlalchemy as sa

from shared.storage import UtcDateTime, add_kernel_tables

metadata = sa.MetaData()
add_kernel_tables(metadata)

# one row; its version changes with every apply, so a stale plan is refused
state = sa.Table(
    "roster_state", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

locations = sa.Table(
    "roster_locations", metadata,
    sa.Column("location_id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("source", sa.String(20), nullable=False),
)

grade_levels = sa.Table(
    "roster_grade_levels", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("location_id", sa.String(128), nullable=True, index=True),
    sa.Column("source", sa.String(20), nullable=False),
)

users = sa.Table(
    "roster_users", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # survives a new user ID
    sa.Column("user_id", sa.String(128), nullable=False, unique=True),
    sa.Column("user_type", sa.String(10), nullable=False),
    sa.Column("first_name", sa.String(255)),
    sa.Column("last_name", sa.String(255)),
    sa.Column("name", sa.String(255)),
    sa.Column("email", sa.String(255)),
    sa.Column("managed_apple_id", sa.String(255)),
    sa.Column("grade_level", sa.String(255)),
    sa.Column("serial_numbers", sa.Text),  # comma-separated; serial numbers hold no commas
    sa.Column("source", sa.String(20), nullable=False),
    # the person's own identifier in the source (Apple School Manager's unique_identifier), which
    # names the user when Apple's field chosen as user ID is empty or changes; one user per person
    sa.Column("source_identifier", sa.String(255), index=True, unique=True),
)

# No foreign keys below: the writer removes memberships, locations and plan changes
# together with what they belong to, and PostgreSQL's per-row foreign-key triggers
# doubled the time of a 200,000-membership import.

# a user's locations (usually one), also what lists are filtered by
user_locations = sa.Table(
    "roster_user_locations", metadata,
    sa.Column("user_key", sa.Integer, primary_key=True),
    sa.Column("location_id", sa.String(128), primary_key=True, index=True),
)

classes = sa.Table(
    "roster_classes", metadata,
    sa.Column("class_id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("location_id", sa.String(128), nullable=False, index=True),
    sa.Column("course_name", sa.String(255)),
    sa.Column("room", sa.String(255)),
    sa.Column("source", sa.String(20), nullable=False),
)

memberships = sa.Table(
    "roster_memberships", metadata,
    sa.Column("class_id", sa.String(128), primary_key=True),
    sa.Column("user_key", sa.Integer, primary_key=True, index=True),
    sa.Column("role", sa.String(10), primary_key=True),
    # order within the role: a class's first teacher is its primary one (the API's idteacher)
    sa.Column("position", sa.Integer, nullable=False, server_default="0"),
)

# a preview; also the record of an import run (status previewed, applied or expired)
plans = sa.Table(
    "roster_plans", metadata,
    sa.Column("plan_id", sa.String(36), primary_key=True),
    sa.Column("source", sa.String(20), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.Column("actor_id", sa.String(200), nullable=False),
    sa.Column("origin", sa.String(200)),  # a file name, a server token, an API token
    sa.Column("created_at", UtcDateTime, nullable=False, index=True),
    sa.Column("applied_at", UtcDateTime),
    sa.Column("outcome_detail", sa.Text),
)

plan_changes = sa.Table(
    "roster_plan_changes", metadata,
    sa.Column("plan_id", sa.String(36), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("entity", sa.String(20), nullable=False),
    sa.Column("action", sa.String(10), nullable=False),
    sa.Column("natural_id", sa.String(300), nullable=False),
    sa.Column("target", sa.Integer),
    sa.Column("after", sa.JSON),
    sa.Column("before", sa.JSON),
)

# welcome e-mails an apply asked for, sent by a job after the commit; kept once sent, as the user's record of it
welcome_mails = sa.Table(
    "roster_welcome_mails", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(128), nullable=False, index=True),
    sa.Column("to", sa.String(255), nullable=False),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("queued_at", UtcDateTime, nullable=False),
    sa.Column("sent_at", UtcDateTime),
    sa.Column("refused_at", UtcDateTime),  # the relay refused the address for good: not tried again
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retry_at", UtcDateTime),
    sa.Column("error", sa.Text),
    # the sending job's question every 2 s, on a table that keeps every mail sent
    sa.Index("ix_roster_welcome_mails_due", "sent_at", "refused_at", "retry_at"),
)

api_tokens = sa.Table(
    "roster_api_tokens", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),  # SHA-256; never the token
    sa.Column("allowed_ips", sa.JSON),  # None: open; else addresses and CIDR networks
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime),
    sa.Column("last_used_at", UtcDateTime),
)

asm_preferences = sa.Table(
    "roster_asm_preferences", metadata,
    sa.Column("token_id", sa.String(100), primary_key=True),
    sa.Column("preferences", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("last_sync_at", UtcDateTime),  # the last run, whether it worked or failed
    sa.Column("last_sync_outcome", sa.Text),
    # failed runs in a row, since the last one that worked
    sa.Column("failed_syncs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retry_at", UtcDateTime),  # after a failed run: when it is tried again
)
