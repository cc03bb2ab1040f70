#!/bin/sh
# Entrypoint of the sigserve image in the compose demo: the secrets granted to this service
# (init-secrets.sh copies into each service's own volume, mounted read-only at
# /run/sigserve-secrets, only the files that service needs) become the environment variables
# the parts read, unless the variable is already set. Then the command. Ray's token is not
# exported: Ray reads it by path (RAY_AUTH_TOKEN_PATH), so Ray's processes do not inherit it.
set -eu
dir=/run/sigserve-secrets
from_file() {  # VARIABLE FILE
  eval "current=\${$1:-}"
  if [ -z "$current" ] && [ -s "$dir/$2" ]; then
    export "$1=$(cat "$dir/$2")"
  fi
}
from_file SIGSERVE_ADMIN_TOKEN admin_token
from_file SIGSERVE_SERVING_TOKEN serving_token
from_file SIGSERVE_WEBHOOK_SECRET webhook_secret
from_file MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY mlflow_encryption_key
# libpq (psycopg) reads the password from here, so database URLs carry none: the password of
# this service's own PostgreSQL role (MLflow's or the controller's).
from_file PGPASSWORD postgres_password
# The MLflow user this service acts as (its name is set in docker-compose.yml); MLflow's client
# sends it with every request, artifact downloads included.
from_file MLFLOW_TRACKING_PASSWORD mlflow_tracking_password
# The MLflow server's admin, made by its basic-auth app on first start: the controller's user.
from_file MLFLOW_AUTH_ADMIN_PASSWORD mlflow_controller_password
from_file MLFLOW_FLASK_SERVER_SECRET_KEY mlflow_flask_secret_key
exec "$@"
