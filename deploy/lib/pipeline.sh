# Starting and stopping the pipeline's processes on this machine; sourced by deploy/run and
# deploy/bench (after deploy/lib/services.sh).

random_key() { head -c 32 /dev/urandom | base64 | tr -d '\n'; }
port_of() { echo "${1##*:}"; }

# Reads .env, fills in what is missing for a local run, and exports it.
pipeline_env() {
  if [ -f .env ]; then
    set -a
    # shellcheck disable=SC1091
    source .env
    set +a
  fi
  export REPLICATE_WEBHOOK_SECRET=${REPLICATE_WEBHOOK_SECRET:-whsec_$(random_key)}
  export NOTIFIER_JWT_SECRET=${NOTIFIER_JWT_SECRET:-$(random_key)}
  export OPERATOR_TOKEN=${OPERATOR_TOKEN:-$(random_key)}
  export INGEST_ADDR=${INGEST_ADDR:-127.0.0.1:8080}
  export NOTIFIER_ADDR=${NOTIFIER_ADDR:-127.0.0.1:8081}
  export SIM_ADDR=${SIM_ADDR:-127.0.0.1:8090}
  ingest_url="http://127.0.0.1:$(port_of "$INGEST_ADDR")"
  notifier_url="http://localhost:$(port_of "$NOTIFIER_ADDR")"
  sim_url="http://127.0.0.1:$(port_of "$SIM_ADDR")"
  export MEDIA_BASE_URL=${MEDIA_BASE_URL:-$notifier_url/media}
  # The jobs API creates jobs on the simulator (set REPLICATE_API_URL and a real token in
  # .env to use Replicate itself; its webhooks then need a public PUBLIC_WEBHOOK_URL).
  export REPLICATE_API_URL=${REPLICATE_API_URL:-$sim_url/v1}
  export REPLICATE_API_TOKEN=${REPLICATE_API_TOKEN:-sim-token-$RANDOM$RANDOM}
  export PUBLIC_WEBHOOK_URL=${PUBLIC_WEBHOOK_URL:-$ingest_url/api/webhooks/replicate}
  export TRAINING_DESTINATION=${TRAINING_DESTINATION:-demo/portraits}
  export INGEST_URL=${INGEST_URL:-$ingest_url}
  # The simulator serves its outputs over plain HTTP on this machine.
  export DOWNLOAD_ALLOWED_HOSTS=${DOWNLOAD_ALLOWED_HOSTS:-replicate.delivery,*.replicate.delivery,127.0.0.1:$(port_of "$SIM_ADDR")}
  export DOWNLOAD_ALLOW_HTTP=${DOWNLOAD_ALLOW_HTTP:-true}
  bin=${CARGO_TARGET_DIR:-target}/release
  logs=deploy/.run/logs
  mkdir -p "$logs"
  pids=()
}

build_release() {
  say "building release binaries"
  cargo build --release --bins
}

stop_all() {
  trap - INT TERM EXIT
  say "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
  say "stopped; logs are in $logs"
}

start() { # name, then the command
  local name=$1; shift
  "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  say "$name started (pid $!, log $logs/$name.log)"
}

wait_healthy() { # name url
  local deadline=$((SECONDS + 60))
  until curl -fs -o /dev/null "$2"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$1 did not become healthy; see $logs/$1.log"
    sleep 0.5
  done
}

# ingest, two workers and the notifier, healthy.
#
# The workers and the notifier run one runtime thread each (tokio reads
# TOKIO_WORKER_THREADS; set it to override). On this two-core machine, shared with
# PostgreSQL, RabbitMQ and the load, a second thread per service mostly woke up to find
# nothing to take: in four alternated runs at 500 webhooks/s, p50 24–35 ms against 28–53,
# and 2.5 % more of the machine idle (docs/benchmarks.md). Their blocking work (image
# decoding) runs on tokio's blocking threads either way. On a machine of their own, leave
# one thread per core.
start_pipeline() {
  trap stop_all INT TERM EXIT
  local threads=${TOKIO_WORKER_THREADS:-1}
  start ingest "$bin/ingest"
  start worker-1 env TOKIO_WORKER_THREADS="$threads" WORKER_METRICS_ADDR=127.0.0.1:9091 "$bin/worker"
  start worker-2 env TOKIO_WORKER_THREADS="$threads" WORKER_METRICS_ADDR=127.0.0.1:9092 "$bin/worker"
  start notifier env TOKIO_WORKER_THREADS="$threads" "$bin/notifier"
  wait_healthy ingest "$ingest_url/api/health"
  wait_healthy worker-1 "http://127.0.0.1:9091/api/health"
  wait_healthy worker-2 "http://127.0.0.1:9092/api/health"
  wait_healthy notifier "$notifier_url/api/health"
}
