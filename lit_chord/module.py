"""``ChordModule``: the policy and one CHORD optimizer step.

Per step: count the step's rollout and expert tokens across micro-batches and ranks (the global normalizers),
then for each micro-batch compute token log-probabilities without materializing the full-vocabulary
log-softmax, call ``loss.chord_loss`` and backpropagate; then clip, skip the update if the gradient is not
finite, and step the optimizer. Work without gradient is skipped (``split_rows``): masked truncated rollouts
(``RolloutCallback.mask_truncated_completions``) carry no loss token, and rollouts with advantage 0 get a forward
pass for their metrics but no backward. Because every micro-batch divides by the step's global counts, the
gradient does not depend on how rows fall into micro-batches or ranks.

Several updates per step (``ppo_epochs``, ``ppo_mini_batches``): the step's rows are cut into mini-batches of whole
prompt groups, and each mini-batch gets an update as above, with its own global normalizers. The old
log-probabilities are then recomputed by the trainer once, under ``no_grad``, before the first update. With one
update (the reference's setting) the policy that scores is the one that sampled, and the old log-probabilities are
the detached current ones (ratio 1). Either way they come from the trainer, never from the engine (whose numbers
differ; ``tis_cap`` corrects for that gap).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.optimizer import LightningOptimizer, do_nothing_closure
from lightning.pytorch.utilities import AttributeDict, rank_zero_warn
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from lit_chord.batch import StepBatch, TrainTensors, ValBatch, split_mini_batches
from lit_chord.errors import ConfigError
from lit_chord.flops import ModelShape, forward_flops, model_shape, peak_flops, training_flops
from lit_chord.lora import LoraPolicy, LoraSettings, rollout_tis_cap
from lit_chord.loss import Normalizers, count_normalizers
from lit_chord.metrics import logprob_gap
from lit_chord.objectives import Chord, LossInputs, LossOutput, Objective, as_config
from lit_chord.packing import check_padding_free, pack_micro_batches, pack_padding_free
from lit_chord.schedules import CosineDecay
from lit_chord.scorer import PolicyScorer, shard_fsdp2
from lit_chord.validation import HeldOutScores

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule
    from transformers import PreTrainedModel

NON_ADDITIVE = ("ratio_max",)


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What every update of one step shares: its 1-based number (the objective's schedules follow it), the sampling
    temperature, the horizon of seq-mean-token-sum-norm, and the step's rows (whose first row pads the passes of a
    rank with fewer)."""

    number: int
    temperature: float
    horizon: int
    rows: TrainTensors


def accumulate(totals: dict[str, Tensor], metrics: dict[str, Tensor], weight: float) -> None:
    """Add a micro-batch's metrics (token-mean shares of the step) into the step's totals; ``ratio_max`` is a max."""
    for key, value in metrics.items():
        value = value * weight
        totals[key] = torch.maximum(totals[key], value) if key == "ratio_max" else totals[key] + value


def adamw(params) -> torch.optim.Optimizer:
    """The reference optimizer: AdamW, lr 1e-6, betas (0.9, 0.999), weight decay 0.01, constant LR."""
    return torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), weight_decay=0.01)


