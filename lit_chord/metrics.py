"""Held-out metrics: the unbiased pass@k estimator and the per-set means that validation logs.

pass@k is estimated as in Chen et al. 2021 (Codex, arXiv 2107.03374): from ``n`` samples of which ``c`` are
correct, ``1 − C(n − c, k) / C(n, k)``, the probability that ``k`` samples drawn without replacement from the
``n`` contain a correct one. It is unbiased for any ``k ≤ n``, unlike "any of the n correct", which is pass@n
and grows with n. avg@k is the mean correctness of the samples, i.e. the same estimator at k = 1.

Each named held-out set gets one ``HeldOutMetrics`` (torchmetrics ``MeanMetric``s, so ranks are reduced exactly
and epochs reset by Lightning); its keys are ``val/<set>/greedy_acc``, ``val/<set>/avg@k``, ``val/<set>/pass@k``
and ``val/<set>/response_len``. ``logprob_gap`` measures how far the rollout engine's numerics drift from the
trainer's on the sampled tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lit_chord.batch import TrainTensors, ValResult
from lit_chord.loss import Normalizers


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 − C(n − c, k) / C(n, k)``.

    Computed as ``1 − ∏_{i = n − c + 1}^{n} (1 − k / i)``, which equals the binomial ratio without forming
    large binomials (Chen et al. 2021, Fig. 3).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k contains a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


class HeldOutMetrics(nn.Module):
    """Means over one held-out set's prompts, accumulated over a validation epoch."""

    # logged key suffix -> attribute
    KEYS = {"greedy_acc": "greedy_acc", "avg@k": "avg_at_k", "pass@k": "pass_at_k", "response_len": "response_len"}

    def __init__(self) -> None:
        super().__init__()
        self.greedy_acc = MeanMetric()
        self.avg_at_k = MeanMetric()
        self.pass_at_k = MeanMetric()
        self.response_len = MeanMetric()

    def update(self, results: list[ValResult]) -> None:
        for result in results:
            self.greedy_acc.update(result.greedy_correct)
            self.response_len.update(result.greedy_length)
            if result.sample_correct:
                self.avg_at_k.update(sum(result.sample_correct) / len(result.sample_correct))
            if result.pass_at_k is not None:
                self.pass_at_k.update(result.pass_at_k)

    def updated(self) -> Iterator[tuple[str, str, MeanMetric]]:
        """``(key suffix, attribute, metric)`` for each metric that has seen a value this epoch."""
        for suffix, attribute in self.KEYS.items():
            metric = getattr(self, attribute)
            if metric.update_count:
                yield suffix, attribute, metric


def logprob_gap(logprobs: Tensor, rows: TrainTensors, normalizers: Normalizers) -> dict[str, Tensor]:
    """Mean |trainer − engine| log-probability over the rollout tokens the engine scored, as a token-mean share of
    the step (additive over micro-batches). It measures how far the sampler's numerics (vLLM kernels, bf16) drift
    from the policy being trained. Empty without engine log-probabilities."""
    if rows.engine_logprobs is None:
        return {}
    engine = rows.engine_logprobs[:, : logprobs.shape[1]].to(logprobs.device)
    scored = rows.loss_mask[:, : logprobs.shape[1]].bool() & ~rows.is_expert[:, None] & ~engine.isnan()
    gap = torch.where(scored, (logprobs.float() - engine).abs(), torch.zeros((), device=logprobs.device))
    return {"logprob_gap": gap.sum() / max(normalizers.rl_tokens, 1.0)}
