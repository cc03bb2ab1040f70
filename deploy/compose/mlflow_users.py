"""Make MLflow's users for the compose demo, then run the command given (``mlflow server``).

Usage: ``python3 mlflow_users.py mlflow server --app-name basic-auth ...`` in the ``mlflow``
container, with ``MLFLOW_AUTH_CONFIG_PATH`` (the basic-auth app's ini: where its user store is)
and ``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD`` (the controller's user, an
admin: MLflow's webhook API is admin-only) set.

Each user is made, or has its password set again, on every start, from the files init-secrets
grants this container, so a password changed there takes effect with a restart of ``mlflow``
(MLflow's own bootstrap only ever creates its admin once). Users other than the admin are not
admins. Least privilege (docs/security.md, "MLflow's own authentication"): the serving
replicas' user reads, through the ini's ``default_permission = READ``; the registration's user
owns (MANAGE) what it creates, and can read the rest.

No password is printed: only the user names and what was done.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# Where this container's grant is mounted (another directory for a test).
SECRETS_DIR = Path(os.environ.get("SIGSERVE_SECRETS_DIR", "/run/sigserve-secrets"))
# User name -> the file in SECRETS_DIR holding its password; the names are docker-compose.yml's.
USERS = {
    "sigserve-serving": "mlflow_serving_password",
    "sigserve-registrar": "mlflow_registrar_password",
}


def ensure_user(store: Any, name: str, password: str, *, admin: bool) -> str:
    if store.has_user(name, use_primary=True):
        store.update_user(name, password=password, is_admin=admin)
        return "updated"
    store.create_user(name, password, is_admin=admin)
    return "created"


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: mlflow_users.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    config = read_auth_config()
    Path(config.database_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    store = SqlAlchemyStore()
    store.init_db(config.database_uri)
    wanted = {name: (SECRETS_DIR / file).read_text().strip() for name, file in USERS.items()}
    admin = os.environ["MLFLOW_AUTH_ADMIN_USERNAME"]
    wanted_admin = os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
    done = [f"{admin} (admin) {ensure_user(store, admin, wanted_admin, admin=True)}"]
    done += [f"{n} {ensure_user(store, n, p, admin=False)}" for n, p in wanted.items()]
    print(f"mlflow users: {'; '.join(done)}", flush=True)
    os.execvp(argv[0], argv)  # noqa: S606 - the server, with this process's id (init's child)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
