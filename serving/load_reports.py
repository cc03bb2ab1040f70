"""Telling the controller about artifacts this replica could not load.

The replica answers such a version 503 with the cause, and the loader remembers the failure for
a few seconds; but only the controller decides what is served, so a failure that cannot pass by
itself (``loader.LoadFailure``: downloaded and not loadable, or not the artifact checked) is
reported to it, ``POST {controller_url}/serving/load-failures`` with the serving token. The
controller quarantines the version with the cause as its reason, and clients get its 409 from the
next table on, instead of a 503 on every replica in turn.

Reports leave the request path: ``report`` only queues one, and a task sends it. A replica
tries a failed artifact again only after the loader has forgotten the failure (5 s), so at most
one report per artifact per 5 s leaves it, and the controller keeps the first and ignores
repeats. On top of that, a replica's reports are rate-limited (a token bucket: ``REPORT_BURST``
at once, ``REPORTS_PER_MINUTE`` after), so a replica that fails everything (a broken image)
cannot flood the controller; a report over the budget is dropped and logged, and the next
failed load of that artifact reports it again. After a release by hand, the next failure is
reported again and quarantines the version again. A report the controller cannot take now
(down, 5xx) is retried a few times with backoff, then dropped: the next failed load reports
again. A refusal (401, 404, 409, 422) is not retried; it is logged.

Proofs (``serving.proofs``) go the same way, ``POST {controller_url}/serving/proofs``, under the
same budget; the prover awaits each one (``send_proof``) and keeps a proof it could not deliver
to send it again later. Both name the environment of its own a version was loaded or proven in
(``environment_digest``, absent for the shared one): the controller counts a report only for the
environment it assigned the version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from serving.loader import LoadFailure
from serving.proofs import Proof
from wire.token_bucket import TokenBucket

logger = logging.getLogger(__name__)

PATH = "/serving/load-failures"
PROOF_PATH = "/serving/proofs"
# Reports in flight at once; past it a report is dropped (the next failed load reports again).
_IN_FLIGHT = 100
# Reports a replica may send at once, and how many a minute after that.
REPORT_BURST = 10
REPORTS_PER_MINUTE = 12


def _temporary(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, httpx.TransportError)


class LoadFailureReporter:
    def __init__(
        self,
        controller_url: str,
        token: str,
        replica: str,
        *,
        attempts: int = 4,
        backoff_s: float = 0.5,
        burst: int = REPORT_BURST,
        per_minute: float = REPORTS_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = controller_url.rstrip("/") + PATH
        self._headers = {"Authorization": f"Bearer {token}"}
        self._replica = replica
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._transport = transport
        # The controller dedupes repeats; this keeps a replica failing everything (a broken
        # image, say) from flooding it.
        self._budget = TokenBucket(burst, per_minute, clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def report(self, failure: LoadFailure) -> None:
        """Send a report of ``failure`` in the background.

        Called on the replica's event loop (the loader's ``on_permanent_failure``).
        """
        if len(self._tasks) >= _IN_FLIGHT:
            logger.warning(
                "not reporting the failed load of %s/%s: too many reports in flight",
                failure.model,
                failure.version,
            )
            return
        if not self._budget.take():
            logger.warning(
                "not reporting the failed load of %s/%s: the replica's reports are over budget "
                "(its next failed load reports it again)",
                failure.model,
                failure.version,
            )
            return
        task = asyncio.get_running_loop().create_task(self._send(failure))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the reports in flight (tests, and a replica shutting down)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _post(self, url: str, body: dict[str, object]) -> httpx.Response:
        """POST ``body`` with the serving token, retried with backoff while the controller is
        down or answers 5xx; a refusal (4xx) raises at once."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(_temporary),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff_s, max=10.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                response = await self._http().post(url, json=body, headers=self._headers)
                response.raise_for_status()
        return response

    async def _send(self, failure: LoadFailure) -> None:
        body = {**asdict(failure), "replica": self._replica}
        if body["environment_digest"] is None:
            del body["environment_digest"]  # absent: the shared environment, as before
        try:
            response = await self._post(self._url, body)
        except httpx.HTTPStatusError as exc:
            logger.warning(
                "the controller refused the report of %s/%s: %s %s",
                failure.model,
                failure.version,
                exc.response.status_code,
                exc.response.text[:300],
            )
        except httpx.HTTPError as exc:
            logger.warning(
                "could not report the failed load of %s/%s: %s", failure.model, failure.version, exc
            )
        else:
            answer = response.json()
            logger.warning(
                "reported the failed load of %s/%s to the controller: %s",
                failure.model,
                failure.version,
                "recorded, now " + answer.get("state", "?")
                if answer.get("recorded")
                else "already known",
            )

    async def send_proof(self, proof: Proof) -> bool:
        """Report ``proof``; whether the controller has it now (taken, or refused for good:
        stale, unknown). False when over budget or the controller could not be reached: the
        prover sends it again later."""
        name = f"{proof.model}/{proof.version}"
        if not self._budget.take():
            logger.warning("not reporting the proof of %s yet: over the replica's budget", name)
            return False
        body = {**asdict(proof), "replica": self._replica}
        # Absent rather than null: a controller from before environments refuses no field.
        for optional in ("cause", "environment_digest"):
            if body[optional] is None:
                del body[optional]
        url = self._url.removesuffix(PATH) + PROOF_PATH
        try:
            response = await self._post(url, body)
        except httpx.HTTPStatusError as exc:
            logger.warning("the controller refused the proof of %s: %s %s", name,
                           exc.response.status_code, exc.response.text[:300])  # fmt: skip
            return not _temporary(exc)
        except httpx.HTTPError as exc:
            logger.warning("could not report the proof of %s: %s", name, exc)
            return False
        answer = response.json()
        logger.info("reported the proof of %s (%s): %s", name, proof.outcome,
                    "recorded, now " + str(answer.get("state", "?")) if answer.get("recorded")
                    else "already known")  # fmt: skip
        return True

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, on the replica's loop: most replicas never report anything.
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(10.0, connect=5.0), transport=self._transport
            )
        return self._client
