"""Event handling in batches: one worker and one transaction for up to ``batch_size`` events.

A worker per event spends most of its time on per-message overhead (a transaction,
inbox lookups, an acknowledgement); an import of 20,000 users arrives as 20,000
events at once. The handler here consumes the same subscription queue as Orchard's
``event_handler`` (same name, bindings, retries and dead letters) with a larger
prefetch, and hands the method a list of decoded events that were not handled
before. If a batch fails, its events are retried one by one, so one bad event
cannot hold back the others and only it is retried or dead-lettered.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import eventlet
from nameko.exceptions import ContainerBeingKilled

from shared import metrics
from shared.contracts.base import Event
from shared.entrypoints import OrchardEventHandler, ParkingQueueConsumer

PREFETCH = 1000


class _AckWindow:
    """Deliveries finished on one channel; acknowledges the contiguous run from the oldest with one frame."""

    def __init__(self) -> None:
        self.settled_up_to = 0  # every delivery tag up to here is acknowledged or requeued
        self.finished: dict[int, bool] = {}  # tag -> needs an ack (False: it was requeued)

    def finish(self, tag: int, ack: bool) -> int | None:
        """The tag to acknowledge with ``multiple=True``, if the run from the oldest grew."""
        self.finished[tag] = ack
        highest = None
        while self.settled_up_to + 1 in self.finished:
            self.settled_up_to += 1
            if self.finished.pop(self.settled_up_to):
                highest = self.settled_up_to
        return highest


class _BulkQueueConsumer(ParkingQueueConsumer):
    """A queue consumer of its own: batches may hold more messages than the pool has workers,
    and a batch is acknowledged with one frame, not one per message."""

    @property
    def prefetch_count(self) -> int:
        return PREFETCH

    def setup(self) -> None:
        super().setup()
        self._windows: dict[Any, _AckWindow] = {}  # per channel: delivery tags restart on a new channel

    def _window(self, message: Any) -> _AckWindow:
        if message.channel not in self._windows:
            self._windows = {message.channel: _AckWindow()}  # older channels are gone with their deliveries
        return self._windows[message.channel]

    def ack_message(self, message: Any) -> None:
        if message.channel.connection:
            tag = self._window(message).finish(message.delivery_tag, ack=True)
            if tag is not None:
                try:
                    message.channel.basic_ack(tag, multiple=True)
                except ConnectionError:  # the broker takes the deliveries back itself
                    pass

    def requeue_message(self, message: Any) -> None:
        if message.channel.connection:
            tag = self._window(message).finish(message.delivery_tag, ack=False)
            try:
                message.requeue()
                if tag is not None:
                    message.channel.basic_ack(tag, multiple=True)
            except ConnectionError:
                pass


class BatchedEventHandler(OrchardEventHandler):
    queue_consumer = _BulkQueueConsumer()

    def __init__(self, source: str, event_type: str, batch_size: int = 200, max_wait: float = 0.05, **kwargs: Any):
        super().__init__(source, event_type, **kwargs)
        self.batch_size, self.max_wait = batch_size, max_wait

    def setup(self) -> None:
        super().setup()
        self._pending: list[tuple[Any, Any]] = []
        self._timer: Any = None
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        self._flush()
        super().stop()

    def handle_message(self, body: Any, message: Any) -> None:
        self._pending.append((body, message))
        if len(self._pending) >= self.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = eventlet.spawn_after(self.max_wait, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self._dispatch(batch)

    def _dispatch(self, batch: list[tuple[Any, Any]]) -> None:
        if self._stopping and len(batch) == 1:
            # a failed batch's events, one by one, after the service began to stop: back to the queue while its
            # channel is open (retried or dead-lettered after the restart, their attempts counted once)
            self.queue_consumer.requeue_message(batch[0][1])
            return
        context_data = self.unpack_message_headers(batch[0][1])
        try:
            self.container.spawn_worker(self, ([body for body, _ in batch],), {}, context_data=context_data,
                                        handle_result=functools.partial(self._batch_done, batch))
        except ContainerBeingKilled:
            for _, message in batch:
                self.queue_consumer.requeue_message(message)

    def _batch_done(self, batch: list[tuple[Any, Any]], worker_ctx: Any, result: Any = None, exc_info: Any = None) -> Any:
        if exc_info is None or len(batch) == 1:
            for _, message in batch:  # acknowledge, or (a single event) retry later / dead-letter
                super().handle_result(message, worker_ctx, result, exc_info)
        else:  # outside this worker, which still holds its slot in the pool
            eventlet.spawn(lambda: [self._dispatch([item]) for item in batch])
        return result, exc_info


def batched_event_handler(event_cls: type[Event], batch_size: int = 200) -> Callable[[Callable], Callable]:
    """Handle ``event_cls`` events in batches: the method gets the list of events not handled before."""
    def decorate(fn: Callable) -> Callable:
        handler = fn.__name__

        @functools.wraps(fn)
        def handle_batch(self: Any, payloads: list[Any]) -> Any:
            events = list({e.event_id: e for e in (event_cls.from_payload(p) for p in payloads)}.values())
            claimed = self.db.claim_events(handler, [e.event_id for e in events])
            fresh = [e for e in events if e.event_id in claimed]
            if len(fresh) < len(payloads):
                metrics.EVENTS_DUPLICATE.labels(self.name, handler).inc(len(payloads) - len(fresh))
            result = fn(self, fresh) if fresh else None
            self.db.finish_events()
            return result

        return BatchedEventHandler.decorator(event_cls.SOURCE, event_cls.TYPE, batch_size=batch_size)(handle_batch)

    return decorate

