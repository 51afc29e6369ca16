"""Reading a directory into an ``ImportBatch``, refusing results that would empty the roster."""
from __future__ import annotations

from services.directory.domain.mapping import CLASSES, GRADE_LEVELS, USERS, BatchBuilder
from services.directory.domain.ports import DirectoryReader
from services.directory.domain.profile import LdapProfile
from shared.contracts.roster import ImportBatch
from shared.errors import UpstreamError


def profile_source(profile_id: int) -> str:
    """The roster source a profile imports as: its own, so that a sync deletes only what that
    profile imported, never the users of a school's other directory."""
    return f"ldap:{profile_id}"


def read_import_batch(directory: DirectoryReader, profile: LdapProfile) -> ImportBatch:
    """Everything the profile's filters select, mapped to roster records.

    A filter that matches nothing, or users none of which can be mapped, raise
    ``UpstreamError``: an empty batch would plan the deletion of every user.
    """
    builder = BatchBuilder(profile.sync, profile.connection.base_dn)
    sync = profile.sync
    if sync.grade_levels.filter:
        for entry in directory.search(sync.grade_levels.filter, builder.grade_level_attributes()):
            builder.add_grade_level(entry)
        require_matches(builder, GRADE_LEVELS, sync.grade_levels.filter, profile)
    for entry in directory.search(sync.users.filter, builder.user_attributes()):
        builder.add_user(entry)
    require_matches(builder, USERS, sync.users.filter, profile)
    if not builder.users:
        reasons = "; ".join(row.reason for row in builder.rejected[:3])
        raise UpstreamError(f"none of the {builder.entries_seen(USERS)} users the filter matched could be mapped, "
                            f"so nothing was imported. For example: {reasons}")
    if sync.classes.filter:
        for entry in directory.search(sync.classes.filter, builder.class_attributes()):
            builder.add_class(entry)
        require_matches(builder, CLASSES, sync.classes.filter, profile)
    return builder.batch()


def require_matches(builder: BatchBuilder, what: str, ldap_filter: str, profile: LdapProfile) -> None:
    if builder.entries_seen(what) == 0:
        raise UpstreamError(
            f"the {what} filter {ldap_filter} matched nothing under {profile.connection.base_dn}, so nothing was "
            f"imported (an empty result would remove everyone); check the filter, the base DN and that the "
            f"service account may read these entries")
