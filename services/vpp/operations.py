"""The vpp service's work with Apple: syncing, licence batches, user registration and invite mail.

Apple calls run outside the database session; results are written by the worker's
own greenthread. Whatever Apple already did is committed even when a later call
fails, and the error says what was done. No database connection is held while Apple
or the mail relay answers (SQLite has one per process): what a worker read or wrote
is committed before it waits, and the answer is written in a new transaction.
"""
from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import eventlet
import sqlalchemy as sa

from services.vpp import metrics
from services.vpp.adapters import tables
from services.vpp.adapters.apple_client import (
    AppsAndBooksClient, AssetMetadata, ContentTokenExpired, ContentTokenRevoked, EventResult, Listing, ManagedByAnotherMdm,
)
from services.vpp.adapters.repository import VppRepository
from services.vpp.domain.apple_users import AppleUserIds
from services.vpp.domain.invites import InviteMethod, InviteStatus, invite_email, invite_url, invite_url_template
from services.vpp.domain.licences import Asset, LicenceBatch, Limits, chunks
from shared import green, leases
from shared.backoff import doubling_delay
from shared.errors import Conflict, OrchardError, UpstreamError
from shared.mail import Delivery, SmtpMailer, send_each
from shared.secrets import SecretBox
from shared.storage import UnitOfWork, utc_now

log = logging.getLogger(__name__)

APPLE_CONCURRENCY = 16  # Apple requests in flight per worker
ALREADY_REGISTERED = 9716
USER_NOT_FOUND = 9609  # never registered with Apple (an invite still queued): nothing to retire
NAMES_REFRESHED_AFTER = timedelta(days=7)  # store names change (renamed apps); look them up again after this
DEFAULT_PLATFORM = "volumestore"  # client/config's defaultPlatform for tokens added before it was stored
# a licence change holds its asset's turn this long, renewed every third of it while it runs: a holder that died
# passes the turn on within this time
LICENCE_TURN = timedelta(seconds=30)
TURN_POLL_FIRST, TURN_POLL_LONGEST = timedelta(milliseconds=50), timedelta(seconds=1)  # how often a waiter looks
# the longest wait for a turn: well within a caller's RPC timeout (30 s by default), so a caller never gives up on
# a change that then runs
TURN_WAIT_LIMIT = timedelta(seconds=20)
# invites being mailed are left to their round this long (a round of a process that died is taken up after it)
MAIL_ROUND = timedelta(minutes=5)
# a user whose user ID is Apple's clientUserId of another user, one the roster renamed
ID_OF_ANOTHER = ("Apple knows another user of this content token (one the roster gave a new user ID) by this user ID, "
                 "so this user cannot be registered or given licences here under it.")


@dataclass
class LicenceOutcome:
    serial_numbers: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"serial_numbers": self.serial_numbers, "user_ids": self.user_ids, "failures": self.failures, "events": self.events}


@dataclass
class MailOutcome:
    """What a round of invite e-mails did: how many went out, the messages the relay refused or put off (by user),
    and why the rest waits when the relay failed altogether (``error``)."""

    sent: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def failed_holders(batch: LicenceBatch, result: EventResult, ids: AppleUserIds) -> dict[str, dict[str, Any]]:
    """Which serials/users of a batch sent to Apple (users by clientUserId) Apple reports as failed, with Apple's
    reason; users by user ID."""
    failed: dict[str, dict[str, Any]] = {}
    everyone = [*batch.serial_numbers, *map(ids.user_id, batch.client_user_ids)]
    for failure in result.failures:
        info = failure.get("errorInfo") or {}
        named = list(info.get("serialNumbers") or []) + [ids.user_id(u) for u in info.get("clientUserIds") or []]
        reason = {"error_number": failure.get("errorNumber"), "message": failure.get("errorMessage")}
        for holder in named or everyone:
            failed[holder] = reason
    if result.status == "FAILED" and not failed:
        failed = {h: {"error_number": None, "message": "Apple reported the request as failed"} for h in everyone}
    return failed


class PartlyDone(UpstreamError):
    """Apple failed after earlier requests of several had done their work, which is kept."""

    def __init__(self, failure: str, done: list[str]):
        self.failure, self.done = failure, done
        super().__init__(f"{failure} Before that, {'; '.join(done)}; run it again for the rest.")


