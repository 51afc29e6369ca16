"""Welcome e-mails waiting to be sent, and what became of each, in the roster database."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.roster.adapters.tables import welcome_mails
from services.roster.domain.welcome import WelcomeEmail
from shared.backoff import doubling_delay
from shared.mail import Delivery, SmtpMailer, send_each

log = logging.getLogger(__name__)
c = welcome_mails.c


class WelcomeMails:
    def __init__(self, session: Session):
        self.session = session

    def queue(self, mails: Sequence[WelcomeEmail], now: datetime) -> None:
        for start in range(0, len(mails), 1000):
            self.session.execute(welcome_mails.insert(), [
                {"user_id": m.user_id, "to": m.to, "subject": m.subject, "body": m.body, "queued_at": now,
                 "retry_at": now} for m in mails[start:start + 1000]])

    def due(self, now: datetime, limit: int) -> list[Any]:
        """Mails neither sent nor refused whose time has come, oldest first."""
        return list(self.session.execute(
            sa.select(welcome_mails).where(c.sent_at.is_(None), c.refused_at.is_(None), c.retry_at <= now)
            .order_by(c.id).limit(limit)))

    def sent(self, mail_id: int, now: datetime) -> None:
        self._set(mail_id, sent_at=now, error=None, retry_at=None)

    def refused(self, mail_id: int, error: str, now: datetime) -> None:
        self._set(mail_id, refused_at=now, error=error[:1000], retry_at=None)

    def put_off(self, rows: Sequence[Any], error: str, now: datetime) -> None:
        """Not sent this time (the relay failed or asked to wait): tried again later, waiting longer each time."""
        for row in rows:
            self._set(row.id, error=error[:1000], failures=row.failures + 1,
                      retry_at=now + doubling_delay(row.failures))

    def of_user(self, user_id: str) -> dict[str, Any] | None:
        """The user's latest welcome e-mail: ``{status, to, at, error}``."""
        row = self.session.execute(sa.select(welcome_mails).where(c.user_id == user_id)
                                   .order_by(c.id.desc()).limit(1)).first()
        if row is None:
            return None
        status = "sent" if row.sent_at else "refused" if row.refused_at else "waiting"
        at = row.sent_at or row.refused_at or row.queued_at
        return {"status": status, "to": row.to, "at": at.isoformat(), "error": row.error}

    def _set(self, mail_id: int, **values: Any) -> None:
        self.session.execute(welcome_mails.update().where(c.id == mail_id).values(**values))


def send_due(store: WelcomeMails, mailer: SmtpMailer, commit: Callable[[], None], now: datetime,
             limit: int) -> dict[str, int]:
    """Send the mails that are due, recording (and committing) each outcome as soon as the relay answered for it,
    so none is sent twice; a relay that fails leaves the rest for later. How many were sent, refused, put off."""
    due = store.due(now, limit)
    commit()  # no database connection held while the relay answers (SQLite has one per process)
    counts = {"sent": 0, "refused": 0, "retried": 0}

    def answered(index: int, delivery: Delivery) -> None:
        row = due[index]
        if delivery.error is None:
            store.sent(row.id, now)
            counts["sent"] += 1
        elif delivery.refused:
            store.refused(row.id, f"{delivery.error}; correct the user's e-mail address in the roster", now)
            counts["refused"] += 1
        else:
            store.put_off([row], delivery.error, now)
            counts["retried"] += 1
        commit()

    count, failed = send_each(mailer, due, answered)
    if failed is not None:
        store.put_off(due[count:], failed.message, now)
        counts["retried"] += len(due) - count
        log.warning("welcome e-mails not sent, tried again later: %s", failed.message)
    return counts
