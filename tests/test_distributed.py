"""Two ranks compute the same step as one: global normalizers, world-size scaling, rank-split streams."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "one_step.py"
REPO = Path(__file__).parent.parent
CONFIGS = REPO / "configs"
# The configs that run on a CPU, each with the configs it is layered on (variants only hold what they change).
CPU_CONFIGS = {"demo.yaml": ["demo.yaml"], "mini.yaml": ["mini.yaml"]} | {
    p.name: ["demo.yaml", p.name] for p in CONFIGS.glob("demo_*.yaml")
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: Path, out: Path, devices: int, layout: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    for key in [k for k in env if k.startswith("SLURM_")]:
        env.pop(key)  # a surrounding Slurm job would make Lightning read ranks from it
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(world), str(out), str(devices), layout],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def single(tiny_world, tmp_path_factory):
    return run(tiny_world, tmp_path_factory.mktemp("single") / "out.pt", 1, "single")


# The default tier keeps one 2-rank run per strategy (ddp, fsdp2); the other multi-rank runs are in the slow tier.
# fsdp2+padding_free: packed rows of <= 60 real tokens under FSDP2 against one rank's row micro-batches of 3
@pytest.mark.parametrize("layout", ["ddp", "fsdp2", pytest.param("fsdp2+padding_free", marks=pytest.mark.slow)])
def test_two_ranks_take_the_same_step_as_one(tiny_world, tmp_path, single, layout):
    two = run(tiny_world, tmp_path / "out.pt", 2, layout)
    assert two["loss"] == pytest.approx(single["loss"], abs=1e-5)
    assert two["loss_sft"] == pytest.approx(single["loss_sft"], abs=1e-5)
    assert single["weights"].keys() == two["weights"].keys()
    for name, weight in single["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, atol=2e-5, rtol=1e-4, msg=name)
    # rollout/* describe the whole step's 4 prompts x 3 rollouts on rank 0 too, not its own 2 prompts
    assert two["rollout"].keys() == single["rollout"].keys() >= {"rollout/zero_std_groups", "rollout/format_ok"}
    for key in single["rollout"].keys() - {"rollout/gen_seconds", "rollout/sync_seconds"}:
        assert two["rollout"][key] == pytest.approx(single["rollout"][key], abs=1e-9), key


@pytest.fixture(scope="module")
def single_lora(tiny_world, tmp_path_factory):
    return run(tiny_world, tmp_path_factory.mktemp("single_lora") / "out.pt", 1, "single+lora")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ddp+lora", "fsdp2+lora"])
def test_two_ranks_take_the_same_lora_step_as_one(tiny_world, tmp_path, single_lora, layout):
    """LoRA adapters on a frozen base (sharded under FSDP2), the tied embeddings trained in full, and a KL penalty to
    the base with the adapters off: the merged weights after the step equal one rank's, and every adapted projection
    and the embeddings moved."""
    two = run(tiny_world, tmp_path / "out.pt", 2, layout)
    assert two["loss"] == pytest.approx(single_lora["loss"], abs=1e-5)
    assert single_lora["weights"].keys() == two["weights"].keys()
    for name, weight in single_lora["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, atol=2e-5, rtol=1e-4, msg=name)
    from safetensors.torch import load_file

    base = load_file(tiny_world / "model" / "model.safetensors")
    moved = {
        name for name, weight in single_lora["weights"].items() if name in base and not torch.equal(weight, base[name])
    }
    adapted = {name for name in base if name.endswith("proj.weight")}  # q k v o gate up down
    assert moved == adapted | {"model.embed_tokens.weight"}  # the rest frozen


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ddp+updates", "fsdp2+updates"])
def test_two_ranks_take_the_same_updates_as_one(tiny_world, tmp_path, layout):
    """Four updates of one rollout batch (two epochs of two mini-batches): each rank deals its prompt groups and
    expert rows out to the mini-batches, so every update sees the rows one rank's would, with the same old
    log-probabilities."""
    single = run(tiny_world, tmp_path / "single.pt", 1, "single+updates")
    two = run(tiny_world, tmp_path / "out.pt", 2, layout)
    assert two["loss"] == pytest.approx(single["loss"], abs=1e-5)
    assert single["ratio_max"] > 1.2  # later updates moved the policy beyond the clip
    assert two["ratio_max"] == pytest.approx(single["ratio_max"], rel=1e-4)  # the largest over both ranks
    for name, weight in single["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_an_sft_step_on_two_ranks_one_row_per_pass_equals_the_full_batch_step(tiny_world, tmp_path):
    """The bug class 2026's replications found in SFT → RL baselines (arXiv 2604.23747): a loss averaged per
    micro-batch (or per rank) and then over them weighs a short row's tokens more than a long row's. Here each rank
    takes 2 of the step's 4 expert rows, one per pass, and the update equals one pass over all 4 on one rank."""
    full = run(tiny_world, tmp_path / "full.pt", 1, "single+sft_full")
    two = run(tiny_world, tmp_path / "two.pt", 2, "ddp+sft")
    assert two["loss_sft"] == pytest.approx(full["loss_sft"], abs=1e-6)
    for name, weight in full["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, atol=2e-6, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_ranks_come_from_slurm_variables(tiny_world, tmp_path, single):
    """Two processes started the way srun starts them (SLURM_* variables, no torchrun): Lightning's
    SLURMEnvironment must take ranks and the rendezvous from Slurm, and the step must equal one rank's."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    base.update(
        OMP_NUM_THREADS="1",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NNODES="1",
        SLURM_NODEID="0",
        SLURM_NODELIST="127.0.0.1",
        SLURM_JOB_NAME="lit_chord_test",
        SLURM_JOB_ID=str(port),
        MASTER_PORT=str(port),
    )
    base.pop("MASTER_ADDR", None)
    out = tmp_path / "out.pt"
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(tiny_world), str(out), "2", "slurm"],
            env={**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
    assert "SLURMEnvironment" in logs[0]
    two = torch.load(out)
    assert two["loss"] == pytest.approx(single["loss"], abs=1e-5)
    for name, weight in single["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, atol=2e-5, rtol=1e-4, msg=name)


def validate(world: Path, sets: Path, out: Path, devices: int, layout: str) -> tuple[dict, list[dict]]:
    """Run ``validate_ranks.py``: rank 0's logged metrics (and ``val_before``) and every rank's scored rows."""
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    command = [sys.executable, str(SCRIPT.with_name("validate_ranks.py")), str(world), str(sets), str(out)]
    result = subprocess.run([*command, str(devices), layout], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [
        {**row, "rank": rank} for rank in range(devices) for row in json.loads((out / f"rank{rank}.json").read_text())
    ]
    return json.loads((out / "metrics.json").read_text()), rows


@pytest.fixture(scope="module")
def val_sets(tiny_world, tmp_path_factory):
    """Two held-out sets that 2 ranks (and batches of 4) do not divide: 11 and 7 prompts."""
    sets = tmp_path_factory.mktemp("val_sets")
    records = (tiny_world / "heldout.jsonl").read_text().splitlines(keepends=True)
    (sets / "odd.jsonl").write_text("".join(records[:11]))
    (sets / "small.jsonl").write_text("".join(records[11:18]))
    return sets


@pytest.fixture(scope="module")
def single_validation(tiny_world, val_sets, tmp_path_factory):
    return validate(tiny_world, val_sets, tmp_path_factory.mktemp("validate") / "single", 1, "single")[0]


def batch_sizes(rows: list[dict], stage: str, name: str, rank: int) -> list[int]:
    batches = [r["batch"] for r in rows if (r["stage"], r["set"], r["rank"]) == (stage, name, rank)]
    return [batches.count(b) for b in sorted(set(batches))]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ddp", "fsdp2"])
def test_two_ranks_score_each_heldout_prompt_once(tiny_world, val_sets, tmp_path, single_validation, layout):
    """Uneven sets on 2 ranks: every prompt scored exactly once in the sanity check and in the validation, the
    same batches on each rank, ``val/<set>/count`` the set's size, and every metric as on 1 rank."""
    single = single_validation
    two, rows = validate(tiny_world, val_sets, tmp_path / layout, 2, layout)
    sizes = {"odd": 11, "small": 7}
    for stage in ("sanity", "validate"):
        for name, size in sizes.items():
            scored = [r["index"] for r in rows if (r["stage"], r["set"], r["counted"]) == (stage, name, True)]
            assert sorted(scored) == list(range(size)), (stage, name)
            # batches of 4 over ceil(size / 2) rows per rank: 11 -> [4, 2] on both ranks, 7 -> [4]
            expected = [min(4, math.ceil(size / 2) - start) for start in range(0, math.ceil(size / 2), 4)]
            assert batch_sizes(rows, stage, name, 0) == batch_sizes(rows, stage, name, 1) == expected, (stage, name)
    assert {k: two["metrics"][f"val/{k}/count"] for k in sizes} == sizes
    assert single["metrics"].keys() == two["metrics"].keys()
    for key, value in single["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert two["val_before"] == pytest.approx(single["metrics"]["val/accuracy"], abs=1e-6)  # the whole first set


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CPU_CONFIGS))
def test_every_cpu_config_takes_a_step_on_two_ranks(name, tmp_path):
    """``python -m lit_chord fit --config <config> --trainer.devices 2 --trainer.strategy ddp`` as shipped, cut to one
    step and 3 held-out prompts per set (2 ranks split them 2 + 1): the sanity check, the step and the final
    validation pass. The demo's 65 expert samples (its ratio's) cannot be shared by 2 ranks: 66 are drawn."""
    (tmp_path / "data").symlink_to(REPO / "data")  # the configs' relative paths; the runs land in tmp_path
    configs = [arg for config in CPU_CONFIGS[name] for arg in ("--config", str(CONFIGS / config))]
    short = [
        *("--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "1"),
        *("--trainer.num_sanity_val_steps", "1", "--trainer.limit_val_batches", "1", "--data.val_size", "3"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "lit_chord", "fit", *configs, *short]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (metrics,) = tmp_path.glob("runs/*/version_0/metrics.csv")
    with metrics.open() as f:
        logged = {key for row in csv.DictReader(f) if row["step"] == "1" for key, value in row.items() if value}
    assert {"train/loss", "val/accuracy"} <= logged
    if name == "demo.yaml":
        assert "gives 65 expert samples per step; 66 are drawn" in result.stderr


@pytest.mark.slow
@pytest.mark.vllm
def test_each_rank_generates_with_its_own_vllm_engine(tiny_world, tmp_path):
    """DDP and FSDP2 on 2 ranks, a vLLM engine per rank (``external_launcher``): each rank samples its own prompts,
    every engine holds the trained weights after a push, and FSDP2's gathered weights equal DDP's."""
    pytest.importorskip("vllm")
    runs = {}
    for layout in ("ddp", "fsdp2"):
        out = tmp_path / layout
        out.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        command = [sys.executable, str(SCRIPT.with_name("vllm_ranks.py")), str(tiny_world), str(out), layout]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[layout] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for layout, (rank0, rank1) in runs.items():
        assert len(rank0) == len(rank1) == 2, layout
        assert rank0[0]["rollouts"] != rank1[0]["rollouts"]  # each rank rolls out its own share of the prompts
        # Every engine scores its samples as the trainer does: the initial push (step 1), and the push of step 1's
        # update (step 2; AdamW at lr 1e-2 moved every weight by ~1e-2, far more than this tolerance).
        assert max(step["gap"] for step in rank0 + rank1) < 1e-4, layout
        assert rank0[1]["metrics"]["rollout/sync_seconds"] > 0
    # Same seeds, same data: the rollouts match only if FSDP2 pushed the same full weights as DDP, at both steps.
    for rank in range(2):
        assert [s["rollouts"] for s in runs["fsdp2"][rank]] == [s["rollouts"] for s in runs["ddp"][rank]]


def slurm_is_up() -> bool:
    if shutil.which("srun") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and "idle" in result.stdout


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.skipif(not slurm_is_up(), reason="no Slurm cluster here (scripts/local_slurm.sh starts one)")
def test_srun_two_tasks_take_the_same_step_as_one(tiny_world, tmp_path, single):
    """A real ``srun`` launch: Slurm starts both tasks; Lightning's SLURMEnvironment does the rest."""
    out = tmp_path / "out.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    command = [
        "srun",
        "-N1",
        "--ntasks-per-node=2",
        "-J",
        "lit_chord_test",
        sys.executable,
        str(SCRIPT),
        str(tiny_world),
        str(out),
        "2",
        "slurm",
    ]
    result = subprocess.run(command, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("cluster environment: SLURMEnvironment") == 2
    two = torch.load(out)
    assert two["loss"] == pytest.approx(single["loss"], abs=1e-5)
    for name, weight in single["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, atol=2e-5, rtol=1e-4, msg=name)
