"""Readiness probe: does this service answer its health RPC through the broker?

``python -m shared.probe <service>`` exits 0 when the service replies healthy
within the timeout, 1 otherwise (used by Kubernetes' readinessProbe).
"""
from __future__ import annotations

import sys
import warnings

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()


def main(argv: list[str]) -> int:
    from nameko.standalone.rpc import ClusterRpcProxy

    from shared.auth import system_actor
    from shared.config import load_config

    service = argv[0]
    try:
        with ClusterRpcProxy(load_config(), context_data={"actor": system_actor("probe").to_context()},
                             timeout=10) as proxy:
            health = getattr(proxy, service).health()
    except Exception as exc:  # any failure means not ready
        print(f"{service} is not ready: {exc}", file=sys.stderr)
        return 1
    return 0 if health.get("database") == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:2] or ["push"]))
