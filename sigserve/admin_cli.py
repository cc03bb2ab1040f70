"""The admin commands of ``sigserve``: ``status``, ``pin``, ``adopt``, ``quarantine``,
``release``, ``events``, ``policy`` and ``check`` (the gate's dry run), on the controller's
admin API (``sigserve.admin_client``).

``sigserve.cli`` registers them (``register``) and hands their parsed arguments to ``run``,
which returns the exit code (``EXIT_CODES``). Tables come from ``sigserve.admin_render``;
``--json`` prints the API's JSON as is instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sigserve import admin_render as render
from sigserve.admin_client import (
    TOKEN_ENV,
    URL_ENV,
    AdminClient,
    AdminError,
    AdminToken,
    Changed,
    NotFound,
    Refused,
    Unauthorized,
    Unavailable,
    controller_url,
    find_token,
)

OK, REFUSED, USAGE, NOT_FOUND, UNAVAILABLE, UNAUTHORIZED = 0, 1, 2, 3, 4, 5
EXIT_CODES = f"""\
exit codes (status, pin, adopt, quarantine, release, events, policy):
  0  done
  1  refused by the controller (409: a pin that would break the contract's
     clients; 422: invalid); its detail and reasons are printed
  2  usage error
  3  not found: no such model or version (404)
  4  the controller cannot be reached, timed out or failed (5xx, 503):
     temporary, try again
  5  unauthorized (401): the admin token comes from {TOKEN_ENV}, else
     from the local stack's $SIGSERVE_HOME/secrets.json (default ./.sigserve)
