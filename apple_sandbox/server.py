"""Run a WSGI application on a real socket in a background thread."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from werkzeug.serving import BaseWSGIServer, make_server


@dataclass
class RunningServer:
    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


STOP_POLL_SECONDS = 0.02


def serve_wsgi(app, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Serve ``app`` on ``host:port`` (0 picks a free port) until ``stop()``."""
    server = make_server(host, port, app, threaded=True)
    # a short poll: ``stop()`` waits for the loop's next look at the shutdown flag (half a second by default)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": STOP_POLL_SECONDS},
                              name=f"sandbox:{server.server_address[1]}", daemon=True)
    thread.start()
    return RunningServer(server, thread)
