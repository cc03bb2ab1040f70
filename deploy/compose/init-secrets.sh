#!/bin/sh
# The compose demo's `secrets` service: write the stack's secrets into the secrets volume, once.
# A value given in the environment (e.g. from a .env file) is written instead of a generated one
# and replaces an earlier one; otherwise a file already there is kept, so the MLflow webhook's
# encrypted secret and the admin token survive `docker compose down` / `up` (not `down -v`).
set -eu
dir=${1:-/run/sigserve-secrets}
umask 022
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
    chmod 0444 "$dir/.$1.tmp"
    mv -f "$dir/.$1.tmp" "$dir/$1"
    echo "secrets: $1 $([ -n "$2" ] && echo 'set from the environment' || echo generated)"
  fi
}
put admin_token "${SIGSERVE_ADMIN_TOKEN:-}" "$(random 24)"
put serving_token "${SIGSERVE_SERVING_TOKEN:-}" "$(random 24)"
put webhook_secret "${SIGSERVE_WEBHOOK_SECRET:-}" "$(random 32)"
# A Fernet key: 32 random bytes, URL-safe base64 with its padding.
put mlflow_encryption_key "${MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY:-}" "$(random 32 keep-padding)"
put postgres_password "${SIGSERVE_POSTGRES_PASSWORD:-}" "$(random 24)"
echo "secrets: ready in $dir"
