"""Inspecting and replaying parked events (``<handler queue>.dead-letters``).

An operator lists what was parked and why, fixes the cause, then replays: each
message goes back to exactly the handler queue it failed on (not to every
subscriber of the event), with its attempt count reset.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Iterator

from amqp.exceptions import NotFound as QueueNotFound
from kombu import Connection

from shared.contracts.subscriptions import SUBSCRIPTIONS

log = logging.getLogger(__name__)


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dead-letters"


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    event_type: str
    event_id: str | None
    attempts: int
    error: str
    failed_at: str | None

    @classmethod
    def from_message(cls, queue: str, headers: dict[str, Any], body: bytes) -> "DeadLetter":
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        return cls(
            queue=queue,
            event_type=queue.split("--")[0].split("-", 2)[-1] if queue.startswith("evt-") else "",
            event_id=payload.get("event_id") if isinstance(payload, dict) else None,
            attempts=int(headers.get("x-orchard-attempts", 0)),
            error=str(headers.get("x-orchard-error", "")),
            failed_at=headers.get("x-orchard-failed-at"),
        )


def handler_queues() -> list[str]:
    return [s.queue_name for s in SUBSCRIPTIONS]


def _drain(channel: Any, queue: str) -> Iterator[Any]:
    try:
        channel.queue_declare(dead_letter_queue_name(queue), passive=True)
    except QueueNotFound:
        return
    while (message := channel.basic_get(dead_letter_queue_name(queue), no_ack=False)) is not None:
        yield message


def list_dead_letters(amqp_uri: str, queues: list[str] | None = None) -> list[DeadLetter]:
    """Every parked message, left where it is."""
    found: list[DeadLetter] = []
    for queue in queues or handler_queues():
        with Connection(amqp_uri) as connection:
            channel = connection.channel()
            held = []
            for message in _drain(channel, queue):
                held.append(message.delivery_tag)
                found.append(DeadLetter.from_message(queue, dict(message.headers or {}), message.body))
            for tag in held:
                channel.basic_reject(tag, requeue=True)
    return found


def _exists(amqp_uri: str, queue: str) -> bool:
    with Connection(amqp_uri) as connection:
        try:
            connection.channel().queue_declare(queue, passive=True)  # a missing queue closes the channel
        except QueueNotFound:
            return False
    return True


def replay_dead_letters(amqp_uri: str, queues: list[str] | None = None) -> int:
    """Send parked messages back to their handler queues; how many were replayed.

    A handler queue that no longer exists (its service renamed or removed) keeps its parked messages:
    RabbitMQ would drop a message sent to a queue that is not there.
    """
    replayed = 0
    for queue in queues or handler_queues():
        if not _exists(amqp_uri, queue):
            log.warning("dead letters of %s were left in place: the queue itself does not exist", queue)
            continue
        with Connection(amqp_uri) as connection:
            channel = connection.channel()
            channel.confirm_select()
            for message in list(_drain(channel, queue)):
                headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-orchard-")}
                channel.basic_publish_confirm(
                    channel.prepare_message(message.body, content_type=message.content_type,
                                            content_encoding=message.content_encoding, headers=headers,
                                            properties={"delivery_mode": 2}),
                    exchange="", routing_key=queue,
                )
                channel.basic_ack(message.delivery_tag)
                replayed += 1
    return replayed