class VppOperations:
    def __init__(self, db: UnitOfWork, connector: Any, secrets: SecretBox, mailer: SmtpMailer):
        self.db, self.connector, self.secrets, self.mailer = db, connector, secrets, mailer

    @property
    def repo(self) -> VppRepository:
        return VppRepository(self.db.session)

    def client_for(self, token: Any) -> AppsAndBooksClient:
        engine, token_id = self.db.session.get_bind(), token.id

        def stored_stoken() -> str:
            # read in the middle of Apple's answers, perhaps by several greenthreads at once: on a connection of its
            # own, not through the worker's session, which must hold none while Apple answers
            with engine.connect() as connection:
                return self.secrets.open(connection.execute(sa.select(tables.content_tokens.c.sealed_stoken).where(
                    tables.content_tokens.c.id == token_id)).scalar_one())

        return self.connector.client(self.secrets.open(token.sealed_stoken), stored_stoken)

    @contextmanager
    def apple(self, token: Any) -> Iterator[None]:
        """Record on the token what Apple's answers say about it (managed elsewhere, revoked), even on failure.

        The call fails then, so nothing else it wrote and did not commit yet is kept: that is rolled back before
        the token's state is committed.
        """
        try:
            yield
        except (ManagedByAnotherMdm, ContentTokenRevoked) as exc:
            self.db.session.rollback()
            self.record_refusal(token, exc)
            raise

    @contextmanager
    def step(self, token: Any, number: int, done: str) -> Iterator[None]:
        """Run request ``number`` of several to Apple; ``done`` says what the earlier ones did.

        A failure of the first changes nothing; a later one keeps (commits) what Apple already did and says so."""
        try:
            yield
        except OrchardError as exc:
            if number == 1:
                raise
            self.db.commit()
            self.record_refusal(token, exc)
            if isinstance(exc, PartlyDone):  # the request was itself several: all that was done, said once
                raise PartlyDone(exc.failure, [done, *exc.done]) from None
            raise PartlyDone(str(exc), [done]) from None

    def record_refusal(self, token: Any, exc: Exception) -> None:
        """Commit what an Apple refusal says about the token itself; other errors say nothing about it."""
        if isinstance(exc, ManagedByAnotherMdm):
            self.repo.update_token(token.id, conflict_with=str(exc.other_mdm.get("name") or exc.other_mdm.get("id"))[:200])
        elif isinstance(exc, ContentTokenRevoked):
            self.repo.update_token(token.id, revoked=True)
        else:
            return
        self.db.commit()

    # --- sync -------------------------------------------------------------------------------
    def sync(self, token: Any) -> dict[str, int]:
        """Read assets, assignments and users from Apple (each listing at one ``versionId``) and store them.

        An asset whose licences a change here wrote after the reads began keeps what the change wrote: Apple's
        listing may be older. Whatever fails is recorded on the token (``last_sync_error``, an internal error as
        one), so the scheduled sync tries it again within minutes."""
        now = utc_now()
        self.repo.update_token(token.id, sync_attempted_at=now)
        try:
            client = self.client_for(token)  # the stored sToken unsealed: a key rotated away fails here
            read_from = self.repo.database_time()  # changes written from then on may be missing from Apple's listings
            self.db.commit()  # no database connection held while Apple answers (SQLite has one per process)
            return self._store_listings(client, token, now, read_from)
        except Exception as exc:
            self.db.session.rollback()  # what Apple said about the token itself is committed already (``apple``)
            self.repo.update_token(token.id, sync_attempted_at=now, last_sync_error=_failure_reason(exc)[:1000])
            self.db.commit()
            raise

    def _store_listings(self, client: AppsAndBooksClient, token: Any, now: datetime, read_from: datetime) -> dict[str, int]:
        with self.apple(token):
            assets = client.assets()
            assignments = client.assignments()
            users = client.users(include_retired=True)
        names = self._look_up_names(client, token, [str(a["adamId"]) for a in assets], now)
        repo = self.repo
        # the assets first, then the invites: the order a retirement locks them in, or the two could deadlock
        changed = repo.licences_changed_since(token.id, read_from)  # and no change starts until this is committed
        repo.apply_apple_users(token.id, users.items, now)
        if changed:
            log.info("content token %s: %d asset(s) whose licences changed while Apple was read keep what the change "
                     "wrote until the next sync", token.id, len(changed))
        repo.replace_assets(token.id, assets.items, now, keep=changed)
        repo.store_asset_metadata(token.id, names, now)
        held = repo.replace_assignments(token.id, assignments.items, keep=changed)
        repo.update_token(token.id, last_sync_at=now, last_sync_error=None, conflict_with=None, users_version=users.version_id)
        return {"assets": len(assets), "assignments": held, "users": len(users)}

    def _look_up_names(self, client: AppsAndBooksClient, token: Any, adam_ids: list[str], now: datetime) -> list[AssetMetadata]:
        """Names for assets that have none (or an old one); a failed lookup leaves names as they are, never the sync."""
        wanted = self.repo.assets_needing_names(token.id, adam_ids, now - NAMES_REFRESHED_AFTER)
        self.db.commit()  # nothing written yet: the lookup's wait holds no database connection
        if not wanted:
            return []
        try:
            found = client.content_metadata(wanted, platform=token.default_platform or DEFAULT_PLATFORM,
                                            country=token.country or "US")
        except OrchardError as exc:
            metrics.NAME_LOOKUP_FAILURES.inc()
            log.warning("asset names of content token %s not looked up (%d assets): %s", token.id, len(wanted), exc)
            return []
        return list(found.values())

    # --- licences ---------------------------------------------------------------------------
    @contextmanager
    def licence_turn(self, token: Any, adam_ids: Iterable[str]) -> Iterator[leases.Heartbeat]:
        """Take the turn on these assets' licences: changes to one asset run one after the other, each planned
        against the last one's outcome, which is committed before the turn passes on (an error rolls back what
        was not committed yet). Hand the yielded heartbeat to ``run_licence_batches``, which stops before its
        next request to Apple if a turn was lost (not renewed in time, and taken by another change).

        The turn is a lease, not a row lock, so neither waiting for it nor the change's wait on Apple holds a
        database connection; several assets are taken in one order, so two changes never wait on each other.
        A turn not free within ``TURN_WAIT_LIMIT`` is a ``Conflict``: the caller hears so before its own RPC
        timeout, and nothing was changed."""
        engine, turns = self.db.session.get_bind(), tables.metadata.tables["leases"]
        names = [f"vpp.licences:{token.id}:{adam_id}" for adam_id in sorted(set(adam_ids))]
        holder = uuid.uuid4().hex
        taken: list[str] = []  # renewed from the first, while the others are waited for
        self.db.commit()  # the turn is waited for with nothing held

        def renew() -> bool:
            return all([leases.acquire(engine, turns, name, holder, LICENCE_TURN) for name in taken])  # each one

        try:
            with leases.renewed(renew, every=LICENCE_TURN.total_seconds() / 3) as heartbeat:
                deadline = time.monotonic() + TURN_WAIT_LIMIT.total_seconds()
                for name in names:
                    _wait_for_turn(engine, turns, name, holder, deadline)
                    taken.append(name)
                _require_turn(heartbeat, ", ".join(name.rsplit(":", 1)[1] for name in names))
                yield heartbeat
                self.db.commit()
        except BaseException:  # the turn is given up with nothing held, a worker killed meanwhile too
            self.db.session.rollback()
            raise
        finally:
            for name in taken:
                _give_up_turn(engine, turns, name, holder)

    def limits(self, token: Any) -> Limits:
        """Apple's request limits (``service/config``, which it may be asked for): what the worker read or wrote so
        far is committed first."""
        self.db.commit()  # no database connection held while Apple answers (SQLite has one per process)
        return self.client_for(token).limits()

    def run_licence_batches(self, token: Any, asset: Asset, batches: Sequence[LicenceBatch], *, assign: bool,
                            turn: leases.Heartbeat) -> LicenceOutcome:
        """Send the batches to Apple one after the other, users by their clientUserId, holding the asset's ``turn``
        (``licence_turn``); each one's outcome is committed before the next is sent."""
        client = self.client_for(token)
        ids = self.repo.apple_user_ids(token.id)
        outcome = LicenceOutcome()
        submit = client.associate if assign else client.disassociate
        verb = "assigned" if assign else "revoked"
        with self.apple(token):
            for number, batch in enumerate(batches, 1):
                apple_batch, unregistered = ids.for_apple(batch)
                failed = {user_id: {"error_number": None, "message": ID_OF_ANOTHER} for user_id in unregistered}
                self.db.commit()  # what the requests before did is kept; no database connection held while Apple answers
                if apple_batch.size:
                    with self.step(token, number, f"{len(outcome.serial_numbers)} device and {len(outcome.user_ids)} "
                                                  f"user licence(s) were {verb} ({number - 1} of {len(batches)} requests)"):
                        _require_turn(turn, asset.adam_id)  # ask Apple for nothing more once another change has it
                        event_id = submit(apple_batch)
                        outcome.events.append(event_id)
                        result = client.wait_for_event(event_id)
                    failed.update(failed_holders(apple_batch, result, ids))
                    self.repo.record_event(token.id, event_id, result.event_type or "", result.status, result.failures,
                                           utc_now())
                done_serials = [s for s in batch.serial_numbers if s not in failed]
                done_users = [u for u in batch.client_user_ids if u not in failed]
                self.repo.apply_licence_change(token.id, asset, done_serials, done_users, added=assign)
                outcome.serial_numbers += done_serials
                outcome.user_ids += done_users
                outcome.failures += [{"holder": h, **reason} for h, reason in failed.items()]
        return outcome

    # --- invites ----------------------------------------------------------------------------
    def invite(self, token: Any, invites: list[dict[str, Any]]) -> tuple[set[str], dict[str, int]]:
        """Queue these invites (``invite_users``) and register them with Apple.

        Nothing is written before Apple has answered, so a failure changes nothing (what Apple says about the token
        apart, see ``apple``). Returns the users this call queued (not those another call queued first) and how
        many of them Apple registered and failed; those that became invitable only meanwhile stay queued for
        ``register_queued``."""
        invitable = set(self.repo.invitable(token.id, [invite["user_id"] for invite in invites]))
        asked = [invite for invite in invites if invite["user_id"] in invitable]
        refused = _unusable(token, utc_now())
        created = self._create_users(token, asked) if asked and not refused else []
        listing = self._users_changed(token) if created and _by_email(asked) else None  # the e-mails' invite codes
        invited = self.repo.queue_invites(invites, invited_again=True)
        if refused:
            self.repo.mark_failed(token.id, sorted(invited), refused)
            return invited, {"registered": 0, "failed": len(invited)}
        registered, failed = self._record_registrations(
            token, [([i for i in batch if i["user_id"] in invited], reasons) for batch, reasons in created])
        if listing is not None:
            self._apply_users(token, listing)
        return invited, {"registered": registered, "failed": failed}

    def register_queued(self, limit: int = 5000) -> dict[str, int]:
        """Register queued invites with Apple in ``users/create`` batches, several in flight at once; each token's
        outcome is written and committed once Apple answered. A token whose registration fails as a whole (Apple
        away, the token refused) is tried again later, its invites saying why, and the other tokens' go on."""
        by_token: dict[str, list[Any]] = defaultdict(list)
        for invite in self.repo.queued_invites(limit, utc_now()):
            by_token[invite["token_id"]].append(invite)
        totals = {"registered": 0, "failed": 0}
        for tid, invites in by_token.items():
            token = self.repo.token(tid)
            try:
                registered, failed = self._register(token, invites)
            except Exception as exc:  # whatever it was, it was this token's: one failing never holds up the others
                self.db.session.rollback()  # what the attempt wrote and had not committed is not kept
                self._registration_failed(token, [i["user_id"] for i in invites], exc)
                continue
            if token.registration_attempts:
                self.repo.update_token(tid, registration_attempts=0, registration_retry_at=None)
            self.db.commit()
            totals["registered"] += registered
            totals["failed"] += failed
        return totals

    def _registration_failed(self, token: Any, user_ids: list[str], exc: Exception) -> None:
        """Record why registering these invites of the token failed: for good when the token itself is refused (revoked
        or expired, as Apple said, or another MDM took the location: renewing it queues them again), or for now, the
        token's invites waiting longer after every failure in a row."""
        now = utc_now()
        refused = _unusable(self.repo.token(token.id), now)  # Apple's refusal is recorded on the token (``apple``)
        if refused or isinstance(exc, ContentTokenExpired):
            self.repo.mark_failed(token.id, user_ids, refused or str(exc))
        else:
            retry_at = self.repo.registration_failed(token, user_ids, _failure_reason(exc), now)
            log.warning("%d invite(s) of content token %s wait until %s to be registered: %s", len(user_ids), token.id,
                        retry_at.isoformat(timespec="seconds"), exc, exc_info=not isinstance(exc, OrchardError))
        self.db.commit()

    def _register(self, token: Any, invites: list[Any]) -> tuple[int, int]:
        refused = _unusable(token, utc_now())
        if refused:
            self.repo.mark_failed(token.id, [i["user_id"] for i in invites], refused)
            return 0, len(invites)
        registered, failed = self._record_registrations(token, self._create_users(token, invites))
        if _by_email(invites):
            self.refresh_invites(token)  # the e-mails need the invite codes now; others get them when listed
        return registered, failed

    def _create_users(self, token: Any, invites: list[Any]) -> list[tuple[list[Any], dict[str, str]]]:
        """Ask Apple to register the invites' users by their clientUserId; each batch with the users Apple did not
        register and why (nothing is written). A user registered by an earlier attempt is what we wanted."""
        client = self.client_for(token)
        ids = self.repo.apple_user_ids(token.id)
        batches = chunks(invites, self.limits(token).max_users)

        def create(batch: list[Any]) -> tuple[list[Any], dict[str, str]]:
            users = {i["user_id"]: ids.client_user_id(i["user_id"]) for i in batch}
            failed = {user_id: ID_OF_ANOTHER for user_id, client_user_id in users.items() if not client_user_id}
            asked = [i for i in batch if i["user_id"] not in failed]
            if asked:
                result = client.wait_for_event(client.create_users([_apple_user(i, users[i["user_id"]]) for i in asked]))
                failed.update(_failed_users(result, [i["user_id"] for i in asked], ALREADY_REGISTERED, ids))
            return batch, failed

        with self.apple(token):
            return list(green.imap(create, batches, APPLE_CONCURRENCY))

    def _record_registrations(self, token: Any, created: list[tuple[list[Any], dict[str, str]]]) -> tuple[int, int]:
        """Write what Apple answered to ``_create_users``: how many it registered and failed."""
        registered = failed = 0
        for batch, not_registered in created:
            members = {i["user_id"] for i in batch}
            reasons = {user_id: reason for user_id, reason in not_registered.items() if user_id in members}
            done = [i for i in batch if i["user_id"] not in reasons]
            # deleted from the roster, or the invite revoked, while Apple registered them: retired here again
            retired_again = self.repo.mark_registered(token.id, [i["user_id"] for i in done])
            for user_id in retired_again:
                self.repo.request_retirements(user_id, utc_now(), token.id)
            # invited again: a retirement an earlier, revoked invite asked for would retire this registration
            self.repo.call_off_revocations(token.id, [i["user_id"] for i in done if i["user_id"] not in retired_again])
            for user_id, reason in reasons.items():
                self.repo.mark_failed(token.id, [user_id], reason)
            for method in {i["method"] for i in done}:
                metrics.INVITES_REGISTERED.labels(method).inc(sum(1 for i in done if i["method"] == method))
            registered, failed = registered + len(done), failed + len(reasons)
        return registered, failed

    # --- users the roster deleted -----------------------------------------------------------
    def retire_users(self, token: Any, user_ids: list[str]) -> list[str]:
        """Revoke the users' revocable licences, then retire them at Apple, in batches within Apple's limits.

        Returns the users done; the others stay queued with Apple's reason (raises when Apple cannot be asked at all).
        Apple's answers are written only at the end, so a failure writes nothing.
        """
        client = self.client_for(token)
        ids = self.repo.apple_user_ids(token.id)
        failed: dict[str, str] = {}
        holders = self.repo.user_licence_holders(token.id, user_ids)
        limits = self.limits(token)
        with self.apple(token):
            for batch in chunks(holders, limits.max_revoke_client_user_ids):
                failed.update(_ask_for_users(lambda apple_ids: client.revoke(client_user_ids=apple_ids), client, batch, ids))
            for batch in chunks([u for u in user_ids if u not in failed], limits.max_users):
                failed.update(_ask_for_users(client.retire_users, client, batch, ids))
        done = [u for u in user_ids if u not in failed]
        self.repo.complete_retirements(token.id, done)
        for reason in set(failed.values()):
            self.repo.retirements_failed(token.id, [u for u, r in failed.items() if r == reason], reason, utc_now())
        return done

    def retire_invited(self, token: Any, user_ids: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
        """Retire invited users at Apple, a batch at a time, each batch's outcome committed before the next is sent.
        The invites of those Apple retired (or never knew) are revoked, and the revocable licences they held are free
        again; the others stay as they are. Returns the users revoked and the failures, with Apple's reason."""
        client = self.client_for(token)
        ids = self.repo.apple_user_ids(token.id)
        batches = chunks(user_ids, self.limits(token).max_users)
        revoked: list[str] = []
        failures: list[dict[str, Any]] = []
        with self.apple(token):
            for number, batch in enumerate(batches, 1):
                self.db.commit()  # what the requests before did is kept; no database connection held while Apple answers
                with self.step(token, number, f"{len(revoked)} invite(s) were revoked ({number - 1} of {len(batches)} "
                                              "requests)"):
                    failed = _ask_for_users(client.retire_users, client, batch, ids)
                done = [u for u in batch if u not in failed]
                self.repo.release_licences(token.id, done)
                self.repo.forget_renames(token.id, done)
                # no longer Apple's registration to follow (a listing read before, a notification sent again):
                # withdrawn, as an invite revoked before Apple registered it, which is not sent again unasked
                self.repo.mark_invites(token.id, done, status=InviteStatus.REVOKED.value, apple_state="withdrawn",
                                       apple_error=None)
                revoked += done
                failures += [{"user_id": user_id, "message": reason} for user_id, reason in failed.items()]
        return revoked, failures

    def refresh_invites(self, token: Any) -> None:
        """Read the users Apple changed since the last read: invite codes, acceptances, retirements. What the worker
        read or wrote so far is committed first."""
        self.db.commit()  # no database connection held while Apple answers (SQLite has one per process)
        self._apply_users(token, self._users_changed(token))

    def _users_changed(self, token: Any) -> Listing:
        with self.apple(token):
            return self.client_for(token).users(since_version_id=token.users_version)

    def _apply_users(self, token: Any, listing: Listing) -> None:
        self.repo.apply_apple_users(token.id, listing.items, utc_now())
        self.repo.update_token(token.id, users_version=listing.version_id)

    def invite_url_template(self, token: Any) -> str:
        """Apple's template of invite links (``UpstreamError`` when none can be read)."""
        return invite_url_template(self.client_for(token).invitation_url_template())

    def email_invites(self, invites: Sequence[Any], *, resend: bool = False) -> MailOutcome:
        """Mail these due invites' links (or, ``resend``, these invites' links again), recording and committing each
        message's outcome as soon as the relay answered for it, so a failure later in the round never sends it
        twice. Due invites another round took meanwhile are left to it. What the worker read or wrote before is
        committed first. A refused address is recorded on its invite; a relay that failed leaves the rest for a
        later round, each invite waiting longer after every failure (written, not committed)."""
        now = utc_now()
        if resend:
            rows = list(invites)
            self.repo.mail_round(rows, now + MAIL_ROUND)  # the mail job's next round leaves them to this one
        else:
            rows = self.repo.claim_mail_round(list(invites), now, now + MAIL_ROUND)
        outcome = MailOutcome()
        tokens = {row.token_id: self.repo.token(row.token_id) for row in rows}
        self.db.commit()  # no database connection held while Apple and the relay answer
        templates = {token_id: self.invite_url_template(token) for token_id, token in tokens.items()}
        mails = [invite_email(to=row.email, user_name=row.name, organisation=tokens[row.token_id].org_name,
                              url=invite_url(templates[row.token_id], row.invite_code)) for row in rows]

        def answered(index: int, delivery: Delivery) -> None:
            self._record_delivery(rows[index], delivery, outcome)
            self.db.commit()

        count, failed = send_each(self.mailer, mails, answered)
        if failed is not None:
            outcome.error = str(failed)
            self.repo.mail_failed(rows[count:], outcome.error, utc_now())
            metrics.INVITE_EMAILS.labels("retried").inc(len(rows) - count)
        return outcome

    def _record_delivery(self, row: Any, delivery: Delivery, outcome: MailOutcome) -> None:
        if delivery.error is None:
            self.repo.mail_sent(row.token_id, row.user_id, utc_now())
            outcome.sent += 1
            metrics.INVITE_EMAILS.labels("sent").inc()
            return
        message = delivery.error
        if delivery.refused:
            message += ("; correct the address in the roster, then revoke the invite and invite the user again "
                        "(resending tries the same address).")
            self.repo.mail_refused(row.token_id, row.user_id, message, utc_now())
        else:
            self.repo.mail_failed([row], message, utc_now())
        metrics.INVITE_EMAILS.labels("refused" if delivery.refused else "retried").inc()
        outcome.failures.append({"user_id": row.user_id, "email": row.email, "refused": delivery.refused,
                                 "message": message})


def _wait_for_turn(engine: Any, turns: Any, name: str, holder: str, deadline: float) -> None:
    """Take the lease ``name`` as soon as it is free, looking less often the longer the wait; ``Conflict`` if it is
    not free by ``deadline`` (``time.monotonic()``)."""
    for attempt in itertools.count():
        if leases.acquire(engine, turns, name, holder, LICENCE_TURN):
            return
        pause = doubling_delay(attempt, TURN_POLL_FIRST, TURN_POLL_LONGEST).total_seconds()
        if time.monotonic() + pause > deadline:
            adam_id = name.rsplit(":", 1)[1]
            raise Conflict(f"Another licence change to app {adam_id} is still running; nothing was changed. "
                           f"Try again in a moment.")
        eventlet.sleep(pause)


def _require_turn(turn: leases.Heartbeat, adam_ids: str) -> None:
    """``Conflict`` once a renewal found a turn taken by another change (ours was not renewed in time)."""
    if turn.lost:
        raise Conflict(f"Another licence change to app {adam_ids} took its turn while this one waited; check the "
                       f"licences and run it again if needed.")


def _give_up_turn(engine: Any, turns: Any, name: str, holder: str) -> None:
    """Pass the turn on; if the database cannot be reached, the turn lapses by itself within ``LICENCE_TURN``."""
    try:
        leases.hold_for(engine, turns, name, holder, timedelta(0))
    except Exception:
        log.warning("could not give up the licence turn %s; it lapses within %s", name, LICENCE_TURN, exc_info=True)


def _failure_reason(exc: Exception) -> str:
    """What to record about a failure: an expected error's message; for any other, where to look (the caller logs
    it with its traceback, or the RPC entrypoint does)."""
    return exc.message if isinstance(exc, OrchardError) else "An internal error of Orchard's; see the vpp service's log."


def _unusable(token: Any, now: datetime) -> str | None:
    """Why Apple cannot register users with this token now, if it cannot."""
    if token.revoked:
        return "the content token is revoked; renew it to register the user"
    if token.expires_at <= now:
        return f"the content token expired on {token.expires_at:%Y-%m-%d}; renew it to register the user"
    if token.conflict_with:
        return (f"another MDM ({token.conflict_with}) manages this location; renew the content token with take_over "
                "to claim it back")
    return None


def _by_email(invites: Iterable[Any]) -> bool:
    return any(invite["method"] == InviteMethod.EMAIL.value for invite in invites)


def _ask_for_users(request: Callable[[list[str]], str], client: AppsAndBooksClient, user_ids: list[str],
                   ids: AppleUserIds) -> dict[str, str]:
    """Send a users/retire or assets/revoke request naming these users by clientUserId and wait for it; the users
    Apple failed, with its reason. A user Apple has none of here is not named, as Apple would not find them."""
    apple_ids = [client_user_id for client_user_id in map(ids.client_user_id, user_ids) if client_user_id]
    if not apple_ids:
        return {}
    return _failed_users(client.wait_for_event(request(apple_ids)), user_ids, USER_NOT_FOUND, ids)


def _failed_users(result: EventResult, user_ids: list[str], ignored: int, ids: AppleUserIds) -> dict[str, str]:
    """Those of ``user_ids`` that Apple failed in a users/… or revoke request naming them by clientUserId, with its
    reason (``invite`` writes the outcome of part of a request only); errors numbered ``ignored`` are fine."""
    failed: dict[str, str] = {}
    members = set(user_ids)
    for failure in result.failures:
        if failure.get("errorNumber") == ignored:
            continue
        reason = f"{failure.get('errorMessage')} (error {failure.get('errorNumber')})"
        named = [ids.user_id(u) for u in (failure.get("errorInfo") or {}).get("clientUserIds") or []] or user_ids
        failed.update((user_id, reason) for user_id in named if user_id in members)
    return failed


def _apple_user(invite: Any, client_user_id: str) -> dict[str, str]:
    user = {"clientUserId": client_user_id}
    if invite["method"] == InviteMethod.MANAGED_APPLE_ID.value and invite["managed_apple_id"]:
        user["managedAppleId"] = invite["managed_apple_id"]
    if invite["email"]:
        user["email"] = invite["email"]
    return user
