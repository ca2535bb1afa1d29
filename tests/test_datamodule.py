import json

import pytest
from helpers import tiny_datamodule

from lit_chord.batch import Prompt
from lit_chord.datamodule import ChordDataModule, DataError
from lit_chord.errors import ConfigError
from lit_chord.held_out import HeldOutShard


def make_dm(world, tmp_path, expert_records=None, **kwargs):
    expert_path = world / "expert.jsonl"
    if expert_records is not None:
        expert_path = tmp_path / "expert.jsonl"
        expert_path.write_text("".join(json.dumps(r) + "\n" for r in expert_records))
    args = dict(
        tokenizer=str(world / "model"),
        prompt_data=str(world / "prompts.jsonl"),
        expert_data=str(expert_path),
        val_data=str(world / "heldout.jsonl"),
        prompts_per_step=4,
        num_generations=2,
        expert_data_ratio=0.2,
        system_prompt="sys",
        max_prompt_length=64,
        max_response_length=32,
    )
    args.update(kwargs)
    dm = ChordDataModule(**args)
    dm.setup("fit")
    return dm


def masked_text(dm, row):
    """Decode the target tokens that the loss mask selects (mask position t scores token t + 1)."""
    targets = [row.input_ids[t + 1] for t in range(len(row.input_ids) - 1) if row.loss_mask[t]]
    return dm.tokenizer.decode(targets)


@pytest.mark.parametrize("form", ["messages", "prompt_response"])
def test_expert_loss_mask_covers_exactly_the_response(tiny_world, tmp_path, form):
    response = "<think>\n2+2=4\n</think>\n\\boxed{4}"
    if form == "messages":
        record = {
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": response},
            ]
        }
    else:
        record = {"problem": "What is 2 + 2?", "response": response}
    dm = make_dm(tiny_world, tmp_path, [record])
    seq = dm.expert[0]
    tensors = dm.collate_rollouts(dm.step_batch(0))
    row = type("Row", (), {"input_ids": tensors.input_ids[0].tolist(), "loss_mask": tensors.loss_mask[0].tolist()})
    # The response and the end-of-turn token, nothing of the prompt, the template's trailing newline excluded.
    assert masked_text(dm, row) == response + "<|im_end|>"
    prompt = dm.tokenizer.decode(seq.prompt_ids)
    assert (
        prompt
        == "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    # Token by token: the mask is 1 exactly on the positions that predict response tokens.
    n_prompt, n_resp = len(seq.prompt_ids), len(seq.response_ids)
    expected = [0.0] * (n_prompt - 1) + [1.0] * n_resp + [0.0]
    assert tensors.loss_mask[0].tolist()[: n_prompt + n_resp] == expected


def test_both_formats_give_identical_tokens(tiny_world, tmp_path):
    response = "<think>\n1+1=2\n</think>\n\\boxed{2}"
    messages = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": response},
        ]
    }
    a = make_dm(tiny_world, tmp_path, [messages]).expert[0]
    b = make_dm(tiny_world, tmp_path, [{"problem": "Q", "response": response}]).expert[0]
    assert (a.prompt_ids, a.response_ids) == (b.prompt_ids, b.response_ids)


def test_step_composition_follows_expert_ratio(tiny_world, tmp_path):
    # 4 prompts x 2 rollouts = 8 rollout rows; ratio 0.2 -> expert = ceil(0.2 * 8 / 0.8) = ceil(2.0) = 2.
    dm = make_dm(tiny_world, tmp_path)
    batch = dm.step_batch(0)
    assert (len(batch.prompts), len(batch.expert), batch.num_generations) == (4, 2, 2)
    # Reference shape: 32 prompts x 8 with ratio 0.2 -> 64 expert (of 320).
    assert make_dm(tiny_world, tmp_path, prompts_per_step=32, num_generations=8).experts_per_step == 64


def test_an_exact_expert_count_gives_the_reference_toolace_step(tiny_world, tmp_path):
    # ToolACE: 96 prompts x 8 = 768 rollouts with 96 expert. Ratio 0.11: ceil(0.11 * 768 / 0.89) = ceil(94.92) = 95.
    assert (
        make_dm(tiny_world, tmp_path, prompts_per_step=96, num_generations=8, expert_data_ratio=0.11).experts_per_step
        == 95
    )
    dm = make_dm(tiny_world, tmp_path, prompts_per_step=96, num_generations=8, experts_per_step=96)
    assert dm.experts_per_step == 96
    assert len(dm.step_batch(0, rank=1, world_size=2).expert) == 48  # split across ranks like the ratio's count
    with pytest.raises(ValueError, match="experts_per_step"):
        make_dm(tiny_world, tmp_path, experts_per_step=-1)


