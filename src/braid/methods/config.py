"""One validated object for a decoding method and its options (vLLM's `speculative_config`).

The CLI, the benchmark, `LLM` and a server all build a `MethodConfig` and hand it whole to
`make_method`, so an option is named, defaulted and checked in exactly one place. The draft
model and the CP heads are not in it: they are loaded weights that belong to the `LLM`, and one
`LLM` serves many configs.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from typing import Literal

from braid.errors import InvalidRequestError

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
    "ngram",
    "ngram-block",
)
HEADS_METHODS = ("heads", "heads-block", "heads-tree")
DRAFT_METHODS = ("spec", "block", "mtad", "mtad-tree")
HEADS_TREE_NODES = 4  # heads-tree's draft tree under gamma="auto"
LOOKUP_METHODS = ("ngram", "ngram-block")  # prompt lookup: no draft model, no weights
AUTO = "auto"


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class MethodConfig:
    """A decoding method and its options; options a method does not use are ignored.

    name: one of `METHODS`. gamma: "auto" (the default): every drafting method picks each
    request's draft length per step, 0 included, to maximise the batch's expected tokens per
    second from measured pass times and the request's running acceptance
    (`braid.methods.policy`; seeded sampled requests get the length they would get alone
    under a fixed reference cost, so a seed's tokens never depend on the batch or the
    machine); heads-tree then drafts `HEADS_TREE_NODES` nodes. An integer
    fixes the drafted tokens per target pass (heads: at most n - 1; heads-tree: nodes of the
    draft tree). beams, tau: mtad's draft beams and joint acceptance threshold. max_paths,
    max_depth: multiverse forks with more paths or deeper nesting decode sequentially.
    """

    name: str = "ar"
    gamma: int | Literal["auto"] = AUTO
    beams: int = 4
    tau: float = 0.5
    max_paths: int = 16
    max_depth: int = 4

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise InvalidRequestError(
                f"unknown method {self.name!r}; available: {', '.join(METHODS)}"
            )
        if self.gamma != AUTO and not _positive_int(self.gamma):
            raise InvalidRequestError(
                f"gamma must be an integer >= 1 or 'auto', got {self.gamma!r}"
            )
        for option in ("beams", "max_paths", "max_depth"):
            if not _positive_int(getattr(self, option)):
                raise InvalidRequestError(
                    f"{option} must be an integer >= 1, got {getattr(self, option)!r}"
                )
        if not (isinstance(self.tau, int | float) and self.tau > 0 and math.isfinite(self.tau)):
            raise InvalidRequestError(f"tau must be a number > 0, got {self.tau!r}")

    @classmethod
    def sharing_gamma(cls, name: str, gamma: int | str) -> MethodConfig:
        """`name` in a sweep of methods that share one gamma (`braid bench --gamma 4`)."""
        return cls(name, gamma=gamma)


OPTIONS = tuple(f.name for f in fields(MethodConfig) if f.name != "name")
DEFAULTS = MethodConfig()


def method_config(method: str | MethodConfig) -> MethodConfig:
    """A config as given, or the named method with default options."""
    return method if isinstance(method, MethodConfig) else MethodConfig(method)


def parse_gamma(text: str) -> int | str:
    """argparse type of --gamma: an integer, or 'auto' for the batch-aware policy."""
    if text == AUTO:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None
