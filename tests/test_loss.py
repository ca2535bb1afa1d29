"""Tests for lit_chord.loss's pure pieces: hand-computed values, invariances, the counts micro-batches add up with."""

import math

import pytest
import torch

from lit_chord.loss import (
    LossAgg,
    Normalizers,
    aggregate,
    count_normalizers,
    group_advantages,
    importance_weights,
    kl_penalty,
    phi,
    policy_loss,
    sft_loss,
)

AGG_MODES: list[LossAgg] = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- advantages


def test_group_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)
    adv = group_advantages(rewards, group_size=4)
    assert adv.dtype == torch.float32 and adv.shape == (8,)
    # group 1: mean 0.25, deviations (0.75, −0.25, −0.25, −0.25), unbiased var = (0.5625 + 3·0.0625)/3 = 0.25 → std 0.5
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6)  # (1.5, −0.5, −0.5, −0.5)
    torch.testing.assert_close(adv[:4], expected)
    # group 2 is constant: exactly 0, no NaN (0.1 does not survive the mean exactly in float32)
    assert torch.equal(adv[4:], torch.zeros(4))
    # Dr. GRPO: centred only
    torch.testing.assert_close(
        group_advantages(rewards, 4, scale_by_std=False)[:4], torch.tensor([0.75, -0.25, -0.25, -0.25])
    )


def test_group_advantages_singletons_and_errors():
    # a group of one: mean 0, std 1 as the reference, so A = r (it was 0: num_generations 1 lost all RL signal)
    for scale_by_std in (True, False):
        advantages = group_advantages(torch.tensor([1.0, 0.0, -0.1]), 1, scale_by_std=scale_by_std)
        assert torch.equal(advantages, torch.tensor([1.0, 0.0, -0.1]))
    with pytest.raises(ValueError, match=r"5.*group_size=4"):
        group_advantages(torch.zeros(5), group_size=4)


# ---------------------------------------------------------------- policy loss


def test_policy_loss_clip_branches():
    # one token per row; ratio r = exp(logp − old) with old = 0; clip 0.2 → [0.8, 1.2], dual clip c = 3
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -2.0])
    ratio = torch.tensor([1.1, 1.5, 0.5, 0.5, 1.5, 5.0, 0.9])
    logp = ratio.log().unsqueeze(1).requires_grad_()
    out = policy_loss(logp, torch.zeros(7, 1), adv, torch.ones(7, 1))
    expected = [
        -1.1,  # A>0 inside: max(−1.1, −1.1)
        -1.2,  # A>0 above 1.2: max(−1.5, −1.2) = −1.2, clipped
        -0.5,  # A>0 below 0.8: max(−0.5, −0.8) = −0.5, not clipped (pessimistic bound)
        0.8,  # A<0 below 0.8: max(0.5, 0.8) = 0.8, clipped; min(0.8, 3) keeps it
        1.5,  # A<0 above 1.2: max(1.5, 1.2) = 1.5, not clipped
        3.0,  # A<0, r=5: max(5, 1.2) = 5 > −A·c = 3 → dual clip to 3
        1.8,  # A=−2 inside: max(1.8, 1.8)
    ]
    torch.testing.assert_close(out.losses.squeeze(1), torch.tensor(expected))
    assert out.clipped.squeeze(1).tolist() == [False, True, False, True, False, False, False]
    assert out.dual_clipped.squeeze(1).tolist() == [False, False, False, False, False, True, False]
    torch.testing.assert_close(out.ratio.squeeze(1), ratio)
    # ∂(−A·r)/∂logp = −A·r where unclipped, 0 where a clip is active
    out.losses.sum().backward()
    torch.testing.assert_close(logp.grad.squeeze(1), torch.tensor([-1.1, 0.0, -0.5, 0.0, 1.5, 0.0, 1.8]))


def test_policy_loss_masked_tokens_are_zero():
    out = policy_loss(torch.zeros(1, 2), torch.tensor([[0.0, float("nan")]]), torch.ones(1), torch.tensor([[1, 0]]))
    assert out.losses.tolist() == [[-1.0, 0.0]] and out.ratio.tolist() == [[1.0, 0.0]]


# ---------------------------------------------------------------- SFT terms


def test_phi_values():
    assert phi(torch.tensor([0.0, 0.5, 1.0])).tolist() == [0.0, 0.25, 0.0]


@pytest.mark.parametrize(
    ("weighting", "weight_of_p"),
    [("phi", lambda p: p * (1 - p)), ("is", lambda p: p), ("none", lambda p: torch.ones_like(p))],
)
def test_sft_loss_gradient(weighting, weight_of_p):
    # With a detached weight, ∇L = −w(p)·∇log p: check ∂L/∂logp per token and the chain rule into logits.
    logits = torch.randn(3, 4, 6, requires_grad=True)
    targets = torch.randint(0, 6, (3, 4))
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    loss = sft_loss(logp, weighting).sum()
    grad_logits = torch.autograd.grad(loss, logits, retain_graph=True)[0]
    w = weight_of_p(logp.detach().exp())
    expected = torch.autograd.grad(logp, logits, grad_outputs=-w)[0]  # Σ_t −w_t ∇log p_t
    torch.testing.assert_close(grad_logits, expected)
    torch.testing.assert_close(loss, (-w * logp.detach()).sum())


def test_kl_penalty_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # log r = ln 2
    ln2 = math.log(2.0)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(ln2)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * ln2**2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - (-ln2) - 1)  # e^{−ln2} − (ref − logp) − 1


