"""``ChordModule``: one CHORD optimizer step.

Per step: count the step's rollout and expert tokens across micro-batches and ranks (the global normalizers), then
for each micro-batch compute token log-probabilities without materializing the full-vocabulary log-softmax, take the
objective's loss and backpropagate; then clip, skip the update if the gradient is not finite, and step. Rows without
gradient are skipped (``split_rows``). Every micro-batch divides by the step's global counts, so the gradient does
not depend on how rows fall into micro-batches or ranks.

Several updates per step (``ppo_epochs``, ``ppo_mini_batches``): each mini-batch of whole prompt groups gets an
update as above, and the old log-probabilities are recomputed once, under ``no_grad``, before the first, so later
updates see ratios ≠ 1 and the clips act. μ, the LR schedule and ``global_step`` still count steps (rollout batches),
as Trinity-RFT's μ and verl's LR do. With one update (the reference's) the old log-probabilities are the detached
current ones (ratio 1). Either way they come from the trainer, never from the engine (``tis_cap`` corrects the gap).

The step's other jobs live in rooms its hooks call: ``policy``, ``optimization`` (clip-and-skip, the LR schedule),
``packing.MicroBatcher`` (passes that keep ranks in step) and ``metrics.train_metrics`` (``train/*``, all ranks).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import TYPE_CHECKING, cast

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import AttributeDict, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lit_chord import policy as policies
from lit_chord.batch import StepBatch, StepContext, TrainTensors, ValBatch, split_mini_batches
from lit_chord.lora import LoraPolicy, LoraSettings
from lit_chord.loss import Normalizers, count_normalizers
from lit_chord.metrics import Throughput, accumulate, logprob_gap, mean_over_updates, train_metrics
from lit_chord.objectives import Chord, LossInputs, LossOutput, Objective, as_config
from lit_chord.optimization import Optimization
from lit_chord.packing import MicroBatcher, PassCounts
from lit_chord.scorer import PolicyScorer
from lit_chord.validation import HeldOutScores

if TYPE_CHECKING:
    from transformers import PreTrainedModel


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
            init_seed: Seed of the random initialization, and with the step and the rank of each step's dropout.
            objective: The algorithm (``class_path``, ``lit_chord.objectives``): ``Chord`` (None: the reference's
                CHORD-φ, μ = 0.1), ``Grpo``, ``Luffy``, ``Sft`` or your own, saying what the step needs.
            micro_batch_size: Rows per forward/backward, in arrival order; the step's result does not depend on it.
            max_tokens_per_micro_batch: Token budget per forward/backward instead of ``micro_batch_size`` (None:
                rows): rows packed by length into passes of at most this many padded tokens (``lit_chord.packing``);
                the step's result does not depend on it. A 7B policy per 80 GB GPU takes 25600, the reference's
                ``max_token_len_per_gpu`` (the memory arithmetic is in ``configs/chord_qwen2.5_7b_openr1.yaml``).
            padding_free: Each pass is one row of its sequences concatenated, attention kept within each, the budget
                counting real tokens (``lit_chord.packing``: which attention implementations qualify, what they cost).
            logprob_chunk_size: Tokens per chunk when projecting onto the vocabulary.
            max_grad_norm: Gradient clipping by global norm (reference: 1.0); 0 disables.
            max_consecutive_skips: Stop after this many consecutive updates with a non-finite loss or gradient.
            ppo_epochs: Passes over each step's rollouts (GRPO's iterations μ, verl's ``ppo_epochs``, TRL's
                ``num_iterations``; reference: 1).
            ppo_mini_batches: Optimizer updates per pass, each on a share of the step's prompt groups and expert rows
                (verl: ``train_batch_size / ppo_mini_batch_size``; TRL's ``steps_per_generation``; LUFFY: 2; reference:
                1). Each rank needs at least this many prompt groups per step (a multiple, for 2 ranks to act as 1).
            tis_cap: Truncated importance sampling for the sampler/trainer mismatch: weight each rollout token's
                policy loss by min(π_trainer / π_engine, tis_cap) (``loss.importance_weights``). 0: off (reference),
                else >= 1. Under LoRA with an engine coarser than float32, 0 becomes 2 (``lora.rollout_tis_cap``).
            gradient_checkpointing: Recompute decoder activations in backward to save memory.
            lora: Train LoRA adapters on a frozen base (``lit_chord.lora``; None: off): ``--model.lora.rank 8``. The KL
                reference is then the base with the adapters off, and checkpoints hold only what trains.
            optimizer: Optimizer factory (LightningCLI: ``--optimizer AdamW --optimizer.lr 1e-6``).
            lr_scheduler: Optional LR scheduler factory, stepped once per optimizer step.
        """
        super().__init__()
        self.optimization = Optimization(optimizer, lr_scheduler, max_grad_norm, max_consecutive_skips)  # validates
        self.batcher = MicroBatcher(micro_batch_size, max_tokens_per_micro_batch, padding_free)  # validates
        for name, value in [("ppo_epochs", ppo_epochs), ("ppo_mini_batches", ppo_mini_batches)]:
            if value < 1:
                raise ValueError(f"model.{name} must be >= 1, got {value}")
        if tis_cap and tis_cap < 1.0:
            raise ValueError(f"model.tis_cap must be 0 (off) or >= 1, got {tis_cap}: a cap below 1 shrinks every token")
        self.objective = objective if objective is not None else Chord()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "objective"])  # then the objective by value:
        self.save_hyperparameters({**self.hparams, "objective": as_config(self.objective)})  # logged, resume-checked
        self.automatic_optimization = False  # micro-batching inside a step needs manual backward
        self.scorer: PolicyScorer | None = None
        self.reference: PolicyScorer | None = None  # the KL penalty's frozen copy (full fine-tune only)
        self.lora: LoraPolicy | None = None  # the adapters' bookkeeping; their parameters live in the scorer
        self.lora_settings = lora  # not hparams.lora: under LightningCLI that is the command line's dict form
        self.held_out = HeldOutScores()  # the validation's metrics and the accuracy before training
        self.checkpoint_step: int | None = None  # the loaded checkpoint's global_step: where `validate` logs
        self.throughput = Throughput()  # the policy's FLOPs per token and the device's peak, for train/mfu
        self.mismatch = policies.EngineMismatch()  # truncated importance sampling against the engine's copy

    @property
    def hp(self) -> AttributeDict:
        """``self.hparams``, typed for attribute access (Lightning annotates it as a plain ``MutableMapping``)."""
        return cast(AttributeDict, self.hparams)

    @property
    def policy(self) -> PreTrainedModel | None:
        """The ``transformers`` causal LM being trained (None until ``configure_model``)."""
        return self.scorer.lm if self.scorer is not None else None

    @override
    def configure_model(self) -> None:
        if self.scorer is not None:
            return
        hp, mesh = self.hp, self.device_mesh  # the mesh: set by ModelParallelStrategy (FSDP2)
        lora, ref = self.lora_settings, self.objective.needs.reference  # ref: the KL penalty needs a reference policy
        new = policies.build_policy(hp.model, hp.random_init, hp.init_seed, hp.gradient_checkpointing, lora, ref, mesh)
        self.reference, self.scorer, self.lora = new.reference, new.scorer, new.lora  # registered in this order

    # The policy room's ways to its weights, as methods: they take the module (``module.full_parameters()``).
    gathered = policies.gathered  # for generation outside forward, FSDP2 root parameters gathered
    kl_reference = policies.kl_reference  # the frozen copy, or under LoRA the scorer with its adapters off
    full_parameters = policies.full_parameters  # for the engine and the export: Hugging Face names, LoRA merged

    @override
    def on_fit_start(self) -> None:
        assert self.policy is not None, "configure_model has not run"
        self.batcher.check_attention(self.policy.config._attn_implementation, self.device)  # where the device is known
        self.throughput.start(self.policy, self.device, str(self.trainer.precision), self.trainer.world_size)
        for warning in self.objective.check_run(self.trainer.max_steps):  # as configure_optimizers does for the LR
            rank_zero_warn(f"model.objective: {warning}")

    @override
    def configure_optimizers(self):
        assert self.scorer is not None, "configure_model has not run"
        return self.optimization.configure(self.scorer, self.trainer.max_steps)

    @override
    def on_train_start(self) -> None:
        self.optimization.warn_if_lr_restored(self.trainer.optimizers[0])

    @override
    def on_before_optimizer_step(self, optimizer) -> None:
        assert self.scorer is not None, "configure_model has not run"
        self.optimization.clip_unscaled(self.trainer, self.scorer)  # 16-mixed: the gradients were just unscaled

    def token_logprobs(self, scorer: PolicyScorer, rows: TrainTensors, temperature: float, with_entropy: bool):
        """Log-probabilities (and entropies) of ``input_ids[:, 1:]``, shapes ``(B, T - 1)``."""
        chunk, padding_free = self.hp.logprob_chunk_size, self.hp.padding_free
        return scorer(rows.input_ids, rows.attention_mask, temperature, chunk, with_entropy, padding_free)

    def reduce(self, tensor: Tensor, op: str) -> Tensor:
        """``tensor`` combined over ranks (``op``: "sum" or "max"); a collective."""
        return self.trainer.strategy.reduce(tensor.to(self.device), reduce_op=op)

    @override
    def training_step(self, batch: StepBatch, batch_idx: int) -> None:
        start, trainer, hp = time.perf_counter(), self.trainer, self.hp
        # Dropout follows (init_seed, step, rank), so a resumed run draws the masks an uninterrupted one would
        torch.manual_seed(hp.init_seed + 1_000_003 * trainer.global_step + 7919 * trainer.global_rank + 1)
        number = trainer.global_step + 1  # 1-based; one for every update of the step: schedules count steps
        assert batch.train is not None and batch.sampling is not None, "the rollout callback fills batch.train"
        rows, temperature = batch.train.to(self.device), batch.sampling.temperature
        # seq-mean-token-sum-norm divides by a constant of the run, the same on every rank: the generation budget
        step = StepContext(number, temperature, batch.sampling.max_new_tokens, rows)
        updates = hp.ppo_epochs * hp.ppo_mini_batches
        if updates > 1:
            rows = self.with_old_logprobs(rows, temperature)
        mini_batches = split_mini_batches(rows, hp.ppo_mini_batches, batch.num_generations)  # checks there are enough
        optimizer = cast(LightningOptimizer, self.optimizers())  # one optimizer
        totals: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler steps after it)
        grad_norms = []
        for epoch in range(hp.ppo_epochs):
            for index, mini in enumerate(mini_batches):
                last = epoch == hp.ppo_epochs - 1 and index == len(mini_batches) - 1
                grad_norms.append(self.update(mini, step, optimizer, totals, last))
        mean_over_updates(totals, updates)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the optimizer's kernels belong to this step's time
        self.log_step(totals, self.objective.schedule(number), grad_norms, lr, time.perf_counter() - start)

    def update(
        self, rows: TrainTensors, step: StepContext, optimizer: LightningOptimizer, totals: dict, last: bool
    ) -> Tensor:
        """One optimizer update on ``rows`` (the step's, or a mini-batch of them); its gradient norm. Only the step's
        ``last`` update counts as an optimizer step (``global_step``): μ, the LR schedule, the data streams and
        checkpoints follow rollout batches, as verl and Trinity-RFT count them."""
        assert self.scorer is not None, "configure_model has not run"
        local = count_normalizers(rows.loss_mask[:, :-1], rows.is_expert, rows.off_policy)
        normalizers = Normalizers.from_tensor(self.reduce(local.as_tensor(), "sum"))  # the step's, all ranks
        optimizer.zero_grad(set_to_none=True)
        trained, scored = self.split_rows(rows)
        # Rows whose loss has no gradient first: a forward pass for their metrics, no backward. First, because
        # under FSDP2 a forward leaves the root's parameters gathered until the next backward reshards them; after
        # the last backward, clipping and the optimizer would see the gathered copies instead of the shards.
        score_batches, real_scores = self.batcher.split(scored, step.rows, self.reduce)
        with torch.no_grad():
            for index, micro in enumerate(score_batches):
                out = self.micro_batch_loss(micro, step, normalizers)
                accumulate(totals, out.metrics, 1.0 if index < real_scores else 0.0)
        # At least one backward pass, even if every row was skipped, so that every parameter gets a (zero) gradient
        # and AdamW's moments and weight decay advance as they would had the rows been run.
        micro_batches, real = self.batcher.split(trained, step.rows, self.reduce, at_least=1)
        for index, micro in enumerate(micro_batches):
            out = self.micro_batch_loss(micro, step, normalizers)
            weight = 1.0 if index < real else 0.0  # padding passes only keep the ranks' collectives in step
            # Strategies average gradients over ranks; the normalizers already divide by the global count.
            self.manual_backward(out.loss * self.trainer.world_size * weight)
            accumulate(totals, out.metrics, weight)
        self.throughput.add(totals, trained, scored)
        return self.optimization.step(self.trainer, optimizer, self.scorer, counts_step=last)

    @torch.no_grad()
    def with_old_logprobs(self, rows: TrainTensors, temperature: float) -> TrainTensors:
        """``rows`` with the log-probabilities of the policy that sampled them, before the step's first update (verl's
        ``compute_log_prob``). Rows without loss tokens are not scored (their ratio is never read)."""
        assert self.scorer is not None, "configure_model has not run"
        old = torch.zeros(rows.loss_mask.shape, dtype=torch.float32, device=self.device)  # (B, T) like loss_mask
        numbered = dataclasses.replace(rows, row_ids=torch.arange(len(rows), device=self.device))
        with_loss = numbered.select(rows.loss_mask.bool().any(-1))
        micro_batches, real = self.batcher.split(with_loss, numbered, self.reduce)
        for position, micro in enumerate(micro_batches):
            logprobs, _ = self.token_logprobs(self.scorer, micro, temperature, with_entropy=False)
            if position < real:  # padding passes only keep the ranks' collectives in step
                assert micro.row_ids is not None
                old[micro.row_ids, : logprobs.shape[1]] = logprobs.float()
        self.batcher.counts = PassCounts()  # train/micro_batches and train/padding_frac describe the updates
        return dataclasses.replace(rows, old_logprobs=old)

    def split_rows(self, rows: TrainTensors) -> tuple[TrainTensors, TrainTensors]:
        """The rows to train on, and the rows only to score (no backward). Rows without loss tokens (masked truncated
        rollouts) are in neither. A rollout with advantage 0 has a policy-gradient term A·ratio that is exactly 0 with
        its gradient, so while no entropy bonus or KL penalty acts on it, it is only scored (its metrics stay)."""
        has_loss = rows.loss_mask.bool().any(-1)
        zero_gradient = self.objective.without_gradient(rows.is_expert, rows.advantages, rows.off_policy)
        return rows.select(has_loss & ~zero_gradient), rows.select(has_loss & zero_gradient)

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
        """Truncated importance sampling's weights of ``micro``'s tokens (``policy.EngineMismatch``); None when off."""
        return self.mismatch.weights(old_logprobs, micro, self.tis_cap)

    @property
    def tis_cap(self) -> float:
        """The cap of truncated importance sampling in use: ``model.tis_cap``, else the one LoRA turned on (0: off)."""
        return self.hp.tis_cap or self.mismatch.lora_cap

    def engine_attached(self, engine_dtype: torch.dtype | None) -> None:
        """The rollout engine holds a copy of the weights in ``engine_dtype`` (None: it samples from the policy)."""
        self.mismatch.attached(self.lora, engine_dtype, self.hp.tis_cap)

    def log_step(self, totals: dict, schedule: dict[str, float], grad_norms: list, lr: float, seconds: float) -> None:
        """The step's ``train/*``: ``grad_norms`` of its updates (their mean), ``lr`` the rate it used."""
        counts, self.batcher.counts = self.batcher.counts, PassCounts()
        metrics = train_metrics(totals, counts, self.reduce, seconds, self.throughput)
        metrics |= {f"train/{name}": torch.tensor(value) for name, value in schedule.items()}  # CHORD: train/mu
        metrics |= {"train/grad_norm": torch.stack(grad_norms).mean().detach().float(), "train/lr": torch.tensor(lr)}
        metrics["train/skipped_steps"] = torch.tensor(float(self.optimization.skipped_steps))
        metrics["step"] = torch.tensor(float(self.trainer.global_step))  # x-axis: steps taken (a skip counts too)
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        if "mu" in schedule:  # rollout/* and the bar's "reward": the rollout callback logs them, over all ranks
            self.log("mu", metrics["train/mu"], prog_bar=True, logger=False, batch_size=1)

    @override
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """After the last step, ask to stop: ``Trainer.should_stop`` forces a validation of the final weights even
        where ``max_steps`` is not a multiple of ``val_check_interval``."""
        if 0 < self.trainer.max_steps <= self.trainer.global_step:
            self.trainer.should_stop = True

    @override
    def validation_step(self, batch: ValBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Held-out prompts arrive already answered by the rollout callback; ``lit_chord.validation`` logs them."""
        self.held_out.log_batch(self, batch, dataloader_idx)

    @override
    def on_validation_epoch_end(self) -> None:
        self.held_out.log_before_training(self.trainer)

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Counters a resumed run continues from (μ, the streams and the generation seeds follow global_step), and the
        accuracy before training (a resumed run's sanity check sees trained weights, not the start)."""
        checkpoint["chord"] = {**self.optimization.state_dict(), "val_before": self.held_out.before}
        if self.lora is not None and self.device_mesh is None:  # FSDP2's distributed checkpoint loads every key
            checkpoint["state_dict"] = policies.without_frozen_base(checkpoint["state_dict"], self.lora)

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("chord", {})
        self.optimization.load_state_dict(state)
        self.held_out.before = state.get("val_before")
        self.checkpoint_step = int(checkpoint.get("global_step", 0))  # validation.validated_step
        if self.lora is not None and self.device_mesh is None:  # put the frozen base back: strict loading stays on
            checkpoint["state_dict"] = policies.with_frozen_base(checkpoint["state_dict"], self.state_dict(), self.lora)
