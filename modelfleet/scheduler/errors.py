"""Errors the scheduler answers with, in OpenAI's shape.

Every refusal is one :class:`ApiError`: an HTTP status and the body
``{"error": {"message", "type", "param", "code"}}`` that OpenAI's API (and its SDK's exception
classes) use. ``type`` follows OpenAI: ``invalid_request_error`` for anything the client got
wrong, ``authentication_error`` (401), ``rate_limit_error`` (429), ``server_error`` and
``service_unavailable`` for the fleet's own trouble. ``code`` is a short machine-readable
string (``model_not_found``, ``rate_limit_exceeded``, ...) or ``None``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "error_body"]


def error_body(
    message: str, *, err_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


class ApiError(Exception):
    """A request the scheduler answers with ``status`` and an OpenAI error body.

    ``retry_after_s`` becomes a ``Retry-After`` header (whole seconds, at least 1) on 429 and
    503 answers.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        err_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return error_body(self.message, err_type=self.err_type, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, int(-(-self.retry_after_s // 1))))}
