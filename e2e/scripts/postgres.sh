#!/usr/bin/env bash
# A real PostgreSQL server on loopback, for tests.
#
#   postgres.sh STATE_DIR
#
# Initialises a fresh cluster in STATE_DIR/data, starts it on its own loopback address
# (127.X.Y.2:5432, trust authentication, fsync off: test data only), prints
#
#   ready postgres://postgres@127.X.Y.2:5432/postgres
#
# and stays up until its standard input closes or it is signalled, then stops the
# server. As root, the server runs as the `postgres` system user (PostgreSQL refuses
# to run as root). Logs are in STATE_DIR/logs.
set -euo pipefail

dir=${1:?usage: postgres.sh STATE_DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=supervise.sh
source "$here/scripts/supervise.sh"
stop_signal=INT # PostgreSQL's "fast shutdown": don't wait for clients to leave

pgbin=${TRELLIS_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -x "$pgbin/postgres" ] || { echo "postgres.sh: no PostgreSQL server found (apt-get install postgresql)" >&2; exit 1; }

ip=${TRELLIS_PG_IP:-$(random_loopback 2)}
logs="$dir/logs"
rm -rf "$dir/data" "$dir/sock" "$logs"
mkdir -p "$dir/data" "$dir/sock" "$logs"

as_owner=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "postgres.sh: running as root needs the 'postgres' system user" >&2; exit 1; }
  chown -R postgres:postgres "$dir"
  chmod 755 "$dir"
  as_owner=(setpriv --reuid postgres --regid postgres --init-groups)
  "${as_owner[@]}" test -w "$dir" ||
    { echo "postgres.sh: the postgres user cannot reach $dir (a parent directory is private)" >&2; exit 1; }
fi

"${as_owner[@]}" "$pgbin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
  --locale=C.UTF-8 --no-sync >"$logs/initdb.log" 2>&1 || fail "initdb failed"

start postgres "${as_owner[@]}" "$pgbin/postgres" -D "$dir/data" \
  -h "$ip" -p 5432 -k "$dir/sock" \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c max_connections=300 -c shared_buffers=64MB

wait_for "PostgreSQL to accept connections" 60 "$pgbin/pg_isready" -h "$ip" -p 5432 -U postgres -q

echo "ready postgres://postgres@$ip:5432/postgres"
stay_up
