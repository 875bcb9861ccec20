"""Requests, the continuous-batching step loop and per-request stats."""

from braid.engine.engine import Engine
from braid.engine.request import CompletionOutput, RequestOutput, RequestStats

__all__ = ["CompletionOutput", "Engine", "RequestOutput", "RequestStats"]
