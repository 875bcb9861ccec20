"""Tokenizer from `tokenizer.json` (the `tokenizers` library: fast import, no transformers)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _Tokenizer

from braid.errors import ModelLoadError
from braid.multiverse.tags import TAGS


class Tokenizer:
    def __init__(self, model_dir: Path):
        path = model_dir / "tokenizer.json"
        if not path.exists():
            raise ModelLoadError(
                f"{path}: not found; braid needs a fast tokenizer (tokenizer.json)"
            )
        try:
            self._tok = _Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a plain Exception
            raise ModelLoadError(f"{path}: cannot be read as a tokenizer ({e})") from None
        self.eos_token_ids: tuple[int, ...] = ()
        self._special_texts: dict[str, str] = {}
        config = model_dir / "tokenizer_config.json"
        if config.exists():
            try:
                cfg = json.loads(config.read_text())
            except json.JSONDecodeError as e:
                raise ModelLoadError(f"{config}: not valid JSON ({e})") from None
            for key in ("bos_token", "eos_token"):
                value = cfg.get(key)
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    self._special_texts[key] = value
            eos = self._special_texts.get("eos_token")
            if eos is not None and self._tok.token_to_id(eos) is not None:
                self.eos_token_ids = (self._tok.token_to_id(eos),)
        # Multiverse tags are special tokens, but they are the text's structure: a plain decode
        # keeps them (so `ar` on a Multiverse model shows its paths) and drops the rest
        tags = {self._tok.token_to_id(t) for t in TAGS} - {None}
        self._hidden = self.special_ids() - tags if tags else None

    def special_ids(self) -> set[int]:
        """Ids of the special added tokens (eos, chat markers): decode drops them."""
        return {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def special_token_texts(self) -> dict[str, str]:
        """bos_token / eos_token as chat templates reference them (tokenizer_config.json)."""
        return dict(self._special_texts)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def id_to_token(self) -> dict[int, str]:
        return {i: t for t, i in self._tok.get_vocab(with_added_tokens=True).items()}

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of `text`; `special=False` adds no bos/eos the tokenizer would add."""
        return self._tok.encode(text, add_special_tokens=special).ids

    def token_id(self, token: str) -> int | None:
        """The id of a token (e.g. a special tag) or None if the vocabulary lacks it."""
        return self._tok.token_to_id(token)

    def decode(self, ids: list[int], special: bool = False) -> str:
        """Text of `ids`; special tokens (eos, chat markers) are dropped unless `special`.
        Multiverse tags are always text."""
        if special or self._hidden is None:
            return self._tok.decode(ids, skip_special_tokens=not special)
        return self._tok.decode(
            [i for i in ids if i not in self._hidden], skip_special_tokens=False
        )
