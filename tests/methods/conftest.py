"""Fixtures of the Multiverse tests: a tiny random model whose tokenizer has the tags."""

import pytest

from braid import LLM
from braid.multiverse import tags as T


@pytest.fixture(scope="session")
def mv_dir(tmp_path_factory):
    """The tiny test tokenizer has 300 ids and the model 320 embeddings: room for 12 tags."""
    from helpers import make_hf_model

    path = make_hf_model("llama", tmp_path_factory.mktemp("mv") / "m", seed=3)
    T.add_tags_to_tokenizer_file(path)
    return path


@pytest.fixture(scope="session")
def mv_llm(mv_dir):
    return LLM(mv_dir, dtype="fp32", max_batch=4)
