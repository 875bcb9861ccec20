"""Multiverse: tags, the text grammar of structured outputs, and the training-time attention.

The pieces here are model-independent; the engine (`method="multiverse"`) builds on them.

- `braid.multiverse.tags`: the twelve tags, adding them to tokenizers and models, tag ids.
- `braid.multiverse.grammar`: parse / validate / serialize structured text, `to_sequential`.
- `braid.multiverse.attention`: position ids and the 4-D attention mask for training.
"""

from braid.multiverse.attention import (
    LayoutError,
    multiverse_attention_inputs,
    multiverse_layout,
)
from braid.multiverse.grammar import (
    Block,
    Document,
    GrammarError,
    Outline,
    PathNode,
    Think,
    canonical,
    errors,
    parse,
    serialize,
    to_sequential,
)
from braid.multiverse.tags import (
    PARALLEL_SENTENCE,
    TAGS,
    add_tags,
    add_tags_to_tokenizer,
    add_tags_to_tokenizer_file,
    tag_ids,
    tag_word,
)

__all__ = [
    "PARALLEL_SENTENCE",
    "TAGS",
    "Block",
    "Document",
    "GrammarError",
    "LayoutError",
    "Outline",
    "PathNode",
    "Think",
    "add_tags",
    "add_tags_to_tokenizer",
    "add_tags_to_tokenizer_file",
    "canonical",
    "errors",
    "multiverse_attention_inputs",
    "multiverse_layout",
    "parse",
    "serialize",
    "tag_ids",
    "tag_word",
    "to_sequential",
]
