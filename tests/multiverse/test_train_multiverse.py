"""`braid train-multiverse`: the loss mask, Multiverse Attention in the loss (against each path run
on its own through transformers), the curriculum, a short run lowering the loss, the export."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import hf_model

from braid.multiverse import tags as T
from braid.multiverse.grammar import Block, parse
from braid.multiverse.tasks import Knobs, make_task
from braid.multiverse.train import (
    IGNORE,
    Example,
    MultiverseTrainConfig,
    collate,
    encode_example,
    encode_records,
    load_for_training,
    main,
    multiverse_fraction,
    responses,
    sample_batch,
    token_losses,
    train,
)

FLAT = Knobs(min_parts=3, max_parts=3, nest_rate=0.0, max_operand=9)
NESTED = Knobs(min_parts=2, max_parts=2, nest_rate=1.0, max_splits=1, max_operand=9)
SHORT = {"min_parts": 2, "max_parts": 2, "nest_rate": 0.0, "max_operand": 9, "ops": "+"}


@pytest.fixture(scope="module")
def loaded(llama_dir):
    torch.manual_seed(0)
    model, tok, tags, eos = load_for_training(str(llama_dir))
    return model.eval(), tok, tags, eos


def path_labels(text: str) -> list[str]:
    """Every path label of a Multiverse text in document order, from the grammar's tree."""
    out: list[str] = []

    def walk(items):
        for item in items:
            if isinstance(item, Block):
                for path in item.paths:
                    out.append(path.label)
                    walk(path.items)

    for think in parse(text).items:
        if not isinstance(think, str):
            walk(think.items)
    return out


def squash(text: str) -> str:
    return "".join(text.split())


# ---- data and the loss mask --------------------------------------------------------------------


def test_responses_share_the_frame_and_the_answer():
    task = make_task("t:3", NESTED)
    seq, mv = responses(task.as_dict())
    assert mv == task.multiverse.strip() + "\n"
    assert seq.startswith(T.THINK) and seq.endswith(f"{T.THINK_END}\nAnswer: {task.answer}\n")
    assert seq.count("Answer:") == 1 and T.PARALLEL not in seq
    # a curated record without a sequential field and without <Think>
    inner = mv.split(T.THINK)[1].split(T.THINK_END)[0]
    seq2, mv2 = responses({"prompt": "p", "multiverse": inner})
    assert mv2.startswith(T.THINK) and T.PARALLEL not in seq2
    assert all(line in seq2 for line in task.sequential.splitlines()[:-1])


@pytest.mark.parametrize("knobs", [FLAT, NESTED])
def test_loss_mask_covers_exactly_the_response(loaded, knobs):
    _, tok, _, eos = loaded
    task = make_task("m:1", knobs)
    _, mv = responses(task.as_dict())
    ids, labels = encode_example(tok, task.prompt, mv, eos)
    trained = [j for j, lab in enumerate(labels) if lab != IGNORE]
    # one contiguous run to the end; untrained = the prompt, trained = the response + eos
    assert trained == list(range(trained[0], len(ids)))
    assert [labels[j] for j in trained] == [ids[j] for j in trained]
    assert tok.decode(ids[: trained[0]]) == task.prompt
    assert ids[-1] == eos
    assert squash(tok.decode(ids[trained[0] : -1])) == squash(mv)


@pytest.mark.parametrize("knobs", [FLAT, NESTED])
def test_forced_path_labels_carry_no_loss(loaded, knobs):
    _, tok, _, eos = loaded
    task = make_task("m:2", knobs)
    _, mv = responses(task.as_dict())
    ids, full = encode_example(tok, task.prompt, mv, eos)
    ids2, masked = encode_example(tok, task.prompt, mv, eos, mask_forced=True)
    assert ids2 == ids
    dropped = [j for j in range(len(ids)) if full[j] != IGNORE and masked[j] == IGNORE]
    # the dropped tokens, grouped where they are contiguous, spell "1:", "2:", "2.1:", ...
    groups, run = [], [dropped[0]]
    for j in dropped[1:]:
        if j == run[-1] + 1:
            run.append(j)
        else:
            groups.append(run)
            run = [j]
    groups.append(run)
    assert [tok.decode([ids[j] for j in g]) for g in groups] == [
        f"{lab}:" for lab in path_labels(mv)
    ]
    assert all(tok.convert_ids_to_tokens(ids[g[0] - 1]) == T.PATH for g in groups)


def test_batched_encoding_equals_one_by_one(loaded):
    _, tok, _, eos = loaded
    records = [make_task(f"b:{i}", NESTED).as_dict() for i in range(4)]
    cfg = MultiverseTrainConfig()
    examples, dropped = encode_records(tok, records, eos, cfg, max_len=10_000)
    assert dropped == 0
    for rec, e in zip(records, examples):
        seq, mv = responses(rec)
        assert e.seq == encode_example(tok, rec["prompt"], seq, eos)
        assert e.mv == encode_example(tok, rec["prompt"], mv, eos, mask_forced=True)
        assert e.mv_causal == encode_example(tok, rec["prompt"], mv, eos)
    short, dropped = encode_records(tok, records, eos, cfg, max_len=len(examples[0].mv[0]) - 1)
    assert dropped >= 1 and len(short) == 4 - dropped


