"""VLLMEngine on the tiny model: a real vLLM engine (vllm-cpu on CPU), fp32, checked against transformers.

One engine serves the whole module (starting one costs ~10-40 s here). Tests that depend on the weights push
them first, so they hold in any order.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from helpers import cpu_trainer

from lit_chord.engines import Completion, SamplingConfig

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of RAM for the KV cache on CPU

from lit_chord.engines.vllm_engine import VLLMEngine  # noqa: E402

STOP_IDS = [2, 0]  # the tiny world's <|im_end|> (eos) and <|endoftext|> (pad)
PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13], [14, 15, 16, 17, 18]]


@pytest.fixture(scope="module")
def policy(tiny_world):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_world / "model", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(policy):
    engine = VLLMEngine(dtype="float32", enforce_eager=True, max_model_len=256)
    engine.attach(policy, STOP_IDS, pad_token_id=0)
    return engine


def next_token_logprobs(model, prompt: list[int], tokens: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / temperature) at each completion position, (T, V): the trainer's scoring."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, -1)


def scored(model, prompt: list[int], tokens: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log p(token | prefix) of each completion token under ``model`` at ``temperature``: full forward."""
    logprobs = next_token_logprobs(model, prompt, tokens, temperature)
    return logprobs.gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def max_logprob_gap(model, groups, temperature: float = 1.0) -> float:
    return max(
        (scored(model, prompt, c.token_ids, temperature) - torch.tensor(c.logprobs)).abs().max().item()
        for prompt, group in zip(PROMPTS, groups, strict=True)
        for c in group
    )


def test_completions_are_grouped_per_prompt_and_end_on_a_stop_token_or_the_budget(engine, policy):
    engine.load_weights(policy.named_parameters())
    groups = engine.generate(PROMPTS, 8, SamplingConfig(max_new_tokens=64, seed=0))
    assert [len(group) for group in groups] == [8] * len(PROMPTS)
    completions = [c for group in groups for c in group]
    for c in completions:
        assert len(c.logprobs) == len(c.token_ids)
        if c.finished:  # the stop token is kept (the trainer scores it) and appears nowhere before
            assert c.token_ids[-1] in STOP_IDS and not set(c.token_ids[:-1]) & set(STOP_IDS)
        else:  # truncated at the budget, no stop token anywhere
            assert len(c.token_ids) == 64 and not set(c.token_ids) & set(STOP_IDS)
    # The random tiny model is near-uniform over 322 tokens: P(a stop in 64 tokens) ~ 1/3, so 32 samples hold both.
    assert any(c.finished for c in completions) and not all(c.finished for c in completions)
    # Greedy: n identical copies per prompt, the same as transformers' own greedy decoding of that prompt.
    greedy = engine.generate(PROMPTS, 2, SamplingConfig(temperature=0.0, max_new_tokens=6))
    for prompt, group in zip(PROMPTS, greedy, strict=True):
        output = policy.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=STOP_IDS)
        expected = output[0, len(prompt) :].tolist()
        stops = [i for i, token in enumerate(expected) if token in STOP_IDS]
        assert group[0].token_ids == group[1].token_ids == expected[: stops[0] + 1 if stops else None]


def test_a_stripped_stop_token_is_put_back():
    """vLLM 0.32 keeps stop tokens (tested above); if a version strips one, the engine restores it."""
    from types import SimpleNamespace as Fake

    engine = VLLMEngine()
    engine.stop_token_ids = STOP_IDS
    kept = Fake(
        token_ids=[5, 2],
        finish_reason="stop",
        stop_reason=2,
        logprobs=[{5: Fake(logprob=-1.0)}, {2: Fake(logprob=-3.0)}],
    )
    assert engine.completion(kept) == Completion([5, 2], finished=True, logprobs=[-1.0, -3.0])
    stripped = Fake(token_ids=[5], finish_reason="stop", stop_reason=2, logprobs=[{5: Fake(logprob=-1.0)}])
    assert engine.completion(stripped) == Completion([5, 2], finished=True, logprobs=None)


