"""Health probes of the compose demo's containers (the image has no curl): exit 0 when healthy.

    probe.py http URL      a GET answered 2xx within 5 s
    probe.py tcp HOST PORT a TCP connection accepted within 5 s (HOST "self": this
                           container's own address, where Ray's raylet listens)

Standard library only, so a probe costs a Python start-up and nothing more.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 5.0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - our URL
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tcp_ok(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        return 0 if http_ok(argv[1]) else 1
    if len(argv) == 3 and argv[0] == "tcp":
        host = socket.gethostbyname(socket.gethostname()) if argv[1] == "self" else argv[1]
        return 0 if tcp_ok(host, int(argv[2])) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
