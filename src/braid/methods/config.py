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
LOOKUP_METHODS = ("ngram", "ngram-block")  # prompt lookup: no draft model, no weights
AUTO = "auto"


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class MethodConfig:
    """A decoding method and its options; options a method does not use are ignored.

    name: one of `METHODS`. gamma: drafted tokens per target pass (heads-tree: nodes of the
    draft tree), or "auto" for the draft-model methods (`DRAFT_METHODS`), which then adapt it
    per request from its acceptance (+2 after a fully accepted draft, -1 after a rejection,
    within 1..8). beams, tau: mtad's draft beams and joint acceptance threshold. max_paths,
    max_depth: multiverse forks with more paths or deeper nesting decode sequentially.
    """

    name: str = "ar"
    gamma: int | Literal["auto"] = 4
    beams: int = 4
    tau: float = 0.5
    max_paths: int = 16
    max_depth: int = 4

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise InvalidRequestError(
                f"unknown method {self.name!r}; available: {', '.join(METHODS)}"
            )
        if self.gamma == AUTO:
            if self.name not in DRAFT_METHODS:
                raise InvalidRequestError(
                    f"gamma='auto' (adaptive) is for the draft-model methods "
                    f"{', '.join(DRAFT_METHODS)}, not {self.name!r}"
                )
        elif not _positive_int(self.gamma):
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
        """`name` in a sweep of methods that share one gamma (`braid bench --gamma auto`):
        "auto" adapts where the method can and means the default gamma elsewhere."""
        if gamma == AUTO and name not in DRAFT_METHODS:
            return cls(name)
        return cls(name, gamma=gamma)


OPTIONS = tuple(f.name for f in fields(MethodConfig) if f.name != "name")
DEFAULTS = MethodConfig()


def method_config(method: str | MethodConfig) -> MethodConfig:
    """A config as given, or the named method with default options."""
    return method if isinstance(method, MethodConfig) else MethodConfig(method)


def parse_gamma(text: str) -> int | str:
    """argparse type of --gamma: an integer, or 'auto' for adaptive drafting."""
    if text == AUTO:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None
