"""Model FLOPs for train/mfu: the formula by hand and against torch's own FLOP counter."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, Qwen2Config

from lit_chord.flops import (
    ModelShape,
    attention_width,
    forward_flops,
    linear_weight_count,
    model_shape,
    peak_flops,
    training_flops,
)


def tiny_qwen2(tie: bool) -> AutoModelForCausalLM:
    config = Qwen2Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,  # heads × head_dim = 64 ≠ hidden: the attention term must use the former
        tie_word_embeddings=tie,
    )
    return AutoModelForCausalLM.from_config(config)


def test_forward_flops_by_hand():
    # 2 · 10 weights · (3 + 5) tokens = 160; 4 · 2 layers · width 4 · (3² + 5²) = 32 · 34 = 1088; total 1248.
    assert forward_flops(ModelShape(10, 2, 4), torch.tensor([3, 5])) == 1248


def test_linear_weights_and_attention_width_of_a_qwen2():
    model = tiny_qwen2(tie=True)
    # Per layer: q 32·64 + k 32·32 + v 32·32 + o 64·32 = 6144; MLP 3 · 32·48 = 4608; 2 layers = 21504;
    # LM head 32·96 = 3072 (tied to the embedding, still a matmul per token): 24576.
    assert linear_weight_count(model) == 24576
    assert attention_width(model.config) == (2, 64)


def test_forward_flops_match_torchs_flop_counter():
    # FlopCounterMode counts every matmul the forward pass runs; nothing else counts. Eager attention, because the
    # counter has no formula for the CPU flash-attention kernel that SDPA dispatches to (it would count 0 there).
    model = tiny_qwen2(tie=False).eval()
    model.set_attn_implementation("eager")
    batch, length = 3, 20
    ids = torch.randint(0, 96, (batch, length))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids)
    expected = forward_flops(ModelShape(linear_weight_count(model), 2, 64), torch.full((batch,), length))
    assert counter.get_total_flops() == expected
    assert training_flops(model_shape(model), torch.full((batch,), length)) == 3 * expected


def test_no_peak_figure_on_cpu():
    assert peak_flops(torch.device("cpu"), "32-true") is None