def test_starting_an_engine_leaves_the_trainers_random_state_alone():
    import random

    from lit_chord.engines.vllm_engine import preserved_rng

    torch.manual_seed(11)
    random.seed(11)
    expected = torch.rand(1), random.random()
    torch.manual_seed(11)
    random.seed(11)
    with preserved_rng():  # as vLLM does while it builds an in-process engine
        torch.manual_seed(0)
        random.seed(0)
    assert (torch.rand(1), random.random()) == expected


def test_logprobs_match_transformers_rescoring(engine, policy):
    engine.load_weights(policy.named_parameters())
    groups = engine.generate(PROMPTS, 4, SamplingConfig(max_new_tokens=32, seed=1))
    # Each completion is re-scored with its own prompt, so this also checks the grouping.
    assert max_logprob_gap(policy, groups) < 1e-4


def test_logprobs_are_reported_at_the_sampling_temperature(engine, policy):
    """The engine's logprobs are the trainer's, log_softmax(logits / τ), not vLLM's default raw ones (τ = 1)."""
    engine.load_weights(policy.named_parameters())
    groups = engine.generate(PROMPTS, 4, SamplingConfig(temperature=0.7, max_new_tokens=32, seed=3))
    assert max_logprob_gap(policy, groups, temperature=0.7) < 1e-5
    # A real difference: the raw logprobs are far from the reported ones.
    assert max_logprob_gap(policy, groups) > 0.1
    # Greedy has no temperature: vLLM reports the raw logprobs (temperature 1), finite.
    greedy = engine.generate(PROMPTS, 1, SamplingConfig(temperature=0.0, max_new_tokens=8))
    assert max_logprob_gap(policy, greedy) < 1e-5


def test_with_top_p_the_logprobs_are_renormalized_over_the_nucleus(engine, policy):
    """Below top_p = 1 vLLM reports the probability the token was drawn with: the trainer's, divided by the
    nucleus' mass (vLLM's ``apply_top_k_top_p_pytorch``: drop the least likely tokens while their sum <= 1 - p)."""
    engine.load_weights(policy.named_parameters())
    top_p, temperature = 0.8, 0.7
    groups = engine.generate(
        PROMPTS, 4, SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=16, seed=4)
    )
    corrections = []
    for prompt, group in zip(PROMPTS, groups, strict=True):
        for c in group:
            logprobs = next_token_logprobs(policy, prompt, c.token_ids, temperature)  # (T, V)
            ascending = logprobs.exp().sort(-1).values
            dropped = torch.where(ascending.cumsum(-1) <= 1 - top_p, ascending, 0.0).sum(-1)  # (T,)
            expected = logprobs.gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0] - torch.log1p(-dropped)
            assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-5, rtol=0)
            corrections.append(-torch.log1p(-dropped))
    assert torch.cat(corrections).min() > 0.05  # the nucleus left out a clear share of the mass at every step


def test_weight_sync_makes_the_engine_follow_the_updated_policy(engine, policy):
    import copy

    updated = copy.deepcopy(policy)
    with torch.no_grad():
        for param in updated.parameters():  # the tied embedding / output head too
            param.add_(0.05 * torch.randn_like(param))
    try:
        engine.load_weights(updated.named_parameters())
        groups = engine.generate(PROMPTS, 4, SamplingConfig(max_new_tokens=32, seed=2))
        assert max_logprob_gap(updated, groups) < 1e-4
        assert max_logprob_gap(policy, groups) > 0.1  # the old weights would give clearly different logprobs
    finally:
        engine.load_weights(policy.named_parameters())


