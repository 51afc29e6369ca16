"""The kernel tests' sample services get their own databases and ports, like the real five."""
import pytest

from tests.conftest import free_port


@pytest.fixture
def orchard_config(orchard_config, tmp_path):
    """The sample services get their own databases and ports, like the real five."""
    for name in ("notes", "listener", "ticker", "steps", "slowticker", "caller"):
        orchard_config["SERVICES"][name] = {
            "database_url": f"sqlite:///{tmp_path}/{name}.db", "metrics_port": free_port(),
            "http_address": f"127.0.0.1:{free_port()}",
        }
    return orchard_config
