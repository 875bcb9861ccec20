"""Decoding methods. Each advances a batch of running requests with one large-model pass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from braid.errors import InvalidRequestError
from braid.methods.config import (
    DRAFT_METHODS,
    HEADS_METHODS,
    HEADS_TREE_NODES,
    LOOKUP_METHODS,
    METHODS,
    MethodConfig,
    method_config,
)

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request
    from braid.sampling import SamplingParams

__all__ = [
    "DRAFT_METHODS",
    "HEADS_METHODS",
    "LOOKUP_METHODS",
    "METHODS",
    "Method",
    "MethodConfig",
    "make_method",
]


class Method(Protocol):
    """What the engine drives. Methods are structural (they need not subclass this); the engine
    falls back to the defaults below for the optional hooks a method leaves out."""

    name: str
    # cached rows per context position: > 1 when a method keeps parallel branches (multiverse)
    rows_per_position: int = 1
    # whether the method applies SamplingParams.logits_processors to every row it samples
    supports_logits_processors: bool = False

    def step(self, engine: Engine, requests: list[Request]) -> None:
        """Advance every request by at least one token (or its prompt), calling `accept`.

        A request's tokens not yet in its cache are `all_ids[graph.length:]`: the whole prompt
        on its first step, or only its last token when the engine copied a sibling sample's
        prompt rows in (`SamplingParams.n`)."""

    def release(self, request: Request) -> None:
        """Free whatever the method holds for a finished or aborted request."""

    def check(self, engine: Engine, params: SamplingParams) -> None:
        """Refuse what this method cannot honour, before the request is queued (optional)."""


def make_method(config: MethodConfig | str = "ar", draft=None, heads=None) -> Method:
    """The method `config` names, built with its options (a string: default options).

    `draft` is a loaded draft `Transformer` for `DRAFT_METHODS`, `heads` loaded `CPHeads` for
    `HEADS_METHODS`; the others take neither.
    """
    config = method_config(config)
    name = config.name
    if name == "ar":
        from braid.methods.autoregressive import Autoregressive

        return Autoregressive()
    if name in DRAFT_METHODS and draft is None:
        raise InvalidRequestError(f"method {name!r} needs a draft model (draft=DIR)")
    if name in ("spec", "block"):
        from braid.methods.speculative import DraftSpeculative

        return DraftSpeculative(draft, rule=name, gamma=config.gamma)
    if name in ("mtad", "mtad-tree"):
        from braid.methods.mtad import Mtad

        return Mtad(
            draft, gamma=config.gamma, beams=config.beams, tau=config.tau, tree=name == "mtad-tree"
        )
    if name in LOOKUP_METHODS:
        from braid.methods.ngram import PromptLookup

        return PromptLookup(rule=name, gamma=config.gamma)
    if name == "multiverse":
        from braid.methods.multiverse import Multiverse

        return Multiverse(max_paths=config.max_paths, max_depth=config.max_depth)
    # HEADS_METHODS (MethodConfig admits no other name)
    if heads is None:
        raise InvalidRequestError(f"method {name!r} needs CP heads (heads=DIR)")
    if name == "heads-tree":
        from braid.methods.heads_tree import HeadsTree

        nodes = HEADS_TREE_NODES if config.gamma == "auto" else config.gamma
        return HeadsTree(heads, nodes=nodes)
    from braid.methods.heads import HeadsSpeculative

    return HeadsSpeculative(heads, rule=name, gamma=config.gamma)
