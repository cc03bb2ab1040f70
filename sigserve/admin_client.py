"""A client of the controller's admin API (``controller.admin``), for the ``sigserve`` CLI.

Every call goes through ``AdminClient._call``, the one place where HTTP becomes Python: a 2xx
answer is the API's JSON as is (typed below), anything else one of the ``AdminError``s, built
from the problem+json document the controller answered (RFC 9457: ``detail``, ``reasons`` on a
409, ``errors`` on a 422). The admin token goes into the ``Authorization`` header and nowhere
else: not into a message, a ``repr`` or an exception.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict, cast
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "SIGSERVE_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a token
URL_ENV = "SIGSERVE_CONTROLLER_URL"


class ModelSummary(TypedDict):
    name: str
    default_version: str | None
    policy: str
    environment_policy: str
    live: int
    quarantined: int
    pending: int


class ModelList(TypedDict):
    models: list[ModelSummary]


class VersionDetail(TypedDict):
    version: str
    state: str
    reasons: list[str]
    warnings: list[str]
    has_signature: bool | None
    decided_at: str | None
    source: str | None
    artifact_uri: str | None
    mlmodel_digest: str | None
    environment: dict[str, Any] | None
    # {"action": "quarantine" | "release", "reason", "actor", "at"}
    override: dict[str, Any] | None
    # {"kind", "cause", "mlmodel_digest", "replica", "at"}
    load_failure: dict[str, Any] | None


class Alias(TypedDict):
    name: str
    version: str | None


class ModelDetail(TypedDict):
    name: str
    default_version: str | None
    policy: str
    environment_policy: str
    contract: dict[str, Any] | None
    last_webhook_at: str | None
    last_version_webhook_at: str | None
    alias: Alias
    alias_refusal: dict[str, Any] | None
    registry_warning: str | None
    versions: list[VersionDetail]


class Changed(ModelDetail):
    """The model as a change left it; ``published``: serving is being told already."""

    published: bool


class Redecided(TypedDict):
    """A version whose state a pin changed (a new contract decides every version again)."""

    version: str
    before: str
    after: str
    reasons: list[str]


class Pinned(Changed):
    contract_changed: bool
    redecided: list[Redecided]


class Event(TypedDict):
    id: int
    at: str | None
    kind: str
    version: str | None
    actor: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class EventPage(TypedDict):
    events: list[Event]
    # The ``before`` of the next (older) page; None on the last.
    next: int | None


class Checked(TypedDict):
    """The gate's verdict on an artifact as the model's next version; nothing was written."""

    model: str
    source: str | None
    location: str | None
    verdict: str  # live | quarantined | pending
    would_be_version: str
    reasons: list[str]
    warnings: list[str]
    first_version: bool
    contract: dict[str, Any] | None
    policy: str
    environment_policy: str
    notes: list[str]
    # What the proof on its input example found (``--prove``): outcome (passed, failed,
    # not_exercised), exercised, cause, environment, replica, elapsed_ms; None: not made.
    proof: dict[str, Any] | None
    written: bool


class AdminError(Exception):
    """A call that did not succeed; ``problem`` is the controller's problem+json, if any."""

    def __init__(
        self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem

    @property
    def reasons(self) -> list[str]:
        """Why, one sentence each: a refused pin's ``reasons``, an invalid call's ``errors``."""
        problem = self.problem or {}
        reasons = [str(r) for r in problem.get("reasons") or []]
        for error in problem.get("errors") or []:
            if isinstance(error, dict):
                reasons.append(f"{error.get('field', '?')}: {error.get('reason', '?')}")
        return reasons


class Refused(AdminError):
    """The controller refused the call (409 a pin that breaks clients, 422 invalid, other 4xx)."""


class NotFound(AdminError):
    """No such model or version (404)."""


class Unavailable(AdminError):
    """The controller cannot be reached, timed out, or failed (5xx): temporary, try again."""


class Unauthorized(AdminError):
    """No admin token, or the controller refused it (401)."""


@dataclass(frozen=True)
class AdminToken:
    value: str = field(repr=False)
    # Where it came from, for messages: the variable's name or the secrets file's path.
    source: str


def find_token(env: Mapping[str, str] | None = None) -> AdminToken:
    """``SIGSERVE_ADMIN_TOKEN``, else the local stack's ``$SIGSERVE_HOME/secrets.json``."""
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV):
        return AdminToken(env[TOKEN_ENV], TOKEN_ENV)
    path = (Path(env.get("SIGSERVE_HOME") or ".sigserve") / "secrets.json").resolve()
    try:
        token = json.loads(path.read_text()).get("admin_token")
    except (OSError, ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise Unauthorized(
            f"no admin token: set {TOKEN_ENV}, or run where `sigserve up` keeps its secrets "
            f"(SIGSERVE_HOME; looked for {path})"
        )
    return AdminToken(token, str(path))


def controller_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get(URL_ENV) or DEFAULT_URL


def _problem(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class AdminClient:
    """Typed calls of the admin API; raises ``AdminError``s. Use as a context manager."""

    def __init__(
        self,
        base_url: str,
        token: AdminToken,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token.value}", "Accept": "application/json"},
            # Connecting should be quick; a change re-decides every version before answering.
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            transport=transport,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def list_models(self) -> ModelList:
        return cast(ModelList, self._call("GET", "/admin/models"))

    def model(self, name: str) -> ModelDetail:
        return cast(ModelDetail, self._call("GET", f"/admin/models/{_seg(name)}"))

    def pin(
        self, name: str, version: str, *, force: bool = False, adopt_contract: bool = False
    ) -> Pinned:
        body: dict[str, Any] = {"version": version, "force": force}
        if adopt_contract:
            body["adopt_contract"] = True
        return cast(Pinned, self._call("PUT", f"/admin/models/{_seg(name)}/default", body))

    def set_policy(
        self, name: str, *, policy: str | None = None, environment: str | None = None
    ) -> Changed:
        body = {k: v for k, v in (("policy", policy), ("environment", environment)) if v}
        return cast(Changed, self._call("PUT", f"/admin/models/{_seg(name)}/policy", body))

    def quarantine(self, name: str, version: str, reason: str) -> Changed:
        path = f"/admin/models/{_seg(name)}/versions/{_seg(version)}/quarantine"
        return cast(Changed, self._call("POST", path, {"reason": reason}))

    def release(self, name: str, version: str, reason: str) -> Changed:
        path = f"/admin/models/{_seg(name)}/versions/{_seg(version)}/release"
        return cast(Changed, self._call("POST", path, {"reason": reason}))

    def events(self, name: str, *, limit: int = 50, before: int | None = None) -> EventPage:
        params: dict[str, int] = {"limit": limit}
        if before is not None:
            params["before"] = before
        path = f"/admin/models/{_seg(name)}/events"
        return cast(EventPage, self._call("GET", path, params=params))

    def check(
        self,
        name: str,
        *,
        source: str | None = None,
        local: dict[str, str | None] | None = None,
        prove: bool = False,
    ) -> Checked:
        """A dry run of the gate on ``source`` (a URI) or ``local`` (a model directory's files:
        ``mlmodel``, ``requirements``, ``python_env``); ``prove``: its proof on its input
        example too, made by the serving app."""
        body: dict[str, Any] = {"source": source} if source is not None else {"local": local}
        if prove:
            body["prove"] = True
        return cast(Checked, self._call("POST", f"/admin/models/{_seg(name)}/check", body))

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """The one boundary: an answer's JSON, or the ``AdminError`` that says what went wrong."""
        where = f"the controller at {self.base_url}"
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.TimeoutException as exc:
            raise Unavailable(f"{where} did not answer in time ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach {where} ({type(exc).__name__}: {exc})") from None
        problem = _problem(response)
        status = response.status_code
        if response.is_success:
            if problem is None:
                raise Unavailable(f"{where} answered {status} without a JSON object", status=status)
            return problem
        detail = str((problem or {}).get("detail") or response.reason_phrase or f"HTTP {status}")
        if status == 401:
            raise Unauthorized(
                f"{where} refused the admin token from {self._token.source}; set {TOKEN_ENV} "
                "to the controller's admin token (`sigserve up` prints it)",
                status=status, problem=problem,
            )  # fmt: skip
        if status == 404:
            raise NotFound(detail, status=status, problem=problem)
        if status >= 500:
            raise Unavailable(f"{where} answered {status}: {detail}", status=status,
                              problem=problem)  # fmt: skip
        raise Refused(detail, status=status, problem=problem)


def _seg(value: str) -> str:
    """One path segment: a model name with a slash or a space must not make another path."""
    return quote(value, safe="")
