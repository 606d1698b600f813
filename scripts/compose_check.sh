#!/usr/bin/env bash
# compose_check.sh: bring the CPU compose stack up for real, on fresh volumes, and check it ends
# as a user expects: enqueue and vocab exit 0, shards land, the trainer exits 0 at MAX_STEPS and is
# not restarted, the evaluator writes a report for the last checkpoint, `streamcap audit` says
# lost=0 duplicates=0 with 0 dead parts, and the Redis password is in no log line and no file.
#
#   make venv && scripts/compose_check.sh            # ~10 min once the images are built
#
# Needs Docker Engine, Compose v2 and the base images (../shared/tools/docker-offline.sh builds
# stand-ins where registries are out of reach). Runs as its own compose project with its own .env
# in a temporary folder, so a checkout's .env and volumes are left alone; everything it made is
# removed at the end (KEEP=1 keeps the stack up for a look). The downloaders fetch a generated world
# from an `images` container on the compose network (scripts/compose-check.yml).
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${PROJECT:-streamcap-check}
ROWS=${ROWS:-600}
MAX_STEPS=${MAX_STEPS:-60}
TIMEOUT_S=${TIMEOUT_S:-1200}
PYTHON=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/streamcap-compose-check.XXXXXX")
# What `openssl rand -base64` makes, with a '/', a '+' and an '@' for certain.
PASSWORD="$("$PYTHON" -c 'import base64, os; print(base64.b64encode(os.urandom(18)).decode())')/+@9"
ENCODED=$("$PYTHON" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$PASSWORD")

say() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; compose ps -a >&2 || true; exit 1; }
compose() {
  docker compose -p "$PROJECT" --env-file "$WORK/.env" \
    -f docker-compose.yml -f docker-compose.cpu.yml -f scripts/compose-check.yml "$@"
}
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then echo "kept: docker compose -p $PROJECT ... (work dir $WORK)"; return; fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

say "world: $ROWS url+caption rows served by the images container, 20 held-out images ($WORK)"
mkdir -p "$WORK/data" "$WORK/eval-data"
"$PYTHON" - "$WORK" "$ROWS" <<'EOF'
import sys
from pathlib import Path
from streamcap.demo.data import write_eval_set, write_source_parquet
work, rows = Path(sys.argv[1]), int(sys.argv[2])
write_source_parquet(work / "data" / "demo.parquet", "http://images:8080", rows=rows, seed=1)
write_eval_set(work / "eval-data", images=20, seed=1001)
EOF
chmod -R a+rX "$WORK"

cat >"$WORK/.env" <<EOF
REDIS_PASSWORD=$PASSWORD
STREAMCAP_ENV_FILE=$WORK/.env
SOURCE_DIR=$WORK/data
SOURCE_FILE=demo.parquet
SOURCE_NAME=demo
CAPTION_COL=llava_caption
CAPTION_SENTENCES=1
PART_SIZE=100
VOCAB_SIZE=300
DOWNLOADERS=1
DOWNLOADER_PROCESSES=1
DOWNLOAD_CONCURRENCY=8
DOWNLOAD_PER_HOST=8
DOWNLOAD_IMAGE_SIZE=96
MAX_DISK_BYTES=2G
MIN_FREE_BYTES=100M
CPU_RANKS=1
MODEL_PRESET=tiny
PRETRAINED=false
BATCH_SIZE=16
MAX_STEPS=$MAX_STEPS
LOADER_WORKERS=1
SHM_SIZE=1gb
EVAL_DIR=$WORK/eval-data
EVAL_IMAGE_DIR=images
EVAL_DEVICE=cpu
WANDB_API_KEY=
STREAMCAP_ALLOW_PRIVATE=true
STREAMCAP_TRAIN_IMAGE_SIZE=64
STREAMCAP_CHECKPOINT_EVERY=$((MAX_STEPS / 2))
STREAMCAP_LR=0.001
STREAMCAP_WARMUP_STEPS=10
STREAMCAP_SAMPLE_EVERY=0
STREAMCAP_LOG_EVERY=10
EOF

say "docker compose config (both files) and build"
compose config -q
compose build --quiet

say "up -d on fresh volumes"
compose down -v --remove-orphans >/dev/null 2>&1 || true
compose up -d

container_state() {  # service -> "status exitcode restarts" of its (first) container
  local id
  id=$(compose ps -a -q "$1" | head -n1)
  [ -n "$id" ] || { echo "missing - -"; return; }
  docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$id"
}

trainer_step() {
  compose exec -T downloader streamcap status --json 2>/dev/null |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["trainer"]["step"] or 0)' 2>/dev/null || echo 0
}

