"""The directory service: Nameko entrypoints over the domain code in ``services.directory.domain``."""
from services.directory.adapters import tables
from shared.service import OrchardService
from shared.storage import Database


class DirectoryService(OrchardService):
    name = "directory"
    db = Database(tables.metadata, migrations="services.directory.migrations")
