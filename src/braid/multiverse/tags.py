"""The twelve Multiverse tags and how braid adds them to tokenizers and models.

Public API:

- `TAGS`: the tag strings in DESIGN order, and one constant per tag (`THINK` ... `CONCLUSION_END`).
- `PARALLEL_SENTENCE`: "Let's think in parallel.", which usually precedes `<Parallel>`.
- `tag_word(tag) -> str`: the tag's bare word ("Outline" for `<Outline>` and `</Outline>`).
- `added_token(tag) -> tokenizers.AddedToken`: the tag as braid adds it (see the convention below).
- `add_tags(tokenizer, model=None) -> dict[str, int]`: add the tags to a `transformers` fast
  tokenizer and, optionally, a `transformers` PreTrainedModel (resize embeddings, initialise the
  new rows). Idempotent. Returns tag -> id.
- `add_tags_to_tokenizer(tok: tokenizers.Tokenizer) -> dict[str, int]`: the same for a plain
  `tokenizers.Tokenizer`, in place (no model).
- `add_tags_to_tokenizer_file(path) -> dict[str, int]`: the same for a `tokenizer.json` file (or
  a model directory holding one), rewritten in place, so a model directory can be prepared for
  the engine, which loads `tokenizer.json` only.
- `tag_ids(tokenizer) -> dict[str, int]`: tag -> id for a `transformers` tokenizer, a
  `tokenizers.Tokenizer` or braid's own tokenizer; raises `InvalidRequestError` naming the tags
  the vocabulary lacks.

Convention: every tag is a special token that absorbs the whitespace around it
(`AddedToken(tag, special=True, normalized=False, lstrip=True, rstrip=True)`). So
"text\\n<Path>\\n1: x" encodes as [text, <Path>, "1", ":", " x"]: no newline token ever sits
between two structural tags, sibling path spans are contiguous and `<Path>` sits right after
`</Goal>` or the previous `</Path>`. Decoding therefore loses the newlines around tags; the
canonical text (`braid.multiverse.grammar.canonical`) puts every tag back on its own line, so
decode + canonical round-trips a canonical text. The released Multiverse-32B tokenizer adds
the tags as plain special tokens instead (whitespace stays text); the engine runs both layouts
(see `braid.methods.multiverse`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer

from braid.errors import InvalidRequestError

THINK, THINK_END = "<Think>", "</Think>"
PARALLEL, PARALLEL_END = "<Parallel>", "</Parallel>"
GOAL, GOAL_END = "<Goal>", "</Goal>"
OUTLINE, OUTLINE_END = "<Outline>", "</Outline>"
PATH, PATH_END = "<Path>", "</Path>"
CONCLUSION, CONCLUSION_END = "<Conclusion>", "</Conclusion>"

TAGS: tuple[str, ...] = (
    THINK, THINK_END, PARALLEL, PARALLEL_END, GOAL, GOAL_END,
    OUTLINE, OUTLINE_END, PATH, PATH_END, CONCLUSION, CONCLUSION_END,
)  # fmt: skip

PARALLEL_SENTENCE = "Let's think in parallel."


def tag_word(tag: str) -> str:
    """The bare word of a tag: "Outline" for both `<Outline>` and `</Outline>`."""
    if tag not in TAGS:
        raise InvalidRequestError(f"{tag!r} is not a Multiverse tag; the tags are {' '.join(TAGS)}")
    return tag.strip("</>")


def added_token(tag: str) -> AddedToken:
    """The tag as a special token that swallows the whitespace on both sides."""
    return AddedToken(tag, special=True, normalized=False, lstrip=True, rstrip=True)


def _lookup(tokenizer: Any) -> Any:
    """A function tag -> id or None, for the three tokenizer kinds braid meets."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.token_to_id
    if hasattr(tokenizer, "token_id"):  # braid.model.tokenizer.Tokenizer
        return tokenizer.token_id
    if hasattr(tokenizer, "get_vocab"):  # transformers tokenizers
        vocab = tokenizer.get_vocab()
        return vocab.get
    raise InvalidRequestError(
        f"cannot read tag ids from a {type(tokenizer).__name__}; pass a transformers tokenizer, "
        "a tokenizers.Tokenizer or a braid tokenizer"
    )


def tag_ids(tokenizer: Any) -> dict[str, int]:
    """Tag -> token id; raises InvalidRequestError listing the tags the vocabulary lacks."""
    lookup = _lookup(tokenizer)
    ids = {tag: lookup(tag) for tag in TAGS}
    missing = [tag for tag, i in ids.items() if i is None]
    if missing:
        raise InvalidRequestError(
            f"the tokenizer lacks the Multiverse tags {' '.join(missing)}; add them with "
            "braid.multiverse.tags.add_tags (or add_tags_to_tokenizer_file for tokenizer.json)"
        )
    return ids


def add_tags_to_tokenizer(tok: Tokenizer) -> dict[str, int]:
    """Add the missing tags to a `tokenizers.Tokenizer` in place; returns tag -> id."""
    lookup = _lookup(tok)
    tok.add_special_tokens([added_token(t) for t in TAGS if lookup(t) is None])
    return tag_ids(tok)


def add_tags_to_tokenizer_file(path: str | Path) -> dict[str, int]:
    """Add the tags to `path` (a tokenizer.json or a directory holding one), rewritten in place.

    The model's embeddings are not touched: resize them yourself (or use `add_tags` with
    `transformers`) when the new ids exceed the embedding matrix.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise InvalidRequestError(f"{path}: not found; pass a tokenizer.json or its directory")
    tok = Tokenizer.from_file(str(path))
    ids = add_tags_to_tokenizer(tok)
    tok.save(str(path))
    return ids


def add_tags(tokenizer: Any, model: Any = None) -> dict[str, int]:
    """Add the tags to a `transformers` fast tokenizer and optionally its model.

    Tags already in the vocabulary are kept as they are (calling this twice changes nothing).
    With `model`, the input embeddings grow to cover the new ids and each new row becomes the
    mean of the embedding rows of the tag's bare word (encoded without special tokens); the LM
    head rows likewise when the head is not tied to the embeddings.
    """
    if not hasattr(tokenizer, "add_tokens") or not hasattr(tokenizer, "get_vocab"):
        raise InvalidRequestError(
            f"add_tags needs a transformers tokenizer, got {type(tokenizer).__name__}; use "
            "add_tags_to_tokenizer for a tokenizers.Tokenizer"
        )
    before = tokenizer.get_vocab()
    new = [t for t in TAGS if t not in before]
    tokenizer.add_tokens([added_token(t) for t in new], special_tokens=True)
    ids = tag_ids(tokenizer)
    if model is not None:
        _init_embeddings(tokenizer, model, {t: ids[t] for t in new})
    return ids


def _init_embeddings(tokenizer: Any, model: Any, new: dict[str, int]) -> None:
    import torch

    needed = max(len(tokenizer), max(new.values(), default=-1) + 1)
    # never shrink: checkpoints often pad the embedding matrix beyond the vocabulary
    if model.get_input_embeddings().weight.shape[0] < needed:
        model.resize_token_embeddings(needed)
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    head = None if out is None or out.weight is inp else out.weight
    with torch.no_grad():
        for tag, i in new.items():
            word = tokenizer.encode(tag_word(tag), add_special_tokens=False)
            if not word:
                raise InvalidRequestError(f"the tokenizer encodes {tag_word(tag)!r} as nothing")
            inp[i] = inp[word].mean(dim=0)
            if head is not None:
                head[i] = head[word].mean(dim=0)