class ChordModule(LightningModule):
    def __init__(
        self,
        model: str,
        random_init: bool = False,
        init_seed: int = 0,
        objective: Objective | None = None,
        micro_batch_size: int = 8,
        max_tokens_per_micro_batch: int | None = None,
        padding_free: bool = False,
        logprob_chunk_size: int = 1024,
        max_grad_norm: float = 1.0,
        max_consecutive_skips: int = 10,
        ppo_epochs: int = 1,
        ppo_mini_batches: int = 1,
        tis_cap: float = 0.0,
        gradient_checkpointing: bool = False,
        lora: LoraSettings | None = None,
        optimizer: OptimizerCallable = adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        """The policy to load, the objective that trains it, how a step is cut into passes, and the optimizer.

        Args:
            model: Path or hub name of a causal LM, loaded with ``AutoModelForCausalLM.from_pretrained``.
            random_init: Build the model from its ``config.json`` with random weights instead (demo and tests).
            init_seed: Seed of the random initialization.
            objective: The algorithm (``class_path``, ``lit_chord.objectives``): ``lit_chord.objectives.Chord``
                (None: its defaults, the reference's CHORD-φ with μ = 0.1), ``Grpo``, ``Luffy``, ``Sft``, or one of
                your own; it says what the step needs (an SFT stream, traces in groups, a reference policy).
            micro_batch_size: Rows per forward/backward, in arrival order; the step's result does not depend on it.
            max_tokens_per_micro_batch: Token budget per forward/backward instead of ``micro_batch_size`` (None:
                rows). Rows sorted by length are packed into passes of at most this many padded tokens, rows ×
                longest row (``lit_chord.packing``): short rows share a pass, a long one gets its own, and a row over
                the budget a pass of its own (warned once). The step's result does not depend on it. For a 7B policy
                per 80 GB GPU (``configs/chord_qwen2.5_7b_openr1.yaml``), 25600, the reference's
                ``max_token_len_per_gpu``: 80 GB − 15 GB of sharded fp32 states (16 B/param × 7.6B / 8 GPUs) − 28 GB
                of vLLM (0.35) − ~6 GB of CUDA context, gathered FSDP2 layers and the LM-head chunk leaves ~30 GB;
                with gradient checkpointing a token keeps its fp32 input to each layer (28 × 3584 × 4 B = 0.4 MB)
                plus one layer's recomputed activations and their gradients (~0.5 MB): ~0.9 MB a token, ~33k
                tokens, of which 25600 leaves ~20% for fragmentation.
            padding_free: Each pass is one row of its sequences concatenated, ``position_ids`` restarting at 0 per
                sequence, attention kept within each (``lit_chord.packing``); the budget then counts real tokens.
                Needs ``max_tokens_per_micro_batch`` and an attention implementation that reads the boundaries:
                flash_attention_2/3/4 (varlen kernels: attention costs Σ length²), sdpa or eager (a block-diagonal
                mask: the whole (N, N) product, so on a CPU slower than padded passes of short rows), flex_attention
                on CUDA (none has a CPU backward). Same log-probabilities, loss and gradient as padded passes.
            logprob_chunk_size: Tokens per chunk when projecting onto the vocabulary.
            max_grad_norm: Gradient clipping by global norm (reference: 1.0); 0 disables.
            max_consecutive_skips: Stop after this many consecutive updates with a non-finite loss or gradient.
            ppo_epochs: Passes over each step's rollouts (DeepSeekMath's GRPO iterations μ, verl's ``ppo_epochs``,
                TRL's ``num_iterations``). Reference: 1.
            ppo_mini_batches: Optimizer updates per pass, each on one share of the step's prompt groups and expert
                rows (verl: ``data.train_batch_size / actor.ppo_mini_batch_size``; TRL's ``steps_per_generation``;
                LUFFY's script: 2). Reference: 1. With ``ppo_epochs × ppo_mini_batches`` > 1 the old
                log-probabilities are taken once before the first update (a forward pass over the step's rows), so
                later updates see ratios ≠ 1 and the clips act. μ, the LR schedule, ``global_step`` and
                ``trainer.max_steps`` still count steps (rollout batches), one value for all of a step's updates:
                Trinity-RFT computes μ from its train step, which samples one batch; verl steps its LR once per
                batch. Each rank's prompt groups per step must be at least this many (a multiple of it for 2 ranks
                to update exactly as 1).
            tis_cap: Truncated importance sampling for the sampler/trainer mismatch: weight each rollout token's
                policy loss by min(π_trainer / π_engine, tis_cap), using the engine's log-probabilities (vLLM,
                at the sampling temperature). 0 disables it (reference); otherwise it must be >= 1. Without engine
                log-probabilities (the transformers engine samples from the policy itself) it has no effect, and
                says so once. Under LoRA with an engine coarser than float32 (vLLM in bfloat16), 0 becomes 2 with a
                warning: the merged push rounds small updates away there (``lit_chord.lora.rollout_tis_cap``).
            gradient_checkpointing: Recompute decoder activations in backward to save memory.
            lora: Train LoRA adapters on a frozen base instead of every weight (``lit_chord.lora``; None: off):
                ``--model.lora.rank 8``. The KL reference is then the base with the adapters off, the engine and
                the export get the merged weights, and checkpoints hold only what trains (the adapters, and the
                ``modules_to_save``: on a ``random_init`` base the embeddings, by default).
            optimizer: Optimizer factory (LightningCLI: ``--optimizer AdamW --optimizer.lr 1e-6``).
            lr_scheduler: Optional LR scheduler factory, stepped once per optimizer step.
        """
        super().__init__()
        if max_grad_norm < 0:
            raise ValueError(f"model.max_grad_norm must be >= 0, got {max_grad_norm}")
        for name, value in [
            ("micro_batch_size", micro_batch_size),
            ("ppo_epochs", ppo_epochs),
            ("ppo_mini_batches", ppo_mini_batches),
        ]:
            if value < 1:
                raise ValueError(f"model.{name} must be >= 1, got {value}")
        if max_tokens_per_micro_batch is not None and max_tokens_per_micro_batch < 1:
            raise ValueError(f"model.max_tokens_per_micro_batch must be >= 1 or null, got {max_tokens_per_micro_batch}")
        if padding_free and max_tokens_per_micro_batch is None:
            raise ValueError("model.padding_free needs model.max_tokens_per_micro_batch (the real tokens per pass)")
        if tis_cap and tis_cap < 1.0:
            raise ValueError(f"model.tis_cap must be 0 (off) or >= 1, got {tis_cap}: a cap below 1 shrinks every token")
        self.objective = objective if objective is not None else Chord()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "objective"])
        self.hparams["objective"] = as_config(self.objective)  # by value: a resume compares it with the checkpoint's
        self.automatic_optimization = False  # micro-batching inside a step needs manual backward
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.scorer: PolicyScorer | None = None
        self.reference: PolicyScorer | None = None  # the KL penalty's frozen copy (full fine-tune only)
        self.lora: LoraPolicy | None = None  # the adapters' bookkeeping; their parameters live in the scorer
        self.lora_settings = lora  # not hparams.lora: under LightningCLI that is the command line's dict form
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.held_out = HeldOutScores()  # the validation's metrics and the accuracy before training
        self.checkpoint_step: int | None = None  # the loaded checkpoint's global_step: where `validate` logs
        self.peak_flops: float | None = None  # the device's peak FLOP/s at the trainer's precision, for train/mfu
        self.shape: ModelShape | None = None  # what the policy's FLOPs depend on, for train/mfu
        self.scaled_grad_norm: Tensor | None = None  # 16-mixed: the norm clipped after the plugin unscaled
        self.lora_tis_cap = 0.0  # the cap LoRA turns on for an engine coarser than float32 (engine_attached)
        self.tis_warned = False
        self.budget_warned = False
        self.pass_counts = [0, 0, 0]  # this step's passes, tokens processed, of which padding (micro_batches)
        self.configured_lrs: list[float] = []  # the optimizer's lr per group as configured (on_train_start compares)

    @property
    def hp(self) -> AttributeDict:
        """``self.hparams``, typed for attribute access (Lightning annotates it as a plain ``MutableMapping``)."""
        return cast(AttributeDict, self.hparams)

    # ----- model ------------------------------------------------------------------------------------------------
    @property
    def policy(self) -> PreTrainedModel | None:
        """The ``transformers`` causal LM being trained (None until ``configure_model``)."""
        return self.scorer.lm if self.scorer is not None else None

    def configure_model(self) -> None:
        if self.scorer is not None:
            return
        from transformers import AutoConfig, AutoModelForCausalLM

        hp, lora = self.hp, self.lora_settings
        if hp.random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hp.init_seed)
                policy = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hp.model))
        else:
            policy = AutoModelForCausalLM.from_pretrained(hp.model, dtype=lora.dtype if lora else torch.float32)
        policy.train()  # from_pretrained returns eval mode
        if hp.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:  # freezes the base; the KL reference is the base with the adapters off
            self.lora = LoraPolicy(policy.to(lora.dtype), lora, hp.init_seed, random_init=hp.random_init)
        elif self.objective.needs.reference:
            import copy

            self.reference = PolicyScorer(copy.deepcopy(policy).requires_grad_(False).eval())
        self.scorer = PolicyScorer(policy)
        mesh = self.device_mesh  # set by ModelParallelStrategy (FSDP2)
        if mesh is not None:
            shard_fsdp2(self.scorer, mesh["data_parallel"])
            if self.reference is not None:
                shard_fsdp2(self.reference, mesh["data_parallel"])

    @contextmanager
    def gathered(self) -> Iterator[nn.Module]:
        """The policy with its FSDP2 root parameters gathered, for generation outside ``forward``."""
        assert self.scorer is not None, "configure_model has not run"
        fsdp_root = hasattr(self.scorer, "unshard")  # fully_shard made the scorer an FSDPModule
        if fsdp_root:
            cast("FSDPModule", self.scorer).unshard()
        try:
            yield self.scorer.lm
        finally:
            if fsdp_root:
                cast("FSDPModule", self.scorer).reshard()

    @contextmanager
    def kl_reference(self) -> Iterator[PolicyScorer]:
        """The KL penalty's reference policy: the frozen copy, or under LoRA the scorer with its adapters off."""
        if self.lora is not None:
            assert self.scorer is not None, "configure_model has not run"
            with self.lora.base():
                yield self.scorer
        else:
            assert self.reference is not None, "configure_model has not run"
            yield self.reference

    def full_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """The policy's parameters under their Hugging Face names, one at a time, gathered if sharded.

        Under FSDP2 each ``full_tensor()`` is a collective: every rank must iterate in step.
        """
        assert self.policy is not None, "configure_model has not run"
        if self.lora is not None:  # W + (α/r)·B·A under the plain names: the engine loads a full model's weights
            yield from self.lora.merged_parameters()
            return
        for name, param in self.policy.named_parameters():
            tensor = param.detach()
            yield name, tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor

    def on_fit_start(self) -> None:
        assert self.policy is not None, "configure_model has not run"
        self.peak_flops = peak_flops(self.device, str(self.trainer.precision))
        if self.hp.padding_free:  # here, where the device is known: flex_attention trains padding-free on CUDA only
            check_padding_free(self.policy.config._attn_implementation, self.device)
        self.shape = model_shape(self.policy)
        for warning in self.objective.check_run(self.trainer.max_steps):  # as configure_optimizers does for the LR
            rank_zero_warn(f"model.objective: {warning}")

    def configure_optimizers(self):
        assert self.scorer is not None, "configure_model has not run"
        optimizer = self.optimizer_factory([p for p in self.scorer.parameters() if p.requires_grad])  # LoRA: adapters
        self.configured_lrs = [group["lr"] for group in optimizer.param_groups]  # before a scheduler scales them
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        max_steps = self.trainer.max_steps
        if isinstance(scheduler, CosineDecay):
            scheduler.follow_run_length(max_steps)  # total_steps: null follows trainer.max_steps
        pinned = getattr(scheduler, "T_max", None) or getattr(scheduler, "total_steps", None)
        if pinned and 0 < max_steps != pinned:
            rank_zero_warn(
                f"the LR schedule {type(scheduler).__name__} spans {pinned} steps but trainer.max_steps is "
                f"{max_steps}; lit_chord.schedules.CosineDecay with total_steps: null follows the run's length"
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}

    def on_train_start(self) -> None:
        """Warn when a resumed run's optimizer keeps the checkpoint's learning rate over this run's: Lightning loads
        the optimizer state (its ``lr``; a scheduler's ``initial_lr``, the rate it scales) after
        ``configure_optimizers``, so a changed ``lr`` would otherwise not apply, silently."""
        restored = [group.get("initial_lr", group["lr"]) for group in self.trainer.optimizers[0].param_groups]
        for configured, kept in zip(self.configured_lrs, restored, strict=True):
            if configured != kept:
                rank_zero_warn(
                    f"the optimizer's lr {configured} does not apply: resuming restores the checkpoint's optimizer "
                    f"state, which keeps lr {kept}"
                )
                return

    def token_logprobs(self, scorer: PolicyScorer, rows: TrainTensors, temperature: float, with_entropy: bool):
        """Log-probabilities (and entropies) of ``input_ids[:, 1:]``, shapes ``(B, T - 1)``."""
        chunk, padding_free = self.hp.logprob_chunk_size, self.hp.padding_free
        return scorer(rows.input_ids, rows.attention_mask, temperature, chunk, with_entropy, padding_free)

    # ----- training ---------------------------------------------------------------------------------------------
    def global_normalizers(self, rows: TrainTensors) -> Normalizers:
        local = count_normalizers(rows.loss_mask[:, :-1], rows.is_expert, rows.off_policy)
        total = self.trainer.strategy.reduce(local.as_tensor().to(self.device), reduce_op="sum")
        return Normalizers.from_tensor(total)

    @property
    def updates_per_step(self) -> int:
        return self.hp.ppo_epochs * self.hp.ppo_mini_batches

    def training_step(self, batch: StepBatch, batch_idx: int) -> None:
        start = time.perf_counter()
        number = self.trainer.global_step + 1  # 1-based; one for every update of the step: schedules count steps
        assert batch.train is not None, "the rollout callback fills batch.train before training_step"
        rows = batch.train.to(self.device)
        # seq-mean-token-sum-norm divides by a constant of the run, the same on every rank: the generation budget
        assert batch.horizon is not None, "the rollout callback sets batch.horizon (its max_new_tokens)"
        step = StepContext(number, batch.temperature, batch.horizon, rows)
        if self.updates_per_step > 1:
            rows = self.with_old_logprobs(rows, batch.temperature)
        self.check_mini_batches(int((~rows.is_expert).sum()) // batch.num_generations)
        mini_batches = split_mini_batches(rows, self.hp.ppo_mini_batches, batch.num_generations)
        optimizer = cast(LightningOptimizer, self.optimizers())  # one optimizer
        totals: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler steps after it)
        grad_norms = []
        for epoch in range(self.hp.ppo_epochs):
            for index, mini in enumerate(mini_batches):
                last = epoch == self.hp.ppo_epochs - 1 and index == len(mini_batches) - 1
                grad_norms.append(self.update(mini, step, optimizer, totals, last))
        grad_norm = torch.stack(grad_norms).mean()
        for key in totals:  # the updates' mean (ratio_max: their max); tokens and FLOPs add up
            if key not in ("ratio_max", "tokens", "flops"):
                totals[key] = totals[key] / self.updates_per_step
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the optimizer's kernels belong to this step's time
        self.log_step(totals, self.objective.schedule(number), grad_norm, lr, time.perf_counter() - start)

    def check_mini_batches(self, groups_per_rank: int) -> None:
        """Refuse more mini-batches than a rank has prompt groups: an update without rollouts would still move
        AdamW's moments. The CLI checks it before the run (``runs.prepare_fit``), a plain ``Trainer`` at the step."""
        if self.hp.ppo_mini_batches > 1 and groups_per_rank < self.hp.ppo_mini_batches:  # 1: the whole step as it is
            raise ConfigError(
                f"model.ppo_mini_batches={self.hp.ppo_mini_batches} needs at least as many prompt groups per rank; "
                f"this rank has {groups_per_rank} (data.prompts_per_step / world size)"
            )

    def update(
        self, rows: TrainTensors, step: StepContext, optimizer: LightningOptimizer, totals: dict, last: bool
    ) -> Tensor:
        """One optimizer update on ``rows`` (the step's rows, or one mini-batch of them); its gradient norm.

        Only the step's ``last`` update counts as an optimizer step (``global_step``): μ, the LR schedule, the data
        streams and checkpoints all follow rollout batches, as verl and Trinity-RFT count them."""
        normalizers = self.global_normalizers(rows)
        optimizer.zero_grad(set_to_none=True)
        trained, scored = self.split_rows(rows)
        # Rows whose loss has no gradient first: a forward pass for their metrics, no backward. First, because
        # under FSDP2 a forward leaves the root's parameters gathered until the next backward reshards them; after
        # the last backward, clipping and the optimizer would see the gathered copies instead of the shards.
        score_batches, real_scores = self.micro_batches(scored, step.rows)
        with torch.no_grad():
            for index, micro in enumerate(score_batches):
                out = self.micro_batch_loss(micro, step, normalizers)
                accumulate(totals, out.metrics, 1.0 if index < real_scores else 0.0)
        # At least one backward pass, even if every row was skipped, so that every parameter gets a (zero) gradient
        # and AdamW's moments and weight decay advance as they would had the rows been run.
        micro_batches, real = self.micro_batches(trained, step.rows, at_least=1)
        for index, micro in enumerate(micro_batches):
            out = self.micro_batch_loss(micro, step, normalizers)
            weight = 1.0 if index < real else 0.0  # padding passes only keep the ranks' collectives in step
            # Strategies average gradients over ranks; the normalizers already divide by the global count.
            self.manual_backward(out.loss * self.trainer.world_size * weight)
            accumulate(totals, out.metrics, weight)
        grad_norm = self.clip_and_check(optimizer, counts_step=last)
        assert self.shape is not None, "on_fit_start has not run"
        lengths = [trained.attention_mask.sum(-1), scored.attention_mask.sum(-1)]
        totals["tokens"] += (lengths[0].sum() + lengths[1].sum()).to(torch.float32)
        flops = training_flops(self.shape, lengths[0]) + forward_flops(self.shape, lengths[1])  # scored: forward only
        totals["flops"] += torch.tensor(flops, device=self.device)
        return grad_norm

    @torch.no_grad()
    def with_old_logprobs(self, rows: TrainTensors, temperature: float) -> TrainTensors:
        """``rows`` with the log-probabilities of the policy that sampled them, taken once before the step's first
        update, so that later updates see ratios ≠ 1 and the clip acts (DESIGN's point 4; verl's
        ``compute_log_prob``). Rows without loss tokens are not scored (their ratio is never read)."""
        assert self.scorer is not None, "configure_model has not run"
        old = torch.zeros(rows.loss_mask.shape, dtype=torch.float32, device=self.device)  # (B, T) like loss_mask
        numbered = dataclasses.replace(rows, row_ids=torch.arange(len(rows), device=self.device))
        micro_batches, real = self.micro_batches(numbered.select(rows.loss_mask.bool().any(-1)), numbered)
        for position, micro in enumerate(micro_batches):
            logprobs, _ = self.token_logprobs(self.scorer, micro, temperature, with_entropy=False)
            if position < real:  # padding passes only keep the ranks' collectives in step
                assert micro.row_ids is not None
                old[micro.row_ids, : logprobs.shape[1]] = logprobs.float()
        self.pass_counts = [0, 0, 0]  # train/micro_batches and train/padding_frac describe the updates
        return dataclasses.replace(rows, old_logprobs=old)

    def split_rows(self, rows: TrainTensors) -> tuple[TrainTensors, TrainTensors]:
        """The rows to train on, and the rows only to score (no backward). Rows without loss tokens (masked
        truncated rollouts) are in neither: no gradient, no metric. A rollout with advantage 0 (a group with equal
        rewards) has a policy-gradient term A·ratio that is exactly 0 with its gradient, so while no entropy bonus
        or KL penalty acts on it, it is only scored: its metrics (entropy, log-prob gap) stay in the step's means."""
        has_loss = rows.loss_mask.bool().any(-1)
        zero_gradient = self.objective.without_gradient(rows.is_expert, rows.advantages, rows.off_policy)
        return rows.select(has_loss & ~zero_gradient), rows.select(has_loss & zero_gradient)

    def micro_batches(
        self, rows: TrainTensors, padding: TrainTensors, at_least: int = 0
    ) -> tuple[list[TrainTensors], int]:
        """``rows`` in micro-batches (``micro_batch_size`` rows, or by token budget), and how many of them are real.
        Every rank must run as many passes as the others (DDP and FSDP2 reduce gradients in backward, FSDP2 gathers
        parameters in every forward), so ranks with fewer, or all below ``at_least``, are padded with zero-weight
        passes over the first row of ``padding``."""
        budget, padding_free = self.hp.max_tokens_per_micro_batch, self.hp.padding_free
        if not len(rows):
            micro_batches = []
        elif budget is None:
            micro_batches = rows.micro_batches(self.hp.micro_batch_size)
        else:
            micro_batches = (pack_padding_free if padding_free else pack_micro_batches)(rows, budget)
            longest = int(rows.attention_mask.sum(-1).max())
            if longest > budget and not self.budget_warned:
                warnings.warn(  # on every rank: each packs its own rows
                    f"a row of {longest} tokens exceeds model.max_tokens_per_micro_batch={budget}: it gets a "
                    "micro-batch of its own, over the budget (warned once)",
                    stacklevel=2,
                )
                self.budget_warned = True
        real = len(micro_batches)
        most = int(self.trainer.strategy.reduce(torch.tensor(real, device=self.device), reduce_op="max"))
        most = max(most, at_least)
        passes = micro_batches + [padding.micro_batches(1)[0]] * (most - real)
        # For train/padding_frac: a zero-weight pass is padding through and through (computed, then discarded).
        # A padding-free pass processes its real tokens only.
        processed = sum(int(m.attention_mask.sum()) if padding_free else m.input_ids.numel() for m in passes)
        for index, count in enumerate([len(passes), processed, processed - int(rows.attention_mask.sum())]):
            self.pass_counts[index] += count
        return passes, real

    def micro_batch_loss(self, micro: TrainTensors, step: StepContext, normalizers: Normalizers) -> LossOutput:
        assert self.scorer is not None, "configure_model has not run"
        logprobs, entropy = self.token_logprobs(self.scorer, micro, step.temperature, with_entropy=True)
        ref_logprobs = None
        if self.objective.needs.reference:
            with torch.no_grad(), self.kl_reference() as reference:
                ref_logprobs, _ = self.token_logprobs(reference, micro, step.temperature, with_entropy=False)
        # One update per step: the policy scoring is the one that sampled, so the old log-probabilities are the
        # detached current ones (ratio 1). Several: taken before the first update (``with_old_logprobs``).
        old_logprobs = logprobs.detach() if micro.old_logprobs is None else micro.old_logprobs[:, : logprobs.shape[1]]
        inputs = LossInputs(
            logprobs=logprobs,
            old_logprobs=old_logprobs,
            entropy=entropy,
            mask=micro.loss_mask[:, :-1],
            is_expert=micro.is_expert,
            advantages=micro.advantages,
            normalizers=normalizers,
            step=step.number,
            horizon=step.horizon,
            off_policy=micro.off_policy,
            ref_logprobs=ref_logprobs,
            rollout_weights=self.tis_weights(old_logprobs, micro),
        )
        out = self.objective.loss(inputs)
        out.metrics.update(logprob_gap(logprobs.detach(), micro, normalizers))
        return out

    def tis_weights(self, old_logprobs: Tensor, micro: TrainTensors) -> Tensor | None:
        """min(exp(trainer − engine log-prob), cap) per token, 1 where the engine reported none; None when off. The
        trainer's side is the policy that sampled (``old_logprobs``): the mismatch is between two copies of it."""
        if not self.tis_cap:
            return None
        if micro.engine_logprobs is None:
            if not self.tis_warned and not micro.is_expert.all():
                rank_zero_warn(
                    f"model.tis_cap={self.tis_cap} has no effect: the rollout engine reports no log-probabilities "
                    "(the transformers engine samples from the trained policy itself, so there is no mismatch)"
                )
                self.tis_warned = True
            return None
        engine = micro.engine_logprobs[:, : old_logprobs.shape[1]].to(old_logprobs.device)
        ratio = torch.exp(old_logprobs.detach().float() - torch.nan_to_num(engine, nan=0.0))
        return torch.where(engine.isnan(), torch.ones_like(ratio), ratio.clamp(max=self.tis_cap))

    @property
    def tis_cap(self) -> float:
        """The cap of truncated importance sampling in use: ``model.tis_cap``, else the one LoRA turned on (0: off)."""
        return self.hp.tis_cap or self.lora_tis_cap

    def engine_attached(self, engine_dtype: torch.dtype | None) -> None:
        """The rollout engine holds its own copy of the weights in ``engine_dtype`` (None: it samples from the policy
        itself). Under LoRA a coarser copy turns truncated importance sampling on (``lora.rollout_tis_cap``)."""
        if self.lora is not None and engine_dtype is not None:
            self.lora_tis_cap = rollout_tis_cap(engine_dtype, self.hp.tis_cap)

    def clip_grad_norm(self) -> Tensor:
        """Clip the global gradient norm to ``max_grad_norm`` (0: no clipping); the norm before clipping."""
        assert self.scorer is not None, "configure_model has not run"
        grad_norm = torch.nn.utils.clip_grad_norm_(self.scorer.parameters(), self.hp.max_grad_norm or float("inf"))
        return grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # DTensor under FSDP2

    def on_before_optimizer_step(self, optimizer) -> None:
        """16-mixed only: Lightning's precision plugin unscales the gradients inside ``optimizer.step`` and calls
        this hook right after, so this is where clipping sees the true gradients."""
        if self.grad_scaler() is not None:
            self.scaled_grad_norm = self.clip_grad_norm()

    def grad_scaler(self):
        """The precision plugin's ``GradScaler`` (16-mixed), else None."""
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def clip_and_check(self, optimizer: LightningOptimizer, counts_step: bool = True) -> Tensor:
        """Clip the global gradient norm; update only if it is finite, else skip (counted, fatal if repeated).

        Under 16-mixed the gradients are scaled until the precision plugin unscales them inside
        ``optimizer.step``, so the clipping happens there (``on_before_optimizer_step``), and the plugin's
        ``GradScaler`` skips the update itself when a gradient is not finite (and lowers its scale).

        ``counts_step``: this update ends the step, so it advances ``global_step`` and the LR schedule. The earlier
        updates of a step with several go through the same strategy and precision plugin without counting."""
        scaled = self.grad_scaler() is not None

        def step() -> None:
            if counts_step:
                optimizer.step()
            else:
                self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=do_nothing_closure)

        if scaled:
            self.scaled_grad_norm = None
            step()  # the plugin unscales, calls on_before_optimizer_step (clipping), then steps or skips
            assert self.scaled_grad_norm is not None, "on_before_optimizer_step has not run"
            grad_norm = self.scaled_grad_norm
        else:
            grad_norm = self.clip_grad_norm()
            if torch.isfinite(grad_norm):
                step()
        if torch.isfinite(grad_norm):
            self.consecutive_skips = 0
        else:
            self.skipped_steps += 1
            self.consecutive_skips += 1
            if not scaled:
                optimizer.zero_grad(set_to_none=True)
                if counts_step:
                    # Count the step anyway, so μ and the data streams stay aligned with global_step: the two hooks
                    # that LightningOptimizer.step runs around a real step (progress ready/completed, profiler).
                    optimizer._on_before_step()
                    optimizer._on_after_step()
            if self.consecutive_skips >= self.hp.max_consecutive_skips:
                raise RuntimeError(
                    f"{self.consecutive_skips} consecutive updates had a non-finite loss or gradient "
                    f"norm (last: {grad_norm.item()}); stopping. Lower the learning rate or check data."
                )
        scheduler = cast("LRScheduler | None", self.lr_schedulers())  # at most one scheduler
        if scheduler is not None and counts_step:  # stepped on skipped steps too: the LR follows global_step, as μ
            scheduler.step()
        return grad_norm

    def log_step(
        self, totals: dict[str, Tensor], schedule: dict[str, float], grad_norm: Tensor, lr: float, seconds: float
    ) -> None:
        additive = {k: v for k, v in totals.items() if k not in NON_ADDITIVE}
        (passes, processed, padding), self.pass_counts = self.pass_counts, [0, 0, 0]
        counts = torch.tensor([processed, padding], dtype=torch.float32, device=self.device)
        additive |= {"processed_tokens": counts[0], "padding_tokens": counts[1]}
        keys = sorted(additive)  # the same on every rank: padding passes report the same metrics (times 0)
        reduced = self.trainer.strategy.reduce(torch.stack([additive[k] for k in keys]), reduce_op="sum")
        summed = dict(zip(keys, reduced, strict=True))
        flops = summed.pop("flops")
        # Pad tokens over tokens processed, all ranks; passes per step are the same on every rank (micro_batches).
        metrics = {"train/padding_frac": summed.pop("padding_tokens") / summed.pop("processed_tokens")}
        metrics["train/micro_batches"] = torch.tensor(float(passes))
        metrics |= {f"{'rollout' if k == 'logprob_gap' else 'train'}/{k}": v for k, v in summed.items()}
        metrics["train/ratio_max"] = self.trainer.strategy.reduce(totals["ratio_max"], reduce_op="max")
        metrics |= {f"train/{name}": torch.tensor(value) for name, value in schedule.items()}  # CHORD: train/mu
        metrics["train/grad_norm"] = grad_norm.detach().float()
        metrics["train/skipped_steps"] = torch.tensor(float(self.skipped_steps))
        metrics["train/lr"] = torch.tensor(lr)
        # Throughput of the update (forward, backward, optimizer; generation is rollout/gen_seconds), all ranks.
        metrics["train/update_seconds"] = torch.tensor(seconds)
        metrics["train/tokens_per_second"] = metrics["train/tokens"] / seconds
        if self.peak_flops:  # model FLOPs utilization (lit_chord.flops), where Lightning knows the device's peak
            metrics["train/mfu"] = flops / (seconds * self.peak_flops * self.trainer.world_size)
        # The x-axis: the optimizer steps taken, k after the k-th (its optimizer.step, or a skip, has counted it)
        metrics["step"] = torch.tensor(float(self.trainer.global_step))
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        # rollout/* and the bar's "reward": the rollout callback logs them, over all ranks
        if "mu" in schedule:
            self.log("mu", metrics["train/mu"], prog_bar=True, logger=False, batch_size=1)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """After the last step, ask to stop: Lightning then validates the final weights (``Trainer.should_stop``
        forces a validation check) even where ``max_steps`` is not a multiple of ``val_check_interval``, so the
        "after" accuracy is the final policy's."""
        if 0 < self.trainer.max_steps <= self.trainer.global_step:
            self.trainer.should_stop = True

    # ----- validation -------------------------------------------------------------------------------------------
    def validation_step(self, batch: ValBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Held-out prompts arrive already answered by the rollout callback; ``lit_chord.validation`` logs them."""
        self.held_out.log_batch(self, batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self.held_out.log_before_training(self.trainer)

    # ----- checkpoint -------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Counters a resumed run continues from (μ, the streams and the generation seeds follow global_step)."""
        checkpoint["chord"] = {
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "val_before": self.held_out.before,  # the sanity check of a resumed run sees trained weights, not the start
        }
        if self.lora is not None and self.device_mesh is None:  # FSDP2's distributed checkpoint loads every key
            frozen = self.lora.frozen_keys("scorer.lm.")  # the base: rebuilt from model.model on resume
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("chord", {})
        self.skipped_steps = state.get("skipped_steps", 0)
        self.consecutive_skips = state.get("consecutive_skips", 0)
        self.held_out.before = state.get("val_before")
        self.checkpoint_step = int(checkpoint.get("global_step", 0))  # validation.validated_step
        if self.lora is not None and self.device_mesh is None:  # put the frozen base back: strict loading stays on
            frozen = self.lora.frozen_keys("scorer.lm.")
            base = {k: v for k, v in self.state_dict().items() if k in frozen}
            checkpoint["state_dict"] = {**base, **checkpoint["state_dict"]}
