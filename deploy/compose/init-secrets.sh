#!/bin/sh
# The compose demo's `init-secrets` service: keep the stack's secrets in the `secrets` volume
# (mounted by this service alone), then hand each service only the files it needs, in a volume
# of its own (docs/security.md, "What each container can read").
#
# A value given in the environment (e.g. from a .env file) is written instead of a generated one
# and replaces an earlier one; otherwise a file already there is kept, so the MLflow webhook's
# encrypted secret and the admin token survive `docker compose down` / `up` (not `down -v`).
# Usage: init-secrets.sh [SECRETS_DIR] [GRANTS_DIR]  (GRANTS_DIR/<grant>/ are the per-service volumes)
set -eu
dir=${1:-/run/sigserve-secrets}
grants=${2:-/run/sigserve-grants}
umask 077
random() {  # BYTES [keep-padding]: URL-safe base64 of that many random bytes
  if [ "${2:-}" = keep-padding ]; then
    head -c "$1" /dev/urandom | base64 -w0 | tr '+/' '-_'
  else
    head -c "$1" /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '='
  fi
}
put() {  # FILE GIVEN GENERATED
  if [ -n "$2" ] || [ ! -s "$dir/$1" ]; then
    value=$2
    [ -n "$value" ] || value=$3
    printf '%s' "$value" >"$dir/.$1.tmp"
    mv -f "$dir/.$1.tmp" "$dir/$1"
    echo "secrets: $1 $([ -n "$2" ] && echo 'set from the environment' || echo generated)"
  fi
}
put admin_token "${SIGSERVE_ADMIN_TOKEN:-}" "$(random 24)"
put serving_token "${SIGSERVE_SERVING_TOKEN:-}" "$(random 24)"
put webhook_secret "${SIGSERVE_WEBHOOK_SECRET:-}" "$(random 32)"
# A Fernet key: 32 random bytes, URL-safe base64 with its padding.
put mlflow_encryption_key "${MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY:-}" "$(random 32 keep-padding)"
# One password per PostgreSQL role; postgres-entrypoint.sh sets them on every start, so a new
# value (or a stack from before there were two) takes effect with a restart of `postgres`.
put postgres_mlflow_password "${SIGSERVE_POSTGRES_MLFLOW_PASSWORD:-}" "$(random 24)"
put postgres_sigserve_password "${SIGSERVE_POSTGRES_SIGSERVE_PASSWORD:-}" "$(random 24)"
# Ray's token authentication (RAY_AUTH_MODE=token): every Ray node and every Ray client.
put ray_token "${SIGSERVE_RAY_TOKEN:-}" "$(random 32)"
# MLflow's own users (its basic-auth app, docs/security.md "MLflow's own authentication"): the
# controller's (an MLflow admin: webhooks are admin-only), the serving replicas' (reads) and the
# demo registration's (creates its experiment and models). mlflow_users.py makes or updates them
# on every start of `mlflow`, so a new value takes effect with a restart.
put mlflow_controller_password "${SIGSERVE_MLFLOW_CONTROLLER_PASSWORD:-}" "$(random 24)"
put mlflow_serving_password "${SIGSERVE_MLFLOW_SERVING_PASSWORD:-}" "$(random 24)"
put mlflow_registrar_password "${SIGSERVE_MLFLOW_REGISTRAR_PASSWORD:-}" "$(random 24)"
# The basic-auth app's CSRF key (MLFLOW_FLASK_SERVER_SECRET_KEY): MLflow refuses to start
# without a fixed one.
put mlflow_flask_secret_key "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" "$(random 32)"
# The one password of stacks made before the roles had one each: nothing reads it any more.
rm -f "$dir/postgres_password"

grant() {  # GRANT FILE [NAME-IN-THE-GRANT] ...: copy secrets into one service's volume
  target=$grants/$1
  shift
  [ -d "$target" ] || { echo "secrets: no volume mounted at $target" >&2; exit 1; }
  # Only what is granted now: a file granted by an earlier version of this script goes.
  find "$target" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  while [ "$#" -gt 0 ]; do
    case $1 in *=*) from=${1#*=} name=${1%%=*} ;; *) from=$1 name=$1 ;; esac
    cp "$dir/$from" "$target/.$name.tmp"
    # Readable by the service's own user (the app's uid, or postgres): the volume is its only
    # way in, since no other service mounts it.
    chmod 0444 "$target/.$name.tmp"
    mv -f "$target/.$name.tmp" "$target/$name"
    shift
  done
  chmod 0755 "$target"
}
# NAME=FILE: the service reads it as NAME (the entrypoint's PGPASSWORD comes from postgres_password).
grant postgres mlflow_password=postgres_mlflow_password sigserve_password=postgres_sigserve_password
# MLflow makes its users, so it holds their passwords (it keeps only their hashes in its store).
grant mlflow mlflow_encryption_key postgres_password=postgres_mlflow_password \
  mlflow_controller_password mlflow_serving_password mlflow_registrar_password \
  mlflow_flask_secret_key
# mlflow_tracking_password: the password of the MLflow user the service acts as (the entrypoint
# exports it as MLFLOW_TRACKING_PASSWORD; the user name is in docker-compose.yml).
grant controller admin_token serving_token webhook_secret postgres_password=postgres_sigserve_password \
  mlflow_tracking_password=mlflow_controller_password
# The Ray nodes need Ray's token alone: the replicas get the serving token and their MLflow
# user with the deployment (the `serve` job's settings), not from the node.
grant ray ray_token
grant serving serving_token ray_token mlflow_tracking_password=mlflow_serving_password
grant register mlflow_tracking_password=mlflow_registrar_password
echo "secrets: ready in $dir; granted: postgres, mlflow, controller, ray, serving, register"
