"""Experiments on the library, kept apart from it: the library never imports this package.

- Worlds: ``tiny_world`` (the demo's tokenizer, model and data in ``data/demo``), ``mini_tasks`` and ``mini_world``
  (the paper in miniature: a small pretrained policy and its tasks in ``data/mini``).
- Suites: ``compare`` (``python -m lit_chord.experiments.compare``: the demo's variants, or ``--suite paper-mini``,
  whose variants and tables are ``paper_mini``).
- Plots: ``plot`` (``python -m lit_chord.experiments.plot``).
"""
