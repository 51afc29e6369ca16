"""Who subscribes to which event: the queues that must exist before anyone publishes.

RabbitMQ drops an event published to an exchange with no bound queue, so a
subscriber deployed after its publisher would miss everything sent before.
Publishers therefore declare these durable queues and bindings themselves, with
exactly the names and arguments Nameko's ``SERVICE_POOL`` handlers use.
A test checks that this list and the services' handlers agree.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.contracts.base import Event
from shared.contracts.enrollment import (
    DeviceEnrolled, DevicesAssigned, DevicesRemoved, DeviceUnenrolled, ServerTokenConnected,
)
from shared.contracts.roster import UserDeleted, UserImported, UserUpdated


@dataclass(frozen=True)
class Subscription:
    event: type[Event]
    service: str
    handler: str

    @property
    def queue_name(self) -> str:
        return f"evt-{self.event.SOURCE}-{self.event.TYPE}--{self.service}.{self.handler}"


SUBSCRIPTIONS: tuple[Subscription, ...] = (
    Subscription(DeviceEnrolled, "push", "on_device_enrolled"),
    Subscription(DeviceUnenrolled, "push", "on_device_unenrolled"),
    Subscription(ServerTokenConnected, "enrollment", "on_server_token_connected"),
    Subscription(UserImported, "vpp", "on_user_imported"),
    Subscription(UserUpdated, "vpp", "on_user_updated"),  # the address invites are mailed to
    Subscription(UserDeleted, "vpp", "on_user_deleted"),  # retire the user at Apple, free their licences
    Subscription(DeviceEnrolled, "vpp", "on_device_enrolled"),  # revoke_unknown tells our devices from strangers
    Subscription(DevicesAssigned, "vpp", "on_devices_assigned"),
    Subscription(DevicesRemoved, "vpp", "on_devices_removed"),
    # a user's devices follow them to other locations, and are freed when the roster deletes them
    Subscription(UserUpdated, "enrollment", "on_user_updated"),
    Subscription(UserDeleted, "enrollment", "on_user_deleted"),
)


def subscriptions_of_source(source: str) -> list[Subscription]:
    return [s for s in SUBSCRIPTIONS if s.event.SOURCE == source]
