"""The roster service: Nameko entrypoints over the domain code in ``services.roster.domain``."""
from services.roster.adapters import tables
from shared.service import OrchardService
from shared.storage import Database


class RosterService(OrchardService):
    name = "roster"
    db = Database(tables.metadata, migrations="services.roster.migrations")
