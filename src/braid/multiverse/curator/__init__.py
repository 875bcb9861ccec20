"""Multiverse Curator: turns sequential reasoning into Multiverse form with an LLM.

Five stages (summary tree, parallel groups, parallel structure, refill, Goal and Conclusion)
sent to any OpenAI-compatible chat endpoint, a content check after refilling and a grammar
check at the end. `braid curate` runs it on JSONL files; it needs `httpx` (extra `curate`).
"""

from braid.multiverse.curator.checks import (
    DEFAULT_THRESHOLD,
    content_distance,
    content_problem,
    grammar_problem,
    plain_text,
)
from braid.multiverse.curator.client import ChatClient, EndpointConfig, EndpointError
from braid.multiverse.curator.pipeline import (
    CurateOptions,
    Rejected,
    Summary,
    curate_file,
    curate_text,
)
from braid.multiverse.curator.prompts import STAGES

__all__ = [
    "DEFAULT_THRESHOLD",
    "STAGES",
    "ChatClient",
    "CurateOptions",
    "EndpointConfig",
    "EndpointError",
    "Rejected",
    "Summary",
    "content_distance",
    "content_problem",
    "curate_file",
    "curate_text",
    "grammar_problem",
    "plain_text",
]
