"""Self-generated training data for heads (``braid train-heads --targets generated``).

Decoding verifies drafts against the model's own continuation of its own output, so that is
the text the heads should learn to predict: prompts are windows of the corpus, the model
continues each one (`transformers` ``generate``, greedy or sampled at a temperature, never
stopping at end-of-sequence, like ``ignore_eos``), and the heads train on the hidden states of
the continuations with the continuation's next n tokens as targets (Medusa-2's
self-distillation). The hidden state that draws the first generated token (the prompt's last)
is included: decoding drafts from it too.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def continue_text(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    batch: int = 32,
    bar=None,
) -> torch.Tensor:
    """prompts [windows, P] -> prompts plus `new_tokens` tokens each [windows, P + G]: greedy
    at temperature 0, else sampled from the plain softmax at `temperature` (no top-k/p)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    sampled = temperature > 0
    config = GenerationConfig(
        do_sample=sampled,
        # neutral values rather than unset ones, which the model's own defaults would fill in
        temperature=temperature if sampled else 1.0,
        top_k=0 if sampled else None,
        top_p=1.0,
        max_new_tokens=new_tokens,
        min_new_tokens=0,
        eos_token_id=None,  # keep going past end-of-sequence, as decoding with ignore_eos
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    out = []
    # `eos_token_id=None` above means "unset": generate would take the model's own and stop
    # there (padding the rest), so the model's default is cleared for the call
    defaults = model.generation_config
    saved = defaults.eos_token_id
    defaults.eos_token_id = None
    try:
        for i in range(0, len(prompts), batch):
            rows = prompts[i : i + batch].to(device)
            mask = torch.ones_like(rows)
            out.append(model.generate(rows, attention_mask=mask, generation_config=config).cpu())
            if bar is not None:
                bar.update(len(rows))
    finally:
        defaults.eos_token_id = saved
    return torch.cat(out)


def generated_rows(
    hidden: torch.Tensor, ids: torch.Tensor, prompt: int, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training rows of generated sequences: hidden [W, L, d], ids [W, L] ->
    (flattened row indices [N], targets [N, n]) for the states t = P - 1 .. L - 1 - n, whose
    next n tokens are all generated."""
    w, length = ids.shape
    t = torch.arange(prompt - 1, length - n)
    if not len(t):
        raise ValueError(f"generated sequences of {length} tokens leave no room for n = {n}")
    offsets = t[:, None] + torch.arange(1, n + 1)[None, :]  # [T, n]
    targets = ids[:, offsets]  # [W, T, n]
    rows = (torch.arange(w)[:, None] * hidden.shape[1] + t[None, :]).flatten()
    return rows, targets.flatten(0, 1)
