"""Each variant of a memory benchmark in a worker process of its own, the variants' runs taking turns.

Why a process per variant: the kernel's high-water mark of resident memory (``ru_maxrss``) only grows, so a peak
is a variant's own only in a fresh process, measured from a baseline taken after it has built its inputs. Why turns:
the machine's load then hits every variant alike. A benchmark script is its own worker: run with
``--variant NAME`` it builds that variant and calls ``serve``, which answers every "run" line on stdin with the
JSON line its ``step`` returns; the parent starts one worker per variant with ``Worker``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable


def rss_bytes() -> tuple[int, int]:
    """This process's resident memory now and its high-water mark so far, in bytes."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def serve(step: Callable[[], dict]) -> None:
    """Worker side: one ``step()`` per "run" line on stdin, its report as one JSON line on stdout."""
    for _ in sys.stdin:
        print(json.dumps(step()), flush=True)


class Worker:
    """Parent side: ``script`` rerun with its own arguments plus ``--variant variant``."""

    def __init__(self, script: str, variant: str) -> None:
        command = [sys.executable, script, *sys.argv[1:], "--variant", variant]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self) -> dict:
        """One step in the worker, and its report."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a worker died (exit {self.proc.wait()}); out of memory? (dmesg tells)")
        return json.loads(line)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def interleaved(script: str, variants: list[str], repeats: int) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """Every variant's first report (a fresh process's peak) and the seconds of ``repeats`` more runs, in turns."""
    workers = {v: Worker(script, v) for v in variants}
    first = {v: workers[v].run() for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            times[v].append(workers[v].run()["seconds"])
    for worker in workers.values():
        worker.stop()
    return first, times
