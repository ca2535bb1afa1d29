import pytest

from lit_chord.rewards import exact_match, last_boxed, math_boxed, think_format_ok


def test_last_boxed_takes_the_last_and_balances_braces():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed{unclosed") is None


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("<think>\n3+5=8\n</think>\n\\boxed{8}", "8", 1.0),  # right, well formed
        ("<think>x</think>\\boxed{7}", "8", 0.0),  # wrong, well formed
        ("\\boxed{8}", "8", 0.9),  # right, no think tags: 1 - 0.1
        ("nothing", "8", -0.1),  # wrong and malformed: 0 - 0.1
        ("<think>a</think><think>b</think>\\boxed{8}", "8", 0.9),  # two <think>: malformed
        ("<think>a</think>\\boxed{0.5}", "1/2", 1.0),  # math-verify: 0.5 == 1/2
    ],
)
def test_math_boxed(completion, answer, expected):
    assert math_boxed(completion, answer) == pytest.approx(expected)


def test_think_format_order():
    assert think_format_ok("<think>a</think>")
    assert not think_format_ok("</think>a<think>")


def test_exact_match():
    assert exact_match("\\boxed{ 12 }", "12") == 1.0
    assert exact_match("12", "12") == 1.0
    assert exact_match("\\boxed{13}", "12") == 0.0
