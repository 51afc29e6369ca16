"""roster tables without foreign keys (the writer keeps them consistent; faster bulk writes)

Revision ID: b3c9d2e41f07
Revises: 67a41508a9ad
Created: 2026-11-26 11:42:00
"""
from alembic import op
import sqlalchemy as sa

revision = 'b3c9d2e41f07'
down_revision = '67a41508a9ad'
branch_labels = None
depends_on = None

# unnamed foreign keys cannot be dropped portably, so each table is rebuilt with its rows
TABLES = {
    "roster_user_locations": (
        [sa.Column("user_key", sa.Integer(), nullable=False),
         sa.Column("location_id", sa.String(length=128), nullable=False),
         sa.PrimaryKeyConstraint("user_key", "location_id")],
        [("ix_roster_user_locations_location_id", ["location_id"])],
    ),
    "roster_memberships": (
        [sa.Column("class_id", sa.String(length=128), nullable=False),
         sa.Column("user_key", sa.Integer(), nullable=False),
         sa.Column("role", sa.String(length=10), nullable=False),
         sa.PrimaryKeyConstraint("class_id", "user_key", "role")],
        [("ix_roster_memberships_user_key", ["user_key"])],
    ),
    "roster_plan_changes": (
        [sa.Column("plan_id", sa.String(length=36), nullable=False),
         sa.Column("seq", sa.Integer(), nullable=False),
         sa.Column("entity", sa.String(length=20), nullable=False),
         sa.Column("action", sa.String(length=10), nullable=False),
         sa.Column("natural_id", sa.String(length=300), nullable=False),
         sa.Column("target", sa.Integer(), nullable=True),
         sa.Column("after", sa.JSON(), nullable=True),
         sa.Column("before", sa.JSON(), nullable=True),
         sa.PrimaryKeyConstraint("plan_id", "seq")],
        [],
    ),
}


def upgrade() -> None:
    for name, (columns, indexes) in TABLES.items():
        names = ", ".join(c.name for c in columns if isinstance(c, sa.Column))
        op.create_table(f"{name}_rebuilt", *columns)
        op.execute(f"INSERT INTO {name}_rebuilt ({names}) SELECT {names} FROM {name}")
        op.drop_table(name)
        op.rename_table(f"{name}_rebuilt", name)
        for index, index_columns in indexes:
            op.create_index(index, name, index_columns, unique=False)


def downgrade() -> None:
    pass  # the foreign keys only repeated what the writer guarantees
