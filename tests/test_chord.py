"""Tests for the CHORD objective (``lit_chord.objectives.chord``): μ's schedule, the hybrid loss by hand, where the
regularizers sit, invariances, and micro-batches that add up to the full batch."""

import math

import pytest
import torch

from lit_chord.loss import LossAgg, count_normalizers, policy_loss, sft_loss
from lit_chord.objectives import Chord, LossInputs
from lit_chord.objectives.chord import mu_schedule

AGG_MODES: list[LossAgg] = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
ADDITIVE = ["loss", "loss_rl", "loss_sft", "clip_frac", "clip_frac_lower", "approx_kl", "entropy", "phi_mean", "kl"]


def chord_loss(
    logprobs,
    old_logprobs,
    advantages,
    mask,
    is_expert,
    mu,
    *,
    normalizers=None,
    sft_weighting="phi",
    rl_agg="token-mean",
    sft_agg="token-mean",
    horizon=None,
    entropy=None,
    ref_logprobs=None,
    rollout_weights=None,
    **rl,
):
    """CHORD's loss at a constant μ, through ``Chord.loss`` as the module calls it (the full batch's counts unless
    ``normalizers`` are given)."""
    objective = Chord(
        mu_peak=mu, mu_valley=mu, token_weighting=sft_weighting, sft_loss_agg=sft_agg, rl_loss_agg=rl_agg, **rl
    )
    inputs = LossInputs(
        logprobs=logprobs,
        old_logprobs=old_logprobs,
        entropy=torch.zeros_like(logprobs) if entropy is None else entropy,
        mask=mask,
        is_expert=is_expert,
        advantages=advantages,
        normalizers=count_normalizers(mask, is_expert) if normalizers is None else normalizers,
        step=1,
        horizon=mask.shape[-1] if horizon is None else horizon,
        ref_logprobs=ref_logprobs,
        rollout_weights=rollout_weights,
    )
    return objective.loss(inputs)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def make_batch(b: int = 8, t: int = 6):
    """A mixed batch: rows 1, 4, 6 are expert demonstrations; the rest are rollouts; row 5 has no tokens."""
    logits = torch.randn(b, t, 5, requires_grad=True)
    targets = torch.randint(0, 5, (b, t))
    mask = (torch.rand(b, t) > 0.3).float()
    mask[:, 0] = 1.0
    mask[5] = 0.0
    is_expert = torch.zeros(b, dtype=torch.bool)
    is_expert[[1, 4, 6]] = True
    batch = {
        "old_logprobs": torch.log_softmax(logits.detach() + 0.5 * torch.randn(b, t, 5), -1)
        .gather(-1, targets[..., None])
        .squeeze(-1),
        "ref_logprobs": torch.log_softmax(torch.randn(b, t, 5), -1).gather(-1, targets[..., None]).squeeze(-1),
        "advantages": torch.randn(b),
        "mask": mask,
        "is_expert": is_expert,
    }
    return logits, targets, batch


def forward(logits, targets, batch, rows, mu, normalizers=None, **kw):
    """Log-probs from a tiny "model" (free logits) for the given rows, then chord_loss."""
    logp_all = torch.log_softmax(logits[rows], -1)
    logprobs = logp_all.gather(-1, targets[rows][..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return chord_loss(
        logprobs,
        batch["old_logprobs"][rows],
        batch["advantages"][rows],
        batch["mask"][rows],
        batch["is_expert"][rows],
        mu,
        normalizers=normalizers,
        entropy=entropy,
        ref_logprobs=batch["ref_logprobs"][rows],
        **kw,
    )


# ---------------------------------------------------------------- μ schedule


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),  # 0/10 · 0.5
        (4, 0.2),  # 4/10 · 0.5, linear warm-up
        (10, 0.5),  # = warmup: cosine branch at 0 → (0.5 − 0.1)·0.5·(1 + cos 0) + 0.1 = 0.5 = peak
        (20, 0.3),  # mid-decay: 0.4·0.5·(1 + cos(π/2)) + 0.1 = 0.2 + 0.1
        (25, 0.4 * 0.5 * (1 + math.cos(math.pi * 15 / 20)) + 0.1),  # 0.2·(1 − 0.7071) + 0.1 = 0.15858
        (30, 0.1),  # = warmup + decay → valley
        (1000, 0.1),  # after → valley
    ],
)
def test_mu_schedule(step, expected):
    assert mu_schedule(step, warmup_steps=10, decay_steps=20, peak=0.5, valley=0.1) == pytest.approx(expected)