@pytest.mark.parametrize(
    ("saved", "random_init"),
    [(None, False), (["embed_tokens", "norm"], False), (None, True)],
    ids=["adapters", "adapters+embeddings+norms", "random-init: adapters+embeddings"],
)
def test_a_lora_policy_pushes_its_merged_weights(engine, policy, tiny_world, saved, random_init):
    """LoRA: the engine receives W + (α/r)·B·A under the plain names and then scores its samples as the trainer's
    adapter layers do (base and low-rank paths computed apart), in float32 to 1e-5. With the embeddings trained in
    full too (asked for, or by default on a random-init base), the engine's output head (tied to them) is the trained
    copy, as the trainer's is: the engine is attached to the peft-wrapped policy, as ``RolloutCallback.attach`` does,
    and still learns that the streamed ``model.embed_tokens.weight`` is ``lm_head.weight`` too."""
    from lit_chord.lora import LoraSettings
    from lit_chord.module import ChordModule

    settings = LoraSettings(rank=4, alpha=8.0, modules_to_save=saved)
    module = ChordModule(model=str(tiny_world / "model"), random_init=random_init, init_seed=3, lora=settings)
    module.configure_model()
    with torch.no_grad():
        for name, param in module.policy.named_parameters():
            if ".lora_B." in name:  # B starts at 0 (the base); a trained one is not
                param.normal_(0.0, 0.05)
            elif param.requires_grad:  # a copy trained in full: moved as training would
                param.add_(0.05 * torch.randn_like(param))
    adapted = module.policy.eval()
    try:
        engine.attach(adapted, STOP_IDS, pad_token_id=0)
        engine.load_weights(module.full_parameters())
        for temperature in (1.0, 0.7):
            groups = engine.generate(PROMPTS, 4, SamplingConfig(temperature, max_new_tokens=32, seed=5))
            assert max_logprob_gap(adapted, groups, temperature) < 1e-5
        assert max_logprob_gap(policy, groups, temperature) > 0.1  # the base would score them clearly otherwise
    finally:
        engine.attach(policy, STOP_IDS, pad_token_id=0)
        engine.load_weights(policy.named_parameters())


def test_a_lora_policy_on_a_bfloat16_base_reaches_a_float32_engine_exactly(engine, policy, tiny_world):
    """A bfloat16 base with small adapter updates, as after a few steps at a small lr (ΔW ≈ |W|·2⁻¹⁰, below half a
    bfloat16 step of W): the float32 engine samples from W + ΔW to 1e-5, scored by an independent float32 copy of
    the policy. Merged in float32 then cast back to bfloat16, the update would have rounded away: the engine would
    sample from the base (log-probabilities 1e-3 apart here)."""
    from transformers import AutoModelForCausalLM

    from lit_chord.lora import LoraSettings
    from lit_chord.module import ChordModule

    module = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(rank=4, alpha=8.0, base_dtype="bfloat16"))
    module.configure_model()
    with torch.no_grad():
        for name, param in module.policy.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 1e-4)
    weights = {name: tensor.float() for name, tensor in module.lora.merged_parameters(merge=False)}  # the base
    base = AutoModelForCausalLM.from_pretrained(tiny_world / "model", dtype=torch.float32).eval()
    base.load_state_dict(weights, strict=False)  # strict apart from lm_head, tied to the embeddings
    for path, layer in module.lora.layers.items():  # W + (α/r)·B·A, α/r = 2, computed here in float32
        weights[f"{path}.weight"] += 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    exact = AutoModelForCausalLM.from_pretrained(tiny_world / "model", dtype=torch.float32).eval()
    exact.load_state_dict(weights, strict=False)
    try:
        engine.attach(module.policy, STOP_IDS, pad_token_id=0)
        engine.load_weights(module.full_parameters())
        groups = engine.generate(PROMPTS, 4, SamplingConfig(max_new_tokens=32, seed=6))
        assert max_logprob_gap(exact, groups) < 1e-5
        assert max_logprob_gap(base, groups) > 1e-4  # the small update does change the policy
    finally:
        engine.attach(policy, STOP_IDS, pad_token_id=0)
        engine.load_weights(policy.named_parameters())


