"""`braid chat`: an interactive, streaming, multi-turn conversation with a model.

Commands at the prompt: /reset starts over (the system prompt stays), /exit or Ctrl-D leaves.
Ctrl-C while the model answers stops that answer (what came so far stays in the conversation);
Ctrl-C at the prompt only clears the line.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from braid.errors import BraidError

HELP = "/reset: new conversation, /exit or Ctrl-D: quit, Ctrl-C: stop the answer"


def run_chat(
    llm: Any,
    params: Any,
    method: Any,
    system: str | None = None,
    stats: bool = False,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
) -> int:
    """The read-answer loop; `llm` is a braid.LLM, `method` what `LLM.stream` takes."""
    interactive = stdin.isatty()
    start = [{"role": "system", "content": system}] if system else []
    conversation = list(start)
    if interactive:
        print(f"braid chat with {llm.name} ({HELP})", file=sys.stderr)
    while True:
        try:
            if interactive:
                stdout.write("\n> ")
                stdout.flush()
            line = stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n")
            continue
        if not line:  # end of input (Ctrl-D)
            if interactive:
                stdout.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            conversation = list(start)
            print("(new conversation)", file=sys.stderr)
            continue
        if text.startswith("/") and " " not in text:
            print(f"unknown command {text}; {HELP}", file=sys.stderr)
            continue
        conversation.append({"role": "user", "content": text})
        answer = []
        stream = llm.stream_chat(conversation, params, method=method)
        try:
            for delta in stream:
                answer.append(delta)
                stdout.write(delta)
                stdout.flush()
        except KeyboardInterrupt:
            stream.close()  # frees the request's cache; the partial answer is kept
            stdout.write(" [stopped]")
        except BraidError as e:  # e.g. the conversation outgrew the context: this turn only
            conversation.pop()
            print(f"braid: error: {e} (/reset starts over)", file=sys.stderr)
            continue
        stdout.write("\n")
        stdout.flush()
        conversation.append({"role": "assistant", "content": "".join(answer)})
        if stats and llm.last_stream_output is not None:
            print(json.dumps(llm.last_stream_output.stats.as_dict()), file=sys.stderr)