def two_ranks():
    """A trainer that would run on 2 DDP ranks (nothing is launched before ``fit``)."""
    from lightning.pytorch import Trainer

    return Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)


def test_a_ratio_count_that_does_not_split_over_ranks_is_rounded_up_at_setup(tiny_world, tmp_path, caplog):
    # 4 prompts x 2 rollouts = 8 rollout rows; ratio 0.25 -> ceil(0.25 * 8 / 0.75) = ceil(2.67) = 3 expert, which 2
    # ranks cannot share: 4 are drawn, 2 per rank.
    dm = tiny_datamodule(tiny_world, prompts_per_step=4, num_generations=2, expert_data_ratio=0.25)
    assert dm.experts_per_step == 3
    dm.trainer = two_ranks()
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert (
        "data.expert_data_ratio=0.25 gives 3 expert samples per step; 4 are drawn, a multiple of the world size "
        "(2), 2 per rank" in caplog.text
    )
    assert dm.experts_per_step == 4
    assert [len(dm.step_batch(0, rank, 2).expert) for rank in range(2)] == [2, 2]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"prompts_per_step": 3}, r"data.prompts_per_step=3 must be divisible by the world size \(2\)"),
        ({"experts_per_step": 3}, r"data.experts_per_step=3 must be divisible by the world size \(2\)"),
    ],
)
def test_an_explicit_count_that_does_not_split_over_ranks_is_refused_at_setup(tiny_world, tmp_path, counts, message):
    paths = {"prompt_data": str(tiny_world / "prompts.jsonl"), "expert_data": str(tiny_world / "expert.jsonl")}
    dm = ChordDataModule(tokenizer=str(tiny_world / "model"), **paths, **counts)
    dm.trainer = two_ranks()
    with pytest.raises(ConfigError, match=message) as refused:
        dm.setup("fit")
    assert refused.value.hint.startswith("use a multiple of 2, e.g. --data.")
    assert dm.tokenizer is None  # refused before anything was loaded


def test_records_repeated_within_a_step_are_warned_about(tiny_world, tmp_path):
    records = [{"problem": f"Q{i}", "response": "R"} for i in range(2)]
    # 4 prompts x 2 rollouts, 5 expert samples a step from 2 records: each ~2.5 times in every step.
    with pytest.warns(
        UserWarning,
        match=r"data.expert_data: each step draws 5 expert samples from 2 record\(s\), so every "
        r"record appears ~2.5 times in each step; add records or lower data.experts_per_step",
    ):
        make_dm(tiny_world, tmp_path, records, experts_per_step=5)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": "2"}\n{"problem": "c", "answer": 3}\n'
    )
    with pytest.warns(
        UserWarning, match=r"data.prompt_data: each step draws 4 prompts from 3 record\(s\), .* ~1.3 times"
    ):
        make_dm(tiny_world, tmp_path, prompt_data=str(prompts))


def test_streams_are_a_function_of_the_step_and_split_across_ranks(tiny_world, tmp_path):
    dm = make_dm(tiny_world, tmp_path)
    assert dm.step_batch(7).prompts == dm.step_batch(7).prompts
    whole = [p.text for p in dm.step_batch(3).prompts]
    ranks = [p.text for r in range(2) for p in dm.step_batch(3, rank=r, world_size=2).prompts]
    assert ranks == whole
    # Within an epoch no prompt repeats: the first len // 4 steps draw distinct prompts.
    steps = len(dm.prompts) // 4
    seen = [p.text for s in range(steps) for p in dm.step_batch(s).prompts]
    assert len(set(seen)) == len(seen) == 4 * steps


def test_overlong_expert_samples_are_filtered_and_counted(tiny_world, tmp_path):
    records = [{"problem": "Q", "response": "short"}, {"problem": "Q", "response": "long " * 100}]
    dm = make_dm(tiny_world, tmp_path, records)
    assert len(dm.expert) == 1 and dm.filtered["expert_data"] == {"max_response_length": 1}


