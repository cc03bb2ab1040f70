"""The items of an HTTP ``Accept``-style header with their q-values (RFC 9110 12.4.2).

Both services weigh such headers (the controller's long-poll ``Accept-Encoding``, serving's
``Accept`` for a stream); how each weighs the items stays with it.
"""

from __future__ import annotations


def weighted_items(header: str) -> list[tuple[str, float]]:
    """``(item, q)`` for each comma-separated item, lowercased, in order; q is 1.0 when not
    given and 0.0 when it cannot be read (a q-value no one can read takes nothing)."""
    items = []
    for item in header.lower().split(","):
        name, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        items.append((name, q))
    return items
