"""The local stack starts Ray with HAProxy's per-request metrics off: each request would cost a
log datagram that Ray's HAProxyManager parses in Python (~80 us of CPU a request), for metrics
the replica reports itself once they are off."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from sigserve.stack import fast_path_env, ray_temp_dir


def test_haproxy_logs_no_datagram_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = fast_path_env(ray_temp_dir(tmp_path / ".sigserve"))
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # the fast path itself stays
