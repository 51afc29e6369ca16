"""MDM push fan-out benchmark: Orchard's APNs client against aioapns, on the same APNs stand-in.

    .venv/bin/python bench/push_fanout.py [--pushes 10000] [--rounds 3] [--concurrency 500]

Starts the HTTP/2 APNs stand-in (``apple_sandbox.apns``, its own process, TLS with a push
certificate as client certificate), then, alternating, sends ``--pushes`` MDM pushes with
Orchard's client (eventlet, one HTTP/2 connection, ``ApnsClient.send``) and with aioapns
(asyncio, ``APNs.send_notification`` tasks), both with the same number of pushes in flight
(``--concurrency``; Orchard's GreenPool size, a semaphore around aioapns's calls).
aioapns runs in its own virtualenv (``var/bench-aioapns``, created on first use with
``pip install aioapns==4.0``), so it never enters Orchard's dependencies.

Prints pushes per second for both (best and median of the rounds) and their ratio.
Goal: Orchard at least as fast as aioapns (ratio >= 1.0).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AIOAPNS_VENV = ROOT / "var" / "bench-aioapns"
AIOAPNS_REQUIREMENT = "aioapns==4.0"


def aioapns_worker(args: argparse.Namespace) -> None:
    """Runs inside the aioapns virtualenv: no eventlet, no Orchard imports."""
    import asyncio
    import secrets
    import ssl

    from aioapns import APNs, NotificationRequest, PushType
    from aioapns.connection import APNsProductionClientProtocol

    # aioapns has no base-URL setting: its protocol class names Apple's host and port
    APNsProductionClientProtocol.APNS_SERVER = args.host
    APNsProductionClientProtocol.APNS_PORT = args.port

    async def run() -> dict:
        client = APNs(client_cert=args.cert, topic=args.topic, ssl_context=ssl.create_default_context(cafile=args.ca))
        tokens = [secrets.token_hex(32) for _ in range(args.pushes)]

        def request(token: str) -> NotificationRequest:
            return NotificationRequest(device_token=token, message={"mdm": "bench-magic"}, push_type=PushType.MDM,
                                       priority=10, time_to_live=86400)

        in_flight = asyncio.Semaphore(args.concurrency)

        async def send(token: str):
            async with in_flight:
                return await client.send_notification(request(token))

        await client.send_notification(request(secrets.token_hex(32)))  # connect before the clock starts
        started = time.perf_counter()
        results = await asyncio.gather(*(send(token) for token in tokens))
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "delivered": sum(1 for r in results if r.is_successful)}

    print(json.dumps(asyncio.run(run())))


def ensure_aioapns() -> Path:
    python = AIOAPNS_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {AIOAPNS_VENV} with {AIOAPNS_REQUIREMENT} (first run only)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(AIOAPNS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", AIOAPNS_REQUIREMENT], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=500, help="pushes in flight, for both clients")
    args = parser.parse_args()

    import warnings

    warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")
    import eventlet

    eventlet.monkey_patch()  # Orchard's services run cooperatively; so does its client here
    sys.path.insert(0, str(ROOT))
    import secrets

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from apple_sandbox.apns import start_apns_sandbox
    from apple_sandbox.push_portal import SandboxAppleCA
    from services.push.adapters.apns_client import ApnsClient, Push
    from services.push.domain.certificates import read_pem_certificate

    aioapns_python = ensure_aioapns()
    state = Path(tempfile.mkdtemp(prefix="orchard-push-bench-"))
    ca = SandboxAppleCA.load_or_create(state)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    certificate = read_pem_certificate(ca.issue_push_certificate(key.public_key()), key_pem)
    combined = state / "push.pem"
    combined.write_text(certificate.certificate_pem + key_pem)  # aioapns takes one file with both
    combined.chmod(0o600)
    sandbox = start_apns_sandbox(state)
    host, port = sandbox.url.removeprefix("https://").rsplit(":", 1)

    def run_orchard() -> float:
        client = ApnsClient(topic=certificate.topic, certificate_pem=certificate.certificate_pem,
                            private_key_pem=key_pem, base_url=sandbox.url, ca_file=sandbox.ca_file,
                            concurrency=args.concurrency)
        try:
            client.send_one(Push(secrets.token_hex(32), "warm-up"))  # connect before the clock starts
            pushes = [Push(secrets.token_hex(32), "bench-magic") for _ in range(args.pushes)]
            started = time.perf_counter()
            results = client.send(pushes)
            seconds = time.perf_counter() - started
        finally:
            client.close()
        delivered = sum(1 for r in results if r.delivered)
        assert delivered == args.pushes, f"orchard delivered {delivered} of {args.pushes}"
        return seconds

    def run_aioapns() -> float:
        output = subprocess.run(
            [str(aioapns_python), __file__, "--aioapns-worker", "--host", host, "--port", port, "--ca", sandbox.ca_file,
             "--cert", str(combined), "--topic", certificate.topic, "--pushes", str(args.pushes),
             "--concurrency", str(args.concurrency)],
            check=True, capture_output=True, text=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        assert result["delivered"] == args.pushes, f"aioapns delivered {result['delivered']} of {args.pushes}"
        return result["seconds"]

    timings: dict[str, list[float]] = {"orchard": [], "aioapns": []}
    try:
        for round_number in range(1, args.rounds + 1):
            order = ("orchard", "aioapns") if round_number % 2 else ("aioapns", "orchard")
            for name in order:
                sandbox.reset()
                seconds = run_orchard() if name == "orchard" else run_aioapns()
                received = len(sandbox.requests())
                assert received == args.pushes + 1, f"the stand-in received {received} requests"
                timings[name].append(seconds)
                print(f"round {round_number} {name:8s} {args.pushes / seconds:8.0f} pushes/s ({seconds:.2f} s)", flush=True)
    finally:
        sandbox.stop()

    rates = {name: [args.pushes / s for s in seconds] for name, seconds in timings.items()}
    print(f"\n{args.pushes} MDM pushes, {args.rounds} rounds, {args.concurrency} in flight, "
          "one HTTP/2 connection to the local APNs stand-in")
    for name, label in (("orchard", "Orchard ApnsClient (green threads, h2)"), ("aioapns", "aioapns 4.0 (asyncio, h2)")):
        print(f"{label:40s} best {max(rates[name]):7.0f}/s  median {statistics.median(rates[name]):7.0f}/s")
    print(f"{'ratio Orchard / aioapns':40s} best {max(rates['orchard']) / max(rates['aioapns']):7.2f}   "
          f"median {statistics.median(rates['orchard']) / statistics.median(rates['aioapns']):7.2f}")


if __name__ == "__main__":
    if "--aioapns-worker" in sys.argv:
        worker = argparse.ArgumentParser()
        worker.add_argument("--aioapns-worker", action="store_true")
        for option in ("--host", "--ca", "--cert", "--topic"):
            worker.add_argument(option, required=True)
        worker.add_argument("--port", type=int, required=True)
        worker.add_argument("--pushes", type=int, required=True)
        worker.add_argument("--concurrency", type=int, required=True)
        aioapns_worker(worker.parse_args())
    else:
        main()
