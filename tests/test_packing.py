"""Token-budget micro-batches (lit_chord.packing): the packing against a brute force over every partition, the
tensors it cuts, and the step's ``train/padding_frac`` and ``train/micro_batches`` by hand; padding-free passes: their
packing, the packed row by hand, and scores, loss and gradient equal to the padded path's."""

from __future__ import annotations

import contextlib
import random
import re

import pytest
import torch
from helpers import EchoEngine, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback

from lit_chord.batch import Sequence, pad_sequences
from lit_chord.errors import ConfigError
from lit_chord.loss import count_normalizers
from lit_chord.module import ChordModule, StepContext
from lit_chord.objectives import Chord
from lit_chord.packing import MicroBatcher, PackedRows, check_padding_free, pack, pack_micro_batches, pack_tokens
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
        # padding-free, budget 10 real tokens: (9); (5, 3) → 8 tokens. No padding.
        ({"max_tokens_per_micro_batch": 10, "padding_free": True}, 2, 0.0),
        # padding-free, budget 17: all three rows in one packed row of 17 tokens.
        ({"max_tokens_per_micro_batch": 17, "padding_free": True}, 1, 0.0),
    ],
    ids=["2_rows", "budget_8", "budget_10", "budget_27", "padding_free_10", "padding_free_17"],
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


def test_micro_batcher_pads_every_rank_to_the_most_passes_and_counts_them_by_hand():
    rows = rows_of_lengths([3, 9, 5], [True, False, False], [0.0, 1.0, -1.0])  # padded to width 9
    another_rank_has = 4  # passes; the reduction over ranks returns the largest count
    seen = []

    def most(tensor, op):
        seen.append((int(tensor), op))
        return torch.tensor(max(int(tensor), another_rank_has))

    batcher = MicroBatcher(micro_batch_size=2, max_tokens=None, padding_free=False)
    passes, real = batcher.split(rows, rows, most)
    # By rows: (3, 9) trimmed to width 9, then (5) to width 5: 2 real passes; 2 zero-weight passes over row 0 (3).
    assert seen == [(2, "max")] and real == 2 and len(passes) == 4
    assert [p.input_ids.shape for p in passes] == [(2, 9), (1, 5), (1, 3), (1, 3)]
    # Processed 18 + 5 + 3 + 3 = 29 tokens, of which 29 − (3 + 9 + 5) = 12 padding.
    assert (batcher.counts.passes, batcher.counts.processed, batcher.counts.padding) == (4, 29, 12)
    # Budget 10: (9) and (5, 3) → 9 + 10 tokens; at_least=3 adds one pass although no rank has more than 2.
    budget = MicroBatcher(micro_batch_size=2, max_tokens=10, padding_free=False)
    passes, real = budget.split(rows, rows, lambda tensor, op: tensor, at_least=3)
    assert real == 2 and len(passes) == 3
    assert (budget.counts.passes, budget.counts.processed, budget.counts.padding) == (3, 9 + 10 + 3, 22 - 17)
    # No rows: no real pass, only the padding ones.
    empty, real = budget.split(rows.select(torch.zeros(3, dtype=torch.bool)), rows, lambda t, op: t, at_least=1)
    assert real == 0 and len(empty) == 1


def test_the_budget_must_be_positive(tiny_world):
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch"):
        ChordModule(model=str(tiny_world / "model"), max_tokens_per_micro_batch=0)


