"""The notebook's scenario, with nothing asked of sigserve but what MLflow already knows.

translation_model v1 (en->de) becomes the default, v2 (en->fr) answers through the header and
the path, v3 (input renamed to text_to_translate) is refused with 409 and never loaded.
"""

from __future__ import annotations

import httpx
import pytest

from sigserve.demo.register import log_translation_version
from sigserve.demo.tiny_t5 import build_tiny_t5
from tests.integration.conftest import ControllerHandle, load_attempted, serve_status, wait_for

NAME = "translation_model"


@pytest.fixture(scope="module")
def translation_versions(
    serving_url: str, controller_handle: ControllerHandle, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    weights = build_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5")
    versions = {
        "en_de": log_translation_version(NAME, lang_to="de", input_label="prompt", hf_dir=weights),
        "en_fr": log_translation_version(NAME, lang_to="fr", input_label="prompt", hf_dir=weights),
        "renamed": log_translation_version(
            NAME, lang_to="de", input_label="text_to_translate", hf_dir=weights
        ),
    }
    def serving_holds_decisions() -> bool:
        r = httpx.get(f"{serving_url}/models/{NAME}")
        states = {v["version"]: v["state"] for v in r.json().get("versions", [])}
        return states.get(versions["renamed"]) == "quarantined"

    wait_for(serving_holds_decisions, 30, 0.1)
    return versions


def test_first_version_is_the_default_and_answers(
    serving_url: str, translation_versions: dict[str, str]
) -> None:
    r = wait_for(lambda: (resp := serve_status(serving_url, NAME)).status_code == 200 and resp,
                 60, 0.2)
    body = r.json()
    assert isinstance(body, list) and len(body) == 1
    assert isinstance(body[0]["translation_text"], str)
    info = httpx.get(f"{serving_url}/models/{NAME}").json()
    assert info["default_version"] == translation_versions["en_de"]

    many = serve_status(serving_url, NAME, body=[{"prompt": "Hello"}, {"prompt": "Good night"}])
    assert many.status_code == 200 and len(many.json()) == 2


def test_second_version_answers_by_header_and_by_path(
    serving_url: str, translation_versions: dict[str, str]
) -> None:
    v2 = translation_versions["en_fr"]
    for headers in ({"serve_multiplexed_model_id": v2}, {"serve-multiplexed-model-id": v2}):
        r = serve_status(serving_url, NAME, headers=headers)
        assert r.status_code == 200, r.text
    r = serve_status(serving_url, NAME, v2)
    assert r.status_code == 200 and "translation_text" in r.json()[0]


def test_renamed_input_is_quarantined_with_reasons_and_never_loaded(
    serving_url: str, translation_versions: dict[str, str]
) -> None:
    v3 = translation_versions["renamed"]
    for response in (
        serve_status(serving_url, NAME, v3),
        serve_status(serving_url, NAME, headers={"serve_multiplexed_model_id": v3}),
        serve_status(serving_url, NAME, v3, body={"text_to_translate": "Hello"}),
    ):
        assert response.status_code == 409
        assert response.headers["content-type"].startswith("application/problem+json")
        reasons = " ".join(response.json()["reasons"])
        assert "'prompt'" in reasons and "'text_to_translate'" in reasons
    assert not load_attempted(NAME, v3)
    assert load_attempted(NAME, translation_versions["en_de"])


def test_invalid_body_names_the_field(serving_url: str, translation_versions: dict[str, str]
                                      ) -> None:
    r = serve_status(serving_url, NAME, body={"text_to_translate": "Hello"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    fields = " ".join(str(e) for e in r.json()["errors"])
    assert "prompt" in fields and "text_to_translate" in fields


def test_unknown_model_and_version_are_404(serving_url: str,
                                           translation_versions: dict[str, str]) -> None:
    assert serve_status(serving_url, "no_such_model").status_code == 404
    r = serve_status(serving_url, NAME, "99")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


def test_openapi_shows_the_models_contract(serving_url: str,
                                           translation_versions: dict[str, str]) -> None:
    spec = httpx.get(f"{serving_url}/openapi.json").json()
    assert f"/models/{NAME}/serve" in spec["paths"]
    assert "prompt" in str(spec)


def test_listing_shows_states(serving_url: str, translation_versions: dict[str, str]) -> None:
    listing = httpx.get(f"{serving_url}/models").json()
    model = next(m for m in listing["models"] if m["name"] == NAME)
    states = {v["version"]: v["state"] for v in model["versions"]}
    assert states[translation_versions["en_de"]] == "live"
    assert states[translation_versions["en_fr"]] == "live"
    assert states[translation_versions["renamed"]] == "quarantined"


