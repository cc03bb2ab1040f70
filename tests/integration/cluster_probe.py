"""A driver that looks at (or kills replicas on) a Ray cluster, run as its own process.

The test process cannot join a second cluster: a test session may already hold its own local
Ray (one per process). So each look is ``python -m tests.integration.cluster_probe ADDRESS
COMMAND APP``, printing one JSON object:

- ``replicas``: the app's replicas with their nodes, the node that has the ``second_node``
  resource, and the deployment's config as Serve reports it (what ``serve status`` and the
  dashboard show);
- ``kill-replicas``: kill every replica of the app (Serve starts new ones), as a node or a
  process failure would.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def _details(app: str) -> dict[str, Any]:
    import ray

    from serving.app import DEPLOYMENT
    from sigserve.cluster import _serve_details

    details = _serve_details()
    dep = details.applications[app].deployments[DEPLOYMENT]
    second = [
        n["NodeID"] for n in ray.nodes() if n["Alive"] and "second_node" in n["Resources"]
    ]
    return {
        "status": str(details.applications[app].status.value),
        "replicas": [
            {"id": r.replica_id, "state": str(r.state.value), "node_id": r.node_id,
             "actor_name": r.actor_name}
            for r in dep.replicas
        ],
        "second_node": second[0] if second else None,
        "deployment_config": dep.deployment_config.model_dump(mode="json", exclude_unset=True),
    }


def main(argv: list[str]) -> int:
    address, command, app = argv
    import ray

    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        found = _details(app)
        if command == "kill-replicas":
            for replica in found["replicas"]:
                actor = ray.get_actor(replica["actor_name"], namespace="serve")
                ray.kill(actor, no_restart=True)
        print(json.dumps(found))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