def test_padding_free_packing_holds_every_row_within_the_budget_in_first_fits_passes():
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 20) for _ in range(rng.randint(1, 12))]
        budget = rng.randint(5, 60)
        groups = pack_tokens(lengths, budget)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every row exactly once
        assert all(len(g) == 1 or sum(lengths[i] for i in g) <= budget for g in groups)
        loads = [sum(lengths[i] for i in g) for g in groups]
        assert loads == sorted(loads, reverse=True)  # heaviest pass first
        # first fit leaves at most one pass half full or less: at most twice the passes the tokens need
        over = sum(length > budget for length in lengths)
        assert len(groups) <= 2 * (over + -(-sum(min(length, budget) for length in lengths) // budget))


def test_padding_free_packing_balances_the_passes_by_hand():
    # Budget 10, lengths 6, 2, 2, 2, 2, 2: first fit decreasing takes 2 passes, (6, 2, 2) = 10 and (2, 2, 2) = 6.
    # Longest first onto the lighter pass (ties: the first): 6 | 2, 2, 2 → 6 | 6; row 4 on the first (8); row 5 on
    # the second (8). Two passes of 8.
    assert pack_tokens([6, 2, 2, 2, 2, 2], 10) == [[0, 4], [1, 2, 3, 5]]
    # Budget 10, lengths 5, 4, 4, 3, 3, 1: first fit (5, 4, 1) = 10, (4, 3, 3) = 10 is full; balancing would put
    # 5 | 4, then 4 on the 4 (8), 3 on the 5 (8), 3 on either (11 > 10): no room, so first fit stays.
    assert pack_tokens([5, 4, 4, 3, 3, 1], 10) == [[0, 1, 5], [2, 3, 4]]
    # A row over the budget gets a pass of its own; the others still share.
    assert pack_tokens([3, 20, 5], 10) == [[1], [2, 0]]
    assert pack_tokens([], 10) == []
    with pytest.raises(ValueError, match="max_tokens"):
        pack_tokens([3], 0)


def test_packed_rows_by_hand():
    # Rows of 3 and 2 tokens (right-padded to 3) become one row of 5, positions restarting at 0. Position i scores
    # token i + 1 within a row: 0 → 1, 1 → 2, then 3 → 4 (not 2 → 3, across the boundary).
    input_ids = torch.tensor([[7, 8, 9], [5, 6, 0]])
    packed = PackedRows.of(input_ids, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert packed.input_ids.tolist() == [[7, 8, 9, 5, 6]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert packed.scored.tolist() == [True, True, False, True]
    assert packed.valid.tolist() == [[True, True], [True, False]]
    assert packed.unpack(torch.tensor([[1.0, 2.0, 3.0]])).tolist() == [[1.0, 2.0], [3.0, 0.0]]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padding_free_scores_loss_and_gradient_equal_the_padded_path(tiny_world, attention):
    """Expert and rollout rows of different lengths, CHORD-φ at μ = 0.5 with the entropy bonus and the KL penalty
    (so the frozen reference scores padding-free too): log-probabilities, entropies, every metric, the loss and the
    gradient of one pass, padding-free against padded, float32."""
    rng = random.Random(0)
    lengths, prompts = [9, 5, 12, 3, 7, 2], [3, 2, 4, 2, 3, 1]
    sequences = []
    for length, prompt, is_expert, advantage in zip(
        lengths, prompts, [True, False, False, True, False, False], [0.0, 1.0, -0.5, 0.0, 0.7, -1.0], strict=True
    ):
        ids = [rng.randrange(4, 300) for _ in range(length)]
        sequences.append(Sequence(ids[:prompt], ids[prompt:], is_expert=is_expert, advantage=advantage))
    rows = pad_sequences(sequences, pad_id=0)
    rows.engine_logprobs = torch.where(rows.loss_mask.bool(), -1.0, float("nan"))  # the log-prob gap metric too
    normalizers = count_normalizers(rows.loss_mask[:, :-1], rows.is_expert)
    results = []
    for padding_free in (False, True):
        module = ChordModule(
            model=str(tiny_world / "model"),
            max_tokens_per_micro_batch=64,
            padding_free=padding_free,
            objective=Chord(token_weighting="phi", entropy_coef=0.01, kl_coef=0.01),
        )
        module.configure_model()
        module.policy.set_attn_implementation(attention)
        assert module.policy.config._attn_implementation == attention
        logprobs, entropy = module.token_logprobs(module.scorer, rows, 0.9, with_entropy=True)
        out = module.micro_batch_loss(rows, StepContext(1, 0.9, 16, rows), normalizers)
        out.loss.backward()
        gradient = torch.cat([p.grad.flatten() for p in module.policy.parameters()])
        results.append((logprobs.detach(), entropy.detach(), out, gradient))
    (padded_lp, padded_ent, padded, padded_grad), (free_lp, free_ent, free, free_grad) = results
    scored = rows.attention_mask[:, 1:].bool()  # where input_ids[:, t + 1] is a real token
    assert free_lp.shape == padded_lp.shape == scored.shape
    torch.testing.assert_close(free_lp[scored], padded_lp[scored], atol=1e-6, rtol=0)
    torch.testing.assert_close(free_ent[scored], padded_ent[scored], atol=1e-6, rtol=0)
    assert not free_lp[~scored].any() and not free_ent[~scored].any()  # 0 where the target is padding
    assert set(free.metrics) == set(padded.metrics) and "phi_mean" in free.metrics and "logprob_gap" in free.metrics
    for key, value in padded.metrics.items():
        torch.testing.assert_close(free.metrics[key], value, atol=1e-6, rtol=0, msg=key)
    torch.testing.assert_close(free.loss, padded.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(free_grad, padded_grad, atol=1e-6, rtol=0)


def test_padding_free_needs_a_budget_and_an_attention_that_keeps_sequences_apart(tiny_world):
    with pytest.raises(ValueError, match="padding_free needs model.max_tokens_per_micro_batch"):
        ChordModule(model=str(tiny_world / "model"), padding_free=True)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(ConfigError, match="flex_attention has no backward on CPU"):
        check_padding_free("flex_attention", cpu)
    with pytest.raises(ConfigError, match=re.escape("'paged|eager' is not known")):
        check_padding_free("paged|eager", cpu)
    for attention in ("sdpa", "eager", "flash_attention_2"):
        check_padding_free(attention, cpu)
    check_padding_free("flex_attention", cuda)


def test_a_padding_free_fit_refuses_flex_attention_on_cpu(tiny_world):
    class FlexPolicy(ChordModule):
        def configure_model(self):
            super().configure_model()
            self.policy.config._attn_implementation = "flex_attention"  # without loading its kernels: never runs

    module = FlexPolicy(model=str(tiny_world / "model"), max_tokens_per_micro_batch=64, padding_free=True)
    rollout = RolloutCallback(EchoEngine(), reward_fn=lambda completion, answer: 0.0, max_new_tokens=8)
    with pytest.raises(ConfigError, match="flex_attention"):
        cpu_trainer(max_steps=1, callbacks=[rollout]).fit(module, datamodule=tiny_datamodule(tiny_world))
