"""``python -m lit_chord.data``: each subcommand on a fixture in its source's real columns, with counts by hand.

Fixtures (``tests/data/prep/``), one row per case, in the hub data sets' column names and types:

- ``openr1_math.jsonl``, 30 rows of OpenR1-Math-220k (``default``): 3 Chinese problems (a Unified ideograph, an
  Extension A one, two ideographs); 4 problems left without a generation (both unverified; both too long; one
  each; one unverified and one without a verdict); 12 RL candidates (``rl-01`` ... ``rl-12``: 2-4 generations
  of which at least 2 survive, answers such as " 17 " and "-5"; ``rl-09`` has a full-width colon, which is no CJK
  ideograph); 4 answers that are no integer ("\\frac{1}{2}", "4.0", "x = 3", ""); 4 integer problems with one
  surviving generation; one problem listed twice (``dup-a``, ``dup-b``); one Chinese generation under an English
  problem (kept: only the problem is looked at). Short generations are < 64 bytes, long ones ~770 bytes, and the
  tests use ``max_tokens=64`` (a byte-level BPE never has more tokens than bytes).
- ``toolace_rl.jsonl`` (16 rows) and ``toolace_sft.jsonl`` (10 rows) in the reference's ToolACE splits' columns.
- ``aime24.jsonl`` (Maxwell-Jia/AIME_2024's columns), ``aime25.jsonl`` (yentinglin/aime_2025's), ``amc.jsonl``
  (AI-MO/aimo-validation-amc's, float answers), ``math500.jsonl``, ``mmlu_pro.jsonl``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lit_chord.chat import PAPER_SYSTEM_PROMPT
from lit_chord.data.__main__ import main
from lit_chord.data.benchmarks import prepare_benchmark
from lit_chord.data.openr1 import has_chinese, parses_as_int, prepare_openr1
from lit_chord.data.sources import load_source, write_jsonl
from lit_chord.data.toolace import prepare_toolace
from lit_chord.datamodule import ChordDataModule
from lit_chord.errors import UserError

PREP = Path(__file__).parent / "data" / "prep"
OPENR1 = PREP / "openr1_math.jsonl"
MAX_TOKENS = 64


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer(tiny_world):
    return AutoTokenizer.from_pretrained(tiny_world / "model")


def openr1(tmp_path: Path, tokenizer, source: Path = OPENR1, **sizes):
    return prepare_openr1(tmp_path, tokenizer, source=str(source), max_tokens=MAX_TOKENS, **sizes)


# ----- openr1 ---------------------------------------------------------------------------------------------------
def test_the_fixture_generations_lie_on_the_intended_side_of_the_length_limit(tokenizer):
    for row in read_jsonl(OPENR1):
        for generation in row["generations"]:
            tokens = len(tokenizer.tokenize(generation))
            assert (tokens > MAX_TOKENS) == generation.startswith("Let me reconsider"), (row["uuid"], tokens)


def test_openr1_counts_what_each_filter_drops(tmp_path, tokenizer):
    report = openr1(tmp_path, tokenizer, sft_size=0, rl_size=100)
    assert report.counts == {
        "chinese": 3,
        # bare-unverified 2 + bare-mixed 1 + bare-missing-verdict 2 + rl-10 1 + rl-12 2 (None and False)
        # + one-unverified 1 + one-missing-verdict 1 (the Chinese rows' generations are not looked at)
        "unverified": 10,
        # bare-too-long 2 + bare-mixed 1 + rl-10 1 + one-too-long 1
        "too_long": 5,
        "no_generation": 4,
        "kept": 23,  # 30 - 3 - 4
        "sft": 0,
        "same_problem": 0,
        "not_integer": 4,
        "one_generation": 4,
        "rl_candidates": 15,  # 23 - 4 - 4: rl-01..rl-12, dup-a, dup-b, chinese-in-generation
        "rl": 15,
    }
    rl = read_jsonl(tmp_path / "rl_train.jsonl")
    problems = {row["problem"]: row["uuid"] for row in read_jsonl(OPENR1)}
    uuids = {problems[record["problem"]] for record in rl}  # the two dup rows share one problem text
    assert uuids == {f"rl-{n:02d}" for n in range(1, 13)} | {"dup-b", "chinese-in-generation"}
    assert {record["answer"] for record in rl} >= {" 17 ", "-5"}  # as the source wrote them
    assert (tmp_path / "sft.jsonl").read_text() == ""


def test_openr1_sft_and_rl_sets_are_disjoint_and_in_lit_chords_formats(tmp_path, tokenizer):
    report = openr1(tmp_path, tokenizer, sft_size=5, rl_size=3)
    assert report.counts["sft"] == 5 and report.counts["rl"] == 3
    # The 18 problems not sampled for SFT go to exactly one of the RL filters or the candidates.
    rl_filters = ("same_problem", "not_integer", "one_generation", "rl_candidates")
    assert sum(report.counts[key] for key in rl_filters) == 23 - 5
    survivors: dict[str, set[str]] = {}  # problem -> its generations that pass both filters
    for row in read_jsonl(OPENR1):
        for generation, verdict in zip(row["generations"], row["correctness_math_verify"], strict=False):
            if verdict and not generation.startswith("Let me reconsider"):
                survivors.setdefault(row["problem"], set()).add(generation)
    sft = read_jsonl(tmp_path / "sft.jsonl")
    for record in sft:
        system, user, assistant = record["messages"]
        assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
        assert system["content"] == PAPER_SYSTEM_PROMPT
        assert assistant["content"] in survivors[user["content"]]
    rl = read_jsonl(tmp_path / "rl_train.jsonl")
    assert all(set(record) == {"problem", "answer"} and parses_as_int(record["answer"]) for record in rl)
    assert not {r["messages"][1]["content"] for r in sft} & {r["problem"] for r in rl}


def test_a_problem_listed_twice_never_lands_in_both_sets(tmp_path, tokenizer):
    twice = tmp_path / "twice.jsonl"
    twice.write_text("".join(line + "\n" for line in OPENR1.read_text().splitlines() if '"uuid": "dup-' in line))
    report = openr1(tmp_path / "out", tokenizer, source=twice, sft_size=1, rl_size=10)
    # 2 kept rows, 1 to SFT; the other has the SFT problem's text, so no RL candidate is left
    assert report.counts["kept"] == 2
    assert (report.counts["sft"], report.counts["same_problem"], report.counts["rl_candidates"]) == (1, 1, 0)


def reference_selection(rows, tokenizer, sft_size, rl_size, seed):
    """get_openr1_data.py's selection, transcribed as written there, plus our one change (marked)."""
    rng = random.Random(seed)  # the reference seeds the global generator; the draws are the same
    processed = []
    for row in rows:
        if any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in row["problem"]):
            continue
        verdicts, kept = row["correctness_math_verify"], []
        for i, generation in enumerate(row["generations"]):
            if i >= len(verdicts) or not verdicts[i]:
                continue
            if len(tokenizer.tokenize(generation)) > MAX_TOKENS:
                continue
            kept.append(generation)
        if kept:
            processed.append({"problem": row["problem"], "answer": row["answer"], "generations": kept})
    sampled = rng.sample(processed, min(sft_size, len(processed)))
    sft = [[d["problem"], rng.choice(d["generations"])] for d in sampled]
    sft_problems = {d["problem"] for d in sampled}  # ours: exclude by problem text, not only the sampled rows
    remaining = [d for d in processed if d not in sampled and d["problem"] not in sft_problems]
    filtered = [d for d in remaining if parses_as_int(d["answer"])]
    filtered = [d for d in filtered if len(d["generations"]) >= 2]
    rl = [[d["problem"], d["answer"]] for d in rng.sample(filtered, min(rl_size, len(filtered)))]
    return sft, rl


