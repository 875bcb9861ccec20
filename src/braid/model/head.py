"""The output projection: fp32 logits at the cost of reading the head in the model dtype.

bf16 logits tie often (8 bits of mantissa), and ties flip greedy outputs between a pass over k
tokens and k passes over one. A plain fp32 head avoids that but reads twice the bytes, and on a
small model with a 32k vocabulary the head is the largest matrix of the step.

So for bf16/fp16 models: one fast matmul in the model dtype, then every token whose fast logit
could be within the rounding error of the best one is recomputed exactly in fp32. The error of
the fast logit of token v is at most eps * |w_v| * |h| (input rounding plus output rounding,
fp32 accumulation), so tokens outside that band can be neither the argmax nor tied with it. The
argmax is therefore the fp32 argmax, and the logits near the top are fp32-exact; the tail keeps
the fast values, within eps * |w_v| * |h| of fp32.

A quantized head (model/quant.py) works the same way: its fast logits come from the int kernel,
whose error adds the rounding of the dequantized weights inside the kernel and of each part's
output to the bound, and the recomputation uses the exact rows of the quantized weight
(`QuantWeight.rows`), so the top logits are those of the quantized model in fp32.

A draft model sets `refine = False`: any draft distribution keeps the acceptance rules exact,
and greedy outputs depend on the target's argmax alone, so drafts skip the recomputation.
"""

from __future__ import annotations

import torch

from braid.model.linear import Linear
from braid.model.quant import KERNEL_DTYPE, QuantLinear, QuantWeight

# unit roundoff of the fast dtype, doubled (input and output rounding), with a little slack
_EPS = {torch.bfloat16: 2.0**-7 * 1.05, torch.float16: 2.0**-10 * 1.05}
_BF16_UNIT = 2.0**-8 * 1.05  # one bf16 rounding, with the same slack


class LogitHead:
    def __init__(self, weight: torch.Tensor | QuantWeight, dtype: torch.dtype):
        self.vocab_size = weight.shape[0]
        self.refine = True
        if isinstance(weight, QuantWeight):
            self._init_quantized(weight)
            return
        self.quant = None
        self.eps = _EPS.get(dtype)
        if self.eps is None:  # fp32 model: the plain product is already exact
            self.exact = Linear(weight.float().contiguous())
            self.nbytes = self.exact.nbytes
            return
        self.dtype = dtype
        self.rows = weight.to(dtype).contiguous()  # gathered for the exact recomputation
        self.fast = Linear(self.rows)
        self.row_norms = weight.float().norm(dim=1)
        self.nbytes = self.fast.nbytes

    def _init_quantized(self, weight: QuantWeight) -> None:
        self.quant = weight
        self.dtype = KERNEL_DTYPE
        self.fast = QuantLinear(weight)
        self.nbytes = self.fast.nbytes
        self.eps = _BF16_UNIT
        # roundings of |logit| size: the input and the final sum (|w| each), and per part the
        # dequantized weight inside the kernel and its bf16 output (|w_p| each)
        norms, part_norms = weight.row_norms()
        self.row_norms = 2 * norms + 2 * part_norms.sum(0)

    def _rows(self, cols: torch.Tensor) -> torch.Tensor:
        if self.quant is not None:
            return self.quant.rows(cols)
        return self.rows[cols].float()

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 hidden states [M, d] -> fp32 logits [M, V]."""
        if self.eps is None:
            return self.exact(hidden)
        logits = self.fast(hidden.to(self.dtype)).float()
        if not self.refine:
            return logits
        bound = (self.eps * hidden.norm(dim=1, keepdim=True)) * self.row_norms
        floor = (logits - bound).max(dim=1, keepdim=True).values
        rows, cols = ((logits + bound) >= floor).nonzero(as_tuple=True)
        exact = torch.einsum("nd,nd->n", self._rows(cols), hidden[rows])
        logits[rows, cols] = exact
        return logits

    def exact_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Every logit in fp32 (for tests and references; reads the head in fp32)."""
        if self.quant is not None:
            return hidden @ self.quant.dequantize().t()
        if self.eps is None:
            return self.exact(hidden)
        return hidden @ self.rows.float().t()
