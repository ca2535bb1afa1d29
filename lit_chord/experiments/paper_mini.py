"""``python -m lit_chord.experiments.compare --suite paper-mini``: the paper's comparison (its Table 1) in miniature,
on a CPU.

Every variant starts from the same small pretrained policy (``mini_world``, ``configs/mini.yaml``) and gets the
same budget of optimizer steps, the same batch, learning rate and seeds; only the objective differs:

- **original**: no training; the step-0 validation each run logs before its first update (all runs of a seed
  that start from the pretrained policy log the same one).
- **SFT** (last) and **SFT-best**: μ = 1, the SFT run at its end and at its best in-domain validation (``avg@4``),
  the paper's checkpoint selection, whose policy ``PolicyExport(best_by=...)`` writes to ``export_best``.
- **GRPO**: μ = 0, no expert samples. **SFT-best → GRPO**: GRPO for the same budget from the SFT-best policy, the
  paper's two-stage baseline (so it has had twice the steps).
- **LUFFY**: each prompt's expert trace inside its rollout group, shaped off-policy loss (``configs/demo_luffy.yaml``).
- **fixed mix** (μ 0.5), **CHORD-μ** (0.9 → 0.05, cosine, over the first 50 steps), **CHORD-φ** (μ 0.1, φ weighting).

Reported per variant, mean ± std over seeds: in-domain greedy accuracy, avg@4 and pass@4 on the 200 held-out sums;
general ability as the mean greedy accuracy over the six general tasks, and each task's change from the original
(same seed); the in-domain response length; the policy's entropy on its rollouts over the last 10 steps. The
variant overlays are the demo's (``configs/demo_*.yaml``: they set only μ, φ and the data streams).
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from lit_chord.experiments.plot import pyplot, read_metrics
from lit_chord.experiments.runner import RunResult, launch, run_variant, threads_per_run

GENERAL_TASKS = ("copy", "reverse", "sort", "max", "count", "add")
IN_DOMAIN = "heldout"
SELECT_BY = f"val/{IN_DOMAIN}/avg@4"  # the SFT-best selection (configs/mini.yaml's PolicyExport.best_by)


@dataclass(frozen=True)
class MiniVariant:
    name: str
    label: str
    layers: tuple[str, ...]  # config files layered on configs/mini.yaml
    starts_from: str | None = None  # another variant whose export_best (same seed) this one starts from


SUITE = [
    MiniVariant("sft", "SFT", ("demo_sft_only.yaml",)),
    MiniVariant("grpo", "GRPO", ("demo_grpo_only.yaml",)),
    MiniVariant("luffy", "LUFFY", ("demo_luffy.yaml",)),
    MiniVariant("fixed_mix", "SFT+RL (fixed μ 0.5)", ("demo_fixed_mix.yaml",)),
    MiniVariant("chord_mu", "CHORD-μ", ()),
    MiniVariant("chord_phi", "CHORD-φ", ("demo_chord_phi.yaml",)),
    MiniVariant("sft_best_grpo", "SFT-best → GRPO", ("demo_grpo_only.yaml",), starts_from="sft"),
]
COLUMNS = [
    ("in_domain_greedy", "in-domain greedy"),
    ("in_domain_avg", "in-domain avg@4"),
    ("in_domain_pass", "in-domain pass@4"),
    ("general", "general (6 tasks)"),
    ("length", "response length"),
    ("entropy", "entropy"),
]


def value_at(series: dict, key: str, step: int) -> float | None:
    return next((v for s, v in series.get(key, []) if s == step), None)


def scores_at(series: dict, step: int, entropy_window: int = 10) -> dict[str, float | None]:
    """One validation's numbers (at optimizer step ``step``) and the mean rollout entropy of the steps before it
    (for step 0, the first step's, measured on the original policy's rollouts before its update)."""
    general = [value_at(series, f"val/{task}/greedy_acc", step) for task in GENERAL_TASKS]
    entropy = [v for s, v in series.get("train/entropy", []) if (step - entropy_window < s <= step) or s == 1 > step]
    scores = {
        "in_domain_greedy": value_at(series, f"val/{IN_DOMAIN}/greedy_acc", step),
        "in_domain_avg": value_at(series, SELECT_BY, step),
        "in_domain_pass": value_at(series, f"val/{IN_DOMAIN}/pass@4", step),
        "general": statistics.fmean(general) if None not in general else None,  # type: ignore[arg-type]
        "length": value_at(series, f"val/{IN_DOMAIN}/response_len", step),
        "entropy": statistics.fmean(entropy) if entropy else None,
    }
    scores.update({f"task/{t}": g for t, g in zip(GENERAL_TASKS, general, strict=True)})
    return scores


def validation_steps(series: dict) -> list[int]:
    return sorted({s for s, _ in series.get(SELECT_BY, [])})


def best_step(series: dict) -> int:
    """The trained validation with the highest in-domain avg@4 (the first on a tie), as ``PolicyExport`` keeps it."""
    trained = [(v, -s) for s, v in series.get(SELECT_BY, []) if s > 0]
    if not trained:
        raise ValueError(f"no validation after training logged {SELECT_BY}")
    return -max(trained)[1]


def row_scores(run_dirs: dict[tuple[str, int], Path], seeds: list[int]) -> dict[str, list[dict]]:
    """Table row label -> per-seed scores, from the runs' ``metrics.csv`` (missing runs are skipped)."""
    rows: dict[str, list[dict]] = {}

    def series(name: str, seed: int) -> dict | None:
        path = run_dirs.get((name, seed))
        return read_metrics(path / "metrics.csv") if path and (path / "metrics.csv").exists() else None

    for seed in seeds:
        # Every run that starts from the pretrained policy validates it at step 0 with the same samples (seed 42 + s).
        starts = [series(v.name, seed) for v in SUITE if v.starts_from is None]
        if first := next((s for s in starts if s is not None and 0 in validation_steps(s)), None):
            rows.setdefault("original", []).append(scores_at(first, 0))
        for variant in SUITE:
            logged = series(variant.name, seed)
            if logged is None or not validation_steps(logged):
                continue
            rows.setdefault(variant.label, []).append(scores_at(logged, validation_steps(logged)[-1]))
            if variant.name == "sft":
                rows.setdefault("SFT-best", []).append(scores_at(logged, best_step(logged)))
    order = ["original", "SFT", "SFT-best"] + [v.label for v in SUITE if v.name != "sft"]
    return {label: rows[label] for label in order if label in rows}


