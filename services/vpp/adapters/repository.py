"""Reading and writing the vpp tables; every method works inside the caller's session."""
from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.vpp.adapters import tables as t
from services.vpp.domain.apple_users import AppleUserIds
from services.vpp.domain.invites import AutoInvitePolicy, InviteMethod, InviteStatus
from services.vpp.domain.licences import Asset, Assignment, ProductType
from shared.backoff import doubling_delay
from shared.errors import NotFound
from shared.storage import database_now

HOLDER_KINDS = {"serial": "serial_number", "user": "client_user_id"}
# what an invite queued again starts from: no code, no mail sent or refused, no error
FRESH_INVITE = {"apple_error": None, "invite_code": None, "emailed_at": None, "accepted_at": None, "mail_error": None,
                "mail_refused_at": None, "mail_attempts": 0, "mail_retry_at": None}


def _insert(session: Session, table: sa.Table) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _insert_many(session: Session, statement: Any, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """An INSERT … ON CONFLICT of many rows, sent as one statement per 1,000 rows; the primary keys of the
    rows it wrote (not those a conflict left alone).

    SQLAlchemy folds a many-row INSERT into one statement ("insertmanyvalues"), but an ON CONFLICT
    one only when it has RETURNING: without it psycopg2 sends a statement per row, and under load those
    round trips made a batch of 200 imported users take seconds instead of milliseconds.
    """
    if not rows:
        return []
    return list(session.execute(statement.returning(*statement.table.primary_key.columns), list(rows)))


def _queued_again(invited_again: bool) -> sa.ColumnElement[bool]:
    """Which stored invites a new one replaces: its user's, retired at Apple (deleted from the roster, imported
    again), or, ``invited_again``, one revoked or failed."""
    c = t.invites.c
    queued_again = c.apple_state == "retired"
    if invited_again:
        # no IN (…) here: an expanding list cannot go into a many-row statement
        queued_again = queued_again | (c.status == InviteStatus.REVOKED.value) | (c.status == InviteStatus.FAILED.value)
    return queued_again


def _other_assets(c: Any, keep: Collection[tuple[str, str]]) -> list[sa.ColumnElement[bool]]:
    """A condition leaving out the rows (of ``assets`` or ``assignments``) of the assets ``keep`` names."""
    return [sa.not_(sa.and_(c.adam_id == adam_id, c.pricing_param == pricing_param)) for adam_id, pricing_param in sorted(keep)]


def asset_from_row(row: Any) -> Asset:
    return Asset(row.adam_id, row.pricing_param, ProductType(row.product_type), row.total_count, row.assigned_count,
                 row.available_count, row.device_assignable, row.revocable, row.hidden, row.name)


def assignment_from_row(row: Any) -> Assignment:
    if row.holder_kind == "serial":
        return Assignment(row.adam_id, row.pricing_param, serial_number=row.holder)
    return Assignment(row.adam_id, row.pricing_param, client_user_id=row.holder)


@dataclass(frozen=True)
class FollowedUserId:
    """Where a renamed user's rows went."""

    user_id: str | None  # the ID the user has now; None: the roster deleted them since, and the old ID is retired
    kept: list[str]  # tokens where that ID has rows of its own (another Apple user): the old ID's rows stay there


class VppRepository:
    def __init__(self, session: Session):
        self.session = session

    # --- content tokens ---------------------------------------------------------------------
    def token(self, token_id: Any) -> Any:
        if not isinstance(token_id, str):
            raise NotFound("Name the content token by its id (text); `orchard vpp token list` shows them.")
        row = self.session.execute(sa.select(t.content_tokens).where(t.content_tokens.c.id == token_id)).first()
        if row is None:
            raise NotFound(f"There is no content token {token_id!r}; `orchard vpp token list` shows the ones there are.")
        return row

    def tokens(self) -> list[Any]:
        return list(self.session.execute(sa.select(t.content_tokens).order_by(t.content_tokens.c.name)))

    def token_for_location(self, location_uid: str) -> Any:
        """The token of Apple's location ``uId`` (its name may have changed in Apple School Manager since)."""
        c = t.content_tokens.c
        return self.session.execute(sa.select(t.content_tokens).where(c.location_uid == location_uid)).first()

    def add_token(self, values: dict[str, Any]) -> None:
        self.session.execute(t.content_tokens.insert().values(**values))

    def update_token(self, token_id: str, **values: Any) -> None:
        self.session.execute(t.content_tokens.update().where(t.content_tokens.c.id == token_id).values(**values))

    def delete_token(self, token_id: str) -> None:
        # the assets first, the order a sync and a retirement lock rows in: a deletion meeting either waits for it
        for table in (t.assets, t.assignments, t.user_retirements, t.invites, t.renamed_users, t.apple_events,
                      t.apple_notifications):
            self.session.execute(table.delete().where(table.c.token_id == token_id))
        self.session.execute(t.content_tokens.delete().where(t.content_tokens.c.id == token_id))

    def tokens_due_for_sync(self, attempted_before: datetime, failed_before: datetime) -> list[str]:
        """Tokens whose last sync began before ``attempted_before``, or failed and began before ``failed_before``."""
        c = t.content_tokens.c
        query = sa.select(c.id).where(c.revoked.is_(False), sa.or_(
            c.sync_attempted_at.is_(None), c.sync_attempted_at < attempted_before,
            sa.and_(c.last_sync_error.is_not(None), c.sync_attempted_at < failed_before)))
        return list(self.session.execute(query.order_by(c.sync_attempted_at)).scalars())

    def auto_invite_policies(self) -> list[AutoInvitePolicy]:
        c = t.content_tokens.c
        rows = self.session.execute(
            sa.select(c.id, c.auto_invite_method, c.locations)
            .where(c.auto_invite_method.is_not(None), c.revoked.is_(False), c.conflict_with.is_(None)))
        return [AutoInvitePolicy(r.id, True, InviteMethod(r.auto_invite_method), tuple(r.locations or ())) for r in rows]

    # --- assets and assignments -------------------------------------------------------------
    def licences_changed_since(self, token_id: str, since: datetime) -> set[tuple[str, str]]:
        """The token's assets (adamId, pricing) whose licences a change here wrote at ``since`` or later (the
        database's clock, ``database_time``), every asset of the token locked until the transaction ends: a change
        still being written is waited for and none starts (each locks its asset first, ``apply_licence_change``),
        so a sync's write that follows neither overwrites a change nor collides with one."""
        c = t.assets.c
        rows = self.session.execute(sa.select(c.adam_id, c.pricing_param, c.licences_changed_at)
                                    .where(c.token_id == token_id).order_by(c.adam_id, c.pricing_param).with_for_update())
        return {(r.adam_id, r.pricing_param) for r in rows if r.licences_changed_at and r.licences_changed_at >= since}

    def database_time(self) -> datetime:
        """Now by the database's clock, which replicas share (``licences_changed_since``)."""
        return self.session.execute(sa.select(database_now(self.session.get_bind().dialect.name))).scalar_one()

    def replace_assets(self, token_id: str, fresh: Sequence[dict[str, Any]], now: datetime,
                       keep: Collection[tuple[str, str]] = ()) -> None:
        """Store Apple's asset list, keeping what only Orchard knows (hidden, names, waiting assignments), and the
        assets ``keep`` names as they are (their licences changed here since Apple's list was read)."""
        c = t.assets.c
        kept = {(r.adam_id, r.pricing_param): r for r in self.session.execute(
            sa.select(c.adam_id, c.pricing_param, c.hidden, c.name, c.kind, c.artwork_url, c.metadata_at, c.refused_for_licences)
            .where(c.token_id == token_id))}
        self.session.execute(t.assets.delete().where(c.token_id == token_id, *_other_assets(c, keep)))
        rows = []
        for a in fresh:
            key = (str(a["adamId"]), a.get("pricingParam", "STDQ"))
            if key in keep:
                continue
            old = kept.get(key)
            rows.append({
                "token_id": token_id, "adam_id": key[0], "pricing_param": key[1],
                "product_type": a.get("productType", "App"), "name": old.name if old else None,
                "kind": old.kind if old else None, "artwork_url": old.artwork_url if old else None,
                "metadata_at": old.metadata_at if old else None,
                "total_count": int(a.get("totalCount", 0)), "assigned_count": int(a.get("assignedCount", 0)),
                "available_count": int(a.get("availableCount", 0)),
                "device_assignable": bool(a.get("deviceAssignable", False)), "revocable": bool(a.get("revocable", False)),
                "hidden": bool(old.hidden) if old else False,
                # assignments still wait for licences only while none is available
                "refused_for_licences": old.refused_for_licences if old and int(a.get("availableCount", 0)) == 0 else 0,
                "synced_at": now,
            })
        if rows:
            self.session.execute(t.assets.insert(), rows)

    def assets_needing_names(self, token_id: str, adam_ids: Iterable[str], looked_up_before: datetime) -> list[str]:
        """Those of ``adam_ids`` without a name here, or whose name was looked up before ``looked_up_before``."""
        c = t.assets.c
        fresh = set(self.session.execute(sa.select(c.adam_id).where(
            c.token_id == token_id, c.name.is_not(None), c.metadata_at >= looked_up_before)).scalars())
        return [adam_id for adam_id in dict.fromkeys(adam_ids) if adam_id not in fresh]

    def store_asset_metadata(self, token_id: str, found: Iterable[Any], now: datetime) -> None:
        """Names, kinds and artwork from the store lookup (``AssetMetadata``), for every pricing of each asset."""
        c = t.assets.c
        rows = [{"aid": m.adam_id, "new_name": m.name, "new_kind": m.kind, "artwork": m.artwork_url} for m in found]
        if rows:
            self.session.execute(
                t.assets.update().where(c.token_id == token_id, c.adam_id == sa.bindparam("aid"))
                .values(name=sa.bindparam("new_name"), kind=sa.bindparam("new_kind"), artwork_url=sa.bindparam("artwork"),
                        metadata_at=now), rows)

    def assets(self, token_id: str, product_type: str | None = None, include_hidden: bool = False) -> list[Any]:
        c = t.assets.c
        query = sa.select(t.assets).where(c.token_id == token_id)
        if product_type:
            query = query.where(c.product_type == product_type)
        if not include_hidden:
            query = query.where(c.hidden.is_(False))
        return list(self.session.execute(query.order_by(c.product_type, c.adam_id, c.pricing_param)))

    def asset(self, token_id: str, adam_id: Any) -> Any:
        """The asset with this adamId; with two pricing params, the one with more licences free."""
        if not isinstance(adam_id, str) or not adam_id.strip():
            raise NotFound("Name the asset by its adamId (text).")
        c = t.assets.c
        query = (sa.select(t.assets).where(c.token_id == token_id, c.adam_id == adam_id.strip())
                 .order_by(c.available_count.desc()))
        row = self.session.execute(query).first()
        if row is None:
            raise NotFound(f"This content token has no app or book with adamId {adam_id!r}; "
                           f"if it was bought recently, sync first: `orchard vpp sync {token_id}` (or the sync_assets RPC).")
        return row

    def set_hidden(self, token_id: str, adam_id: str, hidden: bool) -> None:
        self.session.execute(t.assets.update().where(t.assets.c.token_id == token_id, t.assets.c.adam_id == adam_id)
                             .values(hidden=hidden))

    def count_refusal(self, token_id: str, asset: Asset, count: int) -> None:
        c = t.assets.c
        self.session.execute(
            t.assets.update().where(c.token_id == token_id, c.adam_id == asset.adam_id, c.pricing_param == asset.pricing_param)
            .values(refused_for_licences=c.refused_for_licences + count))

    def adjust_asset_count(self, token_id: str, adam_id: str, pricing_param: str, delta: int) -> None:
        c = t.assets.c
        self.session.execute(t.assets.update().where(c.token_id == token_id, c.adam_id == adam_id, c.pricing_param == pricing_param)
                             .values(total_count=c.total_count + delta, available_count=c.available_count + delta,
                                     licences_changed_at=database_now(self.session.get_bind().dialect.name)))

    def replace_assignments(self, token_id: str, fresh: Iterable[dict[str, Any]], keep: Collection[tuple[str, str]] = ()) -> int:
        """Store Apple's assignments, users by their user ID; those of the assets ``keep`` names stay as they are."""
        ids = self.apple_user_ids(token_id)
        c = t.assignments.c
        self.session.execute(t.assignments.delete().where(c.token_id == token_id, *_other_assets(c, keep)))
        rows = {}
        for a in fresh:
            kind, holder = ("serial", a["serialNumber"]) if a.get("serialNumber") else ("user", a.get("clientUserId"))
            if kind == "user" and holder:
                holder = ids.user_id(holder)
            if holder and (str(a["adamId"]), a.get("pricingParam", "STDQ")) not in keep:
                key = (str(a["adamId"]), a.get("pricingParam", "STDQ"), kind, holder)
                rows[key] = dict(zip(("adam_id", "pricing_param", "holder_kind", "holder"), key), token_id=token_id)
        batch = list(rows.values())
        for start in range(0, len(batch), 1000):
            self.session.execute(t.assignments.insert(), batch[start:start + 1000])
        return len(batch)

    def holders(self, token_id: str, asset: Asset) -> list[Assignment]:
        c = t.assignments.c
        rows = self.session.execute(sa.select(t.assignments).where(
            c.token_id == token_id, c.adam_id == asset.adam_id, c.pricing_param == asset.pricing_param))
        return [assignment_from_row(r) for r in rows]

    def all_assignments(self, token_id: str) -> list[Assignment]:
        rows = self.session.execute(sa.select(t.assignments).where(t.assignments.c.token_id == token_id))
        return [assignment_from_row(r) for r in rows]

    def assets_by_key(self, token_id: str) -> dict[tuple[str, str], Asset]:
        return {(a.adam_id, a.pricing_param): a for a in map(asset_from_row, self.assets(token_id, include_hidden=True))}

    def apply_licence_change(self, token_id: str, asset: Asset, serials: Iterable[str], users: Iterable[str], *, added: bool) -> None:
        """Reflect a completed Apple event locally, so counts are right before the next sync."""
        rows = [{"token_id": token_id, "adam_id": asset.adam_id, "pricing_param": asset.pricing_param,
                 "holder_kind": kind, "holder": holder}
                for kind, holders in (("serial", serials), ("user", users)) for holder in holders]
        if not rows:
            return
        a = t.assets.c
        # the asset first: a sync writing this token's listing meanwhile is waited for, and one that read Apple
        # before this change keeps it (``licences_changed_since``)
        self.session.execute(
            t.assets.update().where(a.token_id == token_id, a.adam_id == asset.adam_id, a.pricing_param == asset.pricing_param)
            .values(licences_changed_at=database_now(self.session.get_bind().dialect.name)))
        c = t.assignments.c
        if added:
            _insert_many(self.session, _insert(self.session, t.assignments).on_conflict_do_nothing(), rows)
        else:
            for row in rows:
                self.session.execute(t.assignments.delete().where(
                    c.token_id == token_id, c.adam_id == asset.adam_id, c.pricing_param == asset.pricing_param,
                    c.holder_kind == row["holder_kind"], c.holder == row["holder"]))
        held = self.session.execute(sa.select(sa.func.count()).select_from(t.assignments).where(
            c.token_id == token_id, c.adam_id == asset.adam_id, c.pricing_param == asset.pricing_param)).scalar_one()
        self.session.execute(
            t.assets.update().where(a.token_id == token_id, a.adam_id == asset.adam_id, a.pricing_param == asset.pricing_param)
            .values(assigned_count=held, available_count=a.total_count - held))

    # --- what Orchard knows -----------------------------------------------------------------
    def remember_users(self, users: Sequence[dict[str, Any]]) -> None:
        """Store imported users' details; an import newer than a deletion brings the user back, calling off the
        retirement the deletion asked for if it has not run yet."""
        if users:
            columns = ("name", "email", "managed_apple_id", "locations", "changed_at", "deleted_at", "renamed_to")
            written = self._write_newer(t.known_users, columns, [{**u, "deleted_at": None, "renamed_to": None} for u in users])
            self._call_off_retirements([key.user_id for key in written])

    def _write_newer(self, table: sa.Table, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[Any]:
        """Insert the rows, or write ``columns`` over a stored row whose ``changed_at`` is not newer: a late, older
        event changes nothing. The primary keys of the rows written."""
        insert = _insert(self.session, table)
        stored = table.c.changed_at
        return _insert_many(self.session, insert.on_conflict_do_update(
            index_elements=list(table.primary_key.columns), set_={k: insert.excluded[k] for k in columns},
            where=stored.is_(None) | (stored <= insert.excluded.changed_at)), rows)

    def _call_off_retirements(self, user_ids: Sequence[str]) -> None:
        """These users are in the roster again: the retirements their deletion asked for are called off, and their
        invites that were to be retired wait for Apple again. (Written after the user's row, which a deletion handled
        at the same time writes too: on PostgreSQL the one waits for the other, and whichever is newer wins.)"""
        r, c = t.user_retirements.c, t.invites.c
        for start in range(0, len(user_ids), 500):
            called_off = self.session.execute(t.user_retirements.delete().where(
                r.user_id.in_(user_ids[start:start + 500]), r.roster_deleted.is_(True)).returning(r.token_id, r.user_id))
            for token_id, user_id in called_off.all():
                self.session.execute(t.invites.update().where(c.token_id == token_id, c.user_id == user_id,
                                                              c.apple_state == "retiring").values(apple_state="queued"))

    def call_off_revocations(self, token_id: str, user_ids: Sequence[str]) -> None:
        """Apple registered these users' new invites with this token: the retirements a revoked invite of theirs
        still asked for (Apple registered it while it was withdrawn) are called off, or they would retire the new
        registration. Those a deletion from the roster asked for are left: only the roster's import calls them off."""
        r = t.user_retirements.c
        ids = list(user_ids)
        for start in range(0, len(ids), 500):
            self.session.execute(t.user_retirements.delete().where(
                r.token_id == token_id, r.user_id.in_(ids[start:start + 500]), r.roster_deleted.is_(False)))

    def superseded_users(self, occurred: dict[str, datetime]) -> set[str]:
        """Users whose stored details are newer than the import that ``occurred`` (a later import, or a deletion)."""
        c = t.known_users.c
        rows = self.session.execute(
            sa.select(c.user_id, c.changed_at, c.deleted_at).where(c.user_id.in_(list(occurred))))
        return {r.user_id for r in rows
                if r.deleted_at is not None or (r.changed_at is not None and r.changed_at > occurred[r.user_id])}

    def forget_user(self, user_id: str, deleted_at: datetime, renamed_to: str | None = None) -> bool:
        """Mark the user deleted by the roster, or ``renamed_to`` a new user ID; False when a newer import of the user
        was handled already.

        One statement: on PostgreSQL a newer import still being written is waited for, then seen."""
        c = t.known_users.c
        insert = _insert(self.session, t.known_users)
        gone = {"changed_at": deleted_at, "deleted_at": deleted_at, "renamed_to": renamed_to}
        forgotten = self.session.execute(
            insert.values(user_id=user_id, locations=[], **gone)
            .on_conflict_do_update(index_elements=[c.user_id], set_=gone,
                                   where=c.changed_at.is_(None) | (c.changed_at <= deleted_at))
            .returning(c.user_id))
        return forgotten.first() is not None

    def current_user_id(self, user_id: str, since: datetime) -> str | None:
        """The user ID the user has now, following the new IDs the roster gave them after ``since``; None when the
        roster deleted them after ``since``."""
        c = t.known_users.c
        seen = set()
        while user_id not in seen:  # a user renamed back and forth leads round in a circle: stop where it closes
            seen.add(user_id)
            row = self.session.execute(
                sa.select(c.deleted_at, c.renamed_to).where(c.user_id == user_id)).first()
            if row is None or row.deleted_at is None or row.deleted_at <= since:
                return user_id
            if row.renamed_to is None:
                return None
            user_id, since = row.renamed_to, row.deleted_at
        return user_id

    def remember_devices(self, serial_numbers: Iterable[str], occurred: datetime) -> None:
        self._device_change(serial_numbers, occurred, removed=False)

    def forget_devices(self, serial_numbers: Iterable[str], occurred: datetime) -> None:
        """Apple School Manager removed the devices from our MDM servers: ``revoke_unknown`` counts them as
        strangers."""
        self._device_change(serial_numbers, occurred, removed=True)

    def _device_change(self, serial_numbers: Iterable[str], occurred: datetime, *, removed: bool) -> None:
        """Record a device's arrival or removal, unless a newer change of it was recorded already (events from two
        queues arrive in any order, and a refetch announces a device again)."""
        rows = [{"serial_number": s, "changed_at": occurred, "removed_at": occurred if removed else None}
                for s in set(serial_numbers) if s]
        if rows:
            self._write_newer(t.known_devices, ("changed_at", "removed_at"), rows)

    def known_users(self, user_ids: Iterable[str]) -> dict[str, Any]:
        ids = list(user_ids)
        c = t.known_users.c
        rows = self.session.execute(sa.select(t.known_users).where(c.user_id.in_(ids), c.deleted_at.is_(None)))
        return {r.user_id: r for r in rows}

    def user_locations(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        """The roster locations of these users, as the roster last told us."""
        c = t.known_users.c
        return {user_id: list(locations or []) for user_id, locations in self.session.execute(
            sa.select(c.user_id, c.locations).where(c.user_id.in_(list(user_ids))))} if user_ids else {}

    def known_holders(self) -> tuple[set[str], set[str]]:
        d = t.known_devices.c
        serials = set(self.session.execute(sa.select(d.serial_number).where(d.removed_at.is_(None))).scalars())
        c = t.known_users.c
        users = set(self.session.execute(sa.select(c.user_id).where(c.deleted_at.is_(None))).scalars())
        return serials, users

    # --- invites ----------------------------------------------------------------------------
    def invited_pairs(self, user_ids: Sequence[str]) -> set[tuple[str, str]]:
        """(token id, user id) of the invites these users already have, apart from those retired at Apple."""
        c = t.invites.c
        return {(r.token_id, r.user_id) for r in self.session.execute(
            sa.select(c.token_id, c.user_id).where(c.user_id.in_(list(user_ids)), c.apple_state != "retired"))}

    def queue_invites(self, rows: Sequence[dict[str, Any]], *, invited_again: bool = False) -> set[str]:
        """Add invites to be registered with Apple; an invite that exists already is left as it is, unless Apple
        retired its user (deleted from the roster, now imported again) or, ``invited_again``, it was revoked or
        failed: that one is queued again with the details given (the roster's current address, say). The users
        queued: not those another transaction queued first."""
        insert = _insert(self.session, t.invites)
        c = t.invites.c
        again = ("method", "name", "email", "managed_apple_id", "status", "apple_state", "invited_at")
        return {key.user_id for key in _insert_many(self.session, insert.on_conflict_do_update(
            index_elements=[c.token_id, c.user_id], set_={**{k: insert.excluded[k] for k in again}, **FRESH_INVITE},
            where=_queued_again(invited_again)), rows)}

    def invited_user_locations(self, token_id: str) -> dict[str, list[str]]:
        """The roster locations of the token's invited users, as the roster last told us."""
        c, k = t.invites.c, t.known_users.c
        return {user_id: list(locations or []) for user_id, locations in self.session.execute(
            sa.select(c.user_id, k.locations).join_from(t.invites, t.known_users, k.user_id == c.user_id)
            .where(c.token_id == token_id))}

    def invitable(self, token_id: str, user_ids: Sequence[str]) -> list[str]:
        """Those of ``user_ids`` whose invite ``queue_invites(..., invited_again=True)`` would queue now."""
        c = t.invites.c
        staying = set(self.session.execute(sa.select(c.user_id).where(
            c.token_id == token_id, c.user_id.in_(list(user_ids)), ~_queued_again(True))).scalars())
        return [user_id for user_id in user_ids if user_id not in staying]

    def requeue_failed_invites(self, token_id: str, now: datetime) -> int:
        """Queue the token's failed invites again (a renewed token registers what the old one could not)."""
        c = t.invites.c
        return self.session.execute(t.invites.update().where(
            c.token_id == token_id, c.status == InviteStatus.FAILED.value).values(
            status=InviteStatus.PENDING.value, apple_state="queued", invited_at=now, **FRESH_INVITE)).rowcount

    def withdraw_invites(self, token_id: str, user_ids: Sequence[str]) -> set[str]:
        """Revoke invites Apple never registered (queued or failed): the registration job no longer picks them.
        The users withdrawn (not those Apple registered meanwhile)."""
        c = t.invites.c
        return set(self.session.execute(t.invites.update().where(
            c.token_id == token_id, c.user_id.in_(list(user_ids)), c.apple_state.in_(["queued", "failed"]))
            .values(status=InviteStatus.REVOKED.value, apple_state="withdrawn").returning(c.user_id)).scalars())

    def invites(self, token_id: str, status: str | None = None, user_ids: Sequence[str] | None = None) -> list[Any]:
        c = t.invites.c
        query = sa.select(t.invites).where(c.token_id == token_id)
        if status:
            query = query.where(c.status == status)
        if user_ids is not None:
            query = query.where(c.user_id.in_(list(user_ids)))
        return list(self.session.execute(query.order_by(c.user_id)))

    def queued_invites(self, limit: int, now: datetime) -> list[Any]:
        """The invites waiting to be registered with Apple, each a mapping (as the invites ``invite_users`` queues),
        apart from those of tokens waiting to try again (``registration_failed``)."""
        c, k = t.invites.c, t.content_tokens.c
        query = (sa.select(c.token_id, c.user_id, c.email, c.managed_apple_id, c.method)
                 .join_from(t.invites, t.content_tokens, k.id == c.token_id)
                 .where(c.apple_state == "queued", k.registration_retry_at.is_(None) | (k.registration_retry_at <= now)))
        return list(self.session.execute(query.order_by(c.token_id, c.invited_at).limit(limit)).mappings())

    def registration_failed(self, token: Any, user_ids: Sequence[str], error: str, now: datetime) -> datetime:
        """Registering the token's queued invites failed for the token itself: they stay queued, saying why, and the
        token's are tried again later, waiting longer after every failure in a row (30 s doubling, at most an hour).
        When they are tried again."""
        retry_at = now + doubling_delay(token.registration_attempts)
        self.update_token(token.id, registration_attempts=token.registration_attempts + 1, registration_retry_at=retry_at)
        c = t.invites.c
        for start in range(0, len(user_ids), 500):
            self.session.execute(t.invites.update().where(
                c.token_id == token.id, c.user_id.in_(user_ids[start:start + 500]), c.apple_state == "queued")
                .values(apple_error=f"{error[:400]} Tried again at {retry_at:%Y-%m-%d %H:%M:%S} UTC."))
        return retry_at

    def mark_registered(self, token_id: str, user_ids: Sequence[str]) -> list[str]:
        """Record that Apple registered these users; those whose invite stopped waiting meanwhile (the roster deleted
        them and their retirement was asked for, perhaps done) are returned, to be retired again."""
        c = t.invites.c
        ids, registered = list(user_ids), set()
        for start in range(0, len(ids), 500):
            registered.update(self.session.execute(
                t.invites.update().where(c.token_id == token_id, c.user_id.in_(ids[start:start + 500]),
                                         c.apple_state == "queued")
                .values(apple_state="registered", apple_error=None).returning(c.user_id)).scalars())
        return [user_id for user_id in ids if user_id not in registered]

    def mark_failed(self, token_id: str, user_ids: Sequence[str], reason: str) -> None:
        """Apple did not register these users; an invite withdrawn (or retiring) meanwhile is left as it is."""
        c = t.invites.c
        ids = list(user_ids)
        for start in range(0, len(ids), 500):
            self.session.execute(t.invites.update().where(
                c.token_id == token_id, c.user_id.in_(ids[start:start + 500]), c.apple_state == "queued")
                .values(status=InviteStatus.FAILED.value, apple_state="failed", apple_error=reason[:500]))

    def mark_invites(self, token_id: str, user_ids: Sequence[str], **values: Any) -> None:
        c = t.invites.c
        ids = list(user_ids)
        for start in range(0, len(ids), 500):
            self.session.execute(t.invites.update().where(c.token_id == token_id, c.user_id.in_(ids[start:start + 500]))
                                 .values(**values))

    def apply_apple_users(self, token_id: str, users: Iterable[dict[str, Any]], now: datetime) -> None:
        """Bring invites in line with Apple's users (named by clientUserId): invite codes, accepted, retired.

        Only invites Apple holds Orchard's registration for follow it. One queued again, retiring or retired is
        Orchard's to change, and what Apple listed for it may predate that (a listing read before a retirement
        finished, or an earlier registration's "Retired" for a user imported again).
        """
        c = t.invites.c
        apple_ids = self.apple_user_ids(token_id)
        by_user = {apple_ids.user_id(u["clientUserId"]): u for u in users if u.get("clientUserId")}
        ids = list(by_user)
        current = {}
        # checked again as each row is written: a retirement may finish between the read and the write
        follows_apple = sa.and_(c.token_id == token_id, c.apple_state == "registered")
        for start in range(0, len(ids), 1000):
            current.update((r.user_id, r) for r in self.session.execute(
                sa.select(c.user_id, c.status, c.invite_code, c.accepted_at)
                .where(follows_apple, c.user_id.in_(ids[start:start + 1000]))))
        changes = []
        for user_id, user in by_user.items():
            row = current.get(user_id)
            if row is None:
                continue
            status = InviteStatus.from_apple_user_status(user.get("status", ""))
            accepted_at = now if status is InviteStatus.ACCEPTED and row.accepted_at is None else row.accepted_at
            code = user.get("inviteCode") or row.invite_code
            if (status.value, code, accepted_at) != (row.status, row.invite_code, row.accepted_at):
                changes.append({"uid": row.user_id, "new_status": status.value, "code": code, "accepted": accepted_at})
        if not changes:
            return
        if self.session.get_bind().dialect.name != "postgresql":  # SQLite runs an executemany in-process
            self.session.execute(
                t.invites.update().where(follows_apple, c.user_id == sa.bindparam("uid"))
                .values(status=sa.bindparam("new_status"), invite_code=sa.bindparam("code"), accepted_at=sa.bindparam("accepted")),
                changes)
            return
        # psycopg2 sends an executemany as a statement per row: after an import that is tens of thousands of round
        # trips, holding the updated invites locked all along (registration waits on them); one UPDATE … FROM VALUES
        # per 1,000 invites instead
        for start in range(0, len(changes), 1000):
            changed = sa.values(sa.column("uid", sa.String), sa.column("new_status", sa.String), sa.column("code", sa.String),
                                sa.column("accepted", c.accepted_at.type), name="changed").data(
                [(ch["uid"], ch["new_status"], ch["code"], ch["accepted"]) for ch in changes[start:start + 1000]])
            self.session.execute(t.invites.update().where(follows_apple, c.user_id == changed.c.uid).values(
                status=changed.c.new_status, invite_code=sa.cast(changed.c.code, c.invite_code.type),
                accepted_at=sa.cast(changed.c.accepted, c.accepted_at.type)))

    def invites_missing_codes(self, token_id: str) -> bool:
        """Are there registered, pending invites whose invite code was not read from Apple yet?"""
        c = t.invites.c
        return self.session.execute(sa.select(c.user_id).where(
            c.token_id == token_id, c.apple_state == "registered", c.status == InviteStatus.PENDING.value,
            c.invite_code.is_(None)).limit(1)).first() is not None

    def invites_to_email(self, now: datetime, token_id: str | None = None, user_ids: Sequence[str] | None = None,
                         limit: int = 200) -> list[Any]:
        """Registered e-mail invites not mailed yet (of this token and these users only, if given), apart from
        refused addresses and those waiting for a retry."""
        c = t.invites.c
        query = sa.select(t.invites).where(
            c.method == InviteMethod.EMAIL.value, c.apple_state == "registered", c.status == InviteStatus.PENDING.value,
            c.invite_code.is_not(None), c.emailed_at.is_(None), c.email.is_not(None), c.mail_refused_at.is_(None),
            c.mail_retry_at.is_(None) | (c.mail_retry_at <= now))
        if token_id is not None:
            query = query.where(c.token_id == token_id)
        if user_ids is not None:
            query = query.where(c.user_id.in_(list(user_ids)))
        return list(self.session.execute(query.limit(limit)))

    def mail_round(self, invites: Sequence[Any], until: datetime) -> None:
        """These invites are being mailed: ``invites_to_email`` leaves them out until ``until``, when a round that
        never recorded its outcome (its process died) is taken up again."""
        by_token: dict[str, list[str]] = {}
        for invite in invites:
            by_token.setdefault(invite.token_id, []).append(invite.user_id)
        for token_id, user_ids in by_token.items():
            self.mark_invites(token_id, user_ids, mail_retry_at=until)

    def claim_mail_round(self, invites: Sequence[Any], now: datetime, until: datetime) -> list[Any]:
        """Those of these due invites that no other round took meanwhile (another replica's, say), now this round's:
        ``invites_to_email`` leaves them out until ``until``. Concurrent claims on PostgreSQL wait for each other's
        commit and see it, so each invite is mailed by one round."""
        c = t.invites.c
        claimed: set[tuple[str, str]] = set()
        by_token: dict[str, list[str]] = {}
        for invite in invites:
            by_token.setdefault(invite.token_id, []).append(invite.user_id)
        for token_id, user_ids in by_token.items():
            for start in range(0, len(user_ids), 500):
                claimed.update((token_id, user_id) for user_id in self.session.execute(
                    t.invites.update().where(c.token_id == token_id, c.user_id.in_(user_ids[start:start + 500]),
                                             c.emailed_at.is_(None), c.mail_retry_at.is_(None) | (c.mail_retry_at <= now))
                    .values(mail_retry_at=until).returning(c.user_id)).scalars())
        return [invite for invite in invites if (invite.token_id, invite.user_id) in claimed]

    def mail_sent(self, token_id: str, user_id: str, now: datetime) -> None:
        self.mark_invites(token_id, [user_id], emailed_at=now, mail_error=None, mail_refused_at=None, mail_attempts=0,
                          mail_retry_at=None)

    def mail_refused(self, token_id: str, user_id: str, error: str, now: datetime) -> None:
        """The relay refused the address for good: not tried again until the invite is resent or invited again."""
        self.mark_invites(token_id, [user_id], mail_error=error, mail_refused_at=now, mail_retry_at=None)

    def mail_failed(self, invites: Sequence[Any], error: str, now: datetime) -> None:
        """The mail did not go out (the relay failed or put it off): try again later, waiting longer each time."""
        for invite in invites:
            attempts = invite.mail_attempts
            self.mark_invites(invite.token_id, [invite.user_id], mail_error=error, mail_attempts=attempts + 1,
                              mail_retry_at=now + doubling_delay(attempts))

    # --- users the roster gave a new user ID ------------------------------------------------
    def apple_user_ids(self, token_id: str) -> AppleUserIds:
        """The ``clientUserId`` Apple knows each user of this token by."""
        r = t.renamed_users.c
        return AppleUserIds({user_id: client_user_id for user_id, client_user_id in self.session.execute(
            sa.select(r.user_id, r.client_user_id).where(r.token_id == token_id))})

    def follow_new_user_id(self, old: str, new: str, occurred: datetime, now: datetime) -> FollowedUserId | None:
        """Move the old user ID's invites, licences and retirements to the new one, token by token, Apple still knowing
        the user by the ``clientUserId`` it registered; the old ID is then gone (as if deleted, so a late, older
        event does not bring it back).

        A late event follows what the roster did since: when the new ID was itself renamed, the rows go to the ID
        the user has now; when it was deleted, the old ID is retired as the user would have been. None, changing
        nothing, when the roster changed the old ID after ``occurred``, or the user has it again now (a late, older
        event)."""
        c = t.known_users.c
        if self.session.execute(sa.select(c.user_id).where(c.user_id == old, c.changed_at > occurred)).first():
            return None
        current = self.current_user_id(new, occurred)
        if current == old:
            return None
        if current is None:
            self.forget_user(old, occurred)
            self.request_retirements(old, now)
            return FollowedUserId(None, [])
        kept, theirs = [], self._tokens_of_user(current)
        for token_id in sorted(self._tokens_of_user(old)):
            if token_id in theirs:
                kept.append(token_id)
            else:
                self._move_user(token_id, old, current)
        if not kept:
            self.forget_user(old, occurred, renamed_to=current)
        return FollowedUserId(current, kept)

    def _tokens_of_user(self, user_id: str) -> set[str]:
        """The tokens where the user has an invite, a licence, a retirement or Apple's clientUserId recorded."""
        a = t.assignments.c
        queries = [sa.select(a.token_id).where(a.holder_kind == "user", a.holder == user_id)]
        queries += [sa.select(table.c.token_id).where(table.c.user_id == user_id)
                    for table in (t.invites, t.user_retirements, t.renamed_users)]
        return set(self.session.execute(sa.union(*queries)).scalars())

    def _move_user(self, token_id: str, old: str, new: str) -> None:
        client_user_id = self._client_user_id(token_id, old)
        a, r = t.assignments.c, t.renamed_users.c
        for table, column, *only in ((t.invites, t.invites.c.user_id), (t.user_retirements, t.user_retirements.c.user_id),
                                     (t.assignments, a.holder, a.holder_kind == "user")):
            self.session.execute(table.update().where(table.c.token_id == token_id, column == old, *only)
                                 .values({column.name: new}))
        self.session.execute(t.renamed_users.delete().where(r.token_id == token_id, r.user_id == old))
        if client_user_id not in (None, new):  # None: Apple has no user of theirs here
            self.session.execute(t.renamed_users.insert().values(token_id=token_id, user_id=new,
                                                                 client_user_id=client_user_id))

    def _client_user_id(self, token_id: str, user_id: str) -> str | None:
        r = t.renamed_users.c
        rows = self.session.execute(sa.select(r.user_id, r.client_user_id).where(
            r.token_id == token_id, (r.user_id == user_id) | (r.client_user_id == user_id)))
        return AppleUserIds({user: client_user_id for user, client_user_id in rows}).client_user_id(user_id)

    # --- users the roster deleted -----------------------------------------------------------
    def request_retirements(self, user_id: str, now: datetime, token_id: str | None = None) -> None:
        """Queue the user's retirement for every token (or ``token_id`` only) where they have an invite, hold a licence
        or are known to Apple by another clientUserId."""
        tokens = self._tokens_of_user(user_id)
        if token_id is not None:
            tokens &= {token_id}
        if tokens:
            # the roster deleted them (a newer import calls it off), or an invite was revoked (it stays asked for)
            deleted = self.session.execute(sa.select(t.known_users.c.user_id).where(
                t.known_users.c.user_id == user_id, t.known_users.c.deleted_at.is_not(None))).first() is not None
            rows = [{"token_id": token_id, "user_id": user_id, "requested_at": now, "attempts": 0, "next_attempt_at": now,
                     "roster_deleted": deleted} for token_id in sorted(tokens)]
            _insert_many(self.session, _insert(self.session, t.user_retirements).on_conflict_do_nothing(), rows)
            # queued invites are not registered any more
            c = t.invites.c
            self.session.execute(t.invites.update().where(c.user_id == user_id, c.token_id.in_(sorted(tokens)),
                                                          c.apple_state == "queued").values(apple_state="retiring"))

    def due_retirements(self, now: datetime, limit: int) -> dict[str, list[str]]:
        """Users to retire, by token, whose next attempt is due."""
        c = t.user_retirements.c
        due: dict[str, list[str]] = {}
        for token_id, user_id in self.session.execute(
                sa.select(c.token_id, c.user_id).where(c.next_attempt_at <= now).order_by(c.next_attempt_at).limit(limit)):
            due.setdefault(token_id, []).append(user_id)
        return due

    def user_licence_holders(self, token_id: str, user_ids: Sequence[str]) -> list[str]:
        """Those of ``user_ids`` holding a revocable licence of this token."""
        a, s = t.assignments.c, t.assets.c
        query = (sa.select(a.holder).distinct()
                 .join_from(t.assignments, t.assets, (s.token_id == a.token_id) & (s.adam_id == a.adam_id)
                            & (s.pricing_param == a.pricing_param))
                 .where(a.token_id == token_id, a.holder_kind == "user", a.holder.in_(list(user_ids)), s.revocable.is_(True)))
        return sorted(self.session.execute(query).scalars())

    def release_licences(self, token_id: str, user_ids: Sequence[str]) -> None:
        """Apple retired these users, which took back their revocable licences (books stay with the user)."""
        a = t.assignments.c
        held = self.session.execute(sa.select(a.adam_id, a.pricing_param, a.holder).where(
            a.token_id == token_id, a.holder_kind == "user", a.holder.in_(list(user_ids))))
        assets = self.assets_by_key(token_id)
        by_asset: dict[tuple[str, str], list[str]] = {}
        for adam_id, pricing_param, holder in held:
            by_asset.setdefault((adam_id, pricing_param), []).append(holder)
        for key, holders in sorted(by_asset.items()):  # in the order a sync locks them (``licences_changed_since``)
            if key in assets and assets[key].revocable:
                self.apply_licence_change(token_id, assets[key], [], holders, added=False)

    def complete_retirements(self, token_id: str, user_ids: Sequence[str]) -> None:
        """Apple retired these users: their revocable licences are gone, their invites revoked. A user the roster
        brought back while Apple retired them (the retirement called off meanwhile) has their invite queued again."""
        if not user_ids:
            return
        ids = list(user_ids)
        r = t.user_retirements.c
        self.release_licences(token_id, ids)
        # locked: an import bringing a user back deletes their row in a transaction this one then waits for
        asked = set(self.session.execute(sa.select(r.user_id).where(r.token_id == token_id, r.user_id.in_(ids))
                                         .with_for_update()).scalars())
        self.mark_invites(token_id, [u for u in ids if u in asked], status=InviteStatus.REVOKED.value,
                          apple_state="retired", apple_error=None)
        c = t.invites.c
        self.session.execute(t.invites.update().where(
            c.token_id == token_id, c.user_id.in_([u for u in ids if u not in asked]),
            c.apple_state.in_(["queued", "registered", "retiring"])).values(
            status=InviteStatus.PENDING.value, apple_state="queued", **FRESH_INVITE))
        self.session.execute(t.user_retirements.delete().where(r.token_id == token_id, r.user_id.in_(ids)))
        self.forget_renames(token_id, ids)

    def forget_renames(self, token_id: str, user_ids: Sequence[str]) -> None:
        """Apple retired these users: the clientUserIds they went by are free again, for a user of that ID as for
        any retired user's."""
        n = t.renamed_users.c
        self.session.execute(t.renamed_users.delete().where(n.token_id == token_id, n.user_id.in_(list(user_ids))))

    def retirements_failed(self, token_id: str, user_ids: Sequence[str], error: str, now: datetime) -> None:
        """Try again later, waiting longer after every failure (30 s doubling, at most an hour)."""
        r = t.user_retirements.c
        rows = self.session.execute(sa.select(r.user_id, r.attempts).where(r.token_id == token_id, r.user_id.in_(list(user_ids))))
        for user_id, attempts in list(rows):
            self.session.execute(t.user_retirements.update().where(r.token_id == token_id, r.user_id == user_id).values(
                attempts=attempts + 1, last_error=error[:1000], next_attempt_at=now + doubling_delay(attempts)))

    # --- Apple events -----------------------------------------------------------------------
    def first_notification(self, token_id: str, notification_id: str, now: datetime, kept_since: datetime) -> bool:
        """Record that Apple's notification ``notification_id`` is handled; False if it was before (Apple sent it
        again). Those received before ``kept_since`` are forgotten. The record is one statement: the same notification
        handled at the same moment on PostgreSQL waits for the other's commit and is then left out."""
        n = t.apple_notifications.c
        self.session.execute(t.apple_notifications.delete().where(n.received_at < kept_since))
        first = self.session.execute(_insert(self.session, t.apple_notifications).on_conflict_do_nothing().returning(n.token_id),
                                     [{"token_id": token_id, "notification_id": notification_id, "received_at": now}])
        return first.first() is not None

    def record_event(self, token_id: str, event_id: str, event_type: str, status: str, failures: list, now: datetime) -> None:
        """Record an Apple event's outcome, its failures naming users by user ID."""
        if failures:
            failures = self.apple_user_ids(token_id).failures_by_user_id(failures)
        values = {"token_id": token_id, "event_type": event_type, "status": status, "failures": failures,
                  "completed_at": None if status == "PENDING" else now}
        insert = _insert(self.session, t.apple_events)
        self.session.execute(insert.values(event_id=event_id, created_at=now, **values).on_conflict_do_update(
            index_elements=[t.apple_events.c.event_id], set_={k: insert.excluded[k] for k in ("status", "failures", "completed_at")}))
