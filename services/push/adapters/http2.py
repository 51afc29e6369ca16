"""A client HTTP/2 connection for green threads: many concurrent requests on one TLS socket.

One reader green thread owns the socket's receiving side and hands each stream's response
to the green thread waiting for it; senders encode their frames and write under one lock,
so whoever writes first flushes the frames of everyone queued behind it (one system call
for a burst of requests). Everything waits on eventlet primitives and green sockets, so the
hub keeps running while hundreds of requests are in flight.

A reset stream or a dropped socket fail the affected requests with ``ConnectionLost`` (the
request was not answered; sending it again is the caller's call). After a GOAWAY the
connection takes no new requests and the owner opens a fresh one, but it keeps reading until
the streams the server still processes (up to its last stream id) are answered, then closes;
only the streams after that id fail at once.
"""
from __future__ import annotations

import json
import socket
import ssl
import time
from dataclasses import dataclass, field

import eventlet
import eventlet.event
import eventlet.semaphore
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

_READ_SIZE = 65536


class ConnectionLost(Exception):
    """The request got no answer: the connection failed, went away, or reset the stream.

    ``retryable`` is False when the server refused us (TLS), which a new connection won't change.
    """

    def __init__(self, reason: str, *, retryable: bool = True):
        super().__init__(reason)
        self.retryable = retryable


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


@dataclass
class _Exchange:
    done: eventlet.event.Event = field(default_factory=eventlet.event.Event)
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Signal:
    """Wakes every green thread waiting for a condition that may now hold."""

    def __init__(self) -> None:
        self._event = eventlet.event.Event()

    def wait(self, timeout: float) -> bool:
        """False when ``timeout`` seconds passed first."""
        return timeout > 0 and bool(self._event.wait(timeout))

    def fire(self) -> None:
        event, self._event = self._event, eventlet.event.Event()
        event.send(True)


class _StateMachine(h2.connection.H2ConnectionStateMachine):
    """h2 takes a GOAWAY as the end of the connection and refuses every frame after it, so the answers the
    server still sends to streams up to its last stream id would be lost: the connection stays open in h2,
    and ``Http2Connection`` itself opens no stream after a GOAWAY."""

    _transitions = {
        **h2.connection.H2ConnectionStateMachine._transitions,
        (h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionInputs.RECV_GOAWAY):
            (None, h2.connection.ConnectionState.CLIENT_OPEN),
    }


