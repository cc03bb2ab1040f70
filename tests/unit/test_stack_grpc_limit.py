"""Ray's gRPC servers are told a message limit from sigserve's body limit, not Ray's 2 GiB."""

from __future__ import annotations

from pathlib import Path

import pytest

from sigserve.stack import fast_path_env, ray_temp_dir


def _limit(tmp_path: Path) -> int:
    env = fast_path_env(ray_temp_dir(tmp_path / ".sigserve"))
    return int(env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"])


def test_the_grpc_limit_is_four_times_the_default_body_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIGSERVE_MAX_BODY_MB", raising=False)
    assert _limit(tmp_path) == 64 * 1024 * 1024


@pytest.mark.parametrize(("body_mb", "limit_mb"), [("2", 8), ("100", 400), ("junk", 64), ("0", 64)])
def test_the_grpc_limit_follows_the_body_limit_a_user_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body_mb: str, limit_mb: int
) -> None:
    monkeypatch.setenv("SIGSERVE_MAX_BODY_MB", body_mb)
    assert _limit(tmp_path) == limit_mb * 1024 * 1024
