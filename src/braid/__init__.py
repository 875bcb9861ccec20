"""braid: faster LLM generation, several tokens per pass of the large model."""

from braid.engine.request import CompletionOutput, RequestOutput, RequestStats
from braid.errors import BraidError, InvalidRequestError, ModelLoadError
from braid.llm import LLM
from braid.methods.config import MethodConfig
from braid.sampling import SamplingParams

__version__ = "0.1.0"
__all__ = [
    "LLM",
    "BraidError",
    "CompletionOutput",
    "InvalidRequestError",
    "MethodConfig",
    "ModelLoadError",
    "RequestOutput",
    "RequestStats",
    "SamplingParams",
]
