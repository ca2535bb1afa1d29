"""Shared fixtures: a tiny world (tokenizer, model with weights, data) built once per session, offline; and
``write_suite_log``, a paper-mini run's metrics.csv written by hand."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from pathlib import Path  # noqa: E402

from lit_chord.experiments.suite_scores import RETENTION_TASKS  # noqa: E402
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


def write_suite_log(run_dir: Path, validations: dict[int, float], entropies: list[float], tokens: float = 10.0) -> None:
    """A metrics.csv: one train row per step (loss, tokens trained, tokens generated, entropy) and validations
    {step: accuracy}, every validation metric at that accuracy, response length 10 + step."""
    val = [f"val/{s}/{k}" for s in ("val", "heldout") for k in ("avg@4", "greedy_acc", "pass@4", "response_len")]
    val += ["val/transfer/greedy_acc"] + [f"val/{t}/greedy_acc" for t in RETENTION_TASKS]
    header = ["step", "train/loss", "train/tokens", "rollout/tokens", "train/entropy", *val]
    lines = [",".join(header)]
    for step, entropy in enumerate(entropies, start=1):
        lines.append(",".join([str(step), "1.0", str(tokens), str(2 * tokens), str(entropy)] + [""] * len(val)))
    for step, accuracy in validations.items():
        values = [str(10 + step) if name.endswith("response_len") else str(accuracy) for name in val]
        lines.append(",".join([str(step), "", "", "", "", *values]))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
