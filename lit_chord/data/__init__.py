"""``python -m lit_chord.data``: the paper's data sets, prepared into the files lit_chord trains and evaluates on.

Preparation only: ``openr1`` (expert demonstrations and RL prompts from OpenR1-Math-220k, as the reference makes
them), ``toolace`` (the reference's ToolACE splits) and ``bench`` (held-out sets). Reading the prepared files
stays in ``lit_chord.records``; this package writes what the datamodule reads, in its formats.
"""
