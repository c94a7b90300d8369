# Makes sure PostgreSQL (127.0.0.1:5432, user postgres, trust) and RabbitMQ (127.0.0.1:5672,
# guest/guest) are reachable, in this order of preference:
#   1. already running: nothing to do;
#   2. installed but stopped: start the local service;
#   3. Docker available: `docker compose up -d postgres rabbitmq`;
#   4. root on Debian: install the packages, then start them.
# Sourced by deploy/test and deploy/run.

PG_HOST=127.0.0.1
PG_PORT=5432
AMQP_HOST=127.0.0.1
AMQP_PORT=5672
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

postgres_ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
  else
    port_open "$PG_HOST" "$PG_PORT"
  fi
}

rabbitmq_ready() { port_open "$AMQP_HOST" "$AMQP_PORT"; }

wait_until() { # name seconds check-command...
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$name did not become reachable within ${seconds}s"
    sleep 1
  done
}

# The Compose v2 plugin when the docker CLI has it, else the standalone docker-compose
# (Debian's is 1.29: it reads docker-compose.yml too, which has no `name:` for that reason).
compose_command() {
  if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then
    echo docker-compose
  elif can_apt; then
    apt_install docker-compose
    echo docker-compose
  else
    die "neither docker compose nor docker-compose is installed"
  fi
}

# docker compose for the infrastructure only; the services' secrets are not needed for that.
compose() {
  REPLICATE_WEBHOOK_SECRET=${REPLICATE_WEBHOOK_SECRET:-unused} NOTIFIER_JWT_SECRET=${NOTIFIER_JWT_SECRET:-unused} \
    OPERATOR_TOKEN=${OPERATOR_TOKEN:-unused} \
    $(compose_command) -f "$REPO_ROOT/docker-compose.yml" "$@"
}

docker_usable() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# A Docker engine to talk to: the running one, or Debian's dockerd started (installed first
# when root on Debian).
ensure_docker_engine() {
  docker_usable && return 0
  if ! command -v dockerd >/dev/null 2>&1; then
    can_apt || die "no Docker engine here and none can be installed (not root on Debian)"
    apt_install docker.io
  fi
  if ! docker_usable; then
    [ "$(id -u)" = 0 ] || die "dockerd is installed but not running, and starting it needs root"
    say "starting dockerd (log: /var/log/dockerd.log)"
    nohup dockerd >>/var/log/dockerd.log 2>&1 &
    wait_until "the Docker engine" 60 docker_usable
  fi
}
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
  say "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_local_postgres() {
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] && command -v pg_ctlcluster >/dev/null 2>&1 || return 1
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
}

# A fresh Debian install only trusts local socket peers; the pipeline connects over TCP as
# user postgres without a password, as on the developers' machines.
trust_local_tcp() {
  local hba
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | head -n 1)
  [ -n "$hba" ] || return 0
  grep -q '^host all all 127.0.0.1/32 trust' "$hba" && return 0
  sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  start_local_postgres
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main reload || true
}

ensure_postgres() {
  postgres_ready && return 0
  if start_local_postgres; then :
  elif docker_usable; then
    say "starting PostgreSQL with docker compose"
    compose up -d postgres
  elif can_apt; then
    apt_install postgresql
    trust_local_tcp
    start_local_postgres
  else
    die "PostgreSQL is not reachable at $PG_HOST:$PG_PORT and cannot be started here (no local install, no Docker, not root)"
  fi
  wait_until PostgreSQL 60 postgres_ready
}

ensure_rabbitmq() {
  rabbitmq_ready && return 0
  if command -v rabbitmq-server >/dev/null 2>&1; then
    say "starting RabbitMQ"
    rabbitmq-server -detached || true
  elif docker_usable; then
    say "starting RabbitMQ with docker compose"
    compose up -d rabbitmq
  elif can_apt; then
    apt_install rabbitmq-server
    rabbitmq_ready || rabbitmq-server -detached || true
  else
    die "RabbitMQ is not reachable at $AMQP_HOST:$AMQP_PORT and cannot be started here (no local install, no Docker, not root)"
  fi
  wait_until RabbitMQ 120 rabbitmq_ready
}

ensure_services() {
  ensure_postgres
  ensure_rabbitmq
  say "PostgreSQL $PG_HOST:$PG_PORT and RabbitMQ $AMQP_HOST:$AMQP_PORT are reachable"
}

# The gallery's browser test drives Debian's Chromium through chromedriver (no browser is
# ever downloaded by a test tool).
ensure_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    return 0
  fi
  if can_apt; then
    apt_install chromium chromium-driver
  else
    die "the browser test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
  fi
}

# promtool (Debian's prometheus package) checks the Prometheus config and tests the alerts.
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  if can_apt; then
    say "installing prometheus (for promtool) from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    die "checking the alerting rules needs promtool: apt-get install prometheus"
  fi
}

# Databases and queues that test runs killed before their cleanup left behind: their names
# carry the test process's pid (test_<kind>_<pid>_…); those whose process is gone are removed.
remove_stale_test_resources() {
  local name pid
  if command -v psql >/dev/null 2>&1; then
    for name in $(psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'test\_%'" 2>/dev/null); do
      pid=$(cut -d_ -f3 <<<"$name")
      [[ $pid =~ ^[0-9]+$ ]] && [ ! -d "/proc/$pid" ] || continue
      psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
  fi
  if command -v rabbitmqctl >/dev/null 2>&1; then
    for name in $(rabbitmqctl list_queues -q name 2>/dev/null | grep -E '^test_[a-z0-9]+_[0-9]+_' || true); do
      pid=$(cut -d_ -f3 <<<"$name")
      [ ! -d "/proc/$pid" ] || continue
      rabbitmqctl delete_queue -q "$name" >/dev/null 2>&1 || true
    done
  fi
}
