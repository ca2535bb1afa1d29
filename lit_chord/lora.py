"""LoRA (Hu et al. 2021, arXiv 2106.09685) for CHORD: train low-rank adapters on a frozen base with ``peft``.

Every targeted linear layer ``y = W x`` becomes ``y = W x + (α / r)·B A x`` with ``A`` (r × in) random and ``B``
(out × r) zero at the start, so the adapted policy starts as the base. Only ``A`` and ``B`` are trained and sit in
the optimizer; gradients and AdamW's moments exist for them alone, which is what lets a 7B policy train on one GPU.

Three things follow from the frozen base, and they live here:
- the KL penalty's reference policy is the base itself: the policy with its adapters switched off (``base``), no
  second copy of the weights;
- the rollout engine and the export get the merged weights ``W + (α / r)·B A`` under the plain Hugging Face names
  (``merged_parameters``), so vLLM loads them as it loads a full fine-tune, and a merged export loads anywhere;
- a checkpoint needs only the adapters (and their optimizer state): the base is rebuilt from ``model.model``.

Dtypes: the base may be loaded in bfloat16 (``base_dtype``; half the memory of float32, and it gets no updates
that rounding could swallow) while the adapters stay float32 (``peft``'s ``autocast_adapter_dtype``), so AdamW
updates them at full precision; under ``bf16-mixed`` the matmuls run in bfloat16 either way. The merged weights
are computed and handed out in float32, and whoever stores them picks the dtype: a float32 engine gets the trained
policy exactly, the export writes the base's dtype. Cast back to a bfloat16 base, ``W + ΔW`` would lose every
update smaller than half a bfloat16 step of ``W`` (|W|·2⁻⁹), while the trainer adds ``B A x`` exactly: a small-lr
run's first updates would not reach the engine at all. An engine that holds bfloat16 weights rounds the same
way, so it samples from a slightly different policy than the one trained; ``rollout_tis_cap`` then turns on
truncated importance sampling with the engine's log-probabilities (``model.tis_cap``), which corrects for exactly
that mismatch, and ``rollout/logprob_gap`` measures it.

Simplified: plain LoRA on the decoder's linear layers only (no DoRA or rsLoRA; embeddings, the output head and
norms train in full when asked for, as ``modules_to_save``), one adapter. The head takes no adapter: log-probabilities
are computed from its weight directly (``logprobs.token_logprobs``, chunked over the vocabulary), so one would never
train.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_chord.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ADAPTER = "default"  # peft's name of the one adapter
SAVED = f".modules_to_save.{ADAPTER}."  # in the name of a module's trained copy (``modules_to_save``)
LOSSY_PUSH_TIS_CAP = 2.0  # TIS for a coarser engine: a token the engine found half as likely counts at most twice


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters on the frozen policy (``--model.lora.rank 8``).

    Args:
        rank: r, the adapters' rank.
        alpha: α: the update is scaled by α / r.
        dropout: Dropout on the adapters' input during training (0: none).
        target_modules: ``"all-linear"`` (every linear layer of the decoder, not the output head), or the names of
            the modules to adapt, e.g. ``[q_proj, k_proj, v_proj, o_proj]``.
        base_dtype: dtype of the frozen base: ``float32`` or ``bfloat16`` (half the memory; the adapters stay
            float32 either way).
        modules_to_save: Modules trained in full next to the adapters (a float32 copy each; the base keeps its
            own for the KL reference), by name suffix: ``[norm]`` is every RMSNorm (2·layers + 1 vectors),
            ``[embed_tokens]`` the embeddings (and the output head, where the model ties them). None: none on a
            pretrained base; on a random-init one (``model.random_init``) the embeddings and output head, which
            frozen at their initialization cap the logits (``from_scratch_modules``). ``[]``: none even then.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    base_dtype: Literal["float32", "bfloat16"] = "float32"
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"model.lora.rank must be >= 1 (model.lora: null turns LoRA off), got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"model.lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must lie in [0, 1), got {self.dropout}")

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.base_dtype == "bfloat16" else torch.float32


# A checkpoint's hyper-parameters hold the settings; Lightning loads checkpoints with ``weights_only=True``.
torch.serialization.add_safe_globals([LoraSettings])


def trained_copy(module: torch.nn.Module) -> torch.nn.Module:
    """The module the adapted policy runs: the trained copy of a ``modules_to_save`` module, else the module."""
    copies = getattr(module, "modules_to_save", None)
    return copies[ADAPTER] if copies is not None else module


def module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def ties_embeddings(policy: PreTrainedModel) -> bool:
    return bool(getattr(policy.config, "tie_word_embeddings", False))


def from_scratch_modules(policy: PreTrainedModel) -> list[str]:
    """What a random-init base trains in full next to its adapters: the embeddings and the output head (one matrix
    where they are tied). LoRA assumes a pretrained base whose features the adapters steer; a base trained from
    nothing has no knowledge to keep, and its output head frozen at the initialization caps the logits: with
    embeddings of std 0.02 in d dimensions and an RMS-normalized final state of norm √d, no logit can exceed
    ≈ 0.02·√d·√d (2.6 for the demo's d = 128), so no token gets a probability above a few percent and sampled
    rollouts stay noise. Measured on the demo: held-out accuracy 0.08 with the embeddings frozen, 1.0 with them
    trained (README, LoRA)."""
    modules = [module_name(policy, policy.get_input_embeddings())]
    if not ties_embeddings(policy):
        modules.append(module_name(policy, policy.get_output_embeddings()))
    return [name.rsplit(".", 1)[-1] for name in modules]


def full(tensor: Tensor) -> Tensor:
    """The whole tensor of a parameter, gathered if it is an FSDP2 shard (a collective)."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class LoraPolicy:
    """The policy with LoRA adapters, and peft's wrapper around it.

    Not an ``nn.Module``: the LightningModule already holds the policy (in its scorer), and a second path to the
    same parameters would put them in its state dict twice. ``lm`` is the Hugging Face model itself, whose linear
    layers peft has replaced in place by adapter layers; parameter names gain ``.base_layer`` and
    ``.lora_A.default`` / ``.lora_B.default``.
    """

    def __init__(self, policy: PreTrainedModel, settings: LoraSettings, seed: int, random_init: bool = False) -> None:
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import Linear
        from peft.tuners.tuners_utils import BaseTunerLayer

        saved = settings.modules_to_save
        if saved is None:
            saved = from_scratch_modules(policy) if random_init else []
        self.modules_to_save = saved  # what trains in full next to the adapters, as resolved for this base
        self.base_dtype = settings.dtype  # the frozen base's, in which the export stores the merged weights
        names = [name for name, _ in policy.named_modules() if name]
        # Resolved to full names here: peft's own matching of a bare name changed in 0.22 (``norm`` stopped matching
        # ``input_layernorm``), and README promises a suffix.
        full_names = [name for name in names if any(name.endswith(suffix) for suffix in saved)]
        unmatched = [suffix for suffix in saved if not any(name.endswith(suffix) for name in names)]
        if unmatched:  # peft would train nothing for them, silently
            leaves = sorted({leaf for name in names if not (leaf := name.rsplit(".", 1)[-1]).isdigit()})
            raise ConfigError(
                f"model.lora.modules_to_save: no module's name ends in {unmatched}; its modules: {leaves}"
            )
        head_name = module_name(policy, policy.get_output_embeddings())
        targets = [] if isinstance(settings.target_modules, str) else settings.target_modules  # "all-linear": no head
        if any(head_name == target or head_name.endswith(f".{target}") for target in targets):  # as peft matches
            # the scorer projects with the head's own weight (logprobs.token_logprobs), never through an adapter on it
            raise ConfigError(
                f"model.lora.target_modules: the output head ({head_name}) cannot take an adapter, which would never "
                f"train; name it in model.lora.modules_to_save to train it in full"
            )
        embeddings = module_name(policy, policy.get_input_embeddings())
        tied = ties_embeddings(policy)
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,  # type: ignore[arg-type]  # annotated int in peft; a float scales alike
            lora_dropout=settings.dropout,
            target_modules=settings.target_modules,
            modules_to_save=full_names or None,
            # A trained copy of tied embeddings must stay the output head too: without this peft trains the input
            # copy only, and the policy would read with one matrix and write with another that no engine can load.
            ensure_weight_tying=tied and embeddings in full_names,
        )
        with torch.random.fork_rng(devices=[]):  # A's initialization: a function of the seed, not of the process
            torch.manual_seed(seed)
            self.peft_model = get_peft_model(policy, config, autocast_adapter_dtype=True)  # freezes the base
        self.lm = cast("PreTrainedModel", self.peft_model.base_model.model)
        tuned = {name: m for name, m in self.lm.named_modules() if isinstance(m, BaseTunerLayer)}
        self.layers = {name: m for name, m in tuned.items() if isinstance(m, Linear)}
        other = sorted(set(tuned) - set(self.layers))
        if other:
            raise ConfigError(f"model.lora.target_modules: only linear layers can be adapted, not {other}")
        head, inputs = (trained_copy(m) for m in (self.lm.get_output_embeddings(), self.lm.get_input_embeddings()))
        if tied and head.weight is not inputs.weight:
            raise ConfigError(
                f"model.lora.modules_to_save {saved}: this model ties its output head to its input embeddings; "
                f"train both by naming the embeddings ({embeddings.rsplit('.', 1)[-1]}), not the head alone"
            )

    @contextmanager
    def base(self) -> Iterator[None]:
        """The frozen base: adapters off and eval mode (the reference policy of the KL penalty)."""
        training = self.lm.training
        self.lm.eval()
        try:
            with self.peft_model.disable_adapter():
                yield
        finally:
            self.lm.train(training)

    def merged_parameters(self, merge: bool = True) -> Iterator[tuple[str, Tensor]]:
        """The policy's parameters under their Hugging Face names, each targeted weight merged: ``W + (α/r)·B A`` in
        float32, not cast back to a bfloat16 base's dtype, which would round small updates away (module doc); with
        ``merge=False`` the base's own. One at a time (a 7B layer's largest merged weight is 0.27 GB in float32),
        gathered if sharded (a collective under FSDP2: every rank must iterate in step)."""
        for name, param in self.lm.named_parameters():
            if ".lora_" in name or (merge and ".original_module." in name) or (not merge and SAVED in name):
                continue
            name = name.replace(".original_module.", ".").replace(SAVED, ".")  # a module trained in full
            if ".base_layer." not in name:
                yield name, full(param)
                continue
            path, leaf = name.split(".base_layer.")
            tensor = full(param)
            if leaf == "weight" and merge:
                tensor = tensor.float() + self.delta(path)
            yield f"{path}.{leaf}", tensor

    def delta(self, path: str) -> Tensor:
        """(α / r)·B A of the adapter layer at ``path``, float32, in the base weight's layout."""
        layer = self.layers[path]
        a = full(cast(Tensor, layer.lora_A[ADAPTER].weight)).float()  # (r, in)
        b = full(cast(Tensor, layer.lora_B[ADAPTER].weight)).float()  # (out, r)
        delta = (b @ a) * layer.scaling[ADAPTER]
        return delta.T if layer.fan_in_fan_out else delta

    def adapter_state(self) -> dict[str, Tensor]:
        """The adapters' tensors under peft's names, on the CPU (a collective under FSDP2)."""
        state = self.lm.state_dict(keep_vars=True)  # every name: peft saves a tied head's copy under its own too
        return {f"base_model.model.{key}": full(t).cpu() for key, t in state.items() if ".lora_" in key or SAVED in key}

    def save_adapter(self, path: Path, state: dict[str, Tensor], base: str | None = None) -> None:
        """A peft adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) for
        ``PeftModel.from_pretrained(base_model, path)``; ``base`` overrides the base model's path recorded there."""
        config = self.peft_model.peft_config[ADAPTER]
        recorded = config.base_model_name_or_path
        if base is None and recorded and Path(recorded).exists():  # a local base: absolute, so the adapter loads
            base = str(Path(recorded).resolve())  # from any folder (a hub name stays as it is)
        config.base_model_name_or_path = base or recorded
        try:
            self.peft_model.save_pretrained(str(path), state_dict=state)
        finally:
            config.base_model_name_or_path = recorded

    def frozen_keys(self, prefix: str) -> set[str]:
        """State-dict keys of the frozen base under ``prefix`` (the policy's path in the LightningModule)."""
        state = self.lm.state_dict(keep_vars=True)  # by tensor, not by name: a tied head's copy is the embeddings'
        return {prefix + key for key, tensor in state.items() if not tensor.requires_grad}


