"""LoRA (``lit_chord.lora``): only the adapters train, the KL reference is the base with the adapters off, the
engine and the export get the merged weights ``W + (α/r)·B·A`` under the plain names, and the setting parses on
the command line and round-trips through a checkpoint. Exact resume with LoRA is in ``test_resume.py``, 2-rank
steps in ``test_distributed.py``, the vLLM push in ``test_vllm_engine.py``."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import EchoEngine, cpu_trainer, tiny_datamodule

from lit_chord.export import PolicyExport
from lit_chord.lora import LoraSettings, trained_copy
from lit_chord.module import ChordModule
from lit_chord.objectives import Chord
from lit_chord.rollout_callback import RolloutCallback
from lit_chord.scorer import PolicyScorer
from lit_chord.summary import RunSummary

IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18, 19, 20]])
MASK = torch.ones_like(IDS)


def length_reward(completion: str, answer: str) -> float:
    return float(len(completion) % 3)


def base_model(tiny_world):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_world / "model", dtype=torch.float32).eval()


def logprobs(scorer: PolicyScorer) -> torch.Tensor:
    with torch.no_grad():
        return scorer(IDS, MASK, 1.0, 1024, False)[0]


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    """Three LoRA steps (rank 4, a KL penalty) at lr 1e-2, exported at the end."""
    root = tmp_path_factory.mktemp("lora")
    module = ChordModule(
        model=str(tiny_world / "model"),
        lora=LoraSettings(rank=4, alpha=8.0),
        micro_batch_size=4,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        objective=Chord(kl_coef=0.1),
    )
    export = PolicyExport()
    trainer = cpu_trainer(
        max_steps=3,
        default_root_dir=root,
        callbacks=[RolloutCallback(engine=EchoEngine(), reward_fn=length_reward), export],
    )
    trainer.fit(module, datamodule=tiny_datamodule(tiny_world))
    module.policy.eval()
    return module, trainer, export.path


def test_only_the_adapters_train_and_the_base_stays_put(trained, tiny_world):
    module, trainer, _ = trained
    adapters = {name: p for name, p in module.policy.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_A." in name or ".lora_B." in name for name in adapters)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in adapters.values()}
    # B starts at 0 (the policy starts as the base) and has moved.
    assert all(p.abs().max() > 0 for name, p in adapters.items() if ".lora_B." in name)
    base = base_model(tiny_world)
    frozen = dict(module.lora.merged_parameters(merge=False))
    assert frozen.keys() == dict(base.named_parameters()).keys()
    for name, tensor in frozen.items():
        assert torch.equal(tensor, base.get_parameter(name)), name
    # No second copy of the model for the KL reference: the base plus the adapters, nothing else.
    assert module.reference is None
    total = sum(p.numel() for p in module.parameters())
    assert total == sum(p.numel() for p in base.parameters()) + sum(p.numel() for p in adapters.values())
    assert trainer.callback_metrics["train/kl"] > 0  # the adapted policy has moved away from the base


def test_merged_weights_are_the_adapted_policy_under_the_plain_names(trained, tiny_world):
    module, _, _ = trained
    plain = base_model(tiny_world)
    merged = dict(module.full_parameters())
    assert set(merged) == {name for name, _ in plain.named_parameters()}
    plain.load_state_dict(merged, strict=False)  # strict apart from lm_head, tied to the embeddings
    torch.testing.assert_close(logprobs(PolicyScorer(plain)), logprobs(module.scorer), atol=1e-5, rtol=0)
    base = logprobs(PolicyScorer(base_model(tiny_world)))
    assert (logprobs(module.scorer) - base).abs().max() > 1e-3  # the adapters do change the policy


def test_the_kl_reference_is_the_base_with_the_adapters_off(trained, tiny_world):
    module, _, _ = trained
    module.policy.train()
    adapted = logprobs(module.scorer)
    with module.kl_reference() as reference:
        assert reference is module.scorer and not module.policy.training  # eval mode: no dropout in the reference
        torch.testing.assert_close(logprobs(reference), logprobs(PolicyScorer(base_model(tiny_world))))
    assert module.policy.training
    assert torch.equal(logprobs(module.scorer), adapted)  # the adapters are back on
    module.policy.eval()


def test_export_writes_a_merged_model_and_a_peft_adapter(trained, tiny_world):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module, _, path = trained
    expected = logprobs(module.scorer)
    merged = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.testing.assert_close(logprobs(PolicyScorer(merged)), expected, atol=1e-5, rtol=0)
    adapted = PeftModel.from_pretrained(base_model(tiny_world), path / "adapter").eval()
    torch.testing.assert_close(logprobs(PolicyScorer(adapted.base_model.model)), expected, atol=1e-5, rtol=0)
    adapter_bytes = (path / "adapter" / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < (path / "model.safetensors").stat().st_size / 5


def test_the_export_of_a_random_init_base_carries_the_base(tiny_world, tmp_path, caplog):
    """A random-init base exists nowhere on disk: the export writes it to ``base/`` and the adapter points there.
    The embeddings train in full there (tied to the head): both exports carry the trained copy as head and input."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    module = ChordModule(
        model=str(tiny_world / "model"),
        random_init=True,
        lora=LoraSettings(rank=2),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
    )
    export = PolicyExport()
    callbacks = [RolloutCallback(engine=EchoEngine(), reward_fn=length_reward), export, RunSummary()]
    trainer = cpu_trainer(max_steps=1, default_root_dir=tmp_path, callbacks=callbacks)
    with caplog.at_level("INFO"):
        trainer.fit(module, tiny_datamodule(tiny_world))
    assert "(random init), LoRA r=2 α=16 on all-linear, base float32, trained in full: embed_tokens\n" in caplog.text
    config = json.loads((export.path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(export.path / "base")
    assert config["modules_to_save"] == ["model.embed_tokens"] and config["ensure_weight_tying"]
    adapted = AutoPeftModelForCausalLM.from_pretrained(export.path / "adapter").eval()  # loads the base from there
    merged = AutoModelForCausalLM.from_pretrained(export.path, dtype=torch.float32).eval()
    expected = logprobs(module.scorer.eval())
    torch.testing.assert_close(logprobs(PolicyScorer(adapted.base_model.model)), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logprobs(PolicyScorer(merged)), expected, atol=1e-5, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(export.path / "base", dtype=torch.float32).eval()
    assert (logprobs(PolicyScorer(base)) - expected).abs().max() > 1e-3  # the step moved the policy off its base


def trained_in_full(module: ChordModule) -> set[str]:
    return {name for name, p in module.policy.named_parameters() if p.requires_grad and ".lora_" not in name}


@pytest.mark.parametrize("tie", [True, False])
def test_a_random_init_base_trains_its_embeddings_and_head_in_full(tiny_world, tmp_path, tie):
    """A base built from its config has nothing to keep, and its head frozen at the initialization caps the logits:
    by default the embeddings and the head train in full next to the adapters (one tied matrix, or two)."""
    config = json.loads((tiny_world / "model" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": tie}))
    module = ChordModule(model=str(tmp_path), random_init=True, lora=LoraSettings(rank=2))
    module.configure_model()
    assert module.lora.modules_to_save == (["embed_tokens"] if tie else ["embed_tokens", "lm_head"])
    copies = {"model.embed_tokens.modules_to_save.default.weight", "lm_head.modules_to_save.default.weight"}
    assert trained_in_full(module) == (copies - {"lm_head.modules_to_save.default.weight"} if tie else copies)
    head, embeddings = module.policy.get_output_embeddings(), module.policy.get_input_embeddings()
    assert (trained_copy(head).weight is trained_copy(embeddings).weight) == tie
    # None else: a pretrained base keeps them, and an explicit [] keeps them on a random-init base too.
    explicit = ChordModule(model=str(tmp_path), random_init=True, lora=LoraSettings(rank=2, modules_to_save=[]))
    pretrained = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(rank=2))
    for other in (explicit, pretrained):
        other.configure_model()
        assert other.lora.modules_to_save == [] and trained_in_full(other) == set()


def test_a_bfloat16_base_trains_float32_adapters(tiny_world):
    module = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(rank=2, base_dtype="bfloat16"))
    module.configure_model()
    dtypes = {p.requires_grad: p.dtype for p in module.scorer.parameters()}
    assert dtypes == {False: torch.bfloat16, True: torch.float32}
    module.scorer(IDS, MASK, 1.0, 1024, False)[0].sum().backward()
    assert all(p.grad is not None for p in module.scorer.parameters() if p.requires_grad)
    merged = {name: t.dtype for name, t in module.full_parameters()}
    adapted = {f"{path}.weight" for path in module.lora.layers}  # W + ΔW in float32; the rest as the base has it
    assert {name for name, dtype in merged.items() if dtype == torch.float32} == adapted
    assert {dtype for name, dtype in merged.items() if name not in adapted} == {torch.bfloat16}


def test_a_merged_bfloat16_weight_keeps_an_update_below_its_rounding_step(tiny_world):
    """bfloat16 keeps 8 significant bits: near W its step lies between |W|·2⁻⁸ and |W|·2⁻⁷, so a ΔW of |W|·2⁻¹¹
    rounds away when W + ΔW is cast back to bfloat16, as the merge did. Merged in float32 it is W + ΔW to the last
    bit (every term a bfloat16 value times a power of 2)."""
    module = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(rank=1, alpha=1.0, base_dtype="bfloat16"))
    module.configure_model()
    path = "model.layers.0.mlp.down_proj"
    layer = module.lora.layers[path]
    weight = layer.base_layer.weight  # (out, in) bfloat16
    with torch.no_grad():  # ΔW = B A = |W|·2⁻¹¹ everywhere: B = 1 (out, 1), A = |W[0]|·2⁻¹¹ (1, in) with W's rows alike
        weight.copy_(weight[:1].expand_as(weight))
        layer.lora_A["default"].weight.copy_(weight[:1].float().abs() * 2**-11)
        layer.lora_B["default"].weight.fill_(1.0)
    delta = weight.float().abs() * 2**-11
    merged = dict(module.full_parameters())[f"{path}.weight"]
    assert merged.dtype == torch.float32
    assert torch.equal(merged, weight.float() + delta)  # every update kept, exactly
    assert torch.equal(merged.to(torch.bfloat16), weight)  # what the old cast back to bfloat16 kept: the base alone
    assert (merged - weight.float()).abs().min() > 0


def test_a_bfloat16_engine_turns_truncated_importance_sampling_on_under_lora(tiny_world):
    """An engine coarser than float32 rounds the merged W + ΔW: LoRA then turns TIS on at 2 unless model.tis_cap is
    set; a float32 engine, a full fine-tune and the transformers engine (no copy of the weights) leave it as set."""
    from lit_chord.lora import rollout_tis_cap

    with pytest.warns(UserWarning, match=r"LoRA with a bfloat16 rollout engine: .* model.tis_cap=2 .* is on"):
        assert rollout_tis_cap(torch.bfloat16, 0.0) == 2.0
    assert rollout_tis_cap(torch.float16, 3.0) == 3.0  # set: kept, no warning (pytest's filter turns one into an error)
    assert rollout_tis_cap(torch.float32, 0.0) == 0.0
    lora = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(rank=2))
    full = ChordModule(model=str(tiny_world / "model"))
    for module in (lora, full):
        module.configure_model()
        for dtype in (None, torch.float32):
            module.engine_attached(dtype)
            assert module.tis_cap == 0.0
    full.engine_attached(torch.bfloat16)
    assert full.tis_cap == 0.0
    with pytest.warns(UserWarning, match="LoRA with a bfloat16 rollout engine"):
        lora.engine_attached(torch.bfloat16)
    assert lora.tis_cap == 2.0 and lora.hparams.tis_cap == 0.0  # the hyper-parameter stays as given: resume compares it


def test_the_rollout_callback_tells_the_module_its_engines_dtype(tiny_world, tmp_path):
    """A LoRA fit with an engine that holds bfloat16 weights trains with TIS on: the engine's log-probability, -9
    here, lies far below the random tiny model's (≈ -log 322 = -5.8), so the rollout tokens' weights are capped at 2."""
    from lit_chord.engines import Completion

    class Bfloat16Engine(EchoEngine):
        weight_dtype = torch.bfloat16

        def generate(self, prompt_ids, n, sampling):
            groups = super().generate(prompt_ids, n, sampling)
            return [[Completion(c.token_ids, c.finished, [-9.0] * len(c.token_ids)) for c in g] for g in groups]

    module = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(rank=2))
    weights = []
    tis_weights = module.tis_weights

    def recorded(logprobs, micro):
        weights.append(tis_weights(logprobs, micro))
        return weights[-1]

    module.tis_weights = recorded
    trainer = cpu_trainer(
        max_steps=1, default_root_dir=tmp_path, callbacks=[RolloutCallback(Bfloat16Engine(), length_reward)]
    )
    with pytest.warns(UserWarning, match="LoRA with a bfloat16 rollout engine"):
        trainer.fit(module, tiny_datamodule(tiny_world))
    assert module.tis_cap == 2.0
    assert weights and all(w is not None and w.max() == 2.0 for w in weights)


