#!/bin/sh
# Entrypoint of the sigserve image in the compose demo: the stack's secrets, generated once by
# the `secrets` service into a volume mounted read-only at /run/sigserve-secrets, become the
# environment variables the parts read, unless the variable is already set. Then the command.
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
# libpq (psycopg) reads the password from here, so database URLs carry none.
from_file PGPASSWORD postgres_password
exec "$@"
