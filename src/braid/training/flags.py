"""Command-line plumbing shared by the training commands: one flag per field of a config
dataclass, ``--config FILE.json`` beneath explicit flags, and one readable error line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from braid.errors import BraidError, InvalidRequestError

C = TypeVar("C")
_TYPES = {"int": int, "float": float}


def add_config_arguments(
    p: argparse.ArgumentParser,
    cls: type,
    help: dict[str, str],
    aliases: dict[str, tuple[str, ...]] | None = None,
    choices: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """``--config`` plus one flag per field of the dataclass `cls` (``--batch-size`` for
    ``batch_size``); every flag defaults to None so that the file and the field default show
    through. Booleans get ``--x/--no-x``."""
    p.add_argument("--config", help="JSON file with any of the settings below")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    for f in dataclasses.fields(cls):
        flags = (aliases or {}).get(f.name, ("--" + f.name.replace("_", "-"),))
        text = help.get(f.name, f.name.replace("_", " "))
        if f.default not in (None, "", dataclasses.MISSING):
            text += f" (default {f.default})"
        if f.default is dataclasses.MISSING:
            text += " (required)"
        if str(f.type) == "bool":
            p.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, help=text)
        else:
            kind = _TYPES.get(str(f.type), str)
            pick = (choices or {}).get(f.name)
            p.add_argument(*flags, dest=f.name, type=kind, choices=pick, default=None, help=text)


def config_from_args(cls: Callable[..., C], args: argparse.Namespace) -> C:
    """Field defaults < the ``--config`` JSON file < explicit flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            values.update(json.loads(Path(args.config).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise InvalidRequestError(f"--config {args.config}: {e}") from None
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(values) - set(names)
    if unknown:
        raise InvalidRequestError(f"--config: unknown keys {sorted(unknown)}")
    for n in names:
        v = getattr(args, n, None)
        if v is not None:
            values[n] = v
    missing = [n for n in names if n not in values and _required(cls, n)]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise InvalidRequestError(f"{flags} is required")
    try:
        return cls(**values)
    except TypeError as e:  # e.g. a JSON value of the wrong kind reaching __post_init__
        raise InvalidRequestError(f"--config: {e}") from None


def explicit_flags(cls: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, `out` aside: on ``--resume`` they override the checkpoint's,
    and one that may not change is an error rather than silently ignored."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "out"]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _required(cls: Any, name: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def command_line(name: str, args: argparse.Namespace) -> str:
    """The command as typed, for model cards."""
    argv = getattr(args, "argv", None) or [a for a in sys.argv[1:] if a != name]
    argv = [a for a in argv if a != name]
    return f"braid {name} " + " ".join(argv)


def run_reporting_errors(name: str, body: Callable[[], int]) -> int:
    """`body()`'s exit code; bad input (and a missing optional dependency) becomes one line
    ``braid NAME: message`` on stderr and exit code 2."""
    try:
        return body()
    except ImportError as e:
        print(f"braid {name}: needs {e.name}: pip install 'braid-llm[train]'", file=sys.stderr)
    except (BraidError, ValueError, OSError) as e:
        print(f"braid {name}: {e}", file=sys.stderr)
    return 2
