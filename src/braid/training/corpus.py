"""Offline training corpora for braid's small language models.

Default corpus: the CPython standard library
---------------------------------------------
Every Python installation ships the ``.py`` sources of its standard library
(``sysconfig.get_paths()["stdlib"]``), so every machine that can run braid can build this corpus
without a download. The sources are under the Python Software Foundation License (PSF-2.0), which
permits copying, modification and redistribution; models trained on them may be shipped freely.

* **Files**: every ``*.py`` file under the stdlib directory, recursively, excluding
  ``site-packages`` / ``dist-packages`` (third-party code, other licenses) and ``__pycache__``.
  Empty files and files that are not valid UTF-8 (deliberately broken test inputs) are skipped;
  line endings are normalized to ``\\n`` (universal newlines, as Python itself reads source).
  The list is sorted by relative path (POSIX separators), so the corpus is byte-identical for a
  given Python version. Different Python versions give slightly different corpora; ``meta.json``
  records the version it was built from.
* **Size**: 31.5 MB of text on CPython 3.11.7 (1,758 files), well above the 10 MB minimum.
* **Split**: by file, never inside a file. A file goes to validation when the first 8 bytes of
  ``sha256(relative_path)`` read as a big-endian integer, modulo 10,000, are below 200 (about 2%
  of the files); all others go to training. The rule depends only on the path, so adding or
  removing a file never moves another one between the splits.
* **Format**: documents are joined with ``DOC_SEP`` (the ``<|endoftext|>`` token on its own line).
  When tokenized, each document is encoded on its own and followed by the ``<|endoftext|>`` id,
  which is the models' eos token and the only document separator (there is no bos token).

Built corpora are cached under ``$BRAID_CACHE`` or ``$XDG_CACHE_HOME/braid`` or ``~/.cache/braid``
in ``corpus/stdlib-py<version>/{train.txt,val.txt,meta.json}``.

User corpora
------------
``load_corpus(data=PATH)`` accepts a plain-text file or a directory:

* a directory: every regular UTF-8 file under it (sorted, hidden files skipped) is one document,
  split by the same path-hash rule;
* a file: split into documents at ``<|endoftext|>`` markers if it has any, else one document.

If the hash rule puts no document in validation (few documents), the last 2% of the training
text (cut at a line break) becomes the validation text instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
DOC_SEP = f"\n{EOS_TOKEN}\n"
CORPUS_LICENSE = "PSF-2.0 (Python Software Foundation License)"
VALIDATION_PER_10K = 200  # 2% of the documents
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class Corpus:
    """Training and validation documents plus a description of where they came from."""

    train: list[str]
    val: list[str]
    meta: dict

    @property
    def train_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.train)

    @property
    def val_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.val)


def cache_root() -> Path:
    """braid's cache dir: ``$BRAID_CACHE``, ``$XDG_CACHE_HOME/braid`` or ``~/.cache/braid``."""
    if os.environ.get("BRAID_CACHE"):
        return Path(os.environ["BRAID_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "braid"


def is_validation(key: str) -> bool:
    """The split rule: a document is validation iff its key hashes below 2% of the range."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return h % 10_000 < VALIDATION_PER_10K


def stdlib_files(stdlib: Path | None = None) -> list[tuple[str, Path]]:
    """Sorted ``(relative posix path, path)`` of the standard-library ``.py`` files."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                p = Path(dirpath) / name
                out.append((p.relative_to(root).as_posix(), p))
    out.sort()
    return out


def _read_utf8(path: Path) -> str | None:
    """UTF-8 text with universal newlines (as Python reads source), or None if not UTF-8."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _split(keyed_docs: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    train = [d for k, d in keyed_docs if not is_validation(k)]
    val = [d for k, d in keyed_docs if is_validation(k)]
    if not val and train:
        # Too few documents for the hash rule: hold out the tail of the last document instead.
        last = train[-1]
        cut = last.rfind("\n", 0, int(len(last) * 0.98))
        cut = cut + 1 if cut > 0 else int(len(last) * 0.98)
        if 0 < cut < len(last):
            train[-1], val = last[:cut], [last[cut:]]
    return train, val


def build_stdlib_corpus(cache_dir: Path | None = None, stdlib: Path | None = None) -> Corpus:
    """Build (or load from cache) the standard-library corpus described in the module docstring."""
    version = ".".join(map(str, sys.version_info[:3]))
    cdir = Path(cache_dir) if cache_dir else cache_root() / "corpus" / f"stdlib-py{version}"
    meta_path = cdir / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        train = (cdir / "train.txt").read_text(encoding="utf-8").split(DOC_SEP)
        val = (cdir / "val.txt").read_text(encoding="utf-8").split(DOC_SEP)
        return Corpus(train, val, meta)

    keyed, skipped = [], 0
    for rel, path in stdlib_files(stdlib):
        text = _read_utf8(path)
        if text is None or not text.strip():
            skipped += 1
            continue
        keyed.append((rel, text))
    train, val = _split(keyed)
    meta = {
        "name": f"cpython-{version}-stdlib",
        "source": "CPython standard library .py sources shipped with the Python installation "
        "(sysconfig.get_paths()['stdlib']), excluding site-packages",
        "license": CORPUS_LICENSE,
        "python_version": version,
        "files": len(keyed),
        "files_skipped": skipped,
        "train_files": len(train),
        "val_files": len(val),
        "split": "by file: sha256(relative path)[:8] as big-endian int % 10000 < 200 -> validation",
    }
    corpus = Corpus(train, val, meta)
    meta["train_bytes"], meta["val_bytes"] = corpus.train_bytes, corpus.val_bytes
    cdir.mkdir(parents=True, exist_ok=True)
    for name, docs in (("train.txt", train), ("val.txt", val)):
        tmp = cdir / (name + ".tmp")
        tmp.write_text(DOC_SEP.join(docs), encoding="utf-8")
        tmp.replace(cdir / name)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return corpus


def load_text_corpus(data: Path) -> Corpus:
    """A user corpus from a plain-text file or a directory of text files (see module docstring)."""
    data = Path(data)
    if data.is_dir():
        keyed = []
        for p in sorted(data.rglob("*")):
            rel = p.relative_to(data).as_posix()
            if not p.is_file() or any(part.startswith(".") for part in Path(rel).parts):
                continue
            text = _read_utf8(p)
            if text and text.strip():
                keyed.append((rel, text))
    elif data.is_file():
        text = _read_utf8(data)
        if text is None:
            raise ValueError(f"--data {data}: not UTF-8 text")
        docs = [d for d in text.split(EOS_TOKEN) if d.strip()]
        keyed = [(f"{data.name}#{i}", d) for i, d in enumerate(docs)]
    else:
        raise FileNotFoundError(f"--data {data}: no such file or directory")
    if not keyed:
        raise ValueError(f"--data {data}: no non-empty UTF-8 text found")
    train, val = _split(keyed)
    meta = {
        "name": data.name,
        "source": f"user text at {data}",
        "license": "as provided by the user",
        "files": len(keyed),
        "train_files": len(train),
        "val_files": len(val),
        "split": "by document: sha256(key)[:8] % 10000 < 200 -> validation "
        "(or the last 2% of the text when that selects nothing)",
    }
    corpus = Corpus(train, val, meta)
    meta["train_bytes"], meta["val_bytes"] = corpus.train_bytes, corpus.val_bytes
    return corpus


def load_corpus(data: Path | str | None = None, cache_dir: Path | None = None) -> Corpus:
    """``data`` is a text file or directory; ``None`` means the standard-library corpus."""
    if data is None:
        return build_stdlib_corpus(cache_dir)
    return load_text_corpus(Path(data))


if __name__ == "__main__":
    c = load_corpus(sys.argv[1] if len(sys.argv) > 1 else None)
    print(json.dumps(c.meta, indent=2))
