"""Experiments on the library, kept apart from it: the library never imports this package.

- Worlds: ``tiny_world`` (the demo's tokenizer, model and data in ``data/demo``), ``mini_tasks`` and ``mini_world``
  (the paper in miniature: a small pretrained policy and its tasks in ``data/mini``).
- Suites: ``compare`` (``python -m lit_chord.experiments.compare``: the demo's variants, or ``--suite paper-mini``,
  whose tuning and reporting phases are ``paper_mini``), both running each variant through ``runner``. The paper-mini
  report reads runs through ``suite_scores`` and judges them in ``verdicts`` (preconditions, tables, claims), with
  ``stats`` (t-intervals, paired differences).
- Plots: ``plot`` (``python -m lit_chord.experiments.plot``). Plots and statistics need the ``plot`` extra
  (matplotlib, scipy).

Imports go one way, with no cycle: compare -> paper_mini -> verdicts -> suite_scores, stats; paper_mini, verdicts ->
runner, plot; mini_world -> mini_tasks, tiny_world, lit_chord.rewards. The suites reach the library only through
``python -m lit_chord fit`` subprocesses. Tests and ``bench/`` may import this package (the ``tiny_world`` fixture);
``lit_chord`` itself may not.
"""
