"""Chunked log-probabilities and entropies equal the naive full log-softmax: values and gradients."""

import math

import pytest
import torch

from lit_chord.logprobs import naive_token_logprobs, token_logprobs


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_chunked_logprobs_match_naive(chunk_size, temperature, with_entropy):
    b, t, h, v = 3, 5, 16, 37  # B·T = 15 tokens: chunk 7 leaves a remainder, chunk 64 exceeds B·T
    hidden = torch.randn(b, t, h, requires_grad=True)
    weight = (0.5 * torch.randn(v, h)).requires_grad_()
    targets = torch.randint(0, v, (b, t))
    w_lp, w_ent = torch.randn(b, t), torch.randn(b, t)

    def run(fn, **kw):
        logp, ent = fn(hidden, weight, targets, temperature=temperature, with_entropy=with_entropy, **kw)
        loss = (w_lp * logp).sum() + ((w_ent * ent).sum() if with_entropy else 0.0)
        return (logp, ent, *torch.autograd.grad(loss, (hidden, weight)))

    got, ref = run(token_logprobs, chunk_size=chunk_size), run(naive_token_logprobs)
    assert got[0].dtype == torch.float32 and (got[1] is None) == (not with_entropy)
    for g, r in zip(got, ref, strict=True):
        if r is not None:
            torch.testing.assert_close(g, r, rtol=0, atol=1e-5)


def test_chunked_logprobs_entropy_only_and_frozen_head():
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    weight = torch.randn(11, 8)  # frozen LM head: no weight gradient is computed
    targets = torch.randint(0, 11, (2, 4))
    _, ent = token_logprobs(hidden, weight, targets, chunk_size=3, with_entropy=True)
    _, ent_ref = naive_token_logprobs(hidden, weight, targets, with_entropy=True)
    g, g_ref = (torch.autograd.grad(e.sum(), hidden)[0] for e in (ent, ent_ref))
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-5)
    # entropy of a uniform distribution is log V
    _, uniform = token_logprobs(torch.zeros(1, 1, 8), weight, targets[:1, :1], with_entropy=True)
    assert uniform.item() == pytest.approx(math.log(11))


def test_chunked_logprobs_metric_only_entropy():
    # An entropy output that gets no gradient (logged only) leaves the log-prob gradients exact.
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(13, 8, requires_grad=True)
    targets = torch.randint(0, 13, (2, 5))
    logp, ent = token_logprobs(hidden, weight, targets, temperature=1.3, chunk_size=4, with_entropy=True)
    ref, ref_ent = naive_token_logprobs(hidden, weight, targets, temperature=1.3, with_entropy=True)
    torch.testing.assert_close(ent.detach(), ref_ent.detach(), rtol=0, atol=1e-5)
    grads = torch.autograd.grad(logp.sum(), (hidden, weight))
    for g, r in zip(grads, torch.autograd.grad(ref.sum(), (hidden, weight)), strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5)


def test_chunked_logprobs_bf16():
    hidden = torch.randn(2, 6, 16).bfloat16().requires_grad_()
    weight = torch.randn(29, 16).bfloat16().requires_grad_()
    targets = torch.randint(0, 29, (2, 6))
    logp, _ = token_logprobs(hidden, weight, targets, chunk_size=5)
    ref, _ = naive_token_logprobs(hidden, weight, targets)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-4)  # same bf16 matmul, float32 softmax in both
    gh, gw = torch.autograd.grad(logp.sum(), (hidden, weight))
    rh, rw = torch.autograd.grad(ref.sum(), (hidden, weight))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    torch.testing.assert_close(gh.float(), rh.float(), rtol=0.02, atol=0.02)
    torch.testing.assert_close(gw.float(), rw.float(), rtol=0.02, atol=0.02)


def test_chunked_logprobs_under_autocast():
    hidden = torch.randn(2, 6, 16, requires_grad=True)
    weight = torch.randn(29, 16, requires_grad=True)
    targets = torch.randint(0, 29, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, ent = token_logprobs(hidden, weight, targets, chunk_size=4, with_entropy=True)
        ref, ref_ent = naive_token_logprobs(hidden, weight, targets, with_entropy=True)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-4)  # both use the bf16 matmul of autocast
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-4)
    gh, gw = torch.autograd.grad((logp + ent).sum(), (hidden, weight))
    rh, rw = torch.autograd.grad((ref + ref_ent).sum(), (hidden, weight))
    assert gh.dtype == gw.dtype == torch.float32  # back to the float32 inputs
    torch.testing.assert_close(gh, rh, rtol=0.02, atol=0.02)
    torch.testing.assert_close(gw, rw, rtol=0.02, atol=0.02)
