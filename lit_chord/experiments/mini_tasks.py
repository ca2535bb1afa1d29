"""The tasks of the paper in miniature: general abilities a tiny policy is taught first, a target task it is weak at,
a transfer task, and an off-policy expert for the target whose traces are longer, phrased otherwise, not always
right, and *worth imitating*.

Why this shape: the paper's claims rest on a premise, that SFT on the expert's data lifts the target (Qwen2.5-7B's
AMC 43.8 → 55.9 with SFT-best) because the expert reasons in a way the policy can follow but does not use. The world
builds that premise in. The policy already reasons step by step where it was taught to: its ``add`` task adds a
digit to a number (``27 plus 8 makes 35``) or three digits in two steps (``3 plus 1 makes 4, 4 plus 4 makes 8``), as
an instruct model reasons on familiar problems. On the target, the sum of four digits, it guesses the total in one
step and is mostly wrong. The expert chains the steps the policy knows (``3 plus 1 makes 4, 4 plus 4 makes 8, 8 plus
1 makes 9``), so imitation teaches it to use, and extend, a way of reasoning it has; RL alone has to find it by
sampling (the policy never writes a chain for a sum). The expert slips on one step in ``EXPERT_SLIP`` of
its traces, as R1's traces are not all right either.

The general tasks (copy, reverse, sort, max, count, add) stand for what the policy knew before (retention: they can
only be lost). The transfer task, sums of ``TRANSFER_LENGTH`` digits, a length the expert never shows, stands for
the paper's MMLU-Pro: outside the expert's data, but its way of reasoning solves it, so general ability can rise as
well as fall.

Every record is a chat prompt in the paper's format: reasoning in ``<think>`` tags, the answer in ``\\boxed{}``,
scored by ``lit_chord.rewards.boxed_string``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

EXPERT_SLIP = 0.2  # share of the expert's traces with one wrong step (and so a wrong answer)
TARGET_LENGTH = 4  # digits in a target sum
TRANSFER_LENGTH = 3  # digits in a transfer sum: never in the expert's data
ADD_TOTALS = 37  # the add task covers every number below this plus every digit: each step of a 4-digit chain


def spaced(digits: str) -> str:
    return " ".join(digits)


# General tasks: (prompt, answer) from a digit string. The answers are what the policy must get right.
GENERAL: dict[str, Callable[[str], tuple[str, str]]] = {
    "copy": lambda d: (f"Copy {spaced(d)}.", d),
    "reverse": lambda d: (f"Reverse {spaced(d)}.", d[::-1]),
    "sort": lambda d: (f"Sort {spaced(d)}.", "".join(sorted(d))),
    "max": lambda d: (f"Largest of {spaced(d)}.", max(d)),
    "count": lambda d: (f"How many 1s in {spaced(d)}?", str(d.count("1"))),
}
THOUGHT: dict[str, Callable[[str], str]] = {
    "copy": lambda d: "copy",
    "reverse": lambda d: "backwards",
    "sort": lambda d: "order",
    "max": lambda d: "largest",
    "count": lambda d: "count",
}


def add_problem(terms: list[int]) -> tuple[str, str]:
    """The step skill: a number plus a digit (``Add 27 and 8.``), or three digits (``Add 3, 1 and 4.``)."""
    listed = " and ".join([", ".join(map(str, terms[:-1])), str(terms[-1])])
    return f"Add {listed}.", str(sum(terms))


def chain(terms: list[int]) -> str:
    """The terms added one at a time: ``3 plus 1 makes 4, 4 plus 4 makes 8``."""
    total, steps = terms[0], []
    for term in terms[1:]:
        steps.append(f"{total} plus {term} makes {total + term}")
        total += term
    return ", ".join(steps)


def add_response(terms: list[int]) -> str:
    """The one general task that thinks in steps, the same steps the expert chains."""
    return f"<think>\n{chain(terms)}\n</think>\n\\boxed{{{sum(terms)}}}"


def terms_of(digits: str | list[int]) -> list[int]:
    """The numbers to add: a digit string's digits (``"3141"`` -> ``[3, 1, 4, 1]``), or the terms as given."""
    return [int(c) for c in digits] if isinstance(digits, str) else digits