def test_curriculum_moves_from_sequential_to_multiverse():
    cfg = MultiverseTrainConfig(steps=100, curriculum=0.5, mv_start=0.0, batch_size=64)
    assert [multiverse_fraction(s, cfg) for s in (0, 25, 50, 99)] == [0.0, 0.5, 1.0, 1.0]
    assert multiverse_fraction(0, MultiverseTrainConfig(curriculum=0.0)) == 1.0
    seq, mv = ([1, 2], [IGNORE, 2]), ([1, 3], [IGNORE, 3])
    examples = [Example(seq, mv, mv)]
    rows0, causal0, n0 = sample_batch(examples, 0, cfg, 0)
    rows9, causal9, n9 = sample_batch(examples, 99, cfg, 0)
    assert n0 == 0 and rows0 == [seq] * 64 and all(causal0)
    assert n9 == 64 and rows9 == [mv] * 64 and not any(causal9)
    assert 16 < sample_batch(examples, 25, cfg, 0)[2] < 48  # about half of 64 at step 25
    causal_mv = ([1, 4], [IGNORE, 4])
    cfg.causal_fraction = 1.0
    rows, causal, n = sample_batch([Example(seq, mv, causal_mv)], 99, cfg, 0)
    assert n == 64 and rows == [causal_mv] * 64 and all(causal)


# ---- Multiverse Attention in the loss ------------------------------------------------------------


def path_spans(ids: list[int], tags: dict[str, int]) -> list[tuple[int, int, int]]:
    """(start, end, block) of every path span, found by matching tags with a stack."""
    spans, stack, blocks = [], [], []
    for j, t in enumerate(ids):
        if t == tags[T.PARALLEL]:
            blocks.append(len(spans) + 1000 * j)
        elif t == tags[T.PARALLEL_END]:
            blocks.pop()
        elif t == tags[T.PATH]:
            stack.append(j)
        elif t == tags[T.PATH_END]:
            spans.append((stack.pop(), j, blocks[-1]))
    return spans


def standalone(ids: list[int], j: int, spans) -> list[int]:
    """The tokens token j sees when earlier sibling paths are cut out: a plain sequence."""
    cut = set()
    for s, e, blk in spans:
        mine = [x for x in spans if x[2] == blk and x[0] <= j <= x[1]]
        if mine and s < mine[0][0] and blk == mine[0][2]:
            cut.update(range(s, e + 1))
    return [ids[k] for k in range(j + 1) if k not in cut]


@pytest.mark.parametrize("knobs", [FLAT, NESTED])
def test_masked_loss_equals_each_path_run_on_its_own(loaded, knobs):
    model, tok, tags, eos = loaded
    task = make_task("a:7", knobs)
    seq, mv = responses(task.as_dict())
    row = encode_example(tok, task.prompt, mv, eos)
    other = encode_example(tok, task.prompt, seq, eos)  # a causal row padded beside it
    batch = collate([row, other], [False, True], tags, eos)
    with torch.no_grad():
        losses = token_losses(model, batch)
    ids = row[0]
    spans = path_spans(ids, tags)
    assert len(spans) >= 3
    checked = 0
    for s, e, _ in spans:
        for j in range(s, e):  # token j predicts j + 1, both inside the path
            context = standalone(ids, j, spans)
            if tags[T.CONCLUSION] in context:  # after a join positions jump: not a plain run
                continue
            with torch.no_grad():
                logits = model(torch.tensor([context])).logits[0, -1]
            ref = F.cross_entropy(logits[None], torch.tensor([ids[j + 1]]))
            assert losses[0, j].item() == pytest.approx(ref.item(), abs=1e-4)
            checked += 1
    # the prompt and Goal before the first path: ordinary causal decoding
    first = spans[0][0]
    with torch.no_grad():
        logits = model(torch.tensor([ids[:first]])).logits[0]
    ref = F.cross_entropy(logits[:-1], torch.tensor(ids[1:first]), reduction="none")
    trained = torch.tensor(row[1][1:first]) != IGNORE
    torch.testing.assert_close(losses[0, : first - 1][trained], ref[trained], atol=1e-4, rtol=0)
    # the padded causal row equals the row alone with transformers' own causal mask
    with torch.no_grad():
        logits = model(torch.tensor([other[0]])).logits[0]
    ref = F.cross_entropy(logits[:-1], torch.tensor(other[0][1:]), reduction="none")
    n = len(other[0])
    keep = torch.tensor(other[1][1:]) != IGNORE
    torch.testing.assert_close(losses[1, : n - 1][keep], ref[keep], atol=1e-4, rtol=0)
    assert (losses[1, n - 1 :] == 0).all()  # padding carries no loss
    assert checked > 10


