"""`heads-tree`: for greedy requests the heads draft a token tree, verified in one pass.

Draft: the heads' tree template (`braid.heads.tree`, fitted at training time) names each node
by the ranks of its tokens; from the hidden state that drew x_{t+1}, a node's children are the
top candidates of the mixture marginal conditioned on x_{t+1} and the node's own path.

Verify: the pending token and every node go in one target pass, each node in a cache branch
off its parent (the token graph, as `mtad-tree`). Then a walk from the root takes the target's
argmax at the current node and descends while it is one of the node's children, so the output
is `ar`'s token for token. The cache keeps the walked path, and the state of its last node
feeds the next draft.

Sampled requests draft the `heads` chain and verify it token-level (exact). A fixed candidate
set would be kept only with the target mass it covers; the token-level rule keeps a drafted
token with probability Σ min(p, q), which measured far better at temperature 1 (1.57 against
1.24 tokens per pass with the bundled heads).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from braid.heads.module import CPHeads
from braid.heads.tree import Path, check_template, default_template, draft_tree
from braid.methods.heads import HeadsSpeculative, _draft_unembed, posteriors
from braid.methods.penalties import penalise_trees
from braid.model.batch import tree_append

if TYPE_CHECKING:
    from braid.engine.engine import Engine
    from braid.engine.request import Request


class HeadsTree:
    name = "heads-tree"

    def __init__(self, heads: CPHeads, nodes: int = 4):
        """`nodes`: drafted tokens per pass, the first of the heads' fitted template (a guessed
        one for heads trained before templates, or past the fitted size)."""
        if not isinstance(nodes, int) or nodes < 1:
            raise ValueError(f"a draft tree needs an integer number of nodes >= 1, got {nodes!r}")
        self.heads = heads.pack()
        c = heads.config
        fitted = [p for p in check_template(c.tree) if len(p) < c.n]
        if len(fitted) < nodes:
            known = set(fitted)
            extra = [p for p in default_template(c.n - 1, 2 * nodes) if p not in known]
            fitted += extra[: nodes - len(fitted)]
        self.template: list[Path] = fitted[:nodes]
        self.hidden: dict[int, torch.Tensor] = {}  # request id -> state that drew its last token
        self.chain = HeadsSpeculative(heads, rule="heads")  # sampled requests
        self.lengths = self.chain.lengths  # the chain step's policy (the tree's size is fixed)

    def release(self, request: Request) -> None:
        self.hidden.pop(request.id, None)
        self.chain.release(request)

    def _template(self, engine: Engine, r: Request) -> list[Path]:
        """The template cut to what the request may emit and its cache may hold."""
        if r.id not in self.hidden:
            return []
        depth = r.remaining - 1
        room = engine.max_context - r.num_tokens
        return [p for p in self.template if len(p) <= depth][: max(0, room)]

    @torch.inference_mode()
    def _draft(self, engine: Engine, requests: list[Request], templates: dict[int, list[Path]]):
        """(tokens, parents) of each request's tree."""
        trees: dict[int, tuple[list[int], list[int]]] = {r.id: ([], []) for r in requests}
        active = [r for r in requests if templates[r.id]]
        if not active:
            return trees
        c = self.heads.config
        hidden = torch.stack([self.hidden[r.id] for r in active])
        stop = 1 + max(max(len(p) for p in templates[r.id]) for r in active)
        unembed = _draft_unembed(engine)
        if c.rank == 1:  # one expert: no posterior, any monotone score ranks the candidates
            scores = self.heads.factor_logits(hidden, unembed, stop, skip_first=True)
            for i, r in enumerate(active):
                trees[r.id] = draft_tree(templates[r.id], scores[i])
            return trees
        states = posteriors(self.heads, hidden, unembed, stop, [r.all_ids[-1] for r in active])
        for r, (post, rows) in zip(active, states):
            trees[r.id] = draft_tree(templates[r.id], rows, post)
        return trees

    def step(self, engine: Engine, requests: list[Request]) -> None:
        # sampled requests, and those that cap their draft length, run the heads' chain step
        tree = [r for r in requests if r.params.greedy and r.params.num_speculative_tokens is None]
        chained = [r for r in requests if r not in tree]
        if chained:
            self.chain.step(engine, chained)
        if tree:
            self._step_tree(engine, tree)

    def _step_tree(self, engine: Engine, requests: list[Request]) -> None:
        templates = {r.id: self._template(engine, r) for r in requests}
        trees = self._draft(engine, requests, templates)

        appends, rows, n, base = [], [], 0, {}
        for r in requests:
            tokens, parents = trees[r.id]
            pending = r.all_ids[r.graph.length :]
            base[r.id] = r.num_tokens
            appends.append(tree_append(r.graph, pending, tokens, parents))
            rows.extend(range(n + len(pending) - 1, n + len(pending) + len(tokens)))
            n += len(pending) + len(tokens)
        logits, hidden, _ = engine.forward(
            appends, torch.tensor(rows, device=engine.device), return_hidden=True
        )
        logits = penalise_trees(logits, requests, [trees[r.id] for r in requests])

        offset = 0
        for r in requests:
            tokens, parents = trees[r.id]
            k = len(tokens)
            walked, nxt = self._walk(tokens, parents, logits[offset : offset + k + 1])
            self.hidden[r.id] = hidden[offset + (walked[-1] + 1 if walked else 0)]
            scoring = [offset] + [offset + 1 + i for i in walked]  # rows that scored the path
            r.accept_verified([tokens[i] for i in walked], nxt, proposed=k, rows=logits[scoring])
            if k:
                r.graph.keep_path(base[r.id], [base[r.id] + i for i in walked])
                r.graph.linearize()
            offset += k + 1

    @staticmethod
    def _walk(tokens: list[int], parents: list[int], logits: torch.Tensor):
        """Node indices walked from the root and the target's argmax after the last of them.

        logits[0] follows the pending token, logits[1 + i] follows node i."""
        children = {(par, tok): i for i, (par, tok) in enumerate(zip(parents, tokens))}
        best = logits.argmax(-1).tolist()
        walked: list[int] = []
        node = -1
        while (child := children.get((node, best[node + 1]))) is not None:
            walked.append(child)
            node = child
        return walked, best[node + 1]
