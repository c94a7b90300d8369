#!/bin/sh
# First start: a cluster owned by POSTGRES_USER; connections from other containers are
# authenticated with POSTGRES_HOST_AUTH_METHOD, as in the official image.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb --username="${POSTGRES_USER:-postgres}" --auth=trust --encoding=UTF8 -D "$PGDATA" >/dev/null
  echo "host all all all ${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
