"""braid: faster LLM generation, several tokens per pass of the large model."""

from braid.engine.request import RequestOutput, RequestStats
from braid.errors import BraidError, InvalidRequestError, ModelLoadError
from braid.llm import LLM
from braid.sampling import SamplingParams

__version__ = "0.1.0"
__all__ = [
    "LLM",
    "BraidError",
    "InvalidRequestError",
    "ModelLoadError",
    "RequestOutput",
    "RequestStats",
    "SamplingParams",
]