def test_tied_names_are_the_hugging_face_names_under_peft(tiny_world):
    """The alias map holds the names the policy streams, read from transformers' map of tied weights: the same for
    the plain model and for one whose embeddings peft wrapped (``modules_to_save``), where the parameters' own names
    (``model.embed_tokens.modules_to_save.default.weight``) would match nothing in the stream."""
    from lit_chord.engines.vllm_engine import tied_parameter_names
    from lit_chord.lora import LoraSettings
    from lit_chord.module import ChordModule

    expected = {"model.embed_tokens.weight": ["lm_head.weight"], "lm_head.weight": ["model.embed_tokens.weight"]}
    module = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(rank=2, modules_to_save=["embed_tokens"]))
    module.configure_model()
    streamed = {name for name, _ in module.full_parameters()}
    assert "model.embed_tokens.weight" in streamed and "lm_head.weight" not in streamed  # one tensor, named once
    assert tied_parameter_names(module.policy) == expected
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_world / "model")
    assert tied_parameter_names(AutoModelForCausalLM.from_config(config)) == expected
    config.tie_word_embeddings = False
    assert tied_parameter_names(AutoModelForCausalLM.from_config(config)) == {}


LOAD_EXPORT = """
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=128, skip_tokenizer_init=True)
params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, detokenize=False)
outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in json.loads(sys.argv[2])], params)
samples = [o.outputs[0] for o in outputs]
rows = [[list(s.token_ids), [e[t].logprob for e, t in zip(s.logprobs, s.token_ids)]] for s in samples]
print("SAMPLES", json.dumps(rows))
"""


@pytest.mark.slow
def test_vllm_loads_a_merged_lora_export(tiny_world, tmp_path):
    """``PolicyExport`` of a LoRA run writes a plain checkpoint: vLLM builds an engine from the folder (its own
    process: a second engine) and scores its greedy samples as the trained adapters do."""
    import json
    import subprocess
    import sys

    from helpers import EchoEngine, tiny_datamodule

    from lit_chord.export import PolicyExport
    from lit_chord.lora import LoraSettings
    from lit_chord.module import ChordModule
    from lit_chord.rollout_callback import RolloutCallback

    module = ChordModule(
        model=str(tiny_world / "model"),
        lora=LoraSettings(rank=4, alpha=8.0),
        optimizer=lambda p: torch.optim.AdamW(p, lr=3e-2),
    )
    export = PolicyExport()
    callbacks = [RolloutCallback(engine=EchoEngine(), reward_fn=lambda c, a: float(len(c) % 3)), export]
    cpu_trainer(max_steps=2, default_root_dir=tmp_path, callbacks=callbacks).fit(module, tiny_datamodule(tiny_world))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", LOAD_EXPORT, str(export.path), json.dumps(PROMPTS)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = json.loads(result.stdout.split("SAMPLES ", 1)[1])
    groups = [[Completion(tokens, finished=True, logprobs=logprobs)] for tokens, logprobs in samples]
    assert max_logprob_gap(module.policy.eval(), groups) < 1e-5


def test_vllm_logs_warnings_only_and_not_the_harmless_ones(engine, policy):
    """vLLM logs ~40 INFO lines per engine start by default, and a weight push warns that RotaryEmbedding "failed to
    load" (its cos/sin cache is computed from the config, never pushed: ``BENIGN_WARNINGS``). The engine sets vLLM's
    level to WARNING unless the user chose one, and drops the warnings its own settings cause."""
    import logging

    if os.environ.get("VLLM_LOGGING_LEVEL", "WARNING") != "WARNING":
        pytest.skip("VLLM_LOGGING_LEVEL is set: the user's level wins")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    vllm_logger = logging.getLogger("vllm")  # vLLM's loggers send their records here and no further
    vllm_logger.addHandler(handler)
    try:
        engine.load_weights(policy.named_parameters())  # vLLM logs "Reloading weights inplace..." at INFO
        engine.generate(PROMPTS, 2, SamplingConfig(max_new_tokens=8, seed=0))
    finally:
        vllm_logger.removeHandler(handler)
    assert vllm_logger.getEffectiveLevel() == logging.WARNING
    assert not [r.getMessage() for r in records if r.levelno < logging.WARNING]
    assert not [r.getMessage() for r in records if "Failed to load weights" in r.getMessage()]


