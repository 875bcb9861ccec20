"""Flags from a config dataclass, the --config file beneath them, and one error line."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import pytest

from braid.errors import InvalidRequestError
from braid.training.flags import (
    add_config_arguments,
    config_from_args,
    explicit_flags,
    run_reporting_errors,
)


@dataclass
class Settings:
    out: str
    steps: int = 10
    lr: float = 0.1
    kind: str = "a"
    finetune: bool = False


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_config_arguments(p, Settings, {"steps": "optimizer steps"}, choices={"kind": ("a", "b")})
    return p.parse_args(argv)


def test_defaults_then_file_then_flags(tmp_path):
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"out": "x", "steps": 3, "lr": 0.5}))
    cfg = config_from_args(Settings, parse(["--config", str(file), "--lr", "0.25", "--finetune"]))
    assert cfg == Settings(out="x", steps=3, lr=0.25, kind="a", finetune=True)
    cfg = config_from_args(Settings, parse(["--out", "y", "--no-finetune", "--kind", "b"]))
    assert cfg == Settings(out="y", kind="b")
    assert explicit_flags(Settings, parse(["--out", "y", "--steps", "4"])) == {"steps": 4}


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"out": "x", "stepz": 3}', r"unknown keys \['stepz'\]"),
        ("{not json", "--config"),
        ('{"steps": 3}', "--out is required"),
    ],
)
def test_bad_config_files_are_clear_errors(tmp_path, content, message):
    file = tmp_path / "c.json"
    file.write_text(content)
    with pytest.raises(InvalidRequestError, match=message):
        config_from_args(Settings, parse(["--config", str(file)]))


def test_errors_become_one_line_and_exit_2(capsys):
    def bad() -> int:
        raise ValueError("--steps must be >= 1")

    def missing() -> int:
        raise ModuleNotFoundError("no module", name="transformers")

    assert run_reporting_errors("train-x", bad) == 2
    assert run_reporting_errors("train-x", missing) == 2
    assert run_reporting_errors("train-x", lambda: 0) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "braid train-x: --steps must be >= 1",
        "braid train-x: needs transformers: pip install 'braid-llm[train]'",
    ]
