"""Micro-batches by token budget: rows packed so that each pass's padded size, rows × longest row, stays within N.

Why: a pass over right-padded rows costs rows × longest-row tokens, in compute and in activation memory. Cut in
arrival order into a fixed number of rows, a CHORD step lets one long expert row (R1 responses average ~6k tokens,
rollouts 0.7–2.4k in the paper) set the width of every row beside it, and memory follows the longest rows rather
than a budget. The reference runs verl's dynamic batch size (``use_dynamic_bsz``, ``max_token_len_per_gpu``) for
this; here rows stay right-padded, one sequence per row (padding-free rows are a later step).

How: sort rows by length, longest first. A micro-batch's width is then its first row's length, so it holds at most
``N // width`` rows, and an optimal packing takes contiguous runs of the sorted rows: moving a longer row into a
micro-batch in exchange for a shorter one never widens either. ``pack`` chooses the runs by dynamic programming
over the sorted order, fewest passes first, then fewest padded tokens. Fewest passes is also what first-fit
decreasing reaches here (each micro-batch's capacity is fixed by its first row, so first fit fills them in turn);
the second criterion is what it misses: with N = 12 and lengths 6, 4, 4 it packs (6, 4), (4): 16 tokens, where
(6), (4, 4) takes 14.

A row longer than N gets a micro-batch of its own (the caller warns once): cutting it would change the loss it
contributes, and dropping it would drop an expert demonstration. Its pass simply exceeds the budget.

The step's gradient does not depend on the packing: every micro-batch divides by the step's global token counts
(``lit_chord.loss``), so the passes add up to the same sum whichever rows share one.
"""

from __future__ import annotations

import torch

from lit_chord.batch import TrainTensors


def pack(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Row indices per micro-batch: each holds ``len(group) * max(lengths of group) <= max_tokens`` tokens, or is a
    single row longer than the budget. Fewest micro-batches, then fewest padded tokens; longest rows first."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    n = len(lengths)
    order = sorted(range(n), key=lambda i: -lengths[i])  # stable: rows of equal length keep their arrival order
    widths = [max(1, lengths[i]) for i in order]
    # best[i] = (passes, padded tokens) of the best packing of the sorted rows i..n-1; its first run ends at end[i].
    best: list[tuple[int, int]] = [(0, 0)] * (n + 1)
    end = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        capacity = max(1, max_tokens // widths[i])  # widths[i] is the longest row of any run that starts at i
        options = (
            (best[j][0] + 1, best[j][1] + (j - i) * widths[i], j) for j in range(i + 1, min(n, i + capacity) + 1)
        )
        passes, padded, end[i] = min(options)
        best[i] = (passes, padded)
    groups, i = [], 0
    while i < n:
        groups.append(order[i : end[i]])
        i = end[i]
    return groups


def pack_micro_batches(rows: TrainTensors, max_tokens: int) -> list[TrainTensors]:
    """``rows`` in micro-batches of at most ``max_tokens`` padded tokens each (see ``pack``), trailing padding
    trimmed. Rows are right-padded, so a row's length is its attention mask's sum."""
    lengths = [int(n) for n in rows.attention_mask.sum(-1).tolist()]
    device = rows.input_ids.device
    return [rows.take(torch.tensor(group, device=device)) for group in pack(lengths, max_tokens)]
