"""``bench``: the paper's held-out sets as ``problem``/``answer`` files for ``data.val_data``.

AIME 2024, AIME 2025, AMC, MATH-500 and MMLU-Pro, from the hub copies most evaluations use (``BENCHMARKS``; any
other copy or a local file with a problem and an answer column works too). The sets spell their columns
differently ("problem", "question", "Problem"; "answer", "Answer") and type the answer differently (a string; an
int; AMC's a float such as 142.0): the answer is written as a string, an integral float as an integer ("142").

MMLU-Pro becomes a zero-shot multiple-choice prompt: the question, its options lettered A, B, ..., and a request
for the option's letter in ``\\boxed{}``; the answer is the letter. The paper scores every benchmark, MMLU-Pro
included, under the same zero-shot system prompt with ``<think>`` tags (the datamodule's ``system_prompt``), so the
prompt adds no few-shot examples and no chain-of-thought cue of its own. The request's wording is ours.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track

from lit_chord.data.sources import Report, first_column, load_source, require_columns, write_jsonl
from lit_chord.errors import UserError


@dataclass(frozen=True)
class Benchmark:
    source: str  # hub name
    split: str
    config: str | None = None


BENCHMARKS = {
    "aime24": Benchmark("HuggingFaceH4/aime_2024", "train"),  # 30 problems, answer a string
    "aime25": Benchmark("yentinglin/aime_2025", "train"),  # 30 problems
    "amc": Benchmark("AI-MO/aimo-validation-amc", "train"),  # 83 problems (AMC 12 2022-2023), answer a float
    "math500": Benchmark("HuggingFaceH4/MATH-500", "test"),  # 500 problems, answer LaTeX
    "mmlu_pro": Benchmark("TIGER-Lab/MMLU-Pro", "test"),  # 12,032 questions with up to 10 options
}
PROBLEM_COLUMNS = ("problem", "question", "Problem", "Question")
ANSWER_COLUMNS = ("answer", "Answer")
ANSWER_TYPES = ("string", "int", "float")
LETTERS = string.ascii_uppercase


def answer_text(answer: Any) -> str:
    """An answer as a string: 142.0 -> "142", 0.5 -> "0.5", " 33 " -> "33", None -> ""."""
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    return "" if answer is None else str(answer).strip()


def multiple_choice(question: str, options: list[str]) -> str:
    """A zero-shot multiple-choice prompt: the question, options "A. ...", and the request for a boxed letter."""
    lettered = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS[: len(options)], options, strict=True))
    last = LETTERS[len(options) - 1]
    return (
        f"{question.strip()}\n\n{lettered}\n\nAnswer with the letter of the correct option (A-{last}) in \\boxed{{}}."
    )


def prepare_benchmark(name: str, out: Path, source: str | None = None, split: str | None = None) -> Report:
    """Write ``out/<name>.jsonl`` from the benchmark's hub copy, or from ``source`` (a hub name or a local file)."""
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; one of {', '.join(BENCHMARKS)}")
    benchmark = BENCHMARKS[name]
    source = source or benchmark.source
    dataset = load_source(source, benchmark.config, split or benchmark.split)
    if name == "mmlu_pro":
        require_columns(
            dataset, source, {"question": ("string",), "options": ("list of string",), "answer": ("string",)}
        )
        problem_key, answer_key = "question", "answer"
    else:
        problem_key = first_column(dataset, source, PROBLEM_COLUMNS)
        answer_key = first_column(dataset, source, ANSWER_COLUMNS)
        require_columns(dataset, source, {problem_key: ("string",), answer_key: ANSWER_TYPES})
    records, empty, unlettered = [], 0, 0
    for row in track(dataset, total=len(dataset), description=f"Converting {source}", console=Console(stderr=True)):
        problem, answer = (row[problem_key] or "").strip(), answer_text(row[answer_key])
        if not problem or not answer:
            empty += 1
            continue
        if name == "mmlu_pro":
            options = row["options"] or []
            if answer not in list(LETTERS[: len(options)]):  # one letter, not a substring such as "AB"
                unlettered += 1
                continue
            problem = multiple_choice(problem, options)
        records.append({"problem": problem, "answer": answer})
    report = Report()
    report.heading(f"{name} from {source}: {len(dataset):,} rows")
    report.count("empty", empty, "rows without a problem or an answer")
    if name == "mmlu_pro":
        report.count("unlettered", unlettered, "rows whose answer is not one of its options' letters")
    path = out / f"{name}.jsonl"
    if not records:
        raise UserError(f"{source}: no usable row for {name}")
    report.count(name, write_jsonl(path, records), f"rows -> {path}", sign="=")
    return report
