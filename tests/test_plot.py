"""The plot command reads CSV logs of several runs and writes one PNG."""

from __future__ import annotations

import sys

import pytest

from lit_chord.experiments.plot import main, read_metrics, smooth


def fake_run(path, rewards):
    path.mkdir(parents=True)
    lines = ["epoch,rollout/reward_mean,step,train/mu,val/accuracy"]
    lines += [f"0,{r},{step},{0.5 - 0.1 * step}," for step, r in enumerate(rewards)]
    lines.append("0,,2,,0.75")  # validation rows carry only val/ metrics
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    return path


def test_read_metrics_skips_empty_cells(tmp_path):
    series = read_metrics(fake_run(tmp_path / "chord" / "version_0", [0.1, 0.3, 0.5]))
    assert series["rollout/reward_mean"] == [(0, 0.1), (1, 0.3), (2, 0.5)]
    assert series["val/accuracy"] == [(2, 0.75)]


def test_smooth_is_a_trailing_mean():
    # window 2: [1, (1+3)/2, (3+5)/2] = [1, 2, 4]
    assert smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]


def test_plot_overlays_runs_into_a_png(tmp_path):
    a, b = fake_run(tmp_path / "chord", [0.1, 0.2, 0.4]), fake_run(tmp_path / "sft", [0.1, 0.1, 0.1])
    out = tmp_path / "curves.png"
    main([str(a), str(b), "-o", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_logs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        read_metrics(tmp_path)


def test_without_matplotlib_the_command_says_in_one_line_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if it were missing
    run = fake_run(tmp_path / "chord", [0.1])
    assert read_metrics(run)["val/accuracy"] == [(2, 0.75)]  # reading logs needs no matplotlib
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "-o", str(tmp_path / "curves.png")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "pip install 'lit-chord[plot]'" in line
