"""Training, storage and loading of CP heads on a tiny model."""

import json

import pytest
import torch
from helpers import CORPUS, hf_model, make_hf_model

from braid import LLM, MethodConfig, ModelLoadError, SamplingParams
from braid.cli import main
from braid.heads import CPHeads, HeadsConfig, load_heads, save_heads
from braid.heads.train import HeadsTrainConfig, train_heads
from braid.model import load_model
from braid.model.batch import Append, build_batch


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAID_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(CORPUS * 12)
    return path


def test_transformers_last_hidden_state_is_braids_return_hidden(llama_dir):
    """The heads are trained on transformers' states and run on braid's: they must agree."""
    ids = [5, 7, 9, 11, 13, 2, 3, 200, 17]
    with torch.no_grad():
        ref = hf_model(llama_dir).model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    model, _ = load_model(llama_dir, "fp32")
    batch = build_batch([Append(model.new_pool(1).new_graph(), ids, range(len(ids)))])
    _, hidden = model.forward(batch, return_hidden=True)
    assert float((hidden - ref).abs().max() / ref.abs().max()) < 1e-5


def test_a_short_training_run_lowers_the_joint_loss(llama_dir, corpus_file, tmp_path):
    cfg = HeadsTrainConfig(
        out=str(tmp_path / "heads"),
        model=str(llama_dir),
        data=str(corpus_file),
        n=3,
        rank=2,
        steps=40,
        batch_size=32,
        lr=1e-2,
        train_tokens=512,
        val_tokens=128,
        context=32,
        targets="data",
    )
    saved = train_heads(cfg, quiet=True)
    initial, final = saved["training"]["initial_val_loss"], saved["val_loss"]
    assert final < 0.8 * initial, (initial, final)
    on_disk = json.loads((tmp_path / "heads" / "heads.json").read_text())
    assert on_disk["val_loss"] == final and on_disk["base_model"]["path"] == str(llama_dir)
    heads = load_heads(tmp_path / "heads", hidden_size=64, vocab_size=320)
    assert (heads.config.n, heads.config.rank) == (3, 2)


def test_train_heads_cli_and_joint_finetuning(llama_dir, corpus_file, tmp_path):
    out = tmp_path / "ft"
    args = ["train-heads", "--model", str(llama_dir), "--data", str(corpus_file), "--n", "2"]
    args += ["--rank", "2", "--steps", "3", "--batch-size", "64", "--train-tokens", "64"]
    args += ["--val-tokens", "64", "--context", "32", "--finetune", "--quiet", "--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "heads.json").read_text())
    assert config["base_model"]["path"] == str(out / "model")
    assert config["training"]["finetune"] is True
    # the fine-tuned model moved, and it decodes with its heads
    before = hf_model(llama_dir).model.layers[0].mlp.down_proj.weight
    after = hf_model(out / "model").model.layers[0].mlp.down_proj.weight
    assert not torch.equal(before, after)
    llm = LLM(out / "model", dtype="fp32", heads=out)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    assert len(llm.generate("def", params, method="heads")[0].token_ids) == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "1"], "--n must be"),
        (["--targets", "generated", "--gen-tokens", "4"], "--gen-tokens > n"),
        (["--targets", "generated", "--finetune"], "needs a frozen model"),
    ],
)
def test_train_heads_cli_rejects_bad_settings(capsys, tmp_path, args, message):
    assert main(["train-heads", *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["residual", "linear"])
def test_save_load_round_trip(tmp_path, kind):
    cfg = HeadsConfig(n=3, rank=2, hidden_size=16, vocab_size=40, kind=kind, bottleneck=4)
    heads = CPHeads(cfg, seed=3)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p))
    exact = load_heads(save_heads(heads, tmp_path / "fp32", dtype=torch.float32))
    for (name, a), (_, b) in zip(heads.state_dict().items(), exact.state_dict().items()):
        assert torch.equal(a, b), name
    assert exact.config == heads.config
    small = load_heads(save_heads(heads, tmp_path / "bf16"))  # default: bf16 on disk
    for a, b in zip(heads.state_dict().values(), small.state_dict().values()):
        assert torch.allclose(a, b, rtol=1 / 128, atol=0)


