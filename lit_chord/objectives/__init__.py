"""One file per algorithm, chosen in the config by ``class_path`` (``model.objective``):

    grpo.Grpo    on-policy RL, and the RL half the others share (clips, aggregation, entropy bonus, KL)
    chord.Chord  GRPO + μ·SFT on an expert stream, μ scheduled, expert tokens weighted (CHORD-μ, CHORD-φ)
    luffy.Luffy  GRPO whose groups hold the expert's trace, trained with a shaped loss (LUFFY)
    sft.Sft      SFT on the expert stream alone, without rollouts

A new algorithm is a file here with a subclass of ``Objective`` (its ``needs`` and its ``loss``, composed of
``lit_chord.loss``'s pieces), a config that names it, and a test file.
"""

from lit_chord.objectives.base import LossInputs, LossOutput, Needs, Objective, as_config
from lit_chord.objectives.chord import Chord
from lit_chord.objectives.grpo import Grpo
from lit_chord.objectives.luffy import Luffy
from lit_chord.objectives.sft import Sft

__all__ = ["Chord", "Grpo", "LossInputs", "LossOutput", "Luffy", "Needs", "Objective", "Sft", "as_config"]
