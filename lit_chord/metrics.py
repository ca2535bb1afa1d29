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

``train/*`` are the step's updates over all ranks (``train_metrics``): each micro-batch's metrics are token-mean
shares of the step (``accumulate`` adds them up), the ranks' totals add up in one reduction, and throughput, model
FLOPs utilization and the padding fraction follow from the summed tokens, FLOPs and pass counts.

``rollout/*`` are the step's rollouts over all ranks: each rank sums its own (``RolloutSums``), the ranks' sums add
up, and the means follow from the totals; a mean of per-rank means would misstate the std and count a rank's
``zero_std_groups`` instead of the step's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass, fields

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from lit_chord.batch import TrainTensors, ValResult
from lit_chord.flops import ModelShape, forward_flops, model_shape, peak_flops, training_flops
from lit_chord.loss import Normalizers
from lit_chord.packing import PassCounts

NON_ADDITIVE = ("ratio_max",)


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


def accumulate(totals: dict[str, Tensor], metrics: dict[str, Tensor], weight: float) -> None:
    """Add a micro-batch's metrics (token-mean shares of the step) into the step's totals; ``ratio_max`` is a max."""
    for key, value in metrics.items():
        value = value * weight
        totals[key] = torch.maximum(totals[key], value) if key == "ratio_max" else totals[key] + value


class Throughput:
    """What ``train/tokens_per_second`` and ``train/mfu`` count: the tokens and FLOPs of each update
    (``lit_chord.flops``), and the devices' peak FLOP/s to divide by (None where Lightning does not know it)."""

    def __init__(self) -> None:
        self.shape: ModelShape | None = None  # what the policy's FLOPs depend on
        self.peak_flops: float | None = None  # one device's peak FLOP/s at the trainer's precision
        self.world_size = 1  # the devices

    def start(self, policy: nn.Module, device: torch.device, precision: str, world_size: int) -> None:
        self.shape, self.peak_flops = model_shape(policy), peak_flops(device, precision)
        self.world_size = world_size

    def add(self, totals: dict[str, Tensor], trained: TrainTensors, scored: TrainTensors) -> None:
        """Count one update's work into ``totals``: ``trained`` rows went forward and backward, ``scored`` forward."""
        assert self.shape is not None, "on_fit_start has not run"
        lengths = [trained.attention_mask.sum(-1), scored.attention_mask.sum(-1)]
        totals["tokens"] += (lengths[0].sum() + lengths[1].sum()).to(torch.float32)
        flops = training_flops(self.shape, lengths[0]) + forward_flops(self.shape, lengths[1])
        totals["flops"] += torch.tensor(flops, device=totals["tokens"].device)


def mean_over_updates(totals: dict[str, Tensor], updates: int) -> None:
    """A step's totals over its ``updates`` as their mean; ``ratio_max`` stays their max, tokens and FLOPs add up."""
    for key in totals:
        if key not in ("ratio_max", "tokens", "flops"):
            totals[key] = totals[key] / updates


def train_metrics(
    totals: dict[str, Tensor],
    counts: PassCounts,
    reduce: Callable[[Tensor, str], Tensor],
    seconds: float,
    throughput: Throughput,
) -> dict[str, Tensor]:
    """The step's ``train/*`` over all ranks that follow from this rank's ``totals`` (``accumulate``d, with
    ``tokens`` and ``flops``; a ``defaultdict``, so ``ratio_max`` reads 0 where no pass reported it) and its pass
    ``counts``: the metrics' sums (``ratio_max``: the max), the padding fraction, throughput and MFU.

    ``reduce(tensor, op)`` combines a tensor over ranks (``op``: "sum" or "max"); every rank calls it with the same
    keys (padding passes report the same metrics, times 0). ``seconds``: the update's time; ``throughput``: the
    devices' peak FLOP/s (unknown: no ``train/mfu``).
    """
    additive = {k: v for k, v in totals.items() if k not in NON_ADDITIVE}
    tokens = torch.tensor([counts.processed, counts.padding], dtype=torch.float32, device=totals["tokens"].device)
    additive |= {"processed_tokens": tokens[0], "padding_tokens": tokens[1]}
    keys = sorted(additive)  # the same on every rank: padding passes report the same metrics (times 0)
    reduced = reduce(torch.stack([additive[k] for k in keys]), "sum")
    summed = dict(zip(keys, reduced, strict=True))
    flops = summed.pop("flops")
    # Pad tokens over tokens processed, all ranks; passes per step are the same on every rank (packing.MicroBatcher).
    metrics = {"train/padding_frac": summed.pop("padding_tokens") / summed.pop("processed_tokens")}
    metrics["train/micro_batches"] = torch.tensor(float(counts.passes))
    metrics |= {f"{'rollout' if k == 'logprob_gap' else 'train'}/{k}": v for k, v in summed.items()}
    metrics["train/ratio_max"] = reduce(totals["ratio_max"], "max")
    # Throughput of the update (forward, backward, optimizer; generation is rollout/gen_seconds), all ranks.
    metrics["train/update_seconds"] = torch.tensor(seconds)
    metrics["train/tokens_per_second"] = metrics["train/tokens"] / seconds
    if throughput.peak_flops:  # model FLOPs utilization (lit_chord.flops), where Lightning knows the device's peak
        metrics["train/mfu"] = flops / (seconds * throughput.peak_flops * throughput.world_size)
    return metrics


@dataclass
class RolloutSums:
    """One rank's rollouts of a step as sums and counts: additive, so that ranks combine exactly by adding them.

    Counts are floats so that the fields travel as one float64 tensor (``as_tensor``): float64 keeps the std from Σr
    and Σr² exact enough for any step size, and keeps 1 rank and 2 ranks equal to the last digits.
    """

    completions: float = 0.0  # the policy's samples scored (LUFFY's expert traces are counted apart)
    reward: float = 0.0  # Σ reward
    reward_squared: float = 0.0  # Σ reward², for the std
    accuracy: float = 0.0  # right answers
    format_judged: float = 0.0  # completions whose format the reward judged
    format_ok: float = 0.0  # of those, the well-formed ones
    response_tokens: float = 0.0  # Σ completion length
    truncated: float = 0.0  # completions that hit max_new_tokens
    zero_std_groups: float = 0.0  # groups of two or more with equal rewards (advantage 0)
    reward_errors: float = 0.0  # completions whose reward function failed
    expert_traces: float = 0.0  # LUFFY: expert traces inside the groups
    expert_trace_reward: float = 0.0  # Σ of their rewards

    def as_tensor(self) -> Tensor:
        return torch.tensor(astuple(self), dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: Tensor) -> RolloutSums:
        return cls(*values.tolist())

    def metrics(self) -> dict[str, float]:
        """``rollout/*`` of these rollouts: means from the sums, the std unbiased (as ``Tensor.std``), counts as they
        are. ``format_ok`` only where the reward judged a format, ``expert_trace_reward`` only where there are
        traces."""
        n = self.completions
        per_completion = 1.0 / n if n else 0.0
        variance = (self.reward_squared - self.reward**2 / n) / (n - 1) if n > 1 else 0.0
        metrics = {
            "rollout/reward_mean": self.reward * per_completion,
            "rollout/reward_std": max(variance, 0.0) ** 0.5,  # Σr² − (Σr)²/n may round to just below 0
            "rollout/accuracy": self.accuracy * per_completion,
            "rollout/response_len": self.response_tokens * per_completion,
            "rollout/tokens": self.response_tokens,  # generated this step, all ranks: the compute columns add them
            "rollout/truncated_frac": self.truncated * per_completion,
            "rollout/zero_std_groups": self.zero_std_groups,
            "rollout/reward_errors": self.reward_errors,
        }
        if self.format_judged:
            metrics["rollout/format_ok"] = self.format_ok / self.format_judged
        if self.expert_traces:
            metrics["rollout/expert_trace_reward"] = self.expert_trace_reward / self.expert_traces
        return metrics


def step_rollout_metrics(per_rank: Tensor, timings: list[str]) -> dict[str, float]:
    """The step's ``rollout/*`` from every rank's ``RolloutSums`` fields followed by its timings, ``(world, K)``.

    The sums add up over ranks; a timing is the slowest rank's, since the step waits for it.
    """
    width = len(fields(RolloutSums))
    metrics = RolloutSums.from_tensor(per_rank[:, :width].sum(0)).metrics()
    slowest = per_rank[:, width:].max(0).values.tolist()
    return metrics | {f"rollout/{name}": seconds for name, seconds in zip(timings, slowest, strict=True)}