def test_mismatched_heads_are_refused(llama_dir, tmp_path):
    for name, hidden, vocab, match in (
        ("hid", 32, 320, "hidden size 32, this model has 64"),
        ("voc", 64, 500, "vocabulary size 500, this model has 320"),
    ):
        save_heads(
            CPHeads(HeadsConfig(n=2, rank=1, hidden_size=hidden, vocab_size=vocab)), tmp_path / name
        )
        with pytest.raises(ModelLoadError, match=match):
            LLM(llama_dir, dtype="fp32", heads=tmp_path / name)
    with pytest.raises(ModelLoadError, match="no CP heads here"):
        LLM(llama_dir, dtype="fp32", heads=tmp_path)
    (tmp_path / "hid" / "heads.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not a valid heads config"):
        load_heads(tmp_path / "hid")
    config = json.loads((tmp_path / "voc" / "heads.json").read_text())
    for tree in ([[0, 0]], [[0], "x"], [[0], [0]]):  # orphan node, not a path, repeated node
        (tmp_path / "voc" / "heads.json").write_text(json.dumps({**config, "tree": tree}))
        with pytest.raises(ModelLoadError, match="not a valid heads config"):
            load_heads(tmp_path / "voc")


def test_heads_for_another_architecture_size_work(tmp_path):
    """Any model braid loads: qwen3 (head_dim != hidden / heads) with fresh heads decodes."""
    d = make_hf_model("qwen3", tmp_path / "q")
    save_heads(CPHeads(HeadsConfig(n=3, rank=2, hidden_size=64, vocab_size=320)), tmp_path / "h")
    llm = LLM(d, dtype="fp32", heads=tmp_path / "h")
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    assert (
        llm.generate("x", params, method="heads")[0].token_ids
        == llm.generate("x", params)[0].token_ids
    )


def test_greedy_targets_are_the_models_own_next_token_argmaxes(llama_dir):
    """Row t of a window gets argmax p(. | x_<=t+s-1), s = 1..n, from transformers' logits."""
    import numpy as np

    from braid.heads.train import greedy_targets, hidden_states

    ref = hf_model(llama_dir)
    ids = np.arange(3, 3 + 40, dtype=np.int64) * 7 % 250
    starts, context, n = np.array([0, 9]), 12, 3
    hidden = hidden_states(ref, ids, starts, context).float()
    weight = ref.get_output_embeddings().weight.detach()
    targets, rows = greedy_targets(hidden, lambda h: h @ weight.t(), n)
    with torch.no_grad():
        best = [
            ref(torch.from_numpy(ids[s : s + context])[None]).logits[0].argmax(-1) for s in starts
        ]
    expected, expected_rows = [], []
    for w in range(len(starts)):
        for t in range(context - n + 1):
            expected.append([int(best[w][t + s]) for s in range(n)])
            expected_rows.append(w * context + t)
    assert targets.tolist() == expected
    assert rows.tolist() == expected_rows


