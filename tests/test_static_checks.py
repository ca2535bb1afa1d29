"""The package's static checks, run with the tests so CI enforces them: ruff (lint + format) and mypy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("command", [("ruff", "check", "."), ("ruff", "format", "--check", ".")])
def test_ruff(command):
    pytest.importorskip("ruff")
    done = run(*command)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_on_the_package():
    pytest.importorskip("mypy")
    done = run("mypy")  # files and settings: [tool.mypy] in pyproject.toml
    assert done.returncode == 0, done.stdout + done.stderr
