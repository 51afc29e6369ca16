"""The push service: Nameko entrypoints over the domain code in ``services.push.domain``."""
from services.push.adapters import tables
from shared.service import OrchardService
from shared.storage import Database


class PushService(OrchardService):
    name = "push"
    db = Database(tables.metadata, migrations="services.push.migrations")
