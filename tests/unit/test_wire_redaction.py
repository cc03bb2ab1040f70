"""One rule cuts credentials for the controller and serving (wire/redaction.py). Serving's
own copy let the rest of a password with an "@" in it through, and every signed URL's
parameters; the controller's quarantined ``?author=`` as a credential (review findings)."""

from __future__ import annotations

import pytest

from controller.environment_secrets import carries_credential
from serving.environment_errors import error_record
from wire.redaction import redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://user:p@ss@pypi.corp/simple", "https://***@pypi.corp/simple"),
        ("uv: failed to fetch https://h/x.whl?token=abc&v=1", "uv: failed to fetch https://h/x.whl?token=***&v=1"),
        ("https://b.s3/x.whl?X-Amz-Credential=AK%2F1&X-Amz-Signature=f00d",
         "https://b.s3/x.whl?X-Amz-Credential=***&X-Amz-Signature=***"),
        ("https://acct.blob/x.whl?sv=2024&sig=abc%3D", "https://acct.blob/x.whl?sv=2024&sig=***"),
        ("error: 'https://tok@host/simple' refused", "error: 'https://***@host/simple' refused"),
    ],
)  # fmt: skip
def test_credentials_are_cut_wherever_they_stand(text: str, shown: str) -> None:
    assert redact(text) == shown


@pytest.mark.parametrize(
    "line",
    [
        "pkg @ https://h/pkg.whl?author=me&design=2&monkey=1",
        "pkg @ git+ssh://git@github.com/org/pkg.git",
        "pkg @ https://${TOKEN}@host/pkg.whl",
        "roman==5.2; mail me at a@b.c",
    ],
)
def test_what_is_not_a_credential_is_left_alone(line: str) -> None:
    assert redact(line) == line
    assert not carries_credential(line)


def test_an_error_crossing_from_an_environment_is_cut_by_the_same_rule() -> None:
    record = error_record(RuntimeError("index https://u:p@ss@h/simple?api_key=k said 403"))
    assert "p@ss" not in str(record) and "=k " not in str(record)
