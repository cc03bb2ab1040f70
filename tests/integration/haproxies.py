"""The HAProxy processes running on this machine, read from /proc (the stack's is among them)."""

from __future__ import annotations

from pathlib import Path


def haproxy_configs() -> dict[str, bytes]:
    """Each HAProxy process's pid and the configuration it was started with (b"" for none)."""
    configs = {}
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"haproxy"):
            config = next((a for a in cmdline if a.endswith(b".cfg")), b"")
            try:
                configs[proc.name] = Path(config.decode()).read_bytes() if config else b""
            except OSError:  # another stack's, stopping as we read
                configs[proc.name] = b""
    return configs