def test_importance_weights_by_hand():
    # The trainer's old log-probs against the engine's: exp(old − engine), capped at 1.5; 1 where the engine gave none.
    old = torch.tensor([[math.log(0.5), math.log(0.2), math.log(0.3)]], requires_grad=True)
    engine = torch.tensor([[math.log(0.25), math.log(0.4), float("nan")]])
    weights = importance_weights(old, engine, cap=1.5)
    # 0.5 / 0.25 = 2 → capped at 1.5; 0.2 / 0.4 = 0.5 stays; no engine log-prob → 1
    torch.testing.assert_close(weights, torch.tensor([[1.5, 0.5, 1.0]]))
    assert not weights.requires_grad  # a weight, not a path for the gradient
    # with a cap of 1 every token the engine found likelier keeps its ratio; none rises above 1
    torch.testing.assert_close(importance_weights(old, engine, cap=1.0), torch.tensor([[1.0, 0.5, 1.0]]))


# ---------------------------------------------------------------- aggregation


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_matches_loop(mode):
    values = torch.randn(4, 5)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]], dtype=torch.float32)
    tokens, seqs, rows = 9.0, 3.0, 4.0  # global counts: 2 + 5 + 0 + 2 tokens, 3 non-empty rows, 4 rows
    total, per_row_means = 0.0, 0.0
    for i in range(4):
        row = [values[i, j].item() for j in range(5) if mask[i, j] > 0]
        total += sum(row)
        per_row_means += sum(row) / len(row) if row else 0.0
    expected = {
        "token-mean": total / tokens,
        "seq-mean-token-mean": per_row_means / seqs,
        "seq-mean-token-sum": total / rows,  # every row, the empty one too: a constant weight per token
        "seq-mean-token-sum-norm": total / (rows * 7),
    }[mode]
    got = aggregate(values, mask, mode, tokens, seqs, horizon=7, rows=rows)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    if mode == "seq-mean-token-sum-norm":  # default horizon is T = 5
        assert aggregate(values, mask, mode, tokens, seqs, rows=rows).item() == pytest.approx(total / 20, rel=1e-6)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_empty_is_zero(mode):
    values = torch.full((2, 3), float("nan"), requires_grad=True)
    out = aggregate(values, torch.zeros(2, 3), mode, tokens=0.0, seqs=0.0)
    out.backward()
    assert out.item() == 0.0 and torch.equal(values.grad, torch.zeros(2, 3))


def test_normalizers_tensor_round_trip_and_sum():
    a, b = Normalizers(10.0, 2.0, 7.0, 1.0, 3.0, 1.0), Normalizers(3.0, 1.0, 0.0, 0.0, 1.0, 0.0)
    assert Normalizers.from_tensor(a.as_tensor()) == a
    assert a + b == Normalizers(13.0, 3.0, 7.0, 1.0, 4.0, 1.0)
    assert a.as_tensor().shape == (8,)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    # rollout rows 0, 1 → 2 tokens, 1 non-empty row, 2 rows; expert row 2 → 1 token, 1 non-empty row, 1 row
    assert count_normalizers(mask, torch.tensor([False, False, True])) == Normalizers(2.0, 1.0, 1.0, 1.0, 2.0, 1.0)
    # row 0 an expert trace inside its group (LUFFY): counted among the rollouts and on its own
    traces = count_normalizers(mask, torch.tensor([False, False, True]), torch.tensor([True, False, False]))
    assert traces == Normalizers(2.0, 1.0, 1.0, 1.0, 2.0, 1.0, trace_tokens=2.0, trace_seqs=1.0)


def test_luffy_shapes_expert_trace_tokens_and_leaves_rollouts_alone():
    """Row 0 a rollout, row 1 an expert trace in the same group (LUFFY). Trace tokens: loss −A·π/(π + 0.1), unclipped.

    π = 0.4, A = 0.5: f = 0.4 / 0.5 = 0.8, loss −0.4; d/dlogπ = −A·γ·π/(π + γ)² = −0.5·0.1·0.4/0.25 = −0.08.
    π = 0.9, A = 0.5: f = 0.9, loss −0.45; gradient −0.5·0.1·0.9/1.0 = −0.045 (a likely token moves less).
    The rollout (old = new, ratio 1, A = −0.5): loss 0.5 and gradient 0.5 per token, as without the trace.
    """
    logprobs = torch.log(torch.tensor([[0.3, 0.6], [0.4, 0.9]])).requires_grad_()
    advantages, mask = torch.tensor([-0.5, 0.5]), torch.ones(2, 2)
    out = policy_loss(logprobs, logprobs.detach(), advantages, mask, off_policy=torch.tensor([False, True]))
    assert out.losses.flatten().tolist() == pytest.approx([0.5, 0.5, -0.4, -0.45])
    out.losses.sum().backward()
    assert logprobs.grad.flatten().tolist() == pytest.approx([0.5, 0.5, -0.08, -0.045])
    assert out.ratio[1].tolist() == [0.0, 0.0] and not out.clipped[1].any()  # clip statistics: sampled tokens only
    # far from the clip range the trace is not clipped: π = 0.01 is a ratio of 0.01 under a behaviour prob of 1
    low = policy_loss(torch.log(torch.tensor([[0.01]])), torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1),
                      off_policy=torch.tensor([True]))  # fmt: skip
    assert low.losses.item() == pytest.approx(-0.01 / 0.11)