def mean_std(values: list[float | None], scale: float = 1.0, digits: int = 1) -> str:
    finished = [v * scale for v in values if v is not None]
    if not finished:
        return "—"
    if len(finished) == 1:
        return f"{finished[0]:.{digits}f}"
    return f"{statistics.fmean(finished):.{digits}f} ± {statistics.stdev(finished):.{digits}f}"


def results_tables(rows: dict[str, list[dict]]) -> str:
    """Two markdown tables: the main scores (accuracies in %) and each general task's change from the original."""
    head = "| variant | seeds | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 2) + "|"]
    for label, per_seed in rows.items():
        cells = []
        for key, _ in COLUMNS:
            scale, digits = (1.0, 1) if key == "length" else (1.0, 2) if key == "entropy" else (100.0, 1)
            cells.append(mean_std([s[key] for s in per_seed], scale, digits))
        lines.append(f"| {label} | {len(per_seed)} | " + " | ".join(cells) + " |")
    original = rows.get("original", [])
    lines += ["", "Change of each general task's greedy accuracy from the original policy (points, same seed):", ""]
    lines += ["| variant | " + " | ".join(GENERAL_TASKS) + " |", "|---" * (len(GENERAL_TASKS) + 1) + "|"]
    for label, per_seed in rows.items():
        if label == "original":
            continue
        cells = []
        for task in GENERAL_TASKS:
            key = f"task/{task}"
            changes = [
                s[key] - o[key] if s[key] is not None and o[key] is not None else None
                for s, o in zip(per_seed, original, strict=False)
            ]
            cells.append(mean_std(changes, 100.0, 1))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def band(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps every run validated at, with the mean and the std over runs of ``key`` there (``general``: the mean of
    the six tasks)."""
    per_run = []
    for series in runs:
        per_run.append({s: scores_at(series, s)[key] for s in validation_steps(series)})
    steps = sorted(set.intersection(*(set(r) for r in per_run))) if per_run else []
    means, stds = [], []
    for step in steps:
        values = [v for r in per_run if (v := r[step]) is not None]
        means.append(statistics.fmean(values) if values else float("nan"))
        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return steps, means, stds


def plot_suite(run_dirs: dict[tuple[str, int], Path], out: Path) -> Path:
    """In-domain avg@4 and general ability against steps per variant (mean, band ± std over seeds), and the SFT
    runs' in-domain accuracy, general ability and response length (the paper's "shift, readapt, overfit")."""
    plt = pyplot()
    logs: dict[str, list[dict]] = {}
    for (name, _), path in sorted(run_dirs.items()):
        if (path / "metrics.csv").exists():
            logs.setdefault(name, []).append(read_metrics(path / "metrics.csv"))
    labels = {v.name: v.label for v in SUITE}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in ((axes[0], "in_domain_avg", "in-domain avg@4"), (axes[1], "general", "general ability")):
        for name, runs in logs.items():
            steps, means, stds = band(runs, key)
            if not steps:
                continue
            line = ax.plot(steps, means, marker="o", markersize=3, label=labels.get(name, name))[0]
            low = [m - s for m, s in zip(means, stds, strict=True)]
            high = [m + s for m, s in zip(means, stds, strict=True)]
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)
        ax.set_title(f"{title} (mean ± std over seeds)")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[2]
    twin = ax.twinx()
    for key, axis, style, title in (
        ("in_domain_avg", ax, "-", "in-domain avg@4"),
        ("general", ax, "--", "general ability"),
        ("length", twin, ":", "response length (right)"),
    ):
        steps, means, _ = band(logs.get("sft", []), key)
        axis.plot(steps, means, style, marker="o", markersize=3, label=title, color="black" if axis is ax else "grey")
    ax.set_title("SFT alone: accuracy and response length")
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_suite(
    variants: list[MiniVariant],
    steps: int,
    seeds: list[int],
    out: Path,
    base: Path,
    val_every: int,
    overrides: list[str],
    jobs: int,
    run,
    reuse: bool = True,
) -> dict[tuple[str, int], RunResult]:
    """Every variant and seed as a ``runner.run_variant``, ``jobs`` at a time; a variant that starts from another's
    best policy waits for that run (submitted earlier, so the wait cannot deadlock), and is reused only if that run
    was. Returns the runs that ran."""
    futures: dict[tuple[str, int], Future[RunResult | None]] = {}

    def one(variant: MiniVariant, seed: int) -> RunResult | None:
        init_from, reuse_this = None, reuse
        if variant.starts_from is not None:
            source = futures[(variant.starts_from, seed)].result()
            if source is None or source.returncode:
                print(f"[paper-mini] {variant.name} seed {seed}: skipped, {variant.starts_from} failed", flush=True)
                return None
            init_from, reuse_this = source.run_dir / "export_best", reuse and source.reused
        return run_variant(
            variant.name, [variant.layers], seed, steps, out, base, val_every, overrides, run, init_from, reuse_this
        )

    order = sorted(variants, key=lambda v: v.starts_from is not None)  # the runs others start from go first
    with ThreadPoolExecutor(jobs) as pool:
        for variant in order:
            for seed in seeds:
                futures[(variant.name, seed)] = pool.submit(one, variant, seed)
        results = {key: future.result() for key, future in futures.items()}
    return {key: result for key, result in results.items() if result is not None}


def main(args, overrides: list[str]) -> list[RunResult]:
    """``compare --suite paper-mini``: run the suite, write ``results.md`` and ``curves.png`` into ``args.out``."""
    requested = set(args.variants or [v.name for v in SUITE])  # compare.main refused unknown names
    needed = requested | {v.starts_from for v in SUITE if v.name in requested and v.starts_from}
    chosen = [v for v in SUITE if v.name in needed]
    start = time.perf_counter()
    run = partial(launch, threads=threads_per_run(args.jobs))
    results = run_suite(
        chosen, args.steps, args.seeds, args.out, args.base, args.val_every, overrides, args.jobs, run, not args.fresh
    )
    minutes = (time.perf_counter() - start) / 60
    run_dirs = {key: result.run_dir for key, result in results.items()}
    header = (
        f"paper-mini: {args.steps} steps per variant, seeds {' '.join(map(str, args.seeds))}, base {args.base}, "
        f"up to {args.jobs} runs side by side, {minutes:.1f} min in all\n\n"
    )
    tables = results_tables(row_scores(run_dirs, args.seeds))
    (args.out / "results.md").write_text(header + tables)
    plot_suite(run_dirs, args.out / "curves.png")
    print(header + tables + f"\n{args.out / 'results.md'}\n{args.out / 'curves.png'}")
    return list(results.values())