@pytest.mark.parametrize("saved", [["norm"], ["embed_tokens", "norm"]])
def test_modules_trained_in_full_merge_under_their_names_and_stay_out_of_the_reference(tiny_world, saved):
    """``modules_to_save``: every RMSNorm (and the embeddings) gets a trained copy; the engine gets the copies under
    the plain names, the KL reference keeps the base's own. The tiny model ties its output head to its embeddings,
    so a trained copy of the embeddings must be the head too: the merged model, which ties them, has to score alike."""
    settings = LoraSettings(rank=2, modules_to_save=saved)
    module = ChordModule(model=str(tiny_world / "model"), lora=settings)
    given = list(saved)
    module.configure_model()
    assert settings.modules_to_save == given  # the setting stays as given (peft appends to the list it gets)
    with torch.no_grad():
        for param in module.policy.parameters():
            if param.requires_grad:  # the adapters' B and the trained copies, as training would move them
                param.add_(0.1 * torch.randn_like(param))
    trained = trained_in_full(module)
    assert len(trained) == 5 + len(saved) - 1  # 2 layers x 2 norms + the final norm (+ the embeddings, the head too)
    head, embeddings = module.policy.get_output_embeddings(), module.policy.get_input_embeddings()
    assert trained_copy(head).weight is trained_copy(embeddings).weight
    module.policy.eval()
    plain = base_model(tiny_world)
    merged = dict(module.full_parameters())
    assert set(merged) == {name for name, _ in plain.named_parameters()}
    plain.load_state_dict(merged, strict=False)
    torch.testing.assert_close(logprobs(PolicyScorer(plain)), logprobs(module.scorer), atol=1e-5, rtol=0)
    with module.kl_reference() as reference:
        torch.testing.assert_close(logprobs(reference), logprobs(PolicyScorer(base_model(tiny_world))))
    head_copy = {"lm_head.modules_to_save.default.weight"} if "embed_tokens" in saved else set()  # saved by name too
    saved_copies = {k.removeprefix("base_model.model.") for k in module.lora.adapter_state() if ".lora_" not in k}
    assert saved_copies == trained | head_copy


