#!/usr/bin/env bash
# Print a REDIS_URL to use: $REDIS_URL when set; else start a private
# redis-server on a free loopback port (installing Debian's redis-server when
# it is missing). The server is told to exit with this script's parent
# (scripts/test.sh kills it on exit via the pid file it prints to stderr).
set -euo pipefail
if [ -n "${REDIS_URL:-}" ]; then
  echo "$REDIS_URL"
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: installing redis-server from Debian packages" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >&2
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d /tmp/bitmesh-redis.XXXXXX)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >&2
for _ in $(seq 50); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
echo "$dir/redis.pid" > "${BITMESH_REDIS_PIDFILE:-/dev/null}"
echo "redis://127.0.0.1:$port/0"
