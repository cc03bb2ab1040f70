"""The local stack's directories under /tmp (Ray's temp dir, HAProxy's config and admin socket)
have names anyone can predict (issue 16): the stack makes them its user's alone, or refuses
one someone else made first."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from sigserve.stack import fast_path_env, ray_temp_dir
from wire.private_dirs import private_dir

HOME = Path("/some/checkout/.sigserve")


@pytest.fixture(autouse=True)
def tmp_is_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _haproxy_dir() -> Path:
    return Path(fast_path_env(ray_temp_dir(HOME))["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_ray_and_haproxy_dirs_are_made_for_this_user_alone() -> None:
    ray_dir = ray_temp_dir(HOME)
    assert ray_dir == ray_temp_dir(HOME), "found again from the same home"
    for made in (ray_dir.parent, _haproxy_dir()):
        assert made.is_dir() and not made.is_symlink()
        assert made.lstat().st_uid == os.getuid()
        assert _mode(made) == 0o700


@pytest.mark.parametrize("which", ["ray", "haproxy"])
def test_a_dir_others_can_write_made_before_the_stack_is_refused(which: str) -> None:
    ray_dir = ray_temp_dir(HOME)
    planted = ray_dir.parent if which == "ray" else _haproxy_dir()
    planted.chmod(0o777)
    (planted / "haproxy.cfg").write_text("planted")
    with pytest.raises(RuntimeError, match="written by others"):
        _haproxy_dir() if which == "haproxy" else ray_temp_dir(HOME)


@pytest.mark.parametrize("which", ["ray", "haproxy"])
def test_a_symlink_by_the_name_is_refused(which: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    ray_dir = ray_temp_dir(HOME)
    planted = ray_dir.parent if which == "ray" else _haproxy_dir()
    ray_dir.rmdir()
    planted.rmdir()
    planted.symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match="not a directory"):
        _haproxy_dir() if which == "haproxy" else ray_temp_dir(HOME)


def test_a_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    # The owner expected is the seam: a test cannot make a directory as another user unless root.
    with pytest.raises(RuntimeError, match="belongs to uid"):
        private_dir(theirs, owner=os.getuid() + 1)


def test_a_dir_of_this_user_made_by_an_older_stack_is_narrowed_to_0700() -> None:
    ray_dir = ray_temp_dir(HOME)
    ray_dir.parent.chmod(0o755)  # what mkdir under the usual umask made before
    assert ray_temp_dir(HOME) == ray_dir
    assert _mode(ray_dir.parent) == 0o700


def test_the_ray_dir_is_found_again_after_ray_has_opened_it_to_everyone() -> None:
    # ray.init makes its temp dir 0777; the log display and the tests find it again after.
    ray_dir = ray_temp_dir(HOME)
    ray_dir.chmod(0o777)
    assert ray_temp_dir(HOME) == ray_dir
    assert _mode(ray_dir.parent) == 0o700
