"""`--device` / `LLM(device=)`: which devices are accepted, the errors for the rest, and what the
loader builds off the CPU (checked on `meta`, which stands for any non-CPU device here)."""

import subprocess
import sys

import pytest
import torch

from braid import LLM
from braid.device import HOST, resolve_device
from braid.errors import InvalidRequestError
from braid.model.config import ModelConfig
from braid.model.linear import Linear
from braid.model.loader import build_transformer, load_state_dict
from braid.model.quant import QuantLinear, QuantWeight

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this check needs no CUDA device")


@no_cuda
def test_auto_is_the_cpu_without_cuda():
    assert resolve_device(None) == resolve_device("auto") == resolve_device("cpu") == HOST


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_an_absent_gpu_is_refused_with_the_way_out(name):
    with pytest.raises(InvalidRequestError, match=f"--device {name}: no CUDA device is visible "):
        resolve_device(name)


@pytest.mark.parametrize("name", ["tpu", "gpu", "meta"])
def test_unknown_devices_list_the_choices(name):
    with pytest.raises(InvalidRequestError, match="auto, cpu, cuda, cuda:N, mps"):
        resolve_device(name)


def test_llm_runs_on_the_device_it_names(llama_dir):
    llm = LLM(llama_dir, dtype="fp32", device="cpu")
    assert llm.device == HOST and llm.model.device == HOST
    assert llm.model.new_pool(1).k[0].device == HOST


@no_cuda
def test_the_cli_says_why_cuda_is_refused(llama_dir):
    r = subprocess.run(
        [sys.executable, "-m", "braid.cli", "generate", "--model", str(llama_dir)]
        + ["--device", "cuda", "--prompt", "hi", "--max-tokens", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0
    assert "--device cuda: no CUDA device is visible to torch; use --device cpu" in r.stderr


@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_off_the_cpu_quantized_weights_load_dense_on_the_device(llama_dir, quant):
    config = ModelConfig.from_file(llama_dir / "config.json")
    off = build_transformer(config, load_state_dict(llama_dir), torch.bfloat16, quant, "meta")
    on = build_transformer(config, load_state_dict(llama_dir), torch.bfloat16, quant)
    for placed, kept in zip(off.layers, on.layers, strict=True):
        for name in ("qkv", "o", "gate_up", "down"):
            lin = getattr(placed, name)
            assert type(lin) is Linear and lin.packed is None  # plain matmul, no oneDNN
            assert lin.weight.device.type == "meta" and lin.weight.dtype == torch.bfloat16
            assert lin.weight.shape == getattr(kept, name).weight.shape  # the CPU's QuantWeight
            assert isinstance(getattr(kept, name), QuantLinear)
    assert off.lm_head.quant is None and off.lm_head.fast.weight.device.type == "meta"
    assert isinstance(on.lm_head.quant, QuantWeight)
    assert off.embed.device.type == "meta" and off.norm.device.type == "meta"
    assert off.rope.cos.device.type == "meta" and off.new_pool(1).k[0].device.type == "meta"
