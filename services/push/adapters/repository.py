"""Reading and writing the push service's tables (certificates, pending signing keys, devices)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.push.adapters.tables import certificates, device_removals, devices, signing_keys
from services.push.domain.certificates import PushCertificate
from services.push.domain.pushes import PushTarget
from shared import advisory_locks
from shared.errors import NotFound

_BATCH = 1000


class PushRepository:
    def __init__(self, session: Session):
        self.session = session

    # -- certificates --

    def certificate(self, certificate_id: int, for_update: bool = False) -> sa.Row:
        query = sa.select(certificates).where(certificates.c.id == certificate_id)
        row = self.session.execute(query.with_for_update() if for_update else query).first()
        if row is None:
            raise NotFound(f"there is no push certificate {certificate_id}; `orchard push list` shows the stored ones")
        return row

    def certificate_by_topic(self, topic: str) -> sa.Row | None:
        return self.session.execute(sa.select(certificates).where(certificates.c.topic == topic)).first()

    def certificates(self) -> list[sa.Row]:
        return list(self.session.execute(sa.select(certificates).order_by(certificates.c.id)))

    def certificates_for_topics(self, topics: Iterable[str]) -> dict[str, sa.Row]:
        rows = self.session.execute(sa.select(certificates).where(certificates.c.topic.in_(list(topics))))
        return {row.topic: row for row in rows}

    def add_certificate(self, parsed: PushCertificate, sealed_private_key: str, now: datetime) -> int:
        result = self.session.execute(certificates.insert().values(
            **_certificate_fields(parsed), sealed_private_key=sealed_private_key, uploaded_at=now,
        ))
        return int(result.inserted_primary_key[0])

    def replace_certificate(self, certificate_id: int, parsed: PushCertificate, sealed_private_key: str,
                            now: datetime) -> None:
        self.session.execute(certificates.update().where(certificates.c.id == certificate_id).values(
            **_certificate_fields(parsed), sealed_private_key=sealed_private_key, renewed_at=now,
        ))

    # -- keys waiting for their certificate --

    def add_signing_key(self, key_id: str, sealed_private_key: str, actor_id: str, now: datetime) -> int:
        result = self.session.execute(signing_keys.insert().values(
            public_key_sha256=key_id, sealed_private_key=sealed_private_key, created_at=now, created_by=actor_id,
        ))
        return int(result.inserted_primary_key[0])

    def signing_key(self, key_id: str) -> sa.Row | None:
        return self.session.execute(
            sa.select(signing_keys).where(signing_keys.c.public_key_sha256 == key_id)
        ).first()

    def mark_signing_key_used(self, signing_key_id: int, now: datetime) -> None:
        self.session.execute(signing_keys.update().where(signing_keys.c.id == signing_key_id).values(used_at=now))

    # -- devices --

    def device_counts(self) -> dict[str, int]:
        rows = self.session.execute(sa.select(devices.c.topic, sa.func.count()).group_by(devices.c.topic))
        return {topic: count for topic, count in rows}

    def device_count(self, topic: str) -> int:
        return self.session.execute(sa.select(sa.func.count()).where(devices.c.topic == topic)).scalar_one()

    def enroll_device(self, fields: dict[str, Any]) -> bool:
        """Insert or refresh a device: a new check-in brings a fresh token, so pushing is enabled again.

        Events can arrive out of order: an enrollment older than the stored one or than the
        device's last check-out changes nothing. Returns whether the device was written.
        """
        self._hold_device(fields["udid"])
        enrolled_at = fields["enrolled_at"]
        removed_at = self.session.execute(
            sa.select(device_removals.c.removed_at).where(device_removals.c.udid == fields["udid"])).scalar()
        if removed_at is not None and removed_at > enrolled_at:
            return False
        values = {**fields, "push_disabled_reason": None}
        stored = self.session.execute(sa.select(devices.c.enrolled_at).where(devices.c.udid == fields["udid"])).scalar()
        if stored is None:
            self.session.execute(devices.insert().values(**values))
            return True
        if stored > enrolled_at:
            return False
        self.session.execute(devices.update().where(devices.c.udid == fields["udid"]).values(**values))
        return True

    def remove_device(self, udid: str, removed_at: datetime) -> bool:
        """Forget a device that checked out at ``removed_at``, unless it enrolled again after that."""
        self._hold_device(udid)
        previous = self.session.execute(
            sa.select(device_removals.c.removed_at).where(device_removals.c.udid == udid)).scalar()
        if previous is None:
            self.session.execute(device_removals.insert().values(udid=udid, removed_at=removed_at))
        elif previous < removed_at:
            self.session.execute(device_removals.update().where(device_removals.c.udid == udid)
                                 .values(removed_at=removed_at))
        deleted = self.session.execute(
            devices.delete().where(devices.c.udid == udid, devices.c.enrolled_at <= removed_at))
        return deleted.rowcount > 0

    def _hold_device(self, udid: str) -> None:
        # held until the commit, so two handlers of one device run one after the other: each decides its writes on
        # what it reads, and under READ COMMITTED the other's uncommitted first enrollment or removal is invisible
        advisory_locks.hold(self.session, f"push.device:{udid}")

    def push_targets(self, udids: list[str]) -> dict[str, PushTarget]:
        targets = {}
        for start in range(0, len(udids), _BATCH):
            rows = self.session.execute(
                sa.select(devices.c.udid, devices.c.topic, devices.c.push_token, devices.c.push_magic,
                          devices.c.push_disabled_reason)
                .where(devices.c.udid.in_(udids[start:start + _BATCH]))
            )
            targets.update({row.udid: PushTarget(*row) for row in rows})
        return targets

    def record_push_results(self, results: list[dict[str, Any]], now: datetime) -> None:
        """``results``: ``{udid, push_token, outcome, disable_reason}``; one batched UPDATE per 1,000 devices.

        Only a device still holding the token that was pushed is updated: one that enrolled again during the
        push has a new token, which an ``Unregistered`` for its old one must not disable.
        """
        statement = (
            devices.update()
            .where(devices.c.udid == sa.bindparam("b_udid"), devices.c.push_token == sa.bindparam("b_token"))
            .values(last_push_at=now, last_push_result=sa.bindparam("b_outcome"),
                    push_disabled_reason=sa.func.coalesce(sa.bindparam("b_disable"), devices.c.push_disabled_reason))
        )
        rows = [{"b_udid": r["udid"], "b_token": r["push_token"], "b_outcome": r["outcome"],
                 "b_disable": r["disable_reason"]} for r in results]
        for start in range(0, len(rows), _BATCH):
            self.session.execute(statement, rows[start:start + _BATCH])

    def devices_of_topic(self, topic: str) -> Iterator[sa.Row]:
        query = (
            sa.select(devices.c.udid, devices.c.serial_number, devices.c.enrolled_at, devices.c.last_push_at,
                      devices.c.last_push_result, devices.c.push_disabled_reason)
            .where(devices.c.topic == topic).order_by(devices.c.enrolled_at, devices.c.udid)
            .execution_options(yield_per=_BATCH)
        )
        return iter(self.session.execute(query))


def _certificate_fields(parsed: PushCertificate) -> dict[str, Any]:
    return {
        "topic": parsed.topic, "serial_number": parsed.serial_number, "not_before": parsed.not_before,
        "not_after": parsed.not_after, "issuer": parsed.issuer, "common_name": parsed.common_name,
        "apple_id": parsed.apple_id, "certificate_pem": parsed.certificate_pem,
    }
