"""LUFFY's mixed groups end to end: an RL prompt's expert trace joins its rollout group, takes the group's advantage
and the shaped loss (the loss itself is pinned by hand in test_loss.py)."""

from __future__ import annotations

import json

import pytest
from helpers import cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback

from lit_chord.datamodule import DataError
from lit_chord.engines import Completion
from lit_chord.errors import ConfigError
from lit_chord.module import ChordModule
from lit_chord.objectives import Luffy
from lit_chord.rewards import exact_match
from lit_chord.rollout_callback import RolloutCallback


class WrongEngine:
    """Every rollout answers ``\\boxed{0}`` and stops: exact_match scores it 0 on every reversal prompt."""

    uses_live_policy = False

    def attach(self, policy, stop_token_ids, pad_token_id):
        self.stop = stop_token_ids[0]

    def generate(self, prompt_ids, n, sampling):
        self.calls = [*getattr(self, "calls", []), n]
        return [[Completion([*self.ids, self.stop], True) for _ in range(n)] for _ in prompt_ids]

    def load_weights(self, named_tensors):
        pass


class Keep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch = batch


def test_each_group_holds_its_prompts_expert_trace_with_the_mixed_groups_advantage(tiny_world, tmp_path):
    """Groups of 4: 3 rollouts scored 0 and the trace, scored 1 if the expert reversed right (else 0).
    r − mean over the group: a right trace gives A = (−1/4, −1/4, −1/4, 3/4), a wrong one all 0."""
    data = tiny_datamodule(tiny_world, expert_data=None, expert_data_ratio=0.0)
    engine, keep = WrongEngine(), Keep()
    module = ChordModule(model=str(tiny_world / "model"), objective=Luffy())
    callback = RolloutCallback(engine, reward_fn=exact_match, scale_advantages_by_std=False, max_new_tokens=8)
    data.needs = module.objective.needs  # before the trainer connects them: the tokenizer is needed first
    data.setup("fit")
    engine.ids = data.tokenizer("\\boxed{0}")["input_ids"]
    cpu_trainer(max_steps=1, callbacks=[callback, keep]).fit(module, datamodule=data)

    batch = keep.batch
    assert engine.calls == [3]  # num_generations − 1 sampled
    records = {json.loads(line)["problem"]: json.loads(line) for line in (tiny_world / "prompts.jsonl").open()}
    for g, prompt in enumerate(batch.prompts):
        group = batch.rollouts[4 * g : 4 * g + 4]
        assert [s.off_policy for s in group] == [False, False, False, True]
        trace = group[3]
        assert data.tokenizer.decode(trace.response_ids) == records[prompt.text]["expert_response"] + "<|im_end|>"
        right = float(exact_match(records[prompt.text]["expert_response"], prompt.answer))
        expected = [-0.25, -0.25, -0.25, 0.75] if right else [0.0] * 4
        assert [s.advantage for s in group] == pytest.approx(expected)
    assert batch.train.off_policy.tolist() == [s.off_policy for s in batch.rollouts]
    assert batch.metrics["rollout/reward_mean"] == 0.0  # the policy's own samples only
    rights = [float(exact_match(records[p.text]["expert_response"], p.answer)) for p in batch.prompts]
    assert batch.metrics["rollout/expert_trace_reward"] == pytest.approx(sum(rights) / len(rights))


def test_a_prompt_without_its_trace_is_refused_with_its_line(tiny_world, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"problem": "Reverse 123.", "answer": "321", "expert_response": "x"}\n'
                    '{"problem": "Reverse 124.", "answer": "421"}\n')  # fmt: skip
    data = tiny_datamodule(tiny_world, prompt_data=str(path))
    data.needs = Luffy().needs
    with pytest.raises(DataError, match=r"prompts.jsonl:2: field 'expert_response' missing; an objective with expert"):
        data.setup("fit")
    one = tiny_datamodule(tiny_world, num_generations=1)
    one.needs = Luffy().needs
    with pytest.raises(ConfigError, match="puts the expert's trace in each group: data.num_generations >= 2"):
        one.setup("fit")


def test_a_prompt_dropped_for_its_trace_is_counted_and_reported_apart(tiny_world, tmp_path, caplog):
    """Limits 64 prompt tokens and 32 response tokens: one record fits, one has a ~100-token trace, two a ~100-token
    prompt. Each is counted under the limit it exceeds, and the start-up lines name that limit."""
    long = " ".join(["1234567890"] * 10)
    records = [
        {"problem": "Reverse 123.", "answer": "321", "expert_response": "\\boxed{321}"},
        {"problem": "Reverse 456.", "answer": "654", "expert_response": long},
        {"problem": f"Reverse {long}.", "answer": "1", "expert_response": "\\boxed{1}"},
        {"problem": f"Reverse {long} {long}.", "answer": "2", "expert_response": "\\boxed{2}"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    data = tiny_datamodule(tiny_world, prompt_data=str(path), expert_data=None)
    data.needs = Luffy().needs
    with caplog.at_level("INFO"):
        data.setup("fit")
    assert [p.answer for p in data.prompts] == ["321"]
    assert data.filtered == {"prompt_data": {"max_response_length": 1, "max_prompt_length": 2}}
    assert (
        "data.prompt_data: 1 records whose expert trace is longer than data.max_response_length=32 tokens"
        in caplog.text
    )
    assert "data.prompt_data: 2 records whose prompt is longer than data.max_prompt_length=64 tokens" in caplog.text