def test_mu_schedule_constant_and_no_warmup():
    # warmup = decay = 0 → valley at every step (the reference returns valley, not peak)
    assert [mu_schedule(s, 0, 0, 0.9, 0.1) for s in (0, 1, 500)] == [0.1, 0.1, 0.1]
    # CHORD-μ (0, 200, 0.9, 0.05) at step 1: 0.85·0.5·(1 + cos(π/200)) + 0.05 = 0.89995
    assert mu_schedule(1, 0, 200, 0.9, 0.05) == pytest.approx(0.85 * 0.5 * (1 + math.cos(math.pi / 200)) + 0.05)
    assert mu_schedule(200, 0, 200, 0.9, 0.05) == 0.05


# ---------------------------------------------------------------- the hybrid loss


def test_chord_loss_by_hand():
    # row 0: rollout, A = 1, on-policy (r = 1) → pg = −1 on each of 2 tokens → L_rl = −1
    # row 1: expert, p = 0.5 on 2 tokens → −ln 0.5 · φ(0.5) = 0.25·ln 2 each → L_sft = 0.25·ln 2 = 0.17329
    # μ = 0.2 → L = 0.8·(−1) + 0.2·0.17329 = −0.765343
    logp = torch.tensor([[-0.3, -1.2], [math.log(0.5), math.log(0.5)]])
    out = chord_loss(logp, logp.clone(), torch.tensor([1.0, 5.0]), torch.ones(2, 2), torch.tensor([False, True]), 0.2)
    assert out.loss.item() == pytest.approx(-0.8 + 0.2 * 0.25 * math.log(2))
    m = out.metrics
    assert m["loss_rl"].item() == pytest.approx(-1.0) and m["loss_sft"].item() == pytest.approx(0.25 * math.log(2))
    assert m["phi_mean"].item() == pytest.approx(0.25)
    assert m["clip_frac"].item() == 0.0 and m["ratio_max"].item() == 1.0 and m["approx_kl"].item() == 0.0
    assert "kl" not in m and m["entropy"].item() == 0.0


def test_entropy_bonus_and_kl_penalty_sit_outside_the_mix_as_the_reference():
    # L = (1 − μ)·L_rl + μ·L_sft − c_ent·H(rollout tokens) + c_kl·KL(all response tokens), μ = 0.2, c_ent = 0.1,
    # c_kl = 0.5, k2 = ½(logp − ref)².
    # row 0: rollout, A = 1, on-policy → L_rl = −1; entropies 0.4, 0.8 → H = 0.6 (expert entropies 2.0 ignored)
    # row 1: expert, p = 0.5 → L_sft = 0.25·ln 2
    # KL: rollout logp − ref = 0.2, 0 → k2 = 0.02, 0; expert 0.4, 0 → 0.08, 0; mean over 4 tokens = 0.025
    # L = 0.8·(−1) + 0.2·0.25·ln 2 − 0.1·0.6 + 0.5·0.025 = −0.8128426
    logp = torch.tensor([[-0.3, -1.2], [math.log(0.5), math.log(0.5)]], requires_grad=True)
    entropy = torch.tensor([[0.4, 0.8], [2.0, 2.0]], requires_grad=True)
    ref = torch.tensor([[-0.5, -1.2], [math.log(0.5) - 0.4, math.log(0.5)]])
    out = chord_loss(
        logp,
        logp.detach(),
        torch.tensor([1.0, 0.0]),
        torch.ones(2, 2),
        torch.tensor([False, True]),
        0.2,
        entropy=entropy,
        entropy_coef=0.1,
        ref_logprobs=ref,
        kl_coef=0.5,
        kl_estimator="k2",
    )
    assert out.loss.item() == pytest.approx(-0.8 + 0.2 * 0.25 * math.log(2) - 0.06 + 0.0125, abs=1e-6)
    assert out.metrics["loss_rl"].item() == pytest.approx(-1.0)  # the policy-gradient term alone
    assert out.metrics["kl"].item() == pytest.approx(0.025) and out.metrics["entropy"].item() == pytest.approx(0.6)
    d_logp, d_entropy = torch.autograd.grad(out.loss, [logp, entropy])
    # rollout: (1 − μ)·(−A)/2 = −0.4, plus c_kl·(logp − ref)/4 = 0.5·0.2/4 = 0.025 on its first token
    # expert: μ·(−φ(0.5))/2 = −0.025, plus 0.5·0.4/4 = 0.05 on its first token
    torch.testing.assert_close(d_logp, torch.tensor([[-0.375, -0.4], [0.025, -0.025]]))
    torch.testing.assert_close(d_entropy, torch.tensor([[-0.05, -0.05], [0.0, 0.0]]))  # −c_ent/2, rollouts only


