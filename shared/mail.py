"""Sending e-mail through the SMTP relay a service is configured with (``smtp_host``, ``smtp_port``,
``mail_from`` in its ``SERVICES`` section), one message at a time so each outcome is known."""
from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

from nameko.extensions import DependencyProvider

from shared.config import service_settings
from shared.errors import UpstreamError


class Mail(Protocol):
    to: str
    subject: str
    body: str


@dataclass(frozen=True)
class Delivery:
    """What the relay did with one message: took it (``error`` None), refused it for good (``refused``: a 5xx
    for its recipient or content) or put it off (a 4xx: it may take it later)."""

    mail: Any
    error: str | None = None
    refused: bool = False


class SmtpMailer:
    def __init__(self, host: str, port: int, sender: str):
        self.host, self.port, self.sender = host, port, sender

    def send(self, mails: Sequence[Mail]) -> Iterator[Delivery]:
        """Send over one SMTP session, yielding each message's ``Delivery`` as soon as the relay answered for it.

        A relay that cannot be reached, drops the session or refuses the sender raises ``UpstreamError``: the
        messages not yielded yet were not sent."""
        if not mails:
            return
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=30)
            try:
                for mail in mails:
                    yield self._deliver(smtp, mail)
            finally:
                _end(smtp)
        except smtplib.SMTPSenderRefused as exc:
            raise UpstreamError(
                f"The mail relay {self.host}:{self.port} refused the sender {self.sender} ({exc.smtp_code} "
                f"{_text(exc.smtp_error)}); set MAIL_FROM to an address the relay accepts from this host.") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise UpstreamError(
                f"E-mails could not be sent through {self.host}:{self.port} ({type(exc).__name__}); "
                "check SMTP_HOST/SMTP_PORT and that the relay is up.") from None

    def _deliver(self, smtp: smtplib.SMTP, mail: Mail) -> Delivery:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, mail.to, mail.subject
        message.set_content(mail.body)
        try:
            smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:  # the relay reset the transaction: the session goes on
            code, reason = next(iter(exc.recipients.values()))
            return _answer(mail, code, reason, "the address")
        except smtplib.SMTPDataError as exc:
            return _answer(mail, exc.smtp_code, exc.smtp_error, "the message to")
        return Delivery(mail)


def send_each(mailer: SmtpMailer, mails: Sequence[Mail], answered: Callable[[int, Delivery], None]
              ) -> tuple[int, UpstreamError | None]:
    """Send ``mails``, calling ``answered(index, delivery)`` as soon as the relay answered for each: record what
    it said right there, so a relay failing later in the round never has a message sent twice. How many were
    answered, and the relay's failure if it failed (the mails from that index on were not sent)."""
    count = 0
    try:
        for delivery in mailer.send(mails):
            answered(count, delivery)
            count += 1
    except UpstreamError as failed:
        return count, failed
    return count, None


def _end(smtp: smtplib.SMTP) -> None:
    """Close the session; once every message has its answer, a relay that fumbles the goodbye changes nothing."""
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


def _text(reason: bytes | str) -> str:
    return (reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)).strip()[:300]


def _answer(mail: Mail, code: int, reason: bytes | str, what: str) -> Delivery:
    said = f"{code} {_text(reason)}"
    if 500 <= code < 600:
        return Delivery(mail, f"The mail relay refused {what} {mail.to} ({said})", refused=True)
    return Delivery(mail, f"The mail relay put off {what} {mail.to} for now ({said}); it is tried again later.")


class Mailer(DependencyProvider):
    """Gives workers the service's ``SmtpMailer``."""

    def setup(self) -> None:
        settings = service_settings(self.container.config, self.container.service_name)
        self.mailer = SmtpMailer(str(settings.get("smtp_host") or "localhost"), int(settings.get("smtp_port") or 25),
                                 str(settings.get("mail_from") or "orchard@localhost"))

    def get_dependency(self, worker_ctx: Any) -> SmtpMailer:
        return self.mailer
