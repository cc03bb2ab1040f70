"""``python -m controller``: run the controller with uvicorn on its configured address."""

from __future__ import annotations

import logging

import uvicorn

from controller.app import create_app
from controller.settings import ControllerSettings


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = ControllerSettings()  # type: ignore[call-arg]
    uvicorn.run(
        create_app(settings),
        host=settings.controller_host,
        port=settings.controller_port,
        # Long-polls would otherwise hold a graceful shutdown open for their whole timeout.
        timeout_graceful_shutdown=2,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
