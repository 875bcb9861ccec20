"""Loading Hugging Face-format model directories and braid's own transformer."""

from braid.model.config import ModelConfig
from braid.model.loader import load_model
from braid.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer", "load_model"]