def test_bad_settings_are_refused(tiny_world):
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoraSettings(rank=0)
    module = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(target_modules=["embed_tokens"]))
    with pytest.raises(ValueError, match="only linear layers"):
        module.configure_model()
    module = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(modules_to_save=["embed_token", "norm"]))
    with pytest.raises(ValueError, match=r"no module's name ends in \['embed_token'\]; its modules: .*'embed_tokens'"):
        module.configure_model()
    module = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(modules_to_save=["lm_head"]))
    with pytest.raises(ValueError, match=r"modules_to_save \['lm_head'\]: this model ties .* \(embed_tokens\)"):
        module.configure_model()
    module = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match=r"the output head \(lm_head\) cannot take an adapter"):
        module.configure_model()


def test_the_command_line_setting_round_trips_through_a_checkpoint(tiny_world, tmp_path):
    from lit_chord.__main__ import main
    from lit_chord.runs import hparams_differences

    world = tiny_world
    paths = ["--model.model", str(world / "model"), "--data.tokenizer", str(world / "model")]
    paths += ["--data.prompt_data", str(world / "prompts.jsonl"), "--data.expert_data", str(world / "expert.jsonl")]

    def cli(*args: str):
        return main(["--trainer.default_root_dir", str(tmp_path), *paths, *args], run=False)

    first = cli("--model.lora.rank", "8")
    assert first.model.lora_settings == LoraSettings(rank=8)
    saved = {
        "hyper_parameters": dict(first.model.hparams),
        "datamodule_hyper_parameters": dict(first.datamodule.hparams),
    }
    torch.save(saved, tmp_path / "hp.ckpt")
    checkpoint = torch.load(tmp_path / "hp.ckpt", weights_only=True)  # as Lightning loads checkpoints
    assert hparams_differences(checkpoint, cli("--model.lora.rank", "8").model, first.datamodule) == []
    changed = hparams_differences(checkpoint, cli("--model.lora.rank", "4").model, first.datamodule)
    assert changed == ["model.lora.rank: 8 -> 4"]
    assert cli().model.lora_settings is None  # off by default


def test_the_export_of_a_bfloat16_base_is_bfloat16(tiny_world, tmp_path):
    """The merged weights come in float32; the export stores them in the base's dtype, as a full checkpoint of it."""
    from types import SimpleNamespace

    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    module = ChordModule(model=str(tiny_world / "model"), lora=LoraSettings(rank=2, base_dtype="bfloat16"))
    module.configure_model()
    datamodule = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(tiny_world / "model"))
    PolicyExport().save(SimpleNamespace(is_global_zero=True, datamodule=datamodule), module, tmp_path)
    assert {t.dtype for t in load_file(tmp_path / "model.safetensors").values()} == {torch.bfloat16}
