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


METHODS = ("ar",)


def make_method(name: str) -> Method:
    if name == "ar":
        from braid.methods.autoregressive import Autoregressive

        return Autoregressive()
    raise InvalidRequestError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
