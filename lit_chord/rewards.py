"""Reward functions: ``reward(completion, answer) -> Reward | float``.

A reward is three things the reference logs apart: the scalar that drives the advantages, whether the answer is
right (``accuracy``) and whether the response is well formed (``format_ok``). Keeping them apart matters for
what a run reports: with the format penalty folded in, a right ``\\boxed{5}`` without ``<think>`` tags scores
0.9, and an instruct model that does not emit tags would look ~0 accurate before training.

``math_boxed`` follows the reference's math workflow: 1 if the last ``\\boxed{}`` in the completion equals the
answer (checked with math-verify, so ``1/2`` and ``0.5`` agree), minus 0.1 when the ``<think>`` format is
broken, giving rewards in {-0.1, 0, 0.9, 1}. ``paper_math`` is the paper's: 1 right, 0 wrong but well formed,
-0.1 wrong and malformed, -1 cut at the length limit with no answer. ``exact_match`` compares the boxed (or whole)
text as a string; ``boxed_string`` is ``math_boxed`` with the answers compared as strings. A reward function that
takes a ``truncated`` keyword is told whether the response hit the limit.
``tool_call`` is the reference's tool-use reward (ToolACE, its ``toolcall_workflow``): 1 when the function calls in
the last ``<tool_call>`` block are the ground truth's, compared as multisets of (name, arguments), and the reply
reasons in one pair of ``<think>`` tags before it; 0 otherwise.

A user reward may return a plain number: its accuracy is then ``reward >= ACCURACY_THRESHOLD`` (1.0), which is
the number itself for 0/1 rewards, and it reports no format (``format_ok`` is not logged). Or it may return a
``Reward``, or a mapping with the keys ``reward`` and optionally ``accuracy`` and ``format``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

FORMAT_PENALTY = 0.1
ACCURACY_THRESHOLD = 1.0  # a plain-number reward counts as a correct answer at or above this


@dataclass(frozen=True)
class Reward:
    """One completion's score: the scalar for the advantages and its components for the metrics."""

    reward: float  # drives the GRPO advantages
    accuracy: float  # 1.0 if the answer is right, else 0.0 (``rollout/accuracy``, ``val/<set>/greedy_acc``, ...)
    format_ok: float | None = None  # 1.0 if the response is well formed, 0.0 if not; None: the reward has no format


def as_reward(value: object) -> Reward:
    """Normalize what a reward function returned; raises ``TypeError`` / ``ValueError`` on anything else.

    A number ``r`` becomes ``Reward(r, float(r >= ACCURACY_THRESHOLD))``; a mapping needs ``reward`` and may give
    ``accuracy`` and ``format``. Every value must be a finite number.
    """
    if isinstance(value, Reward):
        value = {"reward": value.reward, "accuracy": value.accuracy, "format": value.format_ok}
    elif not isinstance(value, Mapping):
        value = {"reward": value}
    if "reward" not in value or set(value) - {"reward", "accuracy", "format"}:
        raise TypeError(f"reward_fn returned {dict(value)!r}: expected keys 'reward' [, 'accuracy', 'format']")
    reward = finite_number(value["reward"], "reward")
    accuracy = value.get("accuracy")
    form = value.get("format")
    return Reward(
        reward,
        float(reward >= ACCURACY_THRESHOLD) if accuracy is None else finite_number(accuracy, "accuracy"),
        None if form is None else finite_number(form, "format"),
    )


