"""The FastAPI app: routes, the API key, and every error in vLLM's JSON shape.

Routes stay thin: they parse the body, hand it to `Serving`, and turn the result into JSON or an
SSE stream. One exception handler per error kind maps it to its status, so routes need no
try/except; a body that fails validation is a 400 naming the field, as vLLM answers.
"""

from __future__ import annotations

import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from braid import __version__
from braid.errors import BraidError, InvalidRequestError
from braid.serve import protocol as P
from braid.serve.loop import Unavailable
from braid.serve.serving import Serving, error_of, status_of

OPEN_ROUTES = ("/health", "/version")


def build_app(serving: Serving | None, api_key: str | None = None) -> FastAPI:
    """The app; `serving` may come later (`app.state.serving`): until then every route but
    /health and /version answers 503, and /health says "loading"."""
    app = FastAPI(title="braid", version=__version__)
    app.state.serving = serving
    app.state.draining = False

    def current() -> Serving:
        if app.state.serving is None:
            raise Unavailable("the model is still loading: retry when GET /health says ok")
        return app.state.serving

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        if api_key and request.url.path not in OPEN_ROUTES:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                body = P.error_body("invalid or missing API key: send Authorization: Bearer", 401)
                return JSONResponse(body, status_code=401)
        return await call_next(request)

    @app.exception_handler(BraidError)
    async def braid_error(request: Request, exc: BraidError):
        return JSONResponse(error_of(exc), status_code=status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(where) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif param:
            message = f"{param}: {message}"
        return JSONResponse(P.error_body(message, 400, param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return JSONResponse(P.error_body(message, exc.status_code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return JSONResponse(error_of(exc), status_code=500)

    def disconnected(request: Request):
        return request.is_disconnected

    def reply(result):
        if isinstance(result, dict):
            return JSONResponse(result)
        return StreamingResponse(result, media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, request: Request):
        return reply(await current().completion(body, disconnected(request)))

    @app.post("/v1/chat/completions")
    async def chat(body: P.ChatCompletionRequest, request: Request):
        return reply(await current().chat(body, disconnected(request)))

    @app.get("/v1/models")
    async def models():
        serving = current()
        card = P.ModelCard(id=serving.model_name, max_model_len=serving.max_context)
        return {"object": "list", "data": [card.model_dump()]}

    @app.get("/health")
    async def health():
        serving = app.state.serving
        if app.state.draining or (serving is not None and serving.loop.draining):
            return JSONResponse({"status": "draining"}, status_code=503)
        if serving is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        text = current().loop.metrics.render()
        return Response(text, media_type="text/plain; version=0.0.4")

    @app.post("/tokenize")
    async def tokenize(body: P.TokenizeRequest):
        serving = current()
        serving.check_model(body.model)
        if body.messages is not None:
            ids = serving.chat_ids(body.messages)
        else:
            ids = serving.llm.tokenizer.encode(body.prompt, special=body.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": serving.max_context}

    @app.post("/detokenize")
    async def detokenize(body: P.DetokenizeRequest):
        serving = current()
        serving.check_model(body.model)
        vocab = serving.llm.model.config.vocab_size
        if any(not 0 <= t < vocab for t in body.tokens):
            raise InvalidRequestError(f"tokens must be ids in [0, {vocab})")
        return {"prompt": serving.llm.tokenizer.decode(body.tokens)}

    @app.get("/version")
    async def version():
        return {"version": __version__}

    return app
