"""The one place where errors become HTTP answers: ``{"error": {"code", "message", ...}}``.

A ``ServiceError`` answers in OpenAI's error shape (``code``, ``message``, ``type``, ``param``,
plus its details); a body or query that fails validation answers ``validation_error`` with
``fields``; an unknown route ``not_found``. No answer carries a traceback or a server path.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs import errors as e
from serve_app.event_streams import TooManyStreams

logger = logging.getLogger("ray.serve")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. validation_error, queue_full.")
    message: str = Field(description="What went wrong and what to do.")
    type: str = Field(description="OpenAI's error type: invalid_request_error, rate_limit_error or server_error.")
    param: str | None = Field(default=None, description="The request field or upload at fault, if one is.")


class ErrorResponse(BaseModel):
    """The body of every error answer (OpenAPI)."""

    error: ErrorDetail


#: The error answers the routes document in OpenAPI.
ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 415, 422, 429, 503)
}

# Ordered: the first class an error is an instance of decides, so subclasses come first.
STATUS_CODES: dict[type[e.ServiceError], int] = {
    e.UnsupportedMediaType: 415,
    e.UploadTooLarge: 413,
    e.ValidationFailed: 422,
    e.JobFailed: 422,
    e.QueueFull: 429,
    e.QuotaExceeded: 429,
    e.Unauthenticated: 401,
    TooManyStreams: 429,
    e.VariantNotDeployed: 404,
    e.AdapterNotDeployed: 404,
    e.JobNotFound: 404,
    e.FileNotFoundForJob: 404,
    e.FilenameTaken: 409,
    e.IdempotencyConflict: 409,
    e.ModelUnavailable: 503,
}


#: HTTP status -> OpenAI's error ``type`` (openai-python raises the matching exception class).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


def error_response(exc: e.ServiceError) -> JSONResponse:
    status = next((code for cls, code in STATUS_CODES.items() if isinstance(exc, cls)), 500)
    # OpenAI's error shape is a superset-compatible: message, type, param, code.
    body = {
        "code": exc.code,
        "message": exc.message,
        "type": _ERROR_TYPES.get(status, "server_error"),
        "param": exc.details.get("field"),
    }
    body.update({k: v for k, v in exc.details.items() if k != "retry_after_s"})
    headers = {}
    if "retry_after_s" in exc.details:
        headers["Retry-After"] = str(int(exc.details["retry_after_s"]))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"  # RFC 6750: the scheme the client should use
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _param(err: dict) -> str | None:
    """The request field a validation error is about (``body.prompt`` -> ``prompt``), or None."""
    where = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
    return ".".join(where) or None


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    return f"{where}: {err.get('msg')}" if where else str(err.get("msg"))


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(e.ServiceError)
    async def _service(_: Request, exc: e.ServiceError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        messages = [_describe(err) for err in exc.errors()]
        fields = [".".join(str(p) for p in err.get("loc", ())) for err in exc.errors()]
        first = next((_param(err) for err in exc.errors()), None)
        return JSONResponse(
            {
                "error": {
                    "code": e.ValidationFailed.code,
                    "message": "; ".join(messages),
                    "type": _ERROR_TYPES[422],
                    "param": first,
                    "fields": fields,
                }
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"code": code, "message": str(exc.detail), "type": _ERROR_TYPES.get(exc.status_code, "server_error")}
        # A 405 carries Allow (the methods the path takes), as RFC 9110 requires.
        return JSONResponse({"error": {**body, "param": None}}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        inner = e.unwrap(exc)
        if isinstance(inner, e.ServiceError):
            return error_response(inner)
        logger.exception("unhandled error")
        return JSONResponse(
            {
                "error": {
                    "code": e.ServiceError.code,
                    "message": "internal error; the server log has the details",
                    "type": "server_error",
                    "param": None,
                }
            },
            status_code=500,
        )
