"""Tests for ``RolloutCallback``'s contract with the step: what it hands the module (``batch.sampling``,
``batch.train``), and what it does for an objective that needs no rollouts."""

from helpers import EchoEngine, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback

from lit_chord.module import ChordModule
from lit_chord.objectives import Chord, Sft
from lit_chord.rollout_callback import RolloutCallback


class CountingEngine(EchoEngine):
    """Counts generation calls, their sampling settings and weight pushes."""

    def __init__(self) -> None:
        self.calls, self.pushes = [], 0

    def generate(self, prompt_ids, n, sampling):
        self.calls.append((len(prompt_ids), n, sampling))
        return super().generate(prompt_ids, n, sampling)

    def load_weights(self, named_tensors):
        self.pushes += 1
        for _ in named_tensors:  # consume them, as an engine does
            pass


class Keep(Callback):
    def __init__(self) -> None:
        self.batches = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append(batch)


def fit(world, objective, steps: int = 2, **callback_args) -> tuple[CountingEngine, Keep]:
    engine, keep = CountingEngine(), Keep()
    rollout = RolloutCallback(engine, max_new_tokens=6, temperature=0.7, seed=5, **callback_args)
    module = ChordModule(model=str(world / "model"), objective=objective)
    cpu_trainer(max_steps=steps, callbacks=[rollout, keep]).fit(module, datamodule=tiny_datamodule(world))
    return engine, keep


def test_each_step_is_told_how_its_rollouts_were_drawn(tiny_world):
    """batch.sampling is the settings the step's generation call got: the temperature the module scales its logits
    by, max_new_tokens (the horizon of seq-mean-token-sum-norm) and the seed of (seed, step, rank)."""
    engine, keep = fit(tiny_world, Chord())
    assert [call[:2] for call in engine.calls] == [(2, 4), (2, 4)]  # 2 prompts x 4 rollouts per step
    for step, (batch, (_, _, sampling)) in enumerate(zip(keep.batches, engine.calls, strict=True)):
        assert batch.sampling == sampling
        assert (sampling.temperature, sampling.max_new_tokens, sampling.seed) == (0.7, 6, 5 + 1_000_003 * step)
    assert engine.pushes == 2  # the initial weights, then the first step's: each step samples from its own weights
    assert [len(b.train) for b in keep.batches] == [2 + 8, 2 + 8]  # expert rows, then the groups


def test_an_objective_without_rollouts_gets_neither_generation_nor_weight_pushes(tiny_world):
    engine, keep = fit(tiny_world, Sft())
    assert engine.calls == [] and engine.pushes == 0
    assert all(b.rollouts == [] and b.train.is_expert.all() for b in keep.batches)
    assert keep.batches[0].sampling.max_new_tokens == 6  # still told: the horizon is a setting of the run


def test_a_batch_that_carries_its_sampling_goes_through_lightnings_batch_transfer():
    """Lightning rebuilds a batch's dataclasses when it moves the batch to the device, and refuses frozen ones: a
    batch built with its ``sampling`` already set (``bench/gpu.py``'s) must pass."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from lit_chord.batch import SamplingConfig, StepBatch

    batch = StepBatch(step=0, prompts=[], expert=[], num_generations=1, sampling=SamplingConfig(temperature=0.7))
    assert move_data_to_device(batch, "cpu").sampling == SamplingConfig(temperature=0.7)
