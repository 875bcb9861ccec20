import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import ARCHS, make_hf_model  # noqa: E402

# one thread: tiny models run faster, and results do not depend on a noisy neighbour core
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """One tiny random checkpoint per supported architecture, written by transformers."""
    root = tmp_path_factory.mktemp("models")
    return {arch: make_hf_model(arch, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def llama_dir(model_dirs) -> Path:
    return model_dirs["llama"]
