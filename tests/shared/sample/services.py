"""Two tiny services that exercise the kernel the way the real ones use it."""
from dataclasses import dataclass

import eventlet
import sqlalchemy as sa
from nameko.extensions import DependencyProvider

from shared.contracts.base import Event
from shared.entrypoints import ServiceRpc, event_handler, http, periodic, rpc
from shared.errors import Conflict, NotFound, ValidationError
from shared.service import OrchardService
from shared.storage import Database, add_kernel_tables, utc_now

metadata = sa.MetaData()
add_kernel_tables(metadata)
notes = sa.Table(
    "notes", metadata,
    sa.Column("note_id", sa.String(50), primary_key=True),
    sa.Column("text", sa.String(200), nullable=False),
    sa.Column("holder", sa.String(200), nullable=True),
)


@dataclass(frozen=True, kw_only=True)
class NoteTaken(Event):
    SOURCE = "notes"
    note_id: str
    text: str


class ManagedElsewhere(Conflict):
    """A service's own refinement of a shared error (callers only know the shared types)."""


class ReplicaId(DependencyProvider):
    def get_dependency(self, worker_ctx) -> str:
        return f"{id(self.container):x}"


class NotesService(OrchardService):
    name = "notes"
    db = Database(metadata, migrations="tests.shared.sample.migrations")
    replica = ReplicaId()

    @rpc
    def which_replica(self) -> str:
        eventlet.sleep(0.05)  # long enough that concurrent calls need more than one worker
        return self.replica

    @rpc
    def take_note(self, note_id: str, text: str, then_fail: bool = False) -> dict:
        actor = self.auth.require("notes:write")
        self.db.session.execute(notes.insert().values(note_id=note_id, text=text))
        self.db.publish(NoteTaken(note_id=note_id, text=text))
        self.db.audit(actor, "note.taken", f"note:{note_id}", {"length": len(text)})
        if then_fail:
            raise ValidationError("the note was refused after it was written")
        return {"note_id": note_id}

    @rpc
    def take_many(self, prefix: str, count: int) -> None:
        """One transaction, ``count`` notes and as many events."""
        self.db.session.execute(notes.insert(), [{"note_id": f"{prefix}{n:05d}", "text": "bulk"} for n in range(count)])
        self.db.publish(*(NoteTaken(note_id=f"{prefix}{n:05d}", text="bulk") for n in range(count)))

    @rpc
    def count(self) -> int:
        return self.db.session.execute(sa.select(sa.func.count()).select_from(notes)).scalar_one()

    @rpc
    def sleep_in_database(self, seconds: float) -> None:
        self.db.session.execute(sa.text("SELECT pg_sleep(:s)"), {"s": seconds})

    @rpc
    def refuse_as_another_mdm(self) -> None:
        raise ManagedElsewhere("another MDM manages this location")

    @rpc
    def explode(self) -> None:
        raise KeyError("a secret-looking detail that must not reach the caller")

    @rpc
    def return_unsendable(self) -> object:
        self.db.session.execute(notes.insert().values(note_id="unsent", text="rolled back with the failed reply"))
        return {"secret-looking": object()}  # nothing JSON can carry

    @http("PUT", "/notes/<note_id>")
    def put_note(self, request, note_id: str) -> str:
        self.db.session.execute(notes.insert().values(note_id=note_id, text=request.get_data(as_text=True)))
        return "stored"

    @http("GET", "/notes/<note_id>")
    def get_note(self, request, note_id: str) -> str:
        row = self.db.session.execute(sa.select(notes).where(notes.c.note_id == note_id)).first()
        if row is None:
            raise NotFound(f"no note {note_id}")
        return row.text


BUSY_NAP_SECONDS = 2.5


class Once(DependencyProvider):
    """``taken()`` is False the first time in a container, True ever after."""

    def setup(self) -> None:
        self.used = False

    def get_dependency(self, worker_ctx) -> "Once":
        return self

    def taken(self) -> bool:
        used, self.used = self.used, True
        return used


