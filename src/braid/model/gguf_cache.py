"""GGUF files as model directories: `braid convert`, and a cache that makes the second load fast.

Dequantizing SmolLM2-135M's Q4_1 file takes ~2 s of numpy on this CPU and building its
tokenizer more; a cached directory loads in a fraction of that (benchmarks/results/load_cpu.md).
The cache lives in `$BRAID_CACHE_DIR`, else `$XDG_CACHE_HOME/braid`, else `~/.cache/braid`,
under `gguf/<key>-<dtype>`, or `gguf/<key>-meta` for a model whose weights stay quantized
(everything but the weights: those are read from the GGUF file itself, model/gguf_weights.py).
The key hashes the file's resolved path, size and modification time
and `FORMAT`, so an edited or replaced file (or a braid that converts differently) gets a new
entry; stale entries are simply never read again (delete the folder to reclaim the space).
Entries are written to a temporary folder and renamed into place, so a crash leaves no half
entry, and two processes converting at once both end with a whole one.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from braid.errors import ModelLoadError
from braid.model.gguf import read_gguf, write_model_dir
from braid.model.loader import DTYPES

FORMAT = 1  # bump when read_gguf or write_model_dir change what they write
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items() if len(name) == 4}  # fp32 bf16 fp16


def cache_root() -> Path:
    if os.environ.get("BRAID_CACHE_DIR"):
        return Path(os.environ["BRAID_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "braid"


def source_info(path: Path) -> dict:
    st = path.stat()
    return {"gguf": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(path: Path) -> str:
    info = dict(source_info(path), format=FORMAT)
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def convert(path: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the GGUF file `path` as a Hugging Face model directory `out` (created; it must not
    exist or be empty). Nothing is left at `out` unless the whole directory was written."""
    path, out = Path(path), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelLoadError(f"{out} already exists and is not empty; choose a new directory")
    model = read_gguf(path, dtype)  # every read error surfaces before anything is written
    try:
        _write_atomically(out, lambda tmp: write_model_dir(model, tmp, source_info(path)))
    except OSError as e:
        raise ModelLoadError(f"cannot write {out}: {e}") from None
    return out


def cached_model_dir(path: str | Path, dtype: torch.dtype | None) -> Path:
    """The cached model directory of a GGUF file in `dtype`, converted on first use; with
    `dtype=None`, the directory without weights (config, tokenizer, generation config)."""
    path = Path(path)
    suffix = "meta" if dtype is None else DTYPE_NAMES[dtype]
    entry = cache_root() / "gguf" / f"{cache_key(path)}-{suffix}"
    if (entry / "config.json").exists():
        return entry
    model = read_gguf(path, dtype)
    try:
        _write_atomically(entry, lambda tmp: write_model_dir(model, tmp, source_info(path)))
        return entry
    except OSError:  # a read-only or full cache: a temporary folder, removed when we exit
        tmp = Path(tempfile.mkdtemp(prefix="braid-gguf-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        write_model_dir(model, tmp, source_info(path))
        return tmp


def _write_atomically(target: Path, write) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        if target.exists() and not any(target.iterdir()):
            target.rmdir()
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # not another process's whole entry
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
