"""Where a turn ends: the token ids that stop a rollout and end an expert response.

A tokenizer's ``eos_token`` is not always the chat template's end-of-turn token. Several Qwen2.5 base and Math
checkpoints have eos ``<|endoftext|>`` while their template closes every turn with ``<|im_end|>``; a rollout that
stopped only at eos would run past the turn end, while expert rows (rendered by the template) are trained on it.
So the stop set is the union of the tokenizer's eos, the model's ``generation_config.eos_token_id`` (an int or a
list) and the template's own end-of-turn token, found by rendering a turn and reading the token after its text.
Rollouts stop at the first of them and expert responses are cut after the first of them: both streams end alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MARKER = "lit_chord end-of-turn probe"


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template puts right after an assistant message, or None if it puts none."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": MARKER}]
    text = str(tokenizer.apply_chat_template(messages, tokenize=False))
    after = text[text.rindex(MARKER) + len(MARKER) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return ids[0] if ids and ids[0] in special else None


def generation_eos_ids(source: str) -> set[int]:
    """``eos_token_id`` of the ``generation_config.json`` at ``source`` (a path or hub name); empty if none."""
    from transformers import GenerationConfig

    try:
        return eos_ids(GenerationConfig.from_pretrained(source).eos_token_id)
    except OSError:  # no generation_config.json there
        return set()


def eos_ids(eos: int | list[int] | None) -> set[int]:
    """A generation config's ``eos_token_id`` (an int, a list or None) as a set."""
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, source: str) -> list[int]:
    """Sorted ids that end a turn: the tokenizer's eos, ``source``'s generation-config eos ids and the template's
    end-of-turn token."""
    ids = generation_eos_ids(source) | {tokenizer.eos_token_id, end_of_turn_id(tokenizer)}
    return sorted(i for i in ids if i is not None)
