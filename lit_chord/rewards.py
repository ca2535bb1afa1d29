"""Reward functions: ``reward(completion, answer) -> float``.

``math_boxed`` follows the reference's math workflow: 1 if the last ``\\boxed{}`` in the completion equals the
answer (checked with math-verify, so ``1/2`` and ``0.5`` agree), minus 0.1 when the ``<think>`` format is
broken, giving rewards in {-0.1, 0, 0.9, 1}. ``exact_match`` compares the boxed (or whole) text as a string.
"""

from __future__ import annotations

FORMAT_PENALTY = 0.1


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


def math_boxed(completion: str, answer: str) -> float:
    """Accuracy of the last boxed answer, minus ``FORMAT_PENALTY`` if the <think> tags are malformed."""
    boxed = last_boxed(completion)
    accuracy = 1.0 if boxed is not None and answers_match(boxed, answer) else 0.0
    return accuracy - (0.0 if think_format_ok(completion) else FORMAT_PENALTY)


def exact_match(completion: str, answer: str) -> float:
    """1 if the boxed answer (or, without a box, the stripped completion) equals the answer string."""
    boxed = last_boxed(completion)
    return float((boxed if boxed is not None else completion).strip() == answer.strip())
