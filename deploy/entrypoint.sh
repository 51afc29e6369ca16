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
# Orchard's runner: Nameko's, with the configuration read by shared.config (see shared/run.py)
exec python -m shared.run --config "${ORCHARD_CONFIG:-deploy/config.yaml}" "services.${SERVICE}.service:${class}"
