"""The shipped Multiverse adapter of the default model (SmolLM2-135M-Instruct + LoRA).

The engine's own decoding, unforced, of a held-out long-task prompt: every logit row it sampled
from equals one `transformers` pass over the final sequence with the Multiverse training mask
and positions, on the model peft itself merges from the adapter (an independent merge and an
independent attention). And the CLI's `--method multiverse` takes the adapter by default.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import training_mask_logits

from braid import LLM, SamplingParams
from braid.model.loader import resolve_model_dir
from braid.model.registry import bundled_adapter, default_model_file
from braid.multiverse import tags as T
from braid.multiverse.tasks import LONG_PATHS, make_task

peft = pytest.importorskip("peft")  # a dev dependency: CI has it, the reference needs it
ADAPTER = bundled_adapter()
pytestmark = pytest.mark.skipif(ADAPTER is None, reason="no shipped Multiverse adapter")
PROMPT = make_task("1000:3", LONG_PATHS).prompt  # held out: training used seed 101


@pytest.fixture(scope="module")
def fp32_llm():
    return LLM(dtype="fp32", adapter=ADAPTER, max_batch=1, threads=1)


@pytest.fixture(scope="module")
def peft_merged():
    import transformers as tf

    base = tf.AutoModelForCausalLM.from_pretrained(
        resolve_model_dir(default_model_file(), torch.float32), dtype=torch.float32
    )
    vocab = len(json.loads((ADAPTER / "tokenizer.json").read_text())["added_tokens"])
    assert vocab >= len(T.TAGS)
    tok = tf.AutoTokenizer.from_pretrained(ADAPTER)
    base.resize_token_embeddings(len(tok), mean_resizing=False)
    return peft.PeftModel.from_pretrained(base, ADAPTER).merge_and_unload().eval()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_logits_equal_the_training_mask_pass_of_peft_merged_model(
    fp32_llm, peft_merged, temperature
):
    record: dict = {}

    def recorder(ctx: list[int], logits: torch.Tensor) -> torch.Tensor:
        record[tuple(ctx)] = logits.clone()
        return logits

    prompt = fp32_llm.tokenizer.encode(PROMPT, special=False)
    params = SamplingParams(
        max_tokens=160, temperature=temperature, seed=3, logits_processors=[recorder]
    )
    (out,) = fp32_llm.generate([prompt], params, method="multiverse")
    assert out.stats.blocks > 0 and out.stats.critical_path < len(out.token_ids)  # it forked
    ids = prompt + out.token_ids
    ref, visible = training_mask_logits(peft_merged, ids, T.tag_ids(fp32_llm.tokenizer))
    n, matched = len(prompt), 0
    for i in range(n - 1, len(ids) - 1):
        ctx = tuple(ids[j] for j in range(n, i + 1) if visible[i, j])
        if ctx in record:
            torch.testing.assert_close(record[ctx], ref[i], atol=2e-4, rtol=2e-4)
            matched += 1
    # every sampled row matched (forced labels and tags are not sampled, so not recorded)
    assert matched == len(record) > len(out.token_ids) // 2


def test_the_cli_runs_multiverse_on_the_shipped_adapter_by_default():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "braid.cli",
            "generate",
            "--method",
            "multiverse",
            "--prompt",
            PROMPT,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["finish_reason"] == "stop"  # the adapter's generation defaults let it finish
    assert out["stats"]["blocks"] > 0 and "Answer:" in out["text"]
