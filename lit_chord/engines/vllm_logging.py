"""vLLM's log, quieted: at WARNING unless the user asks for more, without the warnings ``VLLMEngine``'s own choices
cause.

Why: vLLM logs ~40 INFO lines per engine start, and a handful of warnings follow from how lit_chord builds the
engine (in-process, dummy weights, no tokenizer, chunked prefill off on CPU). They are harmless, and a user who
reads them would go looking for a problem that is not there. Each one dropped says here why it is harmless;
anything else vLLM warns about still shows.
"""

from __future__ import annotations

import logging
import os

# vLLM warnings that the way ``VLLMEngine`` builds its engine causes, each harmless; dropped by ``quiet_vllm_logging``.
# logger name -> the message's start, and why it is harmless.
BENIGN_WARNINGS: dict[str, tuple[str, ...]] = {
    # Every reload: RotaryEmbedding's one tensor is its cos/sin cache, a non-persistent buffer computed from the
    # config when the model is built (the dummy load leaves such buffers alone, and no checkpoint holds them), which
    # vLLM counts as loadable, finds missing from the pushed weights and puts back unchanged.
    "vllm.model_executor.model_loader.reload.layerwise": ("RotaryEmbedding: Failed to load weights",),
    # skip_tokenizer_init: there is no chat template to warm up (with a traceback) and no EOS id to read; the
    # engine takes token ids and stops on the trainer's stop ids.
    "vllm.renderers.base": ("Chat template warmup failed", "Using None for EOS token id"),
    # The in-process engine reseeds the global generators; ``preserved_rng`` restores them. Chunked prefill is
    # turned off on purpose where seeded generators cannot rewind (module doc): the crash vLLM warns of is the one it
    # avoids, and the miniature's test checks the log-probabilities it then samples with (tests/test_vllm_engine.py).
    "vllm.engine.arg_utils": (
        "The global random seed is set to",
        "This model does not officially support disabling chunked prefill",
    ),
    # In-process engine: vLLM's front end sets torch's thread count for its process, which is the worker's too, where
    # the worker replaced ``torch.set_num_threads`` with this warning once it had bound its threads (module doc).
    "vllm.v1.worker.cpu_worker": ("CPU backend doesn't allow to use `torch.set_num_threads`",),
}


class BenignWarningFilter(logging.Filter):
    """Drops the records of one logger whose message starts with one of the given texts."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_vllm_logging() -> None:
    """vLLM at WARNING unless the user set ``VLLM_LOGGING_LEVEL``, without the warnings in ``BENIGN_WARNINGS``.

    vLLM 0.32 configures its loggers from the environment when ``LLM()`` starts (and caches the environment once an
    engine runs), so the level is set before; the filters sit on the emitting loggers, which vLLM's ``dictConfig``
    of its ``vllm`` logger leaves alone.
    """
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    for name, starts in BENIGN_WARNINGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, BenignWarningFilter) for f in logger.filters):
            logger.addFilter(BenignWarningFilter(starts))
