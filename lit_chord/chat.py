"""Records as chat turns and token ids, with the tokenizer's chat template; and where a turn ends.

``ChatFormat`` turns an RL prompt, a held-out prompt or an expert record into chat turns (the record's own
``messages``, or the system prompt and its problem as the user's turn) and then into token ids, and locates an
expert response's tokens as the template renders them after the generation prompt: the tokens a rollout that
ended there would hold. Bad records fail with the file, line and field (``records.DataError``).

Where a turn ends: the token ids that stop a rollout and end an expert response.

A tokenizer's ``eos_token`` is not always the chat template's end-of-turn token. Several Qwen2.5 base and Math
checkpoints have eos ``<|endoftext|>`` while their template closes every turn with ``<|im_end|>``; a rollout that
stopped only at eos would run past the turn end, while expert rows (rendered by the template) are trained on it.
So the stop set is the union of the tokenizer's eos, the model's ``generation_config.eos_token_id`` (an int or a
list) and the template's own end-of-turn token, found by rendering a turn and reading the token after its text.
Rollouts stop at the first of them and expert responses are cut after the first of them: both streams end alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from lit_chord.batch import Prompt, Sequence
from lit_chord.records import DataError, chat_messages, json_type, located_records, text_field_problem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MARKER = "lit_chord end-of-turn probe"
PAPER_SYSTEM_PROMPT = (
    "You are a helpful assistant that solves MATH problems. You should first think about the reasoning process in "
    "mind and then provides the user with the answer. You should present your reasoning process using the format: "
    "<think>\n ...your reasoning process here... </think>\n first. You should always include your final answer in "
    "\\boxed{} as closed-form results."
)


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


@dataclass
class ChatFormat:
    """How records become chat turns and token ids: the tokenizer (its chat template), the turn's end, the system
    prompt of records without their own turns, and the records' field names (``ChordDataModule``'s arguments)."""

    tokenizer: PreTrainedTokenizerBase
    stop_ids: list[int]
    system_prompt: str | None
    prompt_key: str = "problem"
    answer_key: str = "answer"
    messages_key: str = "messages"
    response_key: str = "response"
    expert_response_key: str = "expert_response"
    max_prompt_length: int = 1024
    max_response_length: int = 8192
    filtered: dict[str, Counter[str]] = field(
        default_factory=dict
    )  # data field -> limit a dropped record exceeds -> count

    def read_prompts(self, source: str, field_name: str, with_traces: bool = False) -> list[Prompt]:
        """The RL or held-out prompts of ``source`` (``data.<field_name>``), each with its expert trace if asked;
        records over the length limits are dropped and counted in ``filtered``."""
        prompts = []
        for where, record in located_records(source):
            messages = self.prompt_messages(record, where, field_name)
            ids = self.ids(messages, generation_prompt=True)
            trace = self.expert_trace(record, messages, where) if with_traces else None
            if limit := self.exceeded(len(ids), len(trace or [])):
                self.filtered.setdefault(field_name, Counter())[limit] += 1
                continue
            prompts.append(Prompt(ids, str(record[self.answer_key]), messages[-1]["content"], trace))
        if not prompts:
            traces = (
                f" with an expert trace within max_response_length={self.max_response_length}" if with_traces else ""
            )
            raise DataError(f"{source}: no prompt fits max_prompt_length={self.max_prompt_length}{traces}")
        return prompts

    def read_expert(self, source: str) -> list[Sequence]:
        """The expert demonstrations of ``source`` as training rows; over-long ones dropped and counted."""
        expert = []
        for where, record in located_records(source):
            messages = self.expert_messages(record, where)
            prompt_ids = self.ids(messages[:-1], generation_prompt=True)
            response_ids = self.response_ids(messages, where)
            if limit := self.exceeded(len(prompt_ids), len(response_ids)):
                self.filtered.setdefault("expert_data", Counter())[limit] += 1
                continue
            expert.append(Sequence(prompt_ids, response_ids, is_expert=True))
        if not expert:
            raise DataError(
                f"{source}: no expert sample fits max_prompt_length={self.max_prompt_length} and "
                f"max_response_length={self.max_response_length}"
            )
        return expert

    def exceeded(self, prompt_length: int, response_length: int) -> str | None:
        """The length limit a record exceeds (the prompt's first), or None if it fits: dropped records are counted
        by limit, so that the start-up line says which limit to raise."""
        if prompt_length > self.max_prompt_length:
            return "max_prompt_length"
        if response_length > self.max_response_length:
            return "max_response_length"
        return None

    def text(self, messages: list[dict], generation_prompt: bool) -> str:
        """The conversation as the chat template renders it (with the assistant's generation prompt if asked)."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return cast(str, text)  # a string with tokenize=False

    def ids(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        """``text``'s token ids (the template holds the special tokens)."""
        text = self.text(messages, generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def system(self) -> list[dict]:
        """The system turn of records without their own turns (none if ``system_prompt`` is None)."""
        return [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    def prompt_messages(self, record: dict, where: str, field_name: str) -> list[dict]:
        """An RL or held-out record's prompt as chat turns: its own ``messages_key`` turns (a tool-use prompt: the
        system text with the tools, then the conversation, ending on a user's or a tool's turn), or the system
        prompt and ``prompt_key`` as the user's turn."""
        own_turns = record.get(self.messages_key) is not None
        for key in (self.answer_key,) if own_turns else (self.prompt_key, self.answer_key):
            if problem := text_field_problem(record, key):
                needs = f"{self.answer_key!r} and {self.prompt_key!r} or {self.messages_key!r}"
                raise DataError(
                    f"{where}: field {key!r} {problem}; expected a string or number (data.{field_name} records need "
                    f"{needs})"
                )
        if not own_turns:
            return [*self.system(), {"role": "user", "content": str(record[self.prompt_key])}]
        messages = chat_messages(record[self.messages_key], self.messages_key, where)
        if messages[-1]["role"] not in ("user", "tool"):
            raise DataError(
                f"{where}: a prompt's {self.messages_key!r} must end on a user's or a tool's turn, not the "
                f"{messages[-1]['role']!r}'s"
            )
        return messages

    def expert_trace(self, record: dict, messages: list[dict], where: str) -> list[int]:
        """The tokens of an RL prompt's own expert response (``expert_response_key``), for an objective that puts
        it in the prompt's group (LUFFY, SRFT)."""
        key = self.expert_response_key
        if not isinstance(record.get(key), str) or not record[key].strip():
            got = "missing" if key not in record else f"is {json_type(record[key])}"
            raise DataError(
                f"{where}: field {key!r} {got}; an objective with expert traces in its groups needs every RL prompt's "
                "response as a non-empty string"
            )
        return self.response_ids([*messages, {"role": "assistant", "content": record[key]}], where)

    def expert_messages(self, record: dict, where: str) -> list[dict]:
        """Normalize an expert record to chat messages whose last turn is the assistant's response."""
        if record.get(self.messages_key) is not None:
            messages = chat_messages(record[self.messages_key], self.messages_key, where)
            if messages[-1]["role"] != "assistant":
                raise DataError(
                    f"{where}: no assistant turn at the end: the last message (role {messages[-1]['role']!r}) "
                    "must be the assistant's response"
                )
        elif self.prompt_key in record or self.response_key in record:
            for key in (self.prompt_key, self.response_key):
                if not isinstance(record.get(key), str):
                    got = "missing" if key not in record else f"is {json_type(record[key])}"
                    raise DataError(f"{where}: field {key!r} {got}; expected a string")
            messages = [
                *self.system(),
                {"role": "user", "content": record[self.prompt_key]},
                {"role": "assistant", "content": record[self.response_key]},
            ]
        else:
            raise DataError(
                f"{where}: expected field {self.messages_key!r} (chat messages) or string fields {self.prompt_key!r} "
                f"and {self.response_key!r}; found {', '.join(map(repr, record)) or 'no fields'}"
            )
        if not messages[-1]["content"].strip():
            raise DataError(f"{where}: empty assistant response")
        return messages

    def response_ids(self, messages: list[dict], where: str) -> list[int]:
        """The tokens of the conversation's last (assistant) turn as the chat template renders them after the
        generation prompt, up to and including the first end-of-turn token (what a rollout that ends there holds)."""
        prompt_text = self.text(messages[:-1], generation_prompt=True)
        full_text = self.text(messages, generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise DataError(
                f"{where}: the chat template does not render the prompt as a "
                "prefix of the conversation; cannot locate the assistant tokens"
            )
        ids = self.tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
        stops = set(self.stop_ids)
        end = next((index for index, token in enumerate(ids) if token in stops), len(ids) - 1)
        return ids[: end + 1]  # drop what the template adds after the end of turn (chat.py)
