"""Errors raised inside the controller.

::

    ControllerError
    ├── RegistryError                 talking to MLflow failed
    │   ├── RegistryUnavailable       temporary: retry later (network, 5xx, timeouts)
    │   ├── RegistryRefused           permanent: the same call fails again (permissions, a bad
    │   │                             parameter); a version read so is quarantined with the cause
    │   ├── VersionUnreadable         permanent: the version's MLmodel is not one MLflow reads
    │   └── RegisteredModelGone       the model no longer exists in the registry
    ├── NotFound                      the admin API was asked about something unknown (404)
    ├── InvalidRequest                the admin API was asked something it cannot do (422)
    ├── PinRefused                    the new default would break the contract's clients (409)
    ├── StaleReport                   a serving report about an artifact the version no longer
    │                                 has (409)
    ├── WebhookRejected               a delivery that must not be trusted (401)
    ├── PayloadTooLarge               a request body past its bound (413)
    ├── GenerationConflict            a reconcile's write refused: the model was written since
    │                                 it was read (temporary: the worker requeues it at once)
    └── SteppedDown                   a pass's write refused: this controller stopped leading
                                      since the pass began (nothing written; the next leader
                                      reconciles it)

The HTTP boundary (``controller.problems``) is the one place these become responses; the worker
is the one place that decides to retry (``RegistryUnavailable``, ``GenerationConflict``) or not.
Why generations and terms fence two leaders: docs/architecture.md, "The controller's database".
"""

from __future__ import annotations


class ControllerError(Exception):
    """Base of every error the controller raises on purpose."""


class RegistryError(ControllerError):
    pass


class RegistryUnavailable(RegistryError):
    """A temporary failure: the same call may succeed later."""


class RegistryRefused(RegistryError):
    """A permanent failure: the same call fails the same way (permissions, a bad parameter)."""


class VersionUnreadable(RegistryError):
    """A permanent failure of one version: its artifacts are not what MLflow can read."""


class RegisteredModelGone(RegistryError):
    """The registered model was deleted (or never existed)."""


class NotFound(ControllerError):
    pass


class InvalidRequest(ControllerError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class PinRefused(ControllerError):
    """A pin that would break clients of the contract, with the reasons, unless forced."""

    def __init__(self, detail: str, reasons: list[str]) -> None:
        super().__init__(detail)
        self.reasons = reasons


class StaleReport(ControllerError):
    """A load failure reported for an artifact that is not the version's own any more."""


class WebhookRejected(ControllerError):
    pass


class PayloadTooLarge(ControllerError):
    pass


class GenerationConflict(ControllerError):
    """The model was written since the record was read: decide again from a fresh read.

    Temporary, like a registry outage: the worker requeues the model, whose next pass reads
    the registry and the store again.
    """

    def __init__(self, name: str, read: int, stored: int) -> None:
        super().__init__(
            f"registered model '{name}' was written since it was read "
            f"(generation {read} read, {stored} stored)"
        )
        self.name, self.read, self.stored = name, read, stored


class SteppedDown(ControllerError):
    """Raised inside a pass's write transaction: the worker stopped leading since it began."""


class GaveWay(ControllerError):
    """Raised by a write-back between two of its writes: a pass wants the model, and a pass
    waits for no write-back of its model to run (``WriteBackLane.finished``); what is left is
    written by the job the lane runs again after that pass."""
