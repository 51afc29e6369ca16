"""Schema migrations: one Alembic environment per service, run by one command.

Each service keeps its revisions in ``services/<name>/migrations/versions`` and a
two-line ``env.py`` that calls ``run_environment`` with its metadata. The
service upgrades its schema when it starts; ``python -m shared.migrations upgrade
<service>`` does it ahead of a rollout, and ``python -m shared.migrations revision
<service> -m "..."`` drafts a new revision from the tables' current definition.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import pkgutil
from pathlib import Path

import sqlalchemy as sa
from eventlet.semaphore import Semaphore
from alembic import command, context
from alembic.config import Config
from sqlalchemy.engine import Engine

TEMPLATE_DIR = Path(__file__).resolve().parent / "kernel_schema"
_LOCK_ID = 0x0C4A4D  # any constant: serialises replicas migrating the same PostgreSQL database
# Alembic keeps the running migration in module state, so services started together in one process
# (their greenthreads yield while PostgreSQL answers) migrate one after the other
_ONE_AT_A_TIME = Semaphore(1)


def alembic_config(migrations_package: str, connection: sa.engine.Connection | None = None) -> Config:
    package = importlib.import_module(migrations_package)
    config = Config()
    service_dir = Path(package.__file__).resolve().parent
    config.set_main_option("script_location", str(service_dir))
    # the kernel's tables (outbox, inbox, audit log, leases) are one shared branch, the service's its own
    config.set_main_option("version_path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join([str(service_dir / "versions"), str(TEMPLATE_DIR / "versions")]))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, migrations_package: str) -> None:
    """Bring the database to the newest revision; safe when replicas start together."""
    with _ONE_AT_A_TIME, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        command.upgrade(alembic_config(migrations_package, connection), "heads")


def run_environment(target_metadata: sa.MetaData) -> None:
    """The body of every service's ``env.py``."""
    connection = context.config.attributes.get("connection")
    if connection is None:  # the command line: a URL from the environment
        url = context.config.get_main_option("sqlalchemy.url")
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            _run(connection, target_metadata)
        return
    _run(connection, target_metadata)


def _run(connection: sa.engine.Connection, target_metadata: sa.MetaData) -> None:
    # batch mode lets ALTER TABLE work on SQLite by rebuilding the table
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def _services_with_migrations() -> list[str]:
    import services

    return sorted(module.name for module in pkgutil.iter_modules(services.__path__)
                  if module.ispkg and importlib.util.find_spec(f"services.{module.name}.migrations"))


def main() -> None:
    from shared.config import load_config
    from shared.storage import create_engine_for, database_url_for

    parser = argparse.ArgumentParser(prog="python -m shared.migrations", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["upgrade", "revision", "current"])
    parser.add_argument("service", choices=_services_with_migrations())
    parser.add_argument("-m", "--message", default="schema change")
    args = parser.parse_args()
    package = f"services.{args.service}.migrations"
    url = database_url_for(load_config(), args.service)
    if args.action == "revision":
        url = "sqlite://"  # draft against an empty in-memory database brought to head

    engine = create_engine_for(url)
    with engine.begin() as connection:
        config = alembic_config(package, connection)
        if args.action == "upgrade":
            command.upgrade(config, "heads")
            print(f"{args.service}: {engine.url.render_as_string(hide_password=True)} has the newest schema")
        elif args.action == "current":
            command.current(config, verbose=True)
        else:
            template = Path(config.get_main_option("script_location")) / "script.py.mako"
            if not template.exists():
                template.write_text((TEMPLATE_DIR / "script.py.mako").read_text())
            versions = template.parent / "versions"
            versions.mkdir(exist_ok=True)
            command.upgrade(config, "heads")
            config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
            first = not any(versions.glob("*.py"))
            command.revision(
                config, message=args.message, autogenerate=True, version_path=str(versions),
                head="base" if first else f"{args.service}@head", branch_label=args.service if first else None,
            )


if __name__ == "__main__":
    main()
