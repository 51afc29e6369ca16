"""The APNs stand-in: HTTP/2 over TLS, client certificate required, MDM pushes only.

It accepts ``POST /3/device/<hex token>`` from clients holding a certificate issued by the
sandbox Apple CA, checks the request as Apple does for MDM pushes (``apns-topic`` equal to
the client certificate's UID topic, ``apns-push-type: mdm``, priority, expiration, message
id, a JSON ``{"mdm": ...}`` body), answers ``200`` with ``apns-id`` or Apple's error status
and ``{"reason": ...}``, and records every request.

A plain-HTTP admin port scripts what happens next (``POST /_sandbox/outcomes``): per device
token or for any token (``"*"``), for the next N requests or always, answer a given status
and reason (``"delay"``: that many seconds later, as a slow APNs does), send an HTTP/2 GOAWAY
(``"action": "goaway"``) or drop the TCP connection (``"action": "reset"``). A GOAWAY names
the stream before the request as the last one processed, so the request is never answered;
with ``"graceful": true`` it names the request itself, which is then answered (after
``"delay"``) before the connection closes, as APNs does when it shuts a connection down.
``GET /_sandbox/requests`` lists what was received, ``POST /_sandbox/reset`` forgets
requests and scripts.

Why asyncio on the ``h2`` protocol library, in its own process: a GOAWAY or a dropped
connection at a chosen request needs control of the HTTP/2 connection itself, which ASGI
servers hide; a hand-driven ``h2`` state machine also has far less per-request overhead,
so the stand-in is not what limits the push benchmark. asyncio does not mix with the
eventlet-patched test process, hence the subprocess: ``start_apns_sandbox`` starts it and
reads the ports it prints (``python -m apple_sandbox.apns --state-dir DIR --port 0``).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import logging
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from cryptography import x509
from cryptography.x509.oid import NameOID
from hyperframe.frame import GoAwayFrame
from werkzeug.wrappers import Request, Response

from apple_sandbox.push_portal import CA_CERT_FILE, SandboxAppleCA
from apple_sandbox.server import serve_wsgi

_DEVICE_PATH = re.compile(rb"^/3/device/([^/?]*)$")
_HEX_TOKEN = re.compile(rb"^[0-9a-fA-F]{64}$")
_MAX_PAYLOAD = 4096
_MAX_CONCURRENT_STREAMS = 1000  # what APNs advertises once a connection is established


@dataclass
class Outcome:
    status: int | None = None
    reason: str | None = None
    action: str = "respond"  # or "goaway", "reset"
    times: int | None = None  # None: every matching request from now on
    delay: float = 0.0  # seconds before the answer
    graceful: bool = False  # goaway: this request is the last one processed, and is answered


class SandboxState:
    """Scripts and the request log, shared by the HTTP/2 loop and the admin thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, collections.deque[Outcome]] = {}
        self.requests: list[dict] = []

    def add_outcome(self, device_token: str, outcome: Outcome) -> None:
        with self._lock:
            self._scripts.setdefault(device_token.lower(), collections.deque()).append(outcome)

    def take_outcome(self, device_token: str) -> Outcome | None:
        with self._lock:
            for key in (device_token.lower(), "*"):
                queue = self._scripts.get(key)
                if queue:
                    outcome = queue[0]
                    if outcome.times is not None:
                        outcome.times -= 1
                        if outcome.times <= 0:
                            queue.popleft()
                    return outcome
        return None

    def record(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)

    def snapshot(self, since: int) -> list[dict]:
        with self._lock:
            return self.requests[since:]

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.requests.clear()


