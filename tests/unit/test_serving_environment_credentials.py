"""Credentials never leave an environment's build or host through what sigserve writes
(docs/security.md): an index URL's ``user:token@``, a ``git+https://token@`` requirement line
and a model's message are redacted in every cause, log line and error record; builds and host
processes get no credential variables; an environment's actor gets only what the replica was
given; pip's index settings reach uv as variables, never on a command line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from serving.environment_actors import RayCluster
from serving.environment_builds import (
    EnvironmentBuildFailed,
    child_env,
    index_settings,
    resolve,
    resolver_reason,
    runtime_env,
    tool_env,
)
from serving.environment_errors import error_record
from wire.redaction import redact
from wire.routing_table import EnvironmentSpec

TOKEN = "ghp_s3cr3tT0ken"
GIT_LINE = f"private-pkg @ git+https://{TOKEN}@127.0.0.1:9/org/private-pkg.git"


def test_the_credentials_of_every_url_are_hidden() -> None:
    assert redact("https://user:pa55@pypi.corp/simple and http://tok@h:8/x") == (
        "https://***@pypi.corp/simple and http://***@h:8/x"
    )
    assert redact(GIT_LINE) == "private-pkg @ git+https://***@127.0.0.1:9/org/private-pkg.git"
    assert redact("roman==5.2; mail me at a@b.c") == "roman==5.2; mail me at a@b.c"


def test_a_failed_builds_cause_names_no_credential() -> None:
    uv = (
        "error: Failed to fetch: `https://alice:pa55@pypi.corp/simple/roman/`\n"
        f"  Caused by: git operation failed for git+https://{TOKEN}@127.0.0.1:9/org/x.git\n"
    )
    cause = resolver_reason(uv, [GIT_LINE, "roman==5.2"])
    assert TOKEN not in cause and "pa55" not in cause and "***@" in cause
    assert TOKEN not in EnvironmentBuildFailed(f"from {GIT_LINE}").cause
    record = error_record(ValueError(f"cannot reach https://bob:{TOKEN}@store/model"))
    assert TOKEN not in record["error"]["message"]


def test_a_real_uv_resolve_of_a_line_with_a_token_fails_without_telling_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = EnvironmentSpec(digest="ef" * 32, kind="layered", requirements=[GIT_LINE])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EnvironmentBuildFailed) as failed:
        resolve(spec, ([], {}), 60)  # port 9 refuses: uv fails at once
    assert TOKEN not in failed.value.cause and "***@" in failed.value.cause
    assert TOKEN not in caplog.text


def test_builds_and_host_processes_get_no_credential_variables() -> None:
    environ = {
        "PATH": "/usr/bin", "HOME": "/home/s", "HF_HOME": "/cache/hf",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_USERNAME": "svc",
        "MLFLOW_TRACKING_PASSWORD": "p", "MLFLOW_TRACKING_TOKEN": "t", "HF_TOKEN": "h",
        "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "s",
        "AZURE_STORAGE_CONNECTION_STRING": "c", "AZURE_CLIENT_SECRET": "c",
        "GOOGLE_APPLICATION_CREDENTIALS": "/k.json", "SIGSERVE_SERVING_TOKEN": "x",
        "UV_INDEX_CORP_PASSWORD": "uv-own",
    }  # fmt: skip
    child = child_env(environ)
    assert sorted(child) == ["HF_HOME", "HOME", "MLFLOW_TRACKING_URI", "PATH"]
    tool = tool_env(environ, {"UV_INDEX_URL": "https://u:t@corp/simple"})
    # uv's own variables are uv's to read (credentials of named indexes among them).
    assert sorted(tool) == ["HF_HOME", "HOME", "MLFLOW_TRACKING_URI", "NO_COLOR", "PATH",
                            "UV_INDEX_CORP_PASSWORD", "UV_INDEX_URL"]  # fmt: skip


def test_an_index_url_with_credentials_is_never_on_a_command_line(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://alice:pa55@pypi.corp/simple\n")
    index = index_settings({}, [conf])
    spec = EnvironmentSpec(digest="ab" * 32, kind="layered", requirements=["roman==5.2"])
    env = runtime_env(spec, timeout_s=60, index=index, env_vars={})
    # Ray logs the command it runs (``Run cmd[..]``) with these options.
    assert "pa55" not in " ".join(env["uv"]["uv_pip_install_options"])
    assert env["env_vars"]["UV_INDEX_URL"] == "https://alice:pa55@pypi.corp/simple"


def test_an_environments_actor_gets_what_the_replica_was_given_and_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "HF_HOME": "/hf",
                        "AWS_SECRET_ACCESS_KEY": "s", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
                        "AZURE_STORAGE_ACCESS_KEY": "z"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    forwarded = RayCluster().forwarded_env()  # outside Ray: the replica's named variables
    assert forwarded["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and forwarded["HF_HOME"]
    assert not {"AWS_SECRET_ACCESS_KEY", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                "AZURE_STORAGE_ACCESS_KEY"} & set(forwarded)  # fmt: skip
