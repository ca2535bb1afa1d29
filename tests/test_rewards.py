import json
import math

import pytest
import torch

from lit_chord.engines import Completion
from lit_chord.rewards import (
    Reward,
    as_reward,
    boxed_string,
    exact_match,
    last_boxed,
    math_boxed,
    think_format_ok,
    tool_call,
)
from lit_chord.rollout_callback import RolloutCallback, rollout_sums


def test_last_boxed_takes_the_last_and_balances_braces():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed{unclosed") is None


@pytest.mark.parametrize(
    ("completion", "answer", "reward", "accuracy", "format_ok"),
    [
        ("<think>\n3+5=8\n</think>\n\\boxed{8}", "8", 1.0, 1.0, 1.0),  # right, well formed
        ("<think>x</think>\\boxed{7}", "8", 0.0, 0.0, 1.0),  # wrong, well formed
        ("\\boxed{8}", "8", 0.9, 1.0, 0.0),  # right, no think tags: reward 1 - 0.1, but the answer is right
        ("nothing", "8", -0.1, 0.0, 0.0),  # wrong and malformed: 0 - 0.1
        ("<think>a</think><think>b</think>\\boxed{8}", "8", 0.9, 1.0, 0.0),  # two <think>: malformed
        ("<think>a</think>\\boxed{0.5}", "1/2", 1.0, 1.0, 1.0),  # math-verify: 0.5 == 1/2
    ],
)
def test_math_boxed(completion, answer, reward, accuracy, format_ok):
    result = math_boxed(completion, answer)
    assert result.reward == pytest.approx(reward)
    assert (result.accuracy, result.format_ok) == (accuracy, format_ok)


def test_think_format_order():
    assert think_format_ok("<think>a</think>")
    assert not think_format_ok("</think>a<think>")


def test_boxed_string_tells_leading_zeros_apart():
    assert math_boxed("<think>x</think>\\boxed{123}", "0123").accuracy == 1.0  # math-verify: the same number
    assert boxed_string("<think>x</think>\\boxed{123}", "0123") == Reward(0.0, 0.0, 1.0)
    assert boxed_string("<think>x</think>\\boxed{0123}", "0123") == Reward(1.0, 1.0, 1.0)
    assert boxed_string("\\boxed{0123}", "0123") == Reward(0.9, 1.0, 0.0)  # right but unformatted: 1 - 0.1


def test_exact_match():
    assert exact_match("\\boxed{ 12 }", "12") == 1.0
    assert exact_match("12", "12") == 1.0
    assert exact_match("\\boxed{13}", "12") == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, Reward(1.0, 1.0, None)),  # a 0/1 reward is its own accuracy
        (0, Reward(0.0, 0.0, None)),
        (0.9, Reward(0.9, 0.0, None)),  # below ACCURACY_THRESHOLD = 1.0: not a right answer
        (1.5, Reward(1.5, 1.0, None)),
        (torch.tensor(1.0), Reward(1.0, 1.0, None)),
        ({"reward": 0.9, "accuracy": 1, "format": 0}, Reward(0.9, 1.0, 0.0)),
        ({"reward": -1.0}, Reward(-1.0, 0.0, None)),
        (Reward(0.5, 1.0, 1.0), Reward(0.5, 1.0, 1.0)),
    ],
)
def test_a_reward_is_normalized_to_its_components(value, expected):
    assert as_reward(value) == expected


@pytest.mark.parametrize(
    "value", ["1.0", None, {"accuracy": 1.0}, {"reward": 1.0, "acc": 1.0}, {"reward": "1"}, math.nan, [1.0]]
)
def test_a_bad_reward_value_is_refused(value):
    with pytest.raises((TypeError, ValueError)):
        as_reward(value)


def test_rollout_accuracy_counts_right_answers_and_format_is_its_own_metric(tiny_world):
    """Four completions: right + tags, right without tags (reward 0.9), wrong + tags, wrong without tags.
    Before, accuracy was reward >= 1 (1 of 4); now it is 2 of 4 right answers, and 2 of 4 are well formed."""
    from transformers import AutoTokenizer

    callback = RolloutCallback()  # math_boxed
    callback.tokenizer = AutoTokenizer.from_pretrained(tiny_world / "model")
    texts = ["<think>a</think>\\boxed{12}", "\\boxed{12}", "<think>a</think>\\boxed{21}", "\\boxed{21}"]
    group = [Completion(callback.tokenizer(t)["input_ids"], True) for t in texts]
    scores = callback.score([group], ["12"])
    assert scores.rewards.tolist() == pytest.approx([1.0, 0.9, 0.0, -0.1])
    metrics = rollout_sums(scores, group, group_size=4).metrics()
    assert metrics["rollout/accuracy"] == 0.5  # (1 + 1 + 0 + 0) / 4
    assert metrics["rollout/format_ok"] == 0.5  # (1 + 0 + 1 + 0) / 4
    assert metrics["rollout/reward_mean"] == pytest.approx((1.0 + 0.9 + 0.0 - 0.1) / 4)


def test_a_plain_number_reward_logs_no_format(tiny_world):
    from transformers import AutoTokenizer

    callback = RolloutCallback(reward_fn=exact_match)
    callback.tokenizer = AutoTokenizer.from_pretrained(tiny_world / "model")
    group = [Completion(callback.tokenizer(t)["input_ids"], True) for t in ["\\boxed{12}", "\\boxed{1}"]]
    metrics = rollout_sums(callback.score([group], ["12"]), group, group_size=2).metrics()
    assert metrics["rollout/accuracy"] == 0.5 and "rollout/format_ok" not in metrics


