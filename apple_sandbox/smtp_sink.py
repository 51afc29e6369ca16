"""A tiny SMTP server that keeps every message it receives, for tests that send mail."""
from __future__ import annotations

import email
import email.policy
import socketserver
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage

from apple_sandbox.server import STOP_POLL_SECONDS


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    message: EmailMessage


@dataclass
class SmtpSink:
    server: socketserver.ThreadingTCPServer
    thread: threading.Thread
    messages: list[ReceivedMail] = field(default_factory=list)
    # recipient address -> the reply to its RCPT TO, e.g. "550 5.1.1 No such user" (for good) or "450 Try later"
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.server.server_address[0]

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Session(socketserver.StreamRequestHandler):
    sink: SmtpSink

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self._reply("220 orchard-sink ESMTP")
        sender, recipients = "", []
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            command = raw.decode("utf-8", "replace").strip()
            verb = command[:4].upper()
            if verb == "EHLO":
                self._reply("250-orchard-sink")
                self._reply("250 8BITMIME")
            elif verb == "HELO":
                self._reply("250 orchard-sink")
            elif verb == "MAIL":
                sender, recipients = command.split(":", 1)[1].strip().strip("<>"), []
                self._reply("250 OK")
            elif verb == "RCPT":
                recipient = command.split(":", 1)[1].strip().strip("<>")
                if recipient in self.sink.refused:
                    self._reply(self.sink.refused[recipient])
                else:
                    recipients.append(recipient)
                    self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while (line := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    lines.append(line[1:] if line.startswith(b"..") else line)
                message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                self.sink.messages.append(ReceivedMail(sender, recipients, message))
                self._reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self._reply("250 OK")
            elif verb == "QUIT":
                self._reply("221 Bye")
                return
            else:
                self._reply("502 Command not implemented")


def serve_smtp(host: str = "127.0.0.1", port: int = 0) -> SmtpSink:
    """Start the sink on ``host:port`` (0 picks a free port) until ``stop()``."""
    handler = type("SinkSession", (_Session,), {})
    server = socketserver.ThreadingTCPServer((host, port), handler)
    server.daemon_threads = True
    sink = SmtpSink(server, threading.Thread(target=server.serve_forever, kwargs={"poll_interval": STOP_POLL_SECONDS},
                                             name="smtp-sink", daemon=True))
    handler.sink = sink
    sink.thread.start()
    return sink
