"""Rollout engines behind one small protocol.

``TransformersEngine`` generates with the policy module itself (so it always has the current weights);
``VLLMEngine`` runs vLLM next to the policy and receives the weights after each optimizer step. The rollout
callback talks only to this protocol. ``SamplingConfig`` is defined in ``lit_chord.batch`` (the step reads it too)
and re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn

from lit_chord.batch import SamplingConfig as SamplingConfig


@dataclass
class Completion:
    """One sampled completion: its token ids (the stop token included when ``finished``)."""

    token_ids: list[int]
    finished: bool  # ended with a stop token; False means truncated at max_new_tokens
    logprobs: list[float] | None = None  # the engine's own logprobs of token_ids, when it reports them


class Engine(Protocol):
    """What the rollout callback needs from an inference engine.

    Engines are configured in ``__init__`` (a ``class_path`` in YAML) and bound to the policy by ``attach`` once
    the trainer has placed it on its device.
    """

    uses_live_policy: bool  # generates with the policy module itself (needs its sharded weights gathered)

    def attach(self, policy: nn.Module, stop_token_ids: list[int], pad_token_id: int) -> None:
        """Bind to the policy (a ``transformers`` causal LM) before the first generation."""
        ...

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        """``n`` completions for each prompt, grouped per prompt in prompt order."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Replace the engine's weights with the policy's (Hugging Face parameter names)."""
        ...
