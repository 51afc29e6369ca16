#!/usr/bin/env bash
# Run each service as its own `nameko run` process, as replicas would run in production.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORCHARD_SECRET_KEY_FILE="${ORCHARD_SECRET_KEY_FILE:-var/secret.key}"
config=deploy/config.yaml
pids=()
interrupted=
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap 'interrupted=1; stop' INT TERM
trap stop EXIT

for service in "$@"; do
  class="$(.venv/bin/python -c "import sys; print(sys.argv[1].capitalize() + 'Service')" "$service")"
  .venv/bin/nameko run --config "$config" "services.$service.service:$class" \
    >"var/$service.log" 2>&1 &
  pids+=("$!")
done

.venv/bin/python - "$config" "$@" <<'PY'
import sys
from shared.config import load_config, service_settings
config = load_config(sys.argv[1])
print("Orchard is starting; logs are in var/<service>.log. Endpoints:")
for name in sys.argv[2:]:
    settings = service_settings(config, name)
    line = f"  {name:<11} metrics http://localhost:{settings['metrics_port']}/metrics"
    if settings.get("http_address"):
        port = settings["http_address"].rsplit(":", 1)[1]
        line += f"   http http://localhost:{port}/"
    print(line)
print("Check them with `.venv/bin/orchard health`; stop with Ctrl-C.")
PY
wait -n "${pids[@]}" || true
if [[ -n $interrupted ]]; then
  echo "Orchard stopped."
else
  echo "a service stopped on its own; see var/*.log (the others are being stopped)" >&2
  exit 1
fi
