"""A version's artifacts are read only from where they may be, and only so much of them
(issue 16), on the session's real stack: the controller's default allowlist is the tracking
server's own store (``mlflow-artifacts:``), learned from the server itself.

MLflow 3.17's server takes an ``s3://`` source at registration whatever its bucket (it checks
only http(s) hosts and local paths), so that is the foreign source here; its reason must name
neither the bucket nor what fetching it would have said. The oversized MLmodel is a real run's
artifact on the server's own store, read through its artifact proxy; a 1 GiB one is the same
made sparse on the server's disk."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from mlflow import MlflowClient

from tests.integration.conftest import (
    ControllerHandle,
    problem,
    register_echo,
    serve_status,
    wait_for,
)

MIB = 1 << 20
UNREADABLE = "its artifact cannot be read, so it cannot be checked: "


def _reasons(ctl: ControllerHandle, name: str, version: str) -> list[str]:
    found = [v for v in ctl.model(name)["versions"] if v["version"] == version]
    return list(found[0]["reasons"]) if found else []


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_source_outside_the_allowed_locations_gets_a_409_with_a_fixed_reason(
    serving_url: str, ctl: ControllerHandle
) -> None:
    client = MlflowClient(ctl.tracking_uri)
    name = "foreign_source"
    good = register_echo(name, tag="good")
    foreign = str(client.create_model_version(
        name, source="s3://someone-elses-bucket/stolen/model").version)
    wait_for(lambda: ctl.state_of(name, foreign) == "quarantined", 30, 0.05)
    reason = f"{UNREADABLE}its source is not an allowed artifact location " \
             "(SIGSERVE_ARTIFACT_SOURCES)"
    assert _reasons(ctl, name, foreign) == [reason]
    wait_for(lambda: serve_status(serving_url, name, foreign).status_code == 409, 15, 0.05)
    answer = serve_status(serving_url, name, foreign)
    body = problem(answer)
    assert body["type"] == "urn:sigserve:problem:version-quarantined"
    assert body["reasons"] == [reason]
    for leak in ("someone-elses-bucket", "boto", "s3://"):
        assert leak not in answer.text
    assert ctl.state_of(name, good) == "live"  # the rest of the model goes on


@pytest.mark.parametrize(
    ("size", "shown"),
    # 16 MiB of real bytes through the artifact proxy; 1 GiB as a sparse file on the server's
    # disk (what the store lists is its size; nothing of it need exist to be refused).
    [(16 * MIB, "16 MiB"), (1 << 30, "1 GiB")],
    ids=["16MiB", "1GiB-sparse"],
)
def test_an_oversized_mlmodel_is_quarantined_without_the_controller_holding_it(
    serving_url: str, ctl: ControllerHandle, home: Path, tmp_path: Path, size: int, shown: str
) -> None:
    client = MlflowClient(ctl.tracking_uri)
    name = f"huge_mlmodel_{size}"
    good = register_echo(name, tag="good")
    wait_for(lambda: ctl.state_of(name, good) == "live", 30, 0.05)
    # A real MLmodel (the echo's, read back through the server), grown by a comment: valid
    # YAML that MLflow would read whole.
    model_dir = client.get_model_version_download_uri(name, good)
    real = Path(mlflow.artifacts.download_artifacts(f"{model_dir}/MLmodel", dst_path=tmp_path))
    huge = tmp_path / "huge"
    huge.mkdir()
    padding = b"" if size > 64 * MIB else b"\n#" + b"x" * (size - real.stat().st_size - 2)
    (huge / "MLmodel").write_bytes(real.read_bytes() + padding)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(huge), "huge")
    on_disk = home.resolve() / "mlflow-artifacts" / urlparse(run.info.artifact_uri).path.lstrip(
        "/") / "huge" / "MLmodel"
    os.truncate(on_disk, size)  # the sparse case; the real one already has its size
    assert on_disk.stat().st_size == size
    assert ctl._process is not None and ctl._process.pid is not None
    pid = ctl._process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := RSS now
    before = _kib(pid, "VmRSS")
    version = str(client.create_model_version(
        name, source=f"{run.info.artifact_uri}/huge", run_id=run.info.run_id).version)
    wait_for(lambda: ctl.state_of(name, version) == "quarantined", 30, 0.05)
    grew_mib = (_kib(pid, "VmHWM") - before) / 1024
    print(f"{shown} MLmodel quarantined; the controller's peak RSS grew {grew_mib:.1f} MiB")
    assert _reasons(ctl, name, version) == [f"{UNREADABLE}its MLmodel is larger than 1 MiB "
                                            f"({shown})"]
    assert grew_mib < 8, f"the controller's peak RSS grew {grew_mib:.1f} MiB"
    wait_for(lambda: serve_status(serving_url, name, version).status_code == 409, 15, 0.05)
