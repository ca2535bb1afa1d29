"""Shared fixtures: a tiny world (tokenizer, model with weights, data) built once per session, offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from lit_chord.experiments.tiny_world import build_tiny_world  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """``expert.jsonl``, ``prompts.jsonl``, ``heldout.jsonl`` and ``model/`` (tokenizer + random weights)."""
    return build_tiny_world(tmp_path_factory.mktemp("tiny_world"), with_weights=True)
