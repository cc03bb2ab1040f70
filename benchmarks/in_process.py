"""The serving app in this process, one live model, no Ray: what the CPU-per-request benchmarks
(request_cpu.py, tensor_cpu.py) drive through httpx's ASGI transport."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


def in_process_app(name: str, model: Any, path: Path, signature: dict[str, Any]) -> Any:
    """``create_app`` serving ``model`` (loaded from ``path``) as version 1 of ``name``, the
    routing table handed over by a controller seam."""
    from serving.api import create_app
    from serving.loader import LoadedModel
    from serving.model_host import ModelHost
    from serving.resolve import Target
    from serving.table_source import TableSource
    from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

    table = RoutingTable(
        revision=1,
        models={
            name: ModelEntry(
                name=name,
                default_version="1",
                contract=signature,
                versions={
                    "1": VersionEntry(
                        version="1", state=VersionState.LIVE, signature=signature,
                        source=f"models:/m-{name}", mlmodel_digest="0" * 64,
                    )
                },
            )
        },
    )  # fmt: skip

    async def get_model(target: Target) -> LoadedModel:
        return LoadedModel(model, path)

    def controller(request: httpx.Request) -> httpx.Response:
        if int(request.url.params["after"]) < table.revision:
            return httpx.Response(200, content=table.model_dump_json())
        return httpx.Response(204)

    source = TableSource("http://controller", transport=httpx.MockTransport(controller))
    host = ModelHost(get_model, inline_below_s=0.002)
    return create_app(source, host, startup_wait_s=5)
