"""Sends invite e-mails through the SMTP relay configured in ``SERVICES.vpp`` (smtp_host, smtp_port, mail_from)."""
from __future__ import annotations

import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

from nameko.extensions import DependencyProvider

from services.vpp.domain.invites import InviteEmail
from shared.config import service_settings
from shared.errors import UpstreamError


class SmtpMailer:
    def __init__(self, host: str, port: int, sender: str):
        self.host, self.port, self.sender = host, port, sender

    def send(self, mails: Sequence[InviteEmail]) -> None:
        """Send over one SMTP session; a relay that cannot be reached is an ``UpstreamError``."""
        if not mails:
            return
        try:
            with smtplib.SMTP(self.host, self.port, timeout=30) as smtp:
                for mail in mails:
                    message = EmailMessage()
                    message["From"], message["To"], message["Subject"] = self.sender, mail.to, mail.subject
                    message.set_content(mail.body)
                    smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise UpstreamError(
                f"Invite e-mails could not be sent through {self.host}:{self.port} ({type(exc).__name__}); "
                "check SMTP_HOST/SMTP_PORT, then resend the invites.") from None


class Mailer(DependencyProvider):
    def setup(self) -> None:
        settings = service_settings(self.container.config, self.container.service_name)
        self.mailer = SmtpMailer(str(settings.get("smtp_host") or "localhost"), int(settings.get("smtp_port") or 25),
                                 str(settings.get("mail_from") or "orchard@localhost"))

    def get_dependency(self, worker_ctx: Any) -> SmtpMailer:
        return self.mailer