# ---- a run end to end ---------------------------------------------------------------------------


def test_short_run_lowers_loss_and_exports_a_braid_model(llama_dir, tmp_path):
    from braid import LLM, SamplingParams

    cfg = MultiverseTrainConfig(
        model=str(llama_dir),
        out=str(tmp_path / "mv"),
        tasks=48,
        knobs=json.dumps(SHORT),
        steps=40,
        batch_size=8,
        lr=3e-3,
        warmup=5,
        curriculum=0.25,
        device="cpu",
        precision="fp32",
        log_every=0,
    )
    card = train(cfg, quiet=True)
    # the loss on a fixed batch of training examples, before (tags added) and after
    torch.manual_seed(0)
    before, tok, tags, eos = load_for_training(str(llama_dir))
    rows = []
    for i in range(8):
        task = make_task(f"0:{i}", Knobs(**SHORT))
        rows.append(encode_example(tok, task.prompt, responses(task.as_dict())[1], eos, True))
    batch = collate(rows, [False] * 8, tags, eos)
    after = hf_model(tmp_path / "mv")
    with torch.no_grad():
        loss0 = token_losses(before.eval(), batch).sum().item()
        loss1 = token_losses(after, batch).sum().item()
    assert loss1 < 0.8 * loss0
    assert card["config"]["steps"] == 40 and card["train_seconds"] > 0
    assert json.loads((tmp_path / "mv" / "braid_card.json").read_text())["name"] == "mv"
    assert "Multiverse model" in (tmp_path / "mv" / "README.md").read_text()

    llm = LLM(tmp_path / "mv", dtype="fp32", threads=1)
    assert all(llm.tokenizer.token_id(t) == tags[t] for t in T.TAGS)
    out = llm.generate(
        task.prompt, SamplingParams(temperature=0.0, max_tokens=8), method="multiverse"
    )[0]
    assert out.stats.generated_tokens > 0


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, llama_dir):
    assert main(["--tasks", "4"]) == 2
    assert main(["--model", str(tmp_path), "--tasks", "4"]) == 2
    assert main(["--model", str(llama_dir), "--data", str(tmp_path / "none.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert main(["--model", str(llama_dir), "--data", str(bad)]) == 2
    assert main(["--model", str(llama_dir), "--tasks", "4", "--curriculum", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("braid train-multiverse: ") for line in err)
    assert "prompt" in err[3] and "multiverse" in err[3]


def test_lora_run_saves_a_small_adapter_that_braid_merges_as_peft_does(llama_dir, tmp_path):
    """--lora-rank: the adapter holds the LoRA matrices and the tags' rows only; braid's merge
    at load gives the logits of peft's own merged model on the same base."""
    import peft
    from helpers import braid_prefill
    from safetensors.torch import load_file

    from braid import LLM, SamplingParams
    from braid.model import load_model

    out = tmp_path / "lora"
    cfg = MultiverseTrainConfig(
        model=str(llama_dir), out=str(out), tasks=24, knobs=json.dumps(SHORT), steps=12,
        batch_size=4, lr=1e-2, warmup=2, device="cpu", precision="fp32", log_every=0,
        lora_rank=4,
    )  # fmt: skip
    card = train(cfg, quiet=True)
    assert card["config"]["lora_rank"] == 4 and card["final_train_loss"] < card["first_train_loss"]
    saved = load_file(str(out / "adapter_model.safetensors"))
    rows = [v for k, v in saved.items() if "trainable_tokens_delta" in k]
    assert rows and all(v.shape[0] == len(T.TAGS) for v in rows)
    assert all("lora_" in k or "trainable_tokens_delta" in k for k in saved)  # no whole matrix
    base, _, tags, _ = load_for_training(str(llama_dir))
    merged = peft.PeftModel.from_pretrained(base, out).merge_and_unload().eval()
    ids = [5, 7, tags[T.THINK], 9, tags[T.PARALLEL], 11]
    model, _ = load_model(llama_dir, "fp32", adapter=out)
    _, (ours,) = braid_prefill(model, [ids])
    with torch.no_grad():
        ref = merged(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours.float(), ref, atol=2e-5, rtol=1e-4)
    llm = LLM(llama_dir, dtype="fp32", threads=1, adapter=out)
    assert all(llm.tokenizer.token_id(t) == tags[t] for t in T.TAGS)  # the adapter's tokenizer
    task = make_task("0:0", Knobs(**SHORT))
    done = llm.generate(task.prompt, SamplingParams(temperature=0.0, max_tokens=8), "multiverse")
    assert done[0].stats.generated_tokens > 0
