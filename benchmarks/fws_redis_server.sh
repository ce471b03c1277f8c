#!/bin/bash
# Harness wrapper: a private redis-server on a free port, and fws using it.
#   fws_redis_server.sh PORT [FILTER_MODULE [FWS_OPTION...]]
# (default bench_redis_filters; e.g. "bench_filters --history 1000" for the history path).
# Both processes are children of this script, so the harness charges Redis's
# CPU and memory to this server too (which is fair: it is part of the path).
set -u
port=$1
filters=${2:-bench_redis_filters}
shift $(( $# > 1 ? 2 : 1 ))
here=$(cd "$(dirname "$0")" && pwd)
python=${FWS_PYTHON:-python3}
rport=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --logfile "$dir/redis.log" &
redis=$!
cleanup() { kill "$fws" "$redis" 2>/dev/null; wait; rm -rf "$dir"; }
trap cleanup TERM INT EXIT
for _ in $(seq 100); do
    redis-cli -p "$rport" ping >/dev/null 2>&1 && break
    sleep 0.05
done
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" STORAGE_OBJECT_MODULE=fws.storage_objects.redis \
    "$python" -m fws.cli -p "$port" -i 127.0.0.1 --log-level warn --max-message-rate 0 \
    --max-connections 0 \
    --redis_port "$rport" --redis_host 127.0.0.1 --redis_channels bench -f "$filters" "$@" &
fws=$!
wait "$fws"
