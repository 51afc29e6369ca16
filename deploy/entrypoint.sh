#!/bin/sh
# Run the service named by $SERVICE (push, enrollment, vpp, roster or directory).
set -eu
case "${SERVICE:-}" in
  push) class=PushService ;;
  enrollment) class=EnrollmentService ;;
  vpp) class=VppService ;;
  roster) class=RosterService ;;
  directory) class=DirectoryService ;;
  *) echo "set SERVICE to one of: push enrollment vpp roster directory" >&2; exit 64 ;;
esac
# Nameko's CLI imports pkg_resources and eventlet, whose deprecation notices would be the only lines of the
# log that are not JSON; they are silenced for those two imports only
export PYTHONWARNINGS="ignore::Warning:nameko.cli.main,ignore::Warning:nameko.cli.commands"
exec nameko run --config "${ORCHARD_CONFIG:-deploy/config.yaml}" "services.${SERVICE}.service:${class}"
