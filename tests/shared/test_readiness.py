"""``/ready`` on the metrics port: this process's own database and broker, not another replica's."""
import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_ADMIN_URL, postgres_database
from tests.shared.sample.services import NotesService
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def ready(config) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{config['SERVICES']['notes']['metrics_port']}/ready", timeout=15)


def allow_connections(database: str, allowed: bool) -> None:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}'))
        if not allowed:
            connection.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                               {"name": database})
    admin.dispose()


def test_a_process_is_ready_while_its_own_database_and_broker_answer(runner_factory, orchard_config):
    with postgres_database() as url:
        orchard_config["SERVICES"]["notes"]["database_url"] = url
        runner = runner_factory(orchard_config, NotesService)
        runner.start()
        assert (ready(orchard_config).status_code, ready(orchard_config).text) == (200, "ready\n")

        allow_connections(url.rsplit("/", 1)[1], False)
        try:
            refused = ready(orchard_config)
            assert (refused.status_code, refused.text) == (503, "notes: its database does not answer\n")
            metrics = httpx.get(f"http://127.0.0.1:{orchard_config['SERVICES']['notes']['metrics_port']}/metrics")
            assert "orchard_service_info" in metrics.text  # scraping goes on
        finally:
            allow_connections(url.rsplit("/", 1)[1], True)
        wait_for(lambda: ready(orchard_config).status_code == 200, what="the process to be ready again")

        runner.stop()
        assert ready(orchard_config).status_code == 503


def test_a_process_whose_broker_is_out_of_reach_is_not_ready(runner_factory, orchard_config):
    runner = runner_factory(orchard_config, NotesService)
    runner.start()
    assert ready(orchard_config).status_code == 200
    container = next(iter(runner.containers))
    container.config = {**container.config, "AMQP_URI": "pyamqp://guest:guest@127.0.0.1:1//"}  # nothing listens there
    refused = ready(orchard_config)
    assert (refused.status_code, refused.text) == (503, "notes: RabbitMQ does not accept a connection\n")