"""
_EXIT: list[tuple[type[AdminError], int]] = [
    (Refused, REFUSED), (NotFound, NOT_FOUND), (Unavailable, UNAVAILABLE),
    (Unauthorized, UNAUTHORIZED),
]  # fmt: skip
COMMANDS = ("status", "pin", "adopt", "quarantine", "release", "events", "policy", "check")
# ``check`` has exit codes of its own, for CI: whether registering would be refused.
LIVE, WOULD_QUARANTINE, CANNOT_TELL = 0, 1, 2
CHECK_EXIT_CODES = """\
MODEL_URI: runs:/<run id>/<path> (what register_model is given),
models:/<name>/<version>, models:/<name>@<alias>, models:/<model id>, an
artifact location the controller may read (s3://..., file:///...,
mlflow-artifacts:/...), or a model directory on this machine (a path without
a scheme): its MLmodel, requirements.txt and python_env.yaml are read here
and sent, since the controller cannot read this disk (the three together must
fit the admin API's 16 KiB body bound).

--prove: the serving app loads the artifact where it would serve it (the
shared environment or one of its own) and calls it on its own input example,
as it proves a registered version; the controller needs SIGSERVE_SERVING_URL.
It waits at least 630 seconds (an environment may be built first).

exit codes (check):
  0  the version would go live (with --prove: and passed its proof; without,
     the proof on its input example is not made)
  1  the version would be quarantined (with --prove: or failed its proof);
     the reasons are printed as the 409 gives them
  2  cannot tell: the controller cannot be reached or refused the call, the
     URI names nothing, the artifact cannot be read yet (it would stay
     pending), or the proof could not be made (no serving URL, the serving
     app unreachable or busy)
"""
# The files of a local model directory the gate reads, and the most of each read here (the
# controller's own cap, controller.artifact_files.MAX_FILE_BYTES).
LOCAL_FILES = {"mlmodel": "MLmodel", "requirements": "requirements.txt",
               "python_env": "python_env.yaml"}  # fmt: skip
LOCAL_FILE_MAX = 1 << 20
CHECKED_URIS = "runs:/<run id>/<path>, models:/<name>/<version>, ..."
# The controller's bound on a trial (controller.dry_run_proof.PROVE_TIMEOUT_S) and a margin.
PROVE_WAIT_S = 630.0
POLICIES = ("backward", "exact", "none")
# strict and warn: the values before environments of their own (issue 17), which the controller
# reads as isolate and off.
ENVIRONMENT_POLICIES = ("isolate", "shared", "off", "strict", "warn")


def _limit(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 500:
        raise argparse.ArgumentTypeError("between 1 and 500")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the admin commands to ``sigserve``'s subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--controller", metavar="URL", default=None,
                        help=f"the controller's URL (default: ${URL_ENV}, else "
                        "http://127.0.0.1:8080)")
    common.add_argument("--json", action="store_true",
                        help="print the API's JSON as is (one document); on a refusal, the "
                        "controller's problem+json")
    common.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for an answer (default 30)")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[common], help=help_, description=help_[0].upper() + help_[1:] + ".",
            epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

    status = add("status", "the models, or one model's versions with their states and reasons")
    status.add_argument("model", nargs="?", help="one model (default: all of them)")
    pin = add("pin", "make VERSION the model's default, keeping the contract (refused when "
              "VERSION breaks it)")
    adopt = add("adopt", "make VERSION the model's default and its signature the contract "
                "(refused when VERSION breaks the contract); every version is decided again "
                "and those the new contract breaks are listed")
    for command in (pin, adopt):
        command.add_argument("model")
        command.add_argument("version")
        command.add_argument("--force", action="store_true",
                             help="a version that breaks the contract: its signature becomes "
                             "the contract and every version is decided again")
    for name, what in (("quarantine", "quarantine a version by hand, whatever the gate says"),
                       ("release", "undo a quarantine by hand, or serve a version the gate "
                        "quarantined all the same")):  # fmt: skip
        override = add(name, what)
        override.add_argument("model")
        override.add_argument("version")
        override.add_argument("--reason", required=True, help="why (kept in the audit log)")
    events = add("events", "the model's audit log, newest first")
    events.add_argument("model")
    events.add_argument("--limit", type=_limit, default=50, help="events to show (1-500, 50)")
    events.add_argument("--before", type=int, default=None, metavar="ID",
                        help="older events than this id (the next page)")
    check = sub.add_parser(
        "check", parents=[common],
        help="what the gate would say if MODEL_URI were registered as a new version of "
        "--model; nothing is registered or written",
        description="Ask the controller to decide MODEL_URI as the next version of --model "
        "(its contract, compatibility and environment policies, the serving environment), "
        "exactly as the gate would once it is registered. Nothing is registered or written.",
        epilog=CHECK_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    check.add_argument("model_uri", metavar="MODEL_URI")
    check.add_argument("--model", required=True, metavar="NAME",
                       help="the registered model it would become a version of (one that does "
                       "not exist yet: the artifact would be its first version)")
    check.add_argument("--prove", action="store_true",
                       help="also have the serving app load it where it would serve it and call "
                       "it on its input example, as the gate proves a version")
    policy = add("policy", "set the model's compatibility policy, environment policy or both")
    policy.add_argument("model")
    policy.add_argument("policy", nargs="?", choices=POLICIES,
                        help="compatibility: backward (default rules), exact or none")
    policy.add_argument("--environment", choices=ENVIRONMENT_POLICIES,
                        help="where versions are served: isolate (an environment of their "
                        "own where the shared one fails), shared or off")


def open_client(url: str, token: AdminToken, timeout_s: float) -> AdminClient:
    """The client the commands use (a seam: the unit tests hand it a mock transport)."""
    return AdminClient(url, token, timeout_s=timeout_s)


def run(args: argparse.Namespace) -> int:
    """Run one admin command; its exit code."""
    out, err = Console(), Console(stderr=True)
    if args.command == "check":
        return _check(args, out, err)
    if args.command == "policy" and not (args.policy or args.environment):
        err.print("sigserve policy: give a policy (backward|exact|none), --environment "
                  "(isolate|shared|off) or both", markup=False)  # fmt: skip
        return USAGE
    try:
        token = find_token()
        with open_client(args.controller or controller_url(), token, args.timeout) as client:
            return _HANDLERS[args.command](client, args, out)
    except AdminError as exc:
        return _failed(args, exc, out, err)


def _failed(args: argparse.Namespace, exc: AdminError, out: Console, err: Console) -> int:
    code = next(c for kind, c in _EXIT if isinstance(exc, kind))
    if args.json and exc.problem is not None:
        render.print_json(out, exc.problem)
    message = Text(f"sigserve {args.command}: ", style="bold")
    message.append(str(exc), style="red")
    if code == UNAVAILABLE and "try again" not in str(exc):
        message.append("; try again")
    err.print(message)
    if exc.reasons:
        reasons = Table.grid(padding=(0, 1))  # a hanging indent: wrapped lines stay right of •
        reasons.add_column(no_wrap=True)
        reasons.add_column(ratio=1)
        for reason in exc.reasons:
            reasons.add_row("  •", Text(reason))
        err.print(reasons)
    # A pin refused for breaking the contract says so (a version that cannot be served at all
    # is refused with or without force); the problem has no field for it, only its detail.
    if exc.status == 409 and args.command in ("pin", "adopt") and '"force": true' in str(exc):
        err.print(Text(f"  (--force makes version {args.version}'s signature the contract)"))
    return code


def _status(client: AdminClient, args: argparse.Namespace, out: Console) -> int:
    if args.model is None:
        listed = client.list_models()
        if args.json:
            render.print_json(out, listed)
        else:
            out.print(render.models_table(listed))
        return OK
    model = client.model(args.model)
    if args.json:
        render.print_json(out, model)
    else:
        out.print(render.model_view(model))
    return OK


def _changed(out: Console, args: argparse.Namespace, said: str, model: Changed) -> int:
    if args.json:
        render.print_json(out, model)
        return OK
    out.print(Text(said, style="bold green"))
    if not model["published"]:
        out.print(Text("(stored; serving is told at the controller's next pass)", style="yellow"))
    out.print(render.model_view(model))
    return OK


def _pin(client: AdminClient, args: argparse.Namespace, out: Console) -> int:
    adopt = args.command == "adopt"
    model = client.pin(args.model, args.version, force=args.force, adopt_contract=adopt)
    said = f"{args.model}: version {model['default_version']} is the default"
    if model["contract_changed"]:
        said += "; its signature is the contract, every version was decided again"
    else:
        said += "; the contract is kept"
    code = _changed(out, args, said, model)
    if not args.json and (adopt or args.force or model["redecided"]):
        out.print(render.redecided_view(model["redecided"]))
    return code


def _override(client: AdminClient, args: argparse.Namespace, out: Console) -> int:
    act = client.quarantine if args.command == "quarantine" else client.release
    model = act(args.model, args.version, args.reason)
    now = next((v["state"] for v in model["versions"] if v["version"] == args.version), "?")
    return _changed(out, args, f"{args.model}: version {args.version} is {now}", model)


def _policy(client: AdminClient, args: argparse.Namespace, out: Console) -> int:
    model = client.set_policy(args.model, policy=args.policy, environment=args.environment)
    said = (f"{args.model}: policy {model['policy']}, environment {model['environment_policy']}"
            "; every version was decided again")  # fmt: skip
    return _changed(out, args, said, model)


def _events(client: AdminClient, args: argparse.Namespace, out: Console) -> int:
    page = client.events(args.model, limit=args.limit, before=args.before)
    if not page["events"] and args.before is None:
        # The log of a name never seen is empty, not a 404: ask whether the model exists.
        client.model(args.model)
    if args.json:
        render.print_json(out, page)
        return OK
    out.print(render.events_table(args.model, page["events"]))
    if page["next"] is not None:
        out.print(f"Older: sigserve events {args.model} --before {page['next']}", markup=False,
                  highlight=False)  # fmt: skip
    return OK


class _CannotTell(Exception):
    """A local model directory that cannot be sent: the message says why."""


def _local_model(directory: Path) -> dict[str, str | None]:
    """The gate's files of a model directory on this machine (absent ones None)."""
    files: dict[str, str | None] = {}
    for key, filename in LOCAL_FILES.items():
        path = directory / filename
        if not path.is_file():
            files[key] = None
            continue
        with path.open("rb") as f:
            data = f.read(LOCAL_FILE_MAX + 1)
        if len(data) > LOCAL_FILE_MAX:
            raise _CannotTell(f"{path} is larger than 1 MiB, the most the gate reads of it")
        files[key] = data.decode("utf-8", "replace")
    if files["mlmodel"] is None:
        raise _CannotTell(f"{directory} has no MLmodel file: it is not an MLflow model "
                          "directory")  # fmt: skip
    return files


def _local_directory(uri: str) -> Path | None:
    """The directory MODEL_URI names on this machine: a path without a scheme. A URI with one
    (``file://`` included) names a location the controller reads, under its allowlist."""
    if ":/" in uri:
        return None
    path = Path(uri)
    if not path.is_dir():
        raise _CannotTell(f"{uri} is not a directory here, nor a URI ({CHECKED_URIS})")
    return path


def _check(args: argparse.Namespace, out: Console, err: Console) -> int:
    said = Text("sigserve check: ", style="bold")
    # A proof may build an environment and load a model first: the controller bounds it.
    timeout = max(args.timeout, PROVE_WAIT_S) if args.prove else args.timeout
    try:
        directory = _local_directory(args.model_uri)
        local = _local_model(directory) if directory is not None else None
        token = find_token()
        with open_client(args.controller or controller_url(), token, timeout) as client:
            if local is not None:
                result = client.check(args.model, local=local, prove=args.prove)
            else:
                result = client.check(args.model, source=args.model_uri, prove=args.prove)
    except _CannotTell as exc:
        err.print(said.append(str(exc), style="red"))
        return CANNOT_TELL
    except AdminError as exc:
        if exc.status == 413:
            exc = Refused(f"{exc}; log the model (mlflow.<flavor>.log_model) and check the "
                          "runs:/ URI instead", status=413, problem=exc.problem)  # fmt: skip
        _failed(args, exc, out, err)
        return CANNOT_TELL
    if args.json:
        render.print_json(out, result)
    else:
        out.print(render.check_view(result))
    return {"live": LIVE, "quarantined": WOULD_QUARANTINE}.get(result["verdict"], CANNOT_TELL)


_HANDLERS: dict[str, Callable[[AdminClient, argparse.Namespace, Console], int]] = {
    "status": _status, "pin": _pin, "adopt": _pin, "quarantine": _override, "release": _override,
    "events": _events, "policy": _policy,
}  # fmt: skip
