"""Requests, the continuous-batching step loop and per-request stats."""

from braid.engine.engine import Engine
from braid.engine.request import RequestOutput, RequestStats

__all__ = ["Engine", "RequestOutput", "RequestStats"]
