"""Learning-rate schedules whose length is the run's: ``trainer.max_steps`` unless one is given.

torch's ``CosineAnnealingLR`` needs its ``T_max`` in the config, so a config that says "decay over the run" pins a
number, and ``--trainer.max_steps 20`` then barely decays. ``CosineDecay`` with ``total_steps: null`` is told the run's
length when the module configures its optimizer (``lit_chord.optimization.fit_run_length``), so a shorter or longer
run decays fully. A pinned ``T_max`` that differs from ``max_steps`` gets a warning there.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class CosineDecay(LambdaLR):
    def __init__(self, optimizer: Optimizer, min_ratio: float = 0.1, total_steps: int | None = None) -> None:
        """Half-cosine from the optimizer's learning rate down to ``min_ratio`` times it, then flat.

        Args:
            optimizer: The optimizer whose learning rates are scaled.
            min_ratio: The final learning rate as a fraction of the initial one, in [0, 1].
            total_steps: Steps of the decay; None follows ``trainer.max_steps``.
        """
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must lie in [0, 1], got {min_ratio}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 or null, got {total_steps}")
        self.min_ratio, self.total_steps = min_ratio, total_steps
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """The learning rate after ``step`` scheduler steps, as a fraction of the initial one."""
        if self.total_steps is None:
            return 1.0  # not yet told the run's length (before configure_optimizers has run)
        progress = min(step, self.total_steps) / self.total_steps
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def follow_run_length(self, max_steps: int) -> None:
        """Take the run's length when none was given."""
        if self.total_steps is None and max_steps > 0:
            self.total_steps = max_steps
