"""Errors raised inside the serving app, and the HTTP problem each one becomes.

Code below the HTTP boundary raises these and never builds a response itself; the exception
handlers in ``serving.problems`` turn them into RFC 9457 problem+json in one place. Each class
carries its status, a stable problem ``slug`` (the last part of the problem ``type`` URI) and a
title, so adding an error means adding a class here and nothing else.

    SigserveError
     +-- ProblemError                     an answer a client can act on (4xx / 503)
     |    +-- NotReady                    503 + Retry-After: no routing table held yet
     |    +-- UnknownModel                404: the table has no such model
     |    +-- UnknownVersion              404: the model has no such version
     |    +-- UnknownRoute                404: a path under /v2 the protocol does not have
     |    +-- NoDefaultVersion            503 + Retry-After: nothing pinned yet, no version named
     |    +-- VersionPending              503 + Retry-After: the controller has not decided yet
     |    +-- VersionQuarantined          409 + reasons: blocked, never loaded
     |    +-- BadModelId                  400: the model-id header names another model
     |    +-- StreamUnsupported           406: a stream was asked for, and the version's
     |    |                               model does not implement ``predict_stream``
     |    +-- BodyTooLarge                413 + errors: more bytes than a request may send
     |    +-- UnsupportedMediaType        415 + errors: a content type the scoring protocol
     |    |                               does not take (MLflow refuses it too)
     |    +-- InvalidInput                422 + errors: the body does not fit the contract
     |    |    +-- ModelRejectedInput     422: MLflow's own schema enforcement refused it
     |    +-- VersionUnbound              503 + Retry-After: live, but the table names no
     |    |                               checked artifact (source, MLmodel digest) to load
     |    +-- ModelUnavailable            503 + Retry-After: the version could not be loaded,
     |    |                               or its artifact is not the one that was checked
     |    +-- VersionWedged               503 + Retry-After: a predict call of the version runs
     |    |                               past its deadline; no work until it returns
     |    +-- ModelFailed                 500: the model's own code raised on this input (its
     |    |                               message, not a stack trace; other requests unaffected)
     |    +-- PredictTimeout              504: the predict call outlived its deadline
     |    +-- TrialRefused                401 + WWW-Authenticate: a trial (``POST /-/trials``,
     |    |                               ``serving.trials``) without the serving token
     |    +-- TrialBusy                   503 + Retry-After: the replica runs another trial
     |    +-- TrialUnavailable            503 + Retry-After: the replica could not make the
     |    |                               trial for reasons of its own (store down, memory)
     |    +-- TrialTimeout                504: the trial outlived its ``timeout_s``
     +-- ContractError                    a signature that cannot become an API (a bug or a
                                          registry oddity: answered as a plain 500)

Anything else that escapes a route is answered by the catch-all as a 500 problem with no
stack trace. Errors raised in the model replica cross Ray wrapped in ``RayTaskError``; the
ingress unwraps them so the handlers see the original class.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SigserveError(Exception):
    """Base of every error the serving app raises on purpose."""


class ContractError(SigserveError):
    """A signature that cannot be turned into request and response models."""


class ProblemError(SigserveError):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"
    # Seconds a client should wait before trying again; only 503s set it.
    retry_after: ClassVar[int | None] = None

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        # Kept as attributes, not only in args: RayTaskError copies __dict__ across processes.
        self.detail = detail
        self.extensions = extensions
        # Response headers of the answer (the version that ran, ``serving.api``).
        self.headers: dict[str, str] = {}


class NotReady(ProblemError):
    status = 503
    slug = "not-ready"
    title = "The serving app has no routing table yet"
    retry_after = 1


class UnknownModel(ProblemError):
    status = 404
    slug = "unknown-model"
    title = "Unknown model"


class UnknownVersion(ProblemError):
    status = 404
    slug = "unknown-version"
    title = "Unknown model version"


class UnknownRoute(ProblemError):
    status = 404
    slug = "unknown-route"
    title = "No such route"


class NoDefaultVersion(ProblemError):
    status = 503
    slug = "no-default-version"
    title = "The model has no default version yet"
    retry_after = 1


class VersionPending(ProblemError):
    status = 503
    slug = "version-pending"
    title = "The version's compatibility has not been decided yet"
    retry_after = 1


class VersionQuarantined(ProblemError):
    status = 409
    slug = "version-quarantined"
    title = "The version is quarantined"


class BadModelId(ProblemError):
    status = 400
    slug = "bad-model-id"
    title = "The model id header does not match the path"


class StreamUnsupported(ProblemError):
    """406: a stream was asked for, and the version's model does not implement one."""

    status = 406
    slug = "stream-unsupported"
    title = "The model version cannot stream"


class BodyTooLarge(ProblemError):
    status = 413
    slug = "body-too-large"
    title = "The request body is larger than a request may send"


class UnsupportedMediaType(ProblemError):
    status = 415
    slug = "unsupported-media-type"
    title = "The scoring protocol does not take this content type"


class InvalidInput(ProblemError):
    status = 422
    slug = "invalid-input"
    title = "The request does not fit the model's contract"


class ModelRejectedInput(InvalidInput):
    slug = "model-rejected-input"
    title = "The model version refused the input"


class VersionUnbound(ProblemError):
    status = 503
    slug = "version-unbound"
    title = "The version is not bound to a checked artifact"
    retry_after = 5


class ModelFailed(ProblemError):
    status = 500
    slug = "model-failed"
    title = "The model version failed on this input"


class ModelUnavailable(ProblemError):
    status = 503
    slug = "model-unavailable"
    title = "The model version could not be loaded"
    retry_after = 5


class VersionWedged(ProblemError):
    status = 503
    slug = "version-wedged"
    title = "The version has a predict call running past its deadline"
    retry_after = 5


class PredictTimeout(ProblemError):
    status = 504
    slug = "predict-timeout"
    title = "The model version did not answer in time"


class TrialRefused(ProblemError):
    status = 401
    slug = "unauthorized"
    title = "A trial needs the serving token"


class TrialBusy(ProblemError):
    status = 503
    slug = "trial-busy"
    title = "This replica is running another trial"
    retry_after = 5


class TrialUnavailable(ProblemError):
    status = 503
    slug = "trial-unavailable"
    title = "The replica could not make the trial"
    retry_after = 5


class TrialTimeout(ProblemError):
    status = 504
    slug = "trial-timeout"
    title = "The trial did not end within its deadline"
