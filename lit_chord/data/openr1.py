"""``openr1``: the paper's math data from OpenR1-Math-220k, made as the reference's ``get_openr1_data.py`` makes it.

Filters, in the reference's order: a problem with Chinese characters goes (CJK ideographs: many such problems are
bad translations); of the other problems' generations, those Math-Verify did not mark correct and those longer than
``max_tokens`` tokens under the policy's tokenizer go; a problem left without a generation goes. The SFT set is
``sft_size`` random problems with one random kept generation each, as chat messages under the paper's system
prompt. The RL set is ``rl_size`` random problems among the others whose answer parses as an integer (Python's
``int``, as the reference) and that kept at least two generations, as ``problem``/``answer``.

The randomness is the reference's: one ``random.Random(seed)`` drawn in its order (sample the SFT problems, choose
each one's generation, sample the RL problems) over the kept problems in the data set's order, so with the same
tokenizer the same seed selects the same rows (the paper's runs used no fixed seed, so the paper's own selection
is not recoverable). One deliberate difference: the RL candidates exclude every problem whose text is an SFT
problem's, not only the SFT rows, so a problem listed twice in the source cannot land in both sets.

The generations are filtered with ``datasets``' ``map`` (its progress bar, ``num_proc`` workers, and its cache for
hub data, so a second run with the same tokenizer skips the tokenization); only the problems, answers and counts
come into Python, and the kept generations of the 5,000 SFT rows.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from lit_chord.chat import PAPER_SYSTEM_PROMPT
from lit_chord.data.sources import Report, load_source, require_columns, write_jsonl
from lit_chord.errors import UserError

SOURCE = "open-r1/OpenR1-Math-220k"
COLUMNS = {
    "problem": ("string",),
    "answer": ("string",),
    "generations": ("list of string",),
    "correctness_math_verify": ("list of bool",),
}


def has_chinese(text: str) -> bool:
    """Whether ``text`` holds a CJK ideograph (Unified Ideographs or Extension A), the reference's test."""
    return any("\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf" for char in text)


def parses_as_int(answer: Any) -> bool:
    """Whether ``int(answer)`` succeeds: "42" and " -7 " do, "4.0", "1/2" and None do not (the reference's test)."""
    try:
        int(answer)
    except (TypeError, ValueError):
        return False
    return True


def keep_generations(batch: dict[str, list], tokenizer: Any, max_tokens: int) -> dict[str, list]:
    """For a batch of rows: the generations Math-Verify marked correct and at most ``max_tokens`` long, and counts.

    A Chinese problem's generations are not looked at (the reference drops the problem first). A generation
    without a verdict (the list of verdicts is shorter) counts as not verified.
    """
    rows = range(len(batch["problem"]))
    chinese = [has_chinese(problem or "") for problem in batch["problem"]]
    unverified, too_long = [0 for _ in rows], [0 for _ in rows]
    kept: list[list[str]] = [[] for _ in rows]
    candidates: list[tuple[int, str]] = []
    for row, generations, verdicts in zip(rows, batch["generations"], batch["correctness_math_verify"], strict=True):
        if chinese[row]:
            continue
        verdicts = verdicts or []
        for index, generation in enumerate(generations or []):
            if index < len(verdicts) and verdicts[index]:
                candidates.append((row, generation))
            else:
                unverified[row] += 1
    texts = [generation for _, generation in candidates]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    for (row, generation), length in zip(candidates, lengths, strict=True):
        if length <= max_tokens:
            kept[row].append(generation)
        else:
            too_long[row] += 1
    return {
        "problem": batch["problem"],
        "answer": batch["answer"],
        "kept": kept,
        "num_kept": [len(generations) for generations in kept],
        "chinese": chinese,
        "unverified": unverified,
        "too_long": too_long,
    }


