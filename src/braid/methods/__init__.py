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


METHODS = (
    "ar",
    "spec",
    "block",
    "mtad",
    "mtad-tree",
    "multiverse",
    "heads",
    "heads-block",
    "heads-tree",
)
HEADS_METHODS = ("heads", "heads-block", "heads-tree")
DRAFT_METHODS = ("spec", "block", "mtad", "mtad-tree")


def make_method(
    name: str,
    draft=None,
    gamma: int = 4,
    beams: int = 4,
    tau: float = 0.5,
    max_paths: int = 16,
    max_depth: int = 4,
    heads=None,
) -> Method:
    """`draft` is a loaded draft `Transformer` for the draft-model methods; `max_paths` and
    `max_depth` cap the forks of "multiverse" (larger ones decode sequentially)."""
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
    if name == "multiverse":
        from braid.methods.multiverse import Multiverse

        return Multiverse(max_paths=max_paths, max_depth=max_depth)
    if name in HEADS_METHODS:  # `heads`: loaded CPHeads
        if heads is None:
            raise InvalidRequestError(f"method {name!r} needs CP heads (heads=DIR)")
        if name == "heads-tree":
            from braid.methods.heads_tree import HeadsTree

            return HeadsTree(heads, nodes=gamma)
        from braid.methods.heads import HeadsSpeculative

        return HeadsSpeculative(heads, rule=name)
    raise InvalidRequestError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
