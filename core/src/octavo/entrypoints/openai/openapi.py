"""The server's OpenAPI schema, corrected to say what the server does.

FastAPI's generated schema promises a 422 with its own body for a malformed request (this
server answers 400 in OpenAI's shape), leaves out the 413 of an oversized body and the 401 of a
missing key, and declares no authentication. Clients generated from the schema and fuzzers that
hold the server to it (tests/test_api_fuzz.py) would otherwise be told something untrue.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def install_openapi(app: FastAPI, *, authenticated: bool, public_paths: Collection[str]) -> None:
    """Make `app.openapi()` return the corrected schema (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            correct(schema, authenticated=authenticated, public_paths=public_paths)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def correct(schema: dict[str, Any], *, authenticated: bool, public_paths: Collection[str]) -> None:
    """Edit FastAPI's schema in place: the errors each operation really answers, and the bearer key."""
    schema.setdefault("components", {}).setdefault("schemas", {})
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    if authenticated:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema.get("paths", {}).items():
        for op in operations.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation error: this server answers 400
            if "requestBody" in op or op.get("parameters"):
                responses.setdefault("400", _error("The request is malformed or asks for more than the server allows"))
            if "requestBody" in op:
                responses.setdefault("413", _error("The request body is over --max-request-body-bytes"))
            if authenticated and path not in public_paths:
                op["security"] = [{"bearer": []}]
                responses.setdefault("401", _error("The API key is missing or wrong"))
