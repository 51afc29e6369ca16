"""The enrollment service: Nameko entrypoints over the domain code in ``services.enrollment.domain``."""
from services.enrollment.adapters import tables
from shared.service import OrchardService
from shared.storage import Database


class EnrollmentService(OrchardService):
    name = "enrollment"
    db = Database(tables.metadata, migrations="services.enrollment.migrations")
