#!/bin/sh
# Make the cluster on first start (an empty volume), then run PostgreSQL in the foreground.
# First start: initdb, the roles `mlflow` and `sigserve` with the password from the secrets
# volume, one database each, password (SCRAM) logins over the network. The server of that
# setup listens on its Unix socket only, so the healthcheck (over TCP) passes only once the
# real server runs.
set -eu
password_file=${POSTGRES_PASSWORD_FILE:-/run/sigserve-secrets/postgres_password}
[ -s "$password_file" ] || { echo "no password in $password_file" >&2; exit 1; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "postgres: initialising $PGDATA"
  initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  {
    echo "listen_addresses = '*'"
    echo "password_encryption = 'scram-sha-256'"
  } >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  pg_ctl --pgdata="$PGDATA" --wait --silent -o "-c listen_addresses=''" start
  password=$(cat "$password_file")
  for name in mlflow sigserve; do
    psql --quiet --no-psqlrc --set=ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
      --set=name="$name" --set=password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
  done
  pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
  echo "postgres: databases mlflow and sigserve created"
fi
exec postgres -D "$PGDATA"
