"""Which artifact locations the controller reads (controller.artifact_sources), and a read from
the tracking server's artifact proxy stopped at the cap (controller.artifact_files) against a
real HTTP server whose listing gives no size."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from controller.artifact_files import MAX_FILE_BYTES, read_file
from controller.artifact_sources import (
    ArtifactSources,
    SourceNotAllowed,
    default_root,
    parse_sources,
)
from controller.read_reasons import ReadFailure, size_text

ALLOWED = ArtifactSources(["mlflow-artifacts:", "s3://models/prod", "/srv/mlflow/artifacts"])


@pytest.mark.parametrize(
    "location",
    [
        "mlflow-artifacts:/0/models/m-1/artifacts",
        "mlflow-artifacts:///0/models/m-1/artifacts",
        "s3://models/prod/m-1/artifacts",
        "S3://models/prod/m-1",  # schemes are case-blind
        "/srv/mlflow/artifacts/1/m-2/artifacts",
        "file:///srv/mlflow/artifacts/1/m-2/artifacts",
    ],
)
def test_locations_under_an_allowed_prefix_are_read(location: str) -> None:
    ALLOWED.check(location)


@pytest.mark.parametrize(
    "location",
    [
        "mlflow-artifacts://10.0.0.5:22/0/x",  # a host of its own: not the tracking server
        "s3://models/production/m-1",  # a prefix of the name, not of the path
        "s3://models/prod/../staging/m-1",
        "s3://models/prod/%2e%2e/staging/m-1",
        "s3://models/prod/a%2Fb",
        "s3://models/prod/m-1?versionId=3",
        "s3://other/prod/m-1",
        "gs://models/prod/m-1",
        "/srv/mlflow/artifacts-else/m-1",
        "/srv/mlflow/artifacts/../../etc",
        "file://otherhost/srv/mlflow/artifacts/1",
        "relative/srv/mlflow/artifacts",
        "http://10.0.0.5:22/x",
        "s3://models/prod\\..\\x",
        "runs:/0123/model",  # pointers name no location of their own
        "models:/m-123",
    ],
)
def test_everything_else_is_not_allowed(location: str) -> None:
    with pytest.raises(SourceNotAllowed) as exc:
        ALLOWED.check(location)
    assert exc.value.public == "its source is not an allowed artifact location " \
                               "(SIGSERVE_ARTIFACT_SOURCES)"


def test_the_default_is_the_tracking_servers_own_store() -> None:
    assert default_root("mlflow-artifacts:/0") == "mlflow-artifacts:"
    assert default_root("s3://bucket/mlflow/0/") == "s3://bucket/mlflow"
    served = ArtifactSources.default("http://mlflow:5000", default_root("s3://bucket/mlflow/0"))
    assert served.prefixes == ("mlflow-artifacts:", "s3://bucket/mlflow")
    served.check("s3://bucket/mlflow/3/models/m-1/artifacts")
    with pytest.raises(SourceNotAllowed):
        served.check("s3://bucket/other/m-1")
    # A local store (no HTTP server): only its root; an unusable root allows nothing.
    assert ArtifactSources.default("sqlite:///x.db", "/data/mlruns").prefixes == ("/data/mlruns",)
    assert ArtifactSources.default("sqlite:///x.db", "./mlruns").prefixes == ()


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("mlflow-artifacts:, s3://models/prod", ("mlflow-artifacts:", "s3://models/prod")),
        ("s3://a/x gs://b/y", ("s3://a/x", "gs://b/y")),
        (["s3://a/x"], ("s3://a/x",)),
        (" , ", None),
        (None, None),
    ],
)
def test_the_setting_is_a_list_of_prefixes(value: object, parsed: object) -> None:
    assert parse_sources(value) == parsed


@pytest.mark.parametrize("value", ["mlruns", "s3://a/../b", "runs:/x", "s3://a?x=1"])
def test_a_prefix_nothing_could_match_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValueError, match="artifact source"):
        parse_sources(value)


class _Endless(BaseHTTPRequestHandler):
    """An artifact proxy that answers every file with 64 MiB, counting what it got to send."""

    sent = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(64 * MAX_FILE_BYTES))
        self.end_headers()
        chunk = b"#" * 65536
        try:
            for _ in range(64 * MAX_FILE_BYTES // len(chunk)):
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            pass  # the reader hung up: what this test wants

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def proxy() -> Iterator[str]:
    _Endless.sent = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/2.0/mlflow-artifacts/artifacts/0"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_file_with_no_listed_size_is_read_no_further_than_the_cap(
    proxy: str, tmp_path: Path
) -> None:
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    repo = HttpArtifactRepository(proxy)
    with pytest.raises(ReadFailure) as exc:
        read_file(repo, "MLmodel", None, MAX_FILE_BYTES, str(tmp_path))
    assert exc.value.public == "its MLmodel is larger than 1 MiB"
    assert list(tmp_path.iterdir()) == []  # nothing written to disk either
    # Sent before the hang-up: the cap and what the sockets' buffers held, not 64 MiB.
    assert _Endless.sent < 16 * MAX_FILE_BYTES, size_text(_Endless.sent)


def test_a_listed_size_past_the_cap_is_refused_before_any_request(tmp_path: Path) -> None:
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    repo = HttpArtifactRepository("http://127.0.0.1:9/nothing-listens-here")
    with pytest.raises(ReadFailure) as exc:
        read_file(repo, "requirements.txt", 5 * MAX_FILE_BYTES + 1, MAX_FILE_BYTES, str(tmp_path))
    assert exc.value.public == "its requirements.txt is larger than 1 MiB (5.0 MiB)"
    assert size_text(1536) == "1.5 KiB" and size_text(10) == "10 bytes"


def test_the_controller_reads_its_allowlist_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from controller.settings import ControllerSettings

    monkeypatch.setenv("SIGSERVE_ADMIN_TOKEN", "admin-token-of-the-tests")
    monkeypatch.setenv("SIGSERVE_ARTIFACT_SOURCES", "mlflow-artifacts:, s3://models/prod")
    assert ControllerSettings.from_environment().artifact_sources == (
        "mlflow-artifacts:", "s3://models/prod",
    )
    monkeypatch.setenv("SIGSERVE_ARTIFACT_SOURCES", "")
    assert ControllerSettings.from_environment().artifact_sources is None
    monkeypatch.setenv("SIGSERVE_ARTIFACT_SOURCES", "relative/path")
    with pytest.raises(SystemExit, match="SIGSERVE_ARTIFACT_SOURCES"):
        ControllerSettings.from_environment()
