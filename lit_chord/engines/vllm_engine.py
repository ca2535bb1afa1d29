"""Rollouts with vLLM, colocated with the policy in the training process; weights pushed after each step.

The engine lives in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): its worker is then a plain
object, so ``collective_rpc`` hands it the policy's tensors by reference instead of serializing them to an
engine-core process (which fails on functions and tensors). It is built with ``load_format="dummy"`` (no
checkpoint read: the rollout callback always pushes the policy's weights before the first generation, a
resumed run too) and without a tokenizer, since it only sees token ids.

Under a distributed trainer (torchrun, srun) every rank builds its own engine with
``distributed_executor_backend="external_launcher"``: vLLM reuses the trainer's process group and each rank
generates its own prompts independently (tensor parallel size 1).

Sampled-token logprobs are vLLM's ``processed_logprobs`` (``logprobs_mode``; vLLM's default, ``raw_logprobs``,
is taken before temperature): log_softmax of the logits the token was drawn from, after penalties and logits
processors (none are set here), temperature, min_p and top-k/top-p masking (``Sampler.sample`` in
``vllm/v1/sample/sampler.py``, ``TopKTopPSampler.forward_native``/``forward_cpu`` in
``vllm/v1/sample/ops/topk_topp_sampler.py``). At top_p = 1 that is exactly the trainer's log_softmax(logits / τ).
Below 1 it is renormalized over the nucleus, i.e. the trainer's value minus log(nucleus mass): the probability
the token was really sampled with, which is what importance sampling divides by; ``rollout/logprob_gap`` then
includes that truncation. Greedy requests get no temperature: their logprobs are the raw ones. On CUDA this mode
keeps vLLM off FlashInfer's fused sampler (already the case with per-request seeds).

Chunked prefill and seeded requests: vLLM splits a prefill that does not fit the step's token budget
(``max_num_batched_tokens``, 4096 on CPU), samples a token for the unfinished request anyway, discards it and
moves that request's seeded generator back by the offsets it used (``_bookkeeping_sync`` in
``vllm/v1/worker/gpu_model_runner.py``). Only CUDA generators have an offset: on CPU the rewind raises "CPU
Generator does not use offset" as soon as a step's prompts hold more tokens than the budget (32 prompts x 8
samples of the miniature's 18 tokens). Where the generators cannot rewind, seeded engines run without chunked
prefill (``generator_can_rewind``; ``VLLMEngine.__init__`` says what that costs).

vLLM logs at WARNING unless ``VLLM_LOGGING_LEVEL`` says otherwise, and the warnings that this file's own choices
cause, all harmless, are dropped (``lit_chord.engines.vllm_logging``, which says why each).

vLLM internals used (all in this file, vLLM 0.32): the worker method ``reload_weights`` reached through
``collective_rpc``, and ``llm.llm_engine.model_config.dtype``. Side effects of an in-process engine: it
reseeds the global random generators while it starts (undone here) and, on CPU, replaces
``torch.set_num_threads`` with a no-op for the rest of the process.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lit_chord.engines import Completion, SamplingConfig
from lit_chord.engines.vllm_logging import quiet_vllm_logging
from lit_chord.errors import ConfigError

log = logging.getLogger(__name__)


class VLLMEngine:
    uses_live_policy = False

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        enable_sleep_mode: bool = False,
        enforce_eager: bool = False,
        seed: int = 0,
        per_request_seeds: bool = True,
        return_logprobs: bool = True,
    ) -> None:
        """Args:
        gpu_memory_utilization: Share of the GPU's memory vLLM may take (weights + KV cache); the rest is the
            trainer's. On CPU it is the share of RAM checked at startup; the KV cache size there comes from
            ``VLLM_CPU_KVCACHE_SPACE`` (GiB).
        tensor_parallel_size: Only 1 is supported: each training rank runs a whole engine of its own.
        dtype: Weight dtype in vLLM: ``auto`` (the checkpoint's, i.e. bfloat16 for most models), ``bfloat16``,
            ``float32`` (exact logprobs on CPU tests). Pushed weights are cast to it.
        max_model_len: Longest prompt + completion; None takes the model's maximum.
        enable_prefix_caching: Reuse the KV cache of shared prompt prefixes (all ``n`` samples of a prompt
            share it); the cache is cleared after every weight push.
        enable_sleep_mode: Free vLLM's GPU memory (KV cache; weights offloaded to host) between generations so
            the training step can use it. Ignored with a warning where vLLM has no sleep mode (CPU).
        enforce_eager: Skip CUDA graphs / compilation: faster start, slower decoding.
        seed: Engine seed; generation calls with a ``SamplingConfig.seed`` are reproducible regardless.
        per_request_seeds: Seed every request from the call's ``SamplingConfig.seed`` (the step's seed), so a
            resumed run samples the same rollouts. vLLM 0.32 draws the noise of seeded requests one request at a
            time (``random_sample`` in ``vllm/v1/sample/ops/topk_topp_sampler.py``), a kernel per running
            sequence per decoding step; False samples the whole batch from the engine's generator instead:
            faster with hundreds of sequences in flight, not reproducible across a resume. Where the platform's
            generators cannot be rewound (CPU), seeded requests need vLLM's chunked prefill off (module doc): a
            step then prefills whole prompts only, up to max(``max_model_len``, 4096) tokens at once, so a long
            prompt holds up the running decodes for that step and needs that many tokens' activations at once.
            CUDA generators rewind: chunked prefill stays on there.
        return_logprobs: Report vLLM's logprob of each sampled token in ``Completion.logprobs``, at the sampling
            temperature as the trainer computes it (renormalized over the nucleus when top_p < 1; module doc).
        """
        if tensor_parallel_size != 1:
            raise ValueError(
                f"tensor_parallel_size must be 1, got {tensor_parallel_size}: each training rank runs its own "
                "engine, and a tensor-parallel group would have to generate the same prompts with the same seeds"
            )
        if not 0.0 < gpu_memory_utilization < 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1), got {gpu_memory_utilization}")
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tensor_parallel_size = tensor_parallel_size
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.enable_prefix_caching = enable_prefix_caching
        self.enable_sleep_mode = enable_sleep_mode
        self.enforce_eager = enforce_eager
        self.seed = seed
        self.per_request_seeds = per_request_seeds
        self.return_logprobs = return_logprobs
        self.llm: Any = None  # vllm.LLM, built by attach
        self.stop_token_ids: list[int] = []
        self.tied_names: dict[str, list[str]] = {}  # streamed (Hugging Face) name -> names of the same tensor
        self.asleep = False

    def attach(self, policy: nn.Module, stop_token_ids: list[int], pad_token_id: int) -> None:
        """Build the engine for the policy's architecture with dummy weights; ``load_weights`` brings the real ones."""
        self.stop_token_ids = list(stop_token_ids)
        self.tied_names = tied_parameter_names(policy)
        if self.llm is not None:
            return
        # In-process engine core: the worker shares this process, so weights reach it by reference (module doc).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        quiet_vllm_logging()
        from vllm import LLM
        from vllm.platforms import current_platform

        if self.enable_sleep_mode and not current_platform.is_sleep_mode_available():
            log.warning("vLLM has no sleep mode on this platform; enable_sleep_mode is ignored")
            self.enable_sleep_mode = False
        kwargs: dict[str, Any] = {}
        if self.per_request_seeds and not generator_can_rewind(current_platform.device_type):
            kwargs["enable_chunked_prefill"] = False  # a split prefill would rewind a seeded generator (module doc)
        rank = 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world_size, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            if world_size > 1:
                # vLLM joins the trainer's process group and reads ranks from the environment (srun may not set
                # them); with tensor parallel size 1 every rank is a replica that generates on its own.
                local_rank = torch.cuda.current_device() if torch.cuda.is_available() else 0
                for key, value in (("RANK", rank), ("WORLD_SIZE", world_size), ("LOCAL_RANK", local_rank)):
                    os.environ.setdefault(key, str(value))
                kwargs["distributed_executor_backend"] = "external_launcher"
        with preserved_rng(), rejected_settings(self):  # vLLM reseeds the global generators while it builds
            self.llm = LLM(
                model=model_path(policy),
                dtype=self.dtype,
                load_format="dummy",
                skip_tokenizer_init=True,  # token ids in and out (its warnings about it: vllm_logging)
                gpu_memory_utilization=self.gpu_memory_utilization,
                tensor_parallel_size=self.tensor_parallel_size,
                max_model_len=self.max_model_len,
                enable_prefix_caching=self.enable_prefix_caching,
                enable_sleep_mode=self.enable_sleep_mode,
                enforce_eager=self.enforce_eager,
                seed=self.seed + rank,
                logprobs_mode="processed_logprobs",  # at the sampling temperature, as the trainer scores (module doc)
                **kwargs,
            )
        self.sleep()

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.wake_up()
        greedy = sampling.temperature == 0.0
        # vLLM refuses n > 1 with greedy sampling: send each prompt n times then.
        copies, per_request = (n, 1) if greedy else (1, n)
        prompts, params = [], []
        for index, ids in enumerate(prompt_ids):
            for copy in range(copies):
                seed = None
                if sampling.seed is not None and self.per_request_seeds:
                    seed = sampling.seed + (index * copies + copy) * per_request
                prompts.append(TokensPrompt(prompt_token_ids=list(ids)))
                params.append(
                    SamplingParams(
                        n=per_request,
                        temperature=sampling.temperature,
                        top_p=1.0 if greedy else sampling.top_p,
                        max_tokens=sampling.max_new_tokens,
                        seed=seed,  # vLLM gives the request's k-th sample seed + k; the arithmetic keeps them apart
                        stop_token_ids=self.stop_token_ids,
                        ignore_eos=True,  # stop exactly on the trainer's stop ids, as TransformersEngine does
                        logprobs=0 if self.return_logprobs else None,  # 0: only the sampled token's logprob
                        detokenize=False,
                    )
                )
        outputs = self.llm.generate(prompts, params, use_tqdm=len(prompts) * per_request >= 256)
        completions = [self.completion(sample) for output in outputs for sample in output.outputs]
        self.sleep()
        return [completions[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

    def completion(self, sample: Any) -> Completion:
        """A ``Completion`` from a vLLM ``CompletionOutput``, ending with its stop token when it stopped on one."""
        token_ids = list(sample.token_ids)
        finished = sample.finish_reason == "stop"
        logprobs = None
        if self.return_logprobs:
            logprobs = [entry[token].logprob for entry, token in zip(sample.logprobs, token_ids, strict=True)]
        if finished and (not token_ids or token_ids[-1] not in self.stop_token_ids):
            # vLLM 0.32 keeps the stop token in token_ids (tested); should a version strip it, put it back, since
            # the trainer must score it. Its logprob is then unknown.
            token_ids.append(int(sample.stop_reason))
            logprobs = None
        return Completion(token_ids, finished=finished, logprobs=logprobs)

    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Stream the policy's tensors (Hugging Face names) into the live engine, then drop its prefix cache.

        One ``reload_weights`` call consumes a lazy iterator, one tensor at a time, cast to the engine's dtype:
        vLLM buffers a layer's tensors until the layer is complete (q/k/v and gate/up are fused there), so
        splitting a layer across calls would leave the missing parts uninitialized.
        """
        self.wake_up()
        # vLLM worker method (vllm/v1/worker/gpu_worker.py): in-place, layer-wise reload of checkpoint-format
        # weights; the in-process worker receives the generator itself.
        weights = self.stream(named_tensors, self.weight_dtype)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the engine's copy of the weights (``dtype`` as vLLM resolved it): pushes are cast to it."""
        return self.llm.llm_engine.model_config.dtype

    def stream(self, named_tensors: Iterable[tuple[str, Tensor]], dtype: torch.dtype) -> Iterator[tuple[str, Tensor]]:
        """The tensors cast to ``dtype``, each tied tensor also under its other names.

        vLLM keeps a tied output head as a layer of its own (e.g. Qwen2's ``lm_head``), and on CPU it packs that
        layer's weight at load time: it must be sent explicitly, though ``named_parameters`` lists it once.
        """
        for name, tensor in named_tensors:
            tensor = tensor.detach().to(dtype)
            yield name, tensor
            for alias in self.tied_names.get(name, ()):
                yield alias, tensor

    def sleep(self) -> None:
        if self.enable_sleep_mode and not self.asleep:
            self.llm.sleep(level=1)  # level 1 keeps a host copy of the weights: a generation may follow without a push
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def model_path(policy: nn.Module) -> str:
    """Where the policy was loaded from: vLLM builds the same architecture from that config."""
    path = getattr(getattr(policy, "config", None), "_name_or_path", "") or getattr(policy, "name_or_path", "")
    if not path:
        raise ValueError("VLLMEngine needs a policy loaded with from_pretrained (config._name_or_path is empty)")
    return str(path)


def tied_parameter_names(policy: nn.Module) -> dict[str, list[str]]:
    """Each tied parameter's Hugging Face name -> the other names of the same tensor, e.g. model.embed_tokens.weight
    -> [lm_head.weight].

    From transformers' own map of tied names (``all_tied_weights_keys``, target -> source), which stays in the
    Hugging Face names the policy streams (``ChordModule.full_parameters``) when peft wraps the modules: the
    parameters' own names there (``...modules_to_save.default.weight``) would match nothing in the stream. Read
    both ways, since the stream names a tied tensor once, under whichever name ``named_parameters`` meets first.
    """
    groups: dict[str, list[str]] = {}  # source -> [source, *targets]
    for target, source in getattr(policy, "all_tied_weights_keys", {}).items():
        groups.setdefault(source, [source]).append(target)
    return {name: [other for other in group if other != name] for group in groups.values() for name in group}


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global random states on exit."""
    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def generator_can_rewind(device_type: str) -> bool:
    """Whether torch's generators on this device have the offset vLLM moves back after a split prefill: CUDA's do,
    CPU's raise "CPU Generator does not use offset"."""
    try:
        torch.Generator(device=device_type).get_offset()
    except RuntimeError:
        return False
    return True


@contextmanager
def rejected_settings(engine: VLLMEngine) -> Iterator[None]:
    """Turn vLLM's validation error of its config (pydantic's, dozens of lines with every engine argument) into our
    one-line ``ConfigError`` naming the ``VLLMEngine`` setting vLLM refused, e.g. a ``max_model_len`` above the
    model's positions. Errors while the engine runs stay bugs."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as error:
        reasons = [first_sentence(str(detail["msg"]).removeprefix("Value error, ")) for detail in error.errors()]
        reason = " ".join(reasons)
        names = [name for name in inspect.signature(VLLMEngine).parameters if re.search(rf"\b{name}\b", reason)]
        setting = ", ".join(f"{name}={getattr(engine, name)!r}" for name in names) or "its settings"
        raise ConfigError(f"VLLMEngine {setting}: vLLM refuses it: {reason}") from error


def first_sentence(text: str) -> str:
    """Up to the first ". " (vLLM's messages go on with advice for its own command line)."""
    head, dot, _ = text.partition(". ")
    return head + "." if dot else text
