"""Is the Hugging Face Hub reachable? Answered quickly and with a hard bound.

``sigserve up`` must not hang on a machine without network: an explicit offline setting answers
at once, otherwise one metadata request gets a few seconds, in a daemon thread so that even a
stuck DNS lookup cannot hold the caller past the bound.
"""

from __future__ import annotations

import os
import threading

_TRUTHY = {"1", "true", "yes", "on"}
# The variables huggingface_hub and transformers themselves honour.
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_by_environment() -> bool:
    """True when the environment says not to touch the Hub (HF_HUB_OFFLINE=1 and the like)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUTHY for name in _OFFLINE_VARIABLES)


def hub_reachable(repo_id: str, *, timeout: float = 3.0) -> bool:
    """True if the Hub answers a metadata request for ``repo_id`` within about ``timeout`` s."""
    if offline_by_environment():
        return False
    finished = threading.Event()
    reachable: list[bool] = []

    def probe() -> None:
        from huggingface_hub import model_info

        try:
            model_info(repo_id, timeout=timeout)
            reachable.append(True)
        except Exception:  # noqa: S110 - any failure means "not reachable"; the caller says so
            pass
        finally:
            finished.set()

    # A daemon thread, not an executor: an executor's worker would keep the process alive at
    # exit until a hung connection gave up.
    threading.Thread(target=probe, name="sigserve-hub-probe", daemon=True).start()
    finished.wait(timeout + 1.0)
    return bool(reachable)