class Http2Connection:
    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext, *, connect_timeout: float = 10.0):
        self.authority = host.encode() if port == 443 else f"{host}:{port}".encode()
        try:
            raw = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc}") from None
        try:
            self._socket = ssl_context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLError as exc:
            raw.close()
            raise ConnectionLost(f"TLS handshake with {host}:{port} failed: {exc}", retryable=False) from None
        except OSError as exc:
            raw.close()
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc}") from None
        if self._socket.selected_alpn_protocol() != "h2":
            self._socket.close()
            raise ConnectionLost(f"{host}:{port} does not speak HTTP/2", retryable=False)
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None,
            validate_outbound_headers=False, normalize_outbound_headers=False, validate_inbound_headers=False,
        ))
        self._h2.state_machine = _StateMachine()
        self._exchanges: dict[int, _Exchange] = {}
        self._write_lock = eventlet.semaphore.Semaphore(1)
        self._capacity = _Signal()  # a stream slot or flow-control window opened
        self._max_streams = 100  # RFC 9113's advice, until the server's SETTINGS say otherwise
        self.closed_reason: str | None = None
        self._closed_retryable = True
        self._last_stream_id: int | None = None  # from the server's GOAWAY: the streams it still answers
        try:
            self._start()
        except BaseException:
            self._socket.close()
            raise
        self._socket.settimeout(None)
        self._reader = eventlet.spawn(self._read_loop)

    def _start(self) -> None:
        """Exchange prefaces and wait for the server's SETTINGS (its stream limit) before any request.

        With TLS 1.3 the server judges our client certificate after the handshake, so a
        refusal arrives here, as an alert on the first read.
        """
        self._h2.initiate_connection()
        try:
            self._socket.sendall(self._h2.data_to_send())
            settled = False
            while not settled:
                data = self._socket.recv(_READ_SIZE)
                if not data:
                    # APNs always sends SETTINGS: closing first is how a refused certificate often looks
                    raise ConnectionLost(
                        "the server closed the connection right after the TLS handshake: "
                        "it most likely refused the client certificate", retryable=False,
                    )
                for event in self._h2.receive_data(data):
                    settled = settled or isinstance(event, h2.events.RemoteSettingsChanged)
                    self._handle(event)
            self._socket.sendall(self._h2.data_to_send())
        except ssl.SSLError as exc:
            raise ConnectionLost(f"the server refused the TLS session: {exc}", retryable=False) from None
        except (OSError, h2.exceptions.ProtocolError) as exc:
            raise ConnectionLost(f"HTTP/2 connection setup failed: {exc}") from None

    @property
    def usable(self) -> bool:
        return self.closed_reason is None

    @property
    def draining(self) -> bool:
        """After a GOAWAY: some stream the server still processes has not been answered yet."""
        last = self._last_stream_id
        return last is not None and any(
            stream_id <= last and not exchange.done.ready() for stream_id, exchange in self._exchanges.items())

    def request(self, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes, timeout: float) -> Response:
        """POST ``body`` to ``path`` and wait for the whole response, waiting for a free stream included."""
        ends = time.monotonic() + timeout
        while len(self._exchanges) >= self._max_streams or self._window_too_small(len(body)):
            self._raise_if_closed()
            if not self._capacity.wait(ends - time.monotonic()):
                raise ConnectionLost(f"no stream free within {round(timeout, 1):g} s")
        self._raise_if_closed()
        try:
            stream_id = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.closed_reason = "every stream id of this connection is used"  # after 2^30 requests
            raise ConnectionLost(self.closed_reason) from None
        exchange = self._exchanges[stream_id] = _Exchange()
        try:
            self._h2.send_headers(stream_id, [
                (b":method", b"POST"), (b":scheme", b"https"), (b":authority", self.authority), (b":path", path),
                *headers,
            ])
            self._h2.send_data(stream_id, body, end_stream=True)
            self._flush()
            with eventlet.Timeout(max(0.0, ends - time.monotonic()), False):
                failure = exchange.done.wait()
        finally:
            if self._exchanges.pop(stream_id, None) is not None:
                self._capacity.fire()
            if self._last_stream_id is not None and not self.draining:
                self.close()  # the last answer the server owed after its GOAWAY is in (or given up on)
        if not exchange.done.ready():
            self._cancel(stream_id)
            raise ConnectionLost(f"no answer within {round(timeout, 1):g} s")
        if failure is not None:
            raise failure
        return Response(exchange.status, exchange.headers, bytes(exchange.body))

    def close(self) -> None:
        self._fail_all("closed by Orchard")
        self._reader.kill()
        self._socket.close()

    def _cancel(self, stream_id: int) -> None:
        if self.closed_reason is None:
            try:
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.StreamClosedError:
                return
            self._flush()

    def _window_too_small(self, size: int) -> bool:
        return self._h2.outbound_flow_control_window < size

    def _raise_if_closed(self) -> None:
        if self.closed_reason is not None:
            raise ConnectionLost(self.closed_reason, retryable=self._closed_retryable)

    def _flush(self, *, wait: bool = True) -> None:
        """Write every queued frame; the writer holding the lock keeps going until none are left.

        The reader passes ``wait=False``: it must never stop reading to wait for a writer
        (a writer blocked on a full socket waits for the server, which may wait for us
        to read); the writer already on the socket sends the reader's frames too.
        """
        if not self._write_lock.acquire(blocking=wait):
            return
        try:
            while data := self._h2.data_to_send():
                self._socket.sendall(data)
        except OSError as exc:
            self._fail_all(f"connection lost while sending: {exc}")
        finally:
            self._write_lock.release()

    def _read_loop(self) -> None:
        while self.closed_reason is None or self.draining:
            try:
                data = self._socket.recv(_READ_SIZE)
            except OSError as exc:
                self._fail_all(f"connection lost: {exc}")
                return
            if not data:
                self._fail_all("the server closed the connection")
                return
            try:
                events = self._h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self._fail_all(f"HTTP/2 protocol error: {exc}")
                return
            for event in events:
                self._handle(event)
            self._flush(wait=False)

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            exchange = self._exchanges.get(event.stream_id)
            if exchange is not None:
                exchange.headers = dict(event.headers)
                exchange.status = int(exchange.headers.get(b":status", b"0"))
        elif isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            exchange = self._exchanges.get(event.stream_id)
            if exchange is not None:
                exchange.body.extend(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            exchange = self._exchanges.get(event.stream_id)
            if exchange is not None and not exchange.done.ready():
                exchange.done.send(None)
        elif isinstance(event, h2.events.StreamReset):
            exchange = self._exchanges.get(event.stream_id)
            if exchange is not None and not exchange.done.ready():
                exchange.done.send(ConnectionLost(f"the server reset the stream (error {event.error_code})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._go_away(event)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self._max_streams = changed.new_value
                self._capacity.fire()
        elif isinstance(event, h2.events.WindowUpdated):
            self._capacity.fire()

    def _go_away(self, event: h2.events.ConnectionTerminated) -> None:
        reason = _goaway_reason(event.additional_data) or f"error code {event.error_code}"
        failure = f"GOAWAY from the server ({reason})"
        self.closed_reason = self.closed_reason or failure
        last = event.last_stream_id or 0
        # a second GOAWAY may lower the last stream id, never raise it
        self._last_stream_id = last if self._last_stream_id is None else min(last, self._last_stream_id)
        for stream_id, exchange in list(self._exchanges.items()):
            if stream_id > last and not exchange.done.ready():
                exchange.done.send(ConnectionLost(failure))  # never processed: safe to resend
        self._capacity.fire()

    def _fail_all(self, reason: str, *, retryable: bool = True) -> None:
        if self.closed_reason is None:
            self.closed_reason, self._closed_retryable = reason, retryable
        for exchange in list(self._exchanges.values()):
            if not exchange.done.ready():
                exchange.done.send(ConnectionLost(reason, retryable=retryable))
        self._capacity.fire()


def _goaway_reason(data: bytes | None) -> str | None:
    # APNs puts the same JSON as in error responses into GOAWAY's debug data
    if not data:
        return None
    try:
        return json.loads(data).get("reason")
    except (ValueError, AttributeError):
        return data.decode("utf-8", "replace")
