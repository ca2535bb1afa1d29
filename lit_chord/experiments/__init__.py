"""Experiments on the library, kept apart from it: the library never imports this package.

- Worlds: ``tiny_world`` (the demo's tokenizer, model and data in ``data/demo``), ``mini_tasks`` and ``mini_world``
  (the paper in miniature: a small pretrained policy and its tasks in ``data/mini``).
- Suites: ``compare`` (``python -m lit_chord.experiments.compare``: the demo's variants, or ``--suite paper-mini``,
  whose variants and tables are ``paper_mini``), both running each variant through ``runner``.
- Plots: ``plot`` (``python -m lit_chord.experiments.plot``), which needs the ``plot`` extra (matplotlib).

Imports go one way, with no cycle: compare -> paper_mini -> runner; compare, paper_mini -> plot; mini_world ->
mini_tasks, tiny_world, lit_chord.rewards. The suites reach the library only through ``python -m lit_chord fit``
subprocesses. Tests and ``bench/`` may import this package (the ``tiny_world`` fixture); ``lit_chord`` itself may not.
"""