class BusyNotesService(NotesService):
    """The notes service, whose first scheduled job takes a worker for ``BUSY_NAP_SECONDS`` as it starts."""

    nap_once = Once()

    @periodic(interval=0.5, jitter=0.0, eager=True)
    def nap(self) -> None:
        if not self.nap_once.taken():
            eventlet.sleep(BUSY_NAP_SECONDS)


class ListenerService(OrchardService):
    name = "listener"
    db = Database(metadata, migrations="tests.shared.sample.migrations")
    replica = ReplicaId()

    @event_handler(NoteTaken)
    def on_note_taken(self, event: NoteTaken) -> None:
        fixed = self.db.session.execute(sa.select(notes).where(notes.c.note_id == "__fixed__")).first()
        if event.text == "boom" and not fixed:
            raise RuntimeError("this handler cannot cope with boom")
        self.db.session.execute(notes.insert().values(note_id=event.note_id, text=event.text, holder=self.replica))

    @rpc
    def seen(self) -> list:
        query = sa.select(notes).where(notes.c.note_id != "__fixed__").order_by(notes.c.note_id)
        return [row.note_id for row in self.db.session.execute(query)]

    @rpc
    def learn_to_cope(self) -> None:
        """The "fix" an operator deploys before replaying parked events."""
        self.db.session.execute(notes.insert().values(note_id="__fixed__", text="fixed"))


class StepsService(OrchardService):
    """Handles a note in two steps, committing the first; the second fails for notes saying "half"."""

    name = "steps"
    db = Database(metadata, migrations="tests.shared.sample.migrations")

    @event_handler(NoteTaken)
    def on_note_taken(self, event: NoteTaken) -> None:
        attempts = self.db.session.execute(sa.select(sa.func.count()).select_from(notes)).scalar_one()
        self.db.session.execute(notes.insert().values(note_id=f"step-{attempts + 1}", text=event.note_id))
        self.db.commit()
        if event.text == "half":
            raise RuntimeError("the second step failed")

    @rpc
    def steps(self) -> list:
        return [row.text for row in self.db.session.execute(sa.select(notes).order_by(notes.c.note_id))]


SLOW_TICK_SECONDS = 11  # longer than the lease's term: two intervals and ``Periodic.LEASE_SLACK``


class SlowTickerService(OrchardService):
    """A job that runs far longer than its lease's term."""

    name = "slowticker"
    db = Database(metadata, migrations="tests.shared.sample.migrations")
    replica = ReplicaId()

    @periodic(interval=0.1, jitter=0.0, eager=True)
    def tick(self) -> None:
        self.db.session.execute(notes.insert().values(note_id=utc_now().isoformat(), text="started", holder=self.replica))
        self.db.commit()
        eventlet.sleep(SLOW_TICK_SECONDS)


class CallerService(OrchardService):
    """Calls the notes service with a one-second timeout."""

    name = "caller"
    db = Database(metadata, migrations="tests.shared.sample.migrations")
    notes = ServiceRpc("notes", timeout=1)
    patient_notes = ServiceRpc("notes", timeout=60)

    @rpc
    def take_one(self, prefix: str) -> None:
        self.notes.take_many(prefix, 1)

    @http("POST", "/take/<prefix>")
    def take_one_over_http(self, request, prefix: str) -> str:
        """Reached without the broker, so a test can take the broker away from the call alone."""
        self.patient_notes.take_many(prefix, 1)
        return "taken"


class TickerService(OrchardService):
    name = "ticker"
    db = Database(metadata, migrations="tests.shared.sample.migrations")
    replica = ReplicaId()

    @periodic(interval=0.1, jitter=0.2, eager=True)
    def tick(self) -> None:
        self.db.session.execute(notes.insert().values(note_id=utc_now().isoformat(), text="tick", holder=self.replica))
