"""``python -m apple_sandbox`` runs every stand-in and says how to reach them."""
import re
import signal
import subprocess
import sys

import httpx

from tests.conftest import free_port


def test_the_sandbox_runs_every_stand_in(tmp_path):
    ports = {name: free_port() for name in ("dep", "vpp", "apns", "apns-admin", "smtp")}
    process = subprocess.Popen(
        [sys.executable, "-m", "apple_sandbox", "--state-dir", str(tmp_path)]
        + [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout.readline().startswith("Apple sandbox running")
        settings = dict(re.findall(r"(\w+)=(\S+)", process.stdout.readline()))
        assert httpx.get(settings["VPP_URL"] + "service/config").json()["errorCodes"]
        assert httpx.get(settings["DEP_URL"] + "/account").status_code in (401, 403)  # no session: refused like Apple
        assert settings["APNS_URL"] == f"https://127.0.0.1:{ports['apns']}"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    leftovers = subprocess.run(["pgrep", "-f", f"apple_sandbox.apns.*--port {ports['apns']}"], capture_output=True)
    assert leftovers.stdout == b"", "the APNs child outlived the sandbox"
