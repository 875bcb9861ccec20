"""`braid serve`: the OpenAI-compatible HTTP server (the `serve` extra: fastapi, uvicorn).

FastAPI on uvicorn, as vLLM serves: pydantic validates the bodies into the 400s clients expect,
SSE streaming and disconnect detection come with Starlette, and uvicorn's graceful shutdown
drains in-flight requests on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from braid.errors import BraidError, InvalidRequestError


def add_parser(sub) -> None:
    from braid.cli import _add_method_args, _model_args

    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible server (/v1/completions, /v1/chat/completions, /metrics)",
        description="Serve a model over HTTP with the OpenAI API; requests from every client "
        "share the engine's batches.",
    )
    _model_args(p)
    _add_method_args(p)
    p.add_argument("--draft", help="draft model for spec/block/mtad/mtad-tree")
    p.add_argument("--heads", help="CP heads directory for the heads methods")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded at once (slots)")
    p.add_argument(
        "--max-waiting",
        type=int,
        default=256,
        help="requests queued for a slot before new ones get 503 (default: %(default)s)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("BRAID_API_KEY"),
        help="require Authorization: Bearer KEY on every route but /health (default: "
        "$BRAID_API_KEY, else open)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        help="max_tokens of requests that give none (default: the model's generation_config, "
        "else 64; always cut to the context)",
    )
    p.add_argument("--served-model-name", help="the model name clients send (default: --model's)")
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds SIGTERM waits for in-flight requests (default: %(default)s)",
    )
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from braid.serve.app import build_app
    except ImportError as e:
        message = f"braid serve needs the serve extra: pip install 'braid-llm[serve]' ({e})"
        raise BraidError(message) from None
    from braid.cli import _load, _method_config
    from braid.engine.engine import Engine
    from braid.methods import DRAFT_METHODS, HEADS_METHODS, make_method
    from braid.serve.loop import EngineLoop
    from braid.serve.metrics import Metrics
    from braid.serve.serving import Serving

    if not 0 < args.port < 65536:
        raise InvalidRequestError(f"--port must be in 1..65535, got {args.port}")
    if args.max_batch < 1 or args.max_waiting < 0:
        raise InvalidRequestError("--max-batch must be >= 1 and --max-waiting >= 0")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise InvalidRequestError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    config = _method_config(args)
    app = build_app(None, api_key=args.api_key)
    server = _draining_server(
        uvicorn,
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            timeout_graceful_shutdown=args.grace,
        ),
        app,
    )
    failure: list[BaseException] = []

    def load() -> None:
        """The model loads while the server already answers /health with 503 "loading"."""
        try:
            llm = _load(args, config.name)
            draft = llm.draft_model() if config.name in DRAFT_METHODS else None
            heads = llm.heads() if config.name in HEADS_METHODS else None
            method = make_method(config, draft, heads)
            engine = Engine(llm.model, llm.tokenizer, method, args.max_batch)
            name = args.served_model_name or llm.name
            loop = EngineLoop(engine, Metrics(name), max_waiting=args.max_waiting)
            loop.start()
            app.state.serving = Serving(llm, loop, name, config, args.max_tokens)
        except BaseException as err:  # the server stops and serve() raises it
            failure.append(err)
            server.should_exit = True
            return
        url = f"http://{args.host}:{args.port}/v1"
        print(f"braid: serving {name} ({config.name}) on {url}", file=sys.stderr, flush=True)

    loader = threading.Thread(target=load, name="braid-load", daemon=True)
    loader.start()
    try:
        server.run()
    finally:
        loader.join()
        if app.state.serving is not None:
            app.state.serving.loop.stop()
    if failure:
        raise failure[0]
    return 0


def _draining_server(uvicorn, config, app):
    """uvicorn's server, marking the app draining (503 for new requests and /health) as soon
    as a shutdown signal arrives; uvicorn then waits for in-flight requests up to --grace."""

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.draining = True
            if app.state.serving is not None:
                app.state.serving.loop.draining = True
            super().handle_exit(sig, frame)

    return DrainingServer(config)
