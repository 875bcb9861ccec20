"""Where the engine runs: `--device {auto,cpu,cuda,cuda:N,mps}` to a checked `torch.device`.

Weights, KV caches, masks, positions, sampling tensors and per-request generators live on that
device. The token graphs' bookkeeping (positions, segments, which segment sees which) stays on
the host on purpose: Python reads it every step to plan appends and forks, and on a GPU each
read would be a device synchronisation; the masks built from it go to the device once per pass.
"""

from __future__ import annotations

import argparse

import torch

from braid.errors import InvalidRequestError

HOST = torch.device("cpu")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None / "auto": CUDA when torch sees a CUDA device, else the CPU; others checked here."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidRequestError(f"device {device!r} is not one of {DEVICE_CHOICES}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidRequestError(
                f"--device {device}: no CUDA device is visible to torch; use --device cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InvalidRequestError(
                f"--device {device}: torch sees {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
            )
        if dev.index is None:  # "cuda" names the current device: say which, as tensors do
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidRequestError(
                f"--device {device}: MPS is not available to this torch; use --device cpu"
            )
    elif dev.type != "cpu":
        raise InvalidRequestError(f"device {device!r} is not one of {DEVICE_CHOICES}")
    return dev


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """`--device` for every command that loads a model."""
    p.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda,cuda:N,mps}",
        help="where the model runs (auto: CUDA when torch sees a GPU, else the CPU; default: "
        "auto); off the CPU quantized weights run dequantized in bf16",
    )