def test_a_setting_vllm_refuses_is_a_one_line_config_error(policy):
    """vLLM validates its config with pydantic: a ``max_model_len`` above the model's 256 positions would end in a
    traceback and a dump of every engine argument. It is our ``ConfigError`` instead, naming the setting."""
    from lit_chord.errors import ConfigError

    engine = VLLMEngine(dtype="float32", enforce_eager=True, max_model_len=4096)
    with pytest.raises(ConfigError) as error:
        engine.attach(policy, STOP_IDS, pad_token_id=0)
    message = str(error.value)
    assert message.startswith("VLLMEngine max_model_len=4096: vLLM refuses it: User-specified max_model_len (4096)")
    assert "max_position_embeddings=256" in message and "\n" not in message
    assert engine.llm is None


MINI_STEP = """
import csv, json, os, sys
from pathlib import Path
import lightning as L, torch
from lightning.pytorch.loggers import CSVLogger
from lit_chord.datamodule import ChordDataModule
from lit_chord.engines.vllm_engine import VLLMEngine
from lit_chord.module import ChordModule
from lit_chord.objectives import Chord
from lit_chord.rewards import boxed_string
from lit_chord.rollout_callback import RolloutCallback

mini, out = Path(sys.argv[1]), sys.argv[2]
data = ChordDataModule(
    tokenizer=str(mini / "model"), prompt_data=str(mini / "prompts.jsonl"), expert_data=str(mini / "expert.jsonl"),
    val_data={"heldout": str(mini / "heldout.jsonl")}, prompts_per_step=32, num_generations=8,
    expert_data_ratio=0.2, system_prompt=None, max_prompt_length=64, max_response_length=64,
)
module = ChordModule(model=str(mini / "model"), max_tokens_per_micro_batch=4096,
                     objective=Chord(mu_warmup_steps=0, mu_decay_steps=50, token_weighting="none"))
engine = VLLMEngine(dtype="float32", enforce_eager=True)
rollouts = RolloutCallback(engine=engine, max_new_tokens=64, reward_fn=boxed_string, val_num_samples=8)
trainer = L.Trainer(accelerator="cpu", max_steps=1, val_check_interval=1, check_val_every_n_epoch=None,
                    num_sanity_val_steps=0, logger=CSVLogger(out, name="", version=""), enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, callbacks=[rollouts])
trainer.fit(module, datamodule=data)
rows = list(csv.DictReader(open(Path(out) / "metrics.csv")))
print("METRICS", json.dumps({k: float(v) for row in rows for k, v in row.items() if v}))
"""


