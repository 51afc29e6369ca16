"""``make demo``'s walk, run as a person runs it, on its own virtual host, free ports and state directory."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.slapd import BASE_DN, TreeShape, school_dn, start_slapd

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def directory_profile(tmp_path):
    """A small school directory (real slapd) and a profile settings file for the demo's LDAP step."""
    server = start_slapd(TreeShape(schools=("Lincoln High",), students=20, teachers=3, staff=1, class_size=10))
    settings = {
        "name": "Lincoln High AD", "host": server.host, "port": server.ldaps_port, "security": "ldaps",
        "ca_pem": server.ca_pem, "bind_dn": server.service_dn, "base_dn": BASE_DN,
        "sync": {"users": {"user_types": [{"user_type": "student", "ou": f"OU=Students,{school_dn('Lincoln High')}"},
                                          {"user_type": "teacher", "ou": f"OU=Teachers,{school_dn('Lincoln High')}"}]}},
    }
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump(settings))
    try:
        yield {"DEMO_LDAP_PROFILE": str(path), "ORCHARD_LDAP_BIND_PASSWORD": server.service_password}
    finally:
        server.stop()


def section(output: str, number: int) -> str:
    """The output under the step's ``== <number>.`` heading."""
    return re.split(r"^== \d\.", output, flags=re.MULTILINE)[number]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:
            pass  # the process ended meanwhile
    return found


def test_demo_walks_the_whole_story_and_stops_everything(rabbit_config, tmp_path, directory_profile):
    state_dir = tmp_path / "demo"
    env = {**os.environ, "AMQP_URI": rabbit_config["AMQP_URI"], **directory_profile}
    finished = subprocess.run(
        [sys.executable, "-m", "deploy.demo", "--no-wait", "--free-ports", "--state-dir", str(state_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    output = finished.stdout
    assert finished.returncode == 0, output[-3000:] + finished.stderr

    assert "\x1b[" not in output  # colours only on a terminal
    for service in ("push", "enrollment", "vpp", "roster", "directory"):
        assert re.search(rf"^{service}\s+healthy", output, re.MULTILINE)

    push = section(output, 1)
    assert "$ orchard push upload" in push
    uploaded = re.search(r"^1\s+(com\.apple\.mgmt\.External\.[0-9a-f-]{36})\s+([0-9A-F]+)\s+(\S+)\s+\d+\s+(\d+)\s+ok$",
                         push, re.MULTILINE)
    assert uploaded, push
    topic, devices_before = uploaded.group(1), int(uploaded.group(4))
    assert devices_before == 0

    enrollment = section(output, 2)
    assert re.search(r"^added\s+3$", enrollment, re.MULTILINE)  # the devices Apple assigned after the first sync
    assert re.search(r"^DMPDEMO00001\s.*\sassigned\s", enrollment, re.MULTILINE)
    assert re.search(r"^DMPDEMO00002\s.*\spushed\s", enrollment, re.MULTILINE)
    assert "assigned: 1, empty: 12, pushed: 1, removed: 1" in enrollment

    check_ins = section(output, 3)
    assert check_ins.count("Authenticate, TokenUpdate -> 200") == 3
    listed = re.search(rf"^1\s+{re.escape(topic)}\s+\S+\s+\S+\s+\d+\s+(\d+)\s+ok$", check_ins, re.MULTILINE)
    assert listed and int(listed.group(1)) == 3, check_ins

    apps = section(output, 4)
    assert re.search(r"^361309726\s+App 361309726\s+STDQ\s+120\s+0\s+120\s+no$", apps, re.MULTILINE)  # names from the lookup
    assert re.search(r"^1440231441\s+Book 1440231441\s+STDQ\s+30\s+0\s+30\s+no$", apps, re.MULTILINE)

    district = section(output, 5)
    assert re.search(r"^user\s+8\s+0\s+0$", district, re.MULTILINE)
    assert "applied; 10 event(s) published" in district
    assert len(re.findall(r"managed_apple_id\s+pending\s+registered\s+-\s+https://", district)) == 8  # no mail

    directory = section(output, 6)
    assert "$ orchard directory sync 1 --apply" in directory
    assert re.search(r"^read 23 users, .* in 1 locations", directory, re.MULTILINE), directory
    assert re.search(r'"applied": {.*"events": 23', directory, re.DOTALL), directory
    assert len(re.findall(r"http://localhost:\d+/metrics", section(output, 7))) == 5
    walk_seconds = int(re.search(r"The walk took (\d+) s", output).group(1))
    assert walk_seconds < 120
    print(f"demo walk: {walk_seconds} s")

    assert processes_mentioning(str(state_dir)) == []  # the sandbox, its APNs child and the services all stopped


def test_demo_refuses_busy_ports_with_a_clear_message(tmp_path):
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 9101))  # the push service's usual metrics port
            taken.listen()
        except OSError:
            pass  # something else (`make run`?) listens there already: just as busy
        finished = subprocess.run([sys.executable, "-m", "deploy.demo", "--no-wait", "--state-dir", str(tmp_path / "demo")],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1
    assert "The demo failed: these ports are already in use: " in finished.stderr
    assert "push metrics :9101" in finished.stderr and "make run" in finished.stderr


def test_demo_never_empties_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    finished = subprocess.run([sys.executable, "-m", "deploy.demo", "--no-wait", "--free-ports", "--state-dir", str(tmp_path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1
    assert "holds files the demo did not make; choose another --state-dir" in finished.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
