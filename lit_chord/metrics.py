"""Held-out metrics: the unbiased pass@k estimator and the per-set means that validation logs.

pass@k is estimated as in Chen et al. 2021 (Codex, arXiv 2107.03374): from ``n`` samples of which ``c`` are
correct, ``1 − C(n − c, k) / C(n, k)``, the probability that ``k`` samples drawn without replacement from the
``n`` contain a correct one. It is unbiased for any ``k ≤ n``, unlike "any of the n correct", which is pass@n
and grows with n. avg@k is the mean correctness of the samples, i.e. the same estimator at k = 1.

Each named held-out set gets one ``HeldOutMetrics`` (torchmetrics ``MeanMetric``s, so ranks are reduced exactly
and epochs reset by Lightning); its keys are ``val/<set>/greedy_acc``, ``val/<set>/avg@<n>``, ``val/<set>/pass@<k>``
(the set's numbers, ``lit_chord.protocol``),
``val/<set>/response_len`` and ``val/<set>/format_ok``. Accuracies count right answers only (the reward's
``accuracy``); the format is ``format_ok``, logged for rewards that judge it. ``logprob_gap`` measures how far
the rollout engine's numerics drift from the trainer's on the sampled tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

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
    """Means over one held-out set's prompts, accumulated over a validation epoch, from ``num_samples`` samples per
    prompt and pass@``pass_k``."""

    def __init__(self, num_samples: int = 0, pass_k: int = 0) -> None:
        super().__init__()
        # logged key suffix -> attribute
        self.keys = {
            "greedy_acc": "greedy_acc",
            f"avg@{num_samples}": "avg_at_k",
            f"pass@{pass_k}": "pass_at_k",
            "response_len": "response_len",
            "format_ok": "format_ok",
        }
        self.greedy_acc = MeanMetric()
        self.avg_at_k = MeanMetric()
        self.pass_at_k = MeanMetric()
        self.response_len = MeanMetric()
        self.format_ok = MeanMetric()  # greedy completions that are well formed, for rewards that judge the format
        self.count = SumMetric()  # ``val/<set>/count`` (logged on its own): prompts scored, summed over ranks

    def update(self, results: list[ValResult], counted: list[bool] | None = None) -> None:
        """Add one batch. Rows not ``counted`` (padding that keeps ranks in step) update with weight 0: they change
        no mean, yet every rank updates, and so logs and syncs, the same metrics."""
        weights = [1.0] * len(results) if counted is None else [float(c) for c in counted]
        self.count.update(sum(weights))
        for result, weight in zip(results, weights, strict=True):
            self.greedy_acc.update(result.greedy_correct, weight)
            self.response_len.update(result.greedy_length, weight)
            if result.sample_correct:
                self.avg_at_k.update(sum(result.sample_correct) / len(result.sample_correct), weight)
            if result.pass_at_k is not None:
                self.pass_at_k.update(result.pass_at_k, weight)
            if result.format_ok is not None:
                self.format_ok.update(result.format_ok, weight)

    def updated(self) -> Iterator[tuple[str, str, MeanMetric]]:
        """``(key suffix, attribute, metric)`` for each metric that has seen a value this epoch.

        Lightning syncs each logged metric across ranks, so ranks must yield the same ones: which metrics a row
        updates depends on the configuration (samples, the reward's format), not on the prompt, and every rank
        updates with as many rows (``ValBatch.counted``)."""
        for suffix, attribute in self.keys.items():
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
