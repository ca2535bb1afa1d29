"""``python -m lit_chord.data {openr1,toolace,bench}``: prepare the paper's data sets, then print what was kept.

Each subcommand reads a hub data set (or a local .parquet/.jsonl copy of it), shows ``datasets``' or rich's
progress bar, writes JSON Lines atomically and prints how many rows each filter dropped. A bad source (no route to
the hub, a missing column, a column of another type) ends in one line and exit code 2 (``cli.command_line``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lit_chord.cli import command_line
from lit_chord.data.benchmarks import BENCHMARKS, prepare_benchmark
from lit_chord.data.openr1 import SOURCE, prepare_openr1
from lit_chord.data.sources import first_line
from lit_chord.data.toolace import RL_SOURCE, SFT_SOURCE, prepare_toolace
from lit_chord.errors import UserError
from lit_chord.hub import is_repo_id, pretrained_problem

LOCAL = "a hub name, or a local .parquet/.jsonl/.json file in its columns"
DESCRIPTION = "Prepare the paper's data sets into the files lit_chord trains and evaluates on."


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m lit_chord.data", description=DESCRIPTION)
    commands = top.add_subparsers(dest="command", required=True, metavar="{openr1,toolace,bench}")

    openr1 = commands.add_parser(
        "openr1",
        help="OpenR1-Math-220k -> sft.jsonl (messages) + rl_train.jsonl (problem/answer), as the reference",
        description="The paper's math data as the reference's get_openr1_data.py makes it: drop Chinese problems; "
        "keep Math-Verify-correct generations of at most --max-tokens tokens; SFT = --sft-size random problems with "
        "one random kept generation each; RL = --rl-size random other problems with an integer answer and >= 2 "
        "kept generations.",
    )
    openr1.add_argument("--out", type=Path, default=Path("data/openr1"), help="output folder (default: %(default)s)")
    openr1.add_argument("--tokenizer", default="Qwen/Qwen2.5-7B-Instruct", help="the policy's (default: %(default)s)")
    openr1.add_argument("--source", default=SOURCE, help=f"{LOCAL} (default: %(default)s)")
    openr1.add_argument("--config", default="default", help="hub config (default: %(default)s)")
    openr1.add_argument("--split", default="train", help="hub split (default: %(default)s)")
    openr1.add_argument("--max-tokens", type=int, default=8196, help="longest generation kept (default: %(default)s)")
    openr1.add_argument("--sft-size", type=int, default=5000, help="SFT problems (default: %(default)s)")
    openr1.add_argument("--rl-size", type=int, default=20000, help="RL problems (default: %(default)s)")
    openr1.add_argument("--seed", type=int, default=42, help="(default: %(default)s)")
    openr1.add_argument("--num-proc", type=int, default=None, help="tokenizing processes (default: this one)")

    toolace = commands.add_parser(
        "toolace",
        help="the reference's ToolACE splits -> rl_train.jsonl (messages/answer) + sft.jsonl (messages)",
        description="The reference's ToolACE RL and SFT splits in lit_chord's formats; the RL answer is the "
        "ground-truth calls as a JSON string.",
    )
    toolace.add_argument("--out", type=Path, default=Path("data/toolace"), help="output folder (default: %(default)s)")
    toolace.add_argument("--rl-source", default=RL_SOURCE, help=f"{LOCAL} (default: %(default)s)")
    toolace.add_argument("--sft-source", default=SFT_SOURCE, help=f"{LOCAL} (default: %(default)s)")
    toolace.add_argument("--split", default="train", help="hub split of both (default: %(default)s)")
    toolace.add_argument(
        "--heldout",
        type=int,
        default=100,
        help="RL prompts kept out of training as heldout.jsonl, an in-domain check beside BFCL; 0 trains on all, as "
        "the reference (default: %(default)s)",
    )
    toolace.add_argument("--seed", type=int, default=42, help="of the held-out draw (default: %(default)s)")

    bench = commands.add_parser(
        "bench",
        help="held-out sets -> <name>.jsonl (problem/answer)",
        description="Held-out sets as problem/answer files: "
        + "; ".join(f"{name}: {b.source} ({b.split})" for name, b in BENCHMARKS.items()),
    )
    bench.add_argument("names", nargs="+", choices=list(BENCHMARKS), metavar="NAME", help=", ".join(BENCHMARKS))
    bench.add_argument("--out", type=Path, default=Path("data/eval"), help="output folder (default: %(default)s)")
    bench.add_argument("--source", default=None, help=f"{LOCAL}, instead of the default copy (one NAME only)")
    bench.add_argument("--split", default=None, help="hub split, instead of the default copy's")
    return top


def run(args: argparse.Namespace) -> None:
    if args.command == "openr1":
        report = prepare_openr1(
            args.out,
            load_tokenizer(args.tokenizer),
            source=args.source,
            config=args.config,
            split=args.split,
            max_tokens=args.max_tokens,
            sft_size=args.sft_size,
            rl_size=args.rl_size,
            seed=args.seed,
            num_proc=args.num_proc,
        )
        print(report)
    elif args.command == "toolace":
        print(prepare_toolace(args.out, args.rl_source, args.sft_source, args.split, args.heldout, args.seed))
    else:
        if args.source and len(args.names) > 1:
            raise UserError(f"--source names one data set; run `bench NAME --source ...` once for each of {args.names}")
        for name in args.names:
            print(prepare_benchmark(name, args.out, args.source, args.split))


def load_tokenizer(name: str):
    """The tokenizer ``name``; a folder without one, or a hub name neither cached nor reachable, fails at once."""
    from transformers import AutoTokenizer

    if not Path(name).is_dir() and not is_repo_id(name):
        raise UserError(f"--tokenizer: {name!r} not found (relative paths are resolved from {Path.cwd()})")
    problem = pretrained_problem(name, ("tokenizer_config.json", "tokenizer.json"))
    if problem is not None:
        raise UserError(f"--tokenizer: {problem}")
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as err:  # not a folder with a tokenizer, not cached, no route to the hub
        raise UserError(f"--tokenizer {name!r}: {first_line(err)}", hint="pass a local folder") from err


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return command_line(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
