#!/usr/bin/env bash
# Installs (from the distribution's packages) and starts a local PostgreSQL server for the
# PostgreSQL cluster test, with a role and database `rcs`; prints the connection URL.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
  pg_createcluster "$version" main >&2
fi
pg_ctlcluster "$version" main start >&2 || pg_ctlcluster "$version" main status >&2
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.2
done
su postgres -c "psql -q -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rcs') THEN CREATE ROLE rcs LOGIN PASSWORD 'rcs'; END IF; END \\\$\\\$\"" >&2
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname = 'rcs'\" | grep -q 1 || createdb -O rcs rcs" >&2
echo "postgres://rcs:rcs@127.0.0.1:5432/rcs"
