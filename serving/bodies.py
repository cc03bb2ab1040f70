"""Reading a request's body within the limits a request may send, for every protocol.

A body is refused (413) as soon as it is known to be too large, and a body of more records than
a request may hold (422) before any of them is validated; both limits are settings
(``SIGSERVE_MAX_BODY_MB``, ``SIGSERVE_MAX_RECORDS``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from serving.exceptions import BodyTooLarge, InvalidInput


async def read_json(request: Request, max_bytes: int | None) -> Any:
    return parse_json(await read_body(request, max_bytes))


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise bad_body("is nested too deeply to be read") from None
    except ValueError as exc:
        raise bad_body(f"is not valid JSON: {exc}") from None


async def read_body(request: Request, max_bytes: int | None) -> bytes:
    """The body, refused (413) as soon as it is known to be too large: from its Content-Length
    before reading any of it, else while it streams in, never held whole in memory."""
    if max_bytes is None:
        return await request.body()
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int) -> BodyTooLarge:
    reason = f"has {size} bytes or more; a request may send at most {max_bytes}"
    return BodyTooLarge(f"body {reason}", errors=[{"field": "body", "reason": reason}])


def check_count(body: Any, max_records: int | None) -> None:
    """Refuse a body of more records than a request may hold, before validating any of them."""
    if max_records is not None:
        field, count = _records_in(body)
        check_rows(field, count, max_records)


def check_rows(field: str, count: int, max_records: int | None) -> None:
    if max_records is not None and count > max_records:
        reason = f"holds {count} records; a request may hold at most {max_records}"
        raise InvalidInput(f"{field} {reason}", errors=[{"field": field, "reason": reason}])


def _records_in(body: Any) -> tuple[str, int]:
    """Where a body's records are and how many: a list, an envelope, or a scoring format."""
    if isinstance(body, list):
        return "body", len(body)
    if not isinstance(body, dict):
        return "body", 1
    for key in ("inputs", "dataframe_records", "instances"):
        value = body.get(key)
        if isinstance(value, list):
            return key, len(value)
        if isinstance(value, dict):  # columns of values
            lengths = [len(v) for v in value.values() if isinstance(v, list)]
            return key, max(lengths, default=1)
    split = body.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        return "dataframe_split.data", len(split["data"])
    return "body", 1


def bad_body(reason: str) -> InvalidInput:
    return InvalidInput(f"body {reason}", errors=[{"field": "body", "reason": reason}])
