"""CORS in the cloud comes from the template (the HTTP API's CorsConfiguration, the stream
function URL's Cors), not from the apps' own middleware as on the local stack: every method
and request header the apps' routes take must be there, or the browser's preflight fails in
the cloud alone (as DELETE /sessions/{id} once did)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security.http import HTTPBase
from samtranslator.yaml_helper import yaml_parse

from tests.conftest import FUNCTION_ENV

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]

ENV = {
    **FUNCTION_ENV,
    "AUTH_JWKS_URL": "https://issuer.example/pool/.well-known/jwks.json",
    "STREAM_BASE_URL": "https://stream.example/",
}


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[str, FastAPI]]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        yield {
            "api": importlib.import_module("llmstream.api").app,
            "stream": importlib.import_module("llmstream.stream").app,
        }


def _template() -> dict[str, Any]:
    document: dict[str, Any] = yaml_parse((ROOT / "template.yaml").read_text())
    return document["Resources"]


def _cors(function_of: str) -> dict[str, Any]:
    resources = _template()
    if function_of == "api":
        return dict(resources["HttpApi"]["Properties"]["CorsConfiguration"])
    config = resources["StreamFunction"]["Properties"]["FunctionUrlConfig"]
    return dict(config["Cors"])


def _headers(dependant: Dependant) -> set[str]:
    """The request headers a route reads, its dependencies' included."""
    found = {p.alias.replace("_", "-").lower() for p in dependant.header_params}
    if isinstance(dependant.call, HTTPBase):  # a Bearer scheme reads Authorization
        found.add("authorization")
    for sub in dependant.dependencies:
        found |= _headers(sub)
    return found


def _needs(app: FastAPI) -> tuple[set[str], set[str]]:
    methods: set[str] = set()
    headers: set[str] = set()
    for route in app.routes:
        if isinstance(route, APIRoute):
            methods |= route.methods
            headers |= _headers(route.dependant)
            if route.body_field is not None:
                headers.add("content-type")
    return methods, headers


@pytest.mark.parametrize("function", ["api", "stream"])
def test_the_clouds_cors_allows_every_method_and_header_the_routes_take(
    apps: dict[str, FastAPI], function: str
) -> None:
    # GIVEN the routes of the function's app
    methods, headers = _needs(apps[function])
    assert methods and headers  # (the route table was read)
    # WHEN the template's CORS for that function is read
    cors = _cors(function)
    allowed_methods = {m.upper() for m in cors["AllowMethods"]}
    allowed_headers = {h.lower() for h in cors["AllowHeaders"]}
    # THEN a browser's preflight for any route passes in the cloud too
    assert methods <= allowed_methods, f"missing from AllowMethods: {methods - allowed_methods}"
    assert headers <= allowed_headers, f"missing from AllowHeaders: {headers - allowed_headers}"
