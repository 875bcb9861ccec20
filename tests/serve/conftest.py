"""Session servers for the serve tests (helpers in servers.py); never left running."""

import pytest
from servers import API_KEY, start_server, stop_server


@pytest.fixture(scope="session")
def code_server(tmp_path_factory):
    """code-23m, greedy-exact fp32, autoregressive, behind an API key."""
    log = tmp_path_factory.mktemp("serve") / "ar.log"
    server = start_server(["--model", "code-23m", "--dtype", "fp32"], log, api_key=API_KEY)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def spec_server(tmp_path_factory):
    """code-23m with its bundled draft, speculative (fixed gamma 4), 8 slots."""
    log = tmp_path_factory.mktemp("serve") / "spec.log"
    args = ["--model", "code-23m", "--dtype", "fp32", "--method", "spec", "--gamma", "4"]
    server = start_server(args + ["--max-batch", "8"], log)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def offline_code():
    from braid import LLM

    return LLM("code-23m", dtype="fp32", max_batch=1)
