"""The self-distillation data: prompts are a pure function of (seed, index), a torn last line
of a stopped run is dropped on resume, and the shortlist ranks ids by the target's mass."""

from braid.training import prompts
from braid.training.distill import complete_lines
from braid.training.prompts import KINDS, make_prompt
from braid.training.train_draft import rank_shortlist


def test_prompts_are_reproducible_and_cover_every_kind(monkeypatch):
    # the stdlib docstrings take seconds to parse: two stand-in passages
    monkeypatch.setattr(prompts, "docstring_passages", lambda: ("One passage.", "Another."))
    first = [make_prompt(0, i) for i in range(2 * len(KINDS))]
    assert first == [make_prompt(0, i) for i in range(2 * len(KINDS))]
    assert {k for k, _ in first} == set(KINDS)
    assert first != [make_prompt(1, i) for i in range(2 * len(KINDS))]
    assert all(text.strip() for _, text in first)


def test_a_torn_last_line_is_cut_off(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":2}\n{"c":')
    assert complete_lines(path) == 2
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n'
    assert complete_lines(tmp_path / "missing.jsonl") == 0


def test_the_shortlist_ranks_ids_by_target_probability_mass():
    rows = [
        {"top_ids": [[5, 7], [7, 9]], "top_logprobs": [[-0.1, -3.0], [-0.2, -2.0]]},
        {"top_ids": [[9, 5]], "top_logprobs": [[-0.05, -4.0]]},
    ]
    # mass: 7 -> 0.87, 5 -> 0.92, 9 -> 1.09; id 2 is kept whatever its mass
    assert rank_shortlist(rows, 3, 20, keep={2}) == [2, 5, 9]
    assert rank_shortlist(rows, 6, 20, keep=set()) == [0, 1, 2, 5, 7, 9]  # filled from 0 up
