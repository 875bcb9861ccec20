"""The Curator's pipeline: five LLM stages per record, two checks, JSONL in and out.

Per record: summary tree -> parallel groups -> parallel structure -> refill (content check:
normalised edit distance to the original) -> Goal, Conclusion and stand-alone paths (grammar
check). A stage whose answer fails its check is asked again, with the reason, up to
`max_retries` times; a record that still fails (or whose requests keep failing) goes to the
rejects file with the stage and the reason. Runs resume: ids already in the output or the
rejects file are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from braid.errors import InvalidRequestError
from braid.multiverse.curator.checks import (
    DEFAULT_THRESHOLD,
    content_distance,
    content_problem,
    grammar_problem,
)
from braid.multiverse.curator.client import ChatClient, EndpointConfig, TransientError
from braid.multiverse.curator.prompts import (
    GOAL_CONCLUSION,
    PARALLEL_GROUPS,
    PARALLEL_STRUCTURE,
    REFILL,
    SUMMARY_TREE,
    Stage,
    retry_message,
)

TEXT_FIELDS = ("sequential", "text")  # looked up in this order unless text_field is given


@dataclass
class CurateOptions:
    threshold: float = DEFAULT_THRESHOLD
    max_retries: int = 2  # re-asks per failed check, and retries per failed request
    concurrency: int = 4  # records in flight at once
    text_field: str | None = None
    retry_delay_s: float = 1.0
    progress: bool = True

    def validate(self) -> CurateOptions:
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidRequestError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.max_retries < 0:
            raise InvalidRequestError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.concurrency < 1:
            raise InvalidRequestError(f"--concurrency must be >= 1, got {self.concurrency}")
        return self


@dataclass
class Summary:
    curated: int = 0
    rejected: int = 0
    skipped: int = 0  # already in the output or rejects file
    duplicates: int = 0  # ids seen earlier in the same input

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Rejected(Exception):
    def __init__(self, stage: Stage | None, reason: str, output: str | None = None):
        super().__init__(reason)
        self.stage, self.reason, self.output = stage, reason, output


_FENCE = re.compile(r"^```[\w-]*\n(.*?)\n?```$", re.DOTALL)


def _clean(reply: str) -> str:
    """The reply without surrounding whitespace or a code fence around all of it."""
    reply = reply.strip()
    m = _FENCE.match(reply)
    return m.group(1).strip() if m else reply


@dataclass
class _Record:
    client: ChatClient
    options: CurateOptions
    attempts: dict[str, int] = field(default_factory=dict)

    async def ask(
        self, stage: Stage, check: Callable[[str], str | None] | None = None, **fields: str
    ) -> str:
        """The stage's answer that passes `check`, re-asking with the reason when it fails."""
        messages = stage.messages(**fields)
        for attempt in range(self.options.max_retries + 1):
            self.attempts[stage.name] = attempt + 1
            try:
                out = _clean(await self.client.complete(messages))
            except TransientError as e:
                raise Rejected(stage, f"request failed: {e}") from None
            problem = check(out) if check else None
            if problem is None:
                return out
            messages = stage.messages(**fields) + retry_message(out, problem)
        raise Rejected(stage, problem, out)


async def curate_text(
    client: ChatClient, text: str, options: CurateOptions | None = None
) -> tuple[str, dict[str, Any]]:
    """(Multiverse text, curator info) for one sequential text; raises Rejected."""
    opts = options or CurateOptions()
    rec = _Record(client, opts)
    tree = await rec.ask(SUMMARY_TREE, text=text)
    groups = await rec.ask(PARALLEL_GROUPS, text=text, tree=tree)
    structure = await rec.ask(PARALLEL_STRUCTURE, text=text, tree=tree, groups=groups)
    refilled = await rec.ask(
        REFILL,
        lambda out: content_problem(text, out, opts.threshold),
        text=text,
        structure=structure,
    )
    final = await rec.ask(GOAL_CONCLUSION, grammar_problem, refilled=refilled)
    info = {
        "model": client.config.model,
        "content_distance": round(content_distance(text, refilled), 4),
        "attempts": rec.attempts,
        "tree": tree,
        "groups": groups,
        "structure": structure,
        "refilled": refilled,
    }
    return final, info


