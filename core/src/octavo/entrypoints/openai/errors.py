"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right status.

Handlers raise `APIError` (or one of its named subclasses); the app turns it, FastAPI's
validation errors and anything unexpected into this one body, so every client sees one format.
The `type`/`code` strings are the ones OpenAI's own API sends for the same situations.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse


class APIError(Exception):
    status: int = HTTPStatus.BAD_REQUEST
    type: str = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type

    def to_response(self) -> JSONResponse:
        return error_response(self.message, status=int(self.status), type=self.type, param=self.param, code=self.code)


class BadRequestError(APIError):
    status = HTTPStatus.BAD_REQUEST


class ContextLengthError(BadRequestError):
    def __init__(
        self, max_model_len: int, num_prompt_tokens: int, max_tokens: int | None, param: str = "messages"
    ) -> None:
        if max_tokens is None or num_prompt_tokens >= max_model_len:
            msg = (
                f"This model's maximum context length is {max_model_len} tokens. However, your "
                f"{param} resulted in {num_prompt_tokens} tokens, which leaves no room for the "
                f"completion. Please reduce the length of the {param}."
            )
        else:
            msg = (
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the "
                f"{param}, {max_tokens} in the completion). Please reduce the length of the "
                f"{param} or completion."
            )
        super().__init__(msg, param=param, code="context_length_exceeded")


class AuthenticationError(APIError):
    status = HTTPStatus.UNAUTHORIZED

    def __init__(
        self, message: str = "Incorrect or missing API key. Pass it as 'Authorization: Bearer <key>'."
    ) -> None:
        super().__init__(message, code="invalid_api_key")


class NotFoundError(APIError):
    status = HTTPStatus.NOT_FOUND


class ModelNotFoundError(NotFoundError):
    def __init__(self, model: str, served: list[str]) -> None:
        super().__init__(
            f"The model `{model}` does not exist. This server serves: {', '.join(served)}.",
            param="model",
            code="model_not_found",
        )


class ServiceUnavailableError(APIError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = "server_error"


class InternalServerError(APIError):
    status = HTTPStatus.INTERNAL_SERVER_ERROR
    type = "server_error"


def error_body(message: str, *, type: str, param: str | None = None, code: Any = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    message: str, *, status: int, type: str = "invalid_request_error", param: str | None = None, code: Any = None
) -> JSONResponse:
    return JSONResponse(error_body(message, type=type, param=param, code=code), status_code=status)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable line (and the first offending field) from pydantic/FastAPI validation errors."""
    parts, param = [], None
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            parts.append(f"malformed JSON body: {ctx.get('error', e.get('msg', 'invalid JSON'))}")
            continue
        where = ".".join(loc)
        if param is None and loc:
            param = loc[0]
        msg = e.get("msg", "invalid value")
        if e.get("type") == "extra_forbidden":
            msg = "this server does not support this field (it would otherwise be ignored)"
        parts.append(f"{where}: {msg}" if where else msg)
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more")
    return "; ".join(parts) or "invalid request", param
