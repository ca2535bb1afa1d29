"""Rollouts with ``transformers`` ``generate`` on the policy itself: CPU-friendly, no weight sync needed.

Batched, left-padded generation with the KV cache, in eval mode and without gradients. Since it samples from
the live policy module, ``load_weights`` has nothing to do. Use it for the demo and tests; use vLLM for real
runs.

The rollouts must come from π_θ itself, shaped only by the run's own temperature and top-p: GRPO's ratio, the
held-out accuracies and every sampled metric assume it. ``generate`` fills each setting a call leaves out from the
checkpoint's ``generation_config.json``, and instruct checkpoints ship their chat settings there (Qwen2.5-Instruct:
temperature 0.7, top-p 0.8, top-k 20, repetition penalty 1.05). So every setting the checkpoint changed is passed
back at transformers' default (``checkpoint_settings_reset``). vLLM needs nothing of the kind: its engine builds
``SamplingParams`` from the run's settings alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationConfig

from lit_chord.engines import Completion, SamplingConfig

# Settings a checkpoint's generation config may hold that do not change which tokens are drawn.
NOT_SAMPLING = frozenset(
    {
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "decoder_start_token_id",
        "transformers_version",
        "use_cache",
        "cache_implementation",
        "max_length",
        "max_new_tokens",
    }
)


def checkpoint_settings_reset(policy: nn.Module) -> dict[str, Any]:
    """Every generation setting the policy's checkpoint changed (its ``generation_config.json``) that can change which
    tokens are drawn, back at transformers' default, as ``generate`` arguments."""
    config = getattr(policy, "generation_config", None)
    if not isinstance(config, GenerationConfig):
        return {}
    defaults = GenerationConfig._get_default_generation_params()
    return {key: defaults.get(key) for key in config.to_diff_dict() if key not in NOT_SAMPLING}


class TransformersEngine:
    uses_live_policy = True

    def __init__(self, batch_size: int = 256) -> None:
        """Generation settings.

        Args:
            batch_size: Most sequences (prompts x n) generated at once.
        """
        self.batch_size = batch_size
        self.policy: nn.Module | None = None
        self.stop_token_ids: list[int] = []
        self.pad_token_id = 0
        self.sharded = False
        self.reset: dict[str, Any] = {}

    def attach(self, policy: nn.Module, stop_token_ids: list[int], pad_token_id: int) -> None:
        self.policy, self.stop_token_ids, self.pad_token_id = policy, list(stop_token_ids), pad_token_id
        self.reset = checkpoint_settings_reset(policy)
        # Under FSDP2 every forward gathers each layer's shards, a collective: a rank whose sequences all stopped
        # must keep stepping until every rank's have, or the others hang (transformers' ``synced_gpus``).
        self.sharded = any(hasattr(param, "full_tensor") for param in policy.parameters())

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        flat = [ids for ids in prompt_ids for _ in range(n)]
        completions: list[Completion] = []
        assert self.policy is not None, "attach has not run"
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                for start in range(0, len(flat), self.batch_size):
                    completions += self._generate_batch(flat[start : start + self.batch_size], sampling)
        finally:
            self.policy.train(was_training)
        return [completions[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[Completion]:
        assert self.policy is not None, "attach has not run"
        device = next(self.policy.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        greedy = sampling.temperature == 0.0
        run_settings = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": not greedy,
            "temperature": None if greedy else sampling.temperature,
            "top_p": None if greedy else sampling.top_p,
            "top_k": None,
            "eos_token_id": self.stop_token_ids,
            "pad_token_id": self.pad_token_id,
        }
        # A transformers causal LM's generate; nn.Module types its attributes as Tensor | Module.
        output = self.policy.generate(  # type: ignore[operator]
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            **(self.reset | run_settings),  # the run's settings, and none of the checkpoint's
            synced_gpus=self.sharded,
        )
        return [self._completion(row[width:].tolist()) for row in output.cpu()]

    def _completion(self, tokens: list[int]) -> Completion:
        for index, token in enumerate(tokens):
            if token in self.stop_token_ids:
                return Completion(tokens[: index + 1], finished=True)
        return Completion(tokens, finished=False)

    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Nothing to do: generation runs on the live policy."""
