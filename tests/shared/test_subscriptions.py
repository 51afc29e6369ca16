"""The queues publishers declare for their subscribers (shared.contracts.subscriptions) are exactly the
services' event handlers: a handler missing from the list would lose every event published before its
service first started."""
from nameko.events import EventHandler

from services.directory.service import DirectoryService
from services.enrollment.service import EnrollmentService
from services.push.service import PushService
from services.roster.service import RosterService
from services.vpp.service import VppService
from shared.contracts.subscriptions import SUBSCRIPTIONS


def handlers_of(service_cls) -> set[tuple[str, str, str, str]]:
    found = set()
    for name in dir(service_cls):
        for entrypoint in getattr(getattr(service_cls, name), "nameko_entrypoints", ()):
            if isinstance(entrypoint, EventHandler):
                found.add((entrypoint.source_service, entrypoint.event_type, service_cls.name, name))
    return found


def test_every_event_handler_has_its_queue_declared_by_the_publisher_and_no_other_is():
    handlers = set().union(*(handlers_of(cls) for cls in (
        PushService, EnrollmentService, VppService, RosterService, DirectoryService)))
    declared = {(s.event.SOURCE, s.event.TYPE, s.service, s.handler) for s in SUBSCRIPTIONS}
    assert handlers == declared
