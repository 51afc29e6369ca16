#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers at $AMQP_URI; start a local one if it is installed.
set -euo pipefail
uri="${AMQP_URI:-amqp://guest:guest@localhost:5672/}"
hostport="${uri#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$host" ] && port=5672

reachable() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }
# a broker that answers but refuses the login would leave every service retrying forever
accepts_login() { [ ! -x .venv/bin/python ] || .venv/bin/python -m deploy.run_local broker "$uri"; }

if reachable; then accepts_login; exit; fi
if command -v rabbitmq-server >/dev/null 2>&1 && { [ "$host" = localhost ] || [ "$host" = 127.0.0.1 ]; }; then
  echo "RabbitMQ is not answering at $host:$port; starting the local rabbitmq-server..."
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do reachable && { accepts_login; exit; }; sleep 1; done
fi
cat >&2 <<MSG
Orchard needs a RabbitMQ broker, and none answers at $host:$port (AMQP_URI=$uri).
Start one and run this again: with Docker, \`docker compose -f deploy/docker-compose.yml up -d rabbitmq\`
(then \`AMQP_URI=amqp://orchard:orchard@localhost:5672/ make run\`);
on Debian or Ubuntu, \`sudo apt-get install rabbitmq-server\` (it starts on install); or point
AMQP_URI at an existing broker, e.g. \`AMQP_URI=amqp://user:pass@rabbit.example:5672/ make run\`.
MSG
exit 1