@pytest.mark.parametrize("seed", [42, 7])
def test_openr1_selects_the_rows_the_reference_selects(tmp_path, tokenizer, seed):
    prepare_openr1(tmp_path, tokenizer, source=str(OPENR1), max_tokens=MAX_TOKENS, sft_size=5, rl_size=4, seed=seed)
    sft = [[r["messages"][1]["content"], r["messages"][2]["content"]] for r in read_jsonl(tmp_path / "sft.jsonl")]
    rl = [[r["problem"], r["answer"]] for r in read_jsonl(tmp_path / "rl_train.jsonl")]
    assert (sft, rl) == reference_selection(read_jsonl(OPENR1), tokenizer, sft_size=5, rl_size=4, seed=seed)


def test_openr1_reads_a_parquet_copy_as_it_reads_json_lines(tmp_path, tokenizer):
    parquet = tmp_path / "train-00000-of-00001.parquet"
    load_source(str(OPENR1)).to_parquet(str(parquet))
    openr1(tmp_path / "jsonl", tokenizer, sft_size=5, rl_size=3)
    openr1(tmp_path / "parquet", tokenizer, source=parquet, sft_size=5, rl_size=3)
    for name in ("sft.jsonl", "rl_train.jsonl"):
        assert (tmp_path / "parquet" / name).read_text() == (tmp_path / "jsonl" / name).read_text()


