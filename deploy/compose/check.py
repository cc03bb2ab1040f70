"""`make compose-check`: build the compose demo, bring it up, run the scenario from the host, tear
it all down (volumes too), also on failure or Ctrl-C.

Steps, each timed:
1. Docker: a daemon (``../shared/tools/local-base-image.sh`` starts one where none answers) and
   a compose command (``docker compose``, else ``docker-compose``, installed from Debian's
   packages when missing and run as root).
2. Images: the base (``--base-image``; the stand-in ``sigserve-local/python:3.11`` is built by
   the shared script when missing), the wheelhouse (``deploy/compose/wheelhouse.sh``, skipped
   while ``requirements.lock`` is unchanged), then ``compose build``.
3. ``compose up`` under a project name of its own, on free host ports, with a generated admin
   token; the time until every service is healthy and until the demo models are decided.
4. The scenario from the host: v1 live by default, v2 by header, v3 409 with reasons, the
   embedding model, a pin through the admin API (and a pin to v3 refused); ``sigserve check
   --prove`` of v2 passing its proof on a replica (the controller reaching the serving app
   through the proxy's port 8001) and of v3 refused (``compose_prove``); gRPC's ``ModelInfer``
   on the published gRPC port answering ``/serve``'s numbers, and v3's refusal as
   ``FAILED_PRECONDITION`` with the same reasons (``compose_grpc``); a version
   registered from the host after start going live through MLflow's webhook to the controller
   container and the long-poll to the Ray containers (the decision's audit event names the
   webhook delivery); the controller container restarted: serving answers meanwhile, and
   afterwards every decision is the one made before (same states, reasons and decision times,
   no new audit events) and a version registered after the restart goes live too.
   Who reads and reaches what, from inside the containers (``compose_isolation``): each
   service's secrets are only those granted to it, the serving replicas' processes hold no
   secret of MLflow's, PostgreSQL's or the admin's, the MLflow and controller containers cannot
   open a TCP connection to Ray's GCS or client port nor serving's HTTP or gRPC port (the
   controller's proxy, on Ray's network, can), and Ray
   refuses a Ray Client without its token (and takes it with the token).
   The guards (``compose_guards``): MLflow refuses an anonymous registration (401) and the
   replicas' user's (403), and a version whose source its validation regex does not match
   (``file:///etc``, an http URL, a foreign bucket); slow clients (headers a byte a second, up
   to 500 or the fd limit) on the controller's published port leave ``/healthz`` answering
   and are cut by HAProxy.
5. Figures: build time, time to healthy, where the serving replicas run, memory of each
   container (``docker stats --no-stream``), image sizes.
6. ``compose down -v``: containers, network and volumes.

Run from the repository's top with its venv: ``.venv/bin/python deploy/compose/check.py``.

The parts are sibling modules, imported as plain modules (Python puts this script's directory
first on ``sys.path``): ``compose_output`` (progress lines, ``CheckFailed``), ``compose_docker``
(docker and compose processes), ``compose_stack`` (the compose project: settings, ``up``,
tear-down), ``compose_images`` (base image, wheelhouse, build), ``compose_scenario`` (the checks
from the host), ``compose_isolation`` (the checks from inside the containers),
``compose_guards`` (MLflow's authentication and source validation, slow clients) and
``compose_figures`` (the figures at the end).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from compose_docker import REPO, compose_command, ensure_docker, run
from compose_figures import memory_table, print_figures
from compose_grpc import grpc_from_host
from compose_guards import mlflow_authentication, slow_clients, source_validation
from compose_images import (
    APP_IMAGE,
    LOCAL_BASE,
    POSTGRES_IMAGE,
    build_images,
    ensure_base_image,
    ensure_wheelhouse,
)
from compose_isolation import isolation
from compose_output import CheckFailed, ok, say, step
from compose_prove import prove_from_host
from compose_scenario import (
    controller_restart,
    new_version_goes_live,
    replica_placement,
    scenario_notebook,
)
from compose_stack import Stack, new_stack, tear_down, up


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--base-image",
        default=LOCAL_BASE,
        help=f"BASE_IMAGE of the builds (default {LOCAL_BASE}, built when missing)",
    )
    p.add_argument(
        "--wheelhouse",
        default="wheelhouse",
        help="wheelhouse directory under the repository (default wheelhouse)",
    )
    p.add_argument(
        "--from-pypi",
        action="store_true",
        help="install from PyPI inside the build instead of a wheelhouse",
    )
    p.add_argument("--cold", action="store_true", help="build without the layer cache")
    p.add_argument("--project", default="sigserve-compose-check", help="compose project name")
    p.add_argument("--timeout", type=float, default=900, help="seconds for the stack to come up")
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the stack up at the end (for a look; `down -v` it yourself)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)

    build_s: float | None = None
    stack: Stack | None = None
    failed: str | None = None
    work = Path(tempfile.mkdtemp(prefix="sigserve-compose-check-"))
    try:
        with step("Docker"):
            ensure_docker()
            compose = compose_command()
            version = run([*compose, "version"]).stdout.splitlines()[0]
            ok(f"compose: {' '.join(compose)} ({version})")
        with step("Images"):
            ensure_base_image(args.base_image)
            wheelhouse = "" if args.from_pypi else args.wheelhouse
            if wheelhouse:
                ensure_wheelhouse(REPO / wheelhouse)
            stack = new_stack(
                compose,
                project=args.project,
                base_image=args.base_image,
                wheelhouse=wheelhouse,
                app_image=APP_IMAGE,
                postgres_image=POSTGRES_IMAGE,
            )
            stack.down()  # whatever an earlier, interrupted run left under this project name
            build_s = build_images(stack, cold=args.cold)
        with step(f"compose up (project {args.project}, ports {stack.ports})"):
            up(stack, args.timeout)
            ok(
                f"every service healthy {stack.figures['healthy_s']:.1f} s after `up`; demo "
                f"models registered and decided after {stack.figures['demo_ready_s']:.1f} s"
            )
            replica_placement(stack)
        with step("The notebook's scenario, from the host"):
            scenario_notebook(stack)
        with step("The Open Inference Protocol over gRPC, from the host"):
            grpc_from_host(stack)
        with step("sigserve check --prove from the host (controller -> proxy :8001 -> Ray)"):
            prove_from_host(stack)
        with step("Who reads and reaches what, from inside the containers"):
            isolation(stack)
        with step("MLflow's authentication and source validation; slow clients"):
            mlflow_authentication(stack)
            source_validation(stack)
            slow_clients(stack)
        with step("A version registered after start goes live through the webhook"):
            new_version_goes_live(stack, work, "webhook")
        with step("The controller container restarted keeps its decisions"):
            controller_restart(stack)
            new_version_goes_live(stack, work, "after_restart")
        stack.figures["memory"] = memory_table(stack)
    except CheckFailed as exc:
        failed = str(exc)
    except KeyboardInterrupt as exc:
        failed = f"interrupted ({exc or 'Ctrl-C'})"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        if stack is not None:
            if failed and "memory" not in stack.figures:
                stack.figures["memory"] = memory_table(stack)
            print_figures(stack, build_s)
            if args.keep:
                say(f"\nLeft up (--keep): {' '.join(stack.compose)} -p {stack.project} down -v")
            else:
                with step("compose down -v"):
                    tear_down(stack)
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        say(f"\nFAILED: {failed}")
        return 1
    say("\ncompose-check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
