"""The Curator's two checks: content kept (after refilling) and valid structure (at the end)."""

from __future__ import annotations

import re

from braid.multiverse.grammar import errors as grammar_errors
from braid.multiverse.tags import PARALLEL_SENTENCE, TAGS

DEFAULT_THRESHOLD = 0.2

_TAG = re.compile("|".join(re.escape(t) for t in TAGS))
_LABEL = re.compile(r"(?m)^[ \t]*\d+(?:\.\d+)*:[ \t]*")  # "2.1: " that starts a path or outline
_SPACE = re.compile(r"\s+")


def plain_text(text: str) -> str:
    """`text` without tags, the parallel sentence or line-leading labels, whitespace collapsed.

    Applied to both sides of the content check, so an original that numbers its own lines
    "1: ..." is treated the same way as the structured text.
    """
    text = _TAG.sub("\n", text).replace(PARALLEL_SENTENCE, " ")
    return _SPACE.sub(" ", _LABEL.sub("", text)).strip()


def content_distance(original: str, restructured: str) -> float:
    """Normalised character edit distance (Levenshtein / longer length) of the plain texts."""
    from rapidfuzz.distance import Levenshtein  # the `curate` extra

    return Levenshtein.normalized_distance(plain_text(original), plain_text(restructured))


def content_problem(original: str, restructured: str, threshold: float) -> str | None:
    """Why `restructured` does not keep the content of `original`, or None if it does."""
    d = content_distance(original, restructured)
    if d > threshold:
        return (
            f"content check failed: normalised edit distance {d:.3f} > {threshold} between the "
            "original text and the restructured text without tags (text was changed, dropped "
            "or added)"
        )
    return None


def grammar_problem(text: str) -> str | None:
    """The grammar errors of a Multiverse text in one line, or None if it is valid."""
    found = grammar_errors(text)
    if not found:
        if "<Parallel>" not in text:
            return "grammar check failed: no <Parallel> block (nothing was parallelised)"
        return None
    shown = "; ".join(str(e) for e in found[:3])
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    return f"grammar check failed: {shown}{more}"
