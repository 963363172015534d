#!/usr/bin/env bash
# A service in bash in an Essaim system: curl talks to the registry, socat serves its port.
#
#   REGISTRY_TOKEN=$(cat run/registry.token) examples/shell/service.sh
#
# It serves GET /hello (any path) on HOST:PORT with socat, one bash process per
# connection; registers with the registry; heartbeats every TTL/3 seconds; registers
# again when a heartbeat answers 404; and deregisters on SIGTERM or Ctrl-C.
# Settings (environment): REGISTRY_URL (http://127.0.0.1:8761), REGISTRY_TOKEN,
# SERVICE (hello-shell), HOST (127.0.0.1), PORT (8702), TTL (10), INSTANCE_ID.
# Needs bash, curl and socat (apt-get install socat). docs/other-languages.md has the API.
set -euo pipefail
export LC_ALL=C  # ${#body} counts bytes

REGISTRY_URL=${REGISTRY_URL:-http://127.0.0.1:8761}
SERVICE=${SERVICE:-hello-shell}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8702}
TTL=${TTL:-10}
INSTANCE_ID=${INSTANCE_ID:-$SERVICE-$(hostname)-$$}
export SERVICE INSTANCE_ID

if [ "${1:-}" = "--answer" ]; then
  # One HTTP exchange on stdin/stdout (socat runs this for each connection).
  read -r method path _ || exit 0
  while IFS= read -r line && [ -n "${line%$'\r'}" ]; do :; done
  path=${path//[\"\\]/}
  body="{\"service\":\"$SERVICE\",\"instance\":\"$INSTANCE_ID\",\"language\":\"bash\",\"method\":\"$method\",\"path\":\"$path\"}"
  printf 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "${#body}" "$body"
  exit 0
fi

command -v socat >/dev/null || { echo "$SERVICE | socat is needed to serve HTTP (apt-get install socat)" >&2; exit 1; }
auth=()
if [ -n "${REGISTRY_TOKEN:-}" ]; then auth=(-H "Authorization: Bearer $REGISTRY_TOKEN"); fi
instance="$REGISTRY_URL/v1/services/$SERVICE/instances/$INSTANCE_ID"

register() {
  curl -sf -o /dev/null -X PUT "${auth[@]}" -H 'Content-Type: application/json' \
    -d "{\"host\":\"$HOST\",\"port\":$PORT,\"ttl\":$TTL,\"metadata\":{\"language\":\"bash\"}}" "$instance"
}

socat "TCP-LISTEN:$PORT,bind=$HOST,reuseaddr,fork" EXEC:"bash $0 --answer" &
server=$!

stop() {
  trap - TERM INT
  curl -s -o /dev/null -X DELETE "${auth[@]}" "$instance" && echo "$SERVICE | deregistered"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  exit 0
}
trap stop TERM INT

until register; do
  echo "$SERVICE | registry not ready at $REGISTRY_URL; retrying in 1 s"
  sleep 1 & wait $!
done
interval=$(( TTL / 3 > 0 ? TTL / 3 : 1 ))
echo "$SERVICE | registered $SERVICE/$INSTANCE_ID at http://$HOST:$PORT, heartbeat every $interval s"
while true; do
  sleep "$interval" & wait $!  # a plain sleep would hold the trap until it ends
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "${auth[@]}" "$instance/heartbeat" || true)
  if [ "$code" = 404 ]; then
    # The registry doesn't know us (expired, or its Redis was emptied): register again.
    register && echo "$SERVICE | registered again after a 404 heartbeat"
  elif [ "$code" != 204 ]; then
    echo "$SERVICE | heartbeat answered ${code:-nothing}; next one in $interval s"
  fi
done