def test_mu_zero_and_one_are_exact():
    logits, targets, batch = make_batch()
    rows = torch.arange(8)
    rl = forward(logits, targets, batch, rows, mu=0.0)
    sft = forward(logits, targets, batch, rows, mu=1.0)
    assert torch.equal(rl.loss, rl.metrics["loss_rl"]) and torch.equal(sft.loss, sft.metrics["loss_sft"])
    # and they are the plain terms
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    rl_mask = batch["mask"] * (~batch["is_expert"])[:, None]
    sft_mask = batch["mask"] * batch["is_expert"][:, None]
    pg = policy_loss(logp, batch["old_logprobs"], batch["advantages"], rl_mask).losses
    torch.testing.assert_close(rl.loss, pg.sum() / rl_mask.sum(), rtol=0, atol=1e-7)
    torch.testing.assert_close(sft.loss, (sft_loss(logp) * sft_mask).sum() / sft_mask.sum(), rtol=0, atol=1e-7)


def test_expert_rows_ignore_rl_inputs_and_rollouts_do_not_touch_sft():
    logits, targets, batch = make_batch()
    rows = torch.arange(8)
    base = forward(logits, targets, batch, rows, mu=0.3, entropy_coef=0.01, kl_coef=0.1)
    grad = torch.autograd.grad(base.loss, logits)[0]
    expert = batch["is_expert"]
    changed = dict(batch, advantages=batch["advantages"].clone(), old_logprobs=batch["old_logprobs"].clone())
    changed["advantages"][expert] = 100.0
    changed["old_logprobs"][expert] = -50.0
    other = forward(logits, targets, changed, rows, mu=0.3, entropy_coef=0.01, kl_coef=0.1)
    assert torch.equal(other.loss, base.loss)
    assert torch.equal(torch.autograd.grad(other.loss, logits)[0], grad)
    assert all(torch.equal(other.metrics[k], base.metrics[k]) for k in base.metrics)
    # rollout rows: new logits, old logprobs and advantages leave loss_sft and phi_mean unchanged
    logits2 = logits.detach().clone()
    logits2[~expert] += torch.randn_like(logits2[~expert])
    changed = dict(batch, advantages=-batch["advantages"], old_logprobs=batch["old_logprobs"] - 1.0)
    third = forward(logits2, targets, changed, rows, mu=0.3)
    assert torch.equal(third.metrics["loss_sft"], base.metrics["loss_sft"])
    assert torch.equal(third.metrics["phi_mean"], base.metrics["phi_mean"])
    assert not torch.equal(third.metrics["loss_rl"], base.metrics["loss_rl"])


def test_masked_tokens_get_zero_gradient():
    logits, targets, batch = make_batch()
    batch["old_logprobs"] = batch["old_logprobs"].masked_fill(batch["mask"] == 0, float("nan"))  # garbage there
    out = forward(logits, targets, batch, torch.arange(8), mu=0.5, entropy_coef=0.01, kl_coef=0.1)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[batch["mask"] == 0], torch.zeros_like(logits.grad[batch["mask"] == 0]))
    assert (logits.grad[batch["mask"] > 0].abs().sum(-1) > 0).all()


