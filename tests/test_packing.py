"""Token-budget micro-batches (lit_chord.packing): the packing against a brute force over every partition, the
tensors it cuts, and the step's ``train/padding_frac`` and ``train/micro_batches`` by hand."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
from helpers import EchoEngine, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback

from lit_chord.batch import Sequence, pad_sequences
from lit_chord.module import ChordModule
from lit_chord.packing import pack, pack_micro_batches
from lit_chord.rollout_callback import RolloutCallback


def partitions(items: list[int]):
    """Every partition of ``items`` into non-empty groups."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in partitions(rest):
        for index in range(len(part)):
            yield part[:index] + [[first, *part[index]]] + part[index + 1 :]
        yield [[first], *part]


def cost(groups: list[list[int]], lengths: list[int]) -> tuple[int, int]:
    """(passes, padded tokens) of a packing: a pass costs rows × its longest row."""
    return len(groups), sum(len(g) * max(lengths[i] for i in g) for g in groups)


def feasible(groups: list[list[int]], lengths: list[int], budget: int) -> bool:
    return all(len(g) == 1 or len(g) * max(lengths[i] for i in g) <= budget for g in groups)


def test_packing_matches_a_brute_force_over_every_partition():
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 20) for _ in range(rng.randint(1, 6))]
        budget = rng.randint(5, 60)
        groups = pack(lengths, budget)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every row exactly once
        assert feasible(groups, lengths, budget)
        options = [p for p in partitions(list(range(len(lengths)))) if feasible(p, lengths, budget)]
        assert cost(groups, lengths) == min(cost(p, lengths) for p in options), (lengths, budget)


def test_fewest_passes_then_fewest_padded_tokens():
    # Budget 12, lengths 6, 4, 4: (6, 4) + (4) pads to 2·6 + 4 = 16 tokens (first-fit decreasing's choice);
    # (6) + (4, 4) to 6 + 2·4 = 14. Both take two passes.
    assert pack([6, 4, 4], 12) == [[0], [1, 2]]
    # Budget 27, lengths 3, 9, 5: one pass of 3·9 = 27 tokens beats two passes of 9 + 2·5 = 19.
    assert pack([3, 9, 5], 27) == [[1, 2, 0]]
    # A row over the budget gets a pass of its own; the others still share: 2·5 = 10 <= 10.
    assert pack([3, 20, 5], 10) == [[1], [2, 0]]
    assert pack([], 10) == []
    with pytest.raises(ValueError, match="max_tokens"):
        pack([3], 0)


def rows_of_lengths(lengths: list[int], experts: list[bool], advantages: list[float]):
    """Right-padded rows: a prompt of 1 or 2 tokens, the rest response."""
    sequences = []
    for length, is_expert, advantage in zip(lengths, experts, advantages, strict=True):
        ids = list(range(5, 5 + length))
        prompt = 1 if length < 5 else 2
        sequences.append(Sequence(ids[:prompt], ids[prompt:], is_expert=is_expert, advantage=advantage))
    return pad_sequences(sequences, pad_id=0)


def test_micro_batches_hold_the_rows_trimmed_to_their_longest():
    rows = rows_of_lengths([3, 9, 5], [True, False, False], [0.0, 1.0, -1.0])
    rows.engine_logprobs = torch.arange(27, dtype=torch.float32).view(3, 9)
    first, second = pack_micro_batches(rows, 10)  # (9) alone; (5, 3): 2·5 = 10 tokens
    assert first.input_ids.shape == (1, 9) and second.input_ids.shape == (2, 5)
    assert torch.equal(first.input_ids, rows.input_ids[1:2])
    assert torch.equal(second.input_ids, rows.input_ids[[2, 0], :5])
    assert torch.equal(second.attention_mask, rows.attention_mask[[2, 0], :5])
    assert torch.equal(second.loss_mask, rows.loss_mask[[2, 0], :5])
    assert torch.equal(second.engine_logprobs, rows.engine_logprobs[[2, 0], :5])
    assert second.is_expert.tolist() == [False, True] and second.advantages.tolist() == [-1.0, 0.0]


class Rows(Callback):
    """Trains the step on given rows instead of the rollouts (after the rollout callback has filled the batch)."""

    def __init__(self, rows) -> None:
        self.rows = rows

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        batch.train = self.rows

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged = {k: float(v) for k, v in trainer.callback_metrics.items()}


def one_step(world, rows, **module_kwargs) -> dict[str, float]:
    module = ChordModule(model=str(world / "model"), **module_kwargs)
    keep = Rows(rows)
    rollout = RolloutCallback(EchoEngine(), reward_fn=lambda completion, answer: 0.0, max_new_tokens=8)
    trainer = cpu_trainer(max_steps=1, callbacks=[rollout, keep])
    trainer.fit(module, datamodule=tiny_datamodule(world))
    return keep.logged


# Rows of lengths 3, 9, 5 in that order, all training (an expert row and two rollouts with advantages ±1), so the
# step has no score-only pass. Tokens processed = Σ rows × longest row over the passes; real tokens 3 + 9 + 5 = 17.
@pytest.mark.parametrize(
    ("kwargs", "passes", "padding_frac"),
    [
        # 2 rows in arrival order: (3, 9) → 2·9 = 18 tokens, 6 of them padding; (5) → 5. 6 / 23.
        ({"micro_batch_size": 2}, 2, 6 / 23),
        # budget 8: (9) alone, over the budget; (5) and (3) alone too, since 2·5 > 8. 17 tokens, no padding.
        ({"max_tokens_per_micro_batch": 8}, 3, 0.0),
        # budget 10: (9); (5, 3) → 2·5 = 10 tokens, 2 of them padding. 2 / (9 + 10).
        ({"max_tokens_per_micro_batch": 10}, 2, 2 / 19),
        # budget 27: one pass (9, 5, 3) → 3·9 = 27 tokens, 10 of them padding: fewer passes beat less padding.
        ({"max_tokens_per_micro_batch": 27}, 1, 10 / 27),
    ],
    ids=["2_rows", "budget_8", "budget_10", "budget_27"],
)
def test_padding_fraction_and_passes_by_hand(tiny_world, kwargs, passes, padding_frac):
    rows = rows_of_lengths([3, 9, 5], [True, False, False], [0.0, 1.0, -1.0])
    over_budget = kwargs.get("max_tokens_per_micro_batch") == 8
    with pytest.warns(UserWarning, match="9 tokens exceeds") if over_budget else contextlib.nullcontext():
        logged = one_step(tiny_world, rows, **kwargs)
    assert logged["train/micro_batches"] == passes
    assert logged["train/padding_frac"] == pytest.approx(padding_frac)


def test_a_zero_weight_pass_counts_as_padding(tiny_world):
    # Three rollouts with advantage 0: only scored, in no-grad passes (9) and (5, 3) → 9 + 10 tokens, 2 padding.
    # Then one zero-weight backward pass (every parameter gets a gradient) over the step's first row, of length 3:
    # 3 tokens, all padding. 3 passes; (2 + 3) / (19 + 3).
    rows = rows_of_lengths([3, 9, 5], [False] * 3, [0.0] * 3)
    logged = one_step(tiny_world, rows, max_tokens_per_micro_batch=10)
    assert logged["train/micro_batches"] == 3
    assert logged["train/padding_frac"] == pytest.approx(5 / 22)


def test_the_budget_must_be_positive(tiny_world):
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch"):
        ChordModule(model=str(tiny_world / "model"), max_tokens_per_micro_batch=0)
