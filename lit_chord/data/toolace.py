"""``toolace``: the reference's ToolACE splits (its tool-use recipe) in lit_chord's two formats.

The reference trains Llama-3.2-3B-Instruct with CHORD-φ on ``datajuicer/Trinity-ToolAce-RL-split`` (prompts) and
``datajuicer/Trinity-ToolAce-SFT-split`` (expert conversations), both made from Team-ACE/ToolACE with Tool-N1's
processing. An RL row has ``raw_system`` (ToolACE's system text, up to "...functions in JSON format that you can
invoke:"), ``tools`` (a JSON string: a list of function specs), ``conversations`` (``{"from", "value"}`` turns up to
the call to make) and ``answer`` (a JSON string: the list of ``{"name", "arguments"}`` calls). The reference's
tool-call workflow shows the model the system text with the tools and an instruction to think in ``<think>`` tags
and to answer with the JSON list of calls in ``<tool_call>`` tags, then the turns, and scores 1 when the calls
match ``answer`` as multisets (names and arguments), 0 otherwise.

An RL record here is ``messages``, the prompt as chat turns as the reference builds it (system text with the
tools and the instruction, then the conversation's user, assistant and tool turns), which the datamodule uses as
the prompt (a prompt record's own turns, instead of its ``system_prompt`` and ``problem``); ``answer``, the
ground-truth calls as the JSON string (``lit_chord.rewards.tool_call``); and ``problem``, the same prompt flattened
to one text, for tools that want a single string. A past call
(``"from": "function_call"``) becomes an assistant turn with the call in ``<tool_call>`` tags. The instruction's
wording is ours, not Tool-N1's; its format is the one the reference's reward parses. The SFT split's ``messages``
are kept as they are, with roles checked and the last turn the assistant's.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track

from lit_chord.data.sources import Report, load_source, require_columns, write_jsonl
from lit_chord.errors import UserError

RL_SOURCE = "datajuicer/Trinity-ToolAce-RL-split"
SFT_SOURCE = "datajuicer/Trinity-ToolAce-SFT-split"
RL_COLUMNS = {
    "raw_system": ("string",),
    "tools": ("string",),
    "conversations": ("list of struct",),
    "answer": ("string",),
}
SFT_COLUMNS = {"messages": ("list of struct",)}
# ToolACE's and ShareGPT's speaker names, as the reference's workflow maps them.
ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
}
TOOL_INSTRUCTION = (
    "\n\n# Tools\n\n<tools>\n{tools}\n</tools>\n\n"
    "In every reply, first reason inside <think> </think> tags. Then give the function calls to make as one JSON "
    'list of {{"name": <function name>, "arguments": <object of arguments>}} objects inside <tool_call> '
    "</tool_call> tags, in the same reply: <think>...</think> <tool_call>[...]</tool_call>. Give every argument its "
    "declared type."
)


def json_list(text: Any, fields: tuple[str, ...]) -> list | None:
    """``text`` parsed as a JSON list of objects that all have ``fields``, or None if it is not one."""
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return None
    if not isinstance(value, list) or not all(isinstance(item, dict) and set(fields) <= set(item) for item in value):
        return None
    return value


def chat_turns(turns: list[dict], speaker: str, text: str) -> list[dict] | None:
    """``turns`` as ``{"role", "content"}`` messages, or None if a speaker is unknown or a text is not a string.

    A past call (``function_call``, its value the calls' JSON) is written as the model is asked to write one, in
    ``<tool_call>`` tags (the reference's workflow shows it as that JSON encoded a second time, a quoted string).
    """
    messages = []
    for turn in turns:
        role, content = ROLES.get(turn.get(speaker) or ""), turn.get(text)
        if role is None or not isinstance(content, str):
            return None
        if turn.get(speaker) == "function_call":
            content = f"<tool_call>{content}</tool_call>"
        messages.append({"role": role, "content": content})
    return messages


def rl_record(row: dict) -> dict | str:
    """An RL row as ``{"problem", "answer", "messages"}``, or the key of the reason it is dropped."""
    tools = json_list(row["tools"], ("name",))
    if not tools:
        return "bad_tools"
    if json_list(row["answer"], ("name", "arguments")) is None:
        return "bad_answer"
    turns = chat_turns(row["conversations"] or [], "from", "value")
    if not turns or turns[-1]["role"] not in ("user", "tool") or any(t["role"] == "system" for t in turns):
        return "bad_turns"
    specs = "\n".join(json.dumps({"type": "function", "function": tool}, ensure_ascii=False) for tool in tools)
    system = (row["raw_system"] or "").rstrip() + TOOL_INSTRUCTION.format(tools=specs)
    if len(turns) == 1:
        conversation = turns[0]["content"]
    else:
        conversation = "\n\n".join(f"{turn['role'].capitalize()}: {turn['content']}" for turn in turns)
    return {
        "problem": f"{system}\n\n{conversation}",
        "answer": row["answer"],
        "messages": [{"role": "system", "content": system}, *turns],
    }


def sft_record(row: dict) -> dict | str:
    """An SFT row as ``{"messages"}`` (roles checked, the last turn a non-empty assistant turn), or "bad_messages"."""
    messages = chat_turns(row["messages"] or [], "role", "content")
    if not messages or messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        return "bad_messages"
    return {"messages": messages}


DROPPED = {
    "bad_tools": "rows whose tools are not a JSON list of functions",
    "bad_answer": "rows whose answer is not a JSON list of calls with name and arguments",
    "bad_turns": "rows with an unknown speaker, or not ending on a user's or a tool's turn",
    "bad_messages": "rows with an unknown role, or not ending on a non-empty assistant turn",
}


def convert(
    source: str,
    split: str,
    columns: Mapping[str, tuple[str, ...]],
    to_record: Callable[[dict], dict | str],
    drops: tuple[str, ...],
    out: Path,
    report: Report,
    heldout: int = 0,
    seed: int = 42,
) -> None:
    """Convert one split with ``to_record``, count its ``drops`` into ``report`` and write what is left to ``out``;
    with ``heldout``, that many random records (``seed``) go to ``heldout.jsonl`` beside it instead."""
    dataset = load_source(source, split=split)
    require_columns(dataset, source, columns)
    records, dropped = [], dict.fromkeys(drops, 0)
    for row in track(dataset, total=len(dataset), description=f"Converting {source}", console=Console(stderr=True)):
        record = to_record(row)
        if isinstance(record, str):
            dropped[record] += 1
        else:
            records.append(record)
    report.heading(f"{source}: {len(dataset):,} rows")
    for key, count in dropped.items():
        report.count(key, count, DROPPED[key])
    if not records:
        raise UserError(f"{source}: no usable row ({'; '.join(DROPPED[key] for key, n in dropped.items() if n)})")
    if heldout:
        if heldout >= len(records):
            raise UserError(f"--heldout {heldout}: {source} has only {len(records)} usable rows")
        picked = set(random.Random(seed).sample(range(len(records)), heldout))
        kept = [r for i, r in enumerate(records) if i not in picked]
        held = out.parent / "heldout.jsonl"
        report.count("heldout", write_jsonl(held, [r for i, r in enumerate(records) if i in picked]), f"rows -> {held}")
        records = kept
    report.count(out.stem, write_jsonl(out, records), f"rows -> {out}", sign="=")


def prepare_toolace(
    out: Path,
    rl_source: str = RL_SOURCE,
    sft_source: str = SFT_SOURCE,
    split: str = "train",
    heldout: int = 0,
    seed: int = 42,
) -> Report:
    """Write ``out/rl_train.jsonl`` (messages/answer) and ``out/sft.jsonl`` (messages), and with ``heldout``
    ``out/heldout.jsonl``, that many RL prompts drawn with ``seed`` and kept out of training (an in-domain check
    beside BFCL, the paper's benchmark); what was dropped and kept."""
    report = Report()
    rl_drops = ("bad_tools", "bad_answer", "bad_turns")
    convert(rl_source, split, RL_COLUMNS, rl_record, rl_drops, out / "rl_train.jsonl", report, heldout, seed)
    convert(sft_source, split, SFT_COLUMNS, sft_record, ("bad_messages",), out / "sft.jsonl", report)
    return report
