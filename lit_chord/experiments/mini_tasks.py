"""The tasks of the paper in miniature: general abilities a tiny policy is taught first, a target task it is weak at,
and an off-policy expert for that task whose traces are longer, phrased otherwise, and not always right.

Why: the demo (``tiny_world``) trains a model from scratch on one task, so it cannot show what the paper is about,
whether mixing SFT on another model's traces into RL lifts a target task without destroying what an instruct
policy already knew. Here the digit tasks (copy, reverse, sort, max, count, add) stand for that prior knowledge
(the paper's MMLU-Pro column), the multi-step sum of four digits for the math the paper trains on, and the expert
for DeepSeek-R1: its traces spell the sum out step by step (R1's traces are ~9× the original policy's length in the
paper; these are ~4× in tokens), while the policy's own style is a one-word thought (one sum in words for ``add``). The
expert slips on one step in ``EXPERT_SLIP`` of its traces, as R1's traces are not all right either; a slip is a
running total off by one.

Every record is a chat prompt in the paper's format: reasoning in ``<think>`` tags, the answer in ``\\boxed{}``,
scored by ``lit_chord.rewards.math_boxed``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

DIGITS = "0123456789"
EXPERT_SLIP = 0.2  # share of the expert's target traces with one wrong step (and so a wrong answer)


def spaced(digits: str) -> str:
    return " ".join(digits)


# General tasks: (prompt, answer) from a digit string. The answers are what the policy must get right.
GENERAL: dict[str, Callable[[str], tuple[str, str]]] = {
    "copy": lambda d: (f"Copy {spaced(d)}.", d),
    "reverse": lambda d: (f"Reverse {spaced(d)}.", d[::-1]),
    "sort": lambda d: (f"Sort {spaced(d)}.", "".join(sorted(d))),
    "max": lambda d: (f"Largest of {spaced(d)}.", max(d)),
    "count": lambda d: (f"How many 1s in {spaced(d)}?", str(d.count("1"))),
    "add": lambda d: (f"Add {d[0]} and {d[1]}.", str(int(d[0]) + int(d[1]))),
}
THOUGHT: dict[str, Callable[[str], str]] = {
    "copy": lambda d: "copy",
    "reverse": lambda d: "backwards",
    "sort": lambda d: "order",
    "max": lambda d: "largest",
    "count": lambda d: "count",
    # The one general task that thinks in words: the policy knows the words the expert uses ("plus", "makes") and
    # single-digit sums, as an instruct model knows the words of R1's traces; it has never chained them.
    "add": lambda d: f"{d[0]} plus {d[1]} makes {int(d[0]) + int(d[1])}",
}


def target_problem(digits: str) -> tuple[str, str]:
    """The target task: the sum of four digits, a multi-step addition."""
    return f"Sum {spaced(digits)}.", str(sum(int(c) for c in digits))


def target_digits(problem: str) -> str:
    """The digits of a ``target_problem`` text: ``"Sum 3 1 4 1."`` -> ``"3141"``."""
    return problem.removeprefix("Sum ").removesuffix(".").replace(" ", "")


def policy_response(task: str, answer: str, digits: str = "") -> str:
    """The policy's own style: a terse thought (one word, or one sum for ``add``), then the boxed answer."""
    thought = THOUGHT[task](digits) if task in THOUGHT else "sum"
    return f"<think>\n{thought}\n</think>\n\\boxed{{{answer}}}"


def expert_trace(digits: str, slip: bool, rng: random.Random) -> str:
    """The expert's style on the target task: every running total spelled out. With ``slip``, one step's total is
    off by one, and the error carries into the answer."""
    total, steps = 0, []
    wrong_at = rng.randrange(len(digits)) if slip else -1
    for index, digit in enumerate(digits):
        total += int(digit) + (rng.choice((-1, 1)) if index == wrong_at else 0)
        steps.append(f"plus {digit} makes {total}")
    body = "Start from zero. " + ", ".join(steps) + f". So the sum is {total}."
    return f"<think>\n{body}\n</think>\n\\boxed{{{total}}}"


def digit_strings(rng: random.Random, length: int, count: int) -> list[str]:
    """``count`` distinct random digit strings of ``length`` (all of them if fewer exist)."""
    pool = 10**length
    picks = rng.sample(range(pool), min(count, pool))
    return [str(n).zfill(length) for n in picks]


def general_records(rng: random.Random, per_task: int, length: int = 4) -> dict[str, list[dict]]:
    """Per general task, ``per_task`` records ``{"problem", "answer", "response"}`` in the policy's style."""
    records = {}
    for task, make in GENERAL.items():
        rows = []
        for digits in digit_strings(rng, length, per_task):
            problem, answer = make(digits)
            rows.append({"problem": problem, "answer": answer, "response": policy_response(task, answer, digits)})
        records[task] = rows
    return records


def target_splits(
    rng: random.Random, expert: int = 500, rl: int = 2000, heldout: int = 200
) -> tuple[list[dict], list[dict], list[dict]]:
    """Disjoint target-task problems: expert demonstrations (``messages``), RL prompts and held-out prompts
    (``problem``/``answer``), as the paper's 5k SFT / 20k RL split with no overlap (10⁴ four-digit strings)."""
    strings = digit_strings(rng, 4, expert + rl + heldout)
    if len(strings) < expert + rl + heldout:
        raise ValueError(f"only {len(strings)} four-digit problems for {expert} + {rl} + {heldout}")
    demos = []
    for digits in strings[:expert]:
        problem, _ = target_problem(digits)
        trace = expert_trace(digits, rng.random() < EXPERT_SLIP, rng)
        demos.append({"messages": [{"role": "user", "content": problem}, {"role": "assistant", "content": trace}]})
    as_prompt = [dict(zip(("problem", "answer"), target_problem(d), strict=True)) for d in strings[expert:]]
    return demos, as_prompt[:rl], as_prompt[rl:]
