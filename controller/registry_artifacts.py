"""What was read of an artifact, kept by its location and its MLmodel's digest.

A version's read (``Registry.artifact``) costs a download URI, a listing, MLmodel, the two
environment files, a recursive listing and a request per file hashed into its manifest: ten
or more requests to MLflow per version. Versions registered from one logged model (a retrain
that changed nothing, a storm's 1,000 versions of 3 artifacts, a model promoted across
registered models) point at one location. So the facts read from a location are kept here,
keyed by the location and the SHA-256 of the MLmodel read then; a later version at the same
location is read as its download URI and its MLmodel alone, and the rest is taken from here
only if that MLmodel has the same digest. Anything else (another MLmodel, a read that fails, a
location not seen) is read in full, as before.

The download URI itself is known from the version's source when another version with that
source was read before (``Locations``): MLflow stores a version's location when the version is
created, from its source alone, and for the sources kept here (a logged model's
``models:/m-<id>``, a ``runs:/`` URI, a plain location) the same source always gives the same
location; a ``models:/<name>/<version|alias>`` source is resolved per version, since an alias
moves. So a version of a logged model read before costs one request: its MLmodel.

Why that is as safe as reading everything again: the facts are bound to the manifest of every
file (size, SHA-256), and a replica checks what it downloads against it before it loads
anything (docs/security.md, "What a decision is bound to"); a file replaced at the location
after the first read is refused and reported, exactly as one replaced after the decision. The
location is still checked against the allowed sources at every read (``Registry._location``).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import urlparse

import yaml

from controller.artifact_files import read_file
from controller.artifacts import ArtifactFacts

# Locations kept (the newest used); an entry is a few KB (the manifest's paths and digests).
CACHED_LOCATIONS = 512
# Versions whose source is remembered (from the versions read just before their artifacts).
REMEMBERED_VERSIONS = 4096
# A logged model's URI: its location never changes (MLflow's create_model_version).
_LOGGED_MODEL = re.compile(r"^models:/m-[0-9a-f]+$")


def _fixed(source: str) -> bool:
    """Whether every version registered from ``source`` has the same location."""
    # MLflow reads the scheme case-blind ("Models:/a/1" resolves as "models:/a/1").
    if urlparse(source).scheme.lower() != "models":
        return True
    return bool(_LOGGED_MODEL.match(source))


class Locations:
    """Each version's source (as its model's versions were read) and the location a source
    was found at: what saves the download URI's request. Bounded, thread-safe."""

    def __init__(self, size: int = REMEMBERED_VERSIONS) -> None:
        self._size = size
        self._sources: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._locations: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, name: str, version: str, source: str | None) -> None:
        if not source or not _fixed(source):
            # A model deleted and registered again numbers its versions from 1 anew: what was
            # kept for this (name, version) belongs to the old model's version, never to this.
            with self._lock:
                self._sources.pop((name, version), None)
            return
        with self._lock:
            self._sources[(name, version)] = source
            self._sources.move_to_end((name, version))
            while len(self._sources) > self._size:
                self._sources.popitem(last=False)

    def known(self, name: str, version: str) -> str | None:
        with self._lock:
            source = self._sources.get((name, version))
            return self._locations.get(source) if source is not None else None

    def learn(self, name: str, version: str, location: str) -> None:
        with self._lock:
            source = self._sources.get((name, version))
            if source is None:
                return
            self._locations[source] = location
            self._locations.move_to_end(source)
            while len(self._locations) > CACHED_LOCATIONS:
                self._locations.popitem(last=False)


class ArtifactCache:
    """Facts per (location, MLmodel digest), least recently used dropped; thread-safe (the
    passes' threads read at once)."""

    def __init__(self, size: int = CACHED_LOCATIONS) -> None:
        self._size = size
        self._facts: OrderedDict[tuple[str, str], ArtifactFacts] = OrderedDict()
        self._locations: dict[str, int] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def holds(self, location: str) -> bool:
        with self._lock:
            return location in self._locations

    def get(self, location: str, digest: str) -> ArtifactFacts | None:
        with self._lock:
            facts = self._facts.get((location, digest))
            if facts is None:
                self.misses += 1
                return None
            self._facts.move_to_end((location, digest))
            self.hits += 1
            return facts

    def keep(self, facts: ArtifactFacts) -> None:
        key = (facts.source, facts.mlmodel_digest)
        with self._lock:
            if key not in self._facts:
                self._locations[facts.source] = self._locations.get(facts.source, 0) + 1
            self._facts[key] = facts
            self._facts.move_to_end(key)
            while len(self._facts) > self._size:
                (location, _), _ = self._facts.popitem(last=False)
                left = self._locations[location] - 1
                if left:
                    self._locations[location] = left
                else:
                    del self._locations[location]


def cached_facts(cache: ArtifactCache, repo: Any, location: str, cap: int) -> ArtifactFacts | None:
    """The facts kept for ``location`` if its MLmodel, read now, is the one they were read
    from; None (read it in full) otherwise, or when the MLmodel cannot be read alone."""
    if not cache.holds(location):
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="sigserve-mlmodel-") as tmp:
            # No listing, so no size to refuse by: read_file stops at the cap all the same.
            raw = read_file(repo, "MLmodel", None, cap, tmp)
    except Exception:
        # Missing, too large, refused, down: the full read says which, in its own words.
        return None
    return cache.get(location, hashlib.sha256(raw).hexdigest())


def python_version(python_env: str | None, mlmodel: dict[str, Any]) -> str | None:
    """The Python the version was saved with: python_env.yaml, else the pyfunc flavor's."""
    if python_env is not None:
        # BaseLoader keeps scalars as strings (safe_load reads a hand-written "python: 3.10" as
        # the float 3.1); it builds only str/list/dict, so it is as safe as safe_load.
        try:
            env = yaml.load(python_env, Loader=yaml.BaseLoader)  # noqa: S506
        except yaml.YAMLError:
            # Not worth failing the whole read over: MLflow itself never reads this file to
            # load the model, it only builds environments from it.
            env = None
        if isinstance(env, dict) and isinstance(env.get("python"), str):
            return str(env["python"])
    flavors = mlmodel.get("flavors")
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    version = pyfunc.get("python_version") if isinstance(pyfunc, dict) else None
    return str(version) if version else None
