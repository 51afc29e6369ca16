"""An event's inbox claim is committed with its handler's end, never with a step it commits before: a handler
whose process dies, or whose last commit fails, after a step is run again by the redelivery or the retry."""
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from shared.storage import KernelTables, UnitOfWork, add_kernel_tables, create_engine_for

HANDLER = "steps.on_note_taken"


@pytest.fixture
def units(database_url) -> Iterator:
    """Workers' units of work on one fresh database (SQLite and PostgreSQL), and a way to read its inbox."""
    metadata = sa.MetaData()
    steps = sa.Table("steps", metadata, sa.Column("name", sa.String(20), primary_key=True))
    add_kernel_tables(metadata)
    engine = create_engine_for(database_url)
    metadata.create_all(engine)
    kernel = KernelTables(metadata)
    made = []

    def unit() -> UnitOfWork:
        made.append(UnitOfWork(sessionmaker(engine, expire_on_commit=False), kernel, lambda: None))
        return made[-1]

    def rows(column) -> list[str]:
        with engine.connect() as connection:
            return sorted(connection.execute(sa.select(column)).scalars())

    yield unit, steps, lambda: rows(kernel.inbox.c.event_id), lambda: rows(steps.c.name)
    for work in made:
        work.close()
    engine.dispose()


def test_a_handler_dying_after_a_committed_step_is_run_again(units):
    unit, steps, inbox, done = units
    first = unit()
    assert first.claim_events(HANDLER, ["e1", "e2"]) == {"e1", "e2"}
    first.session.execute(steps.insert().values(name="step 1"))
    first.commit()  # a step of its own
    assert not first.session.in_transaction()  # nothing held while it waits for something else (one SQLite connection)
    first.session.execute(steps.insert().values(name="step 2"))
    first.close()  # the process dies, or the last commit fails: what it did not commit is rolled back

    assert (done(), inbox()) == (["step 1"], [])  # the step stands; the events are not handled
    again = unit()
    assert again.claim_events(HANDLER, ["e1", "e2"]) == {"e1", "e2"}  # the redelivery runs it again
    again.session.execute(steps.insert().values(name="step 2"))
    again.finish_events()
    assert (done(), inbox()) == (["step 1", "step 2"], ["e1", "e2"])

    duplicate = unit()
    assert duplicate.claim_events(HANDLER, ["e1", "e2", "e3"]) == {"e3"}  # handled ones are skipped
