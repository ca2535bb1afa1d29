"""Intervals over seeds, paired differences and verdicts; expected values worked out by hand from a printed t-table."""

from __future__ import annotations

import math

import pytest

from lit_chord.experiments.stats import NO_VALUES, Interval, interval_over, paired_difference, t_interval, verdict

T_4 = 2.776445  # t_{4, 0.975}
T_1 = 12.7062  # t_{1, 0.975}


def test_t_interval_five_values():
    # mean 3, s = √2.5 = 1.5811, s/√5 = √0.5 = 0.70711, half-width 2.776445 · 0.70711 = 1.96324
    interval = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert interval.n == 5
    assert interval.mean == pytest.approx(3.0)
    assert interval.low == pytest.approx(3 - T_4 * math.sqrt(0.5), abs=1e-4)
    assert interval.low == pytest.approx(1.03676, abs=1e-5)
    assert interval.high == pytest.approx(4.96324, abs=1e-5)


def test_t_interval_two_values():
    # mean 1, s = √2, s/√2 = 1: the half-width is t_{1, 0.975} itself
    interval = t_interval([0.0, 2.0])
    assert interval.mean == pytest.approx(1.0)
    assert interval.low == pytest.approx(1 - T_1, abs=1e-4)
    assert interval.high == pytest.approx(1 + T_1, abs=1e-4)


def test_t_interval_other_confidence():
    # t_{4, 0.95} = 2.131847: the 90 % interval of [1..5] is 3 ± 2.131847 · 0.70711 = 3 ± 1.50744
    interval = t_interval([1.0, 2.0, 3.0, 4.0, 5.0], confidence=0.90)
    assert (interval.low, interval.high) == (pytest.approx(1.49256, abs=1e-5), pytest.approx(4.50744, abs=1e-5))


def test_t_interval_one_value_and_equal_values_have_zero_width():
    assert t_interval([0.25]) == Interval(0.25, 0.25, 0.25, 1)
    assert t_interval([0.1] * 5) == Interval(pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1), 5)


def test_t_interval_rejects_no_values_and_bad_confidence():
    with pytest.raises(ValueError, match="at least one value"):
        t_interval([])
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=95)


def test_interval_over_no_values_is_an_empty_cell():
    assert interval_over([]) is NO_VALUES and NO_VALUES.format() == "—"
    assert interval_over([0.25]) == t_interval([0.25])


def test_paired_difference_constant():
    b = {0: 3.0, 1: 7.0, 2: 5.0, 3: 9.0, 4: 1.0}
    a = {seed: value + 2 for seed, value in b.items()}
    difference = paired_difference(a, b)
    assert difference == Interval(2.0, 2.0, 2.0, 5)
    assert difference.excludes_zero


def test_pairing_by_seed_removes_shared_variance():
    """Seeds spread the variants by 10 to 50, but a beats b on every seed by about 1: the paired interval excludes
    zero, while the two per-variant intervals (half-width about 19.6) overlap."""
    b = {0: 10.0, 1: 20.0, 2: 30.0, 3: 40.0, 4: 50.0}
    differences = [1.0, 1.2, 0.8, 1.1, 0.9]
    a = {seed: b[seed] + d for seed, d in zip(b, differences, strict=True)}
    # a - b: mean 1, s = √(0.1/4) = 0.15811, half-width 2.776445 · 0.15811/√5 = 0.19632
    difference = paired_difference(a, b)
    assert difference.mean == pytest.approx(1.0)
    assert difference.low == pytest.approx(0.8037, abs=1e-4)
    assert difference.high == pytest.approx(1.1963, abs=1e-4)
    assert difference.excludes_zero
    unpaired_a, unpaired_b = t_interval(list(a.values())), t_interval(list(b.values()))
    assert unpaired_a.low < unpaired_b.high and unpaired_b.low < unpaired_a.high


def test_paired_difference_uses_the_common_seeds():
    a = {0: 5.0, 1: 6.0, 7: 100.0}
    b = {0: 4.0, 1: 5.0, 9: -100.0}
    assert paired_difference(a, b) == Interval(1.0, 1.0, 1.0, 2)
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: 1.0}, {1: 1.0})


@pytest.mark.parametrize(
    ("low", "high", "paper_sign", "expected"),
    [
        (0.5, 1.5, 1, "agrees"),
        (0.5, 1.5, -1, "disagrees"),
        (-1.5, -0.5, -1, "agrees"),
        (-1.5, -0.5, 1, "disagrees"),
        (-0.5, 1.5, 1, "inconclusive"),
        (-0.5, 1.5, -1, "inconclusive"),
        (0.0, 2.0, 1, "inconclusive"),  # touches zero
        (-2.0, 0.0, -1, "inconclusive"),  # touches zero
    ],
)
def test_verdict(low, high, paper_sign, expected):
    assert verdict(Interval((low + high) / 2, low, high, 5), paper_sign) == expected


def test_verdict_rejects_a_sign_other_than_one():
    with pytest.raises(ValueError, match="paper_sign"):
        verdict(Interval(1.0, 0.5, 1.5, 5), 0)


def test_excludes_zero():
    assert Interval(1.0, 0.5, 1.5, 5).excludes_zero
    assert Interval(-1.0, -1.5, -0.5, 5).excludes_zero
    assert not Interval(1.0, 0.0, 2.0, 5).excludes_zero
    assert not Interval(0.0, -1.0, 1.0, 5).excludes_zero


def test_format():
    # [1..5] scaled by 10: 30 ± 19.630
    assert t_interval([1.0, 2.0, 3.0, 4.0, 5.0]).format(scale=10) == "30.0 ± 19.6"
    assert Interval(0.5, 0.4, 0.6, 5).format() == "50.0 ± 10.0"
    assert Interval(0.5, 0.4, 0.6, 5).format(scale=1, digits=2) == "0.50 ± 0.10"
    assert Interval(0.123, 0.123, 0.123, 1).format() == "12.3"
    assert Interval(math.nan, math.nan, math.nan, 0).format() == "—"
