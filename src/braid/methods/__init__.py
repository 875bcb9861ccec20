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


METHODS = ("ar", "spec", "block", "mtad", "mtad-tree")
DRAFT_METHODS = ("spec", "block", "mtad", "mtad-tree")


def make_method(name: str, draft=None, gamma: int = 4, beams: int = 4, tau: float = 0.5) -> Method:
    """`draft` is a loaded draft `Transformer` for the draft-model methods."""
    if name == "ar":
        from braid.methods.autoregressive import Autoregressive

        return Autoregressive()
    if name in DRAFT_METHODS and draft is None:
        raise InvalidRequestError(f"method {name!r} needs a draft model (draft=DIR)")
    if name in ("spec", "block"):
        from braid.methods.speculative import DraftSpeculative

        return DraftSpeculative(draft, rule=name, gamma=gamma)
    if name in ("mtad", "mtad-tree"):
        from braid.methods.mtad import Mtad

        return Mtad(draft, gamma=gamma, beams=beams, tau=tau, tree=name == "mtad-tree")
    raise InvalidRequestError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