def record_id(record: dict[str, Any], text: str | None) -> str:
    """The record's "id", else a hash of its text (stable across runs, for resuming)."""
    if record.get("id") is not None:
        return str(record["id"])
    key = text if text is not None else json.dumps(record, sort_keys=True)
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _done_ids(path: Path | None) -> set[str]:
    ids: set[str] = set()
    if path is None or not path.exists():
        return ids
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by an interrupted run: that record is redone
    return ids


def _text_of(record: dict[str, Any], text_field: str | None) -> str | None:
    for name in (text_field,) if text_field else TEXT_FIELDS:
        if isinstance(record.get(name), str) and record[name].strip():
            return record[name]
    return None


def _read_input(path: Path, text_field: str | None) -> list[tuple[str, dict, str | None, str]]:
    """(id, record, text or None, why not) per input line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InvalidRequestError(f"cannot read --input: {e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError
        except ValueError:
            out.append((f"{path.name}:{n}", {}, None, f"line {n} is not a JSON object"))
            continue
        text = _text_of(record, text_field)
        fields = text_field or " or ".join(TEXT_FIELDS)
        why = "" if text is not None else f"line {n} has no non-empty text field {fields}"
        out.append((record_id(record, text), record, text, why))
    return out


def curate_file(
    input_path: str | Path,
    output_path: str | Path,
    config: EndpointConfig,
    options: CurateOptions | None = None,
    rejects_path: str | Path | None = None,
) -> Summary:
    """Curate a JSONL file; appends to `output_path` and the rejects file (default:
    OUTPUT with `.rejects.jsonl`). Returns the counts."""
    opts = (options or CurateOptions()).validate()
    output_path = Path(output_path)
    rejects = Path(rejects_path) if rejects_path else output_path.with_suffix(".rejects.jsonl")
    if rejects == output_path:
        raise InvalidRequestError("--rejects must differ from --output")
    return asyncio.run(_run(Path(input_path), output_path, rejects, config, opts))


async def _run(
    input_path: Path, output: Path, rejects: Path, config: EndpointConfig, opts: CurateOptions
) -> Summary:
    from tqdm.auto import tqdm

    items = _read_input(input_path, opts.text_field)
    done = _done_ids(output) | _done_ids(rejects)
    summary, seen, todo = Summary(), set(), []
    for item in items:
        if item[0] in done:
            summary.skipped += 1
        elif item[0] in seen:
            summary.duplicates += 1
        else:
            seen.add(item[0])
            todo.append(item)
    queue: asyncio.Queue = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    client = ChatClient(config, opts.max_retries, opts.retry_delay_s)
    bar = tqdm(total=len(todo), unit="record", disable=not opts.progress, desc="curate")
    for p in (output, rejects):
        p.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a", encoding="utf-8") as out_f, rejects.open("a", encoding="utf-8") as rej_f:
        for f in (out_f, rej_f):  # a line cut short by a killed run stays on its own
            if f.tell() > 0 and not _ends_with_newline(f.name):
                f.write("\n")

        def write(f: Any, row: dict) -> None:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()  # a killed run loses at most the records in flight

        async def worker() -> None:
            while not queue.empty():
                rid, record, text, why = queue.get_nowait()
                try:
                    if text is None:
                        raise Rejected(None, why)
                    final, info = await curate_text(client, text, opts)
                    write(out_f, {**record, "id": rid, "multiverse": final, "curator": info})
                    summary.curated += 1
                except Rejected as r:
                    write(rej_f, _reject_row(rid, r))
                    summary.rejected += 1
                bar.update(1)
                bar.set_postfix(ok=summary.curated, rejected=summary.rejected)

        tasks = [asyncio.create_task(worker()) for _ in range(min(opts.concurrency, len(todo)))]
        try:
            if tasks:
                finished, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                for t in finished:
                    t.result()  # re-raises an EndpointError that stopped the run
        finally:
            bar.close()
            await client.aclose()
    return summary


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def _reject_row(rid: str, r: Rejected) -> dict[str, Any]:
    row: dict[str, Any] = {"id": rid, "stage": r.stage.name if r.stage else "input"}
    row["reason"] = r.reason
    if r.output is not None:
        row["last_output"] = r.output
    return row
