"""Model FLOPs of a training step, for throughput and MFU.

Model FLOPs utilization (MFU; PaLM, Chowdhery et al. 2022, appendix B) divides the FLOPs the model *needs* by
the time taken and the device's peak. Work done twice (gradient checkpointing, the chunked log-prob backward
that recomputes the vocabulary projection) or on padding does not count, so MFU compares fairly across
implementations, and a gap to the hardware's FLOPs shows what recomputation and padding cost.

Counting, per sequence of ``s`` real tokens (PaLM's convention):
- every weight of a linear layer (LM head included) multiplies each token once: ``2·N·s`` forward;
- attention scores ``QKᵀ`` and ``scores·V``: ``2·s²·(heads·head_dim)`` each per layer, counted in full (the
  causal mask is ignored, as PaLM does and as torch's FLOP counter does for SDPA): ``4·L·s²·heads·head_dim``;
- backward = 2 × forward (one matmul for the input gradient and one for the weight gradient per forward matmul).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class ModelShape(NamedTuple):
    """What a decoder's FLOPs depend on: its linear weights, its layers and its attention width."""

    linear_weights: int
    layers: int
    width: int  # query heads × head dim


def linear_weight_count(model: nn.Module) -> int:
    """Weights of the model's linear layers (projections, MLP, LM head); a DTensor counts its global size."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def attention_width(config) -> tuple[int, int]:
    """(layers, query heads × head dim) of a ``transformers`` decoder config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_attention_heads * head_dim


def model_shape(model: nn.Module) -> ModelShape:
    """The shape of a ``transformers`` causal LM (sharded or not); it does not change during training."""
    return ModelShape(linear_weight_count(model), *attention_width(model.config))


def forward_flops(shape: ModelShape, lengths: Tensor) -> float:
    """FLOPs of one forward pass over sequences of the given real lengths (module docstring)."""
    lengths = lengths.double()
    return float(2 * shape.linear_weights * lengths.sum() + 4 * shape.layers * shape.width * (lengths**2).sum())


def training_flops(shape: ModelShape, lengths: Tensor) -> float:
    """FLOPs of forward + backward over sequences of ``lengths`` tokens."""
    return 3 * forward_flops(shape, lengths)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak FLOP/s at the trainer's compute precision, or None where Lightning has no figure
    (CPUs, unknown GPUs)."""
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision.split("-")[0], torch.float32)
    flops = get_available_flops(device, dtype)
    return None if flops is None else float(flops)
