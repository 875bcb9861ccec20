"""Byte-level BPE tokenizer training (the `tokenizers` library), saved in Hugging Face format.

The saved directory holds ``tokenizer.json`` and ``tokenizer_config.json``
(``tokenizer_class: PreTrainedTokenizerFast``), so ``tokenizers.Tokenizer.from_file`` and
``transformers.AutoTokenizer.from_pretrained`` both load it. ``<|endoftext|>`` is the only special
token: eos, and the separator between documents (no bos is prepended). Later stages (Multiverse
tags) add their own special tokens and resize the embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from braid.training.corpus import EOS_TOKEN

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def train_tokenizer(
    docs: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE with ``vocab_size`` entries (special tokens included)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk>
        show_progress=False,
    )

    def batches() -> Iterator[list[str]]:
        batch: list[str] = []
        for d in docs:
            batch.append(d)
            if len(batch) == 256:
                yield batch
                batch = []
        if batch:
            yield batch

    tok.train_from_iterator(batches(), trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path, model_max_length: int = 512) -> None:
    """Write ``tokenizer.json`` and a ``tokenizer_config.json`` that transformers understands."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    eos_id = tok.token_to_id(EOS_TOKEN)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TOKEN,
        "bos_token": None,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": {
            str(eos_id): {
                "content": EOS_TOKEN,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
                "special": True,
            }
        },
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_tokenizer(path: Path) -> Tokenizer:
    """Load ``tokenizer.json`` from a directory (or the file itself)."""
    path = Path(path)
    return Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))


def encode_docs(tok: Tokenizer, docs: Sequence[str], batch: int = 512) -> np.ndarray:
    """Token ids of all documents, each followed by the eos id, as one flat array.

    uint16 when the vocabulary fits (halves the memory of the cached token stream).
    """
    eos = tok.token_to_id(EOS_TOKEN)
    dtype = np.uint16 if tok.get_vocab_size() <= 65536 else np.int32
    parts: list[np.ndarray] = []
    for i in range(0, len(docs), batch):
        for enc in tok.encode_batch(list(docs[i : i + batch]), add_special_tokens=False):
            parts.append(np.asarray(enc.ids + [eos], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
