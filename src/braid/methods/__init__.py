"""Decoding methods. Each advances a batch of running requests with one large-model pass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from braid.errors import InvalidRequestError

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request


class Method(Protocol):
    name: str

    def step(self, engine: Engine, requests: list[Request]) -> None:
        """Advance every request by at least one token (or its prompt), calling `accept`."""

    def release(self, request: Request) -> None:
        """Free whatever the method holds for a finished or aborted request."""


METHODS = ("ar", "spec", "block")


def make_method(name: str, draft=None, gamma: int = 4) -> Method:
    """`draft` is a loaded draft `Transformer` for the speculative methods."""
    if name == "ar":
        from braid.methods.autoregressive import Autoregressive

        return Autoregressive()
    if name in ("spec", "block"):
        from braid.methods.speculative import DraftSpeculative

        if draft is None:
            raise InvalidRequestError(f"method {name!r} needs a draft model (draft=DIR)")
        return DraftSpeculative(draft, rule=name, gamma=gamma)
    raise InvalidRequestError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
