"""``ChordDataModule``: the expert SFT stream and the RL prompt stream, tokenized with one chat template.

Each optimizer step draws ``prompts_per_step`` prompts (rolled out ``num_generations`` times by the rollout
callback) and as many expert demonstrations as ``expert_data_ratio`` asks of the step's sequences (the
reference: 0.2 of 320 = 64 expert + 32 prompts x 8 rollouts). Both streams cycle independently through
seeded per-epoch shuffles.

Why the streams are indexed by step: a stream's position is a pure function of the optimizer step, so a
resumed run continues exactly where it stopped (Lightning restores ``global_step`` before it builds the
dataloader) and the one-batch prefetch can never make the saved position stale. Ranks take disjoint slices of
each step's draw, so a prompt group never straddles ranks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.utilities import AttributeDict, rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset

from lit_chord.batch import Prompt, Sequence, StepBatch, TrainTensors, pad_sequences
from lit_chord.chat import PAPER_SYSTEM_PROMPT, ChatFormat, stop_token_ids
from lit_chord.errors import ConfigError
from lit_chord.held_out import HeldOutShard, val_set_sources
from lit_chord.objectives import Needs
from lit_chord.records import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def round_up(count: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``count``."""
    return -(-count // multiple) * multiple


# What max_response_length limits in each stream: the expert's response, or LUFFY's trace inside an RL prompt's group
DROPPED_RESPONSE = {"expert_data": "response", "prompt_data": "expert trace"}


class StepStream(IterableDataset):
    """Yields one ``StepBatch`` per optimizer step, starting at ``start_step``, forever."""

    def __init__(self, datamodule: ChordDataModule, start_step: int, rank: int, world_size: int) -> None:
        self.dm, self.start_step, self.rank, self.world_size = datamodule, start_step, rank, world_size

    def __iter__(self) -> Iterator[StepBatch]:
        step = self.start_step
        while True:
            yield self.dm.step_batch(step, self.rank, self.world_size)
            step += 1


class ChordDataModule(LightningDataModule):
    def __init__(
        self,
        tokenizer: str,
        prompt_data: str,
        expert_data: str | None = None,
        val_data: str | list[str] | dict[str, str] | None = None,
        prompts_per_step: int = 32,
        num_generations: int = 8,
        expert_data_ratio: float = 0.2,
        experts_per_step: int | None = None,
        system_prompt: str | None = PAPER_SYSTEM_PROMPT,
        prompt_key: str = "problem",
        answer_key: str = "answer",
        messages_key: str = "messages",
        response_key: str = "response",
        expert_response_key: str = "expert_response",
        max_prompt_length: int = 1024,
        max_response_length: int = 8192,
        val_size: int | None = None,
        val_batch_size: int = 64,
        seed: int = 42,
    ) -> None:
        """Where the two streams come from and how a step is composed.

        Args:
            tokenizer: Path or hub name for ``AutoTokenizer.from_pretrained``; its chat template formats both streams.
            prompt_data: RL prompts: a .json/.jsonl/.parquet file or a ``datasets`` name, with ``prompt_key`` and
                ``answer_key`` fields; or ``messages_key`` (the prompt's own chat turns, ending on a user's or a
                tool's turn, used as they are without ``system_prompt``: the ToolACE prompts) and ``answer_key``.
            expert_data: Expert demonstrations, same sources; records with ``messages_key`` (chat messages, the last
                one from the assistant) or ``prompt_key`` + ``response_key``: the SFT stream of an objective that
                trains on one (``Chord``, ``Sft``); not read for one that does not (``Grpo``, ``Luffy``).
            val_data: Held-out prompts (same format as ``prompt_data``) for validation: one source (the set
                "heldout"), a list of sources (each named by its file stem) or a mapping name -> source. Each set is
                a validation dataloader of its own and logs ``val/<name>/greedy_acc``, ``avg@<n>``, ``pass@<k>``;
                ``val/accuracy`` is the first set's greedy accuracy.
            prompts_per_step: Prompts per optimizer step across all ranks (reference: 32).
            num_generations: Rollouts per prompt, the GRPO group size (reference: 8).
            expert_data_ratio: Share of the step's sequences that are expert demonstrations (reference: 0.2, i.e.
                64 expert next to 32 x 8 rollouts). Must lie in [0, 1).
            experts_per_step: Exact number of expert demonstrations per step across all ranks; when set, it is used
                instead of ``expert_data_ratio`` (a ratio cannot give every count: the reference's ToolACE recipe,
                96 expert next to 768 rollouts, is ratio 0.111..., which rounds to 95 or 97).
            system_prompt: System message for RL prompts and for prompt/response expert records (messages records
                keep their own). None for no system message. Default: the paper's zero-shot prompt with tags.
            prompt_key: Field with the problem text.
            answer_key: Field with the reference answer.
            messages_key: Field with chat messages in expert records (and, optionally, in prompt records).
            response_key: Field with the response in prompt/response expert records.
            expert_response_key: Field with an RL prompt's expert response, read for an objective that puts it in the
                prompt's rollout group (``lit_chord.objectives.luffy.Luffy``), in place of one of the
                ``num_generations`` rollouts.
            max_prompt_length: Prompts longer than this (in tokens) are filtered out and counted.
            max_response_length: Expert responses (and LUFFY's expert traces) longer than this are filtered out and
                counted (reference).
            val_size: Use only the first ``val_size`` prompts of each held-out set (None: all).
            val_batch_size: Held-out prompts per validation batch and rank (one generation call each).
            seed: Seed of the per-epoch shuffles.
        """
        super().__init__()
        if not 0.0 <= expert_data_ratio < 1.0:
            raise ValueError(f"data.expert_data_ratio must lie in [0, 1), got {expert_data_ratio}")
        for name, value in [
            ("prompts_per_step", prompts_per_step),
            ("num_generations", num_generations),
            ("max_prompt_length", max_prompt_length),
            ("max_response_length", max_response_length),
            ("val_batch_size", val_batch_size),
        ]:
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        self.val_sources = val_set_sources(val_data)
        if val_size is not None and val_size < 0:
            raise ValueError(f"data.val_size must be >= 0 or null, got {val_size}")
        self.save_hyperparameters()
        self.prompts_per_step = prompts_per_step
        self.num_generations = num_generations
        rollouts = prompts_per_step * num_generations
        # expert = ceil(ratio * (rollouts + expert)) as the reference's mix sample strategy
        from_ratio = math.ceil(expert_data_ratio * rollouts / (1 - expert_data_ratio) - 1e-9)
        if experts_per_step is not None and experts_per_step < 0:
            raise ValueError(f"data.experts_per_step must be >= 0 or null, got {experts_per_step}")
        if experts_per_step is not None and experts_per_step != from_ratio:
            rank_zero_info(
                f"data.experts_per_step={experts_per_step} expert samples per step, not the {from_ratio} of "
                f"data.expert_data_ratio={expert_data_ratio}"
            )
        self.experts_per_step = from_ratio if experts_per_step is None else experts_per_step
        self.prompts: list[Prompt] = []
        self.expert: list[Sequence] = []
        self.val_sets: dict[str, list[Prompt]] = {}  # name -> prompts, one validation dataloader each
        self.filtered: dict[str, Counter[str]] = {}  # data field -> the limit a dropped record exceeds -> count
        self.tokenizer: PreTrainedTokenizerBase | None = None  # loaded by setup
        self.stop_token_ids: list[int] = []  # where a turn ends (chat.py), set by setup
        self.chat: ChatFormat | None = None  # records -> chat turns -> ids, set by setup
        self.needs = Needs(sft_stream=True)  # what the objective asks of the streams: setup reads the module's

    @staticmethod
    def of(trainer: Trainer) -> ChordDataModule:
        """The trainer's datamodule, typed: where callbacks reach it. Lightning sets ``trainer.datamodule`` when a run
        starts but does not declare it on ``Trainer``, so it is read untyped here, once."""
        return cast(ChordDataModule, getattr(trainer, "datamodule", None))

    @property
    def hp(self) -> AttributeDict:
        """``self.hparams``, typed for attribute access (Lightning annotates it as a plain ``MutableMapping``)."""
        return cast(AttributeDict, self.hparams)

    # ----- setup -----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            self.needs = self.objective_needs(stage)
        self.split_over_ranks(self.trainer.world_size if self.trainer is not None else 1)
        if self.tokenizer is not None:
            return
        from transformers import AutoTokenizer

        hp = self.hp
        self.tokenizer = AutoTokenizer.from_pretrained(hp.tokenizer)
        if not self.tokenizer.chat_template:
            raise DataError(f"tokenizer {hp.tokenizer!r} has no chat template; both streams are formatted with it")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stop_token_ids = stop_token_ids(self.tokenizer, hp.tokenizer)
        keys = ["prompt_key", "answer_key", "messages_key", "response_key", "expert_response_key"]
        keys += ["max_prompt_length", "max_response_length"]
        self.chat = chat = ChatFormat(self.tokenizer, self.stop_token_ids, hp.system_prompt, **{k: hp[k] for k in keys})
        self.prompts = chat.read_prompts(hp.prompt_data, "prompt_data", with_traces=self.needs.traces_in_groups)
        if self.draws_expert_rows:
            self.expert = chat.read_expert(hp.expert_data)
        for name, source in self.val_sources.items():
            field_name = "val_data" if isinstance(hp.val_data, str) else f"val_data.{name}"
            self.val_sets[name] = chat.read_prompts(source, field_name)[: hp.val_size]
        self.filtered = chat.filtered
        for name, counts in self.filtered.items():
            for limit, count in counts.items():
                what = "prompt" if limit == "max_prompt_length" else DROPPED_RESPONSE.get(name, "response")
                rank_zero_info(
                    f"data.{name}: {count} records whose {what} is longer than data.{limit}={hp[limit]} tokens were "
                    "filtered out"
                )
        self.warn_repeats()

    def objective_needs(self, stage: str) -> Needs:
        """What the module's objective asks of the streams (``lit_chord.objectives``); without a trainer, ``needs``.
        Checked here, before anything is loaded: an SFT stream to read, room in each group for a trace."""
        objective = getattr(self.trainer.lightning_module if self.trainer else None, "objective", None)
        needs, name = (
            (objective.needs, f"model.objective {type(objective).__name__}")
            if objective
            else (self.needs, "the objective")
        )
        if objective and stage == "fit" and needs.sft_stream and not self.hp.expert_data:
            raise ConfigError(f"{name} trains on an SFT stream, but data.expert_data is not set")
        if needs.traces_in_groups and self.num_generations < 2:
            raise ConfigError(f"{name} puts the expert's trace in each group: data.num_generations >= 2")
        if self.hp.expert_data and not needs.sft_stream:
            rank_zero_info(f"data.expert_data is not read: {name} trains without an SFT stream")
        return needs

    @property
    def draws_expert_rows(self) -> bool:
        """Whether each step draws rows of the SFT stream (the objective trains on one, and the config gives one)."""
        return bool(self.needs.sft_stream and self.hp.expert_data and self.experts_per_step)

    def split_over_ranks(self, world_size: int) -> None:
        """Make the step's counts divisible by the world size, before anything is loaded: each rank draws an equal
        share (a prompt group never straddles ranks). An expert count derived from ``expert_data_ratio`` is rounded
        up to a multiple of the world size (the ratio's ceiling, as for one rank), and says so; a count the config
        gives explicitly that does not divide is refused, in one line, rather than changed behind the user's back."""
        hp = self.hp
        if self.prompts_per_step % world_size:
            raise ConfigError(
                f"data.prompts_per_step={self.prompts_per_step} must be divisible by the world size ({world_size}): "
                "each rank rolls out an equal share of the step's prompts",
                hint=f"use a multiple of {world_size}, e.g. --data.prompts_per_step "
                f"{round_up(self.prompts_per_step, world_size)}",
            )
        if not self.draws_expert_rows or self.experts_per_step % world_size == 0:
            return  # without an SFT stream the count is never drawn
        if hp.experts_per_step is not None:
            raise ConfigError(
                f"data.experts_per_step={self.experts_per_step} must be divisible by the world size ({world_size}): "
                "each rank draws an equal share of the step's expert samples",
                hint=f"use a multiple of {world_size}, e.g. --data.experts_per_step "
                f"{round_up(self.experts_per_step, world_size)}",
            )
        rounded = round_up(self.experts_per_step, world_size)
        rank_zero_info(
            f"data.expert_data_ratio={hp.expert_data_ratio} gives {self.experts_per_step} expert samples per step; "
            f"{rounded} are drawn, a multiple of the world size ({world_size}), {rounded // world_size} per rank"
        )
        self.experts_per_step = rounded

    def warn_repeats(self) -> None:
        """Warn (once, on rank zero) where a step draws more records than a stream holds: each step then holds the
        same record several times, which a small data set does without a word otherwise. Within one pass over a
        stream no record repeats (each pass is a permutation), so a step is where repeats can surprise."""
        expert_knob = "expert_data_ratio" if self.hp.experts_per_step is None else "experts_per_step"
        streams: list[tuple[str, int, int, str, str]] = [
            ("expert_data", len(self.expert), self.experts_per_step, "expert samples", expert_knob),
            ("prompt_data", len(self.prompts), self.prompts_per_step, "prompts", "prompts_per_step"),
        ]
        for field, records, per_step, unit, knob in streams:
            if records and per_step > records:
                rank_zero_warn(
                    f"data.{field}: each step draws {per_step} {unit} from {records} record(s), so every record "
                    f"appears ~{per_step / records:.1f} times in each step; add records or lower data.{knob}"
                )

    # ----- streams ----------------------------------------------------------------------------------------------
    def _draw(self, items: list, count: int, step: int, stream: int, rank: int, world_size: int) -> list:
        """This rank's share of the ``count`` items the stream yields at ``step`` (per-epoch seeded shuffles)."""
        per_rank = count // world_size
        first = step * count + rank * per_rank
        drawn, order, order_epoch = [], [], -1
        for position in range(first, first + per_rank):
            epoch, offset = divmod(position, len(items))
            if epoch != order_epoch:
                generator = torch.Generator().manual_seed(self.hp.seed * 1000 + stream * 100_003 + epoch)
                order, order_epoch = torch.randperm(len(items), generator=generator).tolist(), epoch
            drawn.append(items[order[offset]])
        return drawn

    def step_batch(self, step: int, rank: int = 0, world_size: int = 1) -> StepBatch:
        divisible = self.prompts_per_step % world_size == 0 and (
            not self.expert or self.experts_per_step % world_size == 0
        )
        assert divisible, "split_over_ranks (setup) makes the step's counts divisible by the world size"
        return StepBatch(
            step=step,
            prompts=self._draw(self.prompts, self.prompts_per_step, step, 0, rank, world_size),
            expert=self._draw(self.expert, self.experts_per_step, step, 1, rank, world_size) if self.expert else [],
            num_generations=self.num_generations,
        )

    # ----- resume -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Nothing to restore (the streams are a function of the step); kept to check that a resume sees the same
        streams."""
        return {
            "seed": self.hp.seed,
            "prompts_per_step": self.prompts_per_step,
            "experts_per_step": self.experts_per_step,
            "num_prompts": len(self.prompts),
            "num_expert": len(self.expert),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        changed = [f"{k} {v} -> {self.state_dict()[k]}" for k, v in state_dict.items() if self.state_dict()[k] != v]
        if changed:
            rank_zero_warn(
                f"Resuming with different data streams than the checkpoint's ({'; '.join(changed)}): steps after "
                "the resume draw other prompts and expert samples than the interrupted run would have."
            )

    def collate_rollouts(self, batch: StepBatch) -> TrainTensors:
        """Pad the step's expert rows and rollout rows into one ``TrainTensors``."""
        assert self.tokenizer is not None, "setup has not run"
        return pad_sequences(batch.expert + batch.rollouts, self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None, "train_dataloader needs the trainer"
        stream = StepStream(self, trainer.global_step, trainer.global_rank, trainer.world_size)
        return DataLoader(stream, batch_size=None, num_workers=0)

    @property
    def val_set_names(self) -> list[str]:
        """Names of the held-out sets, in dataloader order (``dataloader_idx``)."""
        return list(self.val_sources)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader per held-out set; each rank scores its own share of every set (``HeldOutShard``)."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        loaders = [
            DataLoader(HeldOutShard(prompts, rank, world, self.hp.val_batch_size), batch_size=None, num_workers=0)
            for prompts in self.val_sets.values() or [[]]
        ]
        return loaders[0] if len(loaders) == 1 else loaders