def prepare_openr1(
    out: Path,
    tokenizer: Any,
    source: str = SOURCE,
    config: str | None = "default",
    split: str = "train",
    max_tokens: int = 8196,
    sft_size: int = 5000,
    rl_size: int = 20000,
    seed: int = 42,
    num_proc: int | None = None,
) -> Report:
    """Write ``out/sft.jsonl`` (messages) and ``out/rl_train.jsonl`` (problem/answer); what was dropped and kept.

    Args:
        out: Folder for the two files.
        tokenizer: The policy's tokenizer; generations longer than ``max_tokens`` of its tokens are dropped.
        source: Hub name or a local .parquet/.jsonl file in OpenR1-Math-220k's columns.
        config, split: Hub config and split (the paper's: "default", "train"); ignored for a local file.
        max_tokens: Longest generation kept, in tokens without special tokens (reference: 8196).
        sft_size, rl_size: Problems in the SFT and RL sets (reference: 5,000 and 20,000); fewer if fewer qualify.
        seed: Seed of the one random generator (reference: 42).
        num_proc: Worker processes for the tokenization (None: this process).
    """
    for name, value, least in [("max_tokens", max_tokens, 1), ("sft_size", sft_size, 0), ("rl_size", rl_size, 0)]:
        if value < least:
            raise UserError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
    dataset = load_source(source, config, split)
    require_columns(dataset, source, COLUMNS)
    filtered = dataset.map(
        keep_generations,
        batched=True,
        batch_size=256,
        fn_kwargs={"tokenizer": tokenizer, "max_tokens": max_tokens},
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="Filtering generations",
    )
    columns = filtered.select_columns(["problem", "answer", "num_kept", "chinese", "unverified", "too_long"]).to_dict()
    report = Report()
    report.heading(f"{source}: {len(dataset):,} problems")
    chinese, num_kept = columns["chinese"], columns["num_kept"]
    report.count("chinese", sum(chinese), "problems with Chinese characters")
    report.count("unverified", sum(columns["unverified"]), "generations not marked correct by Math-Verify")
    report.count("too_long", sum(columns["too_long"]), f"generations longer than {max_tokens} tokens")
    bare = sum(not c and n == 0 for c, n in zip(chinese, num_kept, strict=True))
    report.count("no_generation", bare, "problems left without a generation")
    kept = [row for row, (c, n) in enumerate(zip(chinese, num_kept, strict=True)) if not c and n > 0]
    report.count("kept", len(kept), "problems kept", sign="=")

    rng = random.Random(seed)
    sft_rows = rng.sample(kept, min(sft_size, len(kept)))
    report.heading(f"SFT: {len(sft_rows):,} random problems, one random generation each")
    sft = (sft_record(row["problem"], rng.choice(row["kept"])) for row in filtered.select(sft_rows))
    report.count("sft", write_jsonl(out / "sft.jsonl", sft), f"rows -> {out / 'sft.jsonl'}", sign="=")
    candidates = rl_candidates(kept, sft_rows, columns, report)
    rl_rows = rng.sample(candidates, min(rl_size, len(candidates)))
    rl = ({"problem": columns["problem"][row], "answer": columns["answer"][row]} for row in rl_rows)
    report.count("rl", write_jsonl(out / "rl_train.jsonl", rl), f"random rows -> {out / 'rl_train.jsonl'}", sign="=")
    return report


def sft_record(problem: str, generation: str) -> dict:
    """The reference's SFT record: the paper's system prompt, the problem, one of its generations."""
    return {
        "messages": [
            {"role": "system", "content": PAPER_SYSTEM_PROMPT},
            {"role": "user", "content": problem},
            {"role": "assistant", "content": generation},
        ]
    }


def rl_candidates(kept: list[int], sft_rows: list[int], columns: dict[str, list], report: Report) -> list[int]:
    """The kept rows the RL set may draw from, in order, with what each RL filter dropped counted in ``report``."""
    problems, taken = columns["problem"], set(sft_rows)
    sft_problems = {problems[row] for row in sft_rows}
    others = [row for row in kept if row not in taken]
    report.heading(f"RL: from the {len(others):,} other problems")
    candidates = [row for row in others if problems[row] not in sft_problems]
    report.count("same_problem", len(others) - len(candidates), "problems also in the SFT set (listed twice)")
    integer = [row for row in candidates if parses_as_int(columns["answer"][row])]
    report.count("not_integer", len(candidates) - len(integer), "answers that do not parse as an integer")
    candidates = [row for row in integer if columns["num_kept"][row] >= 2]
    report.count("one_generation", len(integer) - len(candidates), "problems with fewer than 2 kept generations")
    report.count("rl_candidates", len(candidates), "candidates", sign="=")
    return candidates
