"""CP multi-token heads: module, loss, training and storage."""

from braid.heads.io import load_heads, save_heads
from braid.heads.module import CPHeads, HeadsConfig

__all__ = ["CPHeads", "HeadsConfig", "load_heads", "save_heads"]
