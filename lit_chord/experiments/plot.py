"""Training curves from CSV logs: ``python -m lit_chord.experiments.plot RUN_DIR [RUN_DIR ...] [-o curves.png]``.

Each run directory is a Lightning ``CSVLogger`` folder (holding ``metrics.csv``) or any folder above one; several
runs are overlaid, labelled by their folder names. Missing metrics are skipped, so SFT-only or RL-only runs plot
too. Plotting needs matplotlib, the ``plot`` extra (``pip install 'lit-chord[plot]'``); reading logs does not.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from types import ModuleType

PANELS = [
    ("rollout/reward_mean", "reward"),
    ("train/mu", "μ"),
    ("train/loss_rl", "RL loss"),
    ("train/loss_sft", "SFT loss"),
    ("train/entropy", "entropy (rollout tokens)"),
    ("rollout/response_len", "response length"),
    ("val/accuracy", "held-out accuracy (greedy)"),
    ("rollout/gen_seconds", "generation, s per step"),
    ("train/update_seconds", "update (fwd + bwd + optimizer), s per step"),
]  # train/clip_frac is left out: one update per rollout batch keeps it 0 (module docstring)


INSTALL_HINT = "plotting needs matplotlib: pip install 'lit-chord[plot]' (or pip install matplotlib)"


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend; if matplotlib is missing, an error saying how to get it."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ModuleNotFoundError(INSTALL_HINT, name="matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run: Path) -> dict[str, list[tuple[int, float]]]:
    """``metric -> [(step, value), ...]`` from the newest ``metrics.csv`` under ``run``."""
    files = [run] if run.is_file() else sorted(run.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"{run}: no metrics.csv found (expected a CSVLogger run directory)")
    series: dict[str, list[tuple[int, float]]] = {}
    with files[-1].open() as handle:
        for row in csv.DictReader(handle):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    series.setdefault(key, []).append((step, float(value)))
    return series


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average, so noisy per-step metrics stay readable."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value - (values[index - window] if index >= window else 0.0)
        out.append(total / min(index + 1, window))
    return out


def plot_runs(runs: list[Path], out: Path, window: int = 10) -> Path:
    plt = pyplot()
    data = {run.name or str(run): read_metrics(run) for run in runs}
    panels = [(k, t) for k, t in PANELS if any(k in series for series in data.values())]
    cols = 3
    fig, axes = plt.subplots(
        math.ceil(len(panels) / cols), cols, figsize=(4 * cols, 3 * math.ceil(len(panels) / cols)), squeeze=False
    )
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for label, series in data.items():
            if key in series:
                steps, values = zip(*series[key], strict=True)
                ys = list(values) if key.startswith("val/") else smooth(list(values), window)
                ax.plot(steps, ys, label=label, marker="o" if key.startswith("val/") else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="CSVLogger run directories (or metrics.csv files)")
    parser.add_argument("-o", "--output", type=Path, default=Path("curves.png"), help="PNG to write")
    parser.add_argument("--smooth", type=int, default=10, help="moving-average window for per-step metrics")
    args = parser.parse_args(argv)
    require_matplotlib(parser)
    print(plot_runs(args.runs, args.output, args.smooth))


def require_matplotlib(parser: argparse.ArgumentParser) -> None:
    """Exit with one line saying how to install matplotlib if it is missing (a command checks before its work)."""
    try:
        pyplot()
    except ModuleNotFoundError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
