"""The miniature's tasks: general answers by hand, the expert's traces add up (or slip by exactly one step)."""

from __future__ import annotations

import random
import re

from lit_chord.experiments.mini_tasks import (
    GENERAL,
    expert_trace,
    general_records,
    target_digits,
    target_problem,
    target_splits,
)
from lit_chord.rewards import math_boxed


def test_general_tasks_by_hand():
    assert {task: make("3141") for task, make in GENERAL.items()} == {
        "copy": ("Copy 3 1 4 1.", "3141"),
        "reverse": ("Reverse 3 1 4 1.", "1413"),
        "sort": ("Sort 3 1 4 1.", "1134"),
        "max": ("Largest of 3 1 4 1.", "4"),
        "count": ("How many 1s in 3 1 4 1?", "2"),
        "add": ("Add 3 and 1.", "4"),
    }
    assert target_problem("3141") == ("Sum 3 1 4 1.", "9")  # 3 + 1 + 4 + 1
    assert target_digits("Sum 3 1 4 1.") == "3141" and target_digits(target_problem("0071")[0]) == "0071"


def test_the_expert_spells_out_each_total_and_a_slip_is_one_step_off_by_one():
    right = expert_trace("3141", slip=False, rng=random.Random(0))
    assert right == (
        "<think>\nStart from zero. plus 3 makes 3, plus 1 makes 4, plus 4 makes 8, plus 1 makes 9. "
        "So the sum is 9.\n</think>\n\\boxed{9}"
    )
    assert math_boxed(right, "9").reward == 1.0
    for seed in range(20):
        wrong = expert_trace("3141", slip=True, rng=random.Random(seed))
        totals = [int(t) for t in re.findall(r"makes (\d+)", wrong)]
        steps = [b - a for a, b in zip([0, *totals], totals, strict=False)]
        assert sorted(abs(s - d) for s, d in zip(steps, [3, 1, 4, 1], strict=True)) == [0, 0, 0, 1]
        assert math_boxed(wrong, "9").accuracy == 0.0


def test_splits_are_disjoint_and_the_expert_is_right_about_four_times_in_five():
    demos, rl, heldout = target_splits(random.Random(0), expert=500, rl=2000, heldout=200)
    demo_problems = {d["messages"][0]["content"] for d in demos}
    assert (len(demo_problems), len({r["problem"] for r in rl}), len({r["problem"] for r in heldout})) == (
        500,
        2000,
        200,
    )
    assert not demo_problems & {r["problem"] for r in rl + heldout} and not {r["problem"] for r in rl} & {
        r["problem"] for r in heldout
    }
    right = sum(
        math_boxed(
            d["messages"][1]["content"], target_problem(d["messages"][0]["content"][4:11].replace(" ", ""))[1]
        ).accuracy
        for d in demos
    )
    assert 0.75 < right / 500 < 0.85  # EXPERT_SLIP = 0.2 of 500 draws: 400 ± 9 expected
    records = general_records(random.Random(0), per_task=30)
    assert all(len(rows) == 30 and all(math_boxed(r["response"], r["answer"]).reward == 1.0 for r in rows)
               for rows in records.values())  # fmt: skip
