"""MethodConfig: one validated object for a method and its options, used by every front end."""

import dataclasses
import subprocess
import sys

import pytest

from braid import LLM, InvalidRequestError, MethodConfig, SamplingParams
from braid.cli import build_parser, main
from braid.methods import METHODS, make_method


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="nope"), "available: ar, spec"),
        (dict(name="spec", gamma=0), "gamma"),
        (dict(name="ngram", gamma="eight"), "gamma"),
        (dict(name="spec", gamma=True), "gamma"),
        (dict(name="spec", gamma="3"), "gamma"),
        (dict(name="mtad", beams=0), "beams"),
        (dict(name="mtad", tau=0), "tau"),
        (dict(name="mtad", tau=float("nan")), "tau"),
        (dict(name="multiverse", max_paths=0), "max_paths"),
        (dict(name="multiverse", max_depth=-1), "max_depth"),
    ],
)
def test_bad_options_are_refused_once_with_what_is_valid(kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        MethodConfig(**kwargs)


def test_auto_gamma_is_the_default_of_every_method_and_configs_are_frozen():
    for name in METHODS:
        assert MethodConfig(name).gamma == "auto"
    assert make_method(MethodConfig("ngram", gamma=3)).lengths.gamma == 3
    assert make_method(MethodConfig("ngram")).lengths.adaptive
    with pytest.raises(dataclasses.FrozenInstanceError):
        MethodConfig().gamma = 3
    with pytest.raises(InvalidRequestError):  # a copy is validated too
        dataclasses.replace(MethodConfig("spec"), gamma=0)


def test_a_gamma_shared_across_a_sweep_is_every_method_s():
    assert MethodConfig.sharing_gamma("spec", "auto").gamma == "auto"
    assert MethodConfig.sharing_gamma("ar", "auto") == MethodConfig("ar")
    assert MethodConfig.sharing_gamma("heads-tree", 6).gamma == 6


def test_make_method_takes_the_config_or_a_name():
    assert make_method("ar").name == "ar"
    mv = make_method(MethodConfig("multiverse", max_paths=2, max_depth=1))
    assert (mv.max_paths, mv.max_depth) == (2, 1)
    with pytest.raises(InvalidRequestError, match="draft"):
        make_method(MethodConfig("spec"))


def test_cli_flags_default_to_the_dataclass_and_show_it_in_help(capsys):
    args = build_parser().parse_args(["generate"])
    from braid.cli import _method_config

    assert _method_config(args) == MethodConfig()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    text = capsys.readouterr().out
    defaults = MethodConfig()
    for flag, value in [
        ("--method", defaults.name),
        ("--gamma", defaults.gamma),
        ("--beams", defaults.beams),
        ("--tau", defaults.tau),
        ("--max-paths", defaults.max_paths),
        ("--max-depth", defaults.max_depth),
    ]:
        entry = text[text.index(f"\n  {flag} ") + 1 :]
        entry = " ".join(entry[: entry.index("\n  -")].split())  # this option's help
        assert f"(default: {value})" in entry, flag
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    assert f"(default: {defaults.gamma})" in " ".join(capsys.readouterr().out.split())


def test_cli_refuses_bad_method_options_before_loading_a_model(capsys):
    assert main(["generate", "--prompt", "x", "--method", "ngram", "--gamma", "0"]) == 2
    assert "gamma must be an integer >= 1" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--method", "mtad", "--tau", "-1"]) == 2
    assert "tau" in capsys.readouterr().err


def test_old_keyword_options_still_work_for_one_release(llama_dir):
    llm = LLM(llama_dir, dtype="fp32")
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    with pytest.warns(DeprecationWarning, match="MethodConfig"):
        old = llm.generate("The quick", params, method="ar", gamma=3)
    new = llm.generate("The quick", params, method=MethodConfig("ar", gamma=3))
    assert old[0].token_ids == new[0].token_ids
    with pytest.raises(InvalidRequestError, match="gamma"), pytest.warns(DeprecationWarning):
        llm.generate("x", params, method="ar", gamma=0)
    with pytest.raises(TypeError, match="gama"):
        llm.generate("x", params, gama=3)


@pytest.mark.parametrize(
    "module,not_imported",
    [("braid.bench.cli", "braid.cli"), ("braid.bench.quality", "braid.bench.runner")],
)
def test_method_option_helpers_no_longer_close_an_import_cycle(module, not_imported):
    code = f"import sys, {module}; assert {not_imported!r} not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_method_has_a_name_the_config_accepts():
    assert {MethodConfig(m).name for m in METHODS} == set(METHODS)
