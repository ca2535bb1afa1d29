"""Micro-batches by token budget: rows packed so that each pass's padded size, rows × longest row, stays within N.

Why: a pass over right-padded rows costs rows × longest-row tokens, in compute and in activation memory. Cut in
arrival order into a fixed number of rows, a CHORD step lets one long expert row (R1 responses average ~6k tokens,
rollouts 0.7–2.4k in the paper) set the width of every row beside it, and memory follows the longest rows rather
than a budget. The reference runs verl's dynamic batch size (``use_dynamic_bsz``, ``max_token_len_per_gpu``) for
this; here rows stay right-padded, one sequence per row, unless padding-free (below).

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

Padding-free rows (``ChordModule(padding_free=True)``): a pass is one row of the pass's sequences concatenated, with
``position_ids`` restarting at 0 for each; transformers then masks attention block-diagonally, so no sequence sees
another (``masking_utils.find_packed_sequence_indices``; flash-attention reads the lengths from the positions). The
budget counts real tokens, so ``pack_tokens`` is bin packing: first-fit decreasing (fewest passes is NP-hard; FFD
takes at most 11/9 of them + 1), then, where it fits in as many passes, longest-first onto the lightest pass, so
the passes carry about equal tokens. The micro-batch stays a right-padded ``TrainTensors``, only the forward runs
on the packed row (``PackedRows``), and the log-probabilities go back into the ``(B, T - 1)`` layout, so the loss
and its masks are the padded path's. Cost: attention over the packed row costs Σ length² with flash-attention's
varlen kernels, but sdpa and eager compute the whole (N, N) masked product, so on a CPU padding-free passes of many
short rows are slower than padded ones (bench/README.md).

``MicroBatcher`` cuts a step's rows into passes (by rows, or by the budget above) and pads every rank to the same
number of passes: DDP and FSDP2 reduce gradients in backward, FSDP2 gathers parameters in every forward, so a rank
with fewer passes than another would hang. The padding passes repeat one row with weight 0. It also counts the
passes and the tokens they process (``PassCounts``, for ``train/micro_batches`` and ``train/padding_frac``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_chord.batch import TrainTensors
from lit_chord.errors import ConfigError

# transformers' attention implementations that keep packed sequences apart, given restarting position_ids.
PADDING_FREE_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flash_attention_4")


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


def pack_tokens(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Padding-free: row indices per pass whose lengths sum to at most ``max_tokens`` (a row longer than that alone).
    First-fit decreasing sets the number of passes; then, if longest-first onto the lightest pass fits in as many,
    that balances their tokens. Heaviest pass first."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    first_fit: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        fits = next((b for b, load in enumerate(loads) if load + lengths[i] <= max_tokens), None)
        if fits is None:
            first_fit.append([i])
            loads.append(lengths[i])
        else:
            first_fit[fits].append(i)
            loads[fits] += lengths[i]
    balanced: list[list[int]] = [[] for _ in first_fit]
    totals = [0] * len(first_fit)
    for i in order:
        lightest = min(range(len(totals)), key=totals.__getitem__)
        if balanced[lightest] and totals[lightest] + lengths[i] > max_tokens:
            balanced = first_fit  # no room on the lightest pass, so none on any: keep first fit
            break
        balanced[lightest].append(i)
        totals[lightest] += lengths[i]
    return sorted(balanced, key=lambda group: -sum(lengths[i] for i in group))


def pack_padding_free(rows: TrainTensors, max_tokens: int) -> list[TrainTensors]:
    """``rows`` in passes of at most ``max_tokens`` real tokens (``pack_tokens``), each still right-padded: the
    scorer packs a pass into one row (``PackedRows``)."""
    lengths = [int(n) for n in rows.attention_mask.sum(-1).tolist()]
    device = rows.input_ids.device
    return [rows.take(torch.tensor(group, device=device)) for group in pack_tokens(lengths, max_tokens)]


@dataclass
class PassCounts:
    """A step's passes (forward, or forward and backward), the tokens they processed, and of those the padding."""

    passes: int = 0
    processed: int = 0
    padding: int = 0


