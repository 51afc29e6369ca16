"""Publishes what services wrote to their outbox table, after the transaction commits.

A worker's commit wakes the relay, which publishes pending rows in order,
persistently and with publisher confirms, and deletes them once RabbitMQ has
confirmed them. If the process dies between the commit and the publish, the rows
are still there and the next relay pass (this replica's or another's) sends
them: delivery is at least once, and subscribers deduplicate by event id.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import eventlet
import sqlalchemy as sa
from eventlet.event import Event as GreenEvent
from kombu import Queue
from kombu.messaging import Exchange
from kombu import Connection
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.events import get_event_exchange

from shared import metrics
from shared.contracts.subscriptions import subscriptions_of_source

log = logging.getLogger(__name__)

BATCH_SIZE = 500
POLL_SECONDS = 2.0  # picks up rows left by a crashed process or another replica
COUNT_EVERY_SECONDS = 1.0
CONFIRM_TIMEOUT_SECONDS = 30
INBOX_RETENTION = timedelta(days=14)


class BatchPublisher:
    """Publishes persistent messages in batches and waits once per batch for the broker's confirms.

    Waiting for a confirm after every message (what Nameko's publisher does) costs a
    broker round trip per event; with one wait per batch the broker confirms a whole
    batch at once. A batch counts as published only when every message in it is
    confirmed; anything else closes the connection and raises, and the caller keeps
    the rows to publish them again (subscribers deduplicate by event id).
    """

    def __init__(self, amqp_uri: str, declare: list[Any]):
        self.amqp_uri = amqp_uri
        self.declare = declare
        self._connection: Connection | None = None
        self._channel: Any = None
        self._next_tag = 0
        self._unconfirmed: set[int] = set()
        self._refused = False

    def publish(self, exchange: str, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Publish ``(routing_key, JSON text, headers)`` messages; returns once all are confirmed."""
        try:
            channel = self._open()
            for routing_key, body, headers in messages:
                self._next_tag += 1
                self._unconfirmed.add(self._next_tag)
                message = channel.prepare_message(
                    body.encode(), content_type="application/json", content_encoding="utf-8",
                    headers=headers, properties={"delivery_mode": 2},
                )
                channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
            while self._unconfirmed and not self._refused:
                self._connection.drain_events(timeout=CONFIRM_TIMEOUT_SECONDS)
            if self._refused:
                raise ConnectionError("the broker refused (nacked) events; they stay in the outbox")
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # already broken: nothing left to release
                pass
        self._connection = self._channel = None

    def _open(self) -> Any:
        if self._channel is None:
            self._connection = Connection(self.amqp_uri, heartbeat=0)
            self._connection.connect()
            channel = self._connection.channel()
            for entity in self.declare:
                entity.bind(channel).declare()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            self._channel, self._next_tag, self._unconfirmed, self._refused = channel, 0, set(), False
        return self._channel

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self._unconfirmed = {tag for tag in self._unconfirmed if tag > delivery_tag}
        else:
            self._unconfirmed.discard(delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool, *args: Any) -> None:
        self._refused = True


class OutboxRelay:
    def __init__(self, container: Any, engine: sa.engine.Engine, kernel: Any):
        self.service_name = container.service_name
        self.engine = engine
        self.outbox = kernel.outbox
        self.inbox = kernel.inbox
        self.exchange: Exchange = get_event_exchange(self.service_name, container.config)
        # declare subscribers' queues so no event is lost before they first start
        declare: list[Any] = [self.exchange] + [
            Queue(s.queue_name, exchange=self.exchange, routing_key=s.event.TYPE, durable=True, auto_delete=False)
            for s in subscriptions_of_source(self.service_name)
        ]
        self.publisher = BatchPublisher(container.config[AMQP_URI_CONFIG_KEY], declare)
        self._wakeup = GreenEvent()
        self._stopping = GreenEvent()
        self._running = False
        self._thread = None

    def start(self) -> None:
        self._running = True
        self._thread = eventlet.spawn(self._run)

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self.wake()
            if not self._stopping.ready():
                self._stopping.send(True)
            with eventlet.Timeout(10, False):  # let a pass in progress finish its batch
                self._thread.wait()
            self._thread.kill()
            self._thread = None
        self.publisher.close()

    def wake(self) -> None:
        if not self._wakeup.ready():
            self._wakeup.send(True)

    def _run(self) -> None:
        passes, counted_at = 0, 0.0
        while self._running:
            with eventlet.Timeout(POLL_SECONDS, False):
                self._wakeup.wait()
            self._wakeup = GreenEvent()
            try:
                while self.drain_once() == BATCH_SIZE:  # a short batch was the last one
                    pass
                # at most once a second: a commit wakes the relay, and counting after every batch would rescan a backlog
                if time.monotonic() - counted_at >= COUNT_EVERY_SECONDS:
                    self._count_pending()
                    counted_at = time.monotonic()
                passes += 1
                if passes % 1000 == 1:
                    self._prune_inbox()
            except Exception:  # the broker or the database is away: keep the rows, try again later
                log.warning("outbox relay for %s could not publish; will retry", self.service_name, exc_info=True)
                with eventlet.Timeout(POLL_SECONDS, False):  # a commit does not cut the pause short, a stop does
                    self._stopping.wait()

    def drain_once(self) -> int:
        """Publish one batch of pending events; the number published."""
        c = self.outbox.c
        # the payload as the JSON text it is stored as: decoding it only to encode it again cost more than
        # publishing it (an ADE sync page's event is ~100 kB)
        query = (sa.select(c.id, c.event_id, c.event_type, sa.cast(c.payload, sa.Text).label("payload"))
                 .order_by(c.id).limit(BATCH_SIZE))
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as connection:
                # replicas share the work: the rows stay locked while they are published
                rows = connection.execute(query.with_for_update(skip_locked=True)).all()
                self._publish(rows)
                self._delete(connection, rows)
        else:
            # SQLite: one connection per process, shared by every worker; it is never held while
            # waiting for the broker's confirms, or requests would queue behind a large drain
            with self.engine.begin() as connection:
                rows = connection.execute(query).all()
            self._publish(rows)
            with self.engine.begin() as connection:
                self._delete(connection, rows)
        return len(rows)

    def _publish(self, rows: list[Any]) -> None:
        if not rows:
            return
        self.publisher.publish(self.exchange.name, [
            (row.event_type, row.payload, {"nameko.call_id_stack": [f"{self.service_name}.outbox.{row.event_id}"]})
            for row in rows
        ])
        for row in rows:
            metrics.EVENTS_PUBLISHED.labels(self.service_name, row.event_type).inc()

    def _delete(self, connection: sa.Connection, rows: list[Any]) -> None:
        """Forget the published rows."""
        if rows:
            # by event id: on SQLite a row id freed by another replica's delete is reused by the next insert
            connection.execute(self.outbox.delete().where(self.outbox.c.event_id.in_([row.event_id for row in rows])))

    def _count_pending(self) -> None:
        with self.engine.connect() as connection:
            pending = connection.execute(sa.select(sa.func.count()).select_from(self.outbox)).scalar_one()
        metrics.OUTBOX_PENDING.labels(self.service_name).set(pending)

    def _prune_inbox(self) -> None:
        from shared.storage import utc_now

        with self.engine.begin() as connection:
            connection.execute(self.inbox.delete().where(self.inbox.c.handled_at < utc_now() - INBOX_RETENTION))
