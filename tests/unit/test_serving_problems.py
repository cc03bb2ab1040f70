"""Errors become RFC 9457 problem+json at the app's exception handlers, and nowhere else."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.contract import contract_for
from serving.exceptions import NotReady, VersionQuarantined
from serving.problems import install_problem_handlers
from wire.problems import MEDIA_TYPE


def client_for(app: FastAPI) -> TestClient:
    install_problem_handlers(app)
    # The catch-all re-raises after answering (for the server's log); the client must not.
    return TestClient(app, raise_server_exceptions=False)


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/quarantined")
    async def quarantined() -> None:
        raise VersionQuarantined(
            "version 3 of 'echo' is quarantined: input 'prompt' is missing",
            model="echo",
            version="3",
            reasons=["input 'prompt' (string, required) is missing"],
        )

    @app.get("/not-ready")
    async def not_ready() -> None:
        raise NotReady("no routing table yet")

    @app.post("/invalid")
    async def invalid() -> None:
        contract_for("p", {"inputs": '[{"type": "string", "name": "prompt"}]'}).parse({"x": 1})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    @app.get("/typed/{n}")
    async def typed(n: int) -> int:
        return n

    return app


def test_409_carries_the_reasons() -> None:
    response = client_for(make_app()).get("/quarantined")
    assert response.status_code == 409
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.json() == {
        "type": "urn:sigserve:problem:version-quarantined",
        "title": "The version is quarantined",
        "status": 409,
        "detail": "version 3 of 'echo' is quarantined: input 'prompt' is missing",
        "instance": "/quarantined",
        "model": "echo",
        "version": "3",
        "reasons": ["input 'prompt' (string, required) is missing"],
        "error_code": "RESOURCE_CONFLICT",
    }


def test_503_says_when_to_retry() -> None:
    response = client_for(make_app()).get("/not-ready")
    assert response.status_code == 503
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.headers["retry-after"] == "1"
    assert response.json()["type"] == "urn:sigserve:problem:not-ready"
    assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_422_names_each_field_and_why() -> None:
    response = client_for(make_app()).post("/invalid")
    assert response.status_code == 422
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.json() == {
        "type": "urn:sigserve:problem:invalid-input",
        "title": "The request does not fit the model's contract",
        "status": 422,
        "detail": "prompt: is required; x: is not an input of this model",
        "instance": "/invalid",
        "errors": [
            {"field": "prompt", "reason": "is required"},
            {"field": "x", "reason": "is not an input of this model"},
        ],
        "error_code": "INVALID_PARAMETER_VALUE",
    }


def test_anything_else_is_a_500_without_internals() -> None:
    response = client_for(make_app()).get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.json() == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "an internal error occurred",
        "instance": "/boom",
        "error_code": "INTERNAL_ERROR",
    }
    assert "passwd" not in response.text


def test_framework_errors_are_problems_too() -> None:
    client = client_for(make_app())
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["type"] == "about:blank"
    assert missing.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    wrong = client.get("/typed/abc")
    assert wrong.status_code == 422
    assert wrong.json()["errors"][0]["field"] == "path.n"
    assert wrong.json()["error_code"] == "INVALID_PARAMETER_VALUE"