class MicroBatcher:
    """A step's rows in passes of ``micro_batch_size`` rows, or of at most ``max_tokens`` tokens (padded, or real
    ones if ``padding_free``), every rank padded to the same number of passes; counts them in ``counts``."""

    def __init__(self, micro_batch_size: int, max_tokens: int | None, padding_free: bool) -> None:
        if micro_batch_size < 1:
            raise ValueError(f"model.micro_batch_size must be >= 1, got {micro_batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"model.max_tokens_per_micro_batch must be >= 1 or null, got {max_tokens}")
        if padding_free and max_tokens is None:
            raise ValueError("model.padding_free needs model.max_tokens_per_micro_batch (the real tokens per pass)")
        self.micro_batch_size, self.max_tokens, self.padding_free = micro_batch_size, max_tokens, padding_free
        self.counts = PassCounts()  # since the step's last train/* were logged
        self.warned = False  # a row over the budget is warned about once

    def check_attention(self, attn_implementation: str | None, device: torch.device) -> None:
        """Padding-free passes need an attention implementation that keeps packed sequences apart on ``device``
        (flex_attention trains on CUDA only): ``check_padding_free``."""
        if self.padding_free:
            check_padding_free(attn_implementation, device)

    def split(
        self, rows: TrainTensors, padding: TrainTensors, reduce: Callable[[Tensor, str], Tensor], at_least: int = 0
    ) -> tuple[list[TrainTensors], int]:
        """``rows`` in passes, and how many of them are real. Every rank runs as many passes as the rank with most
        (``reduce(tensor, "max")`` over ranks, a collective), and at least ``at_least``; the others are zero-weight
        passes over the first row of ``padding``."""
        real = self.cut(rows)
        most = max(int(reduce(torch.tensor(len(real)), "max")), at_least)
        passes = real + [padding.micro_batches(1)[0]] * (most - len(real))
        # For train/padding_frac: a zero-weight pass is padding through and through (computed, then discarded).
        # A padding-free pass processes its real tokens only.
        processed = sum(int(m.attention_mask.sum()) if self.padding_free else m.input_ids.numel() for m in passes)
        self.counts.passes += len(passes)
        self.counts.processed += processed
        self.counts.padding += processed - int(rows.attention_mask.sum())
        return passes, len(real)

    def cut(self, rows: TrainTensors) -> list[TrainTensors]:
        """This rank's passes over ``rows``: in arrival order by rows, or packed by the token budget."""
        budget = self.max_tokens
        if not len(rows):
            return []
        if budget is None:
            return rows.micro_batches(self.micro_batch_size)
        micro_batches = (pack_padding_free if self.padding_free else pack_micro_batches)(rows, budget)
        longest = int(rows.attention_mask.sum(-1).max())
        if longest > budget and not self.warned:
            warnings.warn(  # on every rank: each packs its own rows
                f"a row of {longest} tokens exceeds model.max_tokens_per_micro_batch={budget}: it gets a "
                "micro-batch of its own, over the budget (warned once)",
                stacklevel=3,
            )
            self.warned = True
        return micro_batches


@dataclass
class PackedRows:
    """Right-padded rows ``(B, T)`` as one row of their real tokens ``(1, N)``, and the way back.

    Position ``i`` of the packed row scores token ``i + 1`` only within a sequence (``scored``); those scores go to
    the padded layout's positions ``(b, t)`` where ``input_ids[b, t + 1]`` is real (``valid``), in the same
    row-major order."""

    input_ids: Tensor  # (1, N) the rows' tokens, concatenated
    position_ids: Tensor  # (1, N) 0, 1, ... within each row
    scored: Tensor  # (N - 1,) bool: position i and i + 1 are in the same row
    valid: Tensor  # (B, T - 1) bool: where the scores go in the padded layout

    @classmethod
    def of(cls, input_ids: Tensor, attention_mask: Tensor) -> PackedRows:
        keep = attention_mask.bool()  # right-padded: each row's real tokens are contiguous from 0
        position_ids = (attention_mask.cumsum(-1) - 1)[keep][None]
        return cls(input_ids[keep][None], position_ids, position_ids[0, 1:] > 0, keep[:, 1:])

    def unpack(self, values: Tensor) -> Tensor:
        """Per-position scores ``(1, M)``, M = ``scored.sum()``, into the padded layout ``(B, T - 1)``, 0 elsewhere."""
        return values.new_zeros(self.valid.shape).masked_scatter(self.valid, values[0])


def check_padding_free(attn_implementation: str | None, device: torch.device) -> None:
    """Refuse attention implementations that would let packed sequences attend to each other, or cannot train."""
    if attn_implementation == "flex_attention" and device.type != "cpu":
        return  # BlockMask from the packed positions; CUDA has its backward
    if attn_implementation == "flex_attention":
        raise ConfigError(
            "model.padding_free: flex_attention has no backward on CPU (torch raises NotImplementedError)",
            hint="load the policy with sdpa or eager (the default is sdpa), or train padded",
        )
    if attn_implementation not in PADDING_FREE_ATTENTION:
        raise ConfigError(
            f"model.padding_free: the policy's attention implementation {attn_implementation!r} is not known to keep "
            f"packed sequences apart; use one of {', '.join(PADDING_FREE_ATTENTION)} or flex_attention (CUDA)",
            hint="or set model.padding_free false",
        )
