"""The OpenAPI document and the API agree: every route is in it and nothing else, and the
property tests generated from it (schemathesis) against a real `dialguard serve` find no
500 and no answer outside the document. A bounded number of examples per operation:
`make test` runs them; DIALGUARD_API_EXAMPLES raises it for a longer hunt."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dialguard.api.app import HttpApi
from dialguard.api.errors import CODES
from dialguard.api.routes import OPENAPI, ROUTES
from dialguard.config import ApiSettings
from dialguard.service import Service
from tests.api.served import ServedApi, serving_api
from tests.redis_server import RedisServer

DOCUMENT = json.loads(OPENAPI.read_text(encoding="utf-8"))
EXAMPLES = int(os.environ.get("DIALGUARD_API_EXAMPLES", "30"))


def test_the_document_lists_exactly_the_routes() -> None:
    routes = {(route.method.lower(), route.path) for route in ROUTES}
    documented = {
        (method, path)
        for path, operations in DOCUMENT["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert documented == routes
    assert DOCUMENT["openapi"] == "3.1.0"


def test_the_app_serves_the_routes_of_the_table(tmp_path: Path) -> None:
    api = HttpApi(cast(Service, None), ApiSettings(tmp_path / "tokens.json"))  # not started
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in api.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert served == {(route.method.lower(), route.path) for route in ROUTES}


def test_the_error_codes_are_the_documented_ones() -> None:
    assert DOCUMENT["components"]["schemas"]["Error"]["properties"]["code"]["enum"] == list(CODES)
    documented = DOCUMENT["components"]["responses"]
    for code, status in CODES.items():
        assert f"E{status}" in documented, code
        assert code in documented[f"E{status}"]["description"], code


def test_every_write_takes_an_idempotency_key_and_declares_its_errors() -> None:
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            names = {p.get("name") for p in operation.get("parameters", [])}
            responses = set(operation["responses"])
            assert {"401", "404", "405", "500"} <= responses, (method, path)
            if method != "get":
                assert "Idempotency-Key" in names, (method, path)
                assert {"400", "403", "409", "413", "422", "503"} <= responses, (method, path)


# --- property tests against a real `dialguard serve` ----------------------------------------


@pytest.fixture(scope="module")
def served(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedApi]:
    with serving_api(tmp_path_factory.mktemp("served-api"), redis_server.url) as running:
        yield running


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


schema = schemathesis.openapi.from_path(OPENAPI)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_500_and_no_answer_outside_the_document(
    case: schemathesis.Case[Any], served: ServedApi, session: requests.Session
) -> None:
    response = case.call(
        base_url=served.base,
        session=session,
        headers={"Authorization": f"Bearer {served.token}"},
        timeout=10,
    )
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            response_headers_conformance,
        ],
    )