def test_generated_sequences_are_the_models_greedy_continuations(llama_dir):
    """Every generated token is transformers' argmax after the tokens before it (teacher-forced
    over the whole sequence), and the training rows are the states that draw them."""
    from braid.heads.generated import continue_text, generated_rows

    ref = hf_model(llama_dir)
    prompts = torch.tensor([[5, 9, 200, 31, 7], [3, 3, 3, 3, 3], [17, 250, 4, 8, 90]])
    seqs = continue_text(ref, prompts, 9, batch=2)
    assert seqs.shape == (3, 14) and torch.equal(seqs[:, :5], prompts)
    with torch.no_grad():
        best = ref(seqs).logits.argmax(-1)
    assert torch.equal(best[:, 4:-1], seqs[:, 5:])

    # decoding with ignore_eos goes past end-of-sequence, so the continuations must too: make
    # the first generated token of row 0 the model's end token and generate again
    saved = ref.generation_config.eos_token_id
    ref.generation_config.eos_token_id = int(seqs[0, 5])
    again = continue_text(ref, prompts, 9, batch=2)
    assert torch.equal(again, seqs)
    assert ref.generation_config.eos_token_id == int(seqs[0, 5])  # restored afterwards
    ref.generation_config.eos_token_id = saved

    n = 3
    hidden = torch.zeros(3, 14, 4)
    rows, targets = generated_rows(hidden, seqs, 5, n)
    expected = [
        (w * 14 + t, seqs[w, t + 1 : t + 1 + n].tolist()) for w in range(3) for t in range(4, 11)
    ]
    assert rows.tolist() == [r for r, _ in expected]
    assert targets.tolist() == [t for _, t in expected]


@pytest.mark.parametrize("temperatures", ["0", "0,1"])
def test_training_on_generated_text_fits_a_draft_tree(
    llama_dir, corpus_file, tmp_path, temperatures
):
    from braid.heads.tree import check_template

    cfg = HeadsTrainConfig(
        out=str(tmp_path / "heads"),
        model=str(llama_dir),
        data=str(corpus_file),
        n=3,
        rank=2,
        steps=40,
        batch_size=32,
        lr=1e-2,
        train_tokens=640,
        val_tokens=160,
        gen_prompt=8,
        gen_tokens=24,
        gen_temperatures=temperatures,
    )
    saved = train_heads(cfg, quiet=True)  # targets default to generated
    assert saved["val_loss"] < 0.9 * saved["training"]["initial_val_loss"]
    assert saved["training"]["targets"] == "generated"
    # 640 // 32 = 20 continuations, states t = 7 .. 28 have 3 generated tokens after them
    assert saved["training"]["train_positions"] == 20 * 22
    tree, tokens = saved["tree"], saved["tree_tokens"]
    assert 1 <= len(tree) <= 32 and check_template(tree)
    assert max(len(p) for p in tree) <= 2  # n - 1 draft depths
    assert len(tokens) == len(tree) and all(a <= b for a, b in zip(tokens, tokens[1:]))
    assert 1.0 <= tokens[0] and tokens[-1] <= 3.0
    llm = LLM(llama_dir, dtype="fp32", heads=tmp_path / "heads")
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    tree_out = llm.generate("def", params, method=MethodConfig("heads-tree", gamma=5))[0]
    assert tree_out.token_ids == llm.generate("def", params)[0].token_ids


def test_sampled_continuations_follow_the_tempered_softmax(llama_dir):
    """At temperature 0.5 the first generated token of 4000 copies of a prompt is distributed
    as softmax(logits / 0.5) from transformers: over the 8 likeliest tokens and the rest, TV
    < 0.05 (sampling noise is about 0.02; the untempered softmax is 0.14 off)."""
    from braid.heads.generated import continue_text

    ref = hf_model(llama_dir)
    prompt = torch.tensor([[5, 9, 200, 31, 7]])
    with torch.no_grad():
        p = torch.softmax(ref(prompt).logits[0, -1].double() / 0.5, 0)
    seqs = continue_text(ref, prompt.expand(4000, -1), 2, temperature=0.5, seed=3, batch=4000)
    freq = torch.bincount(seqs[:, 5], minlength=p.numel()).double() / 4000
    top = p.topk(8).indices

    def buckets(q):
        return torch.cat([q[top], (1 - q[top].sum())[None]])

    assert 0.5 * float((buckets(freq) - buckets(p)).abs().sum()) < 0.05
    again = continue_text(ref, prompt.expand(4000, -1), 2, temperature=0.5, seed=3, batch=4000)
    assert torch.equal(seqs, again)  # seeded
