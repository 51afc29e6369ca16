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
"""
from __future__ import annotations

import contextlib
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
        step = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)


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
        self._connection: Http2Connection | None = None
        self._refusal: tuple[float, str] | None = None  # when and why APNs last refused us
        self._connect_lock = eventlet.semaphore.Semaphore(1)
        self._static_headers = [
            (b"apns-topic", topic.encode()),
            (b"apns-push-type", b"mdm"),
            (b"apns-priority", b"10"),
            (b"content-type", b"application/json"),
        ]

    def send(self, pushes: Iterable[Push]) -> list[PushResult]:
        """Push every device concurrently; results in the order given."""
        pool = eventlet.GreenPool(self._concurrency)
        return list(pool.imap(self.send_one, pushes))

    def send_one(self, push: Push) -> PushResult:
        started = time.monotonic()
        path = b"/3/device/" + push.device_token.encode()
        body = json.dumps({"mdm": push.push_magic}, separators=(",", ":")).encode()
        attempt = 0
        while True:
            attempt += 1
            status, reason, apns_id, retryable = self._attempt(path, body)
            if not retryable or attempt >= self._retry.max_attempts:
                return PushResult(push.device_token, status, reason, apns_id, attempt, time.monotonic() - started)
            eventlet.sleep(self._retry.delay(attempt))

    def close(self) -> None:
        with self._connect_lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _attempt(self, path: bytes, body: bytes) -> tuple[int | None, str | None, str | None, bool]:
        headers = [*self._static_headers, (b"apns-expiration", b"%d" % (time.time() + self._expiration_seconds))]
        try:
            response = self._usable_connection().request(path, headers, body, self._timeout)
        except ConnectionLost as exc:
            return None, str(exc), None, exc.retryable
        apns_id = response.headers.get(b"apns-id", b"").decode() or None
        if response.status == 200:
            return 200, None, apns_id, False
        return response.status, _reason(response.status, response.body), apns_id, _retryable(response.status)

    def _usable_connection(self) -> Http2Connection:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        with self._connect_lock:
            if self._refusal is not None and time.monotonic() - self._refusal[0] < REFUSAL_MEMORY_SECONDS:
                # the whole batch would otherwise repeat the refused handshake device by device
                raise ConnectionLost(self._refusal[1], retryable=False)
            if self._connection is None or not self._connection.usable:
                if self._connection is not None:
                    self._connection.close()
                self._connection = None
                try:
                    self._connection = Http2Connection(
                        self._host, self._port, self._ssl_context, connect_timeout=self._timeout
                    )
                except ConnectionLost as exc:
                    if not exc.retryable:
                        self._refusal = (time.monotonic(), str(exc))
                    raise
                self._refusal = None
            return self._connection


class ApnsClients:
    """One long-lived client per topic; a renewed certificate (new serial) replaces its client."""

    def __init__(self, *, base_url: str = PRODUCTION_URL, ca_file: str | None = None, **client_options):
        self._base_url = base_url
        self._ca_file = ca_file
        self._client_options = client_options
        self._clients: dict[str, tuple[str, ApnsClient]] = {}
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
        if cached is not None:
            cached[1].close()
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for _, client in clients:
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
