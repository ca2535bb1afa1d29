"""Intervals and verdicts for the comparison suites: a mean over seeds, a paired difference, a paper's claim.

A suite runs each variant over a handful of seeds (five or so), so every number it reports carries the spread of
those seeds. With that few, the interval comes from Student's t (mean ± t_{n-1} · s/√n), not from a bootstrap:
resampling five values sees only those five, and its percentile intervals come out too narrow at n = 5.

Two variants are compared seed by seed. Seed ``s`` fixes more than the initial weights: the data order and the
validation samples are the same for every variant run with it, so much of the seed-to-seed variance is shared, and
the differences ``a[s] - b[s]`` cancel it. Their interval can exclude zero where the two per-variant intervals
overlap. A paper's claim is then a sign of that difference, and ``verdict`` says whether the interval agrees with it,
disagrees with it, or cannot tell.

scipy (the ``plot`` extra) is imported only where a t quantile is needed, so importing this module stays light.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["agrees", "disagrees", "inconclusive"]


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and its confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"12.3 ± 4.5"`` (mean ± half-width, both times ``scale``); ``"12.3"`` for one value, ``"—"`` for none."""
        if self.n == 0:
            return "—"
        mean = f"{self.mean * scale:.{digits}f}"
        if self.n == 1:
            return mean
        return f"{mean} ± {(self.high - self.low) / 2 * scale:.{digits}f}"

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


NO_VALUES = Interval(float("nan"), float("nan"), float("nan"), 0)  # a cell with no values; formats as "—"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean ± t_{n-1, (1+confidence)/2} · s/√n, ``s`` the sample standard deviation (n - 1); one value gives a
    zero-width interval, equal values too."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    n = len(values)
    if n == 0:
        raise ValueError("t_interval needs at least one value, got none")
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(mean, mean, mean, 1)
    from scipy.stats import t  # type: ignore[import-untyped]

    half_width = float(t.ppf((1 + confidence) / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half_width, mean + half_width, n)


def interval_over(values: Sequence[float]) -> Interval:
    """``t_interval`` of ``values``, or ``NO_VALUES`` when there are none (a table cell no run filled)."""
    return t_interval(values) if values else NO_VALUES


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> Interval:
    """The t-interval of ``a[s] - b[s]`` over the seeds ``s`` that both have (a seed only one has is left out)."""
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        raise ValueError(f"no seed in common: a has {sorted(a)}, b has {sorted(b)}")
    return t_interval([a[s] - b[s] for s in seeds], confidence)


def verdict(difference: Interval, paper_sign: int) -> Verdict:
    """Whether ``difference`` bears out a paper's claim that it has sign ``paper_sign`` (+1: the first variant is
    better, -1: worse): the whole interval on that side of zero agrees, the whole of it on the other side disagrees,
    anything else (an interval touching zero included) is inconclusive."""
    if paper_sign not in (1, -1):
        raise ValueError(f"paper_sign must be +1 or -1, got {paper_sign}")
    if difference.low > 0:
        return "agrees" if paper_sign == 1 else "disagrees"
    if difference.high < 0:
        return "agrees" if paper_sign == -1 else "disagrees"
    return "inconclusive"
