"""The policy's room: building it, the ways others reach its weights, and the engine's copy of them.

``ChordModule.configure_model`` calls ``build_policy``: it loads (or, for demos and tests, randomly initializes) the
causal LM, turns on gradient checkpointing, wraps it in LoRA adapters or makes the KL penalty's frozen copy, and
shards both under FSDP2. The module keeps what comes back as its own attributes (``scorer``, ``reference``,
``lora``), so checkpoints hold ``scorer.lm.*``; the functions below take whatever holds them (``HoldsPolicy``: the
module, or ``build_policy``'s ``Policy``):

- ``gathered``: the policy with its FSDP2 root parameters gathered, for generation outside ``forward``;
- ``kl_reference``: the KL penalty's reference policy (the frozen copy, or under LoRA the base with adapters off);
- ``full_parameters``: the weights under their Hugging Face names for the rollout engine and the export (LoRA
  merged), gathered one at a time if sharded;
- ``without_frozen_base`` / ``with_frozen_base``: a LoRA checkpoint holds only what trains;
- ``EngineMismatch``: truncated importance sampling against the gap between the policy and the engine's copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_chord.batch import TrainTensors
from lit_chord.lora import LoraPolicy, LoraSettings, rollout_tis_cap
from lit_chord.loss import importance_weights
from lit_chord.scorer import PolicyScorer, shard_fsdp2

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import FSDPModule
    from transformers import PreTrainedModel


@dataclass
class Policy:
    """What ``build_policy`` makes: the scorer that trains, the KL penalty's frozen copy (a full fine-tune whose
    objective needs a reference), and the adapters' bookkeeping (LoRA; their parameters live in the scorer)."""

    scorer: PolicyScorer
    reference: PolicyScorer | None = None
    lora: LoraPolicy | None = None


def build_policy(
    model: str,
    random_init: bool,
    init_seed: int,
    gradient_checkpointing: bool,
    lora: LoraSettings | None,
    needs_reference: bool,
    mesh: DeviceMesh | None,
) -> Policy:
    """Load ``model`` (or build it from its config, seeded by ``init_seed``, in training mode), adapt or copy it, and
    shard it over ``mesh["data_parallel"]`` (FSDP2; None: not sharded). Arguments as ``ChordModule``'s."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    else:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=lora.dtype if lora else torch.float32)
    lm.train()  # from_pretrained returns eval mode
    if gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    adapters, reference = None, None
    if lora is not None:  # freezes the base; the KL reference is the base with the adapters off
        adapters = LoraPolicy(lm.to(lora.dtype), lora, init_seed, random_init=random_init)
    elif needs_reference:
        reference = PolicyScorer(copy.deepcopy(lm).requires_grad_(False).eval())
    scorer = PolicyScorer(lm)
    if mesh is not None:
        shard_fsdp2(scorer, mesh["data_parallel"])
        if reference is not None:
            shard_fsdp2(reference, mesh["data_parallel"])
    return Policy(scorer, reference, adapters)


class HoldsPolicy(Protocol):
    """Whatever holds a built policy's parts: ``build_policy``'s ``Policy``, or the ``ChordModule`` that keeps them
    (None before its ``configure_model``)."""

    @property
    def scorer(self) -> PolicyScorer | None: ...

    @property
    def reference(self) -> PolicyScorer | None: ...

    @property
    def lora(self) -> LoraPolicy | None: ...


def scorer_of(holder: HoldsPolicy) -> PolicyScorer:
    assert holder.scorer is not None, "configure_model has not run"
    return holder.scorer


@contextmanager
def gathered(holder: HoldsPolicy) -> Iterator[PreTrainedModel]:
    """The policy with its FSDP2 root parameters gathered, for generation outside ``forward``."""
    scorer = scorer_of(holder)
    fsdp_root = hasattr(scorer, "unshard")  # fully_shard made the scorer an FSDPModule
    if fsdp_root:
        cast("FSDPModule", scorer).unshard()
    try:
        yield scorer.lm
    finally:
        if fsdp_root:
            cast("FSDPModule", scorer).reshard()


@contextmanager
def kl_reference(holder: HoldsPolicy) -> Iterator[PolicyScorer]:
    """The KL penalty's reference policy: the frozen copy, or under LoRA the scorer with its adapters off."""
    if holder.lora is not None:
        with holder.lora.base():
            yield scorer_of(holder)
    else:
        assert holder.reference is not None, "configure_model has not run"
        yield holder.reference


def full_parameters(holder: HoldsPolicy) -> Iterator[tuple[str, Tensor]]:
    """The policy's parameters under their Hugging Face names, one at a time, gathered if sharded.

    Under FSDP2 each ``full_tensor()`` is a collective: every rank must iterate in step.
    """
    scorer = scorer_of(holder)
    if holder.lora is not None:  # W + (α/r)·B·A under the plain names: the engine loads a full model's weights
        yield from holder.lora.merged_parameters()
        return
    for name, param in scorer.lm.named_parameters():
        tensor = param.detach()
        yield name, tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def without_frozen_base(state_dict: dict[str, Tensor], lora: LoraPolicy) -> dict[str, Tensor]:
    """A LoRA checkpoint's ``state_dict`` without the frozen base, which a resume rebuilds from ``model.model``: only
    what trains (the module keeps the policy as ``scorer``, hence its keys ``scorer.lm.*``)."""
    frozen = lora.frozen_keys("scorer.lm.")
    return {k: v for k, v in state_dict.items() if k not in frozen}


def with_frozen_base(state_dict: dict[str, Tensor], own: dict[str, Tensor], lora: LoraPolicy) -> dict[str, Tensor]:
    """A LoRA checkpoint's ``state_dict`` with the frozen base put back from the module's ``own`` state dict, so
    that strict loading stays on."""
    frozen = lora.frozen_keys("scorer.lm.")
    return {**{k: v for k, v in own.items() if k in frozen}, **state_dict}


class EngineMismatch:
    """Truncated importance sampling against the gap between the policy trained and the rollout engine's copy of it
    (vLLM's kernels, its dtype): the cap LoRA turns on, and the weights of the rollout tokens."""

    def __init__(self) -> None:
        self.lora_cap = 0.0  # the cap LoRA turns on for an engine coarser than float32 (``attached``)
        self.warned = False  # without engine log-probabilities the cap does nothing: said once

    def attached(self, lora: LoraPolicy | None, engine_dtype: torch.dtype | None, tis_cap: float) -> None:
        """The engine holds its own copy of the weights in ``engine_dtype`` (None: it samples from the policy itself).
        Under LoRA a coarser copy turns truncated importance sampling on (``lora.rollout_tis_cap``)."""
        if lora is not None and engine_dtype is not None:
            self.lora_cap = rollout_tis_cap(engine_dtype, tis_cap)

    def weights(self, old_logprobs: Tensor, micro: TrainTensors, cap: float) -> Tensor | None:
        """``loss.importance_weights`` of the policy that sampled (``old_logprobs``) over the engine, capped at
        ``cap``; None when off (0) or without engine log-probabilities (the transformers engine samples from the
        policy itself, so there is no mismatch), which it says once."""
        if not cap:
            return None
        if micro.engine_logprobs is None:
            if not self.warned and not micro.is_expert.all():
                rank_zero_warn(
                    f"model.tis_cap={cap} has no effect: the rollout engine reports no log-probabilities "
                    "(the transformers engine samples from the trained policy itself, so there is no mismatch)"
                )
                self.warned = True
            return None
        engine = micro.engine_logprobs[:, : old_logprobs.shape[1]].to(old_logprobs.device)
        return importance_weights(old_logprobs, engine, cap)
