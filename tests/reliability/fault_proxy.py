"""A TCP proxy in front of an Apple sandbox that can drop connections, as a flaky network does.

``mode`` is "pass" (forward bytes both ways), "reset" (accept, then close at once with a
TCP reset, before any answer) or "stall" (requests reach Apple, answers are held back until the
mode changes: a server that hangs); ``delay`` holds every answer back that many seconds, as a
slow Apple does. Runs on green threads in the test process.
"""
from __future__ import annotations

import socket
import struct

import eventlet
from eventlet.green import socket as green_socket


class FaultProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.resets = 0
        self.delay = 0.0
        self._server = eventlet.listen(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._acceptor = eventlet.spawn(self._accept)

    def url_for(self, upstream_url: str) -> str:
        return upstream_url.replace(f":{self.upstream_port}", f":{self.port}", 1)

    def close(self) -> None:
        self._acceptor.kill()
        self._server.close()

    def _accept(self) -> None:
        while True:
            client, _ = self._server.accept()
            if self.mode == "reset":
                self.resets += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = green_socket.create_connection(("127.0.0.1", self.upstream_port))
            eventlet.spawn(self._pipe, client, upstream)
            eventlet.spawn(self._pipe, upstream, client, answers=True)

    def _pipe(self, source, target, answers: bool = False) -> None:
        try:
            while data := source.recv(65536):
                while answers and self.mode == "stall":
                    eventlet.sleep(0.05)
                if answers and self.delay:
                    eventlet.sleep(self.delay)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