class ApnsProtocol(asyncio.Protocol):
    """One client connection: an HTTP/2 server state machine answering MDM pushes."""

    _ids = itertools.count(1)

    def __init__(self, state: SandboxState):
        self.state = state
        self.connection_id = next(self._ids)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, tuple[list, bytearray]] = {}
        self.transport: asyncio.Transport | None = None
        self.topic: str | None = None
        self.last_stream_id: int | None = None  # set by a graceful GOAWAY: later streams are not processed
        self.answers_due = 0  # delayed answers not sent yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer_der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.topic = _uid_topic(peer_der)
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_CONCURRENT_STREAMS})
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = (event.headers, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                self.streams[event.stream_id][1].extend(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                headers, body = self.streams.pop(event.stream_id)
                if self.last_stream_id is not None and event.stream_id > self.last_stream_id:
                    continue  # opened after the GOAWAY: never processed, as APNs does
                if not self._answer(event.stream_id, headers, bytes(body)):
                    return
            elif isinstance(event, h2.events.StreamReset):
                self.streams.pop(event.stream_id, None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._flush()
                self.transport.close()
                return
        self._flush()
        self._close_if_drained()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def _close_if_drained(self) -> None:
        if self.last_stream_id is not None and not self.answers_due and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def _answer(self, stream_id: int, headers: list, body: bytes) -> bool:
        """Answer one request (now, or after the scripted delay); False when the connection was closed instead."""
        request = _Request(headers, body)
        status, reason = _check(request, self.topic)
        outcome = Outcome()
        if status == 200:
            outcome = self.state.take_outcome(request.device_token) or outcome
            status, reason = (outcome.status or 200), outcome.reason
        answered = outcome.action == "respond" or (outcome.action == "goaway" and outcome.graceful)
        apns_id = request.header(b"apns-id") or str(uuid.uuid4()).upper()
        self.state.record({
            "connection": self.connection_id,
            "method": request.method, "path": request.path,
            "headers": request.header_dict(), "body": body.decode("utf-8", "replace"),
            "client_topic": self.topic, "device_token": request.device_token,
            "action": outcome.action, "status": status if answered else None,
            "reason": reason, "apns_id": apns_id, "at": time.time(),
        })
        if outcome.action == "reset":
            self.transport.abort()
            return False
        debug = json.dumps({"reason": reason or "Shutdown"}).encode()
        if outcome.action == "goaway" and not outcome.graceful:
            self.h2.close_connection(error_code=0, additional_data=debug, last_stream_id=max(0, stream_id - 2))
            self._flush()
            self.transport.close()
            return False
        if outcome.action == "goaway":
            self._graceful_goaway(stream_id, debug)
        if outcome.delay > 0:
            self.answers_due += 1
            asyncio.get_running_loop().call_later(outcome.delay, self._answer_later, stream_id, status, reason, apns_id)
        else:
            self._respond(stream_id, status, reason, apns_id)
        return True

    def _graceful_goaway(self, stream_id: int, debug: bytes) -> None:
        # written by hand: h2's close_connection would refuse the answer that still follows
        self._flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id, frame.error_code, frame.additional_data = stream_id, 0, debug
        self.transport.write(frame.serialize())
        self.last_stream_id = stream_id

    def _answer_later(self, stream_id: int, status: int, reason: str | None, apns_id: str) -> None:
        self.answers_due -= 1
        if self.transport.is_closing():
            return
        try:
            self._respond(stream_id, status, reason, apns_id)
        except h2.exceptions.StreamClosedError:
            pass  # the client gave up on the request (reset the stream)
        self._flush()
        self._close_if_drained()

    def _respond(self, stream_id: int, status: int, reason: str | None, apns_id: str) -> None:
        response_headers = [(b":status", str(status).encode()), (b"apns-id", apns_id.encode())]
        if status == 200:
            self.h2.send_headers(stream_id, response_headers, end_stream=True)
            return
        payload = {"reason": reason}
        if status == 410:
            payload["timestamp"] = int(time.time() * 1000)
        error_body = json.dumps(payload).encode()
        response_headers += [(b"content-type", b"application/json"), (b"content-length", str(len(error_body)).encode())]
        self.h2.send_headers(stream_id, response_headers)
        self.h2.send_data(stream_id, error_body, end_stream=True)


class _Request:
    def __init__(self, headers: list, body: bytes):
        self.headers = headers
        self.body = body
        self.method = self._pseudo(b":method")
        self.path = self._pseudo(b":path")
        match = _DEVICE_PATH.match(self.path.encode())
        self.device_token = match.group(1).decode() if match else ""
        self.path_matches = match is not None

    def _pseudo(self, name: bytes) -> str:
        return next((value.decode() for key, value in self.headers if key == name), "")

    def header(self, name: bytes) -> str | None:
        return next((value.decode() for key, value in self.headers if key == name), None)

    def header_dict(self) -> dict[str, str]:
        return {key.decode(): value.decode() for key, value in self.headers if not key.startswith(b":")}

    def has_duplicate_headers(self) -> bool:
        names = [key for key, _ in self.headers]
        return len(names) != len(set(names))


def _check(request: _Request, client_topic: str | None) -> tuple[int, str | None]:
    """Apple's checks for an MDM push, in the order APNs reports them."""
    if client_topic is None:
        return 403, "BadCertificate"
    if request.method != "POST":
        return 405, "MethodNotAllowed"
    if not request.path_matches:
        return 404, "BadPath"
    if request.has_duplicate_headers():
        return 400, "DuplicateHeaders"
    topic = request.header(b"apns-topic")
    if topic is None:
        return 400, "MissingTopic"
    if topic != client_topic:
        return 400, "TopicDisallowed"
    if request.header(b"apns-push-type") != "mdm":
        return 400, "InvalidPushType"
    if request.header(b"apns-priority") not in (None, "5", "10"):
        return 400, "BadPriority"
    expiration = request.header(b"apns-expiration")
    if expiration is not None and not expiration.isdigit():
        return 400, "BadExpirationDate"
    if not _valid_message_id(request.header(b"apns-id")):
        return 400, "BadMessageId"
    if not request.device_token:
        return 400, "MissingDeviceToken"
    if not _HEX_TOKEN.match(request.device_token.encode()):
        return 400, "BadDeviceToken"
    if not request.body:
        return 400, "PayloadEmpty"
    if len(request.body) > _MAX_PAYLOAD:
        return 413, "PayloadTooLarge"
    try:
        payload = json.loads(request.body)
    except ValueError:
        return 400, "PayloadEmpty"
    # an MDM push without PushMagic carries nothing the device can use
    if not isinstance(payload, dict) or not isinstance(payload.get("mdm"), str):
        return 400, "PayloadEmpty"
    return 200, None


def _valid_message_id(value: str | None) -> bool:
    if value is None:
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _uid_topic(certificate_der: bytes | None) -> str | None:
    if not certificate_der:
        return None
    attributes = x509.load_der_x509_certificate(certificate_der).subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(attributes[0].value) if attributes else None


def admin_app(state: SandboxState):
    """WSGI app of the admin port."""

    def app(environ, start_response):
        request = Request(environ)
        if request.path == "/_sandbox/outcomes" and request.method == "POST":
            spec = request.get_json(force=True)
            outcome = Outcome(
                status=spec.get("status"), reason=spec.get("reason"),
                action=spec.get("action", "respond"), times=spec.get("times"),
                delay=float(spec.get("delay") or 0), graceful=bool(spec.get("graceful")),
            )
            if outcome.action not in ("respond", "goaway", "reset"):
                response = Response(json.dumps({"error": f"unknown action {outcome.action}"}), 400)
            else:
                state.add_outcome(spec.get("device_token", "*"), outcome)
                response = Response(json.dumps({"scripted": True}), 201, content_type="application/json")
        elif request.path == "/_sandbox/requests" and request.method == "GET":
            since = int(request.args.get("since", 0))
            response = Response(json.dumps({"requests": state.snapshot(since)}), content_type="application/json")
        elif request.path == "/_sandbox/reset" and request.method == "POST":
            state.reset()
            response = Response(json.dumps({"reset": True}), content_type="application/json")
        else:
            response = Response(json.dumps({"error": "not found"}), 404, content_type="application/json")
        return response(environ, start_response)

    return app


def _server_tls(ca: SandboxAppleCA, state_dir: Path, host: str) -> ssl.SSLContext:
    pair = ca.issue_server_certificate(sorted({host, "localhost", "127.0.0.1"}))
    cert_path, key_path = state_dir / "apns-server.pem", state_dir / "apns-server-key.pem"
    cert_path.write_text(pair.certificate_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(pair.private_key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(cadata=ca.certificate_pem)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


async def _serve(host: str, port: int, admin_port: int, state_dir: Path) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per admin request
    ca = SandboxAppleCA.load_or_create(state_dir)
    state = SandboxState()
    admin = serve_wsgi(admin_app(state), host=host, port=admin_port)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ApnsProtocol(state), host, port, ssl=_server_tls(ca, state_dir, host), backlog=512
    )
    print(json.dumps({"port": server.sockets[0].getsockname()[1], "admin_port": admin.port}), flush=True)
    async with server:
        await server.serve_forever()


@dataclass
class ApnsSandbox:
    """A running stand-in process, as the tests and the benchmark use it."""

    process: subprocess.Popen
    url: str
    admin_url: str
    ca_file: str

    def script(self, device_token: str = "*", *, status: int | None = None, reason: str | None = None,
               action: str = "respond", times: int | None = 1, delay: float = 0.0, graceful: bool = False) -> None:
        self._admin("POST", "/_sandbox/outcomes", {
            "device_token": device_token, "status": status, "reason": reason, "action": action, "times": times,
            "delay": delay, "graceful": graceful,
        })

    def requests(self, since: int = 0) -> list[dict]:
        return self._admin("GET", f"/_sandbox/requests?since={since}")["requests"]

    def reset(self) -> None:
        self._admin("POST", "/_sandbox/reset", {})

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def _admin(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.admin_url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


def start_apns_sandbox(state_dir: str | os.PathLike, host: str = "127.0.0.1") -> ApnsSandbox:
    """Start the stand-in in a subprocess sharing the sandbox CA in ``state_dir``."""
    SandboxAppleCA.load_or_create(state_dir)  # created here, so concurrent starts cannot race on it
    process = subprocess.Popen(
        [sys.executable, "-m", "apple_sandbox.apns", "--host", host, "--port", "0", "--admin-port", "0",
         "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=10)
        raise RuntimeError(f"the APNs sandbox did not start (exit status {process.returncode})")
    ports = json.loads(line)
    return ApnsSandbox(
        process=process,
        url=f"https://{host}:{ports['port']}",
        admin_url=f"http://{host}:{ports['admin_port']}",
        ca_file=str(Path(state_dir) / CA_CERT_FILE),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apple_sandbox.apns", description="APNs stand-in (HTTP/2, TLS client certificates)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2197)
    parser.add_argument("--admin-port", type=int, default=2198)
    parser.add_argument("--state-dir", default="var/apple_sandbox", help="where the sandbox Apple CA lives")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.port, args.admin_port, Path(args.state_dir)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
