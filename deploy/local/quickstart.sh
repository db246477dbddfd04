#!/usr/bin/env bash
# Quick start (README step 1): on one machine, two Redis servers (source and destination),
# both services, a task created through the API, data flowing, and a verification that
# shows the two sides equal. Everything runs on loopback under ./.quickstart/ and is
# stopped at the end (pass --keep to leave it running and poke at it with grpcurl).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
keep=0; [ "${1:-}" = "--keep" ] && keep=1
cache=${REDIS_SYNC_CACHE:-$HOME/.cache/redis-sync}
work=$root/.quickstart
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "installing redis-server and grpcurl (cached after the first run)"
deploy/local/install-tools.sh
export PATH="$cache/venv/bin:$PATH"

say "building redis-sync-ingest and redis-sync-apply"
cargo build --bins --locked -p redis-sync-ingest -p redis-sync-apply
bin=$root/target/debug

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SRC=$(free_port); DST=$(free_port); INGEST=$(free_port); APPLY=$(free_port)
rm -rf "$work"; mkdir -p "$work/src" "$work/dst"

pids=()
cleanup() {
  if [ "$keep" = 1 ]; then
    echo "left running (pids ${pids[*]}); stop with: kill ${pids[*]}"
    return
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

say "starting source redis on 127.0.0.1:$SRC and destination redis on 127.0.0.1:$DST"
redis-server --port "$SRC" --bind 127.0.0.1 --dir "$work/src" --save "" --daemonize no --logfile "$work/src/redis.log" & pids+=($!)
redis-server --port "$DST" --bind 127.0.0.1 --dir "$work/dst" --save "" --daemonize no --logfile "$work/dst/redis.log" & pids+=($!)
for p in $SRC $DST; do
  for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done

say "writing sample data to the source (strings, lists, hashes, sets, zsets, TTLs, 2 dbs)"
for i in $(seq 1 200); do
  echo "SET user:$i name-$i"
  echo "HSET profile:$i id $i score $((i * 7))"
  echo "RPUSH events:$((i % 10)) e$i"
  echo "SADD tags:$((i % 5)) t$i"
  echo "ZADD board $i.5 player:$i"
done | redis-cli -p "$SRC" >/dev/null
redis-cli -p "$SRC" SET session:short value EX 3600 >/dev/null
redis-cli -p "$SRC" -n 1 SET other-db-key hello >/dev/null

say "starting ingest (gRPC 127.0.0.1:$INGEST) and apply (gRPC 127.0.0.1:$APPLY)"
"$bin/redis-sync-ingest" --listen "127.0.0.1:$INGEST" --metrics-listen off --spool-dir "$work/spool" 2>"$work/ingest.log" & pids+=($!)
"$bin/redis-sync-apply" --listen "127.0.0.1:$APPLY" --metrics-listen off --store-path "$work/tasks.redb" \
  --ingest-endpoint "http://127.0.0.1:$INGEST" 2>"$work/apply.log" & pids+=($!)
for p in $INGEST $APPLY; do
  for _ in $(seq 100); do grpcurl -plaintext "127.0.0.1:$p" grpc.health.v1.Health/Check >/dev/null 2>&1 && break; sleep 0.1; done
done

api() { grpcurl -plaintext -d "$2" "127.0.0.1:$APPLY" "redis_sync.v1.TaskService/$1"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d' + sys.argv[1]))" "$1"; }

say "CreateTask"
task=$(api CreateTask "{\"spec\": {\"name\": \"quickstart\",
  \"source\": {\"mode\": \"INSTANCE_MODE_STANDALONE\", \"address\": \"127.0.0.1:$SRC\"},
  \"destination\": {\"mode\": \"INSTANCE_MODE_STANDALONE\", \"address\": \"127.0.0.1:$DST\"},
  \"conflict_mode\": \"CONFLICT_MODE_INTERCEPT\"}}")
echo "$task"
id=$(echo "$task" | field "['task']['id']")

say "StartTask (runs the precheck first)"
api StartTask "{\"id\": \"$id\"}" | python3 -c '
import json, sys
task = json.load(sys.stdin)["task"]
for item in task.get("precheck", {}).get("items", []):
    status = item.get("status", "CHECK_STATUS_UNSPECIFIED")[len("CHECK_STATUS_"):]
    print("  %-11s %s: %s" % (status, item["name"], item.get("reason", "")))
print("state:", task["state"])
'


say "waiting for SYNCHRONIZING"
state=""
for _ in $(seq 300); do
  state=$(api GetTask "{\"id\": \"$id\"}" | field "['task']['state']")
  case "$state" in TASK_STATE_SYNCHRONIZING) break ;; TASK_STATE_FAILED|TASK_STATE_PRECHECK_FAILED) break ;; esac
  sleep 0.2
done
echo "state: $state"
if [ "$state" != TASK_STATE_SYNCHRONIZING ]; then
  api GetTask "{\"id\": \"$id\"}"
  echo "the task did not reach SYNCHRONIZING; logs: $work/ingest.log $work/apply.log" >&2
  exit 1
fi

say "writing more data to the source while the task runs"
for i in $(seq 1 100); do echo "INCR counter"; echo "LPUSH recent r$i"; done | redis-cli -p "$SRC" >/dev/null

say "VerifyTask: comparing source and destination in both directions"
verify=""
for _ in $(seq 50); do
  verify=$(api VerifyTask "{\"id\": \"$id\"}")
  [ "$(echo "$verify" | field "['differences'] if 'differences' in d else '0'")" = 0 ] && break
  sleep 0.2
done
echo "$verify"
echo "source keys: $(redis-cli -p "$SRC" dbsize) in db0, destination keys: $(redis-cli -p "$DST" dbsize) in db0 (the destination also holds the task's checkpoint)"
echo "counter on source: $(redis-cli -p "$SRC" get counter), on destination: $(redis-cli -p "$DST" get counter)"
if [ "$(echo "$verify" | field "['differences'] if 'differences' in d else '0'")" != 0 ]; then
  echo "differences found" >&2; exit 1
fi
say "source and destination are equal"
