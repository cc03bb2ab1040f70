"""Controller settings, read from ``SIGSERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from controller.artifact_sources import parse_sources
from controller.compatibility import Policy
from controller.environment import EnvironmentPolicy, ServingEnvironment
from controller.proofs import ProofPolicy, ProvingEnvironment

# The shortest secret taken (admin and serving tokens, the webhook secret): an empty one would
# let an empty "Bearer" in and key the webhook HMAC with nothing, and a typed word is guessed.
# 16 characters is past any search even from lower-case letters and digits alone (36**16, about
# 2**82); the secrets the local stack, compose and KubeRay generate are 32 or more.
MIN_SECRET_CHARS = 16


def _long_enough(value: SecretStr) -> SecretStr:
    if len(value.get_secret_value()) < MIN_SECRET_CHARS:
        raise PydanticCustomError(
            "secret_too_short",
            "must be at least {minimum} characters (it has {length})",
            {"minimum": MIN_SECRET_CHARS, "length": len(value.get_secret_value())},
        )
    return value


# A secret of at least ``MIN_SECRET_CHARS`` characters.
Secret = Annotated[SecretStr, AfterValidator(_long_enough)]


def settings_error(exc: ValidationError, prefix: str = "SIGSERVE_") -> str:
    """One line naming each variable that is wrong and why, for a refusal to start."""
    said = []
    for error in exc.errors(include_url=False, include_input=False):
        variable = prefix + "_".join(str(p) for p in error["loc"]).upper()
        reason = "is required" if error["type"] == "missing" else error["msg"]
        said.append(f"{variable} {reason}")
    if any(e["type"] == "secret_too_short" for e in exc.errors()):
        said.append(f"make one with: {_MAKE_ONE}")
    return "; ".join(said)


_MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIGSERVE_", extra="ignore")

    home: Path = Path(".sigserve")
    controller_host: str = "127.0.0.1"
    controller_port: int = 8080
    # Defaults to SQLite under ``home``; PostgreSQL by URL (``postgresql://`` gets psycopg 3).
    database_url: str | None = None
    # How long a statement waits for a lock another writer holds before it fails (SQLite's
    # busy timeout, PostgreSQL's lock_timeout); an admin call that fails so answers 503 with
    # Retry-After, and nothing of it is written.
    database_busy_timeout_s: float = Field(default=30.0, gt=0)
    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    # Where a version's artifacts may be read from: URI prefixes, comma- or space-separated
    # (mlflow-artifacts:,s3://models/prod). Unset: the tracking server's own store. Elsewhere:
    # quarantined before anything is fetched (docs/security.md, "Artifact sources and sizes").
    artifact_sources: Annotated[
        tuple[str, ...] | None, NoDecode, BeforeValidator(parse_sources)
    ] = None
    admin_token: Secret
    # Serving replicas' own token, for their reports (``POST /serving/load-failures``): not
    # the admin token, which can pin and release. Unset, reports are refused (401).
    serving_token: Secret | None = None
    # The serving app's URL (http://host:8000), where ``sigserve check --prove`` has an artifact
    # proven before it is registered (``POST /-/trials`` with the serving token,
    # controller.dry_run_proof). Unset, a dry run with ``prove`` is refused and says so.
    serving_url: str | None = None
    # Whether ``GET /routing-table`` answers only callers with the serving token (401 for the
    # rest): the table names every artifact's ``source``, and only then can anonymous callers
    # not fill the long-poll cap (docs/security.md, "The routing-table long-poll"). Either way,
    # only a caller with it can make the controller catch up to a revision it claims to have seen.
    routing_table_needs_token: bool = True
    # Routing-table polls held open at once; past it a poll is 503 + Retry-After at once, so
    # slow pollers cannot take every connection from /healthz and the admin API.
    long_poll_max_concurrent: int = Field(default=256, ge=1)
    # Shared with MLflow's webhook so deliveries can be verified. Without it, webhooks are refused.
    webhook_secret: Secret | None = None
    # Where MLflow should deliver; when set, the controller registers its own webhook at start.
    webhook_url: str | None = None
    webhook_name: str = "sigserve-controller"
    webhook_max_age_s: float = 300.0
    resync_interval_s: float = Field(default=30.0, gt=0)
    # How often the resync reconciles every model whatever its listing says, the safety net
    # under the resync that reconciles only what changed (controller/resync.py).
    full_resync_interval_s: float = Field(default=600.0, gt=0)
    # Models reconciled at once, each model by one pass at a time (controller/worker.py).
    reconcile_concurrency: int = Field(default=8, ge=1)
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    default_policy: Policy = Policy.BACKWARD
    # For models without a ``sigserve.environment`` tag: isolate|shared|off; the values before
    # issue 17 are read as the new ones (strict: isolate, warn: off; controller/environment.py).
    default_environment_policy: EnvironmentPolicy = EnvironmentPolicy.ISOLATE
    # Whether a version is proven on its own input example by a serving replica before it goes
    # live, for models without a ``sigserve.proof`` tag (controller/proofs.py). Off: a version
    # is live as soon as it passes the checks, as before proofs.
    default_proof: ProofPolicy = ProofPolicy.ON
    # The registry alias that mirrors each model's pinned default version.
    default_alias: str = "serving"
    # Whether registry writers steer serving: the policy tags (``sigserve.*``) and moving the
    # ``serving`` alias by hand. Off, only the admin API does, for teams whose registry
    # writers are not operators (docs/security.md, "The registry is a trust boundary").
    registry_controls: bool = True
    # What the serving environment has, for the environment check: a pip-freeze style lock
    # file of the serving image, and its Python version. Unset, the controller's own
    # interpreter stands for it (the local stack and the compose image share one environment).
    serving_lock_file: Path | None = None
    serving_python_version: str | None = None
    long_poll_max_s: float = 60.0
    # Several controllers on one PostgreSQL (controller/leadership.py): how often a follower
    # tries the leader's lock and the leader checks it still holds it; how long a leader frozen
    # with its session open keeps it; how often the published table and followers' reconcile
    # requests are looked for.
    leader_election_interval_s: float = Field(default=0.5, gt=0)
    leader_session_timeout_s: float = Field(default=10.0, gt=0)
    follower_poll_s: float = Field(default=0.25, gt=0)
    # How long the audit log keeps events (days).
    audit_retention_days: float = Field(default=90.0, gt=0)
    # How often the leader's stepper looks at the running rollouts (controller/rollout_stepper.py).
    rollout_interval_s: float = Field(default=1.0, gt=0)

    @classmethod
    def from_environment(cls, **values: Any) -> Self:
        """The settings, or ``SystemExit`` with one line naming what is wrong (no traceback):
        how ``python -m controller`` starts."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SystemExit(f"sigserve controller: not started: {settings_error(exc)}") from None

    def serving_environment(self) -> ServingEnvironment:
        if self.serving_lock_file is not None:
            found = ServingEnvironment.from_lock_file(
                self.serving_lock_file, self.serving_python_version
            )
        else:
            found = ServingEnvironment.current()
        return ProvingEnvironment(
            found.python_version, found.distributions, default_proof=self.default_proof
        )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'controller.db').resolve()}"