@pytest.mark.slow
def test_the_miniature_trains_and_validates_at_32_prompts_x_8(tmp_path):
    """vllm-cpu at a realistic batch: the miniature's policy, one step of 32 prompts x 8 samples, then its 200
    held-out prompts x 8. Its 256 rollouts' prompts (18 tokens each) exceed the 4096 tokens vLLM prefills per step on
    CPU, so vLLM would split one and rewind its seeded generator, which CPU generators cannot do ("CPU Generator does
    not use offset"). Own process: one vLLM engine per process, and this module's serves the tiny model."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    mini = Path(__file__).parent.parent / "data" / "mini"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    command = [sys.executable, "-c", MINI_STEP, str(mini), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.split("METRICS ", 1)[1])
    assert metrics["rollout/logprob_gap"] < 1e-4  # whole prompts prefilled: the float32 engine still matches
    assert 0.0 <= metrics["val/heldout/avg@8"] <= 1.0
    assert "Failed to load weights" not in result.stderr and " INFO " not in result.stderr


def test_the_same_seed_gives_the_same_samples(engine, policy):
    engine.load_weights(policy.named_parameters())
    prompts = [PROMPTS[0], PROMPTS[0]]  # the same prompt twice in one call must still get its own samples

    def samples(seed: int) -> list[list[int]]:
        groups = engine.generate(prompts, 4, SamplingConfig(max_new_tokens=16, seed=seed))
        return [c.token_ids for group in groups for c in group]

    first = samples(7)
    assert samples(7) == first
    assert samples(8) != first
    assert len({tuple(ids) for ids in first}) == len(first)  # 8 distinct samples (distinct seeds inside)


def test_without_per_request_seeds_the_engine_generator_samples(engine, policy):
    engine.load_weights(policy.named_parameters())
    sampling = SamplingConfig(max_new_tokens=16, seed=7)
    engine.per_request_seeds = False
    try:
        first, second = (engine.generate([PROMPTS[0]], 4, sampling)[0] for _ in range(2))
    finally:
        engine.per_request_seeds = True
    # The step's seed is not applied: the engine's generator moves on between calls.
    assert [c.token_ids for c in first] != [c.token_ids for c in second]
    assert all(c.finished or len(c.token_ids) == 16 for c in first + second)


def test_fit_two_steps_with_vllm_rollouts(engine, tiny_world, tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from test_train_e2e import Recorder, datamodule

    from lit_chord.module import ChordModule
    from lit_chord.objectives import Chord
    from lit_chord.rollout_callback import RolloutCallback

    calls, pushed = [], []

    class Spy:
        """Delegates to the shared engine and records the calls."""

        uses_live_policy = False

        def attach(self, *args):
            engine.attach(*args)

        def load_weights(self, named_tensors):
            tensors = [(name, tensor.clone()) for name, tensor in named_tensors]
            calls.append("load_weights")
            pushed.append(dict(tensors))
            engine.load_weights(tensors)

        def generate(self, *args):
            calls.append("generate")
            self.last = engine.generate(*args)
            return self.last

    spy, recorder = Spy(), Recorder()
    module = ChordModule(
        model=str(tiny_world / "model"),
        micro_batch_size=4,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        objective=Chord(mu_warmup_steps=1, mu_decay_steps=1),
    )
    trainer = cpu_trainer(
        max_steps=2,
        logger=CSVLogger(tmp_path),
        callbacks=[RolloutCallback(engine=spy, max_new_tokens=8), recorder],
    )
    trainer.fit(module, datamodule=datamodule(tiny_world))
    # A push before every rollout: the first brings the real weights into the dummy-initialized engine, the
    # second the weights after the first optimizer step.
    assert calls == ["load_weights", "generate"] * 2
    assert recorder.logged[0]["rollout/sync_seconds"] > 0
    assert recorder.logged[0]["rollout/logprob_gap"] < 1e-4  # fp32 engine and trainer agree token by token
    assert set(pushed[0]) == {name for name, _ in module.policy.named_parameters()}
    assert any(not torch.equal(pushed[0][name], pushed[1][name]) for name in pushed[0])
    # The step trained on what the engine generated.
    assert [s.response_ids for s in recorder.batches[-1].rollouts] == [c.token_ids for g in spy.last for c in g]


@pytest.mark.gpu
def test_weight_sync_time_on_gpu(engine, policy):
    import copy

    policy = copy.deepcopy(policy).cuda()
    engine.load_weights(policy.named_parameters())  # warm
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        engine.load_weights(policy.named_parameters())
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    print(f"weight sync, tiny model on GPU: median {sorted(seconds)[2] * 1e3:.1f} ms")
    assert sorted(seconds)[2] < 5.0
