"""``python -m apple_sandbox``: run every Apple stand-in on fixed local ports.

Prints the settings that point Orchard at them. The DEP (Device Assignment and
roster) and Apps and Books servers run in this process; APNs, which needs
HTTP/2 with TLS client certificates, runs in a child process.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from apple_sandbox.dep import DepSandbox
from apple_sandbox.push_portal import CA_CERT_FILE, SandboxAppleCA
from apple_sandbox.server import serve_wsgi
from apple_sandbox.smtp_sink import serve_smtp
from apple_sandbox.vpp import API_PREFIX, VppSandbox


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apple_sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dep-port", type=int, default=9201)
    parser.add_argument("--vpp-port", type=int, default=9202)
    parser.add_argument("--apns-port", type=int, default=9203)
    parser.add_argument("--apns-admin-port", type=int, default=9204)
    parser.add_argument("--smtp-port", type=int, default=9225)
    parser.add_argument("--state-dir", default="var/apple_sandbox", help="where the sandbox Apple CA is kept")
    args = parser.parse_args(argv)

    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # delivered to sigwait below, in every thread
    state_dir = Path(args.state_dir)
    SandboxAppleCA.load_or_create(state_dir)
    dep = serve_wsgi(DepSandbox(), args.host, args.dep_port)
    vpp = serve_wsgi(VppSandbox(), args.host, args.vpp_port)
    smtp = serve_smtp(args.host, args.smtp_port)
    apns = subprocess.Popen([
        sys.executable, "-m", "apple_sandbox.apns", "--host", args.host, "--port", str(args.apns_port),
        "--admin-port", str(args.apns_admin_port), "--state-dir", str(state_dir),
    ], stdout=subprocess.DEVNULL,
        # a child inherits blocked signals: give it back its own SIGTERM so terminate() stops it
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals))

    print("Apple sandbox running. Point Orchard at it with:", flush=True)
    print(f"  DEP_URL={dep.url}  VPP_URL={vpp.url}{API_PREFIX}  "
          f"APNS_URL=https://{args.host}:{args.apns_port}  APNS_CA_FILE={state_dir / CA_CERT_FILE}  "
          f"SMTP_HOST={args.host} SMTP_PORT={args.smtp_port}", flush=True)
    print(f"  admin: {dep.url}/_sandbox/  {vpp.url}/_sandbox/  http://{args.host}:{args.apns_admin_port}/_sandbox/",
          flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        apns.terminate()
        apns.wait(timeout=10)
        for server in (dep, vpp, smtp):
            server.stop()


if __name__ == "__main__":
    main()
