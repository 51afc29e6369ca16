"""Orchard's entrypoints: Nameko's, plus transactions, typed errors, retries and leases.

- ``rpc``: commits the worker's unit of work before the reply is sent; an
  unexpected exception reaches the caller as ``InternalError`` with a reference
  to the service log, never as a stack trace.
- ``event_handler(EventClass)``: decodes the payload with the shared contract,
  skips redeliveries (inbox keyed by event id, in the same transaction as the
  handler's changes), commits before the message is acknowledged, and sends a
  failing message to a delayed retry queue, then to a dead-letter queue.
- ``periodic(interval)``: a jittered timer that runs on one replica at a time.
- ``http(method, url)``: on the service's own address, errors as JSON.

Each commits ``self.db`` (the service's ``Database`` unit of work) when the
method returns; an exception rolls it back.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import random
import socket
import sys
from datetime import timedelta
from typing import Any, Callable

import eventlet
import kombu.serialization
from amqp.exceptions import AMQPError
from eventlet import Timeout
from kombu import Queue
from kombu.exceptions import OperationalError
from nameko import exceptions as nameko_exceptions
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY, PERSISTENT, WEB_SERVER_CONFIG_KEY
from nameko.events import EventHandler
from nameko.exceptions import RpcTimeout, UnknownService
from nameko.extensions import DependencyProvider
from nameko.messaging import QueueConsumer
from nameko.rpc import ReplyListener, Rpc, RpcProxy, ServiceProxy
from nameko.timer import Timer
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import WebServer, parse_address
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from shared import errors, leases, logs, metrics
from shared.auth import Actor, actor_from_context, require, system_actor
from shared.call_deadlines import DeadlineMethodProxy
from shared.config import service_settings
from shared.contracts.base import Event
from shared.dead_letters import dead_letter_queue_name
from shared.storage import Database, unique_key_taken, utc_now
from shared.unicode_text import may_hold_unstorable_text, refuse_unstorable_text

log = logging.getLogger(__name__)

for _error in errors.ALL_ERRORS:  # callers get our error types back, not RemoteError
    nameko_exceptions.registry[nameko_exceptions.get_module_path(_error)] = _error

#: seconds before each new attempt of a failed event; then it is dead-lettered (``EVENT_RETRY_DELAYS``)
DEFAULT_RETRY_DELAYS = (1, 5, 30, 120)
#: a message that could not be rerouted goes back to its queue after this pause, not straight into a busy loop
REQUEUE_PAUSE_SECONDS = 1.0
HTTP_STATUS = {
    errors.ValidationError: 400, errors.PermissionDenied: 403, errors.NotFound: 404,
    errors.Conflict: 409, errors.UpstreamError: 502,
}


def _committing(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def run_in_unit_of_work(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = fn(self, *args, **kwargs)
        self.db.commit()
        return result

    return run_in_unit_of_work


def _unexpected(worker_ctx: Any, exc_info: Any) -> errors.OrchardError:
    """What a caller learns of an exception that is not one of ours: a lost race on a unique key is a
    ``Conflict`` (the transaction was rolled back; trying again sees the winner's change), anything else an
    ``InternalError`` with a reference to the log."""
    key = unique_key_taken(exc_info[1])
    if key is None:
        return _internal_error(worker_ctx, exc_info)
    return _lost_race(f"{worker_ctx.service_name}.{worker_ctx.entrypoint.method_name}", key)


def _lost_race(where: str, key: str) -> errors.Conflict:
    log.warning("%s collided with a concurrent change on %s; answered Conflict", where, key)
    return errors.Conflict("another request changed the same record at the same moment; nothing was changed "
                           "by this one: look again, then retry if it is still needed")


def _internal_error(worker_ctx: Any, exc_info: Any) -> errors.InternalError:
    reference = worker_ctx.call_id
    log.error("unexpected error in %s.%s (reference %s)", worker_ctx.service_name,
              worker_ctx.entrypoint.method_name, reference, exc_info=exc_info)
    return errors.InternalError(
        f"Orchard could not complete {worker_ctx.service_name}.{worker_ctx.entrypoint.method_name} because of an "
        f"internal error (reference {reference}); the service's log has the details"
    )


class OrchardRpc(Rpc):
    def __init__(self, **kwargs: Any):
        kwargs.setdefault("expected_exceptions", errors.EXPECTED_ERRORS)
        super().__init__(**kwargs)

    def handle_message(self, body: Any, message: Any) -> None:
        raw = message.body if isinstance(message.body, (bytes, str)) else str(message.body)
        if may_hold_unstorable_text(raw) and isinstance(body, dict):  # refused before a worker starts
            for index, value in enumerate(body.get("args") or ()):
                refuse_unstorable_text(value, f"argument {index + 1}")
            for name, value in (body.get("kwargs") or {}).items():
                refuse_unstorable_text(value, str(name))
        super().handle_message(body, message)

    def check_signature(self, args: Any, kwargs: Any) -> None:
        """A call with missing or unknown arguments is a ``ValidationError`` naming them (Nameko checks the
        transaction wrapper's signature, which takes anything)."""
        method = getattr(self.container.service_cls, self.method_name)
        try:
            inspect.signature(method).bind(None, *args, **kwargs)
        except TypeError as exc:
            raise errors.ValidationError(f"{self.container.service_name}.{self.method_name}: {exc}") from None

    def handle_result(self, message: Any, worker_ctx: Any, result: Any, exc_info: Any) -> Any:
        if exc_info is None:
            # committed only once the reply is known to be sendable: an error then means nothing was changed. An
            # unsendable result is a programming error; Nameko's own answer to it would quote the value
            exc_info = _unsendable(result, message) or _committed(worker_ctx)
            result = None if exc_info else result
        if exc_info is not None:
            exc = exc_info[1]
            if not isinstance(exc, errors.ALL_ERRORS):
                exc = _unexpected(worker_ctx, exc_info)
            elif type(exc) not in errors.ALL_ERRORS:
                # a service's refinement of a shared error travels as the shared type callers know
                shared_type = next(cls for cls in type(exc).__mro__ if cls in errors.ALL_ERRORS)
                exc = shared_type(str(exc))
            exc_info = (type(exc), exc, None)
        return super().handle_result(message, worker_ctx, result, exc_info)


def _committed(worker_ctx: Any) -> Any:
    """Commit the worker's unit of work; the exception if that failed (a lost race on a unique key, say)."""
    try:
        worker_ctx.service.db.commit()
    except Exception:
        return sys.exc_info()
    return None


def _unsendable(result: Any, message: Any) -> Any:
    """Why ``result`` cannot be encoded as the request was (as its reply will be), or None."""
    try:
        kombu.serialization.dumps(result, kombu.serialization.registry.type_to_name[message.properties["content_type"]])
    except Exception:
        return sys.exc_info()
    return None


def rpc(fn: Callable | None = None, *, sensitive_arguments: tuple[str, ...] = ()) -> Any:
    """``@rpc`` or ``@rpc(sensitive_arguments=("password",))`` (redacted from traces)."""
    def decorate(method: Callable) -> Callable:
        # committed by ``OrchardRpc.handle_result``, once the reply is known to be sendable
        return OrchardRpc.decorator(sensitive_arguments=sensitive_arguments)(method)

    return decorate(fn) if fn is not None else decorate


def retry_delays(value: Any) -> tuple[float, ...]:
    """``EVENT_RETRY_DELAYS`` in seconds: a list, one number, or comma-separated text (``1,5,30``); unset is the
    default. Anything else stops the service at start: a delay that cannot be read would otherwise fail every
    reroute and return the event to its queue at once, over and over."""
    if value is None or value == "" or value == []:
        return DEFAULT_RETRY_DELAYS
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        delays = tuple(float(item) for item in items if not isinstance(item, bool))
    except (TypeError, ValueError):
        delays = ()
    if len(delays) != len(items) or not all(0 < delay <= 86400 for delay in delays):
        raise ValueError(f"EVENT_RETRY_DELAYS must be seconds between 0 and 86400, as a list or as "
                         f"comma-separated numbers (such as 1,5,30,120); it is {value!r}")
    return delays


class ParkingQueueConsumer(QueueConsumer):
    """Nameko's queue consumer, except that an event message nobody can decode (not JSON, a content type not
    accepted) is parked in its handler's dead-letter queue; kombu's default acknowledges it, and it is gone."""

    def get_consumers(self, consumer_cls: Any, channel: Any) -> Any:
        consumers = super().get_consumers(consumer_cls, channel)
        for provider, consumer in self._consumers.items():
            if isinstance(provider, OrchardEventHandler):
                consumer.on_decode_error = functools.partial(self._park_undecodable, provider)
        return consumers

    def _park_undecodable(self, provider: OrchardEventHandler, message: Any, exc: Exception) -> None:
        try:
            provider.park_undecodable(message, exc)
        except Exception:
            log.warning("could not park an undecodable %s message; returning it to its queue", provider.event_type,
                        exc_info=True)
            eventlet.sleep(REQUEUE_PAUSE_SECONDS)
            self.requeue_message(message)
            return
        self.ack_message(message)


class OrchardEventHandler(EventHandler):
    """A ``SERVICE_POOL`` handler whose failures are retried, then dead-lettered, never dropped."""

    queue_consumer = ParkingQueueConsumer()

    def setup(self) -> None:
        super().setup()
        self.retry_delays = retry_delays(self.container.config.get("EVENT_RETRY_DELAYS"))
        self.rerouter = Publisher(
            self.container.config[AMQP_URI_CONFIG_KEY], use_confirms=True, delivery_mode=PERSISTENT,
            serializer=self.container.config.get("serializer", "json"),
        )

    def handle_result(self, message: Any, worker_ctx: Any, result: Any = None, exc_info: Any = None) -> Any:
        if exc_info is not None:
            try:
                self._reroute(message, exc_info[1])
            except Exception:
                log.warning("could not reroute a failed %s event; returning it to its queue", self.event_type,
                            exc_info=True)
                eventlet.sleep(REQUEUE_PAUSE_SECONDS)
                self.queue_consumer.requeue_message(message)
                return result, exc_info
        self.queue_consumer.ack_message(message)
        return result, exc_info

    def park_undecodable(self, message: Any, exc: Exception) -> None:
        """Keep a message that cannot be decoded, as it came, in the dead-letter queue."""
        headers = dict(message.headers or {})
        headers["x-orchard-queue"] = self.queue.name
        headers["x-orchard-error"] = f"undecodable message ({message.content_type}): {type(exc).__name__}"
        headers["x-orchard-failed-at"] = utc_now().isoformat()
        target = self._dead_letters()
        log.error("an undecodable %s message was parked in %s", self.event_type, target.name)
        self.rerouter.publish(message.body, exchange="", routing_key=target.name, headers=headers, declare=[target],
                              content_type=message.content_type, content_encoding=message.content_encoding)

    def _dead_letters(self) -> Queue:
        metrics.DEAD_LETTERS.labels(self.container.service_name, self.method_name).inc()
        return Queue(dead_letter_queue_name(self.queue.name), durable=True, auto_delete=False)

    def _reroute(self, message: Any, exc: BaseException) -> None:
        queue = self.queue.name
        headers = dict(message.headers or {})
        attempts = int(headers.get("x-orchard-attempts", 0)) + 1
        headers["x-orchard-attempts"] = attempts
        headers["x-orchard-queue"] = queue
        headers["x-orchard-error"] = f"{type(exc).__name__}: {exc}"[:500]
        poison = isinstance(exc, errors.ValidationError)  # the payload itself is wrong: retrying cannot help
        delays = self.retry_delays
        if poison or attempts > len(delays):
            headers["x-orchard-failed-at"] = utc_now().isoformat()
            target = self._dead_letters()
            log.error("event %s dead-lettered to %s after %d attempt(s): %s", self.event_type, target.name,
                      attempts, headers["x-orchard-error"])
        else:
            delay_ms = int(float(delays[attempts - 1]) * 1000)
            # one queue per delay: messages expire in order, then RabbitMQ routes them back to the handler's queue
            target = Queue(f"{queue}.retry-{delay_ms}ms", durable=True, auto_delete=False, queue_arguments={
                "x-message-ttl": delay_ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue,
            })
            metrics.EVENTS_RETRIED.labels(self.container.service_name, self.method_name).inc()
        self.rerouter.publish(message.payload, exchange="", routing_key=target.name, headers=headers,
                              declare=[target])


def event_handler(event_cls: type[Event]) -> Callable[[Callable], Callable]:
    """Handle ``event_cls`` events: the method receives the decoded event, once per event id."""
    def decorate(fn: Callable) -> Callable:
        handler = fn.__name__

        @functools.wraps(fn)
        def handle_once(self: Any, payload: Any) -> Any:
            event = event_cls.from_payload(payload)
            if not self.db.claim_events(handler, [event.event_id]):
                metrics.EVENTS_DUPLICATE.labels(self.name, handler).inc()
                return None
            result = fn(self, event)
            self.db.finish_events()
            return result

        return OrchardEventHandler.decorator(event_cls.SOURCE, event_cls.TYPE)(handle_once)

    return decorate


class Periodic(Timer):
    """A timer with jitter that only one replica runs at a time.

    The replica that takes the lease keeps it while it runs the job (renewed every
    third of its term however long the job takes, and at every tick); if it dies, another
    takes over once the lease expires, after two intervals and ten seconds. A replica that
    stops cleanly gives the lease up. Keep intervals short (a minute or so) and let the job
    pick the work that is due, so failover is quick.
    """

    LEASE_SLACK = timedelta(seconds=10)  # beyond two intervals: what a slow tick or a paused process may take

    def __init__(self, interval: float, jitter: float = 0.1, **kwargs: Any):
        super().__init__(interval, **kwargs)
        self.jitter = jitter

    def setup(self) -> None:
        super().setup()
        self.lease_name = f"{self.container.service_name}.{self.method_name}"
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self.container):x}"

    def _database(self) -> Database:
        return next(d for d in self.container.dependencies if isinstance(d, Database))

    def _jittered_interval(self) -> float:
        return self.interval * (1 + random.uniform(-self.jitter, self.jitter))

    def _run(self) -> None:
        delay = 0 if self.eager else self._jittered_interval()
        while True:
            with Timeout(delay, exception=False):
                self.should_stop.wait()
                break
            try:
                self.tick()
            except Exception:
                # The database is away (a restart, a failover): skip this tick. Raising would end the
                # timer's thread and make nameko kill the container from inside that thread, a kill that
                # never completes because it kills its own thread on the way.
                metrics.SCHEDULED_RUNS.labels(self.container.service_name, self.method_name, "failed").inc()
                log.warning("scheduled job %s.%s could not take its lease; will try again",
                            self.container.service_name, self.method_name, exc_info=True)
            delay = self._jittered_interval()

    def tick(self) -> None:
        database = self._database()
        # two intervals plus slack for a slow tick: only a replica that stopped ticking loses the lease
        hold = timedelta(seconds=2 * self.interval) + self.LEASE_SLACK
        if not leases.acquire(database.engine, database.kernel.leases, self.lease_name, self.holder, hold):
            metrics.SCHEDULED_RUNS.labels(self.container.service_name, self.method_name, "skipped").inc()
            return
        metrics.SCHEDULED_RUNS.labels(self.container.service_name, self.method_name, "ran").inc()

        def renew() -> bool:
            return leases.acquire(database.engine, database.kernel.leases, self.lease_name, self.holder, hold)

        with leases.renewed(renew, every=hold.total_seconds() / 3):  # a long run must not let another replica start
            self.handle_timer_tick()
            self.worker_complete.wait()
        self.worker_complete.reset()
        leases.hold_for(database.engine, database.kernel.leases, self.lease_name, self.holder, hold)

    def stop(self) -> None:
        super().stop()
        try:  # the next replica need not wait out the term (jobs pick the work that is due, so an early run is safe)
            database = self._database()
            leases.hold_for(database.engine, database.kernel.leases, self.lease_name, self.holder, timedelta(0))
        except Exception:
            log.warning("scheduled job %s.%s could not give up its lease; it expires by itself",
                        self.container.service_name, self.method_name, exc_info=True)