def rollout_tis_cap(engine_dtype: torch.dtype, tis_cap: float) -> float:
    """The TIS cap of a LoRA run whose engine holds its weights in ``engine_dtype``: ``tis_cap`` as set, or, where
    it is off (0) and the engine's dtype is coarser than float32, ``LOSSY_PUSH_TIS_CAP`` with a one-line warning.

    The engine then rounds every merged weight ``W + ΔW`` to its dtype, and an update below half a step of ``W``
    never reaches it (module doc): the rollouts lag the policy trained, and without a correction the trainer would
    treat them as its own. Truncated importance sampling weights each rollout
    token by min(π_trainer / π_engine, cap), which is what that mismatch calls for; where the engine matches, the
    ratio is 1 and the weights change nothing. A full fine-tune into a bfloat16 engine has the same mismatch and
    keeps ``model.tis_cap`` as set (its default, 0, is the reference's).
    """
    if tis_cap or torch.finfo(engine_dtype).eps <= torch.finfo(torch.float32).eps:
        return tis_cap
    rank_zero_warn(
        f"LoRA with a {str(engine_dtype).removeprefix('torch.')} rollout engine: the merged weights W + ΔW are "
        f"rounded there, so updates below half a step of W do not reach it; model.tis_cap={LOSSY_PUSH_TIS_CAP:g} "
        "(truncated importance sampling with the engine's log-probabilities) is on to correct for it (set "
        "model.tis_cap to choose the cap; rollout/logprob_gap logs the mismatch)"
    )
    return LOSSY_PUSH_TIS_CAP