@pytest.mark.parametrize(
    ("completion", "truncated", "reward", "accuracy", "format_ok"),
    [
        ("<think>x</think>\\boxed{12}", False, 1.0, 1.0, 1.0),  # right
        ("\\boxed{12}", False, 1.0, 1.0, 0.0),  # right without tags: still 1 (math_boxed gives 0.9)
        ("<think>x</think>\\boxed{21}", False, 0.0, 0.0, 1.0),  # wrong, well formed
        ("\\boxed{21}", False, -0.1, 0.0, 0.0),  # wrong, malformed
        ("<think>x and on and on", True, -1.0, 0.0, 0.0),  # cut at the length limit with no answer
        ("<think>x</think>\\boxed{21} and on", True, 0.0, 0.0, 1.0),  # cut, but it had answered (wrongly)
        ("<think>x</think>\\boxed{12} and on", True, 1.0, 1.0, 1.0),  # cut after a right answer
    ],
)
def test_paper_math(completion, truncated, reward, accuracy, format_ok):
    from lit_chord.rewards import paper_math

    assert paper_math(completion, "12", truncated=truncated) == Reward(reward, accuracy, format_ok)


def test_a_reward_that_takes_truncated_is_told(tiny_world):
    from transformers import AutoTokenizer

    from lit_chord.rewards import paper_math

    callback = RolloutCallback(reward_fn=paper_math)
    callback.tokenizer = AutoTokenizer.from_pretrained(tiny_world / "model")
    ids = callback.tokenizer("<think>x")["input_ids"]
    scores = callback.score([[Completion(ids, finished=False), Completion(ids, finished=True)]], ["12"])
    assert scores.rewards.tolist() == pytest.approx([-1.0, -0.1])  # truncated without answer; finished, malformed


# The ground truth of one ToolACE-style row: two calls, arguments of several types.
WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}'
SEND = '{"name": "send", "arguments": {"to": "Bo"}}'
TRUTH = f"[{WEATHER}, {SEND}]"
RIGHT = f'[{SEND}, {{"name": "get_weather", "arguments": {{"days": 3, "city": "Paris"}}}}]'
AS_STRING = RIGHT.replace("3", '"3"')
NO_DAYS = RIGHT.replace(', "city": "Paris"', "").replace('"days": 3', '"city": "Paris"')


@pytest.mark.parametrize(
    "completion, reward, accuracy, format_ok",
    [
        # the same calls in another order, argument keys in another order: a match
        (f"<think>weather, then mail</think> <tool_call>{RIGHT}</tool_call>", 1.0, 1.0, 1.0),
        # wrong argument value (3 -> 4), wrong argument type ("3"), a missing argument, a wrong name
        (f"<think>x</think><tool_call>{RIGHT.replace('3', '4')}</tool_call>", 0.0, 0.0, 1.0),
        (f"<think>x</think><tool_call>{AS_STRING}</tool_call>", 0.0, 0.0, 1.0),
        (f"<think>x</think><tool_call>{NO_DAYS}</tool_call>", 0.0, 0.0, 1.0),
        (f"<think>x</think><tool_call>{RIGHT.replace('send', 'sent')}</tool_call>", 0.0, 0.0, 1.0),
        # one call short, and one call repeated: multisets differ
        ('<think>x</think><tool_call>[{"name": "send", "arguments": {"to": "Bo"}}]</tool_call>', 0.0, 0.0, 1.0),
        (
            '<think>x</think><tool_call>[{"name": "send", "arguments": {"to": "Bo"}}, '
            '{"name": "send", "arguments": {"to": "Bo"}}, {"name": "get_weather", "arguments": {"city": "Paris", '
            '"days": 3}}]</tool_call>',
            0.0,
            0.0,
            1.0,
        ),
        # right calls without the reasoning, reasoning after the call, two think blocks: right but out of format
        (f"<tool_call>{RIGHT}</tool_call>", 0.0, 1.0, 0.0),
        (f"<tool_call>{RIGHT}</tool_call><think>x</think>", 0.0, 1.0, 0.0),
        (f"<think>a</think><think>b</think><tool_call>{RIGHT}</tool_call>", 0.0, 1.0, 0.0),
        # malformed: not JSON, unclosed block, no block, a call without arguments
        ("<think>x</think><tool_call>[{name: send}]</tool_call>", 0.0, 0.0, 0.0),
        (f"<think>x</think><tool_call>{RIGHT}", 0.0, 0.0, 0.0),
        ("<think>x</think>I would call send.", 0.0, 0.0, 0.0),
        ('<think>x</think><tool_call>[{"name": "send"}]</tool_call>', 0.0, 0.0, 0.0),
        # the last block counts; a JSON-encoded string of the list is decoded once more
        (f"<think>x</think><tool_call>[]</tool_call> no: <tool_call>{RIGHT}</tool_call>", 1.0, 1.0, 1.0),
        (f"<think>x</think><tool_call>{json.dumps(RIGHT)}</tool_call>", 1.0, 1.0, 1.0),
    ],
)
def test_tool_call(completion, reward, accuracy, format_ok):
    assert tool_call(completion, TRUTH) == Reward(reward, accuracy, format_ok)


def test_tool_call_single_object_and_empty_lists():
    one = '[{"name": "send", "arguments": {"to": "Bo"}}]'
    assert tool_call('<think>x</think><tool_call>{"name": "send", "arguments": {"to": "Bo"}}</tool_call>', one).reward
    assert tool_call("<think>no call needed</think><tool_call>[]</tool_call>", "[]").reward == 1.0
    assert tool_call(f"<think>x</think><tool_call>{one}</tool_call>", "[]").reward == 0.0
    with pytest.raises(ValueError, match="not a JSON list"):
        tool_call("<think>x</think><tool_call>[]</tool_call>", '{"name": "send"}')
