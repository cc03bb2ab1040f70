#!/bin/sh
# Make the cluster on first start (an empty volume), set each role's password, then run
# PostgreSQL in the foreground.
# First start: initdb, the roles `mlflow` and `sigserve`, one database each, password (SCRAM)
# logins over the network. Every start: each role's password from its own file in this
# service's secrets volume (init-secrets.sh), so a changed password, or a stack made when both
# roles shared one, takes effect with a restart. The server of that setup listens on its Unix
# socket only, so the healthcheck (over TCP) passes only once the real server runs.
set -eu
dir=${SIGSERVE_SECRETS_DIR:-/run/sigserve-secrets}
for name in mlflow sigserve; do
  [ -s "$dir/${name}_password" ] || { echo "no password in $dir/${name}_password" >&2; exit 1; }
done
first=
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "postgres: initialising $PGDATA"
  initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  {
    echo "listen_addresses = '*'"
    echo "password_encryption = 'scram-sha-256'"
  } >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  first=1
fi
pg_ctl --pgdata="$PGDATA" --wait --silent -o "-c listen_addresses=''" start
for name in mlflow sigserve; do
  password=$(cat "$dir/${name}_password")
  if [ -n "$first" ]; then
    psql --quiet --no-psqlrc --set=ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
      --set=name="$name" <<'SQL'
CREATE ROLE :"name" LOGIN;
CREATE DATABASE :"name" OWNER :"name";
SQL
  fi
  psql --quiet --no-psqlrc --set=ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
    --set=name="$name" --set=password="$password" <<'SQL'
ALTER ROLE :"name" PASSWORD :'password';
SQL
done
pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
[ -z "$first" ] || echo "postgres: databases mlflow and sigserve created"
echo "postgres: each role's password set from $dir"
exec postgres -D "$PGDATA"
