"""The ``sigserve`` command.

- ``sigserve up``: the whole local stack in one process tree, until Ctrl-C.
- ``sigserve controller``: the controller alone (``python -m controller`` does the same).
- ``sigserve serve``: deploy the serving app onto a running Ray cluster and exit
  (``sigserve.cluster``).
- ``sigserve status|pin|adopt|quarantine|release|events|policy``: the controller's admin API
  (``sigserve.admin_cli``).
- ``sigserve rollout``: a version rolled out step by step (``sigserve.rollout_cli``).
"""

from __future__ import annotations

import argparse
import sys

from sigserve import admin_cli, rollout_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sigserve", description=__doc__.splitlines()[0], epilog=admin_cli.EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start MLflow, the controller and the serving app; Ctrl-C stops all")
    sub.add_parser("controller", help="run the controller (settings from SIGSERVE_*)")
    _add_serve(sub)
    admin_cli.register(sub)
    rollout_cli.register(sub)
    args = parser.parse_args(argv)
    if args.command in admin_cli.COMMANDS:
        return admin_cli.run(args)
    if args.command == "rollout":
        return rollout_cli.run(args)
    if args.command == "up":
        from sigserve.local_stack import run_local_stack

        return run_local_stack()
    if args.command == "controller":
        from controller.__main__ import main as controller_main

        controller_main()
        return 0
    if args.command == "serve":
        return _serve(args)
    return 2


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="deploy the serving app onto a running Ray cluster, wait until it serves, exit",
        description="Deploy the serving app (settings from SIGSERVE_*) onto a running Ray "
        "cluster; it keeps running after this exits.",
    )
    serve.add_argument("--address", default=None,
                       help="ray://HEAD:10001, HEAD:6379 or auto (default: $RAY_ADDRESS)")
    serve.add_argument("--http-host", default="0.0.0.0",
                       help="where Serve's HTTP ingress listens (default 0.0.0.0: a cluster is "
                       "reached from other machines, and HAProxy on one node must reach "
                       "replicas on the others)")
    serve.add_argument("--http-port", type=int, default=8000,
                       help="the HTTP ingress's port (default 8000)")
    serve.add_argument("--proxy-location", default="EveryNode",
                       choices=["EveryNode", "HeadOnly", "Disabled"],
                       help="which nodes run the HTTP ingress (default EveryNode)")
    serve.add_argument("--timeout", type=float, default=300.0,
                       help="seconds to wait for the app to serve (default 300)")
    serve.add_argument("--wait", choices=["http", "status"], default="http",
                       help="http (default): until GET /models answers 200; status: until "
                       "Serve reports the app RUNNING (the port is not reachable from here)")


def _serve(args: argparse.Namespace) -> int:
    from sigserve.cluster import ClusterError, deploy

    try:
        deployed = deploy(
            args.address, http_host=args.http_host, http_port=args.http_port,
            proxy_location=args.proxy_location, timeout_s=args.timeout,
            wait_http=args.wait == "http",
        )  # fmt: skip
    except ClusterError as exc:
        print(f"sigserve serve: {exc}", file=sys.stderr)
        return 1
    print(deployed.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
