"""The OpenAPI document keeps telling the truth: it is valid OpenAPI 3, it documents exactly the routes
Flask serves (no more, no fewer), and it is what ``GET /openapi.json`` answers over real HTTP."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from supervisor.api import auth, create_app
from supervisor.api.openapi import document

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def flask_routes() -> dict[tuple[str, str], str]:
    """(METHOD, OpenAPI path) -> endpoint name of every route the API serves."""
    app = create_app(None)  # type: ignore[arg-type] - the supervisor is only read by handlers
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - IGNORED_METHODS:
            routes[(method, path)] = rule.endpoint
    return routes


def shape(path: str) -> str:
    """The path with its parameters' names dropped: ``{raw_app_id}`` and ``{appId}`` are the same."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in document()["paths"].items() for method in ops}


def test_document_is_valid_openapi_3() -> None:
    doc = document()
    validate(doc)
    assert doc["openapi"].startswith("3.")


def test_every_route_is_documented() -> None:
    doc = {(m, shape(p)) for m, p in documented()}
    missing = sorted(f"{m} {p}" for m, p in flask_routes() if (m, shape(p)) not in doc)
    assert not missing, f"routes missing from the OpenAPI document: {missing}"


def test_every_documented_operation_is_routed() -> None:
    routed = {(m, shape(p)) for m, p in flask_routes()}
    missing = sorted(f"{m} {p}" for m, p in documented() if (m, shape(p)) not in routed)
    assert not missing, f"documented but not served: {missing}"


def test_path_parameters_are_declared() -> None:
    for path, ops in document()["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, f"{method.upper()} {path}: {declared} != {names}"


def test_public_operations_are_exactly_the_unauthenticated_routes() -> None:
    routes = flask_routes()
    public = {(m.upper(), p) for p, ops in document()["paths"].items() for m, op in ops.items()
              if op.get("security") == []}
    assert {routes[r] for r in public if r in routes} == auth.PUBLIC_ENDPOINTS
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            if op.get("security") != []:
                assert "401" in op["responses"], f"{method.upper()} {path} does not document 401"


def test_every_response_says_its_media_type() -> None:
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                no_body = (("/v1/update", "202"), ("/v1/update", "204"), ("/v1/tcp-ping", "204"))
                if "$ref" in response or (path, code) in no_body:
                    continue  # shared responses say theirs in components; these have no body
                assert response.get("content"), f"{method.upper()} {path} {code} has no media type"


# --- served over real HTTP ------------------------------------------------------------------------

def test_served_document_is_the_document_and_needs_a_key(managed) -> None:
    assert managed.get("/openapi.json").status_code == 401
    response = managed.get("/openapi.json", headers={"Authorization": f"Bearer {managed.key}"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == document()


def test_every_documented_operation_refuses_a_missing_or_wrong_key(managed) -> None:
    """What the document's security section promises, checked on every operation."""
    import requests

    for path, ops in document()["paths"].items():
        url = managed.url + re.sub(r"\{[^}]+\}", "1", path)
        for method, op in ops.items():
            if op.get("security") == []:
                continue
            for params in ({}, {"apikey": "0" * 32}):
                response = requests.request(method, url, params=params, timeout=10)
                assert (response.status_code, response.text) == (401, "Unauthorized"), f"{method} {path}"