def rewritten(tmp_path: Path, source: Path, change) -> Path:
    path = tmp_path / f"changed_{source.name}"
    path.write_text("".join(json.dumps(change(row)) + "\n" for row in read_jsonl(source)))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda row: {k: v for k, v in row.items() if k != "correctness_math_verify"},
            "column 'correctness_math_verify'",
        ),
        (lambda row: row | {"answer": len(row["answer"])}, "column 'answer' is int, expected string"),
        (lambda row: row | {"generations": " ".join(row["generations"])}, "'generations' is string, expected list of"),
    ],
    ids=["a column missing", "an int answer", "generations a string"],
)
def test_openr1_bad_source_is_one_error_naming_the_data_set_and_column(tmp_path, tokenizer, change, message):
    source = rewritten(tmp_path, OPENR1, change)
    with pytest.raises(UserError, match=f"^{source}: .*{message}"):
        openr1(tmp_path / "out", tokenizer, source=source)


def test_chinese_characters_and_integer_answers_are_the_references():
    assert has_chinese("求") and has_chinese("a 㐂 b") and not has_chinese("9 * 7： ，。") and not has_chinese("x")
    assert [parses_as_int(a) for a in ("42", " 17 ", "-5", "4.0", "1/2", "", None)] == [True] * 3 + [False] * 4


# ----- toolace --------------------------------------------------------------------------------------------------
def toolace(tmp_path: Path, rl: Path = PREP / "toolace_rl.jsonl", sft: Path = PREP / "toolace_sft.jsonl"):
    return prepare_toolace(tmp_path, rl_source=str(rl), sft_source=str(sft))


def test_toolace_counts_what_it_drops_and_writes_lit_chords_formats(tmp_path):
    report = toolace(tmp_path)
    assert report.counts == {
        "bad_tools": 3,  # a call string, an empty list, an object
        "bad_answer": 2,  # a call without arguments, an unparsed call string
        "bad_turns": 3,  # ends on the assistant, an unknown speaker, no turns
        "rl_train": 8,  # 16 - 3 - 2 - 3
        "bad_messages": 3,  # ends on the user, a blank assistant turn, an unknown role
        "sft": 7,  # 10 - 3
    }
    rl = read_jsonl(tmp_path / "rl_train.jsonl")
    assert all(set(r) == {"problem", "answer", "messages"} for r in rl)
    assert json.loads(rl[0]["answer"]) == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    system, user = rl[0]["messages"]
    assert '"name": "get_weather"' in system["content"] and "<tool_call>" in system["content"]
    assert rl[0]["problem"] == f"{system['content']}\n\n{user['content']}"
    multi_turn = rl[6]["messages"]
    assert [m["role"] for m in multi_turn] == ["system", "user", "assistant", "tool", "user"]
    assert multi_turn[2]["content"] == '<tool_call>[{"name": "get_weather", "arguments": {"city": "Bern"}}]</tool_call>'
    assert "User: What is the weather in Bern?\n\nAssistant: <tool_call>" in rl[6]["problem"]
    sft = read_jsonl(tmp_path / "sft.jsonl")
    assert [m["role"] for m in sft[5]["messages"]] == ["system", "user", "assistant", "tool", "assistant"]


