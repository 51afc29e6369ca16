"""The vpp service: Nameko entrypoints over the domain code in ``services.vpp.domain``."""
from services.vpp.adapters import tables
from shared.service import OrchardService
from shared.storage import Database


class VppService(OrchardService):
    name = "vpp"
    db = Database(tables.metadata, migrations="services.vpp.migrations")
