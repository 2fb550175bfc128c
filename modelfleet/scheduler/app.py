"""The scheduler's HTTP surface: OpenAI's API for every public model name, health, metrics.

=============================  ==========================================================
``POST /v1/chat/completions``  chat, streamed (SSE) or not
``POST /v1/completions``       completions, streamed or not
``GET /v1/models``             the public model names of every RoutingPolicy
``GET /health``                200 once a fleet is loaded, else 503
``GET /metrics``               ``modelfleet_*`` metrics (Prometheus text)
``GET /openapi.json``          this API's OpenAPI 3.1 description (model names as an enum)
=============================  ==========================================================

Every refusal is an OpenAI error body (``{"error": {"message", "type", "param", "code"}}``):
an unknown path 404, a wrong method 405, a body over the limit 413 (from ``Content-Length``
before reading it, or as soon as the read passes the limit), anything the request checks
refuse 400/401/404/429 (:mod:`~modelfleet.scheduler.protocol`,
:mod:`~modelfleet.scheduler.core`). An unexpected exception is logged and answered 500 in the
same shape, never a dropped connection. Plain Starlette (no per-request validation layer: the
body is parsed exactly once, by the protocol module).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Send

from modelfleet.scheduler.errors import ApiError, error_body
from modelfleet.scheduler.protocol import MAX_TOKENS_LIMIT, ROLES, RequestKind
from modelfleet.scheduler.proxy import JsonResult, Proxy, StreamResult

__all__ = ["build_app", "openapi_document"]

log = logging.getLogger("modelfleet.scheduler.app")


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers())


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "Content-Length: not an integer", code="invalid_request") from None
        if declared > limit:
            raise ApiError(
                413,
                f"body of {declared} bytes exceeds the limit of {limit} bytes",
                code="request_too_large",
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413, f"body exceeds the limit of {limit} bytes", code="request_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _headers(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in request.headers.items():
        out.setdefault(k.lower(), v)
    return out


class _RelayResponse(StreamingResponse):
    """A stream whose body iterator is closed however the response ends.

    Starlette leaves the iterator suspended when the task is cancelled while it awaits
    ``send`` (Ray Serve cancels a replica's request when its client goes away): the relay
    would then only close the engine's stream when the garbage collector finalises it, after
    the engine has generated everything into the socket buffers. Closing it here aborts the
    engine's request at once.

    Ray Serve's ``receive`` raises (``TaskCancelledError``) instead of answering
    ``http.disconnect`` when the client is gone: that is a disconnect, handled as one (the
    stream is cancelled), not an error to log with a traceback and answer with a 500 nobody
    reads. Formatting those tracebacks cost the replica ~20 ms per dropped stream.
    """

    async def listen_for_disconnect(self, receive: Receive) -> None:
        try:
            await super().listen_for_disconnect(receive)
        except Exception as e:  # ray.exceptions.TaskCancelledError; the app imports no Ray
            log.debug("client gone (%s)", type(e).__name__)

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()


def _to_response(result: JsonResult | StreamResult) -> Response:
    if isinstance(result, StreamResult):
        return _RelayResponse(
            result.chunks, media_type="text/event-stream", headers=dict(result.headers)
        )
    return Response(
        result.body,
        status_code=result.status,
        headers=dict(result.headers),
        media_type=result.media_type,
    )


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}


def openapi_document(models: list[str], max_body_bytes: int) -> dict[str, Any]:
    """The API's OpenAPI 3.1 description; ``model`` is an enum of the names served now."""
    model: dict[str, Any] = {"type": "string", "description": "Public model name."}
    if models:
        model["enum"] = models
    # Every optional field may be null (absent), as in OpenAI's own description and as the
    # scheduler reads it; ``protocol.parse_body`` checks exactly this (tests/scheduler's
    # schemathesis run holds the two together).
    common: dict[str, Any] = {
        "model": model,
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {
            "type": ["object", "null"],
            "properties": {"include_usage": {"type": "boolean"}},
        },
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_TOKENS_LIMIT},
        "max_completion_tokens": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": MAX_TOKENS_LIMIT,
        },
        "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
        "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 1},
        "stop": {  # vLLM: at most 4 stop strings, none empty
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1}},
                {"type": "null"},
            ]
        },
        "user": {"type": ["string", "null"]},
    }
    part = {  # text models take text parts only (vLLM answers 400 to the others)
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    }
    message = {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": sorted(ROLES)},
            "content": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": part},
                    {"type": "null"},
                ]
            },
        },
    }
    # vLLM's rule: stream_options only with stream: true
    streamed_options = {
        "if": {"not": {"required": ["stream"], "properties": {"stream": {"const": True}}}},
        "then": {"properties": {"stream_options": {"type": "null"}}},
    }
    chat = {
        **streamed_options,
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **common,
            "messages": {"type": "array", "minItems": 1, "items": message},
        },
    }
    ids = {
        "type": "array",
        "minItems": 1,
        "maxItems": 256,
        "items": {"type": "integer", "minimum": 0, "maximum": 100_000},
    }
    completion = {
        **streamed_options,
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            **common,
            "prompt": {
                "oneOf": [
                    {"type": "string"},
                    # one prompt per request (a list of one string or one id list)
                    {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string"}},
                    ids,
                    {"type": "array", "minItems": 1, "maxItems": 1, "items": ids},
                ]
            },
        },
    }
    errors = {
        str(code): {
            "description": text,
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
        }
        for code, text in (
            (400, "The request is malformed or a field is invalid."),
            (401, "Missing or unknown API key."),
            (404, "Unknown model."),
            (413, f"Body larger than {max_body_bytes} bytes."),
            (429, "Rate limit or SLO-class shedding; see Retry-After."),
            (503, "No endpoint of the model's pools is ready."),
        )
    }
    completion_ok = {
        "description": "The answer (JSON), or its stream (text/event-stream) when stream is true.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            # one server-sent event: ``data:`` is a JSON chunk, an error object or [DONE]
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                }
            },
        },
    }

    def post(schema: dict[str, Any], summary: str) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                },
                "responses": {"200": completion_ok, **errors},
            }
        }

    def get(summary: str, media: str) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "responses": {"200": {"description": summary, "content": {media: {}}}},
            }
        }

    return {
        "openapi": "3.1.0",
        "info": {"title": "modelfleet scheduler", "version": "v1"},
        "paths": {
            "/v1/chat/completions": post(chat, "Chat completion (OpenAI API)"),
            "/v1/completions": post(completion, "Completion (OpenAI API)"),
            "/v1/models": get("The public model names", "application/json"),
            "/health": {
                "get": {
                    "summary": "Ready when a fleet is loaded",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": get("Prometheus metrics", "text/plain"),
        },
    }


def build_app(
    proxy: Proxy,
    *,
    ready: Callable[[], bool],
    render_metrics: Callable[[], bytes],
) -> Starlette:
    """The ASGI application over one :class:`~modelfleet.scheduler.proxy.Proxy`."""
    core = proxy.core
    limit = proxy.max_body_bytes

    def completion_route(kind: RequestKind) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            try:
                raw = await _read_body(request, limit)
            except ApiError as e:
                return _error(e)
            except ClientDisconnect:
                return Response(status_code=499)
            return _to_response(await proxy.handle(kind, raw, _headers(request)))

        return handler

    async def models(_request: Request) -> Response:
        created = int(time.time())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "modelfleet"}
            for name in core.public_models()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(_request: Request) -> Response:
        if ready():
            return JSONResponse({"status": "ok"})
        return JSONResponse(
            error_body("no fleet loaded yet", err_type="service_unavailable", code="not_ready"),
            status_code=503,
        )

    async def metrics(_request: Request) -> Response:
        return Response(render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(_request: Request) -> Response:
        return Response(
            json.dumps(openapi_document(core.public_models(), limit)),
            media_type="application/json",
        )

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            detail = "no such path; this API serves /v1/chat/completions, /v1/completions, " + (
                "/v1/models, /health, /metrics"
            )
        return JSONResponse(
            error_body(detail, err_type="invalid_request_error", code=code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def crash(_request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering a request", exc_info=exc)
        return JSONResponse(
            error_body(f"internal error: {type(exc).__name__}", err_type="server_error", code=None),
            status_code=500,
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completion_route("chat"), methods=["POST"]),
            Route("/v1/completions", completion_route("completion"), methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: crash},
    )