def test_malformed_jsonl_names_file_and_line(tiny_world, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        make_dm(tiny_world, tmp_path, prompt_data=str(path))


def test_missing_field_is_named(tiny_world, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n')
    with pytest.raises(DataError, match="field 'problem'"):
        make_dm(tiny_world, tmp_path, prompt_data=str(path))


def test_expert_ratio_out_of_range_is_rejected(tiny_world):
    with pytest.raises(ValueError, match="expert_data_ratio"):
        ChordDataModule(tokenizer="x", prompt_data="y", expert_data_ratio=1.0)


def test_a_turn_ends_at_the_template_end_of_turn_when_eos_differs(tiny_world, tmp_path):
    """Qwen2.5 base/Math style: eos <|endoftext|>, the template closes turns with <|im_end|>. Rollouts must stop at
    either, and expert responses end at <|im_end|> (before, they ran on into the template's trailing newline and
    rollouts stopped at <|endoftext|> only)."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from lit_chord.rollout_callback import RolloutCallback

    tokenizer = AutoTokenizer.from_pretrained(tiny_world / "model")
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.save_pretrained(tmp_path / "tok")
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    dm = make_dm(tiny_world, tmp_path, tokenizer=str(tmp_path / "tok"))
    assert dm.stop_token_ids == sorted([im_end, endoftext])
    for row in dm.expert[:20]:
        assert row.response_ids[-1] == im_end and im_end not in row.response_ids[:-1]
    callback = RolloutCallback()
    callback.stop_ids = dm.stop_token_ids
    policy = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[endoftext, 7]))
    assert callback.stop_token_ids(SimpleNamespace(policy=policy)) == sorted({im_end, endoftext, 7})


@pytest.mark.parametrize(("world_size", "sizes"), [(1, [2] * 5 + [1]), (2, [2, 2, 2]), (3, [2, 2])])
def test_ranks_split_a_heldout_set_once_in_equal_batches(world_size, sizes):
    """11 prompts in batches of 2: the ranks' counted rows are the set, each prompt once; every rank runs the same
    batch sizes (11 = 6 + 5 on 2 ranks, 4 + 4 + 3 on 3: the shorter shares end with an uncounted row)."""
    prompts = [Prompt([index], answer=str(index)) for index in range(11)]
    shards = [HeldOutShard(prompts, rank, world_size, batch_size=2) for rank in range(world_size)]
    batches = [list(shard) for shard in shards]
    for shard, mine in zip(shards, batches, strict=True):
        assert len(shard) == len(mine) and [len(batch.prompts) for batch in mine] == sizes
    rows = [row for mine in batches for b in mine for row in zip(b.indices, b.counted, b.prompts, strict=True)]
    assert all(prompt.answer == str(index) for index, _, prompt in rows)  # indices are positions in the set
    assert sorted(index for index, counted, _ in rows if counted) == list(range(11))


def test_a_rank_with_no_prompt_of_its_own_runs_an_uncounted_batch():
    """1 prompt on 2 ranks: rank 1 still generates once (its collectives stay in step with rank 0's), counting none."""
    prompts = [Prompt([7], answer="7")]
    assert [(b.indices, b.counted) for b in HeldOutShard(prompts, 0, 2, batch_size=4)] == [([0], [True])]
    assert [(b.indices, b.counted) for b in HeldOutShard(prompts, 1, 2, batch_size=4)] == [([0], [False])]


def test_a_prompt_record_may_bring_its_own_chat_turns(tiny_world, tmp_path):
    """A ToolACE prompt: its own system turn (the tools) and a tool turn; it replaces system_prompt + problem."""
    turns = [
        {"role": "system", "content": "tools: f"},
        {"role": "user", "content": "call f"},
        {"role": "assistant", "content": "<tool_call>[]</tool_call>"},
        {"role": "tool", "content": "ok"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"messages": turns, "answer": "[]"}) + "\n" + json.dumps({"problem": "P", "answer": 1}))
    dm = make_dm(tiny_world, tmp_path, prompt_data=str(path), max_prompt_length=256)
    own, plain = dm.prompts
    # the tiny template: <|im_start|>role\ncontent<|im_end|>\n per turn, then the generation prompt
    rendered = "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns)
    assert dm.tokenizer.decode(own.prompt_ids) == rendered + "<|im_start|>assistant\n"
    assert (own.answer, own.text) == ("[]", "ok")
    assert dm.tokenizer.decode(plain.prompt_ids).startswith("<|im_start|>system\nsys<|im_end|>")  # system_prompt
    path.write_text(json.dumps({"messages": turns[:3], "answer": "[]"}) + "\n")
    with pytest.raises(DataError, match=r"prompts.jsonl:1: a prompt's 'messages' must end on a user's or a tool's"):
        make_dm(tiny_world, tmp_path, prompt_data=str(path), max_prompt_length=256)
    path.write_text(json.dumps({"messages": turns}) + "\n")
    with pytest.raises(DataError, match=r"prompts.jsonl:1: field 'answer' .* 'answer' and 'problem' or 'messages'"):
        make_dm(tiny_world, tmp_path, prompt_data=str(path), max_prompt_length=256)