def finite_number(value: object, what: str) -> float:
    """``value`` as a finite float; a string is refused (``float("1")`` would let one pass silently)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"reward_fn returned {value!r} as {what!r}, not a number")
    number = float(value)  # type: ignore[arg-type]  # int, float, bool, numpy or 0-dim tensor; else TypeError
    if not math.isfinite(number):
        raise ValueError(f"reward_fn returned a non-finite {what!r}: {number}")
    return number


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced; None if there is none or it is unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index]
            depth -= 1
    return None


def think_format_ok(text: str) -> bool:
    """Exactly one ``<think>`` and one ``</think>``, in that order (the reference's format check)."""
    return text.count("<think>") == 1 and text.count("</think>") == 1 and text.index("<think>") < text.index("</think>")


def answers_match(predicted: str, answer: str) -> bool:
    """Mathematical equivalence by math-verify, falling back to string equality when parsing fails."""
    from math_verify import parse, verify

    if predicted.strip() == answer.strip():
        return True
    gold, guess = parse(f"${answer}$"), parse(f"${predicted}$")
    return bool(gold and guess and verify(gold, guess))


def boxed_reward(completion: str, answer: str, match: Callable[[str, str], bool]) -> Reward:
    """Accuracy of the last boxed answer by ``match``, minus ``FORMAT_PENALTY`` if the <think> tags are malformed."""
    boxed = last_boxed(completion)
    accuracy = float(boxed is not None and match(boxed, answer))
    well_formed = think_format_ok(completion)
    return Reward(accuracy - (0.0 if well_formed else FORMAT_PENALTY), accuracy, float(well_formed))


def math_boxed(completion: str, answer: str) -> Reward:
    """``boxed_reward`` with the answers compared by math-verify (``answers_match``)."""
    return boxed_reward(completion, answer, answers_match)


def boxed_string(completion: str, answer: str) -> Reward:
    """``math_boxed`` with the answers compared as strings: for digit strings, where ``0123`` and ``123`` differ
    (math-verify would call them equal), as in the miniature's copy and sort tasks."""
    return boxed_reward(completion, answer, lambda boxed, gold: boxed.strip() == gold.strip())


def paper_math(completion: str, answer: str, truncated: bool = False) -> Reward:
    """The CHORD paper's math reward: 1 for a right boxed answer, 0 for a wrong one in the ``<think>`` format, −0.1
    for a wrong one out of it, and −1 for a response cut at the length limit without an answer.

    Compared with ``math_boxed`` (the reference code's: {−0.1, 0, 0.9, 1}, no length penalty), a right answer is
    worth 1 whatever its format, and running out of tokens is the worst outcome. ``truncated`` comes from the rollout
    callback (a reward function that takes a ``truncated`` argument is told whether the response hit
    ``max_new_tokens``); ``format_ok`` is reported either way.
    """
    boxed = last_boxed(completion)
    accuracy = 1.0 if boxed is not None and answers_match(boxed, answer) else 0.0
    well_formed = think_format_ok(completion)
    if accuracy:
        reward = 1.0
    elif truncated and boxed is None:
        reward = -1.0
    else:
        reward = 0.0 if well_formed else -FORMAT_PENALTY
    return Reward(reward, accuracy, float(well_formed))


def exact_match(completion: str, answer: str) -> float:
    """1 if the boxed answer (or, without a box, the stripped completion) equals the answer string."""
    boxed = last_boxed(completion)
    return float((boxed if boxed is not None else completion).strip() == answer.strip())


def last_tool_calls(text: str) -> list | None:
    """The calls in the last ``<tool_call>...</tool_call>`` block, as a list (one bare call object becomes a list
    of one; a JSON string holding the JSON is decoded once more); None without a closed block or valid JSON."""
    end = text.rfind("</tool_call>")
    start = text.rfind("<tool_call>", 0, end) if end >= 0 else -1
    if start < 0:
        return None
    calls = decode_json(text[start + len("<tool_call>") : end].strip())
    if isinstance(calls, str):
        calls = decode_json(calls)
    if isinstance(calls, dict):
        calls = [calls]
    return calls if isinstance(calls, list) else None


def decode_json(text: str) -> object:
    """``json.loads(text)``, or None if it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def call_multiset(calls: list) -> Counter | None:
    """The calls as a multiset of (name, arguments with sorted keys); None unless every call is an object with a
    string ``name`` and an ``arguments`` field."""
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) and "arguments" in c for c in calls):
        return None
    return Counter((c["name"], json.dumps(c["arguments"], sort_keys=True)) for c in calls)


def tool_call(completion: str, answer: str) -> Reward:
    """The reference's tool-use reward: 1 when the reply's last ``<tool_call>`` block holds exactly the ground
    truth's calls and the reply is in format, else 0.

    ``answer`` is the ground truth's JSON list of ``{"name", "arguments"}`` calls (ToolACE's ``answer`` column, as
    ``python -m lit_chord.data toolace`` writes it). Calls match as multisets of (name, arguments): their order in
    the list and the order of keys inside the arguments do not matter, a repeated call must be repeated, values
    must match in type (``"5"`` is not ``5``). ``accuracy`` is whether the calls match; ``format_ok`` whether the
    reply has exactly one ``<think>`` and one ``</think>``, in that order, ends its reasoning before its first
    ``<tool_call>``, and its last block parses as calls. The reward needs both, as the reference's does.
    """
    expected = decode_json(answer)
    if isinstance(expected, str):
        expected = decode_json(expected)
    if not isinstance(expected, list) or (truth := call_multiset(expected)) is None:
        raise ValueError(f"tool_call: the answer is not a JSON list of {{name, arguments}} calls: {answer[:200]!r}")
    calls = last_tool_calls(completion)
    given = call_multiset(calls) if calls is not None else None
    accuracy = float(given is not None and given == truth)
    well_formed = (
        given is not None
        and think_format_ok(completion)
        and completion.index("</think>") < completion.find("<tool_call>")
    )
    return Reward(float(accuracy and well_formed), accuracy, float(well_formed))
