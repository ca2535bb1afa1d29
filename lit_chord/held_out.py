"""The held-out sets: their names (``val_set_sources``), and each rank's share of one (``HeldOutShard``), so that
every prompt is scored once across ranks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import IterableDataset

from lit_chord.batch import Prompt, ValBatch

# HeldOutShard has a length (progress bars, fractional limit_val_batches) and its loaders use no worker processes,
# so Lightning's warning that workers could make an iterable dataset's length inaccurate does not apply.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


class HeldOutShard(IterableDataset):
    """One rank's share of a held-out set as ``ValBatch``es: as many batches, of the same sizes, on every rank.

    Why an ``IterableDataset``: Lightning puts a ``DistributedSampler`` into map-style loaders (unless the trainer
    sets ``use_distributed_sampler=False``), which shards a rank's share a second time and pads it by repeating
    prompts, so some prompts were scored twice and others never. Iterable datasets it leaves alone: this split is
    the only one, whatever the trainer's flags. Rank r takes a contiguous block (the first ``len % world_size``
    ranks one prompt more); a shorter block ends with a padding row, the set's first prompt, generated (the ranks'
    collectives stay in step) but not counted. Contiguous blocks put the set's first prompts on rank 0, where the
    sample table reads them, and keep each batch's indices consecutive, which the per-prompt seeds rely on.
    """

    def __init__(self, prompts: list[Prompt], rank: int, world_size: int, batch_size: int) -> None:
        per_rank, extra = divmod(len(prompts), world_size)
        start = rank * per_rank + min(rank, extra)
        self.indices = list(range(start, start + per_rank + (rank < extra)))
        self.rows = per_rank + (extra > 0)  # the largest share: every rank's row count
        self.prompts, self.batch_size = prompts, batch_size

    def __len__(self) -> int:
        return math.ceil(self.rows / self.batch_size)

    def __iter__(self) -> Iterator[ValBatch]:
        padding = self.rows - len(self.indices)
        indices, counted = self.indices + [0] * padding, [True] * len(self.indices) + [False] * padding
        for first in range(0, self.rows, self.batch_size):
            rows = slice(first, first + self.batch_size)
            yield ValBatch([self.prompts[i] for i in indices[rows]], indices=indices[rows], counted=counted[rows])


def val_set_sources(val_data: str | list[str] | dict[str, str] | None) -> dict[str, str]:
    """Name each held-out source: a single one is "heldout", a list's by file stem, a mapping's by its keys."""
    if not val_data:
        return {}
    if isinstance(val_data, str):
        return {"heldout": val_data}
    if isinstance(val_data, dict):
        named = dict(val_data)
    else:
        named = {}
        for source in val_data:
            name = Path(source.partition(":")[0]).stem  # "data/math500.jsonl" -> "math500", "org/ds:test" -> "ds"
            if name in named:
                raise ValueError(
                    f"data.val_data: {named[name]!r} and {source!r} would both be named {name!r}; "
                    "name the sets with a mapping instead, e.g. {name_a: path_a, name_b: path_b}"
                )
            named[name] = source
    for name in named:
        if not name or "/" in name:
            raise ValueError(f"data.val_data: set name {name!r} must be non-empty and without '/'")
    return named
