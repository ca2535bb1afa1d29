"""The ``transformers`` engine: rollouts from π_θ itself, whatever the checkpoint's ``generation_config.json`` says,
and ranks that stay in step under FSDP2."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_chord.engines import SamplingConfig
from lit_chord.engines.transformers_engine import TransformersEngine, checkpoint_settings_reset

# An instruct checkpoint's chat settings, pushed to extremes so that any of them left in force shows
CHAT_SETTINGS = {"do_sample": True, "temperature": 0.1, "top_k": 1, "top_p": 0.1, "min_p": 0.999}
CHAT_SETTINGS |= {"repetition_penalty": 50.0, "no_repeat_ngram_size": 1}


def naive_greedy(policy, prompt: list[int], max_new_tokens: int, stop: int) -> list[int]:
    """Argmax of the policy's next-token logits, one full forward per token: π_θ's greedy answer by hand."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            token = int(policy(torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(token)
        if token == stop:
            break
    return ids[len(prompt) :]


@pytest.fixture
def chat_policy(tiny_world):
    policy = AutoModelForCausalLM.from_pretrained(tiny_world / "model").eval()
    plain = [naive_greedy(policy, prompt, 12, stop=2) for prompt in ([5, 6, 7], [9, 4])]
    for key, value in CHAT_SETTINGS.items():
        setattr(policy.generation_config, key, value)
    return policy, plain


def test_greedy_rollouts_are_the_policys_argmax_whatever_its_generation_config(chat_policy):
    policy, plain = chat_policy
    assert any(len(set(tokens)) < len(tokens) for tokens in plain)  # repeats, which the chat settings forbid
    engine = TransformersEngine()
    engine.attach(policy, [2], pad_token_id=0)
    out = engine.generate([[5, 6, 7], [9, 4]], 1, SamplingConfig(max_new_tokens=12, temperature=0.0))
    assert [group[0].token_ids for group in out] == plain


def test_sampled_rollouts_ignore_the_checkpoints_chat_settings(chat_policy):
    """top-k 1 or min-p 0.999 left in force would make every sample the argmax path; π_θ at temperature 1 of a
    random tiny model is close to uniform, so 16 samples of 12 tokens are all different."""
    policy, _ = chat_policy
    engine = TransformersEngine()
    engine.attach(policy, [2], pad_token_id=0)
    samples = engine.generate([[5, 6, 7]], 16, SamplingConfig(max_new_tokens=12, temperature=1.0, seed=0))[0]
    assert len({tuple(s.token_ids) for s in samples}) == 16
    assert set(checkpoint_settings_reset(policy)) >= set(CHAT_SETTINGS)
    assert checkpoint_settings_reset(policy)["repetition_penalty"] == 1.0


def test_the_transformers_engine_keeps_sharded_ranks_in_step(tiny_world):
    """Under FSDP2 every forward is a collective, so a rank whose rollouts all stopped must keep stepping until the
    other ranks' have (transformers' ``synced_gpus``), or they hang. Sharded parameters are DTensors (they have
    ``full_tensor``); one marked so stands in for a shard here, since a real 2-rank run only hangs by chance."""
    policy = AutoModelForCausalLM.from_pretrained(tiny_world / "model")
    calls = []

    def generate(input_ids, synced_gpus, **kwargs):  # records the flag; answers each prompt with its stop token
        calls.append(synced_gpus)
        return torch.cat([input_ids, torch.full((len(input_ids), 1), 2)], dim=1)

    policy.generate = generate
    for sharded in (False, True):
        if sharded:
            next(policy.parameters()).full_tensor = lambda: None
        engine = TransformersEngine()
        engine.attach(policy, [2], pad_token_id=0)
        engine.generate([[5, 6, 7]], 2, SamplingConfig(max_new_tokens=3, seed=0))
    assert calls == [False, True]