def test_toolace_holds_out_rl_prompts_for_an_in_domain_check(tmp_path):
    toolace(tmp_path / "all")
    everything = read_jsonl(tmp_path / "all" / "rl_train.jsonl")
    report = prepare_toolace(
        tmp_path / "split", str(PREP / "toolace_rl.jsonl"), str(PREP / "toolace_sft.jsonl"), heldout=3
    )
    assert (report.counts["heldout"], report.counts["rl_train"]) == (3, 5)  # 8 usable rows: 3 held out, 5 left
    train, held = (read_jsonl(tmp_path / "split" / name) for name in ("rl_train.jsonl", "heldout.jsonl"))
    assert sorted(map(json.dumps, train + held)) == sorted(map(json.dumps, everything))  # a partition of the 8
    with pytest.raises(UserError, match="--heldout 8: .* has only 8 usable rows"):
        prepare_toolace(tmp_path / "x", str(PREP / "toolace_rl.jsonl"), str(PREP / "toolace_sft.jsonl"), heldout=8)


def test_toolace_bad_source_is_one_error_naming_the_data_set_and_column(tmp_path):
    rl = rewritten(tmp_path, PREP / "toolace_rl.jsonl", lambda row: {k: v for k, v in row.items() if k != "answer"})
    with pytest.raises(UserError, match=f"^{rl}: column 'answer' \\(string\\) is missing"):
        toolace(tmp_path / "out", rl=rl)
    sft = rewritten(tmp_path, PREP / "toolace_sft.jsonl", lambda row: {"messages": json.dumps(row["messages"])})
    with pytest.raises(UserError, match=f"^{sft}: column 'messages' is string, expected list of struct"):
        toolace(tmp_path / "out", sft=sft)


# ----- bench ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, counts, answers",
    [
        ("aime24", {"empty": 1, "aime24": 5}, ["4", "27", "256", "125", "656"]),  # int answers; a blank problem
        ("aime25", {"empty": 1, "aime25": 4}, ["71", "72", "73", "74"]),  # an empty answer
        ("amc", {"empty": 1, "amc": 5}, ["6", "8", "9", "10", "142"]),  # float answers; a null answer
        ("math500", {"empty": 1, "math500": 5}, ["\\frac{1}{2}", "4", "2", "1024", "6"]),  # an empty problem
        ("mmlu_pro", {"empty": 0, "unlettered": 2, "mmlu_pro": 6}, ["A", "B", "C", "D", "E", "C"]),  # K of 10, E of 4
    ],
)
def test_bench_writes_problem_answer_and_counts_what_it_drops(tmp_path, name, counts, answers):
    report = prepare_benchmark(name, tmp_path, source=str(PREP / f"{name}.jsonl"))
    assert report.counts == counts
    records = read_jsonl(tmp_path / f"{name}.jsonl")
    assert [r["answer"] for r in records] == answers
    assert all(set(r) == {"problem", "answer"} and r["problem"] for r in records)


def test_mmlu_pro_is_a_zero_shot_prompt_asking_for_the_boxed_letter(tmp_path):
    prepare_benchmark("mmlu_pro", tmp_path, source=str(PREP / "mmlu_pro.jsonl"))
    records = read_jsonl(tmp_path / "mmlu_pro.jsonl")
    assert records[0]["problem"] == (
        "Question 0: which option is right?\n\n"
        + "\n".join(f"{letter}. option {k}" for k, letter in enumerate("ABCDEFGHIJ"))
        + "\n\nAnswer with the letter of the correct option (A-J) in \\boxed{}."
    )
    assert records[5]["problem"].endswith(
        "A. 4\nB. 6\nC. 7\nD. 9\n\nAnswer with the letter of the correct option (A-D) in \\boxed{}."
    )


