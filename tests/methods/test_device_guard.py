"""Every tensor of a generation step lives on the engine's device, for every method.

The CI machine has no GPU, so a tensor created without `device=` would land on the CPU, the
engine's device, and pass unseen. The guard therefore runs each generation with `meta` as
torch's default device: a factory call that names no device makes a meta tensor, and a
`TorchFunctionMode` records every result that is on neither the engine's device nor the host
(where the token graphs' bookkeeping lives by design, braid/device.py). On a GPU the same call
would have put the tensor on the CPU.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from helpers import noisy_copy
from test_multiverse import Doc, flat
from torch.overrides import TorchFunctionMode

from braid import LLM, MethodConfig, SamplingParams
from braid.device import HOST
from braid.engine.engine import Engine
from braid.heads import CPHeads, HeadsConfig, save_heads

METHODS = [
    "ar",
    "spec",
    "block",
    "mtad",
    "mtad-tree",
    "heads",
    "heads-block",
    "heads-tree",
    "ngram",
    "ngram-block",
]


class DeviceGuard(TorchFunctionMode):
    """Records each torch call whose tensor result is on neither `device` nor the host; with
    `meta` as the default device (`guarded`), that is every factory call naming no device."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = torch.device(device)
        self.calls = 0
        self.strays: list[str] = []

    def _allowed(self, d: torch.device) -> bool:
        if d == HOST:
            return True
        return d.type == self.device.type and self.device.index in (None, d.index)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        results = out if isinstance(out, (tuple, list)) else (out,)
        for t in results:
            if isinstance(t, torch.Tensor) and not self._allowed(t.device):
                self.strays.append(f"{getattr(func, '__name__', func)} -> {t.device} at {_site()}")
        return out


def _site() -> str:
    """The innermost frame of braid or of a test, the guard's own left out: where the stray
    tensor was made."""
    frames = [
        f
        for f in traceback.extract_stack()
        if ("/braid/" in f.filename or "/tests/" in f.filename)
        and f.name not in ("__torch_function__", "_site")
    ]
    f = frames[-1]
    return f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.line}"


def guarded_run(llm: LLM, run) -> DeviceGuard:
    """`run()` under the guard; its strays are checked before any error the run raised, since a
    meta tensor usually fails later, somewhere less telling."""
    guard = DeviceGuard(llm.device)
    error = None
    with torch.device("meta"), guard:
        try:
            run()
        except Exception as e:  # reported after the strays
            error = e
    assert not guard.strays, "tensors off the engine's device:\n" + "\n".join(
        dict.fromkeys(guard.strays)
    )
    if error is not None:
        raise error
    return guard


@pytest.fixture(scope="module")
def llm(llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    draft = noisy_copy(llama_dir, root / "draft", scale=0.02, seed=1)
    c = LLM(llama_dir, dtype="fp32").model.config
    config = HeadsConfig(n=3, rank=2, hidden_size=c.hidden_size, vocab_size=c.vocab_size)
    config.tree = [[0], [0, 0], [1]]
    heads = save_heads(CPHeads(config), root / "heads", dtype=torch.float32)
    return LLM(llama_dir, dtype="fp32", draft=draft, heads=heads, max_batch=4)


# greedy with logprobs, and sampled with filters, penalties and two samples sharing a prefill
PARAMS = [
    SamplingParams(max_tokens=6, temperature=0, logprobs=2, ignore_eos=True),
    SamplingParams(
        max_tokens=6, top_k=8, seed=1, repetition_penalty=1.2, n=2, min_tokens=2, ignore_eos=True
    ),
]
PROMPTS = ["The quick brown fox jumps over the quick brown", "def main(): return"]


@pytest.mark.parametrize("method", METHODS)
def test_every_tensor_of_a_step_is_on_the_engine_device(llm, method):
    outs = []
    guard = guarded_run(llm, lambda: outs.extend(llm.generate(PROMPTS, PARAMS, method=method)))
    assert guard.calls > 100  # the guard really watched the step
    assert [len(o.token_ids) for o in outs] == [6, 6]
    assert len(outs[0].outputs[0].logprobs) == 6 and len(outs[1].outputs) == 2


def test_multiverse_steps_are_on_the_engine_device(mv_llm):
    doc = Doc(mv_llm)
    template = flat(doc)
    params = SamplingParams(max_tokens=200, seed=1, logits_processors=[doc.processor(template, {})])
    outs = []
    prompt = mv_llm.tokenizer.encode("The quick brown fox")
    guarded_run(mv_llm, lambda: outs.extend(mv_llm.generate([prompt], params, "multiverse")))
    assert outs[0].stats.paths > 1 and outs[0].stats.fallbacks == 0  # it really forked


def test_the_guard_catches_a_tensor_made_without_a_device(llm, monkeypatch):
    guard = DeviceGuard(llm.device)
    with torch.device("meta"), guard:
        torch.zeros(2, device=llm.device)
        torch.arange(3, device=HOST)
    assert guard.calls == 2 and not guard.strays
    with torch.device("meta"), guard:
        torch.tensor([1, 2])
    (stray,) = guard.strays
    assert stray.startswith("tensor -> meta at test_device_guard.py:")
    assert stray.endswith(" torch.tensor([1, 2])")

    # a step that builds its logit rows without a device, as braid did before #18
    forward = Engine.forward

    def careless(self, appends, logit_rows=None, return_hidden=False):
        rows = None if logit_rows is None else torch.tensor(logit_rows.tolist())
        return forward(self, appends, rows, return_hidden)

    monkeypatch.setattr(Engine, "forward", careless)
    with pytest.raises(AssertionError, match=r"tensor -> meta at test_device_guard.py"):
        guarded_run(llm, lambda: llm.generate(PROMPTS, PARAMS, method=MethodConfig("ar")))
