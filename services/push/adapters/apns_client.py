"""Sending MDM wake-ups to APNs over HTTP/2, the push certificate as TLS client certificate.

One long-lived client per topic keeps one HTTP/2 connection open (``http2.Http2Connection``),
and the pushes of a batch run concurrently in an eventlet ``GreenPool``, each on its own
stream of that shared connection, so a large fan-out neither opens a connection per device
nor blocks the hub. (On ``httpx``'s HTTP/2 client the same fan-out ran at a quarter of this
rate, its per-request overhead dominating; ``bench/push_fanout.py`` and ``bench/README.md``.)

Per device the outcome is APNs's: ``200`` delivered; ``410`` (``Unregistered``),
``BadDeviceToken`` and ``DeviceTokenNotForTopic`` are permanent (the caller stops pushing to
that device); ``429`` and ``5xx`` are retried with jittered exponential backoff, as are a
GOAWAY and a dropped connection (an MDM push is an idempotent wake-up, so sending it twice
is harmless). Other errors (a topic or certificate problem) are reported without retry.

When APNs cannot be reached, every push of a batch waits for the same connection attempt
and takes its outcome; a failed attempt is remembered until the pushes it failed are due to
retry (a refused certificate for 30 s), so a batch costs one attempt per retry, not one per
device. A batch ends within ``batch_seconds`` however APNs behaves: a device not answered by
then is reported with status None and what went wrong.

A renewed certificate (a new serial) gets a new client at once, and the one it replaces is
retired rather than closed: the batches already running on it, or about to, finish there, on
the old certificate, still valid, and it closes once they have ended and one batch's time has
passed.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import secrets
import shutil
import ssl
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import eventlet
import eventlet.semaphore
import eventlet.tpool
from cryptography.hazmat.primitives import serialization

from services.push.adapters.http2 import ConnectionLost, Http2Connection
from shared import green

PRODUCTION_URL = "https://api.push.apple.com"
REFUSAL_MEMORY_SECONDS = 30.0
PERMANENT_REASONS = frozenset({"Unregistered", "ExpiredToken", "BadDeviceToken", "DeviceTokenNotForTopic"})


@dataclass(frozen=True)
class Push:
    device_token: str  # hex, as the device reported it in TokenUpdate
    push_magic: str


@dataclass(frozen=True)
class PushResult:
    device_token: str
    status: int | None  # None: no answer from APNs (connection kept failing)
    reason: str | None  # APNs's reason, or what went wrong on the connection
    apns_id: str | None
    attempts: int
    seconds: float  # from the first attempt to the final answer

    @property
    def delivered(self) -> bool:
        return self.status == 200

    @property
    def permanent(self) -> bool:
        """APNs says this token will never work again: stop pushing to the device."""
        return self.status == 410 or self.reason in PERMANENT_REASONS


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        # equal jitter: at least half the exponential step, so a burst of 429s spreads out
        shortest = self.shortest_delay(attempt)
        return shortest + random.uniform(0, shortest)

    def shortest_delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) / 2


CLOSED = "the client was closed (its certificate was replaced)"


@dataclass(frozen=True)
class _ConnectFailure:
    reason: str
    retryable: bool
    until: float  # monotonic time until which pushes take this failure instead of connecting again

    def error(self) -> ConnectionLost:
        return ConnectionLost(self.reason, retryable=self.retryable)


class ApnsClient:
    """Sends MDM pushes for one topic over one long-lived HTTP/2 connection."""

    def __init__(
        self,
        *,
        topic: str,
        certificate_pem: str,
        private_key_pem: str,
        base_url: str = PRODUCTION_URL,
        ca_file: str | None = None,
        concurrency: int = 500,
        retry: RetryPolicy = RetryPolicy(),
        expiration_seconds: int = 86400,
        timeout: float = 15.0,
        batch_seconds: float = 45.0,
    ):
        self.topic = topic
        url = urlsplit(base_url)
        self._host, self._port = url.hostname or "", url.port or 443
        # key decryption and re-encryption take tens of milliseconds: keep them off the hub
        self._ssl_context = eventlet.tpool.execute(client_tls_context, certificate_pem, private_key_pem, ca_file)
        self._concurrency = concurrency
        self._retry = retry
        self._expiration_seconds = expiration_seconds
        self._timeout = timeout
        self._batch_seconds = batch_seconds
        self._connection: Http2Connection | None = None
        self._connecting: green.Pending[Http2Connection | _ConnectFailure] | None = None
        self._connect_lock = eventlet.semaphore.Semaphore(1)
        self._connect_attempts = 0
        self._failure: _ConnectFailure | None = None  # the last connection attempt's, while remembered
        self._failed_attempts = 0  # connection attempts failed in a row
        self._closed = False
        # replaced by a renewed certificate's client a batch's time ago: closes when no send runs here
        self._retirement_over = False
        self._retirement: eventlet.greenthread.GreenThread | None = None  # ends the retirement a batch's time on
        self._sending = 0  # send() and send_one() calls running
        self._static_headers = [
            (b"apns-topic", topic.encode()),
            (b"apns-push-type", b"mdm"),
            (b"apns-priority", b"10"),
            (b"content-type", b"application/json"),
        ]

    def send(self, pushes: Iterable[Push]) -> list[PushResult]:
        """Push every device concurrently; results in the order given, all within ``batch_seconds``."""
        deadline = time.monotonic() + self._batch_seconds
        pool = eventlet.GreenPool(self._concurrency)
        with self._in_use():
            return list(pool.imap(functools.partial(self._send_one, deadline=deadline), pushes))

    def send_one(self, push: Push, deadline: float | None = None) -> PushResult:
        """Push one device, retrying what may pass, until APNs answers or ``deadline`` (monotonic) passes."""
        with self._in_use():
            return self._send_one(push, deadline)

    @property
    def closed(self) -> bool:
        return self._closed

    def retire(self) -> None:
        """Replaced by a renewed certificate's client: close once the sends running here have ended, and no
        sooner than one batch's time from now.

        Their pushes are in flight on this connection, under the old certificate, which is still valid:
        closing now would fail every one of them. A caller handed this client just before it was replaced
        may not have started its send yet: the batch's time covers it. Each send ends by its batch's
        deadline, so this closes within two batches' time at the latest.
        """
        self._retirement = eventlet.spawn_after(self._batch_seconds, self._end_retirement)

    def _end_retirement(self) -> None:
        self._retirement_over = True
        if not self._sending:
            self.close()

    def _send_one(self, push: Push, deadline: float | None = None) -> PushResult:
        started = time.monotonic()
        deadline = started + self._batch_seconds if deadline is None else deadline
        path = b"/3/device/" + push.device_token.encode()
        body = json.dumps({"mdm": push.push_magic}, separators=(",", ":")).encode()
        status, reason, apns_id = None, None, None
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            status, reason, apns_id, retryable = self._attempt(path, body, deadline)
            if not retryable or attempt >= self._retry.max_attempts:
                break
            eventlet.sleep(min(self._retry.delay(attempt), max(0.0, deadline - time.monotonic())))
        if not attempt:
            reason = f"not sent: {self._batch_over}"
        return PushResult(push.device_token, status, reason, apns_id, attempt, time.monotonic() - started)

    def close(self) -> None:
        if self._retirement is not None:
            self._retirement.cancel()  # nothing left to wait for (no effect when it is the one closing)
        self._closed = True  # an attempt still connecting closes what it gets
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        self._sending += 1
        try:
            yield
        finally:
            self._sending -= 1
            if self._retirement_over and not self._sending:
                self.close()

    def _attempt(self, path: bytes, body: bytes, deadline: float) -> tuple[int | None, str | None, str | None, bool]:
        headers = [*self._static_headers, (b"apns-expiration", b"%d" % (time.time() + self._expiration_seconds))]
        try:
            connection = self._usable_connection(deadline)
            timeout = min(self._timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise ConnectionLost(f"connected, but {self._batch_over}")
            response = connection.request(path, headers, body, timeout)
        except ConnectionLost as exc:
            return None, str(exc), None, exc.retryable
        apns_id = response.headers.get(b"apns-id", b"").decode() or None
        if response.status == 200:
            return 200, None, apns_id, False
        return response.status, _reason(response.status, response.body), apns_id, _retryable(response.status)

    def _usable_connection(self, deadline: float) -> Http2Connection:
        if self._closed:
            raise ConnectionLost(CLOSED, retryable=False)
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        attempts = self._connect_attempts
        # one push at a time: once a connection attempt ends, the pushes waiting for it go on one per turn of
        # the hub rather than all in one burst that would keep every other green thread waiting
        if not self._connect_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._still_connecting()
        try:
            connection = self._connection
            if connection is not None and connection.usable:
                return connection
            failure = self._failure
            if failure is not None and (self._connect_attempts != attempts or time.monotonic() < failure.until):
                raise failure.error()  # the attempt this push waited for failed, or one failed a moment ago
            if self._connecting is None:
                self._connecting = green.spawn(self._connect)
            with eventlet.Timeout(max(0.0, deadline - time.monotonic()), False):
                outcome = self._connecting.wait()
                if isinstance(outcome, _ConnectFailure):
                    raise outcome.error()
                return outcome
            raise self._still_connecting()
        finally:
            self._connect_lock.release()

    def _still_connecting(self) -> ConnectionLost:
        earlier = f" (the attempt before: {self._failure.reason})" if self._failure is not None else ""
        return ConnectionLost(f"still connecting to {self._host}:{self._port} when {self._batch_over}{earlier}")

    @property
    def _batch_over(self) -> str:
        return f"the batch's {self._batch_seconds:g} s were over"

    def _connect(self) -> Http2Connection | _ConnectFailure:
        """One connection attempt, in a green thread of its own: it runs to its own timeout, whichever batch's
        deadline passes meanwhile, and every push waiting for it meanwhile takes its outcome."""
        try:
            connection = Http2Connection(self._host, self._port, self._ssl_context, connect_timeout=self._timeout)
        except ConnectionLost as exc:
            self._failed_attempts += 1
            remembered = self._retry.shortest_delay(self._failed_attempts) if exc.retryable else REFUSAL_MEMORY_SECONDS
            self._failure = _ConnectFailure(str(exc), exc.retryable, time.monotonic() + remembered)
            return self._failure
        finally:
            self._connecting = None
            self._connect_attempts += 1
        if self._closed:  # closed meanwhile (retired, or at shutdown): nothing else would ever close it
            connection.close()
            return _ConnectFailure(CLOSED, False, time.monotonic())
        previous, self._connection = self._connection, connection
        self._failure, self._failed_attempts = None, 0
        if previous is not None and not previous.draining:  # a draining one closes itself once answered
            previous.close()
        return connection


class ApnsClients:
    """One long-lived client per topic; a renewed certificate (new serial) replaces its client, which retires."""

    def __init__(self, *, base_url: str = PRODUCTION_URL, ca_file: str | None = None, **client_options):
        self._base_url = base_url
        self._ca_file = ca_file
        self._client_options = client_options
        self._clients: dict[str, tuple[str, ApnsClient]] = {}
        self._retired: list[ApnsClient] = []  # replaced, maybe still finishing a batch: closed at shutdown too
        self._lock = eventlet.semaphore.Semaphore(1)

    def for_certificate(self, *, topic: str, serial_number: str, certificate_pem: str, private_key_pem: str) -> ApnsClient:
        with self._lock:
            cached = self._clients.get(topic)
            if cached is not None and cached[0] == serial_number:
                return cached[1]
            client = ApnsClient(
                topic=topic, certificate_pem=certificate_pem, private_key_pem=private_key_pem,
                base_url=self._base_url, ca_file=self._ca_file, **self._client_options,
            )
            self._clients[topic] = (serial_number, client)
            self._retired = [retired for retired in self._retired if not retired.closed]
            if cached is not None:
                self._retired.append(cached[1])
        if cached is not None:
            cached[1].retire()
        return client

    def close(self) -> None:
        with self._lock:
            clients = [client for _, client in self._clients.values()] + self._retired
            self._clients, self._retired = {}, []
        for client in clients:
            client.close()


def client_tls_context(certificate_pem: str, private_key_pem: str, ca_file: str | None) -> ssl.SSLContext:
    """A TLS context presenting the push certificate; trusts ``ca_file`` or the system's CAs.

    ``ssl`` loads client certificates only from files. The key is re-encrypted with a
    one-time password and written to an in-memory file (``memfd``) that is closed as soon
    as it is loaded, so the key never reaches a disk in the clear.
    """
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    one_time_password = secrets.token_urlsafe(32).encode()
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    encrypted_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(one_time_password),
    )
    with _private_file(certificate_pem.encode() + encrypted_key) as path:
        context.load_cert_chain(path, password=one_time_password)
    return context


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("apns-client-certificate", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    directory = tempfile.mkdtemp(prefix="orchard-apns-")  # mode 0700
    try:
        path = os.path.join(directory, "client.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _reason(status: int, body: bytes) -> str:
    try:
        reason = json.loads(body).get("reason")
    except (ValueError, AttributeError):
        reason = None
    return reason or f"HTTP {status}"


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500