def sum_problem(digits: str | list[int]) -> tuple[str, str]:
    """A sum: of digits (the target, ``"3141"``) or of any terms (``[12, 3, 4]``)."""
    terms = terms_of(digits)
    return f"Sum {' '.join(map(str, terms))}.", str(sum(terms))


def sum_terms(problem: str) -> list[int]:
    """The terms of a ``sum_problem`` text: ``"Sum 3 1 4 1."`` -> ``[3, 1, 4, 1]``."""
    return [int(t) for t in problem.removeprefix("Sum ").removesuffix(".").split()]


def policy_response(thought: str, answer: str) -> str:
    """The policy's own style: a one-word thought, then the boxed answer."""
    return f"<think>\n{thought}\n</think>\n\\boxed{{{answer}}}"


def expert_trace(digits: str | list[int], slip: bool, rng: random.Random) -> str:
    """The expert's style: the terms added one at a time, each step in the words of the policy's ``add`` task. With
    ``slip``, one step's total is off by one, and the error carries into the answer."""
    terms = terms_of(digits)
    total, steps = terms[0], []
    wrong_at = rng.randrange(1, len(terms)) if slip else -1
    for index in range(1, len(terms)):
        before, digit = total, terms[index]
        total += digit
        if index == wrong_at:
            total += 1 if total == 0 else rng.choice((-1, 1))
        steps.append(f"{before} plus {digit} makes {total}")
    body = ", ".join(steps) + f". So the sum is {total}."
    return f"<think>\n{body}\n</think>\n\\boxed{{{total}}}"


def expert_demo(digits: str, rng: random.Random) -> dict:
    """One demonstration as chat ``messages``; it slips with probability ``EXPERT_SLIP``."""
    trace = expert_trace(digits, rng.random() < EXPERT_SLIP, rng)
    return {"messages": [{"role": "user", "content": sum_problem(digits)[0]}, {"role": "assistant", "content": trace}]}


def digit_strings(rng: random.Random, length: int, count: int) -> list[str]:
    """``count`` distinct random digit strings of ``length`` (all of them if fewer exist)."""
    pool = 10**length
    picks = rng.sample(range(pool), min(count, pool))
    return [str(n).zfill(length) for n in picks]


def general_records(rng: random.Random, per_task: int, length: int = 4) -> dict[str, list[dict]]:
    """Per digit-string task, ``per_task`` records ``{"problem", "answer", "response"}`` in the policy's style."""
    records = {}
    for task, make in GENERAL.items():
        rows = []
        for digits in digit_strings(rng, length, per_task):
            problem, answer = make(digits)
            rows.append(
                {"problem": problem, "answer": answer, "response": policy_response(THOUGHT[task](digits), answer)}
            )
        records[task] = rows
    return records


def add_records() -> list[dict]:
    """Every ``add`` problem, in the policy's style: each number below ``ADD_TOTALS`` plus each digit, and every three
    digits."""
    pairs = [[number, digit] for number in range(ADD_TOTALS) for digit in range(10)]
    triples = [terms_of(str(n).zfill(3)) for n in range(1000)]
    rows = []
    for terms in pairs + triples:
        problem, answer = add_problem(terms)
        rows.append({"problem": problem, "answer": answer, "response": add_response(terms)})
    return rows


def as_prompt(digits: str) -> dict:
    return dict(zip(("problem", "answer"), sum_problem(digits), strict=True))


def split(strings: list[str], sizes: dict[str, int]) -> dict[str, list[str]]:
    """Consecutive disjoint slices of ``strings``, one per name, in order."""
    if len(strings) < sum(sizes.values()):
        raise ValueError(f"only {len(strings)} problems for {sizes}")
    out, start = {}, 0
    for name, size in sizes.items():
        out[name], start = strings[start : start + size], start + size
    return out