def periodic(interval: float, jitter: float = 0.1, eager: bool = False) -> Callable[[Callable], Callable]:
    def decorate(fn: Callable) -> Callable:
        return Periodic.decorator(interval=interval, jitter=jitter, eager=eager)(_committing(fn))

    return decorate


class ServiceWebServer(WebServer):
    """Nameko's web server, bound to ``SERVICES.<name>.http_address`` so services don't collide."""

    @property
    def bind_addr(self) -> Any:
        settings = service_settings(self.container.config, self.container.service_name)
        address = settings.get("http_address") or self.container.config.get(WEB_SERVER_CONFIG_KEY, "0.0.0.0:8000")
        return parse_address(address)


# the largest request body any endpoint reads (a 5,000-user API write is about 3 MB); a larger one is refused
# with 413 before it is read, not parsed whole into memory by the one process that serves every request
MAX_HTTP_BODY_BYTES = 8 * 1024 * 1024
MAX_FORM_PARTS = 100


class OrchardHttp(HttpRequestHandler):
    server = ServiceWebServer()

    def __init__(self, method: str, url: str, **kwargs: Any):
        kwargs.setdefault("expected_exceptions", errors.EXPECTED_ERRORS + (HTTPException,))
        super().__init__(method, url, **kwargs)

    def handle_request(self, request: Any) -> Response:
        request.max_content_length = MAX_HTTP_BODY_BYTES
        request.max_form_memory_size = MAX_HTTP_BODY_BYTES
        request.max_form_parts = MAX_FORM_PARTS
        return super().handle_request(request)

    def response_from_exception(self, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 500:  # 413 and the like: the caller's
            body = {"error": exc.name.replace(" ", ""), "message": exc.description or exc.name}
            return Response(json.dumps(body), status=exc.code, mimetype="application/json")
        key = unique_key_taken(exc)
        if key is not None:
            exc = _lost_race(f"HTTP {self.method} {self.url}", key)
        status = next((code for cls, code in HTTP_STATUS.items() if isinstance(exc, cls)), 500)
        if status == 500 and not isinstance(exc, errors.InternalError):
            exc = errors.InternalError(f"internal error in {self.container.service_name}; see the service log")
            log.error("unexpected error in HTTP %s %s", self.method, self.url, exc_info=True)
        body = {"error": type(exc).__name__, "message": str(exc)}
        return Response(json.dumps(body), status=status, mimetype="application/json")


def http(method: str, url: str) -> Callable[[Callable], Callable]:
    def decorate(fn: Callable) -> Callable:
        return OrchardHttp.decorator(method, url)(_committing(fn))

    return decorate


class Access:
    """The actor of the current worker, and the policy checks on it."""

    def __init__(self, worker_ctx: Any):
        self._worker_ctx = worker_ctx

    @property
    def actor(self) -> Actor:
        return actor_from_context(self._worker_ctx.data.get("actor"))

    def require(self, permission: str) -> Actor:
        return require(self.actor, permission)


class Auth(DependencyProvider):
    """Gives workers the acting user; timers, event handlers and HTTP act as the service itself.

    HTTP entrypoints authenticate their callers themselves (API tokens, bearer
    tokens, devices) and call other services as the system.
    """

    def get_dependency(self, worker_ctx: Any) -> Access:
        return Access(worker_ctx)

    def worker_setup(self, worker_ctx: Any) -> None:
        logs.bind_worker(worker_ctx)
        if not isinstance(worker_ctx.entrypoint, Rpc):
            worker_ctx.data["actor"] = system_actor(self.container.service_name).to_context()


class _AwaitedReply:
    """The reply listener as one call sees it, remembering the reply that call awaits.

    Nameko's listener keeps an entry per call until its reply arrives; a call that
    timed out, expired in its queue or was never published would keep one for good,
    so the call takes its entry back when it stops waiting.
    """

    def __init__(self, listener: ReplyListener):
        self._listener = listener
        self._correlation_id: str | None = None

    @property
    def routing_key(self) -> str:
        return self._listener.routing_key

    def get_reply_event(self, correlation_id: str) -> Any:
        self._correlation_id = correlation_id
        return self._listener.get_reply_event(correlation_id)

    def forget(self) -> None:
        self._listener._reply_events.pop(self._correlation_id, None)  # already gone when the reply came


class _TimedServiceProxy:
    def __init__(self, proxy: ServiceProxy, timeout: float):
        self._proxy, self._service, self._timeout = proxy, proxy.service_name, timeout

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            awaited = _AwaitedReply(self._proxy.reply_listener)
            method_proxy = DeadlineMethodProxy(self._proxy.worker_ctx, self._service, method, awaited,
                                               timeout=self._timeout, **self._proxy.options)
            try:
                with eventlet.Timeout(self._timeout):  # the publish too: a broker under an alarm blocks publishers
                    return method_proxy.call_async(*args, **kwargs).result()
            except UnknownService:
                raise errors.UpstreamError(
                    f"the {self._service} service is not running (its RPC queue does not exist); start it"
                ) from None
            except (eventlet.Timeout, RpcTimeout):
                raise errors.UpstreamError(
                    f"the {self._service} service did not answer {method} within {self._timeout:g} s (a call not "
                    f"started by then is not run); check that it is running"
                ) from None
            except (OSError, AMQPError, OperationalError):
                log.warning("could not call %s.%s through RabbitMQ", self._service, method, exc_info=True)
                raise errors.UpstreamError(
                    f"could not call the {self._service} service: RabbitMQ is out of reach; try again shortly"
                ) from None
            finally:
                awaited.forget()

        return call


class ServiceRpc(RpcProxy):
    """An RPC proxy to another Orchard service with a timeout (Nameko's has none)."""

    def __init__(self, target_service: str, timeout: float | None = None, **kwargs: Any):
        super().__init__(target_service, **kwargs)
        self.timeout = timeout

    def setup(self) -> None:
        super().setup()
        self.timeout = self.timeout or float(self.container.config.get("RPC_TIMEOUT", 30))
        # a request still queued when its caller gives up expires: a service that comes back later must not
        # run a call whose caller was told it failed (and may have tried again)
        self.options["expiration"] = self.timeout

    def get_dependency(self, worker_ctx: Any) -> _TimedServiceProxy:
        return _TimedServiceProxy(super().get_dependency(worker_ctx), self.timeout)
