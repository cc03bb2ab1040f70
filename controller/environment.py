"""What the serving environment cannot load for sure, and what it merely differs in.

A version's artifacts say what it was logged with (``requirements.txt``, ``python_env.yaml``,
how the model is serialized); the serving replicas have what they have. Only what certainly
cannot load here blocks: a package the replicas lack, a pickle of another Python minor. A
version number that differs, even across a major version, does not: an MLflow 2.22 model with
pandas 2 and scikit-learn 1.5 loads and predicts right under MLflow 3, pandas 3 and
scikit-learn 1.9 (issue 17). It is a warning, and the evidence decides: a version that truly
cannot load is reported by the replica that tried and quarantined with the cause
(``docs/architecture.md``, "A load that cannot pass goes back to the controller").
``check_environment`` is pure (facts in, verdict out); only ``ServingEnvironment.current`` and
``from_lock_file`` read anything. What a version's artifacts say (``ArtifactEnvironment``, and
whether loading it unpickles) is ``controller.environment_artifact``.

Requirements (each line of ``requirements.txt``):

- Lines are prepared as MLflow's own ``_parse_requirements`` does: inline `` #`` comments are
  cut, lines ending in ``\\`` are joined, comments and blank lines are dropped.
- pip options (``-r``, ``-c``, ``-e``, ``--index-url``, ...) and lines that are not a valid
  PEP 508 requirement cannot be checked: a warning naming the line. Per-requirement options
  (``foo==1 --hash=...``) are cut before parsing.
- A marker is evaluated against the *serving* Python (``python_version``,
  ``python_full_version``; other marker variables are this machine's); a false marker skips the
  requirement.
- Names compare canonicalized (PEP 503); extras (``ray[serve]``) check the base distribution.
  ``mlflow`` is satisfied by ``mlflow-skinny``: MLflow logs ``mlflow==X`` even when only the
  skinny client logged the model, and the replicas may run either.
- Not installed: the version needs an environment of its own (``EnvironmentVerdict.missing``;
  ``controller.own_environments`` builds its spec) under the ``isolate`` policy, and is
  quarantined under ``shared``.
- A URL / VCS requirement (``name @ https://...``) cannot be verified: a warning (still a
  missing package when the named distribution is not installed at all).
- A line carrying a credential (``https://TOKEN@...``, ``--index-url https://user:pass@...``) is
  kept with it cut and blocks (``controller.environment_secrets``).
- Installed but outside the specifier (checked with ``prereleases=True``, so ``2.13.0+cpu``
  satisfies ``==2.13.0``): a warning naming both versions (``scikit-learn==1.5.0`` vs 1.6.1),
  which says "another major version" when no release of the installed major could satisfy the
  specifier (``pandas==2.2.3`` vs 3.1.1, ``numpy<2`` vs 2.4.6).

Python (``python_env.yaml``): a different major.minor than the serving Python's is blocking
when the model is pickled (cloudpickle stores code by value, bytecode only loads on the minor
that wrote it, and no environment serving builds can change the interpreter), a warning
otherwise; patch differences are nothing.

Policies (``controller.environment_policy``): ``isolate`` (the default), ``shared``, ``off``.
Blocking reasons and warnings are the same under ``isolate`` and ``shared`` except for missing
packages: a need under ``isolate``, blocking under ``shared``; ``off`` checks nothing.

MLflow has a mismatch helper, ``mlflow.utils.requirements_utils._check_requirement_satisfied``
(used by ``warn_dependency_requirement_mismatches`` when a pyfunc model loads, next to
``mlflow.pyfunc._warn_potentially_incompatible_py_version_if_necessary`` for Python). It cannot
be called here: it checks the *current* interpreter (``importlib.metadata`` and imports, markers
evaluated for this Python) while this module checks a described environment, it is private, and
it only warns (it has no notion of major versions). Its logic is followed where it applies: the
line preparation above, ``Requirement`` parsing with unparseable lines skipped, markers, and
``mlflow`` resolved to whichever distribution provides the ``mlflow`` module. Not followed: its
Databricks-only ignore list and its exemption of MLflow dev builds.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from controller.environment_artifact import ArtifactEnvironment as ArtifactEnvironment
from controller.environment_artifact import is_pickled as is_pickled
from controller.environment_policy import EnvironmentPolicy as EnvironmentPolicy
from controller.environment_secrets import carries_credential, credential_reason

# Raise it with every change to what ``check_environment`` decides (see ``digest``). 2: another
# major version became a warning (issue 17). 3: a missing package gets an environment of its
# own under ``isolate`` (issue 17). 4: a requirement line carrying a credential blocks.
RULES_REVISION = 4

# Either distribution provides the `mlflow` module a model's `mlflow==X` requirement is about.
_MLFLOW_PROVIDERS = ("mlflow", "mlflow-skinny")
_ANOTHER_MAJOR = (
    ", another major version: not a reason to quarantine it by itself; a load that fails on "
    "serving quarantines it with the cause"
)


def _this_python() -> str:
    v = sys.version_info
    return f"{v.major}.{v.minor}.{v.micro}"


def _major_minor(python_version: str) -> tuple[int, int] | None:
    parts = python_version.strip().split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _marker_environment(python_version: str) -> dict[str, str]:
    mm = _major_minor(python_version)
    short = f"{mm[0]}.{mm[1]}" if mm else python_version
    return {"python_version": short, "python_full_version": python_version}


def _logical_lines(lines: Iterable[str]) -> Iterator[str]:
    """Lines as pip sees them: inline comments cut, continuations joined, no blanks/comments."""
    pending = ""
    for raw in lines:
        line = raw.strip()
        if " #" in line:
            line = line[: line.find(" #")].rstrip()
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        if line and not line.startswith("#"):
            yield line
    if pending and not pending.startswith("#"):
        yield pending


@dataclass(frozen=True)
class ServingEnvironment:
    python_version: str
    distributions: Mapping[str, str]

    @classmethod
    def current(cls) -> ServingEnvironment:
        found: dict[str, str] = {}
        for dist in importlib.metadata.distributions():
            name = dist.metadata["Name"]
            if name:
                # The first one on sys.path is the one `import` finds.
                found.setdefault(canonicalize_name(name), dist.version)
        return cls(python_version=_this_python(), distributions=found)

    @classmethod
    def from_lock_file(cls, path: Path, python_version: str | None = None) -> ServingEnvironment:
        """A pip-freeze style file: ``name==version`` lines; ``-e`` and other options skipped.

        Raises ValueError on a line that pins no version: a lock file that cannot say what is
        installed would make every check wrong.
        """
        python = python_version or _this_python()
        marker_env = _marker_environment(python)
        found: dict[str, str] = {}
        for line in _logical_lines(path.read_text(encoding="utf-8").splitlines()):
            if line.startswith("-"):
                continue
            try:
                req = Requirement(line)
            except InvalidRequirement as exc:
                raise ValueError(f"{path}: {line!r} is not a requirement: {exc}") from exc
            if req.marker is not None and not req.marker.evaluate(marker_env):
                continue
            pins = [s for s in req.specifier if s.operator in ("==", "===")]
            if req.url or len(pins) != 1 or pins[0].version.endswith(".*"):
                raise ValueError(f"{path}: {line!r} does not pin one version (name==version)")
            found[canonicalize_name(req.name)] = pins[0].version
        return cls(python_version=python, distributions=found)

    @functools.cached_property
    def digest(self) -> str:
        """What decisions are made against; computed once (the environment does not change).

        The rules' revision is part of it: a release that changes what the check decides has
        every version decided again once, instead of keeping verdicts of the old rules.
        """
        blob = json.dumps(
            {
                "python": self.python_version,
                "distributions": sorted(self.distributions.items()),
                "rules": RULES_REVISION,
            }
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def installed(self, name: str) -> str | None:
        """The installed version of distribution ``name``, or None."""
        canonical = canonicalize_name(name)
        providers = _MLFLOW_PROVIDERS if canonical == "mlflow" else (canonical,)
        for provider in providers:
            if provider in self.distributions:
                return self.distributions[provider]
        return None


@dataclass(frozen=True)
class Mismatch:
    """A requirement the serving environment has another version of."""

    requirement: Requirement
    installed: str
    # No release of the installed major could satisfy the requirement.
    another_major: bool


@dataclass(frozen=True)
class EnvironmentVerdict:
    blocking: list[str]
    warnings: list[str]
    # Requirements (markers true) naming a package the serving environment lacks: under
    # ``isolate`` the version gets an environment of its own for them (not blocking).
    missing: list[Requirement] = field(default_factory=list)
    # Requirements the serving environment has another version of (each is also a warning).
    mismatched: list[Mismatch] = field(default_factory=list)
    # Every requirement that parses and applies here (markers true), pip options left out: what
    # an environment that inherits nothing is built from. Not compared: it restates the input.
    requirements: list[Requirement] = field(default_factory=list, compare=False)


def _any_release_in_major(specifier: SpecifierSet, installed: Version) -> bool:
    """Could some release with the installed version's major number satisfy ``specifier``?

    Probes the major's first release and, for each bound within that major, the bound itself
    and a release just above it; that finds a member of every non-empty intersection of bounds
    that practical specifiers produce.
    """
    prefix = f"{installed.epoch}!" if installed.epoch else ""
    probes = [f"{prefix}{installed.major}"]
    for spec in specifier:
        try:
            bound = Version(spec.version.removesuffix(".*"))
        except InvalidVersion:
            continue
        if bound.epoch == installed.epoch and bound.major == installed.major:
            release = ".".join(str(part) for part in bound.release)
            probes += [str(bound), f"{prefix}{release}.1"]
    return any(specifier.contains(probe, prereleases=True) for probe in probes)


class _Checker:
    def __init__(self, env: ServingEnvironment) -> None:
        self.env = env
        self.blocking: list[str] = []
        self.warnings: list[str] = []
        self.missing: list[Requirement] = []
        self.missing_reasons: list[str] = []
        self.mismatched: list[Mismatch] = []
        self.requirements: list[Requirement] = []

    def python(self, artifact: ArtifactEnvironment) -> None:
        if artifact.python_version is None:
            return
        saved = _major_minor(artifact.python_version)
        serving = _major_minor(self.env.python_version)
        if saved is None or serving is None:
            self.warnings.append(
                f"this version was saved with Python {artifact.python_version!r}, which cannot "
                f"be compared with the serving environment's Python {self.env.python_version}"
            )
            return
        if saved == serving:
            return
        minor = f"{saved[0]}.{saved[1]}"
        if artifact.pickled:
            self.blocking.append(
                f"this version was saved with Python {minor} by (cloud)pickle and can only be "
                f"loaded by Python {minor}; the serving environment runs "
                f"{self.env.python_version}, and no environment serving could build for it "
                "would change the interpreter"
            )
        else:
            self.warnings.append(
                f"this version was saved with Python {artifact.python_version} and the serving "
                f"environment runs Python {self.env.python_version} (another minor version)"
            )

    def requirement(self, line: str) -> None:
        if carries_credential(line):
            self.blocking.append(credential_reason(line))
            return
        if line.startswith("-"):
            self.warnings.append(
                f"requirement line {line!r} is a pip option, which cannot be checked against "
                "the serving environment"
            )
            return
        try:
            # Per-requirement options (--hash, --config-settings) say nothing about versions.
            req = Requirement(line.split(" --", 1)[0].strip())
        except InvalidRequirement:
            self.warnings.append(
                f"requirement line {line!r} is not a valid requirement, so it cannot be checked "
                "against the serving environment"
            )
            return
        try:
            if req.marker is not None and not req.marker.evaluate(
                _marker_environment(self.env.python_version)
            ):
                return
        except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName) as exc:
            self.warnings.append(
                f"requirement {line!r} has a marker that cannot be evaluated for the serving "
                f"environment ({exc})"
            )
            return

        self.requirements.append(req)
        installed = self.env.installed(req.name)
        if installed is None:
            self.missing.append(req)
            self.missing_reasons.append(missing_reason(line, req))
            return
        if req.url:
            self.warnings.append(
                f"requirement {line!r}: {req.name} comes from a URL, so its version cannot be "
                f"verified; the serving environment has {req.name} {installed}"
            )
            return
        if not req.specifier or req.specifier.contains(installed, prereleases=True):
            return
        try:
            installed_version = Version(installed)
        except InvalidVersion:
            self.warnings.append(
                f"requirement {line!r}: this version was logged with {req.name} "
                f"{req.specifier}; the serving environment has {installed}, which is not a "
                "standard version number"
            )
            return
        # Never blocking by itself, even across a major version: a model saved by MLflow 2.22
        # with pandas 2 and scikit-learn 1.5 loads and predicts right under MLflow 3, pandas 3
        # and scikit-learn 1.9. Whether it loads is found out by loading it (a failure is
        # reported and quarantines it); the major version only tells the warning's reader more.
        found = (
            f"requirement {line!r}: this version was logged with {req.name} {req.specifier}; "
            f"the serving environment has {installed}"
        )
        another_major = not _any_release_in_major(req.specifier, installed_version)
        if another_major:
            found += _ANOTHER_MAJOR
        self.warnings.append(found)
        self.mismatched.append(Mismatch(req, installed, another_major))


def missing_reason(line: str, req: Requirement) -> str:
    """Why a missing package quarantines under ``shared``."""
    return (
        f"requirement {line!r}: package {req.name!r} is not installed in the serving "
        "environment, and the environment policy 'shared' serves a version in the serving "
        "environment only (under 'isolate' it would get an environment of its own)"
    )


def check_environment(
    artifact: ArtifactEnvironment, env: ServingEnvironment, policy: EnvironmentPolicy
) -> EnvironmentVerdict:
    if policy is EnvironmentPolicy.OFF:
        return EnvironmentVerdict(blocking=[], warnings=[])
    checker = _Checker(env)
    checker.python(artifact)
    for line in _logical_lines(artifact.requirements or []):
        checker.requirement(line)
    blocking = checker.blocking
    if policy is EnvironmentPolicy.SHARED:
        blocking = blocking + checker.missing_reasons
    return EnvironmentVerdict(
        blocking=blocking,
        warnings=checker.warnings,
        missing=checker.missing,
        mismatched=checker.mismatched,
        requirements=checker.requirements,
    )
