"""The logit head: fast matmul in the model dtype plus exact fp32 recomputation near the top."""

import pytest
import torch

from braid.model.head import LogitHead


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_argmax_and_top_logits_equal_the_fp32_head(dtype):
    gen = torch.Generator().manual_seed(0)
    vocab, d = 5000, 96
    weight = (torch.randn(vocab, d, generator=gen) * 0.05).to(dtype)
    # near-ties by construction: duplicated rows nudged by less than a bf16 ulp of the logit
    weight[1] = weight[0]
    weight[2] = (weight[0].float() * (1 + 2**-12)).to(dtype)
    head = LogitHead(weight, dtype)
    hidden = torch.randn(64, d, generator=gen)
    hidden[:8] = weight[0].float() * 40  # rows whose best tokens are 0, 1, 2 (near-tied)
    ours = head(hidden)
    ref = hidden @ weight.float().t()
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    # the best logit is fp32-exact, and so are near-ties of it (tokens 0-2 in the first rows)
    top = ref.argmax(-1, keepdim=True)
    assert torch.allclose(ours.gather(1, top), ref.gather(1, top), rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours[:8, :3], ref[:8, :3], rtol=1e-5, atol=1e-5)
    # the tail stays within the stated bound of fp32
    bound = head.eps * hidden.norm(dim=1, keepdim=True) * weight.float().norm(dim=1)
    assert bool(((ours - ref).abs() <= bound + 1e-5).all())


def test_fp32_models_use_the_plain_fp32_product():
    weight = torch.randn(300, 32)
    hidden = torch.randn(5, 32)
    assert torch.allclose(LogitHead(weight, torch.float32)(hidden), hidden @ weight.t(), atol=1e-5)
