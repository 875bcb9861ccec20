"""Multiverse tags on real tokenizers and tiny `transformers` models."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import hf_config, make_tokenizer
from tokenizers import Tokenizer

from braid.errors import InvalidRequestError
from braid.model.tokenizer import Tokenizer as BraidTokenizer
from braid.multiverse.grammar import canonical
from braid.multiverse.tags import (
    TAGS,
    add_tags,
    add_tags_to_tokenizer,
    add_tags_to_tokenizer_file,
    tag_ids,
)

STRUCTURED = """Sum the squares of 3 and 4.
<Think>
Let's think in parallel.
<Parallel>
<Goal>
<Outline>
1: square 3
</Outline>
<Outline>
2: square 4
</Outline>
</Goal>
<Path>
1: 3 * 3 = 9
</Path>
<Path>
2: 4 * 4 = 16
</Path>
<Conclusion>
9 + 16 = 25
</Conclusion>
</Parallel>
</Think>
25"""


@pytest.fixture
def tok_dir(tmp_path):
    make_tokenizer(tmp_path / "tok")
    return tmp_path / "tok"


def hf_tokenizer(path):
    import transformers as tf

    return tf.AutoTokenizer.from_pretrained(path)


def tiny_model(arch: str, vocab_size: int):
    import transformers as tf

    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(hf_config(arch, vocab_size=vocab_size)).eval()


def test_tag_order_and_words():
    assert TAGS == tuple(
        "<Think> </Think> <Parallel> </Parallel> <Goal> </Goal> <Outline> </Outline> <Path> "
        "</Path> <Conclusion> </Conclusion>".split()
    )


@pytest.mark.parametrize(
    "arch, vocab, tied",
    [("llama", 300, True), ("mistral", 320, False)],  # resized / rows already there
)
def test_new_rows_are_the_mean_of_the_bare_word(tok_dir, arch, vocab, tied):
    tok = hf_tokenizer(tok_dir)
    model = tiny_model(arch, vocab)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    ids = add_tags(tok, model)
    # ids from the raw tokenizers library, independent of the transformers wrapper
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    assert ids == {tag: 300 + k for k, tag in enumerate(TAGS)}
    emb = model.get_input_embeddings().weight.detach()
    head = model.get_output_embeddings().weight.detach()
    assert emb.shape[0] == max(vocab, 312) and head.shape[0] == emb.shape[0]
    assert model.config.vocab_size == emb.shape[0]
    torch.testing.assert_close(emb[:300], emb_before[:300], rtol=0, atol=0)
    for tag, i in ids.items():
        word = raw.encode(tag.strip("</>")).ids
        assert len(word) >= 1
        torch.testing.assert_close(emb[i], emb_before[word].mean(0), rtol=0, atol=1e-7)
        expected_head = (emb_before if tied else head_before)[word].mean(0)
        torch.testing.assert_close(head[i], expected_head, rtol=0, atol=1e-7)
    assert emb[ids["<Outline>"]].equal(emb[ids["</Outline>"]])
    assert not emb[ids["<Outline>"]].equal(emb[ids["<Path>"]])
    # the model runs on the tag ids
    with torch.no_grad():
        out = model(torch.tensor([[ids["<Parallel>"], 5, ids["</Parallel>"]]])).logits
    assert out.shape[-1] == emb.shape[0] and torch.isfinite(out).all()


def test_add_tags_is_idempotent(tok_dir):
    tok = hf_tokenizer(tok_dir)
    model = tiny_model("mistral", 300)
    first = add_tags(tok, model)
    with torch.no_grad():
        model.get_input_embeddings().weight[first["<Path>"]] = 3.0  # as if trained
    size = len(tok)
    assert add_tags(tok, model) == first
    assert len(tok) == size == 312
    assert model.get_input_embeddings().weight.shape[0] == 312
    assert (model.get_input_embeddings().weight[first["<Path>"]] == 3.0).all()


def test_encoding_puts_no_whitespace_next_to_tags(tok_dir):
    tok = hf_tokenizer(tok_dir)
    ids = add_tags(tok)
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))  # no tags: decodes text pieces
    enc = tok.encode(STRUCTURED, add_special_tokens=False)
    tag_set = set(ids.values())
    assert sum(i in tag_set for i in enc) == STRUCTURED.count("<") == 16
    for j, i in enumerate(enc):
        if i not in tag_set:
            continue
        if j > 0 and enc[j - 1] not in tag_set:
            assert not raw.decode([enc[j - 1]])[-1].isspace()
        if j + 1 < len(enc) and enc[j + 1] not in tag_set:
            assert not raw.decode([enc[j + 1]])[0].isspace()
    # structural tags are adjacent: <Path> right after </Goal> and after the previous </Path>
    for a, b in [("</Goal>", "<Path>"), ("</Path>", "<Path>"), ("</Path>", "<Conclusion>")]:
        assert any(x == ids[a] and y == ids[b] for x, y in zip(enc, enc[1:])), (a, b)
    # decoding loses the newlines around tags; canonical puts them back
    decoded = tok.decode(enc)
    assert "\n<" not in decoded and ">\n" not in decoded
    assert canonical(decoded) == STRUCTURED


def test_tokenizer_json_gets_the_same_tags(tok_dir, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(tok_dir / "tokenizer.json", model_dir / "tokenizer.json")
    shutil.copy(tok_dir / "tokenizer_config.json", model_dir / "tokenizer_config.json")
    ids = add_tags_to_tokenizer_file(model_dir)
    assert add_tags_to_tokenizer_file(model_dir / "tokenizer.json") == ids  # idempotent
    hf = hf_tokenizer(tok_dir)
    assert add_tags(hf) == ids
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert raw.get_vocab_size(with_added_tokens=True) == 312
    assert raw.encode(STRUCTURED).ids == hf.encode(STRUCTURED, add_special_tokens=False)
    braid_tok = BraidTokenizer(model_dir)
    assert tag_ids(braid_tok) == tag_ids(raw) == tag_ids(hf) == ids
    assert canonical(braid_tok.decode(raw.encode(STRUCTURED).ids, special=True)) == STRUCTURED


def test_missing_tags_are_listed(tok_dir):
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    with pytest.raises(InvalidRequestError, match="lacks the Multiverse tags <Think> </Think>"):
        tag_ids(raw)
    raw.add_special_tokens(["<Path>"])
    with pytest.raises(InvalidRequestError) as e:
        tag_ids(raw)
    assert "<Path> " not in str(e.value) and "</Path>" in str(e.value)
    path_id = raw.token_to_id("<Path>")
    assert add_tags_to_tokenizer(raw)["<Path>"] == path_id  # kept as it was


def test_bad_arguments(tmp_path):
    with pytest.raises(InvalidRequestError, match="transformers tokenizer"):
        add_tags(object())
    with pytest.raises(InvalidRequestError, match="cannot read tag ids"):
        tag_ids(object())
    with pytest.raises(InvalidRequestError, match="not found"):
        add_tags_to_tokenizer_file(tmp_path)


def test_a_plain_decode_keeps_the_tags_and_drops_eos(tok_dir):
    """`ar` on a Multiverse model shows its structure: tags are text, eos is not (as the
    tokenizer's own decode with special tokens shows, then drops, both)."""
    add_tags_to_tokenizer_file(tok_dir)
    braid_tok = BraidTokenizer(tok_dir)
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ids = raw.encode(STRUCTURED).ids + [raw.token_to_id("<|endoftext|>")]
    plain = braid_tok.decode(ids)
    assert canonical(plain) == STRUCTURED and "<|endoftext|>" not in plain
    assert all(tag in plain for tag in TAGS)
    assert "<|endoftext|>" in braid_tok.decode(ids, special=True)
    assert "<Path>" not in raw.decode(ids, skip_special_tokens=True)  # what braid used to show
