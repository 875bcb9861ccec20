"""braid's own decoder for the Llama family (Llama, Mistral, Qwen2 qkv bias, Qwen3 q/k norm).

Functional on purpose: per layer a handful of fused ops (one qkv matmul, one gate/up matmul) over
the flattened new tokens of every request, attention over each request's token-graph cache.
The final norm runs in fp32 and the logits come out in fp32 (`LogitHead`), because bf16 logits
tie often enough to change greedy outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from braid.cache import KVPool
from braid.model.batch import ForwardBatch
from braid.model.config import ModelConfig
from braid.model.head import LogitHead
from braid.model.linear import Linear
from braid.model.quant import QuantWeight
from braid.model.rope import RopeTable, apply_rope


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: Linear  # [q + 2 kv, hidden], with the qkv bias where the architecture has one
    # (any of the four linears may be a QuantLinear or a Stacked: model/quant.py, linear.py)
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear  # [2 ffn, hidden]
    down: Linear


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with the statistics in fp32 and the product in the weight dtype, as in HF Llama."""
    # torch's kernel keeps the statistics in fp32 and rounds the normalised value to x's dtype,
    # which is HF's x.float() ... .to(dtype) bit for bit, without the two conversions per call
    if x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    return weight * torch.rms_norm(x, weight.shape, None, eps)


class Transformer:
    """Weights plus a forward pass over a `ForwardBatch`; knows nothing of decoding methods."""

    def __init__(
        self,
        config: ModelConfig,
        embed: torch.Tensor | QuantWeight,
        layers: list[LayerWeights],
        norm: torch.Tensor,
        lm_head: torch.Tensor | QuantWeight,
        dtype: torch.dtype,
    ):
        self.config = config
        self.embed = embed
        self.layers = layers
        self.norm = norm.float()
        self.lm_head = LogitHead(lm_head, dtype)
        self.dtype = dtype
        self.device = norm.device  # the loader puts every weight on one device
        self.rope = RopeTable(config.rope, config.head_dim, dtype, device=self.device)
        self.windows = tuple(config.sliding_windows) or (None,) * config.num_layers

    def new_pool(self, max_slots: int, max_tokens: int | None = None) -> KVPool:
        c = self.config
        limit = max_tokens or c.max_position_embeddings
        shape = (c.num_layers, c.num_kv_heads, c.head_dim)
        return KVPool(*shape, self.dtype, max_slots, limit, device=self.device)

    def weight_bytes(self) -> int:
        """Bytes of weights read per pass (embedding rows are gathered, not read whole)."""
        total = self.norm.numel() * 4 + self.lm_head.nbytes
        for w in self.layers:
            for t in vars(w).values():
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
                elif t is not None:  # Linear, QuantLinear, Stacked
                    total += t.nbytes
        return total

    @torch.inference_mode()
    def forward(
        self,
        batch: ForwardBatch,
        logit_rows: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (fp32) for `logit_rows` of the flat new tokens (all rows when None).

        With `return_hidden`, also the final-normed hidden states of those rows (fp32).
        """
        c = self.config
        eps = c.rms_norm_eps
        x = self._embed(batch.token_ids)
        cos, sin = self.rope.lookup(batch.positions, batch.max_position)
        masks = {
            window: None if m is None else self._fold_mask(m, batch)
            for window, m in batch.masks.items()
        }
        # a decoding step pays for every op 30 times over: the loop body is kept to the ops
        # the layer needs (each small op costs a few microseconds of dispatch on a CPU)
        for i, w in enumerate(self.layers):
            x = x + self._attention(i, w, rms_norm(x, w.input_norm, eps), cos, sin, masks, batch)
            gate, up = w.gate_up(rms_norm(x, w.post_norm, eps)).chunk(2, dim=-1)
            x = x + w.down(F.silu(gate) * up)
        if logit_rows is not None:
            x = x[logit_rows]
        xf = x.float()
        hidden = self.norm * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps))
        logits = self.lm_head(hidden)
        return logits, (hidden if return_hidden else None)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.embed, QuantWeight):  # a GGUF's quantized table: gather, then expand
            return self.embed.rows(ids).to(self.dtype)
        return self.embed[ids]

    def _fold_mask(self, mask: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """[B, 1, Q, T] -> [B, 1, groups * Q, T], matching the GQA query folding below."""
        g = self.config.num_heads // self.config.num_kv_heads
        if g == 1:
            return mask
        b, _, q, t = mask.shape
        return mask.expand(b, g, q, t).reshape(b, 1, g * q, t)

    def _attention(
        self,
        index: int,
        w: LayerWeights,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        masks: dict[int | None, torch.Tensor | None],
        batch: ForwardBatch,
    ) -> torch.Tensor:
        c = self.config
        n, hq, hkv, dim = h.shape[0], c.num_heads, c.num_kv_heads, c.head_dim
        qk, v = w.qkv(h).view(n, hq + 2 * hkv, dim).split_with_sizes([hq + hkv, hkv], 1)
        if w.q_norm is None:  # queries and keys rotate together: one set of kernels
            q, k = apply_rope(qk, cos, sin).split_with_sizes([hq, hkv], 1)
        else:
            q, k = qk.split_with_sizes([hq, hkv], 1)
            q = apply_rope(rms_norm(q, w.q_norm, c.rms_norm_eps), cos, sin)
            k = apply_rope(rms_norm(k, w.k_norm, c.rms_norm_eps), cos, sin)

        # write the new keys/values first, so each query sees itself through the cache
        pool = batch.pool
        kc, vc = pool.k[index], pool.v[index]
        kc[batch.slots, :, batch.rows] = k
        vc[batch.slots, :, batch.rows] = v
        keys = kc[batch.batch_slots, :, : batch.keys]
        values = vc[batch.batch_slots, :, : batch.keys]

        # fold each kv head's query group into the query axis (GQA), queries padded to [B, Q]
        b, qn, g = batch.num_requests, batch.max_new, hq // hkv
        if qn == 1:  # one query per request: the fold is a view
            q = q.view(b, hkv, g, dim)
        else:
            if batch.pad_index is not None:
                padded = q.new_zeros((b * qn, hq, dim))
                padded[batch.pad_index] = q
                q = padded
            q = q.view(b, qn, hkv, g, dim).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * qn, dim)
        mask = masks[self.windows[index]]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        if qn == 1:
            return w.o(out.reshape(b, hq * dim))
        out = out.view(b, hkv, g, qn, dim).permute(0, 3, 1, 2, 4).reshape(b * qn, hq * dim)
        if batch.pad_index is not None:
            out = out[batch.pad_index]
        return w.o(out)
