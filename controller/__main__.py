"""``python -m controller``: run the controller with uvicorn on its configured address."""

from __future__ import annotations

import logging

import uvicorn

from controller.app import create_app
from controller.settings import ControllerSettings
from wire import logs


def main() -> None:
    # JSON lines to a file or pipe (the local stack's log file, a container's stdout), text on
    # a terminal; SIGSERVE_LOG_FORMAT=json|text decides otherwise (wire.logs).
    logs.configure("controller")
    settings = ControllerSettings.from_environment()
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    uvicorn.run(
        create_app(settings),
        host=settings.controller_host,
        port=settings.controller_port,
        # Long-polls would otherwise hold a graceful shutdown open for their whole timeout.
        timeout_graceful_shutdown=2,
        # uvicorn's own lines go through the handler above, in the same format.
        log_config=None,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
