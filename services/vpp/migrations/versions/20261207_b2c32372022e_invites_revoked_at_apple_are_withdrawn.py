"""invites revoked at Apple are withdrawn

Revision ID: b2c32372022e
Revises: e796576a8b4c
Created: 2026-12-07 01:20:00.000000

An invite revoked after Apple registered it kept its ``apple_state`` (``registered``, or
``retiring`` when the roster had deleted its user), so a sync or a notification could bring it
back, or the user's import again queue it. Such invites are ``withdrawn`` now, as one revoked
before Apple registered it: Apple's user is retired either way.
"""
from alembic import op


revision = 'b2c32372022e'
down_revision = 'e796576a8b4c'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE invites SET apple_state = 'withdrawn' "
               "WHERE status = 'revoked' AND apple_state IN ('registered', 'retiring')")


def downgrade() -> None:
    pass  # which withdrawn invites were registered is not kept; 'withdrawn' is right for them either way
