#!/usr/bin/env bash
# Run each service as its own process (deploy/entrypoint.sh), as replicas would run in production.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORCHARD_SECRET_KEY_FILE="${ORCHARD_SECRET_KEY_FILE:-var/secret.key}"
config=deploy/config.yaml
pids=()
interrupted=
stop_seconds=30  # Nameko lets running workers finish; a process still there after this is killed
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 "$stop_seconds"); do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && break
    sleep 1
  done
  if [ ${#alive[@]} -gt 0 ]; then
    echo "killing what did not stop within ${stop_seconds} s (see var/*.log)" >&2
    kill -KILL "${alive[@]}" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
}

.venv/bin/python -m deploy.run_local ports "$config" "$@"
trap 'interrupted=1; stop' INT TERM
trap stop EXIT

for service in "$@"; do
  SERVICE="$service" ORCHARD_CONFIG="$config" PATH="$PWD/.venv/bin:$PATH" deploy/entrypoint.sh \
    >"var/$service.log" 2>&1 &
  pids+=("$!")
done

.venv/bin/python -m deploy.run_local banner "$config" "$@"
wait -n "${pids[@]}" || true
if [[ -n $interrupted ]]; then
  echo "Orchard stopped."
else
  echo "a service stopped on its own; see var/*.log (the others are being stopped)" >&2
  exit 1
fi
