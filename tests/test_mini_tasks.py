"""The miniature's tasks: answers by hand, the policy's add steps are the expert's steps, the expert's traces add up
(or slip by exactly one step), and the splits are disjoint."""

from __future__ import annotations

import random
import re

import pytest

from lit_chord.experiments.mini_tasks import (
    GENERAL,
    add_problem,
    add_records,
    add_response,
    expert_trace,
    general_records,
    split,
    sum_problem,
    sum_terms,
)
from lit_chord.rewards import boxed_string


def test_tasks_by_hand():
    assert {task: make("3141") for task, make in GENERAL.items()} == {
        "copy": ("Copy 3 1 4 1.", "3141"),
        "reverse": ("Reverse 3 1 4 1.", "1413"),
        "sort": ("Sort 3 1 4 1.", "1134"),
        "max": ("Largest of 3 1 4 1.", "4"),
        "count": ("How many 1s in 3 1 4 1?", "2"),
    }
    assert add_problem([27, 8]) == ("Add 27 and 8.", "35")
    assert add_problem([3, 1, 4]) == ("Add 3, 1 and 4.", "8")
    assert add_response([3, 1, 4]) == "<think>\n3 plus 1 makes 4, 4 plus 4 makes 8\n</think>\n\\boxed{8}"
    assert sum_problem("3141") == ("Sum 3 1 4 1.", "9") and sum_problem([12, 3]) == ("Sum 12 3.", "15")
    assert sum_terms("Sum 0 0 7 1.") == [0, 0, 7, 1]
    adds = add_records()
    assert len(adds) == 37 * 10 + 1000  # every number below 37 plus every digit; every three digits
    assert all(boxed_string(r["response"], r["answer"]).reward == 1.0 for r in adds)


def test_the_expert_chains_the_policys_own_steps_and_a_slip_is_one_step_off_by_one():
    right = expert_trace("3141", slip=False, rng=random.Random(0))
    assert (
        right == "<think>\n3 plus 1 makes 4, 4 plus 4 makes 8, 8 plus 1 makes 9. So the sum is 9.\n</think>\n\\boxed{9}"
    )
    assert add_response([3, 1, 4]).split("\n")[1] in right  # the policy's add task, word for word
    for seed in range(20):
        wrong = expert_trace("3141", slip=True, rng=random.Random(seed))
        steps = [(int(a), int(b), int(c)) for a, b, c in re.findall(r"(\d+) plus (\d+) makes (\d+)", wrong)]
        errors = [c - a - b for a, b, c in steps]
        assert sorted(abs(e) for e in errors) == [0, 0, 1] and boxed_string(wrong, "9").accuracy == 0.0
        assert all(steps[i + 1][0] == steps[i][2] for i in range(2))  # the wrong total carries on


def test_slips_happen_about_once_in_five_traces():
    from lit_chord.experiments.mini_tasks import expert_demo

    rng = random.Random(0)
    demos = [expert_demo(str(n).zfill(4), rng) for n in range(1000)]
    right = sum(
        boxed_string(d["messages"][1]["content"], sum_problem(str(n).zfill(4))[1]).accuracy for n, d in enumerate(demos)
    )
    assert 760 <= right <= 840  # EXPERT_SLIP = 0.2: 800 ± 13 expected


def test_general_records_and_splits():
    records = general_records(random.Random(0), per_task=30)
    assert all(len(rows) == 30 and all(boxed_string(r["response"], r["answer"]).reward == 1.0 for r in rows)
               for rows in records.values())  # fmt: skip
    assert split(list("abcdef"), {"x": 2, "y": 3}) == {"x": ["a", "b"], "y": ["c", "d", "e"]}
    with pytest.raises(ValueError, match="only 2 problems"):
        split(["a", "b"], {"x": 3})
