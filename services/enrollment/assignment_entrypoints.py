"""Entrypoints for devices and people: assignment to users, shared device groups, scopes.

Mixed into ``EnrollmentService``; thin like the rest of it: decode, check the actor,
ask the domain, write, publish.
"""
from __future__ import annotations

import uuid
from typing import Any

from services.enrollment.adapters.assignments import AssignmentRepository
from services.enrollment.domain.assignments import (
    Assignment,
    SharedGroup,
    checked_group_name,
    checked_serial,
    checked_serials,
    checked_user_devices,
    checked_user_id,
    devices_for_group,
    listed_twice,
    require_known,
    require_self_pairing_allowed,
    user_assignment,
)
from services.enrollment.domain.locations import require_roster_locations
from services.enrollment.domain.scopes import parse_scope, require_teachers_scope, resolved_devices
from shared.auth import Actor, require_locations, system_actor, visible
from shared.contracts.enrollment import DeviceUserAssigned, DeviceUserUnassigned
from shared.contracts.roster import UserDeleted, UserUpdated
from shared.entrypoints import ServiceRpc, event_handler, rpc
from shared.errors import Conflict, NotFound, PermissionDenied, ValidationError
from shared.roster_lookups import classes_taught_by


class DevicePeopleEntrypoints:
    roster = ServiceRpc("roster")

    # --- one device, one user --------------------------------------------------------------

    @rpc
    def assign_device(self, serial_number: str, user_id: str) -> dict[str, Any]:
        """Assign a known device to a roster user (a move from another user is allowed)."""
        actor = self.auth.require("enrollment:write")
        return self._assign_to_user(actor, checked_serial(serial_number), checked_user_id(user_id), "admin")

    @rpc
    def assign_devices(self, assignments: list[dict[str, str]]) -> dict[str, Any]:
        """Assign many devices to roster users at once, as an import lists them: ``[{serial_number, user_id}]``.
        A repeat changes nothing; each refusal is reported (``failed``) and the others are assigned."""
        actor = self.auth.require("enrollment:write")
        pairs = checked_user_devices(assignments)
        doubts = listed_twice(pairs)
        named = sorted({user_id for _, user_id, problem in pairs if problem is None})
        users = {row["user_id"]: row["locations"] for row in self.roster.users_in_scope(user_ids=named)}
        assigned, failed = 0, []
        for serial, user_id, problem in pairs:
            try:
                if problem is not None:
                    raise ValidationError(problem)
                if serial in doubts:
                    raise Conflict(f"device {serial} is listed for more than one user ({', '.join(doubts[serial])}); "
                                   "list it for one")
                self._visible_serial(actor, serial)
                if user_id not in users:
                    raise NotFound(f"there is no user '{user_id}' in your locations")
                self._put_user_assignment(actor, serial, user_id, users[user_id], "roster")
                assigned += 1
            except (ValidationError, NotFound, PermissionDenied, Conflict) as refused:
                failed.append({"serial_number": serial, "user_id": user_id, "reason": refused.message})
        return {"assigned": assigned, "failed": failed}

    @rpc
    def unassign_device(self, serial_number: str) -> dict[str, Any]:
        """Free a device from its user or shared group; a device with neither is left as it is."""
        actor = self.auth.require("enrollment:write")
        serial = self._visible_serial(actor, checked_serial(serial_number))
        repository = AssignmentRepository(self.db.session)
        current = repository.assignments([serial]).get(serial)
        if current is None:
            return _unassigned(serial)
        require_locations(actor, current.locations)
        repository.remove([serial])
        self.db.publish(DeviceUserUnassigned(serial_number=serial, user_id=current.user_id, group_id=current.group_id))
        self.db.audit(actor, "device.unassigned", f"device:{serial}",
                      {"user_id": current.user_id, "group_id": current.group_id})
        return _unassigned(serial)

    @rpc
    def device_assignment(self, serial_number: str) -> dict[str, Any]:
        actor = self.auth.require("enrollment:read")
        serial = self._visible_serial(actor, checked_serial(serial_number))
        current = AssignmentRepository(self.db.session).assignments([serial]).get(serial)
        if current is None:
            return _unassigned(serial)
        if not visible(actor, current.locations):  # whose it is belongs to the other location
            return {**_unassigned(serial), "assigned_outside_your_locations": True}
        return current.to_dict()

    # --- following the roster ----------------------------------------------------------------

    @event_handler(UserUpdated)
    def on_user_updated(self, event: UserUpdated) -> None:
        """A user's devices are in the user's current locations, for who may see and change them, and follow a
        change of the user's ID."""
        renamed = AssignmentRepository(self.db.session).follow_user(
            event.user_id, list(event.locations), event.occurred(), event.previous_user_id)
        for serial in renamed:  # to subscribers, the device went from the old ID to the new one
            self.db.publish(DeviceUserUnassigned(serial_number=serial, user_id=event.previous_user_id),
                            DeviceUserAssigned(serial_number=serial, user_id=event.user_id))
        if renamed:
            self.db.audit(system_actor(self.name), "device.assigned", f"user:{event.user_id}",
                          {"serial_numbers": renamed, "previous_user_id": event.previous_user_id,
                           "reason": "the roster changed the user's ID"})

    @event_handler(UserDeleted)
    def on_user_deleted(self, event: UserDeleted) -> None:
        """A user the roster deleted keeps no device: each is freed and announced, so licences follow."""
        freed = AssignmentRepository(self.db.session).release_user(event.user_id, event.occurred())
        for serial in freed:
            self.db.publish(DeviceUserUnassigned(serial_number=serial, user_id=event.user_id))
        if freed:
            self.db.audit(system_actor(self.name), "device.unassigned", f"user:{event.user_id}",
                          {"serial_numbers": freed, "reason": "the roster deleted the user"})

    def _assign_to_user(self, actor: Actor, serial: str, user_id: str, source: str,
                        self_service: bool = False) -> dict[str, Any]:
        self._visible_serial(actor, serial)
        user = self.roster.get_user(user_id)  # NotFound when the roster has no such user the actor may see
        return self._put_user_assignment(actor, serial, user_id, user.get("locations") or [], source, self_service)

    def _put_user_assignment(self, actor: Actor, serial: str, user_id: str, user_locations: list[str], source: str,
                             self_service: bool = False) -> dict[str, Any]:
        """Assign a device the actor may see to a user of ``user_locations``: every check, then the writes."""
        require_locations(actor, user_locations)
        repository = AssignmentRepository(self.db.session)
        change = user_assignment(repository, serial, user_id, user_locations, source)
        if self_service:
            require_self_pairing_allowed(change, repository.device_token_locations([serial]).get(serial))
        if change.unchanged and change.previous is not None:
            return change.previous.to_dict()
        if change.previous is not None:  # a move takes the device from its user: their location must be the actor's
            require_locations(actor, change.previous.locations)
        repository.put(change.new, actor.id)
        if change.previous is not None:
            self.db.publish(DeviceUserUnassigned(serial_number=serial, user_id=change.previous.user_id))
        self.db.publish(DeviceUserAssigned(serial_number=serial, user_id=user_id))
        self.db.audit(actor, "device.assigned", f"device:{serial}", {
            "user_id": user_id, "source": source,
            "previous_user_id": change.previous.user_id if change.previous else None})
        return change.new.to_dict()

    def _visible_serial(self, actor: Actor, serial: str) -> str:
        return self._visible_serials(actor, [serial])[0]

    def _visible_serials(self, actor: Actor, serials: list[str]) -> list[str]:
        """Devices the actor may see: known to enrollment, and an ADE device's server token in their locations."""
        repository = AssignmentRepository(self.db.session)
        require_known(repository, serials)
        hidden = _hidden_serials(repository, actor, serials)
        if hidden:
            raise NotFound(f"enrollment knows no device {', '.join(hidden[:10])} in your locations")
        return serials

    @rpc
    def device_locations(self, serial_numbers: list[str]) -> list[dict[str, Any]]:
        """``[{serial_number, locations}]``: the locations of each device's user or group (none while it is
        assigned to nobody), for those of these devices the caller may see. Devices unknown here or hidden from
        the caller are left out, not refused, so that a list such as an app's licence holders can be shown in part.
        Readers of enrollment only: a teacher names classes, never devices (``resolve_scope``).
        """
        actor = self.auth.require("enrollment:read")
        serials = list(parse_scope({"devices": serial_numbers}).devices)
        repository = AssignmentRepository(self.db.session)
        left_out = {*repository.unknown_serials(serials), *_hidden_serials(repository, actor, serials)}
        shown = [serial for serial in serials if serial not in left_out]
        assignments = repository.assignments(shown)
        return [{"serial_number": serial,
                 "locations": list(assignments[serial].locations) if serial in assignments else []}
                for serial in shown]

    # --- shared device groups --------------------------------------------------------------

    @rpc
    def create_shared_group(self, name: str, location_id: str) -> dict[str, Any]:
        actor = self.auth.require("enrollment:write")
        name = checked_group_name(name)
        if not isinstance(location_id, str) or not location_id.strip():
            raise ValidationError("location_id must be the roster's id of the location the group belongs to")
        location_id = location_id.strip()
        require_locations(actor, [location_id])
        require_roster_locations([location_id], self.roster.list_locations())
        repository = AssignmentRepository(self.db.session)
        if repository.group_named(location_id, name):
            raise Conflict(f"location {location_id} already has a shared device group named '{name}'; "
                           f"choose another name or add the devices to that group")
        group_id = str(uuid.uuid4())
        repository.add_group(group_id, name, location_id, actor.id)
        self.db.audit(actor, "shared_group.created", f"shared_group:{group_id}",
                      {"name": name, "location_id": location_id})
        return repository.group(group_id).to_dict()

    @rpc
    def list_shared_groups(self, location_id: str | None = None) -> list[dict[str, Any]]:
        actor = self.auth.require("enrollment:read")
        if location_id is not None and not isinstance(location_id, str):
            raise ValidationError("location_id must be a location id, or null for every location")
        return [group.to_dict() for group in AssignmentRepository(self.db.session).groups()
                if visible(actor, [group.location_id]) and location_id in (None, group.location_id)]

    @rpc
    def rename_shared_group(self, group_id: str, name: str) -> dict[str, Any]:
        actor = self.auth.require("enrollment:write")
        group = self._writable_group(actor, group_id)
        name = checked_group_name(name)
        repository = AssignmentRepository(self.db.session)
        other = repository.group_named(group.location_id, name)
        if other and other != group.id:
            raise Conflict(f"location {group.location_id} already has a shared device group named '{name}'")
        repository.rename_group(group.id, name)
        self.db.audit(actor, "shared_group.renamed", f"shared_group:{group.id}", {"from": group.name, "to": name})
        return repository.group(group.id).to_dict()

    @rpc
    def delete_shared_group(self, group_id: str) -> dict[str, Any]:
        """Delete the group; its devices become unassigned."""
        actor = self.auth.require("enrollment:write")
        group = self._writable_group(actor, group_id)
        AssignmentRepository(self.db.session).delete_group(group.id)
        self.db.publish(*(DeviceUserUnassigned(serial_number=s, group_id=group.id) for s in group.serial_numbers))
        self.db.audit(actor, "shared_group.deleted", f"shared_group:{group.id}",
                      {"name": group.name, "devices": len(group.serial_numbers)})
        return {"id": group.id, "deleted": True, "unassigned": list(group.serial_numbers)}

    @rpc
    def add_devices_to_group(self, group_id: str, serial_numbers: list[str]) -> dict[str, Any]:
        """All or nothing: a device assigned to a user or another group is refused (remove it there first)."""
        actor = self.auth.require("enrollment:write")
        group = self._writable_group(actor, group_id)
        serials = self._visible_serials(actor, checked_serials(serial_numbers))
        repository = AssignmentRepository(self.db.session)
        added = devices_for_group(repository, group, serials)
        repository.add_many([Assignment(s, group_id=group.id, locations=(group.location_id,)) for s in added], actor.id)
        self.db.publish(*(DeviceUserAssigned(serial_number=s, group_id=group.id) for s in added))
        if added:
            self.db.audit(actor, "shared_group.devices_added", f"shared_group:{group.id}", {"devices": len(added)})
        return {**repository.group(group.id).to_dict(), "added": added}

    @rpc
    def remove_devices_from_group(self, group_id: str, serial_numbers: list[str]) -> dict[str, Any]:
        actor = self.auth.require("enrollment:write")
        group = self._writable_group(actor, group_id)
        serials = checked_serials(serial_numbers)
        removed = [s for s in serials if s in set(group.serial_numbers)]
        repository = AssignmentRepository(self.db.session)
        repository.remove(removed)
        self.db.publish(*(DeviceUserUnassigned(serial_number=s, group_id=group.id) for s in removed))
        if removed:
            self.db.audit(actor, "shared_group.devices_removed", f"shared_group:{group.id}", {"devices": len(removed)})
        return {**repository.group(group.id).to_dict(), "removed": removed,
                "not_in_group": [s for s in serials if s not in removed]}

    def _visible_group(self, actor: Actor, group_id: Any) -> SharedGroup:
        group = AssignmentRepository(self.db.session).group(group_id)
        if not visible(actor, [group.location_id]):
            raise NotFound(f"there is no shared device group {group_id} in your locations")
        return group

    def _writable_group(self, actor: Actor, group_id: Any) -> SharedGroup:
        group = self._visible_group(actor, group_id)
        require_locations(actor, [group.location_id])
        return group

    # --- scopes ----------------------------------------------------------------------------

    @rpc
    def resolve_scope(self, scope: dict[str, Any]) -> list[dict[str, Any]]:
        """The devices a scope reaches now: ``[{serial_number, user_id, group_id, locations}]`` by serial."""
        actor = self.auth.require("enrollment:resolve_scope")
        parsed = parse_scope(scope)
        if actor.role == "teacher":
            require_teachers_scope(parsed, classes_taught_by(self.roster, actor.id))
        if parsed.locations is not None:
            require_locations(actor, parsed.locations)  # naming a location you cannot see is refused
        repository = AssignmentRepository(self.db.session)
        user_locations: dict[str, list[str]] = {}
        if parsed.selects_users:
            user_locations = {row["user_id"]: row["locations"]
                              for row in self.roster.users_in_scope(**parsed.roster_filter())}
        reached = repository.of_users(user_locations)
        explicit_users = [a for a in repository.of_users(parsed.users) if visible(actor, a.locations)]
        groups = [self._visible_group(actor, group_id) for group_id in parsed.groups]
        devices: dict[str, Assignment | None] = {serial: None for serial in parsed.devices}
        if devices:
            devices.update(repository.assignments(self._visible_serials(actor, list(devices))))
        return resolved_devices(user_locations, [*reached, *explicit_users], groups, devices)


def _hidden_serials(repository: AssignmentRepository, actor: Actor, serials: list[str]) -> list[str]:
    """The ADE devices whose server token is outside the actor's locations."""
    return sorted(serial for serial, locations in repository.device_token_locations(serials).items()
                  if not visible(actor, locations))


def _unassigned(serial: str) -> dict[str, Any]:
    return {"serial_number": serial, "user_id": None, "group_id": None, "locations": [], "source": None}
