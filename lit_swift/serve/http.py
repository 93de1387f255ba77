"""Server plumbing shared by `deploy` and `rollout`: OpenAI-style errors, bearer keys, graceful exit.

FastAPI + uvicorn: the request bodies are pydantic models (so wrong types are 400s naming the field),
and uvicorn's graceful shutdown drains in-flight requests on SIGTERM.
"""

from __future__ import annotations

import secrets
import signal

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
except ImportError as err:  # pragma: no cover - the import guard of the `serve` extra
    raise ImportError("serving needs FastAPI and uvicorn: pip install 'lit-swift[serve]'") from err


class APIError(Exception):
    """An error answered with an OpenAI-style body: `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error"}.get(self.status, "invalid_request_error")
        if self.status >= 500:
            kind = "server_error"
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


def _validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
    problems, param = [], None
    for e in err.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        param = param or where or None
        problems.append(f"{where or 'body'}: {e.get('msg')}")
    return APIError(400, "; ".join(problems), param, "invalid_request").response()


def build_app(title: str, api_key: str | None, lifespan=None, stats=dict) -> FastAPI:
    """A FastAPI app answering errors OpenAI-style and, with `api_key`, requiring `Authorization:
    Bearer <key>` on every route but `/health` (which also reports `stats()`)."""
    app = FastAPI(title=title, lifespan=lifespan)
    app.add_exception_handler(APIError, lambda _r, e: e.response())
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return APIError(
                    401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key"
                ).response()
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **stats()}

    return app


def serve(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    """Run `app` until SIGTERM/SIGINT; in-flight requests finish first, then the process exits 0."""
    # uvicorn re-raises the signal it caught once it has drained; an ignoring handler makes that a no-op
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
    server.run()
