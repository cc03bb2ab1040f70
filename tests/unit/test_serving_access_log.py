"""Ray Serve's per-request access log is off unless asked for (``ServingSettings.access_log``):
a line per request costs the replica ~20 us of CPU and says what sigserve's metrics say."""

from __future__ import annotations

import pytest

from serving.app import build_app

TOKEN = "t" * 40


@pytest.mark.parametrize(("args", "logged"), [({}, False), ({"access_log": True}, True)])
def test_the_deployment_logs_each_request_only_when_asked(
    args: dict[str, object], logged: bool
) -> None:
    deployment = build_app({"serving_token": TOKEN, **args})._bound_deployment
    logging_config = deployment._deployment_config.logging_config
    assert logging_config is not None
    assert logging_config["enable_access_log"] is logged
