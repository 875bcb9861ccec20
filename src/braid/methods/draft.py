"""What the draft-model methods share: the draft's own token graphs and its distributions,
and the loading of a draft that borrows its target's embeddings.

A *shared-embedding* draft (the shipped SmolLM2 draft, `braid train-draft`) stores only its
layers and final norm: its token embeddings are the target's, given to it at load time, and
its output layer may be a *shortlist*, the embedding rows of the ids its training answers used
most (FR-Spec). Its logits over the other ids are -inf, so their draft probability is exactly 0:
they are never drafted, and the exact rules stay exact (the target's residual covers them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from braid.cache import KVPool, TokenGraph
from braid.device import HOST
from braid.errors import ModelLoadError
from braid.model.head import LogitHead
from braid.model.loader import SHARED_EMBEDDINGS_KEY, load_model
from braid.model.quant import QuantWeight
from braid.model.transformer import Transformer
from braid.sampling import process_logits

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request


class Drafter:
    """A draft model with one token graph per request, freed when the request ends."""

    def __init__(self, model: Transformer):
        self.model = model
        model.lm_head.refine = False  # drafts need no fp32-exact logits near the top
        self.pool: KVPool | None = None
        self.graphs: dict[int, TokenGraph] = {}

    def graph(self, engine: Engine, req: Request) -> TokenGraph:
        if self.pool is None:
            limit = min(self.model.config.max_position_embeddings, engine.max_context)
            self.pool = self.model.new_pool(engine.max_batch, limit)
        if req.id not in self.graphs:
            self.graphs[req.id] = self.pool.new_graph()
        return self.graphs[req.id]

    def release(self, req: Request) -> None:
        graph = self.graphs.pop(req.id, None)
        if graph is not None:
            graph.free()

    def budget(
        self, engine: Engine, req: Request, gamma: int, draft_width: int = 1, target_width: int = 1
    ) -> int:
        """Draft length for this step: what the request may still emit and both caches hold.

        The verify pass holds the context plus `target_width` rows per drafted token (a beam
        tree holds every node); the draft holds the context plus `draft_width` rows for each
        draft pass after the first (the last drafted tokens are never fed back).
        """
        room_target = (engine.max_context - req.num_tokens) // target_width
        room_draft = (self.pool.max_capacity - req.num_tokens) // draft_width + 1
        return max(0, min(gamma, req.remaining - 1, room_target, room_draft))

    def probs(self, logits: torch.Tensor, reqs: list[Request], vocab: int) -> torch.Tensor:
        """Processed draft distributions, laid over the target's vocabulary."""
        if logits.shape[1] > vocab:  # ids the target cannot emit must not be drafted
            logits = logits[:, :vocab]
        probs = process_logits(logits, [r.params for r in reqs])
        if probs.shape[1] < vocab:
            probs = torch.nn.functional.pad(probs, (0, vocab - probs.shape[1]))
        return probs


SHARED_KEY = SHARED_EMBEDDINGS_KEY  # config.json key of a draft that borrows embeddings
SHIPPED_DRAFT = "smollm2-draft"  # under assets/models: the default model's draft


class ShortlistHead:
    """The output layer over `ids` only (rows of the shared embedding), laid over the full
    vocabulary: -inf logits elsewhere, so the draft's probability there is exactly 0."""

    def __init__(self, rows: torch.Tensor, ids: torch.Tensor, vocab_size: int, dtype):
        self.head = LogitHead(rows, dtype)
        self.ids = ids.long()
        self.vocab_size = vocab_size
        self.nbytes = self.head.nbytes
        self.refine = False

    @property
    def refine(self) -> bool:
        return self.head.refine

    @refine.setter
    def refine(self, value: bool) -> None:
        self.head.refine = value

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 hidden [M, d] -> fp32 logits [M, V], -inf outside the shortlist."""
        out = hidden.new_full((hidden.shape[0], self.vocab_size), float("-inf"))
        return out.index_copy_(1, self.ids, self.head(hidden))

    def exact_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = hidden.new_full((hidden.shape[0], self.vocab_size), float("-inf"))
        return out.index_copy_(1, self.ids, self.head.exact_logits(hidden))


def vocabulary_fingerprint(id_to_token: dict[int, str]) -> str:
    """sha256 of a tokenizer's id -> token table: a shared-embedding draft fits a target whose
    table hashes the same."""
    text = json.dumps(sorted(id_to_token.items()), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shared_embeddings_spec(draft_dir: Path) -> dict | None:
    """The draft's record of the target it borrows embeddings from, or None (a whole model)."""
    path = Path(draft_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get(SHARED_KEY)
    except (OSError, json.JSONDecodeError):
        return None


def load_shared_draft(
    draft_dir: Path, target: Transformer, target_vocab: dict[int, str], dtype: torch.dtype
) -> Transformer:
    """A shared-embedding draft on `target`'s embeddings; refuses a target it was not made for
    (hidden size, vocabulary size or tokenizer)."""
    draft_dir = Path(draft_dir)
    spec = shared_embeddings_spec(draft_dir) or {}
    c = target.config
    want = (spec.get("hidden_size"), spec.get("vocab_size"))
    fix = "pass a draft made for this model (--draft DIR, LLM(..., draft=DIR))"
    if want != (c.hidden_size, c.vocab_size):
        raise ModelLoadError(
            f"{draft_dir}: this draft borrows the embeddings of {spec.get('target', 'its target')}"
            f" (hidden size {want[0]}, {want[1]} ids); the model has hidden size "
            f"{c.hidden_size} and {c.vocab_size} ids: {fix}"
        )
    if spec.get("vocabulary_sha256") != vocabulary_fingerprint(target_vocab):
        raise ModelLoadError(
            f"{draft_dir}: this draft was made for the tokenizer of "
            f"{spec.get('target', 'another model')}, and this model's differs: {fix}"
        )
    embed = target.embed
    shared = {"embed_tokens.weight": embed}
    draft, _ = load_model(draft_dir, dtype, shared=shared, device=target.device)
    shortlist = spec.get("shortlist")
    if shortlist:
        ids = torch.tensor(json.loads((draft_dir / shortlist).read_text())["ids"], device=HOST)
        if ids.numel() == 0 or int(ids.max()) >= c.vocab_size or int(ids.min()) < 0:
            raise ModelLoadError(f"{draft_dir / shortlist}: ids outside the vocabulary")
        rows = embed.rows(ids) if isinstance(embed, QuantWeight) else embed[ids.to(embed.device)]
        draft.lm_head = ShortlistHead(rows.float(), ids.to(target.device), c.vocab_size, dtype)
    return draft
