"""llama.cpp (through llama-cpp-python) as a benchmark peer, run by bench_llamacpp.py in its own
virtual environment: one JSON request per stdin line, one JSON result per stdout line.

    {"mode": "plain" | "lookup", "ids": [...], "max_tokens": 128}
    -> {"tokens": [...], "seconds": 1.23}

Install (a benchmark-only dependency; pip builds llama.cpp from source, ~10 minutes on 2 cores):
    python -m venv /work/llamacpp-venv && /work/llamacpp-venv/bin/pip install llama-cpp-python
On a VM that advertises AMX without granting it to llama.cpp's threads (SIGILL on `tilezero`),
build without AMX:
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
      -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
      -DGGML_AMX_BF16=OFF" pip install --force-reinstall --no-cache-dir llama-cpp-python
"""

import json
import sys
import time

from llama_cpp import Llama
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding


def main(path: str, threads: int) -> None:
    common = dict(n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    engines = {
        "plain": Llama(path, **common),
        # llama-cpp-python's prompt lookup: its defaults (3-gram, 10 drafted tokens)
        "lookup": Llama(path, draft_model=LlamaPromptLookupDecoding(), logits_all=True, **common),
    }
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        llm = engines[req["mode"]]
        llm.reset()  # no prefix reuse between timed calls
        start = time.perf_counter()
        out = llm.create_completion(req["ids"], max_tokens=req["max_tokens"], temperature=0.0)
        seconds = time.perf_counter() - start
        text = out["choices"][0]["text"]
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
        used = out["usage"]["completion_tokens"]
        print(json.dumps({"seconds": seconds, "count": used, "tokens": tokens}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
