"""Structured logs: one JSON object per line, with the service, entrypoint, call id and actor.

Each worker runs in its own greenthread, so the worker context is kept in a
greenthread-local and picked up by the formatter for every record the worker
logs. Messages must never contain secrets; nothing here adds any.
"""
from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from typing import Any

from eventlet.corolocal import local

_current = local()


def bind_worker(worker_ctx: Any) -> None:
    _current.worker_ctx = worker_ctx


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        worker_ctx = getattr(_current, "worker_ctx", None)
        if worker_ctx is not None:
            actor = worker_ctx.data.get("actor") if isinstance(worker_ctx.data, dict) else None
            entry.update(
                service=worker_ctx.service_name,
                entrypoint=worker_ctx.entrypoint.method_name,
                call_id=worker_ctx.call_id,
                actor_id=actor.get("id") if isinstance(actor, dict) else None,
            )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class WithoutQueryStrings(logging.Filter):
    """Access log lines without their query strings: a client may put a password or a token in one."""

    _query = re.compile(r'("[A-Z]+ [^ ?"]*)\?[^ "]*')

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._query.sub(r"\1?[query removed]", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True
