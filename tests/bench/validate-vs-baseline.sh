#!/usr/bin/env bash
# POST /api/v1/sessions/validate against a trivial actix-web JSON echo route, both under
# `wrk -t2 -c64` on this machine, alternating, ROUNDS times. With MODE=redis the daemon uses a
# redis-server of its own on a free port (started here), else its embedded store.
# Usage: [MODE=redis] tests/bench/validate-vs-baseline.sh [DURATION_SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-10}
rounds=${2:-3}
mode=${MODE:-embedded}
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
cargo build --release --bins -q
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

wait_line() { # file pattern
  for _ in $(seq 1 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for $2 in $1" >&2; return 1
}

redis_env=()
if [ "$mode" = redis ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
  for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis_env=(SESSIOND_SESSIONS__REDIS_URL="redis://127.0.0.1:$port" SESSIOND_SESSIONS__KEY_PREFIX="bench$$")
fi
(cd "$work" && exec env "${redis_env[@]}" SESSIOND_SERVER__LISTEN=127.0.0.1:0 RUST_LOG=warn \
   "$OLDPWD/target/release/sessiond" serve --dev >"$work/daemon.out" 2>"$work/daemon.err") &
wait_line "$work/daemon.out" "listening on"
daemon=$(grep -o 'http://[0-9.:]*' "$work/daemon.out" | head -1)
target/release/sessiond-bench baseline --listen 127.0.0.1:0 >"$work/baseline.out" 2>&1 &
wait_line "$work/baseline.out" "listening on"
baseline=$(grep -o 'http://[0-9.:]*' "$work/baseline.out" | head -1)
target/release/sessiond-bench prepare --url "$daemon" --secret-file "$work/data/dev-hmac-secret" \
  --api-key-file "$work/data/dev-api-key" --sessions 1000 --out "$work/bench" >/dev/null

echo "mode: $mode"
echo "| round | target | requests/s | p50 µs | p90 µs | p99 µs | p99.9 µs | non-2xx |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq 1 "$rounds"); do
  for t in baseline sessiond; do
    url=$baseline; [ "$t" = sessiond ] && url=$daemon
    line=$(wrk -t2 -c64 -d"${duration}s" -s "$work/bench/validate.lua" "$url/api/v1/sessions/validate" | grep '^RESULT')
    v() { echo "$line" | tr ' ' '\n' | grep "^$1=" | cut -d= -f2; }
    echo "| $r | $t | $(v rps) | $(v p50_us) | $(v p90_us) | $(v p99_us) | $(v p999_us) | $(v non2xx) |"
  done
done
