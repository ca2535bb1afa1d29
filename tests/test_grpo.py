"""Tests for the GRPO objective (``lit_chord.objectives.grpo``): the RL half CHORD, LUFFY and SRFT share."""

import pytest
import torch

from lit_chord.loss import count_normalizers
from lit_chord.objectives import Chord, Grpo, LossInputs, Needs


def inputs(logprobs, advantages, mask, is_expert, horizon=None, **extra) -> LossInputs:
    """On-policy inputs (old = current log-probabilities) with the batch's own counts."""
    return LossInputs(
        logprobs=logprobs,
        old_logprobs=logprobs.detach(),
        entropy=extra.pop("entropy", torch.zeros_like(logprobs)),
        mask=mask,
        is_expert=is_expert,
        advantages=advantages,
        normalizers=count_normalizers(mask, is_expert),
        step=1,
        horizon=mask.shape[-1] if horizon is None else horizon,
        **extra,
    )


def test_seq_mean_token_sum_norm_counts_a_masked_truncated_rollout_in_its_divisor():
    # Three rollouts, A = 1 each, on-policy (pg = −1 per token), horizon 4; row 2 was truncated and masked (no token).
    # Rows 0 and 1 have 2 and 3 tokens: Σpg = −5. The divisor is every rollout row times the horizon, 3·4 = 12, as the
    # reference divides by all samples of the kind: L_rl = −5 / 12 (counting only the rows with tokens: −5 / 8).
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float32)
    x = inputs(torch.zeros(3, 4), torch.ones(3), mask, torch.zeros(3, dtype=torch.bool), horizon=4)
    out = Grpo(rl_loss_agg="seq-mean-token-sum-norm").loss(x)
    assert out.metrics["loss_rl"].item() == pytest.approx(-5 / 12) and out.loss.item() == pytest.approx(-5 / 12)


def test_grpo_is_chord_at_mu_zero_with_the_same_gradient():
    """On a batch of rollouts and expert rows, GRPO's loss and gradient are CHORD's at μ = 0: expert rows weigh 0."""
    torch.manual_seed(0)
    logits = torch.randn(5, 4, 7, requires_grad=True)
    targets = torch.randint(0, 7, (5, 4))
    logp_all = torch.log_softmax(logits, -1)
    logprobs = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    mask, is_expert = torch.ones(5, 4), torch.tensor([False, True, False, False, True])
    x = inputs(logprobs, torch.randn(5), mask, is_expert, entropy=entropy)
    settings = dict(entropy_coef=0.01, rl_loss_agg="seq-mean-token-mean")
    grpo, chord = Grpo(**settings).loss(x), Chord(mu_peak=0.0, mu_valley=0.0, **settings).loss(x)
    torch.testing.assert_close(grpo.loss, chord.loss, rtol=0, atol=1e-7)
    (d_grpo,) = torch.autograd.grad(grpo.loss, logits, retain_graph=True)
    (d_chord,) = torch.autograd.grad(chord.loss, logits)
    torch.testing.assert_close(d_grpo, d_chord, rtol=0, atol=1e-7)
    assert d_grpo[is_expert].abs().sum() == 0  # no SFT term
    assert set(grpo.metrics) == {"loss", "loss_rl", "clip_frac", "clip_frac_lower", "approx_kl", "ratio_max", "entropy"}


def test_rows_with_advantage_zero_have_no_gradient_unless_a_regularizer_acts():
    is_expert, advantages = torch.tensor([False, False, True]), torch.tensor([0.0, 1.0, 0.0])
    assert Grpo().without_gradient(is_expert, advantages, None).tolist() == [True, False, False]
    assert not Grpo(entropy_coef=0.01).without_gradient(is_expert, advantages, None).any()
    assert not Grpo(kl_coef=0.1).without_gradient(is_expert, advantages, None).any()


def test_what_grpo_needs():
    assert Grpo().needs == Needs() and Grpo(kl_coef=0.1).needs == Needs(reference=True)
    assert Chord().needs == Needs(sft_stream=True)
    with pytest.raises(ValueError, match="model.objective.kl_coef must be >= 0"):
        Grpo(kl_coef=-1.0)