say "docker compose stop trainer mid-run: a checkpoint, exit 0, no traceback; start resumes it"
deadline=$((SECONDS + TIMEOUT_S))
until [ "$(trainer_step)" -ge $((MAX_STEPS / 4)) ]; do
  [ $SECONDS -lt $deadline ] || fail "the trainer did not reach step $((MAX_STEPS / 4))"
  sleep 2
done
t0=$SECONDS
compose stop -t 120 trainer
read -r s code restarts <<<"$(container_state trainer)"
echo "    stopped at step $(trainer_step) in $((SECONDS - t0)) s: $s, exit $code"
[ "$s" = exited ] && [ "$code" = 0 ] || fail "a stopped trainer must exit 0 (got $code)"
if compose logs trainer | grep -E "Traceback|SignalException"; then fail "traceback in the trainer's log"; fi
compose start trainer

say "waiting for the trainer to finish $MAX_STEPS steps and the evaluator to score the last checkpoint"
report="/data/checkpoints/evals"
deadline=$((SECONDS + TIMEOUT_S))
last=""
while :; do
  [ $SECONDS -lt $deadline ] || fail "no evaluated final checkpoint after ${TIMEOUT_S}s"
  read -r t_status t_code t_restarts <<<"$(container_state trainer)"
  line="trainer $t_status (exit $t_code, restarts $t_restarts)"
  [ "$line" = "$last" ] || { echo "    $line"; last=$line; }
  if [ "$t_status" = exited ] && [ "$t_code" != 0 ]; then compose logs trainer | tail -40; fail "trainer exited $t_code"; fi
  if [ "$t_status" = exited ] &&
     compose exec -T evaluator sh -c "ls $report/*/step-$(printf '%09d' "$MAX_STEPS")/report.html" >/dev/null 2>&1; then
    break
  fi
  sleep 5
done

say "one-shot services and the trainer"
for svc in enqueue vocab trainer; do
  read -r s code restarts <<<"$(container_state "$svc")"
  echo "    $svc: $s, exit $code, restarts $restarts"
  [ "$s" = exited ] && [ "$code" = 0 ] && [ "$restarts" = 0 ] || fail "$svc did not end with exit 0 and no restart"
done
sleep 15  # a trainer wrongly set to restart would be back up by now
read -r s code restarts <<<"$(container_state trainer)"
[ "$s" = exited ] && [ "$restarts" = 0 ] || fail "the trainer was restarted after it finished ($s, $restarts)"

compose logs trainer | grep -m1 "resuming at step" || fail "the restarted trainer did not resume its run"

say "evaluation report"
compose exec -T evaluator sh -c "ls -l $report/*/step-$(printf '%09d' "$MAX_STEPS")/"

say "streamcap status and audit"
status_text=$(compose exec -T downloader streamcap status)
echo "$status_text"
if echo "$status_text" | grep -q "stopped reporting"; then fail "status reports a worker that stopped reporting"; fi
audit=$(compose exec -T downloader streamcap audit 2>&1) || { echo "$audit"; fail "streamcap audit exited non-zero"; }
echo "$audit" | tail -n 5
echo "$audit" | grep -q 'lost=0,' || fail "audit: lost is not 0"
echo "$audit" | grep -q 'duplicates=0,' || fail "audit: duplicates is not 0"
dead=$(compose exec -T downloader streamcap status --json | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["parts"]["dead"])')
echo "    dead parts: $dead"
[ "$dead" = 0 ] || fail "$dead dead parts"

say "the password in no log line and no file"
logs="$WORK/compose.log"
compose logs --no-color >"$logs" 2>&1
lines=$(wc -l <"$logs")
if grep -F -e "$PASSWORD" -e "$ENCODED" "$logs" >/dev/null; then fail "the password is in the logs"; fi
echo "    $lines log lines: clean"
for volume in checkpoints shards; do
  if docker run --rm -v "${PROJECT}_${volume}:/v:ro" --entrypoint grep streamcap-downloader:latest \
       -rIlF -e "$PASSWORD" -e "$ENCODED" /v; then
    fail "the password is in a file of the $volume volume (listed above)"
  fi
  echo "    volume $volume: clean"
done

say "what the containers wrote is readable by a host user"
unreadable=$(docker run --rm -v "${PROJECT}_checkpoints:/v:ro" --entrypoint find streamcap-downloader:latest \
  /v -type f ! -perm -o=r)
[ -z "$unreadable" ] || fail "files only their owner can read: $unreadable"
echo "    checkpoints volume: every file world-readable"

say "compose check passed"