def test_on_policy_ratio_is_one():
    logits, targets, batch = make_batch()
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    out = chord_loss(logp, logp.detach(), batch["advantages"], batch["mask"], batch["is_expert"], mu=0.0)
    m = out.metrics
    assert m["clip_frac"].item() == 0.0 and m["clip_frac_lower"].item() == 0.0
    assert m["ratio_max"].item() == 1.0 and m["approx_kl"].item() == 0.0
    # on-policy, the loss gradient is the plain policy gradient −A/n_tokens on each rollout token
    grad = torch.autograd.grad(out.loss, logp)[0]
    rl_mask = batch["mask"] * (~batch["is_expert"])[:, None]
    torch.testing.assert_close(grad, -batch["advantages"][:, None] * rl_mask / rl_mask.sum())


@pytest.mark.parametrize("kind", ["no_expert", "no_rollout", "no_tokens"])
def test_empty_terms_are_zero(kind):
    logits, targets, batch = make_batch()
    if kind == "no_expert":
        batch["is_expert"] = torch.zeros(8, dtype=torch.bool)
    elif kind == "no_rollout":
        batch["is_expert"] = torch.ones(8, dtype=torch.bool)
    else:
        batch["mask"] = torch.zeros(8, 6)
    out = forward(logits, targets, batch, torch.arange(8), mu=0.5, entropy_coef=0.01, kl_coef=0.1)
    out.loss.backward()
    assert all(torch.isfinite(v) for v in out.metrics.values()) and torch.isfinite(logits.grad).all()
    if kind != "no_rollout":
        assert out.metrics["loss_sft"].item() == 0.0 and out.metrics["phi_mean"].item() == 0.0
    if kind != "no_expert":
        assert out.metrics["loss_rl"].item() == 0.0 and out.metrics["ratio_max"].item() == 0.0
        assert out.metrics["clip_frac"].item() == 0.0 and out.metrics["entropy"].item() == 0.0


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("n_micro", [1, 2, 4])
def test_micro_batches_add_up_to_full_batch(mode, n_micro):
    logits, targets, batch = make_batch()
    kw = dict(rl_agg=mode, sft_agg=mode, horizon=6, entropy_coef=0.01, kl_coef=0.1, kl_estimator="k2")
    full = forward(logits, targets, batch, torch.arange(8), mu=0.3, **kw)
    full_grad = torch.autograd.grad(full.loss, logits)[0]

    chunks = torch.randperm(8).chunk(n_micro)  # shuffled rows: micro-batches mix experts and rollouts unevenly
    counts = [count_normalizers(batch["mask"][rows], batch["is_expert"][rows]) for rows in chunks]
    normalizers = counts[0]
    for c in counts[1:]:
        normalizers = normalizers + c
    assert normalizers == count_normalizers(batch["mask"], batch["is_expert"])
    outs = [forward(logits, targets, batch, rows, mu=0.3, normalizers=normalizers, **kw) for rows in chunks]
    total = sum(o.loss for o in outs)
    torch.testing.assert_close(total, full.loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(total, logits)[0], full_grad, rtol=0, atol=1e-6)
    for key in ADDITIVE:
        torch.testing.assert_close(sum(o.metrics[key] for o in outs), full.metrics[key], rtol=0, atol=1e-6)
    assert max(o.metrics["ratio_max"] for o in outs) == full.metrics["ratio_max"]


def test_rollout_weights_scale_each_rollout_tokens_policy_loss_and_ignore_expert_rows():
    logits, targets, batch = make_batch()
    rows = torch.arange(8)
    plain = forward(logits, targets, batch, rows, mu=0.5)
    # Weight 2 everywhere: the RL term doubles; the SFT term (expert rows) is untouched.
    doubled = forward(logits, targets, batch, rows, mu=0.5, rollout_weights=torch.full((8, 6), 2.0))
    torch.testing.assert_close(doubled.metrics["loss_rl"], 2 * plain.metrics["loss_rl"])
    assert torch.equal(doubled.metrics["loss_sft"], plain.metrics["loss_sft"])
    # Weight 0 on expert rows only: nothing changes, since they never enter the RL term.
    weights = torch.ones(8, 6)
    weights[batch["is_expert"]] = 0.0
    assert torch.equal(forward(logits, targets, batch, rows, mu=0.5, rollout_weights=weights).loss, plain.loss)
