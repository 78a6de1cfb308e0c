"""Optional API-key authentication (``RIVULET_SERVING_API_KEYS``), as pure ASGI middleware.

Why middleware and not a FastAPI dependency: it runs before routing and body parsing, so an
unauthenticated client costs almost nothing, and one place covers every route. Open paths
are the liveness/readiness probes and the API docs, which hold no data.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from shared import codec

ASGIApp = Callable[..., Any]
HEADER = "x-api-key"
OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
UNAUTHORIZED = codec.dumps({"detail": [{"loc": ["header", HEADER], "msg": "missing or invalid API key",
                                        "type": "unauthorized"}]})


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key from ``x-api-key: <key>`` or ``Authorization: Bearer <key>``."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return None


def key_ok(key: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every configured key."""
    if not key:
        return False
    ok = False
    for candidate in keys:
        ok |= hmac.compare_digest(key, candidate)
    return ok


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = tuple(k.encode() for k in keys)

    async def __call__(self, scope: dict[str, Any], receive: ASGIApp, send: ASGIApp) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or key_ok(
                presented_key(scope["headers"]), self.keys):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
            (b"content-length", str(len(UNAUTHORIZED)).encode())]})
        await send({"type": "http.response.body", "body": UNAUTHORIZED})


def document_api_key(app: FastAPI) -> None:
    """Declare the key in the OpenAPI spec (docs' "Authorize" button, schemathesis auth)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "apiKey", "in": "header", "name": HEADER},
                "Bearer": {"type": "http", "scheme": "bearer"},
            }
            for path, ops in schema.get("paths", {}).items():
                if path not in OPEN_PATHS:
                    for op in ops.values():
                        op["security"] = [{"ApiKey": []}, {"Bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
