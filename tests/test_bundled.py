"""The models shipped inside the package: loadable by braid and transformers alike, by name."""

import json
import subprocess
import sys

import pytest
import torch

from braid import LLM, SamplingParams
from braid.llm import bundled_model
from braid.model import load_model
from braid.model.batch import Append, build_batch

PROMPT = "import os\n\n\ndef main():\n"


@pytest.mark.parametrize("name", ["code-23m", "code-draft-2m"])
def test_bundled_model_logits_match_transformers(name):
    import transformers as tf

    path = bundled_model(name)
    ref = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(path)
    model, _ = load_model(path, "fp32")
    ids = tok(PROMPT)["input_ids"]
    pool = model.new_pool(1)
    logits, _ = model.forward(build_batch([Append(pool.new_graph(), ids, range(len(ids)))]))
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0]
    assert float((logits - expected).abs().max() / expected.abs().max()) < 1e-4
    # braid's tokenizer (the `tokenizers` library) agrees with transformers' on the same files
    assert LLM(path, dtype="fp32").tokenizer.encode(PROMPT) == ids


def test_bundled_models_load_by_name_and_seeded_generation_is_deterministic():
    llm = LLM("code-23m")
    assert llm.model_dir == bundled_model("code-23m")
    params = SamplingParams(max_tokens=32, temperature=0.8, seed=7)
    first = llm.generate(PROMPT, params)[0]
    again = LLM("code-23m").generate(PROMPT, params)[0]
    assert first.token_ids == again.token_ids and first.text == again.text
    assert len(first.token_ids) > 0


def test_draft_and_target_share_the_tokenizer():
    a, b = (
        json.loads((bundled_model(name) / "tokenizer.json").read_text())["model"]["vocab"]
        for name in ("code-23m", "code-draft-2m")
    )
    assert a == b


def test_models_command_lists_every_bundled_model_with_its_card():
    r = subprocess.run(
        [sys.executable, "-m", "braid.cli", "models", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    cards = {c["model"]: c for c in json.loads(r.stdout)}
    assert list(cards) == [
        "smollm2",
        "code-23m",
        "code-draft-2m",
        "multiverse-arith",
        "smollm2-draft",
    ]
    from braid.model.info import describe

    for card in cards.values():  # the card's numbers describe the weights that ship
        assert card["parameters"] == describe(card["path"])["parameters"]
        assert card["license"].lower() == "apache-2.0" and card["source"]
    assert cards["smollm2"]["name"] == "SmolLM2-135M-Instruct"
    code, draft = cards["code-23m"], cards["code-draft-2m"]
    assert code["val_ppl"] > 1 and draft["val_ppl"] > 1
    assert cards["multiverse-arith"]["evaluation"]["quality"]["multiverse"]["validity"] > 0.9
    assert code["parameters"] > 5 * draft["parameters"]


@pytest.mark.parametrize("method", ["heads", "heads-tree"])
def test_shipped_heads_load_by_default_and_keep_greedy_output(method):
    """The default heads of the bundled target (n4-r1, with a fitted tree): greedy output is
    `ar`'s (fp32, where a k-token pass and k one-token passes agree) and drafts get accepted."""
    from braid.heads.tree import check_template
    from braid.llm import BUNDLED_HEADS

    llm = LLM("code-23m", dtype="fp32")
    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    out = llm.generate(PROMPT, params, method=method)[0]
    assert out.token_ids == llm.generate(PROMPT, params)[0].token_ids
    assert out.stats.accepted_tokens > 0 and out.stats.passes < 48
    config = json.loads((BUNDLED_HEADS / "heads.json").read_text())
    assert len(check_template(config["tree"])) == len(config["tree_tokens"]) == 32
    # named by its path (as `braid bench --config bundled` does), the target has them too
    by_path = LLM(bundled_model("code-23m"), dtype="fp32").generate(PROMPT, params, method=method)
    assert by_path[0].token_ids == out.token_ids
