"""The ``sigserve`` command.

- ``sigserve up``: the whole local stack in one process tree, until Ctrl-C.
- ``sigserve controller``: the controller alone (``python -m controller`` does the same).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sigserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start MLflow, the controller and the serving app; Ctrl-C stops all")
    sub.add_parser("controller", help="run the controller (settings from SIGSERVE_*)")
    args = parser.parse_args(argv)
    if args.command == "up":
        from sigserve.local_stack import run_local_stack

        return run_local_stack()
    if args.command == "controller":
        from controller.__main__ import main as controller_main

        controller_main()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
