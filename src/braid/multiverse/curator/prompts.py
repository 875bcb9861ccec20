"""Prompt templates of the Curator's five stages (written for braid after the Multiverse paper).

Each stage is one chat request: a system message with the stage's instructions and a user
message with its inputs. `$name` fields are filled with `string.Template`, so braces and other
characters in the data are never interpreted.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

from braid.multiverse.tags import PARALLEL_SENTENCE

_ROLE = (
    "You help braid turn a sequential reasoning chain into Multiverse form, where independent "
    "parts of the reasoning run as parallel paths. Answer with the requested output only: no "
    "preamble, no explanation, no code fences."
)


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    system: str
    user: Template

    def messages(self, **fields: str) -> list[dict[str, str]]:
        header = f"braid curator stage {self.number}/5 ({self.name})."
        return [
            {"role": "system", "content": f"{header} {_ROLE}\n\n{self.system}"},
            {"role": "user", "content": self.user.substitute(fields)},
        ]


SUMMARY_TREE = Stage(
    1,
    "summary tree",
    """Summarise the reasoning below as a tree of steps. Each top-level step is a contiguous \
part of the text, in order, together covering all of it; a step may have sub-steps (again \
contiguous, covering the step). One line per step: its number, a colon and a one-sentence \
summary. Number top-level steps 1, 2, 3 ... and sub-steps 2.1, 2.2 ... (deeper: 2.1.1).

Example:
1: Restate what is asked.
2: Compute each of the three quantities.
2.1: Compute the first quantity.
2.2: Compute the second quantity.
2.3: Compute the third quantity.
3: Add the three quantities and state the answer.""",
    Template("Reasoning:\n$text"),
)

PARALLEL_GROUPS = Stage(
    2,
    "parallel groups",
    """Find the groups of sibling steps in the tree that are independent: no step in a group \
uses a result of another step in the same group, so they could be worked out at the same time. \
A group has at least two steps, all with the same parent. Write one group per line as its step \
numbers separated by commas and spaces, e.g. "2.1, 2.2, 2.3". Write "none" if there is no \
such group.""",
    Template("Reasoning:\n$text\n\nStep tree:\n$tree"),
)

PARALLEL_STRUCTURE = Stage(
    3,
    "parallel structure",
    """Write the skeleton of the reasoning with the parallel groups made explicit. Write \
every step as a line "[step N]" with its number, in the order of the text. Wrap each group in \
<Parallel> and </Parallel> and each of its steps in <Path> and </Path>; put a step's sub-steps \
inside its path (a nested group becomes a nested <Parallel> inside that path). Wrap everything \
in <Think> and </Think>. Every tag goes on its own line; steps not in a group stay outside \
<Parallel>. Write no other text.

Example:
<Think>
[step 1]
<Parallel>
<Path>
[step 2.1]
</Path>
<Path>
[step 2.2]
</Path>
</Parallel>
[step 3]
</Think>""",
    Template("Reasoning:\n$text\n\nStep tree:\n$tree\n\nParallel groups:\n$groups"),
)

REFILL = Stage(
    4,
    "refill",
    """Replace every "[step N]" line of the skeleton with the exact text of that step from \
the original reasoning, copied word for word: change nothing, drop nothing, add nothing. A \
step with sub-steps in the skeleton is replaced by its text outside the sub-steps. Keep every \
tag of the skeleton where it is, each on its own line. Every part of the original text must \
appear exactly once.""",
    Template("Original reasoning:\n$text\n\nSkeleton:\n$structure"),
)

GOAL_CONCLUSION = Stage(
    5,
    "goal and conclusion",
    f"""Finish the Multiverse form of the structured reasoning. For every <Parallel> block:
- write the sentence "{PARALLEL_SENTENCE}" on the line before <Parallel>;
- right after <Parallel>, add a <Goal> with one <Outline> per path, in order: a one-line plan \
of what that path works out;
- number the outlines and paths 1:, 2:, ... at the start of their first line; in a block \
nested inside path 2 use 2.1:, 2.2:, ...;
- rewrite each path so that it stands alone: it must not refer to its sibling paths or to \
their results; keep its computations and facts unchanged;
- after the last path, add a <Conclusion> that combines the results of the paths (move text \
that combines them there), then </Parallel>.
Every tag goes on its own line. Keep everything outside the blocks unchanged.

Example of one block:
{PARALLEL_SENTENCE}
<Parallel>
<Goal>
<Outline>
1: Compute the first quantity.
</Outline>
<Outline>
2: Compute the second quantity.
</Outline>
</Goal>
<Path>
1: The first quantity is 3 * 4 = 12.
</Path>
<Path>
2: The second quantity is 5 + 6 = 11.
</Path>
<Conclusion>
Together: 12 + 11 = 23.
</Conclusion>
</Parallel>""",
    Template("Structured reasoning:\n$refilled"),
)

STAGES = (SUMMARY_TREE, PARALLEL_GROUPS, PARALLEL_STRUCTURE, REFILL, GOAL_CONCLUSION)


def retry_message(previous: str, problem: str) -> list[dict[str, str]]:
    """The turns appended to a stage's messages when its answer failed a check."""
    return [
        {"role": "assistant", "content": previous},
        {
            "role": "user",
            "content": f"That answer was rejected: {problem}. Answer again, following the "
            "instructions exactly.",
        },
    ]
