"""A real LDAPS server on loopback answering every bind with the result code a test chooses (answers slapd never
gives).

It speaks just enough LDAP (BER over TLS): a BindRequest is answered with ``bind_result`` (a referral
with the URIs given); anything else, such as an unbind, ends the connection.
"""
from __future__ import annotations

import socket
import ssl
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import trustme

BIND_REQUEST, BIND_RESPONSE = 0x60, 0x61  # [APPLICATION 0], [APPLICATION 1]
REFERRAL = 0xA3  # [3] in LDAPResult
REFERRAL_RESULT = 10


@dataclass
class ScriptedServer:
    port: int
    ca_pem: str
    host: str = "localhost"


@contextmanager
def scripted_ldaps(bind_result: int, referrals: tuple[str, ...] = ()) -> Iterator[ScriptedServer]:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the test is over
            try:
                with context.wrap_socket(client, server_side=True) as tls:
                    while True:
                        message_id, operation = _id_and_operation(_read_message(tls))
                        if operation != BIND_REQUEST:
                            break  # an unbind
                        tls.sendall(_bind_response(message_id, bind_result, referrals))
            except (OSError, ValueError):
                pass  # a client that gave up: the next one is served all the same

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield ScriptedServer(port=listener.getsockname()[1], ca_pem=ca.cert_pem.bytes().decode())
    finally:
        listener.close()
        thread.join(timeout=5)


def _read_message(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while len(data) < 2 or len(data) < _total_length(data):
        chunk = tls.recv(4096)
        if not chunk:
            raise ValueError("the client closed the connection before its request was complete")
        data += chunk
    return data


def _total_length(data: bytes) -> int:
    """The length of the BER element starting ``data`` (header included), once its header has arrived."""
    first = data[1]
    if first < 0x80:
        return 2 + first
    size = first & 0x7F
    if len(data) < 2 + size:
        return 2 + size + 1  # not all of the header yet: read on
    return 2 + size + int.from_bytes(data[2:2 + size], "big")


def _id_and_operation(message: bytes) -> tuple[int, int]:
    """The messageID and the protocolOp's tag of an LDAPMessage."""
    header = 2 + (message[1] & 0x7F if message[1] >= 0x80 else 0)
    assert message[header] == 0x02, "an LDAPMessage starts with its messageID"
    length = message[header + 1]
    return int.from_bytes(message[header + 2:header + 2 + length], "big"), message[header + 2 + length]


def _element(tag: int, body: bytes) -> bytes:
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = (len(body).bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + len(body).to_bytes(size, "big") + body


def _bind_response(message_id: int, result_code: int, referrals: tuple[str, ...]) -> bytes:
    result = _element(0x0A, bytes([result_code])) + _element(0x04, b"") + _element(0x04, b"")
    if result_code == REFERRAL_RESULT and referrals:
        result += _element(REFERRAL, b"".join(_element(0x04, uri.encode()) for uri in referrals))
    message_id_bytes = message_id.to_bytes((message_id.bit_length() + 8) // 8, "big")
    return _element(0x30, _element(0x02, message_id_bytes) + _element(BIND_RESPONSE, result))