def test_bench_source_without_an_answer_column_or_not_json_names_it(tmp_path):
    source = rewritten(tmp_path, PREP / "amc.jsonl", lambda row: {k: v for k, v in row.items() if k != "answer"})
    with pytest.raises(UserError, match=f"^{source}: no column 'answer' or 'Answer'; its columns: id, problem, url"):
        prepare_benchmark("amc", tmp_path, source=str(source))
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text((PREP / "amc.jsonl").read_text() + "not json\n")
    with pytest.raises(UserError, match=f"^{malformed}: cannot be read as json"):
        prepare_benchmark("amc", tmp_path, source=str(malformed))


# ----- the files load, the command line ----------------------------------------------------------------------------
def test_prepared_files_load_in_the_datamodule(tmp_path, tiny_world, tokenizer):
    openr1(tmp_path / "openr1", tokenizer, sft_size=5, rl_size=3)
    toolace(tmp_path / "toolace")
    prepare_benchmark("mmlu_pro", tmp_path / "eval", source=str(PREP / "mmlu_pro.jsonl"))
    for folder, expected in [("openr1", (3, 5)), ("toolace", (8, 7))]:
        dm = ChordDataModule(
            tokenizer=str(tiny_world / "model"),
            prompt_data=str(tmp_path / folder / "rl_train.jsonl"),
            expert_data=str(tmp_path / folder / "sft.jsonl"),
            val_data=str(tmp_path / "eval" / "mmlu_pro.jsonl"),
            max_prompt_length=4096,
            max_response_length=4096,
        )
        dm.setup("fit")
        assert (len(dm.prompts), len(dm.expert), len(dm.val_sets["heldout"])) == (*expected, 6)


def test_write_jsonl_replaces_a_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    def broken():
        yield {"a": 2}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_text() == '{"a": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_the_command_prints_the_summary(tmp_path, tiny_world, capsys):
    out = tmp_path / "openr1"
    args = ["--source", str(OPENR1), "--tokenizer", str(tiny_world / "model"), "--max-tokens", "64"]
    assert main(["openr1", *args, "--sft-size", "5", "--rl-size", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{OPENR1}: 30 problems\n  -         3  problems with Chinese characters" in printed
    assert f"  =         3  random rows -> {out / 'rl_train.jsonl'}" in printed


def test_a_bad_source_on_the_command_line_is_one_line_and_exit_code_2(tmp_path, tiny_world, capsys):
    # conftest sets HF_HUB_OFFLINE=1: the hub name fails at once, as it does on a machine without a route to the hub
    assert main(["bench", "amc", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[0].startswith("error: AI-MO/aimo-validation-amc (split 'train') cannot be loaded: ")
    assert error[1].startswith("hint: ") and len(error) == 2
    assert main(["bench", "amc", "aime24", "--source", str(PREP / "amc.jsonl"), "--out", str(tmp_path)]) == 2
    assert "--source names one data set" in capsys.readouterr().err
    assert main(["openr1", "--tokenizer", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --tokenizer: '{tmp_path / 'nowhere'}' not found")
    assert not list(tmp_path.glob("*.jsonl"))


def test_an_unreachable_hub_fails_after_one_short_request(tmp_path, monkeypatch):
    import lit_chord.data.sources as sources

    requests = []

    def unreachable(self, name, timeout):
        requests.append((name, timeout))
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(sources, "is_offline_mode", lambda: False)
    monkeypatch.setattr(sources.HfApi, "dataset_info", unreachable)
    with pytest.raises(UserError, match="cannot be loaded: the hub is unreachable \\(ConnectionError: "):
        prepare_benchmark("math500", tmp_path)
    assert requests == [("HuggingFaceH4/MATH-500", sources.HUB_PROBE_TIMEOUT_S)]


@pytest.mark.parametrize("command, flag", [("openr1", "--max-tokens"), ("toolace", "--rl-source"), ("bench", "NAME")])
def test_every_subcommand_has_help(capsys, command, flag):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and flag in capsys.readouterr().out
